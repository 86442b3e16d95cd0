//! Shadow scoring, comparison and promotion (`models.candidate`). The active step model here was
//! trained on the simulator's `hesitant` world (`models/worlds/hesitant/`), the candidate is the
//! shipped one, trained on the default world, and the stream is a held-out run of the default
//! world:
//! - the shadow changes nothing the processor writes;
//! - realised outcomes (P(purchase in 7 d), P(abandon)) show the candidate better;
//! - a promotion hands the candidate's per-customer states over, so the promoted engine scores
//!   exactly as one that ran the candidate from the start;
//! - on a broker: `touchstream models report` prints the comparison, `touchstream models promote`
//!   switches `model_version` once per output partition, and every conversion is written exactly
//!   once.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use touchstream::config::Config;
use touchstream::engine::{EngineConfig, Output, PartitionEngine};
use touchstream::event::{decode, Validation};
use touchstream::inference::ModelSet;
use touchstream::lifecycle::compare::Board;
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A models folder with the `hesitant` world's step model and the shipped attribution model.
fn hesitant_models() -> PathBuf {
    let dir = std::env::temp_dir().join(unique("hesitant-models"));
    for (from, to) in [(repo().join("models/worlds/hesitant/journey_step"), "journey_step"), (repo().join("models/attribution"), "attribution")] {
        std::fs::create_dir_all(dir.join(to)).unwrap();
        for f in std::fs::read_dir(&from).unwrap() {
            let f = f.unwrap().path();
            std::fs::copy(&f, dir.join(to).join(f.file_name().unwrap())).unwrap();
        }
    }
    dir
}

/// (customer id, event JSON) of a held-out run of the default world.
fn default_world(customers: u64, concurrency: u64, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut w = World::default_world();
    w.seed = seed;
    w.customers = customers;
    w.concurrency = concurrency;
    let mut events = Vec::new();
    run(&Model::new(w).unwrap(), &Options::default(), Some(&mut events), None).unwrap();
    events
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            (v["customer_id"].as_str().unwrap().to_string(), l.to_vec())
        })
        .collect()
}

fn config(active: &Path, candidate: Option<&Path>) -> Config {
    let mut cfg = Config::defaults();
    cfg.models.check_fixtures = false;
    cfg.models.dir = active.display().to_string();
    cfg.models.candidate = candidate.map(|c| c.display().to_string()).unwrap_or_default();
    cfg
}

fn engine(cfg: &Config) -> PartitionEngine {
    let models = ModelSet::load(&cfg.models).unwrap();
    let candidate = ModelSet::load_candidate(&cfg.models).unwrap();
    PartitionEngine::new(0, EngineConfig::from_config(cfg).with_models(models).with_candidate(candidate))
}

fn feed(engine: &mut PartitionEngine, events: &[(String, Vec<u8>)], out: &mut Vec<Output>) {
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    for (key, json) in events {
        engine.process(&decode(Some(key.as_bytes()), json, &check).unwrap(), out);
    }
    engine.settle(out);
}

#[test]
fn the_candidate_from_the_streams_world_wins_on_realised_outcomes_and_the_shadow_writes_nothing() {
    let events = default_world(1_500, 150, 5151);
    let (active, shipped) = (hesitant_models(), repo().join("models"));
    let (mut plain, mut shadowed) = (engine(&config(&active, None)), engine(&config(&active, Some(&shipped))));
    let (mut want, mut got) = (Vec::new(), Vec::new());
    feed(&mut plain, &events, &mut want);
    feed(&mut shadowed, &events, &mut got);
    assert!(want.len() > 100, "the stream has work: {} outputs", want.len());
    assert_eq!(got, want, "scoring a candidate in shadow changes nothing the processor writes");

    let mut board = Board::default();
    board.add(&shadowed.take_shadow().expect("a candidate runs"));
    let report = board.report("hesitant", "default");
    eprintln!("{}", touchstream::lifecycle::compare::render(&report));
    assert_eq!(report.events as usize, events.len(), "both roles scored every event");
    for t in &report.targets {
        assert!(t.outcomes >= 1_000, "{}: {} outcomes", t.target, t.outcomes);
        let (a, c) = (t.active.log_loss.unwrap(), t.candidate.log_loss.unwrap());
        assert!(c < a, "{}: the candidate's log-loss {c:.4} is lower than the active one's {a:.4}", t.target);
    }
    assert!(report.verdict.starts_with("candidate better"), "{}", report.verdict);
    assert!(report.conversions > 100, "deep credit compared on {} conversions", report.conversions);
    // the same attribution model in both roles: the same credit
    assert!(report.credit_divergence.unwrap() < 1e-6, "{:?}", report.credit_divergence);
}

#[test]
fn a_promotion_hands_over_the_candidates_states() {
    let events = default_world(600, 600, 6262);
    let (active, shipped) = (hesitant_models(), repo().join("models"));
    let mut shadowed = engine(&config(&active, Some(&shipped)));
    let mut reference = engine(&config(&shipped, None));
    let (first, second) = events.split_at(events.len() / 2);
    let mut out = Vec::new();
    feed(&mut shadowed, first, &mut out);
    feed(&mut reference, first, &mut out);
    let before = shadowed.models().unwrap().version.clone();
    assert_eq!(shadowed.promote(), Some(0), "every customer was scored by the candidate too: none starts from zero");
    let after = shadowed.models().unwrap().version.clone();
    assert_eq!(&*after, &*reference.models().unwrap().version);
    assert_ne!(before, after);
    let keys: std::collections::BTreeSet<&str> = events.iter().map(|(k, _)| k.as_str()).collect();
    let same_states = |a: &PartitionEngine, b: &PartitionEngine| {
        let mut n = 0;
        for key in &keys {
            let (Some(x), Some(y)) = (a.customer(key).and_then(|c| c.model.as_ref()), b.customer(key).and_then(|c| c.model.as_ref())) else { continue };
            let diff = x.hidden().iter().zip(y.hidden()).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(diff < 1e-4, "customer {key}: hidden states differ by {diff}");
            assert!((x.scores[0] - y.scores[0]).abs() < 1e-4, "customer {key}: {:?} vs {:?}", x.scores, y.scores);
            n += 1;
        }
        n
    };
    let n = same_states(&shadowed, &reference);
    eprintln!("{n} customers compared after the promotion");
    assert!(n > 200, "{n} customers");
    // from here on the promoted engine scores and stamps as the reference does
    out.clear();
    feed(&mut shadowed, second, &mut out);
    feed(&mut reference, second, &mut Vec::new());
    let n = same_states(&shadowed, &reference);
    assert!(n > 200, "{n} customers at the end");
    let stamped: Vec<&str> = out
        .iter()
        .filter_map(|o| match o {
            Output::Conversion(c) => c.model_version.as_deref(),
            Output::Alert(a) => a.model_version.as_deref(),
        })
        .collect();
    assert!(!stamped.is_empty() && stamped.iter().all(|v| *v == &*after), "every output after the promotion carries {after}");
    // and the old models stay in shadow: a rollback is another swap
    assert_eq!(shadowed.promote(), Some(0));
    assert_eq!(&*shadowed.models().unwrap().version, &*before);
}

/// `model_version` per output partition, in offset order, with runs merged.
fn version_runs(records: &[Record]) -> std::collections::BTreeMap<i32, Vec<String>> {
    let mut runs: std::collections::BTreeMap<i32, Vec<String>> = Default::default();
    for r in records {
        // conversions without touchpoints carry no model's work
        let Some(v) = r.json()["model_version"].as_str().map(str::to_string) else { continue };
        let list = runs.entry(r.partition).or_default();
        if list.last() != Some(&v) {
            list.push(v);
        }
    }
    runs
}

fn cli(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_touchstream")).args(args).output().unwrap();
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn promotion_on_a_broker_switches_the_version_once_per_partition_and_loses_nothing() {
    let topics = Topics::new("shadow");
    create_topic(&topics.events, 3);
    let events = default_world(800, 400, 7373);
    let purchases: std::collections::HashSet<String> = events
        .iter()
        .filter_map(|(_, j)| {
            let v: serde_json::Value = serde_json::from_slice(j).unwrap();
            (v["event_type"] == "purchase").then(|| v["event_id"].as_str().unwrap().to_string())
        })
        .collect();
    let (first, second) = events.split_at(events.len() / 2);
    let p = producer();
    let send = |part: &[(String, Vec<u8>)]| {
        for (key, json) in part {
            send_keyed(&p, &topics.events, key.as_bytes(), json);
        }
        flush(&p);
    };
    let addr = free_addr();
    let active = hesitant_models();
    let (active_dir, shipped) = (active.display().to_string(), repo().join("models").display().to_string());
    let settings = eos_with(&[("http.enabled", "true"), ("models.check_fixtures", "false")]);
    let mut extra: Vec<(&str, &str)> = settings.to_vec();
    extra.extend([("http.listen", addr.as_str()), ("models.dir", active_dir.as_str()), ("models.candidate", shipped.as_str())]);
    let mut proc = Processor::start(&topics, &extra);
    send(first);
    proc.assert_caught_up(&topics, Duration::from_secs(300), "first half processed");
    wait_until("a comparison report", Duration::from_secs(30), Some(&proc), || {
        let (ok, text) = cli(&["models", "report", "--addr", &addr]);
        ok && text.contains("p_purchase_7d") && !text.contains(" 0 events")
    });
    let (ok, text) = cli(&["models", "report", "--addr", &addr]);
    eprintln!("{text}");
    assert!(ok && text.contains("verdict:") && text.contains("calibration error"), "{text}");
    let (ok, text) = cli(&["models", "promote", "--addr", &addr]);
    assert!(ok && text.contains("swap requested"), "{text}");
    assert!(wait_for_log(&proc, "models swapped", Duration::from_secs(30)), "{}", proc.log());
    send(second);
    proc.assert_caught_up(&topics, Duration::from_secs(300), "second half processed");
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");

    let out = collect_outputs(&topics);
    assert_eq!(out.conversion_records, out.conversions.len(), "no conversion written twice");
    let written: std::collections::HashSet<String> = out.conversions.keys().cloned().collect();
    assert_eq!(written, purchases, "one conversion per purchase, none lost");
    let conversions = read_all(&topics.conversions, Duration::from_secs(2));
    let runs = version_runs(&conversions);
    let (old, new) = (runs.values().next().unwrap()[0].clone(), runs.values().find_map(|r| r.get(1).cloned()).expect("a switch"));
    assert_ne!(old, new);
    for (partition, run) in &runs {
        assert_eq!(run, &vec![old.clone(), new.clone()], "partition {partition}: the version switches once, from the active to the promoted models");
    }
}
