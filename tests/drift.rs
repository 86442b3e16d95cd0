//! Drift metrics move when the stream's world changes: the shipped step model (trained on the
//! simulator's default world) scores a held-out stream of that world and streams of other worlds
//! of the family; the population-stability index per feature (the processor's
//! `touchstream_model_drift_psi`) stays near zero on its own world, rises on other worlds, and
//! crosses the model's threshold when the producer's clock is 8 hours off.

use std::path::PathBuf;

use touchstream::config::Config;
use touchstream::engine::{EngineConfig, PartitionEngine};
use touchstream::event::{decode, Validation};
use touchstream::inference::drift::{self, DriftWindow};
use touchstream::inference::{features, ModelSet};
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

/// PSI per feature after scoring `world`'s stream with every timestamp moved by `shift_ms`, and
/// the model's threshold.
fn psi_of(world: World, shift_ms: i64) -> (Vec<f64>, f64) {
    let (psi, _, threshold) = psi_and_names(world, shift_ms);
    (psi, threshold)
}

/// PSI per column (the features, then the scores), the column names and the threshold.
fn psi_and_names(world: World, shift_ms: i64) -> (Vec<f64>, Vec<&'static str>, f64) {
    let mut events = Vec::new();
    run(&Model::new(world).unwrap(), &Options::default(), Some(&mut events), None).unwrap();
    let mut cfg = Config::defaults();
    cfg.models.check_fixtures = false;
    let models = ModelSet::load(&cfg.models).unwrap().unwrap();
    let spec = models.step.drift.clone().expect("the shipped step model carries its training distribution");
    let mut engine = PartitionEngine::new(0, EngineConfig::from_config(&cfg).with_models(Some(models)));
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let (mut out, mut window) = (Vec::new(), DriftWindow::default());
    for (n, line) in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()).enumerate() {
        let mut v: serde_json::Value = serde_json::from_slice(line).unwrap();
        let key = v["customer_id"].as_str().unwrap().to_string();
        let ts = v["ts"].as_i64().unwrap();
        v["ts"] = (ts + shift_ms).into();
        let text = serde_json::to_vec(&v).unwrap();
        engine.process(&decode(Some(key.as_bytes()), &text, &check).unwrap(), &mut out);
        out.clear();
        if n % 1_000 == 0 {
            engine.take_drift(&mut window); // what the loop does at each commit
        }
    }
    engine.take_drift(&mut window);
    let mut psi = Vec::new();
    assert!(window.psi(&spec, &mut psi), "{} sampled events", window.events());
    (psi, spec.names.clone(), spec.threshold)
}

fn world(name: &str, seed: u64, customers: u64) -> World {
    let mut w = if name == "default" {
        World::default_world()
    } else {
        let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        World::from_file(&repo.join("load-tests/simulator/worlds").join(format!("{name}.toml"))).unwrap()
    };
    w.seed = seed;
    w.customers = customers;
    w.concurrency = customers / 10;
    w
}

fn report(name: &str, psi: &[f64]) -> f64 {
    let names = features::NAMES.iter().chain(&drift::SCORES);
    let mut ranked: Vec<(f64, &str)> = psi.iter().copied().zip(names.copied()).filter(|(p, _)| !p.is_nan()).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    eprintln!("{name}: largest PSI {}", ranked.iter().take(4).map(|(p, n)| format!("{n} {p:.3}")).collect::<Vec<_>>().join(", "));
    ranked[0].0
}

#[test]
fn drift_stays_low_on_the_training_world_and_rises_on_another() {
    let (own, names, threshold) = psi_and_names(world("default", 4242, 3_000), 0);
    let own_max = report("default (held out)", &own);
    assert!(own_max < threshold / 10.0, "the training world's own held-out stream drifts by {own_max}");
    // the model's outputs are binned too, and match their training distribution as well
    assert_eq!(&names[features::COUNT..], &drift::SCORES);
    assert!(own[features::COUNT..].iter().all(|p| *p < threshold / 10.0), "{own:?}");
    // other worlds of the family: other customers, same contract; the shift is moderate but plain
    for name in ["slow_upper_funnel", "intent_search"] {
        let (psi, _) = psi_of(world(name, 4242, 3_000), 0);
        let max = report(name, &psi);
        assert!(max > 5.0 * own_max && max > threshold / 10.0, "{name}: {max} vs {own_max} on the training world");
    }
    // the training world from a producer that stamps events 8 hours off: time of day moves
    let (psi, _) = psi_of(world("default", 4242, 3_000), 8 * 3_600_000);
    let max = report("default, clock 8 h off", &psi);
    let worst = features::NAMES[psi.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0];
    assert!(max > threshold && worst.contains("hour_utc"), "{worst} {max}");
}
