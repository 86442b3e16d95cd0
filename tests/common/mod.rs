//! Shared helpers for the integration tests: a real Kafka broker (started by `scripts/test.sh`,
//! address in TOUCHSTREAM_TEST_BROKERS), random names, producing scripts, reading topics back and
//! running the `touchstream` binary.
#![allow(dead_code)]

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
    std::env::var("TOUCHSTREAM_TEST_BROKERS").expect(
        "TOUCHSTREAM_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts a Kafka broker",
    )
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
            ("kafka.transactional_id", format!("{}-tx", self.group)),
            ("topics.partitions", "3".into()),
            ("http.enabled", "false".into()),
        ];
        pairs.iter().flat_map(|(k, v)| ["--set".to_string(), format!("{k}={v}")]).collect()
    }
}

pub fn create_topic(name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> =
        ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    let res = rt.block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create topics");
    for r in res {
        r.expect("topic created");
    }
}

pub fn producer() -> BaseProducer {
    ClientConfig::new().set("bootstrap.servers", brokers()).set("linger.ms", "1").create().expect("producer")
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
    p.send(rec).map_err(|(e, _)| e).expect("send");
}

pub fn flush(p: &BaseProducer) {
    p.flush(Duration::from_secs(30)).expect("flush");
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

/// Reads a whole topic (read_committed) from the beginning, polling until `done(records)` is true
/// or `timeout` passes; returns what was read.
pub fn read_until(topic: &str, timeout: Duration, mut done: impl FnMut(&[Record]) -> bool) -> Vec<Record> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    // The processor creates its output topics at start: wait for the topic to exist.
    let deadline = Instant::now() + timeout;
    let mut tpl = TopicPartitionList::new();
    while tpl.count() == 0 {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10)).expect("metadata");
        for t in md.topics().iter().filter(|t| t.error().is_none()) {
            for p in t.partitions() {
                tpl.add_partition_offset(topic, p.id(), Offset::Beginning).unwrap();
            }
        }
        if tpl.count() == 0 {
            if Instant::now() > deadline {
                return Vec::new();
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    loop {
        if done(&out) || Instant::now() > deadline {
            return out;
        }
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            out.push(Record {
                partition: m.partition(),
                offset: m.offset(),
                key: m.key().map(|k| k.to_vec()),
                payload: m.payload().unwrap_or_default().to_vec(),
                headers: m
                    .headers()
                    .map(|h| h.iter().map(|x| (x.key.to_string(), x.value.unwrap_or_default().to_vec())).collect())
                    .unwrap_or_default(),
            });
        }
    }
}

/// Reads whatever a topic holds now (waits `settle` for stragglers).
pub fn read_all(topic: &str, settle: Duration) -> Vec<Record> {
    let start = Instant::now();
    read_until(topic, settle, |_| start.elapsed() >= settle)
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
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_touchstream"));
        cmd.arg("run").args(topics.args());
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
