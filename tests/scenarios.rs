//! The scenarios of `tests/scenarios/` through the engine alone (no broker): each case's events
//! in event-time order, then its conversions and alerts checked against the case's expectations.
//! `tests/pipeline.rs` runs the same files on a real broker.

mod common;

use common::scenarios;
use touchstream::config::Config;
use touchstream::engine::{EngineConfig, Output, PartitionEngine};
use touchstream::event::{decode, Validation};

/// 2026-01-01T00:00Z: the engine reads no clock, any start will do.
const START: i64 = 1_767_225_600_000;

#[test]
fn every_scenario_gives_its_conversions_and_alerts() {
    let mut cfg = Config::defaults();
    cfg.models.enabled = false;
    cfg.alerts.target_delay = touchstream::time::Span::parse("30m").unwrap();
    let check = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };
    let all = scenarios::all();
    for s in &all {
        let mut engine = PartitionEngine::new(0, EngineConfig::from_config(&cfg).with_models(None));
        let mut out = Vec::new();
        for (_, customer, json) in s.events(START) {
            engine.process(&decode(Some(customer.as_bytes()), json.as_bytes(), &check).unwrap(), &mut out);
        }
        engine.settle(&mut out);
        let conversions: Vec<serde_json::Value> =
            out.iter().filter_map(|o| if let Output::Conversion(c) = o { Some(serde_json::to_value(c).unwrap()) } else { None }).collect();
        let alerts: Vec<serde_json::Value> =
            out.iter().filter_map(|o| if let Output::Alert(a) = o { Some(serde_json::to_value(a).unwrap()) } else { None }).collect();
        s.check(START, &conversions, &alerts);
    }
    eprintln!("{} scenarios", all.len());
}
