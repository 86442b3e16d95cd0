//! Throughput harness: one simulated backlog on a real broker, then, in one sitting and on that
//! same backlog, an exactly-once passthrough written here (consume -> produce in transactions
//! committed every 100 ms, like the processor's) and the processor in its modes. Reports events/s,
//! the ratio to the passthrough, bytes written per input event by topic, and resident memory per
//! customer; prints a markdown table and writes JSON. Not a pass/fail test: speed is a report.
//!
//!     touchstream-load --brokers HOST:PORT [--partitions 4] [--customers 3000] \
//!         [--touchstream target/release/touchstream] [--modes passthrough,defaults,models_off,at_least_once] \
//!         [--replicas 1] [--out load-tests/report.json]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;
use touchstream_sim::run::{run, Options};
use touchstream_sim::{Model, World};

#[derive(Debug, Parser)]
#[command(name = "touchstream-load")]
struct Cli {
    #[arg(long)]
    brokers: String,
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    #[arg(long, default_value_t = 3000)]
    customers: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The processor binary.
    #[arg(long, default_value = "target/release/touchstream")]
    touchstream: String,
    /// passthrough, defaults, models_off, at_least_once (comma-separated).
    #[arg(long, default_value = "passthrough,defaults,models_off,at_least_once")]
    modes: String,
    /// Processor replicas of one group per mode (the report is their sum).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

#[derive(Debug, Serialize)]
struct RunReport {
    mode: String,
    replicas: usize,
    events: u64,
    seconds: f64,
    events_per_s: f64,
    ratio_to_passthrough: Option<f64>,
    /// Bytes written per input event, by output topic role.
    bytes_per_event: HashMap<String, f64>,
    resident_bytes: Option<f64>,
    customers: Option<f64>,
    resident_bytes_per_customer: Option<f64>,
    /// The processor's own estimate of its state (`touchstream_state_bytes`) per customer.
    state_bytes_per_customer: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    partitions: i32,
    customers: u64,
    events: u64,
    input_bytes: u64,
    runs: Vec<RunReport>,
}

fn stamp() -> String {
    format!("load-{}-{}", std::process::id(), std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() % 1_000_000_000)
}

fn create_topic(brokers: &str, name: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create().expect("admin client");
    let rt = tokio_free_block_on(admin.create_topics(&[NewTopic::new(name, partitions, TopicReplication::Fixed(1))], &AdminOptions::new()));
    rt.expect("create topic");
}

/// A tiny executor for the admin client's future (no async runtime in this crate).
fn tokio_free_block_on<F: std::future::Future>(f: F) -> F::Output {
    use std::task::{Context, Poll, RawWaker, RawWakerVTable, Waker};
    fn noop(_: *const ()) {}
    fn clone(p: *const ()) -> RawWaker {
        RawWaker::new(p, &VTABLE)
    }
    static VTABLE: RawWakerVTable = RawWakerVTable::new(clone, noop, noop, noop);
    let waker = unsafe { Waker::from_raw(RawWaker::new(std::ptr::null(), &VTABLE)) };
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn key_of(line: &[u8]) -> &[u8] {
    let pat = b"\"customer_id\":\"";
    let start = line.windows(pat.len()).position(|w| w == pat).map_or(0, |i| i + pat.len());
    let end = line[start..].iter().position(|b| *b == b'"').map_or(line.len(), |i| start + i);
    &line[start..end]
}

fn produce(brokers: &str, topic: &str, events: &[u8]) -> u64 {
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("linger.ms", "20").set("batch.size", "1000000").create().expect("producer");
    let mut n = 0;
    for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let mut rec = BaseRecord::to(topic).key(key_of(line)).payload(line);
        loop {
            match p.send(rec) {
                Ok(()) => break,
                Err((_, r)) => {
                    p.poll(Duration::from_millis(10));
                    rec = r;
                }
            }
        }
        n += 1;
    }
    p.flush(Duration::from_secs(120)).expect("flush the backlog");
    n
}

fn end_offsets(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).create().unwrap();
    (0..partitions).map(|p| c.fetch_watermarks(topic, p, Duration::from_secs(10)).map_or(0, |w| w.1)).collect()
}

fn committed_total(brokers: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    match c.committed_offsets(tpl, Duration::from_secs(10)) {
        Ok(t) => t.elements().iter().map(|e| if let Offset::Offset(o) = e.offset() { o } else { 0 }).sum(),
        Err(_) => 0,
    }
}

/// Key + value bytes of every committed record of `topic`.
fn topic_bytes(brokers: &str, topic: &str) -> u64 {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", stamp())
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(10)) else { return 0 };
    let parts: Vec<i32> = md.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if parts.is_empty() {
        return 0;
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let (mut bytes, mut open, mut idle) = (0u64, parts.len(), Instant::now());
    while open > 0 && idle.elapsed() < Duration::from_secs(10) {
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                bytes += (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
                idle = Instant::now();
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => open -= 1,
            _ => {}
        }
    }
    bytes
}

/// The passthrough: consume -> produce in transactions committed every 100 ms with the offsets.
fn passthrough(brokers: &str, input: &str, output: &str, end: i64) -> f64 {
    let group = format!("{input}-passthrough");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[input]).unwrap();
    let producer: BaseProducer = ClientConfig::new().set("bootstrap.servers", brokers).set("transactional.id", &group).set("linger.ms", "5").create().unwrap();
    producer.init_transactions(Duration::from_secs(30)).unwrap();
    producer.begin_transaction().unwrap();
    let (mut next, mut done, mut last) = (HashMap::<i32, i64>::new(), 0i64, Instant::now());
    let mut started = None;
    loop {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(50)) {
            started.get_or_insert_with(Instant::now);
            let mut rec = BaseRecord::to(output).payload(m.payload().unwrap_or_default());
            if let Some(k) = m.key() {
                rec = rec.key(k);
            }
            while let Err((_, r)) = producer.send(rec) {
                producer.poll(Duration::from_millis(5));
                rec = r;
            }
            next.insert(m.partition(), m.offset() + 1);
        }
        if last.elapsed() >= Duration::from_millis(100) && !next.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, o) in &next {
                tpl.add_partition_offset(input, *p, Offset::Offset(*o)).unwrap();
            }
            producer.send_offsets_to_transaction(&tpl, &consumer.group_metadata().unwrap(), Duration::from_secs(30)).unwrap();
            producer.commit_transaction(Duration::from_secs(30)).unwrap();
            producer.begin_transaction().unwrap();
            done = next.values().sum::<i64>();
            last = Instant::now();
        }
        if done >= end {
            break;
        }
    }
    producer.abort_transaction(Duration::from_secs(30)).ok();
    started.map_or(0.0, |s| s.elapsed().as_secs_f64())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    let values: Vec<f64> = body
        .lines()
        .filter(|l| l.starts_with(name) && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

struct Started {
    children: Vec<Child>,
    ports: Vec<u16>,
}

fn start(cli: &Cli, prefix: &str, input: &str, mode: &str) -> Started {
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for r in 0..cli.replicas {
        let port = free_port();
        let mut args: Vec<String> = vec![
            format!("kafka.brokers={}", cli.brokers),
            format!("kafka.group_id={prefix}"),
            format!("kafka.transactional_id={prefix}-{r}"),
            format!("topics.events={input}"),
            "http.enabled=true".into(),
            format!("http.listen=127.0.0.1:{port}"),
        ];
        for t in ["conversions", "channels", "alerts", "dlq", "channel_partials", "changelog", "scores", "erasure", "erasure_audit"] {
            args.push(format!("topics.{t}={prefix}.{t}"));
        }
        match mode {
            "models_off" => args.push("models.enabled=false".into()),
            "at_least_once" => args.push("kafka.guarantee=at_least_once".into()),
            _ => {}
        }
        let mut cmd = Command::new(&cli.touchstream);
        cmd.arg("run").env("RUST_LOG", "warn").stdout(Stdio::null()).stderr(Stdio::null());
        for a in &args {
            cmd.arg("--set").arg(a);
        }
        children.push(cmd.spawn().unwrap_or_else(|e| panic!("start {}: {e}", cli.touchstream)));
        ports.push(port);
    }
    Started { children, ports }
}

fn processor_run(cli: &Cli, input: &str, mode: &str, end: i64) -> RunReport {
    let prefix = format!("{input}-{mode}");
    let mut started = start(cli, &prefix, input, mode);
    // from the first commit to the last: the processor's own start (models, topics) is not in the rate
    let (mut t1, mut c1) = (None, 0);
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let c = committed_total(&cli.brokers, &prefix, input, cli.partitions);
        if c > 0 && t1.is_none() {
            t1 = Some(Instant::now());
            c1 = c;
        }
        if c >= end || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let seconds = t1.map_or(f64::NAN, |t| t.elapsed().as_secs_f64());
    let resident: Option<f64> = started.ports.iter().map(|p| metric(*p, "touchstream_process_resident_bytes")).sum();
    let customers: Option<f64> = started.ports.iter().map(|p| metric(*p, "touchstream_customers")).sum();
    let state: Option<f64> = started.ports.iter().map(|p| metric(*p, "touchstream_state_bytes")).sum();
    for c in &mut started.children {
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
    }
    for c in &mut started.children {
        let _ = c.wait();
    }
    let mut bytes_per_event = HashMap::new();
    for t in ["conversions", "alerts", "channels", "channel_partials", "changelog", "scores"] {
        bytes_per_event.insert(t.to_string(), topic_bytes(&cli.brokers, &format!("{prefix}.{t}")) as f64 / end as f64);
    }
    let events = (end - c1).max(0) as u64;
    RunReport {
        mode: mode.into(),
        replicas: cli.replicas,
        events,
        seconds,
        events_per_s: events as f64 / seconds,
        ratio_to_passthrough: None,
        bytes_per_event,
        resident_bytes: resident,
        customers,
        resident_bytes_per_customer: resident.zip(customers).map(|(r, c)| r / c.max(1.0)),
        state_bytes_per_customer: state.zip(customers).map(|(s, c)| s / c.max(1.0)),
    }
}

fn main() {
    let cli = Cli::parse();
    let mut world = World::default_world();
    world.seed = cli.seed;
    world.customers = cli.customers;
    world.concurrency = (cli.customers / 10).max(50);
    let model = Model::new(world).expect("the default world");
    let mut events = Vec::new();
    run(&model, &Options::default(), Some(&mut events), None).expect("simulate");
    let input = format!("{}.events", stamp());
    create_topic(&cli.brokers, &input, cli.partitions);
    let n = produce(&cli.brokers, &input, &events);
    let end: i64 = end_offsets(&cli.brokers, &input, cli.partitions).iter().sum();
    eprintln!("backlog: {n} events ({} bytes) in {input}, {} partitions", events.len(), cli.partitions);
    let mut runs = Vec::new();
    for mode in cli.modes.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let r = if mode == "passthrough" {
            let out = format!("{input}-passthrough.out");
            create_topic(&cli.brokers, &out, cli.partitions);
            let seconds = passthrough(&cli.brokers, &input, &out, end);
            let mut bytes = HashMap::new();
            bytes.insert("output".to_string(), topic_bytes(&cli.brokers, &out) as f64 / end as f64);
            RunReport {
                mode: mode.into(),
                replicas: 1,
                events: end as u64,
                seconds,
                events_per_s: end as f64 / seconds,
                ratio_to_passthrough: Some(1.0),
                bytes_per_event: bytes,
                resident_bytes: None,
                customers: None,
                resident_bytes_per_customer: None,
                state_bytes_per_customer: None,
            }
        } else {
            processor_run(&cli, &input, mode, end)
        };
        eprintln!("{mode}: {:.0} events/s", r.events_per_s);
        runs.push(r);
    }
    let base = runs.iter().find(|r| r.mode == "passthrough").map(|r| r.events_per_s);
    for r in &mut runs {
        r.ratio_to_passthrough = base.map(|b| r.events_per_s / b);
    }
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string()))
            .unwrap_or_default()
    );
    let report = Report { machine, partitions: cli.partitions, customers: cli.customers, events: end as u64, input_bytes: events.len() as u64, runs };
    let mut table = format!(
        "{} events ({:.0} B each) of {} customers, {} partitions; {}\n\n| mode | replicas | events/s | x passthrough | changelog B/event | outputs B/event | RSS | state per customer |\n|---|---|---|---|---|---|---|---|\n",
        report.events,
        report.input_bytes as f64 / report.events.max(1) as f64,
        report.customers,
        report.partitions,
        report.machine
    );
    for r in &report.runs {
        let cl = r.bytes_per_event.get("changelog").copied().unwrap_or(0.0);
        let outs: f64 = r.bytes_per_event.iter().filter(|(k, _)| *k != "changelog").map(|(_, v)| v).sum();
        table += &format!(
            "| {} | {} | {:.0} | {:.2} | {:.0} | {:.0} | {} | {} |\n",
            r.mode,
            r.replicas,
            r.events_per_s,
            r.ratio_to_passthrough.unwrap_or(f64::NAN),
            cl,
            outs,
            r.resident_bytes.map_or("-".into(), |b| format!("{:.0} MB", b / 1e6)),
            r.state_bytes_per_customer.map_or("-".into(), |b| format!("{:.0} B", b))
        );
    }
    println!("{table}");
    if let Some(path) = &cli.out {
        std::fs::write(path, serde_json::to_string_pretty(&report).unwrap() + "\n").expect("write the report");
        std::fs::write(path.with_extension("md"), table).expect("write the table");
    }
}
