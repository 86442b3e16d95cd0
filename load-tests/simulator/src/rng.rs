//! Random numbers: xoshiro256** streams seeded through SplitMix64.
//!
//! Every customer draws from many independent streams, one per *purpose* (the decision clock, the
//! browse clock, each channel's exposure clock, each kind of session content, ...), derived from
//! `(seed, customer index, purpose)`. Removing a channel therefore removes that channel's draws and
//! nothing else: the other streams still hand out the same numbers (common random numbers), which is
//! what makes the counterfactual re-runs comparable customer by customer.

/// SplitMix64: used to expand a 64-bit key into xoshiro's 256-bit state and to mix keys.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }
}

/// SplitMix64's finaliser: a good 64-bit mixing function.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// xoshiro256**.
#[derive(Debug, Clone)]
pub struct Rng {
    s: [u64; 4],
}

const TWO_POW_M53: f64 = 1.0 / (1u64 << 53) as f64;

impl Rng {
    pub fn from_seed(seed: u64) -> Rng {
        let mut sm = SplitMix64(seed);
        let mut s = [sm.next_u64(), sm.next_u64(), sm.next_u64(), sm.next_u64()];
        if s == [0; 4] {
            s[0] = 1;
        }
        Rng { s }
    }

    /// The stream of `purpose` for customer `customer` in the world seeded by `seed`.
    pub fn stream(seed: u64, customer: u64, purpose: u64) -> Rng {
        let k = mix64(seed ^ 0x5EED_0F70_0C45_71A3);
        let k = mix64(k ^ customer.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let k = mix64(k ^ purpose.wrapping_mul(0xD1B5_4A32_D192_ED03).wrapping_add(0x2545_F491_4F6C_DD1D));
        Rng::from_seed(k)
    }

    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    #[inline]
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * TWO_POW_M53
    }

    /// Uniform in (0, 1).
    #[inline]
    pub fn open01(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * TWO_POW_M53
    }

    /// True with probability `p`.
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with mean 1.
    #[inline]
    pub fn exp1(&mut self) -> f64 {
        -self.open01().ln()
    }

    /// Standard normal (Box-Muller, one value per call).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.open01();
        let u2 = self.f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }

    /// Uniform integer in [0, n).
    #[inline]
    pub fn below(&mut self, n: u64) -> u64 {
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }

    /// Index drawn from cumulative weights `cum` (last element = total).
    pub fn pick_cum(&mut self, cum: &[f64]) -> usize {
        let total = *cum.last().unwrap_or(&0.0);
        let u = self.f64() * total;
        cum.iter().position(|&c| u < c).unwrap_or(cum.len().saturating_sub(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xoshiro_reference_values() {
        // Reference output of xoshiro256** from state {1, 2, 3, 4}.
        let mut r = Rng { s: [1, 2, 3, 4] };
        let expected = [11520u64, 0, 1509978240, 1215971899390074240];
        for e in expected {
            assert_eq!(r.next_u64(), e);
        }
    }

    #[test]
    fn splitmix_reference_value() {
        // First output of SplitMix64 seeded with 1234567 (reference implementation).
        let mut s = SplitMix64(1234567);
        assert_eq!(s.next_u64(), 6457827717110365317);
    }

    #[test]
    fn streams_differ_and_repeat() {
        let a: Vec<u64> = (0..4).map(|_| Rng::stream(1, 2, 3).next_u64()).collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        assert_ne!(Rng::stream(1, 2, 3).next_u64(), Rng::stream(1, 2, 4).next_u64());
        assert_ne!(Rng::stream(1, 2, 3).next_u64(), Rng::stream(1, 3, 3).next_u64());
        assert_ne!(Rng::stream(1, 2, 3).next_u64(), Rng::stream(2, 2, 3).next_u64());
    }

    #[test]
    fn uniform_and_exponential_moments() {
        let mut r = Rng::from_seed(7);
        let n = 200_000;
        let (mut su, mut se, mut sn, mut sn2) = (0.0, 0.0, 0.0, 0.0);
        for _ in 0..n {
            su += r.f64();
            se += r.exp1();
            let z = r.normal();
            sn += z;
            sn2 += z * z;
        }
        let n = n as f64;
        assert!((su / n - 0.5).abs() < 0.01);
        assert!((se / n - 1.0).abs() < 0.02);
        assert!((sn / n).abs() < 0.02);
        assert!((sn2 / n - 1.0).abs() < 0.02);
    }
}
