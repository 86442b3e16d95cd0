//! A model's written contract (`metadata.json` beside its `model.onnx`) and the checks that the
//! contract, the ONNX graph and what this processor computes all agree.

use serde::Deserialize;
use serde_json::Value;
use tract_onnx::prelude::*;

use super::ModelError;
use crate::event::{Channel, EventType};

/// The part of `metadata.json` the processor reads; everything else is documentation.
#[derive(Debug, Clone, Deserialize)]
pub struct Metadata {
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub architecture: Option<String>,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    #[serde(default)]
    pub hidden_size: Option<usize>,
    #[serde(default)]
    pub feature_encoding: Value,
    /// Attribution models: deep credit leaves the share of the conversion that the journey with no
    /// touchpoint already explains, `1 - P(none) / P(all)`, to the customer's own baseline (an
    /// additive-hazard model says so; a classifier need not).
    #[serde(default)]
    pub baseline_share: bool,
    /// Step models: the abandonment alert policies, one per target delay (chosen at training time
    /// on a selection run; see `alerts::Policy`).
    #[serde(default)]
    pub alert_policies: Vec<AlertPolicySpec>,
    /// Step models: what alert reasons compare a customer's inputs with (`alerts::reasons`).
    #[serde(default)]
    pub explain: Option<ExplainSpec>,
    /// Step models: the training log's feature distribution (`inference::drift`).
    #[serde(default)]
    pub drift: Option<super::drift::DriftSpecJson>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ExplainSpec {
    /// The mean feature vector of the training log's events after which a cart is open.
    pub reference: Vec<f32>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct AlertPolicySpec {
    pub target_delay_minutes: f64,
    pub checks: Vec<PolicyCheckSpec>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PolicyCheckSpec {
    pub minutes: f64,
    pub threshold: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: String,
    /// Dimensions: a number, or a name for a symbolic one (the batch).
    pub shape: Vec<Value>,
}

/// An expected dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    Batch,
    Fixed(usize),
}

impl Metadata {
    pub fn parse(model: &str, bytes: &[u8]) -> Result<Metadata, ModelError> {
        serde_json::from_slice(bytes).map_err(|e| ModelError::Metadata { model: model.to_string(), message: e.to_string() })
    }

    pub fn err(&self, message: impl Into<String>) -> ModelError {
        ModelError::Contract { model: self.name.clone(), message: message.into() }
    }

    /// The inputs (or outputs) must be exactly `expected`, in this order.
    pub fn expect_tensors(&self, what: &str, actual: &[TensorSpec], expected: &[(&str, &str, &[Dim])]) -> Result<(), ModelError> {
        let names: Vec<&str> = actual.iter().map(|t| t.name.as_str()).collect();
        let want: Vec<&str> = expected.iter().map(|e| e.0).collect();
        if names != want {
            return Err(self.err(format!("{what} are {names:?}, the processor expects {want:?}")));
        }
        for (t, (name, dtype, dims)) in actual.iter().zip(expected) {
            if t.dtype != *dtype {
                return Err(self.err(format!("{what} `{name}` has dtype {}, expected {dtype}", t.dtype)));
            }
            if t.shape.len() != dims.len() {
                return Err(self.err(format!("{what} `{name}` has rank {}, expected {}", t.shape.len(), dims.len())));
            }
            for (i, (d, want)) in t.shape.iter().zip(dims.iter()).enumerate() {
                let ok = match (d, want) {
                    (Value::String(_), Dim::Batch) => true,
                    (Value::Number(n), Dim::Fixed(k)) => n.as_u64() == Some(*k as u64),
                    _ => false,
                };
                if !ok {
                    return Err(self.err(format!("{what} `{name}` dimension {i} is {d}, expected {want:?}")));
                }
            }
        }
        Ok(())
    }

    /// A value of `feature_encoding` by JSON pointer (e.g. `/L`).
    pub fn encoding(&self, pointer: &str) -> Result<&Value, ModelError> {
        self.feature_encoding.pointer(pointer).ok_or_else(|| self.err(format!("feature_encoding{pointer} is missing")))
    }

    pub fn encoding_f64(&self, pointer: &str) -> Result<f64, ModelError> {
        self.encoding(pointer)?.as_f64().ok_or_else(|| self.err(format!("feature_encoding{pointer} is not a number")))
    }

    /// A vocabulary must map exactly the processor's enum to its indices, in the enum's order.
    pub fn expect_vocabulary(&self, pointer: &str, names: &[&str]) -> Result<(), ModelError> {
        let v = self.encoding(pointer)?.as_object().ok_or_else(|| self.err(format!("feature_encoding{pointer} is not an object")))?;
        let mut got: Vec<(&str, u64)> = v.iter().map(|(k, i)| (k.as_str(), i.as_u64().unwrap_or(u64::MAX))).collect();
        got.sort_by_key(|(_, i)| *i);
        let want: Vec<(&str, u64)> = names.iter().enumerate().map(|(i, n)| (*n, i as u64)).collect();
        if got != want {
            return Err(self.err(format!("feature_encoding{pointer} is {got:?}; the processor encodes {want:?}")));
        }
        Ok(())
    }
}

pub fn event_type_names() -> Vec<&'static str> {
    EventType::ALL.iter().map(|e| e.as_str()).collect()
}

pub fn channel_names() -> Vec<&'static str> {
    Channel::ALL.iter().map(|c| c.as_str()).collect()
}

/// A checked model: the decluttered graph (for plans of a fixed batch size) and a runnable plan for
/// a symbolic batch.
#[derive(Debug)]
pub struct Loaded {
    pub typed: TypedModel,
    pub plan: Arc<TypedRunnableModel>,
}

/// Optimises `typed` into a plan for exactly `rows` rows (tract picks better kernels for a known
/// batch size).
pub fn fixed_plan(meta: &Metadata, typed: &TypedModel, rows: usize) -> Result<Arc<TypedRunnableModel>, ModelError> {
    let tract = |e: TractError| ModelError::Tract { model: meta.name.clone(), message: format!("{e:#}") };
    let mut subs = std::collections::HashMap::new();
    subs.insert(typed.sym("batch"), TDim::Val(rows as i64));
    typed.set_symbols(&subs).map_err(tract)?.into_optimized().map_err(tract)?.into_runnable().map_err(tract)
}

/// Batch sizes with a plan of their own; a call pads its rows up to the next one (rows are
/// independent in these models). Larger calls use the symbolic plan.
pub const BUCKETS: [usize; 20] = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024];

/// Plans for every bucket plus the symbolic one (immutable, shared).
#[derive(Debug, Clone)]
pub struct Plans {
    /// Row counts with a plan of their own, ascending.
    pub sizes: Vec<usize>,
    pub fixed: Vec<Arc<TypedRunnableModel>>,
    pub symbolic: Arc<TypedRunnableModel>,
}

impl Plans {
    pub fn build(meta: &Metadata, loaded: Loaded, sizes: &[usize]) -> Result<Plans, ModelError> {
        let fixed = sizes.iter().map(|&b| fixed_plan(meta, &loaded.typed, b)).collect::<Result<_, _>>()?;
        Ok(Plans { sizes: sizes.to_vec(), fixed, symbolic: loaded.plan })
    }
}

/// Per-thread execution states of [`Plans`] (created on first use).
pub struct PlanStates {
    plans: Plans,
    fixed: Vec<Option<TypedSimpleState>>,
    symbolic: TypedSimpleState,
}

impl PlanStates {
    pub fn new(plans: &Plans) -> TractResult<PlanStates> {
        Ok(PlanStates { fixed: vec![None; plans.fixed.len()], symbolic: TypedSimpleState::new(&plans.symbolic)?, plans: plans.clone() })
    }

    /// The row count to pad `rows` to, and the state that runs it.
    pub fn for_rows(&mut self, rows: usize) -> TractResult<(usize, &mut TypedSimpleState)> {
        match self.plans.sizes.iter().position(|&b| b >= rows) {
            Some(i) => {
                if self.fixed[i].is_none() {
                    self.fixed[i] = Some(TypedSimpleState::new(&self.plans.fixed[i])?);
                }
                Ok((self.plans.sizes[i], self.fixed[i].as_mut().expect("created")))
            }
            None => Ok((rows, &mut self.symbolic)),
        }
    }
}

/// Loads the ONNX graph, checks that its inputs and outputs are the contract's (names, element
/// types, ranks), and optimises it into a runnable plan for a symbolic batch.
pub fn load_plan(meta: &Metadata, onnx: &[u8]) -> Result<Loaded, ModelError> {
    let tract = |e: TractError| ModelError::Tract { model: meta.name.clone(), message: format!("{e:#}") };
    let model = tract_onnx::onnx().model_for_read(&mut std::io::Cursor::new(onnx)).map_err(tract)?;
    let inputs: Vec<String> = model.input_outlets().map_err(tract)?.iter().map(|o| model.node(o.node).name.clone()).collect();
    let want: Vec<String> = meta.inputs.iter().map(|t| t.name.clone()).collect();
    if inputs != want {
        return Err(meta.err(format!("the ONNX graph's inputs are {inputs:?}, metadata.json says {want:?}")));
    }
    let outputs: Vec<String> = model
        .output_outlets()
        .map_err(tract)?
        .iter()
        .map(|o| model.outlet_label(*o).map(str::to_string).unwrap_or_else(|| model.node(o.node).name.clone()))
        .collect();
    let want: Vec<String> = meta.outputs.iter().map(|t| t.name.clone()).collect();
    if outputs != want {
        return Err(meta.err(format!("the ONNX graph's outputs are {outputs:?}, metadata.json says {want:?}")));
    }
    let typed = model.into_typed().map_err(tract)?;
    for (i, spec) in meta.inputs.iter().enumerate() {
        let fact = typed.input_fact(i).map_err(tract)?;
        let dt = match spec.dtype.as_str() {
            "float32" => f32::datum_type(),
            "int64" => i64::datum_type(),
            other => return Err(meta.err(format!("input `{}` has dtype {other}; only float32 and int64 are supported", spec.name))),
        };
        if fact.datum_type != dt || fact.rank() != spec.shape.len() {
            return Err(meta.err(format!("the ONNX input `{}` is {fact:?}, metadata.json says {} {:?}", spec.name, spec.dtype, spec.shape)));
        }
    }
    let typed = typed.into_decluttered().map_err(tract)?;
    let plan = typed.clone().into_optimized().map_err(tract)?.into_runnable().map_err(tract)?;
    Ok(Loaded { typed, plan })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabularies_must_match_the_enum_order() {
        let meta = Metadata::parse(
            "m",
            br#"{"name":"m","version":"1","inputs":[],"outputs":[],
                "feature_encoding":{"v":{"paid_search":1,"organic_search":0}}}"#,
        )
        .unwrap();
        let err = meta.expect_vocabulary("/v", &["paid_search", "organic_search"]).unwrap_err().to_string();
        assert!(err.contains("feature_encoding/v"), "{err}");
        assert!(meta.expect_vocabulary("/v", &["organic_search", "paid_search"]).is_ok());
    }

    #[test]
    fn tensor_specs_are_checked_by_name_dtype_and_shape() {
        let meta = Metadata::parse("m", br#"{"name":"m","version":"1","inputs":[{"name":"x","dtype":"float32","shape":["batch",3]}],"outputs":[]}"#).unwrap();
        assert!(meta.expect_tensors("inputs", &meta.inputs, &[("x", "float32", &[Dim::Batch, Dim::Fixed(3)])]).is_ok());
        let e = meta.expect_tensors("inputs", &meta.inputs, &[("x", "float32", &[Dim::Batch, Dim::Fixed(4)])]).unwrap_err();
        assert!(e.to_string().contains("dimension 1"), "{e}");
        let e = meta.expect_tensors("inputs", &meta.inputs, &[("y", "float32", &[Dim::Batch, Dim::Fixed(3)])]).unwrap_err();
        assert!(e.to_string().contains("[\"x\"]"), "{e}");
    }
}
