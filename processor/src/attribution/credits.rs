//! Rule-based credit: time decay, last touch, first touch, linear and position based (40/20/40).
//! Every column sums to 1 over a journey.

use crate::time::Millis;

/// The rules, in the order of [`Credits`] columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Rule {
    TimeDecay,
    LastTouch,
    FirstTouch,
    Linear,
    PositionBased,
}

impl Rule {
    pub const ALL: [Rule; 5] = [Rule::TimeDecay, Rule::LastTouch, Rule::FirstTouch, Rule::Linear, Rule::PositionBased];
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::TimeDecay => "time_decay",
            Rule::LastTouch => "last_touch",
            Rule::FirstTouch => "first_touch",
            Rule::Linear => "linear",
            Rule::PositionBased => "position_based",
        }
    }
}

/// One touchpoint's credit under each rule.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Credits(pub [f64; 5]);

impl Credits {
    #[inline]
    pub fn get(&self, rule: Rule) -> f64 {
        self.0[rule as usize]
    }
}

/// Computes credits for a journey whose touchpoints have event times `ts` (sorted by time, then
/// arrival). Writes one [`Credits`] per touchpoint into `out`
/// (cleared first; reused across calls so the hot path does not allocate).
pub fn assign(ts: &[Millis], half_life_ms: Millis, out: &mut Vec<Credits>) {
    out.clear();
    let n = ts.len();
    if n == 0 {
        return;
    }
    out.resize(n, Credits::default());
    let linear = 1.0 / n as f64;
    for c in out.iter_mut() {
        c.0[Rule::Linear as usize] = linear;
    }
    out[n - 1].0[Rule::LastTouch as usize] = 1.0;
    out[0].0[Rule::FirstTouch as usize] = 1.0;
    match n {
        1 => out[0].0[Rule::PositionBased as usize] = 1.0,
        2 => {
            out[0].0[Rule::PositionBased as usize] = 0.5;
            out[1].0[Rule::PositionBased as usize] = 0.5;
        }
        _ => {
            let middle = 0.2 / (n - 2) as f64;
            for c in out[1..n - 1].iter_mut() {
                c.0[Rule::PositionBased as usize] = middle;
            }
            out[0].0[Rule::PositionBased as usize] = 0.4;
            out[n - 1].0[Rule::PositionBased as usize] = 0.4;
        }
    }
    // Time decay: w = 2^(-(conversion_ts - ts) / half_life), normalised. Computed relative to the
    // newest touch so that no weight underflows; the ratio is the same.
    let newest = ts.iter().copied().max().unwrap_or(0);
    let hl = half_life_ms as f64;
    let mut sum = 0.0;
    for (c, &t) in out.iter_mut().zip(ts) {
        let w = ((t - newest) as f64 / hl).exp2();
        c.0[Rule::TimeDecay as usize] = w;
        sum += w;
    }
    for c in out.iter_mut() {
        c.0[Rule::TimeDecay as usize] /= sum;
    }
}

/// Time-decay credit alone (for alerts' top touchpoints), same conventions as [`assign`].
pub fn time_decay(ts: &[Millis], half_life_ms: Millis, out: &mut Vec<f64>) {
    out.clear();
    let Some(newest) = ts.iter().copied().max() else { return };
    let hl = half_life_ms as f64;
    out.extend(ts.iter().map(|&t| ((t - newest) as f64 / hl).exp2()));
    let sum: f64 = out.iter().sum();
    for w in out.iter_mut() {
        *w /= sum;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Millis = 86_400_000;

    fn run(ts: &[Millis], _conv: Millis) -> Vec<Credits> {
        let mut out = Vec::new();
        assign(ts, 7 * DAY, &mut out);
        out
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn single_touch_gets_everything() {
        let c = run(&[0], DAY);
        assert_eq!(c[0].0, [1.0; 5]);
    }

    #[test]
    fn two_touches_split_position_based_evenly() {
        let c = run(&[0, 7 * DAY], 7 * DAY);
        assert_eq!(c[0].get(Rule::PositionBased), 0.5);
        assert_eq!(c[1].get(Rule::PositionBased), 0.5);
        // one half-life apart: weights 1/2 and 1 -> 1/3 and 2/3
        assert!(close(c[0].get(Rule::TimeDecay), 1.0 / 3.0));
        assert!(close(c[1].get(Rule::TimeDecay), 2.0 / 3.0));
        assert_eq!(c[0].get(Rule::FirstTouch), 1.0);
        assert_eq!(c[1].get(Rule::LastTouch), 1.0);
    }

    #[test]
    fn hand_computed_four_touch_journey() {
        // touches 14, 7, 7 and 0 days before the conversion
        let conv = 20 * DAY;
        let c = run(&[6 * DAY, 13 * DAY, 13 * DAY, 20 * DAY], conv);
        let w = [0.25, 0.5, 0.5, 1.0];
        let s: f64 = w.iter().sum();
        for i in 0..4 {
            assert!(close(c[i].get(Rule::TimeDecay), w[i] / s));
            assert!(close(c[i].get(Rule::Linear), 0.25));
        }
        assert_eq!(
            [c[0].get(Rule::PositionBased), c[1].get(Rule::PositionBased), c[2].get(Rule::PositionBased), c[3].get(Rule::PositionBased)],
            [0.4, 0.1, 0.1, 0.4]
        );
    }

    #[test]
    fn every_column_sums_to_one_even_for_very_old_touches() {
        let ts: Vec<Millis> = (0..64).map(|i| i * 3 * DAY).collect();
        let c = run(&ts, 64 * 3 * DAY);
        for rule in Rule::ALL {
            let sum: f64 = c.iter().map(|x| x.get(rule)).sum();
            assert!((sum - 1.0).abs() < 1e-9, "{rule:?} sums to {sum}");
        }
        let mut td = Vec::new();
        time_decay(&ts, 7 * DAY, &mut td);
        for (a, b) in td.iter().zip(&c) {
            assert!(close(*a, b.get(Rule::TimeDecay)));
        }
    }
}
