//! Restore time at scale (not part of the default run; `load-tests/restore-bench.sh` runs it):
//! a changelog holding RESTORE_CUSTOMERS (default 1 000 000) realistic customer states is restored
//! by a real `touchstream run`, which logs how long the restore took; its resident memory then
//! is printed per restored customer. `RESTORE_MODELS=1` builds the states through the shipped
//! models (slower), so that they hold model state as in a deployment with models on.

mod common;

use std::time::{Duration, Instant};

use common::*;
use touchstream::engine::{EngineConfig, PartitionEngine};
use touchstream::event::{decode, Validation};

#[test]
#[ignore]
fn restore_one_million_customers() {
    let n: usize = std::env::var("RESTORE_CUSTOMERS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let topics = Topics::new("restore");
    create_topic(&topics.events, 1);
    create_topic(&topics.changelog, 1);

    // realistic states: generated journeys through the real engine
    let t0 = Instant::now();
    // the simulator's default world, every customer arriving within a day, until n are resident
    // RESTORE_MODELS=1: through the shipped models, so that each state holds its model state
    let with_models = std::env::var("RESTORE_MODELS").is_ok_and(|v| v == "1");
    let models = with_models.then(|| touchstream::inference::ModelSet::load(&touchstream::config::Config::defaults().models).unwrap().unwrap());
    let mut engine = PartitionEngine::new(0, EngineConfig::default().with_models(models));
    let check = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };
    let mut out = Vec::new();
    touchstream_sim::stream::for_each_event(touchstream_sim::stream::default_world(5, n as u64, 1.0), None, |customer, _, json| {
        engine.process(&decode(Some(customer.as_bytes()), json, &check).unwrap(), &mut out);
        out.clear();
        engine.customers() < n
    })
    .unwrap();
    let (mut windows, mut log) = (Vec::new(), Vec::new());
    engine.drain_changed_windows(&mut windows);
    engine.drain_changelog(&windows, &mut log).unwrap();
    let bytes: usize = log.iter().map(|e| e.key.len() + e.value.as_ref().map_or(0, |v| v.len())).sum();
    println!("built {} customers ({} changelog records, {} MB) in {:?}", engine.customers(), log.len(), bytes / 1_000_000, t0.elapsed());

    // write them to the changelog partition
    let t1 = Instant::now();
    let p = producer();
    // tombstones (windows closed while building) name nothing a fresh changelog holds: skipped
    for e in log.iter().filter(|e| e.value.is_some()) {
        send_raw(&p, &topics.changelog, 0, Some(&e.key), e.value.as_deref().unwrap_or_default(), None);
        p.poll(Duration::ZERO);
    }
    flush(&p);
    println!("produced the changelog in {:?}", t1.elapsed());
    drop(log);

    // a real processor restores it on assignment
    let proc = Processor::start_as(&topics, "a", &[("topics.partitions", "1")], &[]);
    let deadline = Instant::now() + Duration::from_secs(900);
    let line = loop {
        if let Some(l) = proc.log().lines().find(|l| l.contains("partition state restored")).map(str::to_string) {
            break l;
        }
        assert!(Instant::now() < deadline, "no restore within 900 s:\n{}", proc.log());
        std::thread::sleep(Duration::from_millis(500));
    };
    let clean = line.replace("\u{1b}[3m", "").replace("\u{1b}[0m", "").replace("\u{1b}[2m", "");
    println!("RESTORE: {clean}");
    assert!(clean.contains(&format!("customers={n}")) || clean.contains(&format!("customers\u{1b}[2m=\u{1b}[0m{n}")), "{clean}");
    // memory with the restored customers resident (with RESTORE_MODELS=1 their states hold the
    // step model's state): the fixed part (client buffers, models) is spread over n
    let rss = touchstream::telemetry::resident_bytes(Some(proc.child.id())).unwrap_or(0);
    let states = if with_models { "with model state" } else { "without model state" };
    println!("RSS after the restore: {} MB, {} B per restored customer ({states})", rss / 1_000_000, rss / n.max(1) as u64);
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
}
