//! The journey step model: a recurrent cell run once per event with the customer's hidden state in
//! and out, giving P(purchase within 7 days), P(the open cart is abandoned) and expected value.

use tract_onnx::prelude::*;

use super::contract::{self, Dim, Metadata, PlanStates, Plans};
use super::drift::DriftSpec;
use super::{features, ModelError, ModelFiles};

/// Index of each score in [`StepScores`].
pub const P_PURCHASE: usize = 0;
pub const P_ABANDON: usize = 1;
pub const EXPECTED_VALUE: usize = 2;

/// (P(purchase), P(abandon), expected value) after one event.
pub type StepScores = [f32; 3];

/// A loaded, validated step model (shared, immutable).
#[derive(Debug)]
pub struct StepModel {
    plans: Plans,
    pub meta: Metadata,
    pub hidden: usize,
    /// The inactivity after which `p_abandon` is meant to be read (ms).
    pub abandon_check_ms: i64,
    /// With a re-check head (`p_abandon_after`): the inactivities (ms, increasing) of its columns;
    /// empty without one.
    pub checks_ms: Vec<i64>,
    /// `alert_policies` of the metadata, by target delay.
    pub policies: Vec<AlertPolicy>,
    /// `explain.reference`: a typical cart event's features, for alert reasons (none: no reasons).
    pub reference: Option<Vec<f32>>,
    /// `drift`: the training log's feature distribution (none: no drift metrics).
    pub drift: Option<DriftSpec>,
}

/// The optional re-check output: P(abandon) after each of the inactivities in
/// `feature_encoding.abandon_checks_minutes`.
pub const CHECKS_OUTPUT: &str = "p_abandon_after";

/// An alert policy of the model: for carts idle up to about `target_ms`, the checks to read
/// (column of the re-check head, threshold), in inactivity order.
#[derive(Debug, Clone, PartialEq)]
pub struct AlertPolicy {
    pub target_ms: i64,
    pub checks: Vec<(usize, f64)>,
}

/// Checks `alert_policies` against the re-check schedule.
fn policies(meta: &Metadata, checks_ms: &[i64]) -> Result<Vec<AlertPolicy>, ModelError> {
    let mut out = Vec::new();
    for (i, p) in meta.alert_policies.iter().enumerate() {
        let bad = |m: String| meta.err(format!("alert_policies[{i}]: {m}"));
        let valid = p.target_delay_minutes.is_finite() && p.target_delay_minutes > 0.0 && !p.checks.is_empty();
        if !valid {
            return Err(bad("needs a positive target_delay_minutes and at least one check".into()));
        }
        let mut checks = Vec::new();
        for c in &p.checks {
            let ms = (c.minutes * 60_000.0).round() as i64;
            let column =
                checks_ms.iter().position(|&at| at == ms).ok_or_else(|| bad(format!("check at {} minutes is not in abandon_checks_minutes", c.minutes)))?;
            if !(0.0..=1.0).contains(&c.threshold) || checks.last().is_some_and(|&(prev, _)| prev >= column) {
                return Err(bad(format!("checks must be increasing with thresholds in [0, 1] (at {} minutes: {})", c.minutes, c.threshold)));
            }
            checks.push((column, c.threshold));
        }
        out.push(AlertPolicy { target_ms: (p.target_delay_minutes * 60_000.0).round() as i64, checks });
    }
    Ok(out)
}

impl StepModel {
    /// Loads and validates; plans are built for batches of up to `max_batch` rows.
    pub fn load(files: &ModelFiles, max_batch: usize) -> Result<StepModel, ModelError> {
        let meta = Metadata::parse(&files.name, &files.metadata)?;
        let hidden = meta.hidden_size.ok_or_else(|| meta.err("hidden_size is missing"))?;
        if hidden == 0 || hidden > 4096 {
            return Err(meta.err(format!("hidden_size {hidden} is out of range")));
        }
        let f = features::COUNT;
        meta.expect_tensors(
            "inputs",
            &meta.inputs,
            &[("features", "float32", &[Dim::Batch, Dim::Fixed(f)]), ("hidden_in", "float32", &[Dim::Batch, Dim::Fixed(hidden)])],
        )?;
        let checks_ms = match meta.feature_encoding.pointer("/abandon_checks_minutes") {
            None => Vec::new(),
            Some(v) => {
                let minutes: Vec<f64> = v
                    .as_array()
                    .ok_or_else(|| meta.err("feature_encoding/abandon_checks_minutes is not a list"))?
                    .iter()
                    .map(|m| m.as_f64().unwrap_or(f64::NAN))
                    .collect();
                let ok =
                    !minutes.is_empty() && minutes.len() <= 64 && minutes.iter().all(|m| m.is_finite() && *m > 0.0) && minutes.windows(2).all(|w| w[0] < w[1]);
                if !ok {
                    return Err(meta.err(format!("feature_encoding/abandon_checks_minutes must be 1 to 64 increasing positive numbers, got {minutes:?}")));
                }
                minutes.iter().map(|m| (m * 60_000.0) as i64).collect()
            }
        };
        let (d_checks, d_hidden, d_one) = ([Dim::Batch, Dim::Fixed(checks_ms.len())], [Dim::Batch, Dim::Fixed(hidden)], [Dim::Batch, Dim::Fixed(1)]);
        let mut outputs: Vec<(&str, &str, &[Dim])> = vec![
            ("hidden_out", "float32", &d_hidden),
            ("p_purchase", "float32", &d_one),
            ("p_abandon", "float32", &d_one),
            ("expected_value", "float32", &d_one),
        ];
        if !checks_ms.is_empty() {
            outputs.push((CHECKS_OUTPUT, "float32", &d_checks));
        }
        meta.expect_tensors("outputs", &meta.outputs, &outputs)?;
        let order: Vec<&str> = meta
            .encoding("/order")?
            .as_array()
            .ok_or_else(|| meta.err("feature_encoding/order is not a list"))?
            .iter()
            .map(|v| v.as_str().unwrap_or("?"))
            .collect();
        if order != features::NAMES {
            return Err(meta.err(format!("feature_encoding/order is {order:?}; the processor computes {:?}", features::NAMES)));
        }
        meta.expect_vocabulary("/event_type_vocabulary", &contract::event_type_names())?;
        let mut channels = contract::channel_names();
        channels.push("none");
        meta.expect_vocabulary("/channel_vocabulary", &channels)?;
        for (key, value) in features::NORMALISATION {
            let got = meta.encoding_f64(&format!("/normalisation/{key}"))?;
            if (got - value).abs() > 1e-12 {
                return Err(meta.err(format!("feature_encoding/normalisation/{key} is {got}; the processor uses {value}")));
            }
        }
        let check_minutes = meta.feature_encoding.pointer("/abandon_check_minutes").and_then(|v| v.as_f64()).unwrap_or(10.0);
        // Plans for fixed row counts up to `max_batch` (a fixed size runs ~1.6x faster than a
        // symbolic batch), a call padded up to the next one; only those whose rows come out bit
        // for bit as the `max_batch` plan's are kept, so outputs do not depend on batching.
        let plans = Plans::build(&meta, contract::load_plan(&meta, &files.onnx)?, &plan_sizes(max_batch))?;
        let plans = same_bits(&meta, plans, hidden)?;
        let policies = policies(&meta, &checks_ms)?;
        let reference = match &meta.explain {
            None => None,
            Some(e) if e.reference.len() == f && e.reference.iter().all(|v| v.is_finite()) => Some(e.reference.clone()),
            Some(e) => return Err(meta.err(format!("explain/reference must be {f} finite numbers (one per feature), got {}", e.reference.len()))),
        };
        let drift = meta.drift.as_ref().map(DriftSpec::from_json).transpose().map_err(|e| meta.err(e))?;
        let model = StepModel { plans, meta, hidden, abandon_check_ms: (check_minutes * 60_000.0) as i64, checks_ms, policies, reference, drift };
        if let Some(fixtures) = &files.fixtures {
            if files.check_fixtures {
                model.check_fixtures(fixtures)?;
            }
        }
        Ok(model)
    }

    pub fn version(&self) -> &str {
        &self.meta.version
    }

    /// Runs the committed parity fixtures (PyTorch / ONNX Runtime outputs) through tract.
    pub fn check_fixtures(&self, bytes: &[u8]) -> Result<(), ModelError> {
        let parity = |index: usize, message: String| ModelError::Parity { model: self.meta.name.clone(), index, message };
        let doc: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| parity(0, e.to_string()))?;
        let fixtures = doc["fixtures"].as_array().ok_or_else(|| parity(0, "no `fixtures` list".into()))?;
        let mut runner = StepRunner::new(self).map_err(|e| parity(0, e.to_string()))?;
        let k = self.checks_ms.len();
        let (mut h, mut s, mut c) = (vec![0f32; self.hidden], [[0f32; 3]], vec![0f32; k]);
        for (i, fx) in fixtures.iter().enumerate() {
            let x = flat(&fx["inputs"]["features"]);
            let hin = flat(&fx["inputs"]["hidden_in"]);
            if x.len() != features::COUNT || hin.len() != self.hidden {
                return Err(parity(i, "fixture inputs have the wrong size".into()));
            }
            runner.run(1, &x, &hin, &mut h, &mut s, &mut c).map_err(|e| parity(i, e.to_string()))?;
            let want = &fx["onnxruntime"];
            let close = |got: f32, want: f64, rel: bool| {
                let tol = if rel { 1e-4 * want.abs().max(1.0) } else { 1e-4 };
                (f64::from(got) - want).abs() <= tol
            };
            for (j, w) in flat(&want["hidden_out"]).iter().enumerate() {
                if !close(h[j], f64::from(*w), false) {
                    return Err(parity(i, format!("hidden_out[{j}] = {} but the fixture says {w}", h[j])));
                }
            }
            for (k, name) in ["p_purchase", "p_abandon", "expected_value"].iter().enumerate() {
                let w = flat(&want[*name]).first().copied().unwrap_or(f32::NAN);
                if !close(s[0][k], f64::from(w), *name == "expected_value") {
                    return Err(parity(i, format!("{name} = {} but the fixture says {w}", s[0][k])));
                }
            }
            if k > 0 {
                let w = flat(&want[CHECKS_OUTPUT]);
                if w.len() != k {
                    return Err(parity(i, format!("the fixture has {} values of {CHECKS_OUTPUT}, the model {k}", w.len())));
                }
                for (j, w) in w.iter().enumerate() {
                    if !close(c[j], f64::from(*w), false) {
                        return Err(parity(i, format!("{CHECKS_OUTPUT}[{j}] = {} but the fixture says {w}", c[j])));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Row counts to build a plan for: 2, 4, then every 4 rows to 16, then 1.5x the one before, up to
/// and including `max_batch` (none for 1 row: a single row takes other kernels than a batch).
pub fn plan_sizes(max_batch: usize) -> Vec<usize> {
    let mut sizes = Vec::new();
    let mut s = 2;
    while s < max_batch {
        sizes.push(s);
        s = if s < 4 {
            s * 2
        } else if s < 16 {
            s + 4
        } else {
            s + s / 2
        };
    }
    sizes.push(max_batch);
    sizes
}

/// Keeps the plans whose rows are bit for bit the largest plan's, checked on pseudo-random rows
/// (tract's kernels for a row count can accumulate in another order; then that size is dropped
/// and its calls pad further). A call's outputs then do not depend on how many rows share it.
fn same_bits(meta: &Metadata, plans: Plans, hidden: usize) -> Result<Plans, ModelError> {
    let tract = |e: TractError| ModelError::Tract { model: meta.name.clone(), message: format!("{e:#}") };
    let (f, last) = (features::COUNT, plans.sizes.len() - 1);
    let max = plans.sizes[last];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 40) as f32 / (1u64 << 24) as f32
    };
    let x: Vec<f32> = (0..max * f).map(|i| if i % f < 25 { f32::from(next() < 0.1) } else { next() * 2.0 }).collect();
    let h: Vec<f32> = (0..max * hidden).map(|_| next() * 2.0 - 1.0).collect();
    let run = |plan: &Arc<TypedRunnableModel>, rows: usize| -> TractResult<Vec<Vec<f32>>> {
        let xt = Tensor::from_shape(&[rows, f], &x[..rows * f])?;
        let ht = Tensor::from_shape(&[rows, hidden], &h[..rows * hidden])?;
        let out = TypedSimpleState::new(plan)?.run(tvec![xt.into(), ht.into()])?;
        out.iter().map(|t| Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())).collect()
    };
    let want = run(&plans.fixed[last], max).map_err(tract)?;
    let mut kept = Plans { sizes: Vec::new(), fixed: Vec::new(), symbolic: plans.symbolic.clone() };
    for (i, &rows) in plans.sizes.iter().enumerate() {
        let got = if i == last { want.clone() } else { run(&plans.fixed[i], rows).map_err(tract)? };
        let same = got.iter().zip(&want).all(|(g, w)| {
            let n = g.len();
            n * max == w.len() * rows && g.iter().zip(w).all(|(a, b)| a.to_bits() == b.to_bits())
        });
        if same {
            kept.sizes.push(rows);
            kept.fixed.push(plans.fixed[i].clone());
        } else {
            tracing::debug!(model = %meta.name, rows, "a plan for this many rows rounds differently; its calls pad further");
        }
    }
    Ok(kept)
}

/// Flattens a (nested) JSON array of numbers.
pub(crate) fn flat(v: &serde_json::Value) -> Vec<f32> {
    let mut out = Vec::new();
    fn walk(v: &serde_json::Value, out: &mut Vec<f32>) {
        match v {
            serde_json::Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            serde_json::Value::Number(n) => out.push(n.as_f64().unwrap_or(f64::NAN) as f32),
            _ => {}
        }
    }
    walk(v, &mut out);
    out
}

/// Runs a [`StepModel`]; owns the per-thread execution state (reused across calls).
pub struct StepRunner {
    states: PlanStates,
    hidden: usize,
    checks: usize,
    /// Padded inputs (reused).
    x: Vec<f32>,
    h: Vec<f32>,
}

impl std::fmt::Debug for StepRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRunner").field("hidden", &self.hidden).finish()
    }
}

impl StepRunner {
    pub fn new(model: &StepModel) -> TractResult<StepRunner> {
        Ok(StepRunner { states: PlanStates::new(&model.plans)?, hidden: model.hidden, checks: model.checks_ms.len(), x: Vec::new(), h: Vec::new() })
    }

    /// One batched step: `rows` feature vectors and hidden states in, new hidden states and scores
    /// out (row-major slices); `checks` gets the re-check probabilities (`rows` × the model's
    /// check count, nothing without a re-check head).
    pub fn run(&mut self, rows: usize, x: &[f32], h: &[f32], h_out: &mut [f32], scores: &mut [StepScores], checks: &mut [f32]) -> TractResult<()> {
        let (f, hd) = (features::COUNT, self.hidden);
        let (padded, state) = self.states.for_rows(rows)?;
        // pad with copies of row 0 up to the plan's row count (rows are independent)
        self.x.clear();
        self.x.extend_from_slice(&x[..rows * f]);
        self.h.clear();
        self.h.extend_from_slice(&h[..rows * hd]);
        for _ in rows..padded {
            self.x.extend_from_slice(&x[..f]);
            self.h.extend_from_slice(&h[..hd]);
        }
        let xt = Tensor::from_shape(&[padded, f], &self.x)?;
        let ht = Tensor::from_shape(&[padded, hd], &self.h)?;
        let out = state.run(tvec![xt.into(), ht.into()])?;
        let views = [out[0].try_as_plain_ram()?, out[1].try_as_plain_ram()?, out[2].try_as_plain_ram()?, out[3].try_as_plain_ram()?];
        h_out[..rows * self.hidden].copy_from_slice(&views[0].as_slice::<f32>()?[..rows * self.hidden]);
        let (pp, pa, ev) = (views[1].as_slice::<f32>()?, views[2].as_slice::<f32>()?, views[3].as_slice::<f32>()?);
        for r in 0..rows {
            scores[r] = [pp[r], pa[r], ev[r]];
        }
        if self.checks > 0 {
            let n = rows * self.checks;
            checks[..n].copy_from_slice(&out[4].try_as_plain_ram()?.as_slice::<f32>()?[..n]);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calls of any row count run on a smaller plan than `max_batch`'s, with the same bits per row.
    #[test]
    fn each_row_count_pads_to_a_near_plan_with_the_full_plans_bits() {
        assert_eq!(plan_sizes(16), [2, 4, 8, 12, 16]);
        assert_eq!(plan_sizes(1), [1]);
        assert_eq!(plan_sizes(3), [2, 3]);
        assert_eq!(plan_sizes(64), [2, 4, 8, 12, 16, 24, 36, 54, 64]);
        let model = StepModel::load(&ModelFiles::builtin("journey_step", false).unwrap(), 16).unwrap();
        assert_eq!(model.plans.sizes, [2, 4, 8, 12, 16], "the shipped model keeps every plan");
        let (f, hd, k) = (features::COUNT, model.hidden, model.checks_ms.len());
        let x: Vec<f32> = (0..16 * f).map(|i| ((i * 37) % 101) as f32 / 50.0 - 0.3).collect();
        let h: Vec<f32> = (0..16 * hd).map(|i| ((i * 53) % 97) as f32 / 48.0 - 1.0).collect();
        let mut runner = StepRunner::new(&model).unwrap();
        let run = |runner: &mut StepRunner, rows: usize| {
            let (mut ho, mut s, mut c) = (vec![0f32; rows * hd], vec![[0f32; 3]; rows], vec![0f32; rows * k]);
            runner.run(rows, &x, &h, &mut ho, &mut s, &mut c).unwrap();
            (ho, s, c)
        };
        let (full_h, full_s, full_c) = run(&mut runner, 16);
        for rows in 1..16 {
            let (ho, s, c) = run(&mut runner, rows);
            let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same(&ho, &full_h[..rows * hd]) && s[..] == full_s[..rows] && same(&c, &full_c[..rows * k]), "{rows} rows");
        }
    }
}
