//! Realised outcomes of the step model's predictions, in event time and bounded memory: what shadow
//! scoring compares the active and the candidate models on (`models.candidate`).
//!
//! A sample of scored events keeps both roles' predictions until its label is known: for P(purchase)
//! every [`SAMPLE_EVERY`]-th event (by a hash of the customer and the event time), for P(abandon)
//! every event that leaves a cart open (rarer). The labels are those of `models/train.py`:
//! - P(purchase in 7 d): 1 when the customer buys strictly after the event and within 7 days; 0
//!   once the partition's event time has passed the event by 7 days without one.
//! - P(abandon) of an open cart that has not alerted yet (where the processor reads it): counts
//!   only when the customer's next event is at least 10 minutes later (the model is read at the
//!   10-minute inactivity check); then 1 when no purchase follows within 24 hours, 0 when one does.
//!
//! Resolved predictions go into fixed-size bins ([`Calibration`]: counts on a logit grid), from
//! which AUC, log-loss and calibration error follow; bins add up across partitions and over time.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use foldhash::fast::RandomState;

use crate::time::Millis;

/// Every n-th scored event is followed to its purchase outcome.
pub const SAMPLE_EVERY: u64 = 4;
/// Open predictions per partition at most; samples beyond are skipped (counted).
pub const MAX_OPEN: usize = 50_000;
pub const PURCHASE_HORIZON_MS: Millis = 7 * 86_400_000;
pub const ABANDON_AFTER_MS: Millis = 10 * 60_000;
pub const ABANDON_HORIZON_MS: Millis = 86_400_000;

/// Bins on the logit scale, from logit −8 to +8.
const BINS: usize = 128;
const LOGIT_MAX: f64 = 8.0;

/// The two model sets scored side by side.
pub const ROLES: [&str; 2] = ["active", "candidate"];

/// Resolved predictions of one score of one role, binned.
#[derive(Debug, Clone, PartialEq)]
pub struct Calibration {
    pos: Vec<u64>,
    neg: Vec<u64>,
    sum_p: Vec<f64>,
    log_loss: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Calibration { pos: vec![0; BINS], neg: vec![0; BINS], sum_p: vec![0.0; BINS], log_loss: 0.0 }
    }
}

fn bin(p: f64) -> usize {
    let p = p.clamp(1e-9, 1.0 - 1e-9);
    let logit = (p / (1.0 - p)).ln().clamp(-LOGIT_MAX, LOGIT_MAX);
    (((logit + LOGIT_MAX) / (2.0 * LOGIT_MAX) * BINS as f64) as usize).min(BINS - 1)
}

impl Calibration {
    pub fn add(&mut self, p: f32, outcome: bool) {
        let p = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
        let b = bin(p);
        if outcome {
            self.pos[b] += 1;
            self.log_loss -= p.ln();
        } else {
            self.neg[b] += 1;
            self.log_loss -= (1.0 - p).ln();
        }
        self.sum_p[b] += p;
    }

    pub fn merge(&mut self, other: &Calibration) {
        for b in 0..BINS {
            self.pos[b] += other.pos[b];
            self.neg[b] += other.neg[b];
            self.sum_p[b] += other.sum_p[b];
        }
        self.log_loss += other.log_loss;
    }

    pub fn count(&self) -> u64 {
        self.pos.iter().sum::<u64>() + self.neg.iter().sum::<u64>()
    }

    pub fn positives(&self) -> u64 {
        self.pos.iter().sum()
    }

    /// Area under the ROC curve; pairs in one bin count as ties. None without both outcomes.
    pub fn auc(&self) -> Option<f64> {
        let (p, n) = (self.positives() as f64, (self.count() - self.positives()) as f64);
        if p == 0.0 || n == 0.0 {
            return None;
        }
        let (mut below, mut wins) = (0.0, 0.0);
        for b in 0..BINS {
            wins += self.pos[b] as f64 * (below + 0.5 * self.neg[b] as f64);
            below += self.neg[b] as f64;
        }
        Some(wins / (p * n))
    }

    /// Mean negative log-likelihood of the outcomes.
    pub fn log_loss(&self) -> Option<f64> {
        let n = self.count();
        (n > 0).then(|| self.log_loss / n as f64)
    }

    /// Expected calibration error: over 10 groups of bins of about equal count, the
    /// count-weighted mean |mean prediction − outcome rate|.
    pub fn calibration_error(&self) -> Option<f64> {
        let n = self.count();
        if n == 0 {
            return None;
        }
        let per_group = n.div_ceil(10);
        let (mut err, mut k, mut pos, mut sum_p) = (0.0, 0u64, 0u64, 0.0);
        for b in 0..BINS {
            k += self.pos[b] + self.neg[b];
            pos += self.pos[b];
            sum_p += self.sum_p[b];
            if k >= per_group || b == BINS - 1 {
                if k > 0 {
                    err += (sum_p - pos as f64).abs();
                }
                (k, pos, sum_p) = (0, 0, 0.0);
            }
        }
        Some(err / n as f64)
    }
}

/// Both roles' resolved predictions: `[role]` indexes [`ROLES`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OutcomeCounts {
    pub purchase: [Calibration; 2],
    pub abandon: [Calibration; 2],
    /// Samples skipped because [`MAX_OPEN`] predictions were waiting.
    pub skipped: u64,
}

impl OutcomeCounts {
    pub fn merge(&mut self, other: &OutcomeCounts) {
        for r in 0..2 {
            self.purchase[r].merge(&other.purchase[r]);
            self.abandon[r].merge(&other.abandon[r]);
        }
        self.skipped += other.skipped;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Purchase,
    /// `armed`: the customer stayed inactive for [`ABANDON_AFTER_MS`].
    Abandon {
        armed: bool,
    },
}

#[derive(Debug, Clone, Copy)]
struct Open {
    ts: Millis,
    kind: Kind,
    p: [f32; 2],
}

impl Open {
    fn due(&self) -> Millis {
        self.ts.saturating_add(match self.kind {
            Kind::Purchase => PURCHASE_HORIZON_MS,
            Kind::Abandon { .. } => ABANDON_HORIZON_MS,
        })
    }
}

/// One scored event, as both roles saw it.
#[derive(Debug, Clone, Copy)]
pub struct Scored {
    pub ts: Millis,
    pub purchase: bool,
    /// A cart is open after the event and has not alerted yet.
    pub cart_open: bool,
    /// P(purchase in 7 d) per role.
    pub p_purchase: [f32; 2],
    /// P(abandon) per role (read only when `cart_open`).
    pub p_abandon: [f32; 2],
}

/// One partition's open predictions and resolved counts.
#[derive(Debug, Default)]
pub struct Outcomes {
    open: HashMap<Box<str>, Vec<Open>, RandomState>,
    due: BinaryHeap<Reverse<(Millis, Box<str>)>>,
    n_open: usize,
    /// The partition's event time: the latest event seen.
    clock: Millis,
    pub counts: OutcomeCounts,
}

impl Outcomes {
    pub fn open(&self) -> usize {
        self.n_open
    }

    /// The customer's next event (in their event order): resolves what it decides, then samples it.
    pub fn observe(&mut self, key: &str, e: &Scored) {
        if let Some(list) = self.open.get_mut(key) {
            let before = list.len();
            let counts = &mut self.counts;
            list.retain_mut(|o| resolve(o, e, counts));
            self.n_open -= before - list.len();
            if list.is_empty() {
                self.open.remove(key);
            }
        }
        self.clock = self.clock.max(e.ts);
        let mut add = |kind, p| {
            if self.n_open >= MAX_OPEN {
                self.counts.skipped += 1;
                return;
            }
            let o = Open { ts: e.ts, kind, p };
            self.due.push(Reverse((o.due(), key.into())));
            self.open.entry(key.into()).or_default().push(o);
            self.n_open += 1;
        };
        if sampled(key, e.ts) {
            add(Kind::Purchase, e.p_purchase);
        }
        if e.cart_open {
            add(Kind::Abandon { armed: false }, e.p_abandon);
        }
    }

    /// Resolves the predictions whose horizon the partition's event time has passed.
    pub fn expire(&mut self) {
        while let Some(Reverse((due, _))) = self.due.peek() {
            if *due > self.clock {
                break;
            }
            let Some(Reverse((due, key))) = self.due.pop() else { break };
            let Some(list) = self.open.get_mut(&key) else { continue };
            let before = list.len();
            let counts = &mut self.counts;
            list.retain(|o| {
                if o.due() > due {
                    return true;
                }
                match o.kind {
                    Kind::Purchase => add(&mut counts.purchase, o.p, false),
                    // No purchase within the horizon (and no event within 10 minutes, or it
                    // would have been dropped): abandoned.
                    Kind::Abandon { .. } => add(&mut counts.abandon, o.p, true),
                }
                false
            });
            self.n_open -= before - list.len();
            if list.is_empty() {
                self.open.remove(&key);
            }
        }
    }

    /// Drops the customer's open predictions (erasure).
    pub fn forget(&mut self, key: &str) {
        if let Some(list) = self.open.remove(key) {
            self.n_open -= list.len();
        }
    }

    /// The counts resolved since the last call.
    pub fn take(&mut self) -> OutcomeCounts {
        std::mem::take(&mut self.counts)
    }
}

fn add(c: &mut [Calibration; 2], p: [f32; 2], outcome: bool) {
    c[0].add(p[0], outcome);
    c[1].add(p[1], outcome);
}

/// Applies the customer's next event `e` to an open prediction; false when it is settled.
fn resolve(o: &mut Open, e: &Scored, counts: &mut OutcomeCounts) -> bool {
    if e.ts < o.ts {
        return true;
    }
    let past = e.ts > o.due();
    match &mut o.kind {
        Kind::Purchase if past => add(&mut counts.purchase, o.p, false),
        Kind::Purchase if e.purchase && e.ts > o.ts => add(&mut counts.purchase, o.p, true),
        Kind::Purchase => return true,
        Kind::Abandon { armed: false } if e.ts - o.ts < ABANDON_AFTER_MS => {} // came back: not read
        Kind::Abandon { .. } if past => add(&mut counts.abandon, o.p, true),
        Kind::Abandon { .. } if e.purchase => add(&mut counts.abandon, o.p, false),
        Kind::Abandon { armed } => {
            *armed = true;
            return true;
        }
    }
    false
}

fn sampled(key: &str, ts: Millis) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (ts as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 29)) % SAMPLE_EVERY == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact AUC over all pairs.
    fn exact_auc(scores: &[(f32, bool)]) -> f64 {
        let (mut wins, mut pairs) = (0.0, 0.0);
        for (p, y) in scores.iter().filter(|s| s.1) {
            for (q, _) in scores.iter().filter(|s| !s.1) {
                pairs += 1.0;
                wins += if p > q {
                    1.0
                } else if p == q {
                    0.5
                } else {
                    0.0
                };
            }
            let _ = y;
        }
        wins / pairs
    }

    #[test]
    fn binned_metrics_match_the_exact_ones() {
        let mut rng = 7u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            (rng >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut c = Calibration::default();
        let mut all = Vec::new();
        let mut ll = 0.0;
        for _ in 0..20_000 {
            let p = next().powi(2) as f32;
            let y = next() < f64::from(p) * 0.8 + 0.05;
            c.add(p, y);
            let pc = f64::from(p).clamp(1e-7, 1.0 - 1e-7);
            ll -= if y { pc.ln() } else { (1.0 - pc).ln() };
            all.push((p, y));
        }
        let exact = exact_auc(&all);
        let got = c.auc().unwrap();
        assert!((got - exact).abs() < 0.005, "binned AUC {got} vs exact {exact}");
        assert!(got > 0.6, "an informative score: {got}");
        assert!((c.log_loss().unwrap() - ll / 20_000.0).abs() < 1e-9);
        // Miscalibrated on purpose: p is 0.8 p + 0.05 off.
        let ece = c.calibration_error().unwrap();
        assert!(ece > 0.01 && ece < 0.2, "{ece}");
        let mut calibrated = Calibration::default();
        for (p, _) in &all {
            calibrated.add(*p, next() < f64::from(*p));
        }
        assert!(calibrated.calibration_error().unwrap() < ece / 2.0);
        let mut twice = c.clone();
        twice.merge(&c);
        assert_eq!(twice.count(), 40_000);
        assert!((twice.auc().unwrap() - got).abs() < 1e-12);
        assert_eq!(Calibration::default().auc(), None);
    }

    fn event(ts: Millis, purchase: bool, cart_open: bool) -> Scored {
        Scored { ts, purchase, cart_open, p_purchase: [0.2, 0.6], p_abandon: [0.7, 0.3] }
    }

    /// Sampled event times of a customer from `from` on.
    fn sampled_ts(key: &str, from: Millis, n: usize) -> Vec<Millis> {
        (from..).step_by(1000).filter(|ts| sampled(key, *ts)).take(n).collect()
    }

    #[test]
    fn purchase_labels_follow_the_seven_day_horizon() {
        let mut o = Outcomes::default();
        let t = sampled_ts("a", 1_000_000, 1)[0];
        o.observe("a", &event(t, false, false));
        assert_eq!(o.open(), 1);
        // A purchase 6 days later: positive for both roles.
        o.observe("a", &event(t + 6 * 86_400_000, true, false));
        assert_eq!((o.counts.purchase[0].positives(), o.counts.purchase[1].count()), (1, 1));
        // Another customer, no purchase: negative once another customer's event passes 7 days.
        let u = sampled_ts("b", 5_000_000, 1)[0];
        o.observe("b", &event(u, false, false));
        o.observe("c", &event(u + PURCHASE_HORIZON_MS + 1, false, false));
        o.expire();
        assert_eq!(o.counts.purchase[0].count(), 2);
        assert_eq!(o.counts.purchase[0].positives(), 1);
        let c = o.take();
        assert_eq!(c.purchase[1].positives(), 1);
        assert_eq!(o.counts.purchase[0].count(), 0);
    }

    #[test]
    fn abandonment_counts_only_after_ten_minutes_of_inactivity() {
        // Back within 10 minutes: the prediction is never read.
        let mut o = Outcomes::default();
        let t = sampled_ts("a", 1_000_000, 1)[0];
        o.observe("a", &event(t, false, true));
        o.observe("a", &event(t + 5 * 60_000, true, false));
        assert_eq!(o.counts.abandon[0].count(), 0);
        // Inactive, then a purchase within 24 h: not abandoned.
        let mut o = Outcomes::default();
        o.observe("a", &event(t, false, true));
        o.observe("a", &event(t + 30 * 60_000, false, true));
        o.observe("a", &event(t + 3 * 3_600_000, true, false));
        // both open-cart events were followed by 10 quiet minutes, and by the purchase
        assert_eq!((o.counts.abandon[0].count(), o.counts.abandon[0].positives()), (2, 0));
        // Inactive and no purchase within 24 h: abandoned.
        let mut o = Outcomes::default();
        o.observe("a", &event(t, false, true));
        o.observe("z", &event(t + ABANDON_HORIZON_MS + 1, false, false));
        o.expire();
        assert_eq!((o.counts.abandon[1].count(), o.counts.abandon[1].positives()), (1, 1));
    }

    #[test]
    fn open_predictions_are_bounded() {
        let mut o = Outcomes::default();
        let mut ts = 0;
        for i in 0..(MAX_OPEN * SAMPLE_EVERY as usize * 3) {
            ts += 1;
            o.observe(&format!("c{}", i % 1000), &event(ts, false, false));
        }
        assert!(o.open() <= MAX_OPEN);
        assert!(o.counts.skipped > 0);
    }
}
