//! Drift: how far live traffic's step-model features and scores are from the training log's. The
//! step model's metadata carries, per feature and per score (P(purchase) after every event,
//! P(abandon) after events that leave a cart open), bin edges and the training events' share in
//! each bin (`drift`, written by `models/log_stats.py`). Each partition engine bins a sample of its
//! events ([`DriftCounts`], arithmetic only, no allocation per event); the loop merges them into one
//! [`DriftWindow`] over the latest sampled events and reports a population-stability index per
//! column: PSI = Σ (live − train) · ln(live / train) over the bins, shares floored at 1e-4. Above
//! the metadata's `psi_threshold` (0.2 by convention) the model is due for retraining.

use serde::Deserialize;

use super::features;

/// Every `SAMPLE_EVERY`-th scored event of a partition is binned.
pub const SAMPLE_EVERY: u64 = 8;
/// Sampled events per block of the window, and blocks kept: PSI covers the latest 50 000-100 000.
pub const BLOCK: u64 = 10_000;
pub const BLOCKS: usize = 10;
/// Fewer sampled events than this give no PSI (too noisy).
pub const MIN_EVENTS: u64 = 2_000;
const FLOOR: f64 = 1e-4;

#[derive(Debug, Clone, Deserialize)]
pub struct DriftSpecJson {
    pub features: Vec<FeatureBinsJson>,
    /// `purchase_probability` and `abandonment_probability` (optional).
    #[serde(default)]
    pub scores: Vec<FeatureBinsJson>,
    #[serde(default = "default_threshold")]
    pub psi_threshold: f64,
}

fn default_threshold() -> f64 {
    0.2
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeatureBinsJson {
    pub name: String,
    pub edges: Vec<f32>,
    pub shares: Vec<f64>,
}

/// The scores a drift spec may bin, in column order after the features.
pub const SCORES: [&str; 2] = ["purchase_probability", "abandonment_probability"];

/// The training distribution, validated: per column (the features, then the scores), edges and
/// shares, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftSpec {
    /// Column names: the feature names, then the scores present.
    pub names: Vec<&'static str>,
    /// Per column: its edges (increasing).
    edges: Vec<Vec<f32>>,
    /// Per column: offset of its first bin in the flat bin arrays.
    offsets: Vec<usize>,
    /// Training share per bin (flat).
    expected: Vec<f64>,
    pub threshold: f64,
}

impl DriftSpec {
    /// Checks the metadata's `drift` against the feature order.
    pub fn from_json(spec: &DriftSpecJson) -> Result<DriftSpec, String> {
        if spec.features.len() != features::COUNT {
            return Err(format!("drift/features has {} entries, the model has {} features", spec.features.len(), features::COUNT));
        }
        if spec.scores.len() > SCORES.len() || spec.scores.iter().zip(SCORES).any(|(s, want)| s.name != want) {
            return Err(format!("drift/scores must name {SCORES:?} in that order"));
        }
        let (mut edges, mut offsets, mut expected, mut names) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (i, f) in spec.features.iter().chain(&spec.scores).enumerate() {
            let name = if i < features::COUNT { features::NAMES[i] } else { SCORES[i - features::COUNT] };
            if f.name != name {
                return Err(format!("drift/features[{i}] is `{}`, the model's feature {i} is `{name}`", f.name));
            }
            names.push(name);
            let increasing = f.edges.iter().all(|e| e.is_finite()) && f.edges.windows(2).all(|w| w[0] < w[1]);
            let sum: f64 = f.shares.iter().sum();
            if !increasing || f.shares.len() != f.edges.len() + 1 || f.shares.iter().any(|s| !(0.0..=1.0).contains(s)) || (sum - 1.0).abs() > 1e-3 {
                return Err(format!("drift column {i} (`{}`): edges must increase and shares (one more than edges) must sum to 1", f.name));
            }
            offsets.push(expected.len());
            edges.push(f.edges.clone());
            expected.extend_from_slice(&f.shares);
        }
        if !(spec.psi_threshold.is_finite() && spec.psi_threshold > 0.0) {
            return Err(format!("drift/psi_threshold must be > 0, got {}", spec.psi_threshold));
        }
        Ok(DriftSpec { names, edges, offsets, expected, threshold: spec.psi_threshold })
    }

    pub fn columns(&self) -> usize {
        self.edges.len()
    }

    #[inline]
    fn bin(&self, column: usize, x: f32) -> usize {
        self.offsets[column] + self.edges[column].partition_point(|&e| e <= x)
    }

    pub fn bins(&self) -> usize {
        self.expected.len()
    }
}

/// One partition's binned sample since the loop last took it.
#[derive(Debug, Default)]
pub struct DriftCounts {
    pub counts: Vec<u32>,
    /// Sampled values per column.
    pub totals: Vec<u32>,
    /// Sampled events (feature rows).
    pub events: u64,
    seen: u64,
    seen_scores: u64,
}

impl DriftCounts {
    /// Bins `x` (one event's features) when it falls on the sample.
    #[inline]
    pub fn observe(&mut self, spec: &DriftSpec, x: &[f32]) {
        self.seen += 1;
        if self.seen % SAMPLE_EVERY != 0 {
            return;
        }
        self.fit(spec);
        for (i, &v) in x.iter().enumerate().take(features::COUNT) {
            self.counts[spec.bin(i, v)] += 1;
            self.totals[i] += 1;
        }
        self.events += 1;
    }

    /// Bins one scored event's P(purchase) and, when it leaves a cart open, P(abandon), when it
    /// falls on the sample (a sample of its own, of the same rate).
    #[inline]
    pub fn observe_scores(&mut self, spec: &DriftSpec, purchase: f32, abandon: Option<f32>) {
        self.seen_scores += 1;
        if self.seen_scores % SAMPLE_EVERY != 0 || spec.columns() == features::COUNT {
            return;
        }
        self.fit(spec);
        for (j, v) in [Some(purchase), abandon].into_iter().enumerate() {
            let column = features::COUNT + j;
            if let (Some(v), true) = (v, column < spec.columns()) {
                self.counts[spec.bin(column, v)] += 1;
                self.totals[column] += 1;
            }
        }
    }

    fn fit(&mut self, spec: &DriftSpec) {
        if self.counts.len() != spec.bins() || self.totals.len() != spec.columns() {
            self.counts = vec![0; spec.bins()];
            self.totals = vec![0; spec.columns()];
        }
    }
}

/// The latest sampled events of all partitions, in blocks, and the PSI per feature over them.
#[derive(Debug, Default)]
pub struct DriftWindow {
    /// Which model's spec the counts belong to (its version).
    pub version: String,
    /// Full blocks: (bin counts, column totals, events).
    blocks: std::collections::VecDeque<(Vec<u64>, Vec<u64>, u64)>,
    current: Vec<u64>,
    current_totals: Vec<u64>,
    current_events: u64,
    /// Whether the largest PSI was last above the threshold (telemetry logs the crossings).
    pub alarmed: bool,
}

impl DriftWindow {
    /// Adds a partition's counts (taken and reset); a new model version starts the window over.
    pub fn absorb(&mut self, version: &str, spec: &DriftSpec, part: &mut DriftCounts) {
        if self.version != version || self.current.len() != spec.bins() {
            *self =
                DriftWindow { version: version.to_string(), current: vec![0; spec.bins()], current_totals: vec![0; spec.columns()], ..DriftWindow::default() };
        }
        if part.counts.len() != spec.bins() || part.totals.len() != spec.columns() {
            part.events = 0;
            return;
        }
        for (c, p) in self.current.iter_mut().zip(part.counts.iter_mut()).chain(self.current_totals.iter_mut().zip(part.totals.iter_mut())) {
            *c += u64::from(*p);
            *p = 0;
        }
        self.current_events += part.events;
        part.events = 0;
        if self.current_events >= BLOCK {
            let full = std::mem::replace(&mut self.current, vec![0; spec.bins()]);
            let totals = std::mem::replace(&mut self.current_totals, vec![0; spec.columns()]);
            self.blocks.push_back((full, totals, self.current_events));
            self.current_events = 0;
            if self.blocks.len() > BLOCKS {
                self.blocks.pop_front();
            }
        }
    }

    /// Sampled events in the window.
    pub fn events(&self) -> u64 {
        self.current_events + self.blocks.iter().map(|b| b.2).sum::<u64>()
    }

    /// PSI per column over the window (false below [`MIN_EVENTS`] sampled events; NaN for a score
    /// column with fewer than [`MIN_EVENTS`] / 4 sampled values).
    pub fn psi(&self, spec: &DriftSpec, out: &mut Vec<f64>) -> bool {
        out.clear();
        if self.events() < MIN_EVENTS || self.current.len() != spec.bins() {
            return false;
        }
        for (i, edges) in spec.edges.iter().enumerate() {
            let n = self.current_totals[i] + self.blocks.iter().map(|blk| blk.1[i]).sum::<u64>();
            if n < MIN_EVENTS / 4 {
                out.push(f64::NAN);
                continue;
            }
            let start = spec.offsets[i];
            let mut psi = 0.0;
            for b in start..start + edges.len() + 1 {
                let count = self.current[b] + self.blocks.iter().map(|blk| blk.0[b]).sum::<u64>();
                let live = (count as f64 / n as f64).max(FLOOR);
                let train = spec.expected[b].max(FLOOR);
                psi += (live - train) * (live / train).ln();
            }
            out.push(psi);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> DriftSpec {
        let features =
            (0..features::COUNT).map(|i| FeatureBinsJson { name: features::NAMES[i].to_string(), edges: vec![0.5], shares: vec![0.8, 0.2] }).collect();
        let scores = SCORES.iter().map(|s| FeatureBinsJson { name: s.to_string(), edges: vec![0.5], shares: vec![0.5, 0.5] }).collect();
        DriftSpec::from_json(&DriftSpecJson { features, scores, psi_threshold: 0.2 }).unwrap()
    }

    fn window_of(spec: &DriftSpec, share_of_ones: f64, events: u64) -> DriftWindow {
        let mut w = DriftWindow::default();
        let mut part = DriftCounts::default();
        for n in 0..events * SAMPLE_EVERY {
            let one = ((n / SAMPLE_EVERY) as f64 * share_of_ones).fract() + share_of_ones >= 1.0;
            part.observe(spec, &[if one { 1.0 } else { 0.0 }; features::COUNT]);
            part.observe_scores(spec, if one { 0.9 } else { 0.1 }, None);
        }
        w.absorb("v1", spec, &mut part);
        w
    }

    #[test]
    fn psi_is_near_zero_for_the_training_distribution_and_grows_with_the_shift() {
        let spec = spec();
        let mut psi = Vec::new();
        assert!(!window_of(&spec, 0.2, 100).psi(&spec, &mut psi), "too few events for a PSI");
        assert!(window_of(&spec, 0.2, 5_000).psi(&spec, &mut psi));
        assert!(psi[..features::COUNT].iter().all(|&p| p < 0.01), "{psi:?}");
        // P(purchase) is 0.9 for a fifth of the events against half in training; no P(abandon)
        assert!((psi[features::COUNT] - 0.416).abs() < 0.01, "{psi:?}");
        assert!(psi[features::COUNT + 1].is_nan());
        window_of(&spec, 0.5, 5_000).psi(&spec, &mut psi);
        // (0.5-0.8) ln(0.5/0.8) + (0.5-0.2) ln(0.5/0.2) = 0.416
        assert!((psi[0] - 0.416).abs() < 0.01, "{}", psi[0]);
    }

    #[test]
    fn the_window_keeps_the_latest_blocks_and_restarts_for_a_new_model() {
        let spec = spec();
        let mut w = DriftWindow::default();
        let mut part = DriftCounts::default();
        for _ in 0..BLOCKS + 3 {
            for _ in 0..BLOCK * SAMPLE_EVERY {
                part.observe(&spec, &[0.0; features::COUNT]);
            }
            w.absorb("v1", &spec, &mut part);
            assert_eq!(part.events, 0);
            assert!(part.counts.iter().all(|&c| c == 0), "taken");
        }
        assert_eq!(w.events(), BLOCKS as u64 * BLOCK);
        w.absorb("v2", &spec, &mut part);
        assert_eq!(w.events(), 0);
        assert_eq!(w.version, "v2");
    }

    #[test]
    fn a_spec_that_does_not_match_the_features_is_refused() {
        let mut bad = DriftSpecJson { features: Vec::new(), scores: Vec::new(), psi_threshold: 0.2 };
        assert!(DriftSpec::from_json(&bad).unwrap_err().contains("features"));
        bad.features = (0..features::COUNT)
            .map(|i| FeatureBinsJson { name: features::NAMES[i].to_string(), edges: vec![0.5, 0.1], shares: vec![0.3, 0.3, 0.4] })
            .collect();
        assert!(DriftSpec::from_json(&bad).unwrap_err().contains("edges must increase"));
    }
}
