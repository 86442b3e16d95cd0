//! The models on a real broker: a simulated stream goes through the processor with the models on.
//! Every conversion carries deep credit summing to 1 with its baseline share and the model version; model alerts fire at
//! the short inactivity check, before the timeout rule would; the scores topic holds each
//! customer's latest scores; and a model swap (SIGHUP) under load changes the stamped version
//! without losing or duplicating an output. The processor's outputs are compared with the
//! library's engine run in-process over the same records.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;
use touchstream::config::Config;
use touchstream::engine::{EngineConfig, Output, PartitionEngine};
use touchstream::event::{decode, Validation};
use touchstream::inference::ModelSet;

/// The version the test stamps on its copy of the committed models (one for both, as a release
/// of the set would), and the one it swaps in.
const OLD: &str = "swap-test-1";
const NEW: &str = "swap-test-2";
const ABANDON_THRESHOLD: f64 = 0.8;

fn copy_models(to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    for name in ["journey_step", "attribution"] {
        std::fs::create_dir_all(to.join(name)).unwrap();
        for f in ["model.onnx", "metadata.json", "fixtures.json"] {
            std::fs::copy(from.join(name).join(f), to.join(name).join(f)).unwrap();
        }
    }
    set_version(to, OLD);
}

fn set_version(dir: &Path, version: &str) {
    for name in ["journey_step", "attribution"] {
        let path = dir.join(name).join("metadata.json");
        let mut meta: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert!(meta["version"].as_str().is_some_and(|v| !v.is_empty()), "{name}: a version");
        meta["version"] = Value::String(version.into());
        std::fs::write(&path, serde_json::to_vec_pretty(&meta).unwrap()).unwrap();
    }
}

/// The engine of the library, run in-process over the events topic as the processor read it.
fn reference(events: &[Record], dir: &Path) -> (Vec<Output>, HashMap<String, [f64; 3]>, f64) {
    let mut cfg = Config::defaults();
    cfg.models.dir = dir.display().to_string();
    cfg.models.check_fixtures = false;
    cfg.alerts.abandon_threshold = Some(ABANDON_THRESHOLD);
    cfg.alerts.target_delay = touchstream::time::Span(30 * MIN);
    cfg.alerts.safety_net = touchstream::time::Span(30 * MIN);
    let models: Option<Arc<ModelSet>> = ModelSet::load(&cfg.models).unwrap();
    let engine_cfg = EngineConfig::from_config(&cfg).with_models(models);
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let mut engines: HashMap<i32, PartitionEngine> = HashMap::new();
    let mut out = Vec::new();
    let mut sorted: Vec<&Record> = events.iter().collect();
    sorted.sort_by_key(|r| (r.partition, r.offset));
    for r in sorted {
        let e = engines.entry(r.partition).or_insert_with(|| PartitionEngine::new(r.partition, engine_cfg.clone()));
        let ev = decode(r.key.as_deref(), &r.payload, &check).unwrap();
        e.process(&ev, &mut out);
    }
    let mut scores = HashMap::new();
    for e in engines.values_mut() {
        // what the processor does at its commits: run the queued events, then the checks now due
        e.settle(&mut out);
        let mut recs = Vec::new();
        e.drain_scores(&mut recs);
        for s in recs {
            let m = e.customer(&s.customer_id).unwrap().model.as_ref().unwrap();
            scores.insert(s.customer_id.clone(), m.scores.map(f64::from));
        }
    }
    (out, scores, cfg.scores.min_change)
}

fn without_version(mut v: Value) -> Value {
    v.as_object_mut().unwrap().remove("model_version");
    v
}

#[test]
fn models_score_every_event_credit_conversions_alert_early_and_swap_under_load() {
    let topics = Topics::new("models");
    create_topic(&topics.events, 3);
    let dir: PathBuf = std::env::temp_dir().join(unique("touchstream-models"));
    copy_models(&dir);
    let settings = [
        ("models.dir", dir.to_str().unwrap()),
        ("models.watch", "false"),
        ("event_time.idle_timeout", "1h"),
        ("processing.commit_interval", "200ms"),
        // one threshold at the checks up to 30 minutes, low enough that the model alerts on this
        // stream; the safety net at 30 minutes for the rest
        ("alerts.abandon_threshold", "0.8"),
        ("alerts.target_delay", "30m"),
        ("alerts.safety_net", "30m"),
    ];

    // phase 1 on the committed models
    let stream = simulated(12_000, 11);
    produce_events(&topics.events, &stream[..6000], 0.0);
    let mut proc = Processor::start(&topics, &settings);
    proc.assert_caught_up(&topics, Duration::from_secs(180), "phase 1 caught up");
    let phase1_end = end_offsets(&topics.events);

    // swap under load: a new version of both models, loaded on SIGHUP while events keep coming
    let events_topic = topics.events.clone();
    let second = stream[6000..].to_vec();
    let producing = std::thread::spawn(move || produce_events(&events_topic, &second, 6.0));
    // the swap comes while the processor is working through the new events
    let before = committed_total(&topics);
    wait_until("progress on the new events", Duration::from_secs(60), Some(&proc), || committed_total(&topics) > before);
    set_version(&dir, NEW);
    signal(&proc, "HUP");
    producing.join().unwrap();
    assert!(wait_for_log(&proc, NEW, Duration::from_secs(30)), "the new models were loaded:\n{}", proc.log());
    proc.assert_caught_up(&topics, Duration::from_secs(180), "phase 2 caught up");

    // a broken model is rejected and the current ones keep serving
    let onnx = dir.join("attribution").join("model.onnx");
    let good = std::fs::read(&onnx).unwrap();
    std::fs::write(&onnx, b"not an onnx file").unwrap();
    signal(&proc, "HUP");
    assert!(wait_for_log(&proc, "new models rejected", Duration::from_secs(30)), "the broken model was rejected:\n{}", proc.log());
    std::fs::write(&onnx, good).unwrap();
    let before = read_all(&topics.conversions, Duration::from_secs(1)).len();
    let p = producer();
    let t = 1_704_067_200_000 + 30 * 24 * 3_600_000; // after the simulated streams (from 2024-01-01)
    send_raw(&p, &topics.events, 0, Some(b"after-reject"), event("ar-1", "after-reject", t, "click", r#","channel":"email""#).as_bytes(), None);
    send_raw(&p, &topics.events, 0, Some(b"after-reject"), event("ar-2", "after-reject", t + 60_000, "purchase", r#","value":5.0"#).as_bytes(), None);
    flush(&p);
    proc.assert_caught_up(&topics, Duration::from_secs(60), "still processing after the rejected reload");
    let conversions = read_all(&topics.conversions, Duration::from_secs(3));
    assert_eq!(conversions.len(), before + 1);
    let last = conversions.iter().map(|r| r.json()).find(|c| c["conversion_id"] == "ar-2").expect("the conversion after the rejected reload");
    assert_eq!(last["model_version"], NEW, "the current models kept serving");
    let alerts = read_all(&topics.alerts, Duration::from_secs(2));
    let scores = read_all(&topics.scores, Duration::from_secs(2));
    let events = read_all(&topics.events, Duration::from_secs(2));
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("models loaded"), "{log}");

    // what the library computes over the same records (with the old version label)
    set_version(&dir, OLD);
    let (want, want_scores, min_change) = reference(&events, &dir);
    let want_conv: HashMap<String, Value> = want
        .iter()
        .filter_map(|o| if let Output::Conversion(c) = o { Some((c.conversion_id.clone(), serde_json::to_value(c).unwrap())) } else { None })
        .collect();
    let want_alerts: HashMap<String, Value> =
        want.iter().filter_map(|o| if let Output::Alert(a) = o { Some((a.alert_id.clone(), serde_json::to_value(a).unwrap())) } else { None }).collect();
    assert!(want_conv.len() > 50 && want_alerts.len() > 20, "the stream has work: {} conversions, {} alerts", want_conv.len(), want_alerts.len());

    // conversions: each exactly once, deep credit summing to 1, versions by phase
    assert_eq!(conversions.len(), want_conv.len(), "no conversion lost or duplicated");
    let phase1: HashMap<i32, i64> = phase1_end.into_iter().collect();
    let source: HashMap<String, (i32, i64)> = events.iter().map(|r| (r.json()["event_id"].as_str().unwrap().to_string(), (r.partition, r.offset))).collect();
    let mut versions: Vec<((i32, i64), String)> = Vec::new();
    let (mut old, mut new, mut fallbacks) = (0, 0, 0);
    for r in &conversions {
        let c = r.json();
        let id = c["conversion_id"].as_str().unwrap();
        let want = want_conv.get(id).unwrap_or_else(|| panic!("unexpected conversion {id}"));
        assert!(same_json(&without_version(c.clone()), &without_version(want.clone())), "conversion {id}:\ngot  {c}\nwant {want}");
        let sum: f64 =
            c["touchpoints"].as_array().unwrap().iter().map(|t| t["deep"].as_f64().unwrap()).sum::<f64>() + c["deep_baseline"].as_f64().unwrap_or(0.0);
        assert!((sum - 1.0).abs() < 1e-9, "{id}: deep credits and the baseline's share sum to {sum}");
        assert!(c["expected_future_value"].as_f64().unwrap() >= 0.0);
        fallbacks += usize::from(c["deep_method"] == "time_decay_fallback");
        let (partition, offset) = source[id];
        match c["model_version"].as_str().unwrap() {
            OLD => {
                assert!(offset < phase1[&partition] + 6000, "{id}");
                old += 1
            }
            NEW => {
                assert!(offset >= phase1[&partition], "{id} came before the swap but carries the new version");
                new += 1
            }
            v => panic!("unknown version {v}"),
        }
        versions.push(((partition, offset), c["model_version"].as_str().unwrap().to_string()));
    }
    // per input partition, in input order: the old version, then the new one, never back
    versions.sort();
    for w in versions.windows(2) {
        if w[0].0 .0 == w[1].0 .0 {
            assert!(!(w[0].1 == NEW && w[1].1 == OLD), "the version went back at {:?}", w[1].0);
        }
    }
    assert!(old > 10 && new > 10, "both versions stamped: {old} old, {new} new");
    // conversions whose touchpoints the model sees no lift in fall back to time decay; the rest
    // are credited by the model
    assert!(fallbacks < conversions.len(), "some deep credit comes from the model: {fallbacks} fallbacks of {}", conversions.len());
    eprintln!("{} conversions ({fallbacks} time-decay fallbacks), {old} before and {new} after the swap", conversions.len());

    // alerts: the same as the library's; model alerts at one of its checks before the rule
    assert_eq!(alerts.len(), want_alerts.len(), "no alert lost or duplicated");
    let (mut by_model, mut by_rule, mut with_reasons) = (0, 0, 0);
    for r in &alerts {
        let a = r.json();
        let id = a["alert_id"].as_str().unwrap();
        let want = want_alerts.get(id).unwrap_or_else(|| panic!("unexpected alert {id}"));
        assert!(same_json(&without_version(a.clone()), &without_version(want.clone())), "alert {id}:\ngot  {a}\nwant {want}");
        let (ts, last) = (a["alert_ts"].as_i64().unwrap(), a["last_activity_ts"].as_i64().unwrap());
        let p = a["abandonment_probability"].as_f64().unwrap();
        match a["reason"].as_str().unwrap() {
            "model" => {
                by_model += 1;
                assert!([10 * MIN, 20 * MIN, 30 * MIN].contains(&(ts - last)), "{id}: the model alerts at an inactivity check");
                assert!(p >= ABANDON_THRESHOLD, "{id}: P(abandon) {p} reached the threshold");
            }
            "safety_net" => {
                by_rule += 1;
                assert_eq!(ts, last + 30 * MIN, "{id}: the safety net alerts at its inactivity");
            }
            other => panic!("reason {other}"),
        }
        assert!(a["conversion_probability"].is_number() && a["model_version"].is_string());
        let tops = a["top_touchpoints"].as_array().unwrap();
        assert!(tops.iter().all(|t| t["deep_credit"].is_number()), "{a}");
        // reasons: at most 3 inputs that raised P(abandon), largest first
        let why: Vec<f64> = a["abandonment_reasons"].as_array().unwrap().iter().map(|r| r["impact"].as_f64().unwrap()).collect();
        assert!(why.len() <= 3 && why.iter().all(|&i| i > 0.0) && why.windows(2).all(|w| w[0] >= w[1]), "{a}");
        with_reasons += usize::from(!why.is_empty());
    }
    assert!(by_model > 0 && by_rule > 0, "{by_model} model alerts, {by_rule} timeout alerts");
    assert!(with_reasons > 0, "alerts name the inputs behind P(abandon)");
    eprintln!("{by_model} model alerts, {by_rule} timeout alerts, {} scored customers", want_scores.len());

    // scores: the latest record per customer is within min_change of the customer's final scores
    let latest = latest_by_key(&scores);
    assert_eq!(latest.len(), want_scores.len(), "one scored customer per key");
    for (customer, want) in &want_scores {
        let got = &latest[customer];
        let p = [got["purchase_probability"].as_f64().unwrap(), got["abandonment_probability"].as_f64().unwrap(), got["expected_value"].as_f64().unwrap()];
        assert!((p[0] - want[0]).abs() <= min_change + 1e-6 && (p[1] - want[1]).abs() <= min_change + 1e-6, "{customer}: {got} vs {want:?}");
        assert!((p[2] - want[2]).abs() <= min_change * p[2].abs().max(1.0) + 1e-4, "{customer}: {got} vs {want:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
