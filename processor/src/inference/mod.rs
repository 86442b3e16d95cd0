//! The ONNX models on the stream, run with tract on the CPU: loading and validating them against
//! their written contract (`metadata.json`), the journey step model ([`step`]) run once per event in
//! batched waves, and deep credit from the attribution model ([`deep_credit`]).
//!
//! A [`ModelSet`] is immutable and shared; each partition engine owns its own runners (tract
//! execution state and buffers), so nothing is locked on the hot path.

pub mod contract;
pub mod deep_credit;
pub mod drift;
pub mod features;
pub mod outcomes;
pub mod step;

use std::path::Path;
use std::sync::Arc;

use crate::config::ModelsConfig;
use deep_credit::{AttributionModel, DeepMode};
use step::StepModel;

/// A model that cannot be used. Never retried: at start the processor exits, on a reload the old
/// models keep serving.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("model {model}: cannot read {path}: {message}")]
    Read { model: String, path: String, message: String },
    #[error("model {model}: metadata.json is invalid: {message}")]
    Metadata { model: String, message: String },
    #[error("model {model}: contract mismatch: {message}")]
    Contract { model: String, message: String },
    #[error("model {model}: tract cannot load it: {message}")]
    Tract { model: String, message: String },
    #[error("model {model}: parity fixture {index} failed: {message}")]
    Parity { model: String, index: usize, message: String },
    #[error("model {model}: {message}")]
    AlertPolicy { model: String, message: String },
    #[error("config key `models.candidate`: {0}")]
    Candidate(Box<ModelError>),
}

/// The files of one model.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    pub name: String,
    pub onnx: Vec<u8>,
    pub metadata: Vec<u8>,
    pub fixtures: Option<Vec<u8>>,
    /// Run the parity fixtures through tract at load time.
    pub check_fixtures: bool,
}

/// A built-in model: its name, `model.onnx`, `metadata.json` and `fixtures.json`.
type BuiltinModel = (&'static str, &'static [u8], &'static [u8], &'static [u8]);

/// The default models, built into the binary (trained on simulated data; see models/README.md).
const BUILTIN: [BuiltinModel; 3] = [
    (
        "journey_step",
        include_bytes!("../../../models/journey_step/model.onnx"),
        include_bytes!("../../../models/journey_step/metadata.json"),
        include_bytes!("../../../models/journey_step/fixtures.json"),
    ),
    (
        "attribution",
        include_bytes!("../../../models/attribution/model.onnx"),
        include_bytes!("../../../models/attribution/metadata.json"),
        include_bytes!("../../../models/attribution/fixtures.json"),
    ),
    (
        "attribution_cnn",
        include_bytes!("../../../models/attribution_cnn/model.onnx"),
        include_bytes!("../../../models/attribution_cnn/metadata.json"),
        include_bytes!("../../../models/attribution_cnn/fixtures.json"),
    ),
];

impl ModelFiles {
    /// `<dir>/<name>/{model.onnx, metadata.json, fixtures.json}`; fixtures are optional.
    pub fn from_dir(dir: &Path, name: &str, check_fixtures: bool) -> Result<ModelFiles, ModelError> {
        let read = |file: &str| {
            let path = dir.join(name).join(file);
            std::fs::read(&path).map_err(|e| ModelError::Read { model: name.to_string(), path: path.display().to_string(), message: e.to_string() })
        };
        let fixtures = dir.join(name).join("fixtures.json").exists().then(|| read("fixtures.json")).transpose()?;
        Ok(ModelFiles { name: name.to_string(), onnx: read("model.onnx")?, metadata: read("metadata.json")?, fixtures, check_fixtures })
    }

    /// A model built into the binary.
    pub fn builtin(name: &str, check_fixtures: bool) -> Result<ModelFiles, ModelError> {
        let (_, onnx, metadata, fixtures) = BUILTIN.iter().find(|b| b.0 == name).ok_or_else(|| ModelError::Read {
            model: name.to_string(),
            path: "(built in)".into(),
            message: format!("no built-in model named `{name}`; built in: {:?}", BUILTIN.map(|b| b.0)),
        })?;
        Ok(ModelFiles { name: name.to_string(), onnx: onnx.to_vec(), metadata: metadata.to_vec(), fixtures: Some(fixtures.to_vec()), check_fixtures })
    }

    fn load(cfg: &ModelsConfig, dir: &str, name: &str) -> Result<ModelFiles, ModelError> {
        if dir.trim().is_empty() {
            ModelFiles::builtin(name, cfg.check_fixtures)
        } else {
            ModelFiles::from_dir(Path::new(dir), name, cfg.check_fixtures)
        }
    }
}

/// The models the processor runs, loaded and validated; immutable and shared.
#[derive(Debug)]
pub struct ModelSet {
    pub step: StepModel,
    pub attribution: AttributionModel,
    pub deep_mode: DeepMode,
    /// Rows per tract call of the step model.
    pub max_batch: usize,
    /// Stamped on every output a model touched: the versions of both models.
    pub version: Arc<str>,
}

impl ModelSet {
    /// Loads the configured models, or `None` when models are disabled.
    pub fn load(cfg: &ModelsConfig) -> Result<Option<Arc<ModelSet>>, ModelError> {
        if !cfg.enabled {
            return Ok(None);
        }
        ModelSet::load_dir(cfg, &cfg.dir).map(Some)
    }

    /// Loads the candidate models (`models.candidate`), or `None` when there are none.
    pub fn load_candidate(cfg: &ModelsConfig) -> Result<Option<Arc<ModelSet>>, ModelError> {
        if !cfg.enabled || cfg.candidate.trim().is_empty() {
            return Ok(None);
        }
        ModelSet::load_dir(cfg, &cfg.candidate).map(Some).map_err(|e| ModelError::Candidate(Box::new(e)))
    }

    fn load_dir(cfg: &ModelsConfig, dir: &str) -> Result<Arc<ModelSet>, ModelError> {
        let step = StepModel::load(&ModelFiles::load(cfg, dir, &cfg.step)?, cfg.max_batch)?;
        let attribution = AttributionModel::load(&ModelFiles::load(cfg, dir, &cfg.attribution)?)?;
        let version: Arc<str> = if step.version() == attribution.version() {
            step.version().into()
        } else {
            format!("{}={};{}={}", step.meta.name, step.version(), attribution.meta.name, attribution.version()).into()
        };
        let deep_mode = match cfg.deep_credit {
            crate::config::DeepCreditMode::Removal => DeepMode::Removal,
            crate::config::DeepCreditMode::Shapley => DeepMode::Shapley { samples: cfg.shapley_samples, exact_max: cfg.shapley_exact_max },
        };
        Ok(Arc::new(ModelSet { step, attribution, deep_mode, max_batch: cfg.max_batch, version }))
    }
}

/// Watches the models folder (polling modification times every 2 s, no extra dependency) and
/// sets `reload` when a file of the configured models changes; stops with `stop`.
pub fn watch(cfg: &ModelsConfig, reload: Arc<std::sync::atomic::AtomicBool>, stop: Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::Ordering;
    let dirs = [Path::new(&cfg.dir).join(&cfg.step), Path::new(&cfg.dir).join(&cfg.attribution)];
    let stamp = move || -> Vec<(std::path::PathBuf, Option<std::time::SystemTime>, u64)> {
        let mut files = Vec::new();
        for d in &dirs {
            for f in ["model.onnx", "metadata.json", "fixtures.json"] {
                let p = d.join(f);
                let m = std::fs::metadata(&p).ok();
                files.push((p, m.as_ref().and_then(|m| m.modified().ok()), m.map_or(0, |m| m.len())));
            }
        }
        files
    };
    std::thread::Builder::new()
        .name("model-watch".into())
        .spawn(move || {
            let mut last = stamp();
            while !stop.load(Ordering::Acquire) {
                std::thread::sleep(std::time::Duration::from_secs(2));
                let now = stamp();
                if now != last {
                    // let a copy finish before loading
                    std::thread::sleep(std::time::Duration::from_millis(500));
                    last = stamp();
                    tracing::info!("the models folder changed: reloading at the next batch boundary");
                    reload.store(true, Ordering::Release);
                }
            }
        })
        .expect("spawn the model watcher");
}

/// The built-in models, loaded once per test binary.
#[cfg(test)]
pub(crate) fn test_models() -> Arc<ModelSet> {
    static MODELS: std::sync::OnceLock<Arc<ModelSet>> = std::sync::OnceLock::new();
    MODELS
        .get_or_init(|| {
            let mut cfg = crate::config::Config::defaults().models;
            cfg.check_fixtures = false;
            ModelSet::load(&cfg).unwrap().unwrap()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn builtin_models_load_validate_and_pass_their_parity_fixtures() {
        let mut cfg = Config::defaults().models;
        cfg.check_fixtures = true;
        let set = ModelSet::load(&cfg).unwrap().expect("enabled by default");
        assert_eq!(set.step.hidden, 64);
        assert_eq!(set.attribution.len, 64);
        // the additive-hazard model reads the whole journey: no purchase-path window
        assert_eq!(set.attribution.purchase_path_ms, 0);
        assert!(!set.version.is_empty());
        // the CNN variant runs under the same contract
        AttributionModel::load(&ModelFiles::builtin("attribution_cnn", true).unwrap()).unwrap();
    }

    #[test]
    fn a_model_whose_contract_differs_is_rejected_naming_the_mismatch() {
        let mut files = ModelFiles::builtin("journey_step", false).unwrap();
        let text = String::from_utf8(files.metadata.clone()).unwrap().replacen("\"hidden_in\"", "\"state_in\"", 1);
        files.metadata = text.into_bytes();
        let err = StepModel::load(&files, 64).unwrap_err().to_string();
        assert!(err.contains("journey_step") && err.contains("state_in"), "{err}");

        let mut files = ModelFiles::builtin("attribution", false).unwrap();
        let text = String::from_utf8(files.metadata.clone()).unwrap().replacen("\"paid_search\": 0", "\"paid_search\": 5", 1);
        files.metadata = text.into_bytes();
        let err = AttributionModel::load(&files).unwrap_err().to_string();
        assert!(err.contains("channel_vocabulary"), "{err}");

        // a step model file under the attribution contract
        let mut files = ModelFiles::builtin("attribution", false).unwrap();
        files.onnx = ModelFiles::builtin("journey_step", false).unwrap().onnx;
        let err = AttributionModel::load(&files).unwrap_err().to_string();
        assert!(err.contains("inputs are"), "{err}");

        // the re-check schedule must match the re-check output, and be increasing
        let schedule = |edit: &dyn Fn(&mut Vec<serde_json::Value>)| {
            let mut files = ModelFiles::builtin("journey_step", false).unwrap();
            let mut meta: serde_json::Value = serde_json::from_slice(&files.metadata).unwrap();
            edit(meta["feature_encoding"]["abandon_checks_minutes"].as_array_mut().unwrap());
            files.metadata = serde_json::to_vec(&meta).unwrap();
            StepModel::load(&files, 64).unwrap_err().to_string()
        };
        let err = schedule(&|m| {
            m.pop();
        });
        assert!(err.contains("p_abandon_after") && err.contains("dimension 1"), "{err}");
        let err = schedule(&|m| m.swap(0, 1));
        assert!(err.contains("abandon_checks_minutes must be"), "{err}");
    }

    #[test]
    fn the_watcher_asks_for_a_reload_when_a_model_file_changes() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = std::env::temp_dir().join(format!("touchstream-watch-{}", std::process::id()));
        for name in ["journey_step", "attribution"] {
            std::fs::create_dir_all(dir.join(name)).unwrap();
            std::fs::write(dir.join(name).join("metadata.json"), b"{}").unwrap();
        }
        let mut cfg = Config::defaults().models;
        cfg.dir = dir.display().to_string();
        let (reload, stop) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(false)));
        watch(&cfg, reload.clone(), stop.clone());
        std::thread::sleep(std::time::Duration::from_millis(2500));
        assert!(!reload.load(Ordering::Acquire), "nothing changed yet");
        std::fs::write(dir.join("attribution").join("metadata.json"), b"{\"changed\": true}").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !reload.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        stop.store(true, Ordering::Release);
        assert!(reload.load(Ordering::Acquire), "a changed model file asks for a reload");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_model_that_breaks_its_fixtures_is_rejected() {
        let mut files = ModelFiles::builtin("journey_step", true).unwrap();
        let mut doc: serde_json::Value = serde_json::from_slice(files.fixtures.as_ref().unwrap()).unwrap();
        doc["fixtures"][0]["onnxruntime"]["p_purchase"] = serde_json::json!([[0.999]]);
        files.fixtures = Some(serde_json::to_vec(&doc).unwrap());
        let err = StepModel::load(&files, 64).unwrap_err().to_string();
        assert!(err.contains("parity fixture 0") && err.contains("p_purchase"), "{err}");
    }
}
