//! The embedded demo: librdkafka's in-process mock cluster, the simulator's default world (the one
//! the shipped models were trained on) feeding it, the real processor against it, and a live
//! summary read back from the output topics.

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message};

use crate::attribution::Rule;
use crate::config::Config;
use crate::http::Health;
use crate::pipeline::{RunError, RunStats, Runner};

#[derive(Debug, Clone, Copy)]
pub struct DemoOptions {
    pub seconds: u64,
    pub rate: u64,
    pub every: u64,
    pub seed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("in-process Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("processor: {0}")]
    Run(#[from] RunError),
    #[error("the processor thread panicked")]
    Panicked,
}

const PARTITIONS: i32 = 4;

/// Runs the demo until `opts.seconds` pass (0 = until `stop`), printing a summary every `opts.every` s.
pub fn run(mut cfg: Config, opts: DemoOptions, health: Arc<Health>, stop: Arc<AtomicBool>) -> Result<(), DemoError> {
    let mock = MockCluster::new(1)?;
    let brokers = mock.bootstrap_servers();
    let t = cfg.topics.clone();
    let outputs = crate::outputs::OUTPUTS.iter().map(|s| (s.topic)(&t));
    for topic in std::iter::once(t.events.as_str()).chain(outputs) {
        if !topic.is_empty() {
            mock.create_topic(topic, PARTITIONS, 1)?;
        }
    }
    cfg.kafka.brokers = brokers.clone();
    cfg.topics.create = false;
    // librdkafka's in-process cluster runs the transactional API but not its guarantees (aborted
    // records stay visible, zombies are not fenced): the demo runs at-least-once.
    cfg.kafka.guarantee = crate::config::Guarantee::AtLeastOnce;
    println!("touchstream demo: in-process Kafka at {brokers}, {PARTITIONS} partitions, {} events/s", opts.rate);
    println!("simulated journeys (the simulator's default world) -> {} -> touchstream -> {}, {}, {}", t.events, t.conversions, t.alerts, t.channels);

    let runner_stop = Arc::new(AtomicBool::new(false));
    let runner = {
        let (cfg, stop) = (cfg.clone(), runner_stop.clone());
        thread::spawn(move || -> Result<RunStats, RunError> { Runner::new(cfg, health, stop)?.run() })
    };

    let produced = Arc::new(AtomicU64::new(0));
    let producer_stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (brokers, topic, produced, stop) = (brokers.clone(), t.events.clone(), produced.clone(), producer_stop.clone());
        let (rate, seed) = (opts.rate.max(1), opts.seed);
        thread::spawn(move || -> Result<(), KafkaError> {
            let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "5").set("partitioner", "murmur2_random").create()?;
            let mut feed = Feed {
                producer: &p,
                topic: &topic,
                line: Vec::with_capacity(512),
                rate: rate as f64,
                started: Instant::now(),
                sent: 0,
                produced: &produced,
                stop: &stop,
            };
            // the simulator's default world (the one the shipped models were trained on), from a
            // year ago, until the demo stops (the run ends with the feed's "stopped" error)
            let mut world = touchstream_sim::World::default_world();
            world.seed = seed;
            world.customers = 1_000_000;
            world.start_ms = crate::time::wall_clock_ms() - 365 * 86_400_000;
            match touchstream_sim::Model::new(world) {
                Ok(model) => {
                    let _ = touchstream_sim::run::run(&model, &touchstream_sim::run::Options::default(), Some(&mut feed), None);
                }
                Err(e) => eprintln!("demo: the simulator's default world does not load: {e}"),
            }
            p.flush(Duration::from_secs(10))
        })
    };

    let mut summary = Summary::new(&cfg, &brokers)?;
    let started = Instant::now();
    let mut last_print = Instant::now();
    let deadline = (opts.seconds > 0).then(|| Duration::from_secs(opts.seconds));
    while !stop.load(Ordering::Acquire) && deadline.map_or(true, |d| started.elapsed() < d) {
        summary.poll(Duration::from_millis(100));
        if last_print.elapsed() >= Duration::from_secs(opts.every.max(1)) {
            last_print = Instant::now();
            summary.print(started.elapsed(), produced.load(Ordering::Relaxed));
        }
        if runner.is_finished() {
            break;
        }
    }
    producer_stop.store(true, Ordering::Release);
    let _ = producer.join();
    // Give the processor a moment to catch up with the last events before it commits and stops.
    let catch_up = Instant::now() + Duration::from_secs(2);
    while Instant::now() < catch_up && !runner.is_finished() {
        summary.poll(Duration::from_millis(100));
    }
    runner_stop.store(true, Ordering::Release);
    let stats = runner.join().map_err(|_| DemoError::Panicked)??;
    let drain_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < drain_until {
        summary.poll(Duration::from_millis(100));
    }
    summary.print(started.elapsed(), produced.load(Ordering::Relaxed));
    println!(
        "demo finished: processor handled {} events ({} invalid), wrote {} conversions and {} alerts in {} commits",
        stats.events, stats.invalid, stats.conversions, stats.alerts, stats.commits
    );
    // Close every client before the in-process cluster goes away.
    drop(summary);
    drop(mock);
    Ok(())
}

/// The simulator's event lines into the demo's input topic, keyed by customer, at `rate` events/s;
/// fails with "stopped" once the demo stops (which ends the simulator's run).
struct Feed<'a> {
    producer: &'a BaseProducer,
    topic: &'a str,
    line: Vec<u8>,
    rate: f64,
    started: Instant,
    sent: u64,
    produced: &'a AtomicU64,
    stop: &'a AtomicBool,
}

impl Feed<'_> {
    fn send_line(&mut self) -> std::io::Result<()> {
        if self.stop.load(Ordering::Acquire) {
            return Err(std::io::Error::other("stopped"));
        }
        let Some(key) = touchstream_sim::kafka::customer_id(&self.line) else { return Ok(()) };
        let mut rec = BaseRecord::<[u8], [u8]>::to(self.topic).key(key).payload(&self.line[..]);
        loop {
            match self.producer.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    rec = r;
                    self.producer.poll(Duration::from_millis(5));
                }
            }
        }
        self.sent += 1;
        self.produced.store(self.sent, Ordering::Relaxed);
        let due = self.started + Duration::from_secs_f64(self.sent as f64 / self.rate);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        self.producer.poll(Duration::ZERO);
        Ok(())
    }
}

impl Write for Feed<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        for &b in buf {
            if b == b'\n' {
                self.send_line()?;
                self.line.clear();
            } else {
                self.line.push(b);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Reads the output topics back and keeps what the summary shows.
struct Summary {
    consumer: BaseConsumer,
    conversions_topic: String,
    alerts_topic: String,
    scores_topic: String,
    conversions: u64,
    revenue: f64,
    alerts: u64,
    model_alerts: u64,
    dlq: u64,
    /// Credited conversions per channel: the five rules, then deep credit (models).
    credit: HashMap<String, [f64; 6]>,
    deep: bool,
    /// The latest score updates, newest last (a few distinct customers).
    scores: Vec<serde_json::Value>,
    /// The latest alert (a model alert when there is one) and multi-touch conversion.
    alert: Option<serde_json::Value>,
    conversion: Option<serde_json::Value>,
}

const METHOD_NAMES: [&str; 6] = ["time_decay", "last_touch", "first_touch", "linear", "position_based", "deep"];

impl Summary {
    fn new(cfg: &Config, brokers: &str) -> Result<Summary, KafkaError> {
        let consumer: BaseConsumer =
            ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", "touchstream-demo-summary").set("auto.offset.reset", "earliest").create()?;
        let mut topics = vec![cfg.topics.conversions.as_str(), cfg.topics.alerts.as_str(), cfg.topics.dlq.as_str()];
        if cfg.models.enabled && cfg.scores.enabled {
            topics.push(cfg.topics.scores.as_str());
        }
        consumer.subscribe(&topics)?;
        Ok(Summary {
            consumer,
            conversions_topic: cfg.topics.conversions.clone(),
            alerts_topic: cfg.topics.alerts.clone(),
            scores_topic: cfg.topics.scores.clone(),
            conversions: 0,
            revenue: 0.0,
            alerts: 0,
            model_alerts: 0,
            dlq: 0,
            credit: HashMap::new(),
            deep: false,
            scores: Vec::new(),
            alert: None,
            conversion: None,
        })
    }

    fn poll(&mut self, timeout: Duration) {
        let mut wait = timeout;
        while let Some(Ok(msg)) = self.consumer.poll(wait) {
            wait = Duration::ZERO;
            if msg.topic() != self.conversions_topic && msg.topic() != self.alerts_topic && msg.topic() != self.scores_topic {
                self.dlq += 1;
                continue;
            }
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(msg.payload().unwrap_or_default()) else { continue };
            if msg.topic() == self.conversions_topic {
                self.conversions += 1;
                self.revenue += v["conversion_value"].as_f64().unwrap_or(0.0);
                let tps = v["touchpoints"].as_array().map_or(&[][..], |a| a.as_slice());
                for tp in tps {
                    let entry = self.credit.entry(tp["channel"].as_str().unwrap_or("other").to_string()).or_default();
                    for (i, rule) in Rule::ALL.iter().enumerate() {
                        entry[i] += tp[rule.as_str()].as_f64().unwrap_or(0.0);
                    }
                    if let Some(d) = tp["deep"].as_f64() {
                        entry[5] += d;
                        self.deep = true;
                    }
                }
                if tps.len() >= 2 {
                    self.conversion = Some(v);
                }
            } else if msg.topic() == self.alerts_topic {
                self.alerts += 1;
                let model = v["reason"] == "model";
                self.model_alerts += u64::from(model);
                if model || self.alert.as_ref().map_or(true, |a| a["reason"] != "model") {
                    self.alert = Some(v);
                }
            } else {
                self.scores.retain(|s| s["customer_id"] != v["customer_id"]);
                self.scores.push(v);
                if self.scores.len() > 3 {
                    self.scores.remove(0);
                }
            }
        }
    }

    fn print(&self, elapsed: Duration, produced: u64) {
        let secs = elapsed.as_secs_f64().max(0.001);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "\n[{:>4.0}s] events {} ({:.0}/s) | conversions {} (revenue {:.2}) | abandonment alerts {} ({} by the model) | dlq {}",
            secs,
            produced,
            produced as f64 / secs,
            self.conversions,
            self.revenue,
            self.alerts,
            self.model_alerts,
            self.dlq
        );
        if self.credit.is_empty() {
            let _ = writeln!(out, "  (waiting for the first conversions: the in-process group join takes a few seconds)");
            return;
        }
        let methods = if self.deep { &METHOD_NAMES[..] } else { &METHOD_NAMES[..5] };
        let header: String = methods.iter().map(|m| format!(" {m:>14}")).collect();
        let _ = writeln!(out, "  channel shares of credited conversions:\n    {:<13}{header}", "channel");
        let totals: Vec<f64> = (0..6).map(|i| self.credit.values().map(|v| v[i]).sum::<f64>().max(1e-9)).collect();
        let mut channels: Vec<(&String, &[f64; 6])> = self.credit.iter().collect();
        channels.sort_by(|a, b| b.1[0].total_cmp(&a.1[0]).then(a.0.cmp(b.0)));
        for (channel, v) in channels {
            let row: String = (0..methods.len()).map(|i| format!(" {:>13.1}%", 100.0 * v[i] / totals[i])).collect();
            let _ = writeln!(out, "    {channel:<13}{row}");
        }
        if !self.scores.is_empty() {
            let _ = writeln!(out, "  live scores (latest updates):");
            for s in self.scores.iter().rev() {
                let _ = writeln!(
                    out,
                    "    {:<10} P(purchase in 7 d) {:.2}  P(abandon) {:.2}  cart {}  expected value {:.2}",
                    s["customer_id"].as_str().unwrap_or("?"),
                    s["purchase_probability"].as_f64().unwrap_or(0.0),
                    s["abandonment_probability"].as_f64().unwrap_or(0.0),
                    if s["cart_open"] == true { "open" } else { "none" },
                    s["expected_value"].as_f64().unwrap_or(0.0)
                );
            }
        }
        if let Some(a) = &self.alert {
            let idle = (a["alert_ts"].as_i64().unwrap_or(0) - a["last_activity_ts"].as_i64().unwrap_or(0)) / 60_000;
            let prob = |k: &str| a[k].as_f64().map_or_else(|| "-".to_string(), |p| format!("{p:.2}"));
            let _ = writeln!(
                out,
                "  latest alert ({}): customer {}, cart {:.2} {} ({} items), idle {idle} min\n    P(abandon) {}, P(purchase in 7 d) {} -> action `{}`, expected recoverable value {}",
                a["reason"].as_str().unwrap_or("?"),
                a["customer_id"].as_str().unwrap_or("?"),
                a["cart_value"].as_f64().unwrap_or(0.0),
                a["currency"].as_str().unwrap_or(""),
                a["items"].as_array().map_or(0, Vec::len),
                prob("abandonment_probability"),
                prob("conversion_probability"),
                a["recommended_action"].as_str().unwrap_or("?"),
                a["expected_recoverable_value"].as_f64().map_or_else(|| "-".to_string(), |v| format!("{v:.2}"))
            );
            let reasons: Vec<String> = a["top_touchpoints"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    let credit = t["deep_credit"].as_f64().or(t["time_decay_credit"].as_f64()).unwrap_or(0.0);
                    format!("{}{} ({credit:.2})", t["channel"].as_str().unwrap_or("?"), t["campaign"].as_str().map(|c| format!("/{c}")).unwrap_or_default())
                })
                .collect();
            let _ = writeln!(out, "    top touchpoints: {}", if reasons.is_empty() { "none".to_string() } else { reasons.join(", ") });
            let why: Vec<String> = a["abandonment_reasons"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!("{} = {} (+{:.2})", r["feature"].as_str().unwrap_or("?"), r["value"].as_str().unwrap_or("?"), r["impact"].as_f64().unwrap_or(0.0))
                })
                .collect();
            let _ = writeln!(out, "    why P(abandon) is high: {}", if why.is_empty() { "-".to_string() } else { why.join(", ") });
        }
        if let Some(c) = &self.conversion {
            let _ = writeln!(
                out,
                "  latest multi-touch conversion: customer {}, value {:.2}; credit per touchpoint:\n    {:<13}{header}",
                c["customer_id"].as_str().unwrap_or("?"),
                c["conversion_value"].as_f64().unwrap_or(0.0),
                "channel"
            );
            for tp in c["touchpoints"].as_array().into_iter().flatten() {
                let row: String = methods.iter().map(|m| format!(" {:>14.2}", tp[*m].as_f64().unwrap_or(0.0))).collect();
                let _ = writeln!(out, "    {:<13}{row}", tp["channel"].as_str().unwrap_or("?"));
            }
        }
    }
}
