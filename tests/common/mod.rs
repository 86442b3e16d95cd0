//! Shared helpers for the integration tests: a real Kafka broker (started by `scripts/test.sh`,
//! address in TOUCHSTREAM_TEST_BROKERS), random names, producing scripts, reading topics back and
//! running the `touchstream` binary.
#![allow(dead_code)]

mod progress;
pub mod scenarios;

pub use progress::*;

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

pub const MIN: i64 = 60_000;
pub const HOUR: i64 = 3_600_000;
pub const DAY: i64 = 86_400_000;

pub fn brokers() -> String {
    std::env::var("TOUCHSTREAM_TEST_BROKERS").expect("TOUCHSTREAM_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts a Kafka broker")
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A fresh suffix for topic, group and client names.
pub fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{:x}", std::process::id(), nanos & 0xffff_ffff)
}

/// Topic names of one test.
#[derive(Clone, Debug)]
pub struct Topics {
    pub events: String,
    pub conversions: String,
    pub channels: String,
    pub alerts: String,
    pub dlq: String,
    pub partials: String,
    pub changelog: String,
    pub scores: String,
    pub erasure: String,
    pub erasure_audit: String,
    pub group: String,
}

impl Topics {
    pub fn new(name: &str) -> Topics {
        let base = unique(name);
        Topics {
            events: format!("{base}.events"),
            conversions: format!("{base}.conversions"),
            channels: format!("{base}.channels"),
            alerts: format!("{base}.alerts"),
            dlq: format!("{base}.dlq"),
            partials: format!("{base}.partials"),
            changelog: format!("{base}.changelog"),
            scores: format!("{base}.scores"),
            erasure: format!("{base}.erasure"),
            erasure_audit: format!("{base}.erasure-audit"),
            group: format!("{base}.group"),
        }
    }

    /// `--set` arguments pointing the processor at these topics.
    pub fn args(&self) -> Vec<String> {
        let pairs = [
            ("kafka.brokers", brokers()),
            ("kafka.group_id", self.group.clone()),
            ("topics.events", self.events.clone()),
            ("topics.conversions", self.conversions.clone()),
            ("topics.channels", self.channels.clone()),
            ("topics.alerts", self.alerts.clone()),
            ("topics.dlq", self.dlq.clone()),
            ("topics.channel_partials", self.partials.clone()),
            ("topics.changelog", self.changelog.clone()),
            ("topics.scores", self.scores.clone()),
            ("topics.erasure", self.erasure.clone()),
            ("topics.erasure_audit", self.erasure_audit.clone()),
            ("topics.partitions", "3".into()),
            ("http.enabled", "false".into()),
        ];
        pairs.iter().flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]).collect()
    }
}

pub fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = rt.block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

/// A test producer; keyed records are partitioned like Kafka's Java clients (murmur2), the
/// processor's default `topics.partitioner`.
/// A topic's configuration value `key` as the broker reports it.
pub fn topic_config(name: &str, key: &str) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let spec = rdkafka::admin::ResourceSpecifier::Topic(name);
    let res = rt.block_on(admin.describe_configs([&spec], &AdminOptions::new())).expect("describe configs");
    res.into_iter().flatten().flat_map(|r| r.entries).find(|e| e.name == key).and_then(|e| e.value)
}

pub fn producer() -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", brokers()).set("linger.ms", "1").set("partitioner", "murmur2_random").create().expect("producer")
}

/// Sends a raw record to an explicit partition and waits for delivery of everything sent.
pub fn send_raw(p: &BaseProducer, topic: &str, partition: i32, key: Option<&[u8]>, payload: &[u8], headers: Option<OwnedHeaders>) {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).partition(partition).payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    if let Some(h) = headers {
        rec = rec.headers(h);
    }
    loop {
        match p.send(rec) {
            Ok(()) => return,
            Err((rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
            Err((e, _)) => panic!("send: {e}"),
        }
    }
}

pub fn flush(p: &BaseProducer) {
    p.flush(Duration::from_secs(120)).expect("flush");
}

/// An event of the input contract as JSON.
pub fn event(id: &str, customer: &str, ts: i64, event_type: &str, extra: &str) -> String {
    format!(r#"{{"event_id":"{id}","customer_id":"{customer}","ts":{ts},"event_type":"{event_type}"{extra}}}"#)
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Record {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("JSON payload")
    }
    pub fn key_str(&self) -> String {
        String::from_utf8(self.key.clone().unwrap_or_default()).unwrap()
    }
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }
}

/// Reads `topic` read_committed from the beginning until `done(records, every partition at its
/// end)` holds or `timeout` passes; a topic that does not exist after `appear` reads as empty.
fn read_while(topic: &str, appear: Duration, timeout: Duration, mut done: impl FnMut(&[Record], bool) -> bool) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    // The processor creates its output topics at start: wait for the topic to exist.
    let (start, deadline) = (Instant::now(), Instant::now() + timeout);
    let mut tpl = TopicPartitionList::new();
    while tpl.count() == 0 {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        for t in md.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
            }
        }
        if tpl.count() == 0 {
            if start.elapsed() > appear {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    consumer.assign(&tpl).expect("assign");
    let partitions = tpl.count();
    let mut at_end = std::collections::HashSet::new();
    let mut out = Vec::new();
    loop {
        if done(&out, at_end.len() == partitions) || Instant::now() > deadline {
            return out;
        }
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                at_end.remove(&m.partition());
                out.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| k.to_vec()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m.headers().map(|h| h.iter().map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec())).collect()).unwrap_or_default(),
                });
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
}

/// Reads `topic` read_committed from the beginning until `done` holds or `timeout` passes.
pub fn read_until(topic: &str, timeout: Duration, mut done: impl FnMut(&[Record]) -> bool) -> Vec<Record> {
    read_while(topic, timeout, timeout, |r, _| done(r))
}

/// Everything committed to `topic`: reads for at least `settle` (for outputs still on their way)
/// and then on until every partition is read to its end, however long that takes (up to two
/// minutes more), so a slow machine reads all of it rather than what arrived in `settle`.
pub fn read_all(topic: &str, settle: Duration) -> Vec<Record> {
    let start = Instant::now();
    read_while(topic, settle, settle + Duration::from_secs(120), |_, at_end| at_end && start.elapsed() >= settle)
}

/// Latest value per key of a compacted (upsert) topic.
pub fn latest_by_key(records: &[Record]) -> HashMap<String, serde_json::Value> {
    let mut m = HashMap::new();
    for r in records {
        m.insert(r.key_str(), r.json());
    }
    m
}

/// A running `touchstream` process.
pub struct Processor {
    pub child: Child,
    pub log: std::path::PathBuf,
}

impl Processor {
    pub fn start(topics: &Topics, extra: &[(&str, &str)]) -> Processor {
        Self::start_as(topics, "tx", extra, &[])
    }

    /// Starts a replica with its own transactional id suffix and extra environment.
    pub fn start_as(topics: &Topics, replica: &str, extra: &[(&str, &str)], env: &[(&str, &str)]) -> Processor {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_touchstream"));
        cmd.arg("run").args(topics.args());
        cmd.arg("--set").arg(format!("kafka.transactional_id={}-{replica}", topics.group));
        cmd.envs(env.iter().copied());
        for (k, v) in extra {
            cmd.arg("--set").arg(format!("{k}={v}"));
        }
        cmd.env("RUST_LOG", std::env::var("TEST_LOG").unwrap_or_else(|_| "touchstream=info,warn".into()));
        let log = std::env::temp_dir().join(format!("{}.log", unique("touchstream")));
        let file = std::fs::File::create(&log).expect("log file");
        cmd.stdout(Stdio::null()).stderr(Stdio::from(file));
        Processor { child: cmd.spawn().expect("start touchstream"), log }
    }

    /// What the process logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status and stderr.
    pub fn stop(mut self) -> (std::process::ExitStatus, String) {
        unsafe_kill(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, self.log());
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("touchstream did not stop within 60 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// Asserts two floats agree to 1e-9.
#[track_caller]
pub fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!((actual - expected).abs() < 1e-9, "{what}: got {actual}, expected {expected}");
}

/// A loopback address with a free port.
pub fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// The value of the first sample of metric `name` on the replica's `/metrics` (None while nothing
/// listens there or the metric is not written yet).
pub fn metric(addr: &str, name: &str) -> Option<f64> {
    if std::net::TcpStream::connect(addr).is_err() {
        return None;
    }
    let (_, body) = http_get(addr, "/metrics");
    body.lines().find(|l| l.starts_with(name) && !l.starts_with('#')).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// A plain HTTP/1.1 GET; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the HTTP endpoint");
    write!(s, "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (code, body)
}

// ---------------------------------------------------------------------------------------------
// Exactly-once harness: a generated stream, replicas, and output comparison.

/// Settings for failure tests: fast failure detection, no wall-clock (idle) watermark moves, so a
/// run's outputs depend on the input alone.
pub const EOS_SETTINGS: &[(&str, &str)] = &[
    ("event_time.idle_timeout", "1h"),
    ("kafka.consumer.session.timeout.ms", "6000"),
    ("kafka.consumer.heartbeat.interval.ms", "1000"),
    ("kafka.transaction_timeout", "10s"),
    // alerts at the model's 10-30 min checks (one low threshold): the short test streams then give
    // many model alerts to compare between runs
    ("alerts.target_delay", "30m"),
    ("alerts.abandon_threshold", "0.5"),
];

/// [`EOS_SETTINGS`] with `extra` settings after them (the later one wins); every run that is
/// compared with [`reference_run`] must use these settings.
pub fn eos_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    EOS_SETTINGS.iter().chain(extra).copied().collect()
}

/// Sends one keyed record (default partitioner), waiting while the producer queue is full.
pub fn send_keyed(p: &BaseProducer, topic: &str, key: &[u8], payload: &[u8]) {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).key(key).payload(payload);
    loop {
        match p.send(rec) {
            Ok(()) => break,
            Err((_, r)) => {
                rec = r;
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

/// The first `n` events of the simulator's default world (seeded; 400 customers arriving within
/// half a day) as (customer id, JSON).
pub fn simulated(n: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    touchstream_sim::stream::default_events(seed, 400, 0.5, n as u64).into_iter().map(|r| (r.customer_id, r.json)).collect()
}

/// Produces `n` simulated events (seeded, [`simulated`]) to `topic`, spread over about `seconds`.
pub fn produce_stream(topic: &str, n: usize, seed: u64, seconds: f64) {
    produce_events(topic, &simulated(n, seed), seconds);
}

/// Produces `events` (customer id, JSON) to `topic` in order, spread over about `seconds`. A test
/// that produces in phases splits one stream, so that every phase goes on in event time where
/// the previous one stopped.
pub fn produce_events(topic: &str, events: &[(String, Vec<u8>)], seconds: f64) {
    let p = producer();
    let start = Instant::now();
    let n = events.len().max(1);
    for (i, (customer, json)) in events.iter().enumerate() {
        send_keyed(&p, topic, customer.as_bytes(), json);
        let due = start + Duration::from_secs_f64(seconds * (i + 1) as f64 / n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            p.poll(wait);
        }
    }
    flush(&p);
}

/// End offset of every partition of `topic`.
pub fn end_offsets(topic: &str) -> Vec<(i32, i64)> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).create().unwrap();
    let md = c.fetch_metadata(Some(topic), Duration::from_secs(10)).unwrap();
    let mut out = Vec::new();
    for p in md.topics()[0].partitions() {
        let (_, high) = c.fetch_watermarks(topic, p.id(), Duration::from_secs(10)).unwrap();
        out.push((p.id(), high));
    }
    out
}

/// Committed offsets of `group` on `topic` (-1 where none, or when they cannot be read).
pub fn committed_offsets(group: &str, topic: &str, partitions: &[i32]) -> Vec<(i32, i64)> {
    try_committed_offsets(group, topic, partitions).unwrap_or_else(|_| partitions.iter().map(|p| (*p, -1)).collect())
}

/// Everything a run wrote, read back read_committed.
#[derive(Debug)]
pub struct Outputs {
    pub conversions: HashMap<String, serde_json::Value>,
    pub conversion_records: usize,
    pub alerts: HashMap<String, serde_json::Value>,
    pub alert_records: usize,
    pub channels: HashMap<String, serde_json::Value>,
}

pub fn collect_outputs(topics: &Topics) -> Outputs {
    let settle = Duration::from_secs(3);
    let conv = read_all(&topics.conversions, settle);
    let alerts = read_all(&topics.alerts, settle);
    let channels = read_all(&topics.channels, settle);
    Outputs {
        conversions: conv.iter().map(|r| (r.json()["conversion_id"].as_str().unwrap().to_string(), r.json())).collect(),
        conversion_records: conv.len(),
        alerts: alerts.iter().map(|r| (r.json()["alert_id"].as_str().unwrap().to_string(), r.json())).collect(),
        alert_records: alerts.len(),
        channels: latest_by_key(&channels),
    }
}

/// The outputs once the channel totals equal `want`'s (at most 90 s): a replica killed without
/// leaving the group keeps its channel-partials partitions until its session expires, and their
/// totals are written only after the next owner has replayed them (DESIGN.md, channel totals).
/// Conversions and alerts are read as they are then; the comparison stays the caller's.
pub fn outputs_when_totals_settle(topics: &Topics, want: &Outputs) -> Outputs {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = collect_outputs(topics);
        let settled = got.channels.len() == want.channels.len() && want.channels.iter().all(|(k, v)| got.channels.get(k).is_some_and(|g| same_json(v, g)));
        if settled || Instant::now() > deadline {
            return got;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// JSON equality with floats compared to 1e-9.
pub fn same_json(a: &serde_json::Value, b: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (x.as_f64(), y.as_f64()) {
            (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(1.0),
            _ => x == y,
        },
        (Value::Array(x), Value::Array(y)) => x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_json(a, b)),
        (Value::Object(x), Value::Object(y)) => x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w))),
        _ => a == b,
    }
}

/// Asserts that a run with failures wrote exactly what a failure-free run wrote.
#[track_caller]
pub fn assert_same_outputs(got: &Outputs, want: &Outputs) {
    assert!(
        want.conversion_records > 30 && want.alert_records > 10,
        "the reference run has work: {} conversions, {} alerts",
        want.conversion_records,
        want.alert_records
    );
    assert_eq!(got.conversion_records, got.conversions.len(), "no conversion written twice");
    assert_eq!(got.alert_records, got.alerts.len(), "no alert written twice");
    assert_eq!(want.conversion_records, want.conversions.len());
    let missing: Vec<&String> = want.conversions.keys().filter(|k| !got.conversions.contains_key(*k)).collect();
    let extra: Vec<&String> = got.conversions.keys().filter(|k| !want.conversions.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "conversions missing {missing:?}, extra {extra:?}");
    for (k, v) in &want.conversions {
        assert!(same_json(v, &got.conversions[k]), "conversion {k} differs:\nwant {v}\ngot  {}", got.conversions[k]);
    }
    let missing: Vec<&String> = want.alerts.keys().filter(|k| !got.alerts.contains_key(*k)).collect();
    let extra: Vec<&String> = got.alerts.keys().filter(|k| !want.alerts.contains_key(*k)).collect();
    let show = |keys: &[&String], from: &Outputs| keys.iter().take(5).map(|k| from.alerts[*k].to_string()).collect::<Vec<_>>().join("\n");
    assert!(
        missing.is_empty() && extra.is_empty(),
        "alerts missing {missing:?}, extra {extra:?}\nmissing:\n{}\nextra:\n{}",
        show(&missing, want),
        show(&extra, got)
    );
    for (k, v) in &want.alerts {
        assert!(same_json(v, &got.alerts[k]), "alert {k} differs:\nwant {v}\ngot  {}", got.alerts[k]);
    }
    let missing: Vec<&String> = want.channels.keys().filter(|k| !got.channels.contains_key(*k)).take(10).collect();
    let extra: Vec<&String> = got.channels.keys().filter(|k| !want.channels.contains_key(*k)).take(10).collect();
    assert_eq!(got.channels.len(), want.channels.len(), "channel window keys: missing {missing:?}, extra {extra:?}");
    for (k, v) in &want.channels {
        let g = got.channels.get(k).unwrap_or_else(|| panic!("channel window {k} missing"));
        assert!(same_json(v, g), "channel window {k} differs:\nwant {v}\ngot  {g}");
    }
}

/// Runs one failure-free replica over the whole events topic on fresh output topics and group.
pub fn reference_run(events_topic: &str) -> Outputs {
    let mut topics = Topics::new("reference");
    topics.events = events_topic.to_string();
    let proc = Processor::start(&topics, EOS_SETTINGS);
    assert!(wait_caught_up(&topics, Duration::from_secs(600)), "reference run caught up:\n{}", proc.log());
    let out = collect_outputs(&topics);
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    out
}

pub fn kill9(p: &Processor) {
    unsafe_kill(p.child.id(), "KILL");
}

pub fn signal(p: &Processor, sig: &str) {
    unsafe_kill(p.child.id(), sig);
}

/// A small deterministic PRNG for test schedules.
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Polls `cond` until it holds; panics naming `what`, with the processor's log, after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, proc: Option<&Processor>, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", proc.map(|p| p.log()).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the processor logs `needle` within `timeout`.
pub fn wait_for_log(proc: &Processor, needle: &str, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if proc.log().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Input records the group has committed past, over every partition of the events topic.
pub fn committed_total(topics: &Topics) -> i64 {
    let parts: Vec<i32> = end_offsets(&topics.events).iter().map(|(p, _)| *p).collect();
    committed_offsets(&topics.group, &topics.events, &parts).iter().map(|(_, o)| (*o).max(0)).sum()
}

/// Whether a replica's log shows it was assigned at least one partition.
pub fn owns_partitions(proc: &Processor) -> bool {
    proc.log().lines().any(|l| l.contains("partitions assigned") && !l.contains("count=0"))
}
