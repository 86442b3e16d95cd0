//! The product's claim, measured on the processor's own output topics: a fixed simulated stream
//! (the simulator's held-out world, seed 4242, customers the models never saw) goes through
//! Kafka and the processor with its default models; the channel shares of the credited
//! conversions are compared with the simulator's ground truth. Deep credit must beat every rule.
//! Alerts are scored against the true cart outcomes and reported (see models/README.md).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::Value;
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

const METHODS: [&str; 6] = ["deep", "time_decay", "last_touch", "first_touch", "linear", "position_based"];

fn produce_lines(p: &BaseProducer, topic: &str, events: &[u8]) -> usize {
    let mut n = 0;
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line).unwrap();
        send_keyed(p, topic, v["customer_id"].as_str().unwrap().as_bytes(), line);
        n += 1;
    }
    p.flush(Duration::from_secs(60)).unwrap();
    n
}

fn shares(v: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    let total: f64 = v.values().sum();
    v.iter().map(|(k, x)| (k.clone(), x / total)).collect()
}

#[test]
fn deep_credit_beats_every_rule_on_the_processors_output() {
    let mut world = World::default_world();
    world.seed = 4242;
    world.customers = 2500;
    world.concurrency = 250;
    let model = Model::new(world).unwrap();
    let truth_dir = std::env::temp_dir().join(unique("touchstream-truth"));
    std::fs::create_dir_all(&truth_dir).unwrap();
    let mut events = Vec::new();
    let summary = run(&model, &Options::default(), Some(&mut events), Some(&truth_dir)).unwrap();

    let topics = Topics::new("comparison");
    create_topic(&topics.events, 3);
    let sent = produce_lines(&producer(), &topics.events, &events);
    assert_eq!(sent as u64, summary.events);
    let proc = Processor::start(&topics, &[("event_time.idle_timeout", "1h"), ("processing.commit_interval", "500ms")]);
    assert!(wait_caught_up(&topics, Duration::from_secs(900)), "caught up:\n{}", proc.log());
    let conversions = read_all(&topics.conversions, Duration::from_secs(3));
    let alerts = read_all(&topics.alerts, Duration::from_secs(2));
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    assert_eq!(conversions.len() as u64, summary.conversions, "one record per purchase");

    // credited conversions per channel, for each method, over conversions with touchpoints
    let mut credited: [BTreeMap<String, f64>; 6] = Default::default();
    for r in &conversions {
        let c = r.json();
        let tps = c["touchpoints"].as_array().unwrap();
        if tps[0]["event_id"].is_null() {
            continue; // no touchpoint: the synthetic direct one
        }
        for tp in tps {
            let ch = tp["channel"].as_str().unwrap().to_string();
            for (m, method) in METHODS.iter().enumerate() {
                *credited[m].entry(ch.clone()).or_default() += tp[*method].as_f64().unwrap();
            }
        }
    }
    // the truth: each conversion's true incremental shares per channel
    let mut truth: BTreeMap<String, f64> = BTreeMap::new();
    let file = std::fs::File::open(truth_dir.join("truth_conversions.jsonl")).unwrap();
    for line in std::io::BufReader::new(file).lines() {
        let c: Value = serde_json::from_str(&line.unwrap()).unwrap();
        for t in c["touchpoints"].as_array().unwrap() {
            *truth.entry(t["channel"].as_str().unwrap().to_string()).or_default() += t["true_share"].as_f64().unwrap();
        }
    }
    let truth = shares(&truth);
    let mut channels: Vec<String> = truth.keys().cloned().collect();
    for c in &credited {
        channels.extend(c.keys().cloned());
    }
    channels.sort();
    channels.dedup();
    let mae: Vec<f64> = credited
        .iter()
        .map(|c| {
            let s = shares(c);
            channels.iter().map(|ch| (s.get(ch).unwrap_or(&0.0) - truth.get(ch).unwrap_or(&0.0)).abs()).sum::<f64>() / channels.len() as f64
        })
        .collect();
    let mut table = String::from("| channel | truth |");
    for m in METHODS {
        table += &format!(" {m} |");
    }
    table += "\n|---|---|---|---|---|---|---|---|\n";
    for ch in &channels {
        table += &format!("| {ch} | {:.1}% |", 100.0 * truth.get(ch).unwrap_or(&0.0));
        for c in &credited {
            table += &format!(" {:.1}% |", 100.0 * shares(c).get(ch).unwrap_or(&0.0));
        }
        table += "\n";
    }
    table += "| **MAE vs truth** | |";
    for m in &mae {
        table += &format!(" **{m:.3}** |");
    }

    // alerts against the true cart outcomes
    let mut abandoned: HashMap<String, bool> = HashMap::new();
    let file = std::fs::File::open(truth_dir.join("truth_carts.jsonl")).unwrap();
    for line in std::io::BufReader::new(file).lines() {
        let c: Value = serde_json::from_str(&line.unwrap()).unwrap();
        abandoned.insert(c["alert_id"].as_str().unwrap().to_string(), c["abandoned"].as_bool().unwrap());
    }
    let truly = abandoned.values().filter(|a| **a).count();
    let mut by_reason: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for r in &alerts {
        let a = r.json();
        let e = by_reason.entry(a["reason"].as_str().unwrap().to_string()).or_default();
        e.0 += 1;
        e.1 += usize::from(abandoned.get(a["alert_id"].as_str().unwrap()).copied().unwrap_or(false));
    }
    let (n, tp) = by_reason.values().fold((0, 0), |acc, v| (acc.0 + v.0, acc.1 + v.1));
    let mut alert_table = format!("{} carts, {truly} truly abandoned\n| alerts | count | precision |\n|---|---|---|\n", abandoned.len());
    for (reason, (count, good)) in &by_reason {
        alert_table += &format!("| {reason} | {count} | {:.3} |\n", *good as f64 / (*count).max(1) as f64);
    }
    alert_table += &format!("| all | {n} | {:.3} (recall {:.3}) |\n", tp as f64 / n.max(1) as f64, tp as f64 / truly.max(1) as f64);
    eprintln!("{} events, {} conversions, {} alerts\n{table}\n\n{alert_table}", summary.events, conversions.len(), alerts.len());
    let _ = std::fs::remove_dir_all(&truth_dir);

    assert!(conversions.len() > 1000, "enough conversions to compare: {}", conversions.len());
    let best_rule = mae[1..].iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(mae[0] < best_rule, "deep credit ({:.3}) must beat every rule (best {best_rule:.3})\n{table}", mae[0]);
    assert!(mae[0] < 0.75 * best_rule, "by a clear margin: deep {:.3} vs best rule {best_rule:.3}\n{table}", mae[0]);
    assert!(by_reason.contains_key("model"), "model alerts fire: {by_reason:?}");
}
