//! The live comparison of the active and the candidate models (shadow scoring, `models.candidate`):
//! the loop merges what every partition's shadow measured ([`ShadowCounts`]) into one [`Board`]
//! since the candidate was loaded or last swapped, and publishes it as a [`Report`]: on
//! `GET /models` as JSON, printed by `touchstream models report`, and as metrics. The HTTP side asks
//! for a swap (`POST /models/promote`, `/models/rollback`) through [`ModelsControl`]; the loop
//! carries it out after its next commit.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::engine::shadow::ShadowCounts;
use crate::event::Channel;
use crate::inference::outcomes::{Calibration, ROLES};

/// Resolved outcomes per target below which the report gives no verdict.
pub const MIN_OUTCOMES: u64 = 500;

/// Shared between the loop and the HTTP endpoint.
#[derive(Debug, Default)]
pub struct ModelsControl {
    report: Mutex<Option<String>>,
    swap: AtomicBool,
}

impl ModelsControl {
    /// The latest report as JSON (none without a candidate).
    pub fn report(&self) -> Option<String> {
        self.report.lock().map(|r| r.clone()).unwrap_or_default()
    }

    pub fn publish(&self, report: Option<&Report>) {
        if let Ok(mut r) = self.report.lock() {
            *r = report.and_then(|r| serde_json::to_string_pretty(r).ok());
        }
    }

    /// Asks the loop to swap the candidate and the active models at its next batch boundary.
    pub fn request_swap(&self) {
        self.swap.store(true, Ordering::Release);
    }

    pub fn take_swap_request(&self) -> bool {
        self.swap.swap(false, Ordering::AcqRel)
    }
}

/// One role's quality on one target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    pub auc: Option<f64>,
    pub log_loss: Option<f64>,
    pub calibration_error: Option<f64>,
}

impl From<&Calibration> for Quality {
    fn from(c: &Calibration) -> Self {
        Quality { auc: c.auc(), log_loss: c.log_loss(), calibration_error: c.calibration_error() }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetReport {
    /// `p_purchase_7d` or `p_abandon`.
    pub target: String,
    pub outcomes: u64,
    pub positive_rate: Option<f64>,
    pub active: Quality,
    pub candidate: Quality,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CostReport {
    /// Step-model microseconds per event.
    pub step_us_per_event: Option<f64>,
    /// Deep-credit milliseconds per conversion.
    pub deep_ms_per_conversion: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub active: String,
    pub candidate: String,
    /// Swaps carried out since the start.
    pub swaps: u64,
    /// Events and conversions scored by both since the comparison began.
    pub events: u64,
    pub conversions: u64,
    /// Predictions waiting for their outcome, and samples skipped for the bound.
    pub open_predictions: u64,
    pub skipped: u64,
    pub targets: Vec<TargetReport>,
    /// Mean total-variation distance between the two roles' channel shares of deep credit, per
    /// conversion (0: the same shares, 1: disjoint).
    pub credit_divergence: Option<f64>,
    /// Channel shares of deep credit over the compared conversions, per role.
    pub channel_shares: Vec<(String, f64, f64)>,
    pub cost: [CostReport; 2],
    pub verdict: String,
}

/// The comparison since the candidate was loaded or last swapped.
#[derive(Debug, Default)]
pub struct Board {
    counts: ShadowCounts,
    open: u64,
    pub swaps: u64,
}

impl Board {
    pub fn add(&mut self, c: &ShadowCounts) {
        self.counts.merge(c);
    }

    pub fn set_open(&mut self, open: u64) {
        self.open = open;
    }

    /// After a swap or a reload: what was measured belongs to the previous roles.
    pub fn restart(&mut self) {
        self.counts = ShadowCounts::default();
        self.open = 0;
    }

    pub fn report(&self, active: &str, candidate: &str) -> Report {
        let c = &self.counts;
        let target = |name: &str, cal: &[Calibration; 2]| TargetReport {
            target: name.into(),
            outcomes: cal[0].count(),
            positive_rate: (cal[0].count() > 0).then(|| cal[0].positives() as f64 / cal[0].count() as f64),
            active: (&cal[0]).into(),
            candidate: (&cal[1]).into(),
        };
        let targets = vec![target("p_purchase_7d", &c.outcomes.purchase), target("p_abandon", &c.outcomes.abandon)];
        let n = c.conversions as f64;
        let channel_shares = Channel::ALL
            .iter()
            .filter(|ch| c.channel_credit[0][ch.index()] + c.channel_credit[1][ch.index()] > 0.0)
            .map(|ch| (ch.as_str().to_string(), c.channel_credit[0][ch.index()] / n, c.channel_credit[1][ch.index()] / n))
            .collect();
        let cost = |r: usize| CostReport {
            step_us_per_event: (c.events > 0).then(|| c.step_seconds[r] * 1e6 / c.events as f64),
            deep_ms_per_conversion: (c.conversions > 0).then(|| c.deep_seconds[r] * 1e3 / n),
        };
        let verdict = verdict(&targets);
        Report {
            active: active.into(),
            candidate: candidate.into(),
            swaps: self.swaps,
            events: c.events,
            conversions: c.conversions,
            open_predictions: self.open,
            skipped: c.outcomes.skipped,
            targets,
            credit_divergence: (c.conversions > 0).then(|| c.divergence / n),
            channel_shares,
            cost: [cost(0), cost(1)],
            verdict,
        }
    }
}

/// Which role predicts the realised outcomes better: lower log-loss on every target with enough
/// outcomes (log-loss rewards both ranking and calibration).
fn verdict(targets: &[TargetReport]) -> String {
    let ready: Vec<&TargetReport> = targets.iter().filter(|t| t.outcomes >= MIN_OUTCOMES).collect();
    if ready.is_empty() {
        return format!("not enough outcomes yet (fewer than {MIN_OUTCOMES} per target; P(purchase in 7 d) resolves 7 days of event time after the event)");
    }
    let better = |t: &&TargetReport| match (t.active.log_loss, t.candidate.log_loss) {
        (Some(a), Some(c)) if c < a => 1,
        (Some(a), Some(c)) if c > a => -1,
        _ => 0,
    };
    let names = |want: i32| ready.iter().filter(|t| better(t) == want).map(|t| t.target.as_str()).collect::<Vec<_>>().join(", ");
    match (names(1), names(-1)) {
        (c, a) if a.is_empty() && !c.is_empty() => format!("candidate better on realised outcomes ({c})"),
        (c, a) if c.is_empty() && !a.is_empty() => format!("active better on realised outcomes ({a})"),
        (c, a) => format!("mixed: candidate better on {c}, active better on {a}"),
    }
}

fn num(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "-".into(), |v| format!("{v:.digits$}"))
}

/// The report as a table for people (`touchstream models report`).
pub fn render(r: &Report) -> String {
    let mut s = String::new();
    s += &format!("active:    {}\ncandidate: {}\n", r.active, r.candidate);
    s += &format!(
        "compared since the candidate was loaded or last swapped ({} swaps): {} events, {} conversions, {} predictions waiting for their outcome\n\n",
        r.swaps, r.events, r.conversions, r.open_predictions
    );
    s += &format!("{:<16} {:>9} {:>9} {:<18} {:>10} {:>10}\n", "target", "outcomes", "positive", "metric", ROLES[0], ROLES[1]);
    for t in &r.targets {
        let rows = [
            ("AUC", t.active.auc, t.candidate.auc),
            ("log-loss", t.active.log_loss, t.candidate.log_loss),
            ("calibration error", t.active.calibration_error, t.candidate.calibration_error),
        ];
        for (i, (metric, a, c)) in rows.iter().enumerate() {
            let (name, n, pos) = if i == 0 { (t.target.clone(), t.outcomes.to_string(), num(t.positive_rate, 3)) } else { Default::default() };
            s += &format!("{name:<16} {n:>9} {pos:>9} {metric:<18} {:>10} {:>10}\n", num(*a, 4), num(*c, 4));
        }
    }
    s += &format!("\ndeep credit: channel-share divergence per conversion {}\n", num(r.credit_divergence, 4));
    for (ch, a, c) in &r.channel_shares {
        s += &format!("  {ch:<16} {:>9.1}% {:>9.1}%\n", a * 100.0, c * 100.0);
    }
    s += &format!(
        "cost: step model {} / {} us per event, deep credit {} / {} ms per conversion (active / candidate)\n",
        num(r.cost[0].step_us_per_event, 1),
        num(r.cost[1].step_us_per_event, 1),
        num(r.cost[0].deep_ms_per_conversion, 3),
        num(r.cost[1].deep_ms_per_conversion, 3)
    );
    s += &format!("\nverdict: {}\n", r.verdict);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_names_the_better_role_once_outcomes_are_in() {
        let mut counts = ShadowCounts::default();
        // The candidate ranks and calibrates better: the active says 0.25 to everyone.
        for i in 0..2000 {
            let y = i % 4 == 0;
            counts.outcomes.purchase[0].add(0.25, y);
            counts.outcomes.purchase[1].add(if y { 0.8 } else { 0.1 }, y);
        }
        counts.events = 8000;
        counts.step_seconds = [0.08, 0.1];
        let mut b = Board::default();
        b.add(&counts);
        let r = b.report("a", "b");
        assert!(r.verdict.starts_with("candidate better"), "{}", r.verdict);
        assert!(r.targets[0].candidate.auc.unwrap() > r.targets[0].active.auc.unwrap());
        assert_eq!(r.targets[1].outcomes, 0);
        assert!((r.cost[0].step_us_per_event.unwrap() - 10.0).abs() < 1e-9);
        let text = render(&r);
        assert!(text.contains("p_purchase_7d") && text.contains("verdict: candidate better"), "{text}");
        let back: Report = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!((back.verdict, back.targets.len(), back.events), (r.verdict.clone(), 2, 8000));
        b.restart();
        assert!(b.report("b", "a").verdict.starts_with("not enough outcomes"));
    }
}
