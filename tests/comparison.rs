//! The product's claims, measured on the processor's own output topics, per simulator world: a
//! held-out simulated stream (customers the models never saw) goes through Kafka and
//! `touchstream run`; channel shares of the credited conversions are compared with the
//! simulator's ground truth, and the model's abandonment alerts with fixed timers of the same
//! timeliness computed from the same stream (see models/README.md). The scenarios are data:
//! `SCENARIOS` below.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::*;
use rdkafka::producer::{BaseProducer, Producer};
use serde_json::Value;
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

const METHODS: [&str; 6] = ["deep", "time_decay", "last_touch", "first_touch", "linear", "position_based"];

/// One world of the simulator family and what must hold on it.
struct Scenario {
    /// `load-tests/simulator/worlds/<world>.toml` ("default": the built-in world).
    world: &'static str,
    seed: u64,
    customers: u64,
    /// `models/worlds/<world>/attribution/`, trained on that world's log with `models/train.py`,
    /// instead of the shipped attribution model.
    own_attribution: bool,
    /// Deep credit's channel-share error must be at most this times the best rule's.
    max_deep_vs_best_rule: f64,
    /// A channel with no causal effect, and the most credit deep credit may give it, as a multiple
    /// of what last touch gives it (issue 14: 0.2x; the hazard model's sensors give it ~0%, see
    /// models/README.md).
    placebo: Option<(&'static str, f64)>,
    /// `alerts.target_delay` values at which the processor's model alerts must beat the fixed timer
    /// of the same median delay on F1 and precision.
    alert_targets: &'static [&'static str],
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        world: "default",
        seed: 4242,
        customers: 2500,
        own_attribution: false,
        max_deep_vs_best_rule: 0.5,
        placebo: None,
        alert_targets: &["1h", "2h", "4h"],
    },
    Scenario {
        world: "placebo",
        seed: 202,
        customers: 3000,
        own_attribution: true,
        max_deep_vs_best_rule: 0.5,
        placebo: Some(("sms", 0.2)),
        alert_targets: &["1h", "2h", "4h"],
    },
    Scenario { world: "intent_search", seed: 202, customers: 3000, own_attribution: true, max_deep_vs_best_rule: 0.5, placebo: None, alert_targets: &[] },
    Scenario { world: "slow_upper_funnel", seed: 202, customers: 3000, own_attribution: true, max_deep_vs_best_rule: 0.5, placebo: None, alert_targets: &[] },
    // a placebo delivered as impressions, whose delivery follows intent: the sensors read it from its
    // timing (models/README.md, "Delivery that follows intent")
    Scenario {
        world: "intent_impressions",
        seed: 202,
        customers: 3000,
        own_attribution: true,
        max_deep_vs_best_rule: 0.5,
        placebo: Some(("push", 0.2)),
        alert_targets: &[],
    },
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

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

/// A models folder with the shipped step model and the world's own attribution model.
fn world_models(world: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique("touchstream-world-models"));
    for (name, from) in [("journey_step", repo().join("models/journey_step")), ("attribution", repo().join("models/worlds").join(world).join("attribution"))] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        for f in ["model.onnx", "metadata.json", "fixtures.json"] {
            std::fs::copy(from.join(f), dir.join(name).join(f)).unwrap_or_else(|e| panic!("{}: {e}", from.join(f).display()));
        }
    }
    dir
}

/// Credited conversions per channel for each method, over conversions with touchpoints.
fn credited(conversions: &[Record]) -> [BTreeMap<String, f64>; 6] {
    let mut credited: [BTreeMap<String, f64>; 6] = Default::default();
    for r in conversions {
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
    credited
}

/// Each conversion's true incremental shares per channel, as channel shares.
fn truth_shares(truth_dir: &Path) -> BTreeMap<String, f64> {
    let mut truth: BTreeMap<String, f64> = BTreeMap::new();
    let file = std::fs::File::open(truth_dir.join("truth_conversions.jsonl")).unwrap();
    for line in std::io::BufReader::new(file).lines() {
        let c: Value = serde_json::from_str(&line.unwrap()).unwrap();
        for t in c["touchpoints"].as_array().unwrap() {
            *truth.entry(t["channel"].as_str().unwrap().to_string()).or_default() += t["true_share"].as_f64().unwrap();
        }
    }
    shares(&truth)
}

/// The true cart outcomes and the customers' activity while each cart was open.
struct Carts {
    carts: HashMap<String, Cart>,
    truly: usize,
}

struct Cart {
    abandoned: bool,
    /// the customer's activity while the cart is open, and when it closed (a purchase)
    activity: Vec<i64>,
    closed: i64,
}

/// Precision, recall, F1, median delay (minutes from the cart's last activity to the alert) and
/// alerts of one policy.
#[derive(Debug, Clone, Copy)]
struct Score {
    precision: f64,
    recall: f64,
    f1: f64,
    median_delay_min: f64,
    alerts: usize,
}

impl Carts {
    fn load(truth_dir: &Path, events: &[u8]) -> Carts {
        let mut carts: HashMap<String, Cart> = HashMap::new();
        let mut by_customer: HashMap<String, Vec<String>> = HashMap::new();
        let file = std::fs::File::open(truth_dir.join("truth_carts.jsonl")).unwrap();
        for line in std::io::BufReader::new(file).lines() {
            let c: Value = serde_json::from_str(&line.unwrap()).unwrap();
            let id = c["alert_id"].as_str().unwrap().to_string();
            by_customer.entry(c["customer_id"].as_str().unwrap().to_string()).or_default().push(id.clone());
            let cart = Cart {
                abandoned: c["abandoned"].as_bool().unwrap(),
                activity: vec![c["opened_ts"].as_i64().unwrap()],
                closed: c["purchased_ts"].as_i64().unwrap_or(i64::MAX),
            };
            carts.insert(id, cart);
        }
        for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_slice(line).unwrap();
            let ts = v["ts"].as_i64().unwrap();
            for id in by_customer.get(v["customer_id"].as_str().unwrap()).into_iter().flatten() {
                let c = carts.get_mut(id).unwrap();
                if ts > c.activity[0] && ts <= c.closed {
                    c.activity.push(ts);
                }
            }
        }
        for c in carts.values_mut() {
            c.activity.sort();
        }
        let truly = carts.values().filter(|c| c.abandoned).count();
        Carts { carts, truly }
    }

    /// `alerts`: alert id -> (alert_ts, the cart's last activity before it).
    fn score(&self, alerts: &HashMap<String, (i64, i64)>) -> Score {
        let (mut tp, mut fp) = (0usize, 0usize);
        let mut delays = Vec::new();
        for (id, (at, last)) in alerts {
            let Some(c) = self.carts.get(id) else { continue };
            if c.abandoned {
                tp += 1;
            } else {
                fp += 1;
            }
            delays.push((at - last) as f64 / MIN as f64);
        }
        delays.sort_by(f64::total_cmp);
        let (p, r) = (tp as f64 / (tp + fp).max(1) as f64, tp as f64 / self.truly.max(1) as f64);
        Score {
            precision: p,
            recall: r,
            f1: 2.0 * p * r / (p + r).max(1e-9),
            median_delay_min: delays.get(delays.len() / 2).copied().unwrap_or(f64::NAN),
            alerts: tp + fp,
        }
    }

    /// The fixed timer: every cart alerts at its first inactivity of `t` while open.
    fn timer(&self, t: i64) -> HashMap<String, (i64, i64)> {
        self.carts
            .iter()
            .filter_map(|(id, c)| {
                let next = c.activity.iter().skip(1).copied().chain(std::iter::once(c.closed));
                c.activity.iter().zip(next).find(|(s, e)| e - *s >= t && *s + t < c.closed).map(|(s, _)| (id.clone(), (s + t, *s)))
            })
            .collect()
    }
}

fn alerts_by_reason(alerts: &[Record], reason: Option<&str>) -> HashMap<String, (i64, i64)> {
    alerts
        .iter()
        .map(|r| r.json())
        .filter(|a| reason.map_or(true, |x| a["reason"] == x))
        .map(|a| (a["alert_id"].as_str().unwrap().to_string(), (a["alert_ts"].as_i64().unwrap(), a["last_activity_ts"].as_i64().unwrap())))
        .collect()
}

fn row(name: &str, s: &Score) -> String {
    format!("| {name} | {:.3} | {:.3} | {:.3} | {} | {:.0} |\n", s.precision, s.recall, s.f1, s.alerts, s.median_delay_min)
}

/// Runs one scenario; returns the report and the failed claims.
fn check(sc: &Scenario) -> (String, Vec<String>) {
    let mut world = if sc.world == "default" {
        World::default_world()
    } else {
        World::from_file(&repo().join("load-tests/simulator/worlds").join(format!("{}.toml", sc.world))).unwrap()
    };
    world.seed = sc.seed;
    world.customers = sc.customers;
    world.concurrency = 250;
    let model = Model::new(world).unwrap();
    let truth_dir = std::env::temp_dir().join(unique("touchstream-truth"));
    std::fs::create_dir_all(&truth_dir).unwrap();
    let mut events = Vec::new();
    let summary = run(&model, &Options::default(), Some(&mut events), Some(&truth_dir)).unwrap();

    let input = Topics::new(&format!("comparison-{}", sc.world)).events;
    create_topic(&input, 3);
    let sent = produce_lines(&producer(), &input, &events);
    assert_eq!(sent as u64, summary.events);
    let models_dir = sc.own_attribution.then(|| world_models(sc.world));

    // one processor per alert target (the credit is the same in each), reading the same input
    let targets: Vec<&str> = if sc.alert_targets.is_empty() { vec!["2h"] } else { sc.alert_targets.to_vec() };
    let runs: Vec<(Topics, Processor)> = targets
        .iter()
        .map(|target| {
            let mut topics = Topics::new(&format!("comparison-{}-{}", sc.world, target));
            topics.events = input.clone();
            let mut settings = vec![("event_time.idle_timeout", "1h"), ("processing.commit_interval", "500ms"), ("alerts.target_delay", *target)];
            if let Some(dir) = &models_dir {
                settings.push(("models.dir", dir.to_str().unwrap()));
                settings.push(("models.watch", "false"));
            }
            let proc = Processor::start(&topics, &settings);
            (topics, proc)
        })
        .collect();
    let mut outputs = Vec::new();
    for (topics, mut proc) in runs {
        proc.assert_caught_up(&topics, Duration::from_secs(900), sc.world);
        let conversions = read_all(&topics.conversions, Duration::from_secs(3));
        let alerts = read_all(&topics.alerts, Duration::from_secs(2));
        let (status, log) = proc.stop();
        assert!(status.success(), "{log}");
        assert_eq!(conversions.len() as u64, summary.conversions, "one record per purchase");
        outputs.push((conversions, alerts));
    }
    let mut failed = Vec::new();
    let mut report = format!("## world `{}` (seed {}, {} customers, {} events)\n\n", sc.world, sc.seed, sc.customers, summary.events);

    // ---- credit
    let credited = credited(&outputs[0].0);
    let truth = truth_shares(&truth_dir);
    let mut channels: Vec<String> = truth.keys().cloned().collect();
    for c in &credited {
        channels.extend(c.keys().cloned());
    }
    channels.sort();
    channels.dedup();
    let share_of = |c: &BTreeMap<String, f64>, ch: &str| *shares(c).get(ch).unwrap_or(&0.0);
    let mae: Vec<f64> = credited
        .iter()
        .map(|c| channels.iter().map(|ch| (share_of(c, ch) - truth.get(ch).unwrap_or(&0.0)).abs()).sum::<f64>() / channels.len() as f64)
        .collect();
    report += &format!("| channel | truth | {} |\n|---|---|{}\n", METHODS.join(" | "), "---|".repeat(METHODS.len()));
    for ch in &channels {
        report += &format!("| {ch} | {:.1}% |", 100.0 * truth.get(ch).unwrap_or(&0.0));
        for c in &credited {
            report += &format!(" {:.1}% |", 100.0 * share_of(c, ch));
        }
        report += "\n";
    }
    report += "| **MAE vs truth** | |";
    for m in &mae {
        report += &format!(" **{m:.3}** |");
    }
    report += "\n\n";
    let best_rule = mae[1..].iter().cloned().fold(f64::INFINITY, f64::min);
    if mae[0] > sc.max_deep_vs_best_rule * best_rule {
        failed.push(format!("{}: deep credit's MAE {:.3} is above {} x the best rule's {best_rule:.3}", sc.world, mae[0], sc.max_deep_vs_best_rule));
    }
    if let Some((channel, max_ratio)) = sc.placebo {
        let (deep, last) = (share_of(&credited[0], channel), share_of(&credited[2], channel));
        report += &format!("placebo `{channel}`: deep {:.1}%, last touch {:.1}% ({:.2}x)\n\n", 100.0 * deep, 100.0 * last, deep / last);
        if deep > max_ratio * last {
            failed.push(format!("{}: the placebo `{channel}` gets {:.3} of deep credit, above {max_ratio} x last touch's {last:.3}", sc.world, deep));
        }
    }

    // ---- alerts at equal timeliness
    if !sc.alert_targets.is_empty() {
        let carts = Carts::load(&truth_dir, &events);
        report += &format!(
            "{} carts, {} truly abandoned\n\n| policy | precision | recall | F1 | alerts | median delay (min) |\n|---|---|---|---|---|---|\n",
            carts.carts.len(),
            carts.truly
        );
        for (target, (_, alerts)) in sc.alert_targets.iter().zip(&outputs) {
            let model = carts.score(&alerts_by_reason(alerts, Some("model")));
            let all = carts.score(&alerts_by_reason(alerts, None));
            let same = carts.score(&carts.timer((model.median_delay_min * MIN as f64).round() as i64));
            report += &row(&format!("target {target}: model alerts"), &model);
            report += &row(&format!("target {target}: all alerts (with the 24 h safety net)"), &all);
            report += &row(&format!("timer at the model's median delay ({:.0} min)", model.median_delay_min), &same);
            // precision at the timer's recall: the model's alerts must reach the timer's recall
            // (every fixed timer below 24 h catches every abandoned cart) with more precision
            if !(model.f1 > same.f1 && model.precision > same.precision && model.recall >= same.recall - 0.005) {
                failed.push(format!(
                    "{} at {target}: model alerts (P {:.3}, R {:.3}, F1 {:.3}) do not beat the timer of the same median delay {:.0} min (P {:.3}, R {:.3}, F1 {:.3})",
                    sc.world, model.precision, model.recall, model.f1, model.median_delay_min, same.precision, same.recall, same.f1
                ));
            }
        }
        for (name, t) in [("timer 1 h", HOUR), ("timer 2 h", 2 * HOUR), ("timer 4 h", 4 * HOUR)] {
            report += &row(name, &carts.score(&carts.timer(t)));
        }
    }
    let _ = std::fs::remove_dir_all(&truth_dir);
    if let Some(dir) = models_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    (report, failed)
}

#[test]
fn deep_credit_and_model_alerts_beat_the_rules_and_timers_on_every_world() {
    let mut failed = Vec::new();
    let mut report = String::new();
    // TOUCHSTREAM_COMPARISON_WORLDS=default,placebo runs those only (when working on one)
    let only = std::env::var("TOUCHSTREAM_COMPARISON_WORLDS").ok();
    for sc in SCENARIOS.iter().filter(|sc| only.as_deref().map_or(true, |o| o.split(',').any(|w| w == sc.world))) {
        let (r, f) = check(sc);
        eprintln!("{r}");
        report += &r;
        failed.extend(f);
    }
    assert!(failed.is_empty(), "{}\n\n{report}", failed.join("\n"));
}
