//! The attribution model: P(conversion) of a journey of touchpoints under a mask. Deep credit
//! scores the journey and its counterfactuals (touchpoints masked out) in one batched call:
//! removal effects (the default) or Shapley values (exact for short journeys, sampled otherwise).

use tract_onnx::prelude::*;

use super::contract::{self, Dim, Metadata, PlanStates, Plans};
use super::step::flat;
use super::{ModelError, ModelFiles};
use crate::event::{Channel, EventType};
use crate::time::Millis;

const HOUR_MS: f64 = 3_600_000.0;
/// Campaign hash buckets: 0 = none, else 1 + FNV-1a 32 (campaign) mod 63.
pub const CAMPAIGN_BUCKETS: u32 = 64;

/// How deep credit is computed from the model's scores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeepMode {
    /// credit_i = max(0, P(journey) - P(journey without i)), normalised.
    Removal,
    /// Shapley values of P over the touchpoints, clipped at 0 and normalised: exact up to
    /// `exact_max` touchpoints, else `samples` random permutations (seeded per conversion).
    Shapley { samples: usize, exact_max: usize },
}

/// A loaded, validated attribution model (shared, immutable).
#[derive(Debug, Clone)]
pub struct AttributionModel {
    plans: Plans,
    pub meta: Metadata,
    /// Sequence length.
    pub len: usize,
    /// Touchpoints this close before the conversion are the purchase path: not scored, not credited.
    pub purchase_path_ms: Millis,
    pub previous_purchase_token: bool,
    /// Credits are scaled by the journey's incremental share `1 - P(none) / P(all)`; the rest is
    /// the customer's baseline (metadata `baseline_share`).
    pub baseline_share: bool,
    /// An additive-hazard model (`architecture = "additive_hazard"`, checked at load): removal
    /// effects come from two rows (`AttributionRunner::deep_credit`).
    pub additive: bool,
    /// log1p(720): ages are log1p(hours) / this.
    age_scale: f64,
}

/// One touchpoint as the model sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelTouch {
    pub channel: Channel,
    pub event_type: EventType,
    pub campaign_bucket: i64,
    pub ts: Millis,
}

pub fn campaign_bucket(campaign: Option<&str>) -> i64 {
    match campaign {
        None | Some("") => 0,
        Some(c) => {
            let mut h: u32 = 0x811C_9DC5;
            for b in c.bytes() {
                h ^= u32::from(b);
                h = h.wrapping_mul(0x0100_0193);
            }
            1 + i64::from(h % (CAMPAIGN_BUCKETS - 1))
        }
    }
}

impl AttributionModel {
    pub fn load(files: &ModelFiles) -> Result<AttributionModel, ModelError> {
        let meta = Metadata::parse(&files.name, &files.metadata)?;
        let len = meta.encoding("/L")?.as_u64().ok_or_else(|| meta.err("feature_encoding/L is not a number"))? as usize;
        if !(2..=1024).contains(&len) {
            return Err(meta.err(format!("feature_encoding/L = {len} is out of range")));
        }
        let seq: &[Dim] = &[Dim::Batch, Dim::Fixed(len)];
        meta.expect_tensors(
            "inputs",
            &meta.inputs,
            &[
                ("channel", "int64", seq),
                ("event_type", "int64", seq),
                ("campaign_bucket", "int64", seq),
                ("age", "float32", seq),
                ("position", "float32", seq),
                ("mask", "float32", seq),
            ],
        )?;
        meta.expect_tensors("outputs", &meta.outputs, &[("p_conversion", "float32", &[Dim::Batch, Dim::Fixed(1)]), ("attention", "float32", seq)])?;
        meta.expect_vocabulary("/channel_vocabulary", &contract::channel_names())?;
        meta.expect_vocabulary("/event_type_vocabulary", &contract::event_type_names())?;
        let bucket_rule = meta.encoding("/campaign_bucket")?.as_str().unwrap_or_default();
        if !bucket_rule.contains("mod 63") || !bucket_rule.contains("FNV-1a 32") {
            return Err(meta.err(format!("feature_encoding/campaign_bucket is `{bucket_rule}`; the processor uses 1 + FNV-1a 32 mod 63")));
        }
        let age_rule = meta.encoding("/age")?.as_str().unwrap_or_default();
        if !age_rule.contains("log1p(720)") {
            return Err(meta.err(format!("feature_encoding/age is `{age_rule}`; the processor uses log1p(hours) / log1p(720)")));
        }
        let purchase_path_minutes = meta.encoding_f64("/purchase_path_minutes").unwrap_or(0.0);
        let previous_purchase_token = meta.feature_encoding.pointer("/previous_purchase_token").and_then(|v| v.as_bool()).unwrap_or(false);
        let loaded = contract::load_plan(&meta, &files.onnx)?;
        let plans = Plans::build(&meta, loaded, &contract::BUCKETS)?;
        let mut model = AttributionModel {
            plans,
            baseline_share: meta.baseline_share,
            additive: false,
            meta,
            len,
            purchase_path_ms: (purchase_path_minutes * 60_000.0) as Millis,
            previous_purchase_token,
            age_scale: 720f64.ln_1p(),
        };
        if let (Some(fixtures), true) = (&files.fixtures, files.check_fixtures) {
            model.check_fixtures(fixtures)?;
        }
        if model.meta.architecture.as_deref() == Some("additive_hazard") {
            model.additive = model.check_additive()?;
        }
        Ok(model)
    }

    /// Whether the model behaves as it says it is additive: on journeys of every length from 1 to
    /// 24 touchpoints (pseudo-random channels, types and ages, fixed seed) the two-row removal
    /// effects agree with the row-per-touchpoint ones within 1e-4 of the conversion (journeys
    /// where one of the two sees no lift at all are skipped; at least half must be compared).
    /// Otherwise the model keeps one row per touchpoint, with a warning.
    fn check_additive(&mut self) -> Result<bool, ModelError> {
        let tract = |e: TractError| ModelError::Tract { model: self.meta.name.clone(), message: format!("{e:#}") };
        let mut runner = AttributionRunner::new(self).map_err(tract)?;
        let (day, conv) = (86_400_000, 40 * 86_400_000);
        let mut rng = 0x9E37_79B9_7F4A_7C15_u64;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // compared in shares of the conversion: with the baseline's share, a journey of almost no
        // lift gets almost no credit (normalised to 1, its credits would magnify the rounding of
        // one row per touchpoint, where P(all) - P(all but i) cancels in f32)
        let share = std::mem::replace(&mut self.baseline_share, true);
        let (mut worst, mut compared) = (0f64, 0);
        for k in 1..=24.min(self.len - usize::from(self.previous_purchase_token)) {
            let mut touches: Vec<ModelTouch> = (0..k)
                .map(|_| ModelTouch {
                    channel: Channel::ALL[(next() % Channel::ALL.len() as u64) as usize],
                    event_type: [EventType::Impression, EventType::Click, EventType::EmailOpen, EventType::EmailClick][(next() % 4) as usize],
                    campaign_bucket: (next() % 64) as i64,
                    ts: conv - (next() % (30 * day as u64)) as Millis,
                })
                .collect();
            touches.sort_by_key(|t| t.ts);
            self.additive = false;
            let rows = runner.deep_credit(self, DeepMode::Removal, conv, Some(conv - 60 * day), &touches, 1).map_err(tract)?;
            self.additive = true;
            let two = runner.deep_credit(self, DeepMode::Removal, conv, Some(conv - 60 * day), &touches, 1).map_err(tract)?;
            if rows.credits.len() != two.credits.len() {
                // one of them saw no lift at all: a journey at the edge of f32 resolution
                continue;
            }
            compared += 1;
            let d = rows.credits.iter().zip(&two.credits).map(|(a, b)| (a - b).abs()).fold((rows.baseline - two.baseline).abs(), f64::max);
            worst = worst.max(d);
        }
        self.baseline_share = share;
        let agrees = worst <= 1e-4 && compared >= 12;
        if !agrees {
            tracing::warn!(model = %self.meta.name, worst, "the model says it is an additive hazard, but its removal effects do not agree with the additive form: one row per touchpoint");
        }
        Ok(agrees)
    }

    pub fn version(&self) -> &str {
        &self.meta.version
    }

    fn check_fixtures(&self, bytes: &[u8]) -> Result<(), ModelError> {
        let parity = |index: usize, message: String| ModelError::Parity { model: self.meta.name.clone(), index, message };
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| parity(0, e.to_string()))?;
        let fixtures = doc["fixtures"].as_array().ok_or_else(|| parity(0, "no `fixtures` list".into()))?;
        let mut runner = AttributionRunner::new(self).map_err(|e| parity(0, e.to_string()))?;
        for (i, fx) in fixtures.iter().enumerate() {
            let input = &fx["inputs"];
            let ints = |name: &str| flat(&input[name]).iter().map(|v| *v as i64).collect::<Vec<i64>>();
            let (ch, et, cb) = (ints("channel"), ints("event_type"), ints("campaign_bucket"));
            let (age, pos, mask) = (flat(&input["age"]), flat(&input["position"]), flat(&input["mask"]));
            if [ch.len(), et.len(), cb.len(), age.len(), pos.len(), mask.len()].iter().any(|n| *n != self.len) {
                return Err(parity(i, "fixture inputs have the wrong size".into()));
            }
            runner.clear();
            runner.channel.extend_from_slice(&ch);
            runner.event_type.extend_from_slice(&et);
            runner.campaign.extend_from_slice(&cb);
            runner.age.extend_from_slice(&age);
            runner.position.extend_from_slice(&pos);
            runner.mask.extend_from_slice(&mask);
            runner.run(false).map_err(|e| parity(i, e.to_string()))?;
            let want = flat(&fx["onnxruntime"]["p_conversion"]).first().copied().unwrap_or(f32::NAN);
            if (runner.scores[0] - want).abs() > 1e-4 {
                return Err(parity(i, format!("p_conversion = {} but the fixture says {want}", runner.scores[0])));
            }
        }
        Ok(())
    }
}

/// Runs an [`AttributionModel`]; owns the execution state and the input buffers (reused).
pub struct AttributionRunner {
    model_len: usize,
    states: PlanStates,
    channel: Vec<i64>,
    event_type: Vec<i64>,
    campaign: Vec<i64>,
    age: Vec<f32>,
    position: Vec<f32>,
    mask: Vec<f32>,
    /// P(conversion) per row of the last run.
    pub scores: Vec<f32>,
    /// The `attention` output of row 0 of the last run that asked for it.
    attention: Vec<f32>,
    /// Coalitions (bit sets / permutations) of the Shapley modes.
    perm: Vec<usize>,
    phi: Vec<f64>,
}

impl std::fmt::Debug for AttributionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttributionRunner").field("len", &self.model_len).finish()
    }
}

/// Deep credit of one journey.
#[derive(Debug, Clone, PartialEq)]
pub struct DeepCredit {
    /// Per touchpoint given to [`AttributionRunner::deep_credit`], non-negative, summing to 1
    /// (to `1 - baseline` with a baseline share); empty when the model saw no lift and has no
    /// baseline share (the caller falls back to time decay).
    pub credits: Vec<f64>,
    /// P(conversion) of the full journey.
    pub p_conversion: f64,
    /// The share of the conversion left to the customer's own baseline: `P(none) / P(all)`,
    /// clamped to [0, 1]; 0 for a model without `baseline_share`.
    pub baseline: f64,
}

impl AttributionRunner {
    pub fn new(model: &AttributionModel) -> TractResult<AttributionRunner> {
        Ok(AttributionRunner {
            model_len: model.len,
            states: PlanStates::new(&model.plans)?,
            channel: Vec::new(),
            event_type: Vec::new(),
            campaign: Vec::new(),
            age: Vec::new(),
            position: Vec::new(),
            mask: Vec::new(),
            scores: Vec::new(),
            attention: Vec::new(),
            perm: Vec::new(),
            phi: Vec::new(),
        })
    }

    fn clear(&mut self) {
        self.channel.clear();
        self.event_type.clear();
        self.campaign.clear();
        self.age.clear();
        self.position.clear();
        self.mask.clear();
    }

    fn rows(&self) -> usize {
        self.mask.len() / self.model_len
    }

    /// Runs the rows written; keeps row 0's `attention` too when `attention` is set.
    fn run(&mut self, attention: bool) -> TractResult<()> {
        let (rows, l) = (self.rows(), self.model_len);
        // pad to the plan's row count with copies of row 0 (rows are independent)
        let (padded, state) = self.states.for_rows(rows)?;
        for _ in rows..padded {
            self.channel.extend_from_within(..l);
            self.event_type.extend_from_within(..l);
            self.campaign.extend_from_within(..l);
            self.age.extend_from_within(..l);
            self.position.extend_from_within(..l);
            self.mask.extend_from_within(..l);
        }
        let shape = [padded, l];
        let out = state.run(tvec![
            Tensor::from_shape(&shape, &self.channel)?.into(),
            Tensor::from_shape(&shape, &self.event_type)?.into(),
            Tensor::from_shape(&shape, &self.campaign)?.into(),
            Tensor::from_shape(&shape, &self.age)?.into(),
            Tensor::from_shape(&shape, &self.position)?.into(),
            Tensor::from_shape(&shape, &self.mask)?.into(),
        ])?;
        self.scores.clear();
        let view = out[0].try_as_plain_ram()?;
        self.scores.extend_from_slice(&view.as_slice::<f32>()?[..rows]);
        if attention {
            self.attention.clear();
            let view = out[1].try_as_plain_ram()?;
            self.attention.extend_from_slice(&view.as_slice::<f32>()?[..l]);
        }
        Ok(())
    }

    /// Writes the full journey as row 0 (mask = 1 on the token and the touchpoints). Returns the
    /// offset of the first touchpoint (1 with a previous-purchase token).
    fn write_base(&mut self, model: &AttributionModel, conv_ts: Millis, previous_purchase: Option<Millis>, touches: &[ModelTouch]) -> usize {
        self.clear();
        let l = model.len;
        let hours = |ts: Millis| ((conv_ts - ts).max(0) as f64 / HOUR_MS).ln_1p() / model.age_scale;
        let mut offset = 0;
        if let (true, Some(p)) = (model.previous_purchase_token, previous_purchase) {
            self.channel.push(Channel::Other.index() as i64);
            self.event_type.push(EventType::Purchase.index() as i64);
            self.campaign.push(0);
            self.age.push(hours(p).min(2.0) as f32);
            self.position.push(0.0);
            self.mask.push(1.0);
            offset = 1;
        }
        let k = touches.len();
        for (i, t) in touches.iter().enumerate() {
            self.channel.push(t.channel.index() as i64);
            self.event_type.push(t.event_type.index() as i64);
            self.campaign.push(t.campaign_bucket);
            self.age.push(hours(t.ts) as f32);
            self.position.push(((i as f64 + 0.5) / k as f64) as f32);
            self.mask.push(1.0);
        }
        for _ in offset + k..l {
            self.channel.push(0);
            self.event_type.push(0);
            self.campaign.push(0);
            self.age.push(0.0);
            self.position.push(0.0);
            self.mask.push(0.0);
        }
        offset
    }

    /// Appends a copy of row 0 with the touchpoints not in `keep` masked out.
    fn push_masked(&mut self, offset: usize, k: usize, keep: impl Fn(usize) -> bool) {
        let l = self.model_len;
        self.channel.extend_from_within(..l);
        self.event_type.extend_from_within(..l);
        self.campaign.extend_from_within(..l);
        self.age.extend_from_within(..l);
        self.position.extend_from_within(..l);
        let start = self.mask.len();
        self.mask.extend_from_within(..l);
        for i in 0..k {
            if !keep(i) {
                self.mask[start + offset + i] = 0.0;
            }
        }
    }

    /// Deep credit for `touches` (oldest first, at most the model's length, minus one with a
    /// previous-purchase token), one batched model call. `seed` makes sampled Shapley values
    /// deterministic per conversion.
    pub fn deep_credit(
        &mut self,
        model: &AttributionModel,
        mode: DeepMode,
        conv_ts: Millis,
        previous_purchase: Option<Millis>,
        touches: &[ModelTouch],
        seed: u64,
    ) -> TractResult<DeepCredit> {
        let k = touches.len();
        let offset = self.write_base(model, conv_ts, previous_purchase, touches);
        debug_assert!(offset + k <= model.len);
        self.phi.clear();
        self.phi.resize(k, 0.0);
        let mut p_none_row = 1 + k;
        match mode {
            DeepMode::Removal if model.additive => {
                // P = 1 - exp(-(b + sum_i e_i)) and attention_i = e_i / sum_j e_j: the hazards of the
                // full journey and of none give sum e, the attention each e_i, and the removal
                // effect is exactly P(all) - P(all but i) = exp(-H)(exp(e_i) - 1)
                self.push_masked(offset, k, |_| false); // row 1: no touchpoint
                self.run(true)?;
                p_none_row = 1;
                let hazard = |p: f32| -(-f64::from(p)).ln_1p();
                let (all, none) = (hazard(self.scores[0]), hazard(self.scores[1]));
                // no lift at f32 resolution: no credit, as with one row per touchpoint
                let sum = if self.scores[0] > self.scores[1] { all - none } else { 0.0 };
                let survival = (-all).exp();
                for i in 0..k {
                    let e = f64::from(self.attention[offset + i]) * sum;
                    self.phi[i] = survival * e.exp_m1();
                }
            }
            DeepMode::Removal => {
                for i in 0..k {
                    self.push_masked(offset, k, |j| j != i);
                }
                if model.baseline_share {
                    self.push_masked(offset, k, |_| false); // row k + 1: no touchpoint
                }
                self.run(false)?;
                let full = f64::from(self.scores[0]);
                for i in 0..k {
                    self.phi[i] = full - f64::from(self.scores[1 + i]);
                }
            }
            DeepMode::Shapley { exact_max, .. } if k <= exact_max => {
                // rows 1..=2^k: coalition bit set s = row - 1 (row 0 is the full journey again)
                for s in 0..(1usize << k) {
                    self.push_masked(offset, k, |j| s & (1 << j) != 0);
                }
                self.run(false)?;
                let v = |s: usize| f64::from(self.scores[1 + s]);
                let fact: Vec<f64> = (0..=k)
                    .scan(1.0, |acc, n| {
                        if n > 0 {
                            *acc *= n as f64;
                        }
                        Some(*acc)
                    })
                    .collect();
                for s in 0..(1usize << k) {
                    let size = s.count_ones() as usize;
                    for i in 0..k {
                        if s & (1 << i) == 0 {
                            let w = fact[size] * fact[k - size - 1] / fact[k];
                            self.phi[i] += w * (v(s | (1 << i)) - v(s));
                        }
                    }
                }
            }
            DeepMode::Shapley { samples, .. } => {
                // row 1: empty coalition; then for each permutation the k growing prefixes
                let mut rng = seed | 1;
                let mut next = move || {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    rng
                };
                self.push_masked(offset, k, |_| false);
                let mut perms = std::mem::take(&mut self.perm);
                perms.clear();
                let mut member = vec![false; k];
                for _ in 0..samples.max(1) {
                    let base = perms.len();
                    perms.extend(0..k);
                    for i in (1..k).rev() {
                        let j = (next() % (i as u64 + 1)) as usize;
                        perms.swap(base + i, base + j);
                    }
                    member.iter_mut().for_each(|m| *m = false);
                    for &p in &perms[base..base + k] {
                        member[p] = true;
                        self.push_masked(offset, k, |j| member[j]);
                    }
                }
                self.run(false)?;
                let n = samples.max(1);
                for s in 0..n {
                    let mut prev = f64::from(self.scores[1]);
                    for step in 0..k {
                        let cur = f64::from(self.scores[2 + s * k + step]);
                        self.phi[perms[s * k + step]] += (cur - prev) / n as f64;
                        prev = cur;
                    }
                }
                self.perm = perms;
            }
        }
        let p_conversion = f64::from(self.scores[0]);
        let p_none = match mode {
            DeepMode::Removal => self.scores.get(p_none_row).copied(),
            // row 1 is the empty coalition in both Shapley layouts
            DeepMode::Shapley { .. } => self.scores.get(1).copied(),
        };
        let baseline = match (model.baseline_share, p_none) {
            (true, Some(none)) if p_conversion > 0.0 => (f64::from(none) / p_conversion).clamp(0.0, 1.0),
            (true, _) => 1.0,
            (false, _) => 0.0,
        };
        let mut credits: Vec<f64> = self.phi.iter().map(|c| c.max(0.0)).collect();
        let total: f64 = credits.iter().sum();
        if total > 0.0 && total.is_finite() {
            let scale = (1.0 - baseline) / total;
            credits.iter_mut().for_each(|c| *c *= scale);
        } else if model.baseline_share && total == 0.0 {
            // the model sees no lift from any touchpoint: the baseline takes it all
            credits.iter_mut().for_each(|c| *c = 0.0);
            return Ok(DeepCredit { credits, p_conversion, baseline: 1.0 });
        } else {
            credits.clear();
        }
        Ok(DeepCredit { credits, p_conversion, baseline })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn campaign_buckets_follow_the_contract() {
        assert_eq!(campaign_bucket(None), 0);
        assert_eq!(campaign_bucket(Some("")), 0);
        // FNV-1a 32 of "a" is 0xE40C292C
        assert_eq!(campaign_bucket(Some("a")), 1 + (0xE40C_292Cu32 % 63) as i64);
    }

    /// With `baseline_share`, removal credits are scaled to the journey's incremental share: they
    /// sum to 1 - P(none) / P(all), the rest is the baseline; without it they sum to 1. The same
    /// journey gives the same proportions either way.
    #[test]
    fn a_baseline_share_leaves_what_no_touch_explains_uncredited() {
        let load = |share: bool| {
            let mut files = super::super::ModelFiles::builtin("attribution", false).unwrap();
            let mut meta: serde_json::Value = serde_json::from_slice(&files.metadata).unwrap();
            meta["baseline_share"] = serde_json::Value::Bool(share);
            files.metadata = serde_json::to_vec(&meta).unwrap();
            AttributionModel::load(&files).unwrap()
        };
        let day = 86_400_000;
        let conv = 40 * day;
        let touches: Vec<ModelTouch> =
            [(Channel::Display, EventType::Impression, 9 * day), (Channel::Email, EventType::EmailOpen, 3 * day), (Channel::PaidSearch, EventType::Click, day)]
                .iter()
                .map(|&(channel, event_type, before)| ModelTouch { channel, event_type, campaign_bucket: 0, ts: conv - before })
                .collect();
        let plain = load(false);
        let shared = load(true);
        assert!(plain.additive && shared.additive);
        let a = AttributionRunner::new(&plain).unwrap().deep_credit(&plain, DeepMode::Removal, conv, None, &touches, 1).unwrap();
        let b = AttributionRunner::new(&shared).unwrap().deep_credit(&shared, DeepMode::Removal, conv, None, &touches, 1).unwrap();
        assert_eq!(a.baseline, 0.0);
        assert!((a.credits.iter().sum::<f64>() - 1.0).abs() < 1e-9, "{a:?}");
        assert!(b.baseline > 0.0 && b.baseline < 1.0, "{b:?}");
        assert!((b.credits.iter().sum::<f64>() + b.baseline - 1.0).abs() < 1e-9, "{b:?}");
        for (x, y) in a.credits.iter().zip(&b.credits) {
            assert!((x * (1.0 - b.baseline) - y).abs() < 1e-9, "{a:?} vs {b:?}");
        }
        // Shapley values: the empty coalition is the baseline too
        let mut runner = AttributionRunner::new(&shared).unwrap();
        let s = runner.deep_credit(&shared, DeepMode::Shapley { samples: 8, exact_max: 8 }, conv, None, &touches, 1).unwrap();
        assert!((s.baseline - b.baseline).abs() < 1e-6, "{s:?} vs {b:?}");
    }

    /// The shipped hazard model is additive: its deep credit takes two rows, and gives what one
    /// row per touchpoint gives, on a long journey too (the load-time check covers 1..=24).
    #[test]
    fn an_additive_model_gives_its_removal_effects_from_two_rows() {
        let files = super::super::ModelFiles::builtin("attribution", false).unwrap();
        let mut model = AttributionModel::load(&files).unwrap();
        assert!(model.additive, "the shipped model is an additive hazard");
        let (day, conv) = (86_400_000, 40 * 86_400_000);
        let kinds = [
            (Channel::Display, EventType::Impression),
            (Channel::Email, EventType::EmailOpen),
            (Channel::PaidSocial, EventType::Click),
            (Channel::Affiliate, EventType::Click),
        ];
        let touches: Vec<ModelTouch> = (0..60)
            .map(|i| ModelTouch { channel: kinds[i % 4].0, event_type: kinds[i % 4].1, campaign_bucket: (i % 7) as i64, ts: conv - (60 - i as i64) * day / 3 })
            .collect();
        let mut runner = AttributionRunner::new(&model).unwrap();
        let two = runner.deep_credit(&model, DeepMode::Removal, conv, None, &touches, 1).unwrap();
        assert_eq!(runner.scores.len(), 2, "two rows");
        model.additive = false;
        let rows = runner.deep_credit(&model, DeepMode::Removal, conv, None, &touches, 1).unwrap();
        assert_eq!(runner.scores.len(), touches.len() + 2);
        assert!(two.credits.iter().sum::<f64>() > 0.5, "{two:?}");
        assert!((two.baseline - rows.baseline).abs() < 1e-6, "{} vs {}", two.baseline, rows.baseline);
        for (i, (a, b)) in two.credits.iter().zip(&rows.credits).enumerate() {
            assert!((a - b).abs() < 1e-4, "touchpoint {i}: {a} from two rows, {b} from one row each");
        }
    }
}
