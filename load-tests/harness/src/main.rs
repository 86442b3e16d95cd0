//! touchstream-load: the throughput harness of issue 13. One simulated backlog on a real broker;
//! then, in one sitting and on that same backlog, an exactly-once passthrough written here and the
//! processor (`touchstream run`) in its modes, each from a fresh consumer group into fresh output
//! topics. Reports events/s, the ratio to the passthrough, bytes written per input event by topic,
//! memory per resident customer and, at half of each run's rate, event-to-output latency; prints
//! markdown and writes JSON. Speed is reported, never asserted.
//!
//!     touchstream-load --brokers HOST:PORT [--partitions 4] [--customers 10000] [--events 300000]
//!         [--modes passthrough,defaults,models_off,at_least_once,shadow] [--replicas 1]
//!         [--touchstream target/release/touchstream] [--out load-tests/report.json]

mod cpu;
mod kafka;
mod latency;
mod passthrough;
mod processor;
mod report;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use clap::Parser;
use touchstream_sim::run::Options;
use touchstream_sim::{Model, World};

use crate::processor::{Launch, RunTopics};
use crate::report::{Backlog, Machine, Report, Run, TopicBytes, REPORTED_TOPICS};

#[derive(Debug, Parser)]
#[command(name = "touchstream-load", about = "Throughput harness: a passthrough and the processor's modes on one simulated backlog", args_override_self = true)]
struct Cli {
    /// Kafka bootstrap servers.
    #[arg(long)]
    brokers: String,
    /// Partitions of the input topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Simulated customers (the simulator's default world).
    #[arg(long, default_value_t = 10_000)]
    customers: u64,
    /// Stop the simulation after this many events.
    #[arg(long)]
    events: Option<u64>,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// The processor binary.
    #[arg(long, default_value = "target/release/touchstream")]
    touchstream: PathBuf,
    /// Runs, in order: passthrough, passthrough_plain, defaults, models_off, at_least_once, shadow,
    /// or a processor mode written as settings (`processing.commit_interval=1s`, several joined by `+`).
    #[arg(long, default_value = "passthrough,passthrough_plain,defaults,models_off,at_least_once,shadow")]
    modes: String,
    /// Processor replicas of one group per run (their numbers are summed).
    #[arg(long, default_value_t = 1)]
    replicas: usize,
    /// The passthrough's transaction interval, like the processor's processing.commit_interval
    /// (also given to the processor when not 100 ms). Units ms or s.
    #[arg(long, default_value = "100ms", value_parser = parse_duration)]
    commit_interval: Duration,
    /// The passthrough commits after this many records too (processing.max_batch_events).
    #[arg(long, default_value_t = 10_000)]
    max_batch: usize,
    /// Seconds of paced input per processor run for the latency at 50% of its rate (0: none).
    #[arg(long, default_value_t = 30.0)]
    latency_seconds: f64,
    /// The latency run's rate as a fraction of the run's steady rate (issue 13: half).
    #[arg(long, default_value_t = 0.5)]
    latency_fraction: f64,
    /// Extra `--set key=value` for every processor run (repeatable).
    #[arg(long = "set")]
    set: Vec<String>,
    /// Passes over the modes; every other one runs them in reverse order, and the report adds
    /// each mode's median (the rates of one sitting drift, so a mode that always runs later
    /// would look faster than it is).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Unreported runs of the first processor mode before the measured ones: the first processor
    /// run on a fresh broker measured up to 30% slower than the same mode later in the sitting.
    #[arg(long, default_value_t = 1)]
    warmup_runs: usize,
    /// Longest a run may take to catch up.
    #[arg(long, default_value = "1800s", value_parser = parse_duration)]
    timeout: Duration,
    /// Keep the topics (deleted after each run by default).
    #[arg(long)]
    keep_topics: bool,
    /// Processor logs go here (default: the temp dir).
    #[arg(long)]
    log_dir: Option<PathBuf>,
    /// Write the report as JSON here, and the markdown beside it (.md).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// The baselines: `passthrough` (the processor's client settings; the ratios' base) and
/// `passthrough_plain` (librdkafka's fetch queue backoff left at its default).
fn is_passthrough(mode: &str) -> bool {
    mode == "passthrough" || mode == "passthrough_plain"
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let n: f64 = n.parse().map_err(|_| format!("not a duration: {s:?} (e.g. 100ms, 1s)"))?;
    match unit {
        "ms" => Ok(Duration::from_secs_f64(n / 1e3)),
        "s" => Ok(Duration::from_secs_f64(n)),
        "m" => Ok(Duration::from_secs_f64(n * 60.0)),
        _ => Err(format!("unknown unit in {s:?}: ms, s or m")),
    }
}

/// How long a run took: from its start, and from its first commit (`steady_*`).
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub seconds: f64,
    pub steady_seconds: f64,
    pub steady_events: u64,
    /// CPU seconds of the measured process(es) over the run, and of the whole machine.
    pub cpu_seconds: Option<f64>,
    pub machine_cpu_seconds: Option<f64>,
}

impl Timing {
    fn into_run(self, mode: &str, settings: Vec<String>, replicas: usize, events: u64) -> Run {
        let rate = events as f64 / self.seconds;
        // one commit took it all: no steady part to time
        let steady = if self.steady_events > 0 && self.steady_seconds > 0.0 { self.steady_events as f64 / self.steady_seconds } else { rate };
        Run {
            mode: mode.into(),
            settings,
            replicas,
            events,
            seconds: self.seconds,
            events_per_s: rate,
            steady_seconds: self.steady_seconds,
            steady_events: self.steady_events,
            steady_events_per_s: steady,
            cpu_seconds: self.cpu_seconds,
            machine_cpu_seconds: self.machine_cpu_seconds,
            round: 0,
            ratio_to_passthrough: None,
            topics: BTreeMap::new(),
            resident_bytes: None,
            customers: None,
            resident_bytes_per_customer: None,
            state_bytes_per_customer: None,
            idle_resident_bytes: None,
            added_resident_bytes_per_customer: None,
            latency: None,
            latency_floor: None,
        }
    }
}

struct Harness {
    cli: Cli,
    base: String,
    input: String,
    end: Vec<(i32, i64)>,
    events: Arc<Vec<u8>>,
    /// The latency runs' input when the backlog is too short for their rate and length
    /// (simulated on first need; the largest so far).
    paced: Mutex<Option<(u64, Arc<Vec<u8>>)>>,
    log_dir: PathBuf,
}

const READ_BACK: Duration = Duration::from_secs(600);

impl Harness {
    fn total(&self) -> u64 {
        self.end.iter().map(|(_, e)| *e as u64).sum()
    }

    fn cleanup(&self, topics: &[String]) {
        if !self.cli.keep_topics {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            if let Err(e) = kafka::delete_topics(&self.cli.brokers, &names) {
                eprintln!("warning: {e:#}");
            }
        }
    }

    /// `mode`: "passthrough" (the processor's client settings) or "passthrough_plain".
    fn passthrough(&self, mode: &str, round: usize) -> Result<Run> {
        // each round reads the backlog afresh: a topic and a group of its own
        let name = if round == 0 { mode.to_string() } else { format!("r{round}-{mode}") };
        let output = format!("{}.{name}.out", self.base);
        kafka::create_topics(&self.cli.brokers, &[&output], self.cli.partitions)?;
        let timing = passthrough::Passthrough {
            brokers: &self.cli.brokers,
            input: &self.input,
            output: &output,
            group: &format!("{}.{name}.group", self.base),
            end: &self.end,
            commit_interval: self.cli.commit_interval,
            max_batch: self.cli.max_batch,
            timeout: self.cli.timeout,
            plain: mode == "passthrough_plain",
            stop: None,
            ready: None,
        }
        .run()?;
        let mut run = timing.into_run(mode, vec![], 1, self.total());
        let size = kafka::topic_size(&self.cli.brokers, &output, READ_BACK)?;
        run.topics.insert("output".into(), TopicBytes { records: size.records, bytes: size.bytes, bytes_per_event: size.bytes as f64 / self.total() as f64 });
        self.cleanup(&[output]);
        Ok(run)
    }

    fn launch(&self, mode: &str) -> Result<Launch<'_>> {
        let mut settings = processor::mode_settings(mode)?;
        if self.cli.commit_interval != Duration::from_millis(100) {
            settings.insert(0, format!("processing.commit_interval={}ms", self.cli.commit_interval.as_millis()));
        }
        settings.extend(self.cli.set.iter().cloned());
        Ok(Launch {
            binary: &self.cli.touchstream,
            brokers: &self.cli.brokers,
            partitions: self.cli.partitions,
            replicas: self.cli.replicas,
            settings,
            log_dir: &self.log_dir,
        })
    }

    /// The processor in one mode: throughput on the backlog, bytes by topic, memory.
    fn processor(&self, mode: &str, slug: &str) -> Result<Run> {
        let launch = self.launch(mode)?;
        let topics = RunTopics::new(&self.input, &format!("{}.{slug}", self.base));
        let busy0 = cpu::machine_busy_seconds();
        let mut replicas = launch.start(&topics)?;
        let watch = kafka::GroupWatch::new(&self.cli.brokers, &topics.group, &self.input, &self.end)?;
        let mut first: Option<(Instant, i64)> = None;
        let done = loop {
            replicas.check_alive()?;
            let (committed, caught_up) = watch.progress();
            let now = Instant::now();
            if committed > 0 && first.is_none() {
                first = Some((now, committed));
            }
            if caught_up {
                break now;
            }
            if now - replicas.spawned > self.cli.timeout {
                bail!("{mode}: not caught up within {:?} (committed {committed} of {})", self.cli.timeout, self.total());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (t1, c1) = first.unwrap_or((done, 0));
        let timing = Timing {
            seconds: (done - replicas.spawned).as_secs_f64(),
            steady_seconds: (done - t1).as_secs_f64(),
            steady_events: (self.total() as i64 - c1).max(0) as u64,
            cpu_seconds: replicas.pids().iter().map(|p| cpu::process_seconds(*p)).sum(),
            machine_cpu_seconds: cpu::machine_busy_seconds().zip(busy0).map(|(b1, b0)| b1 - b0),
        };
        let settings = launch.settings.iter().map(|s| processor::reported_setting(s)).collect();
        let mut run = timing.into_run(mode, settings, self.cli.replicas, self.total());
        eprintln!("{mode}: caught up in {:.1} s; {:.0} events/s steady", run.seconds, run.steady_events_per_s);
        // The processor reports its state gauges at a commit at most every 5 s.
        std::thread::sleep(Duration::from_millis(5500));
        let names = ["touchstream_process_resident_bytes", "touchstream_customers", "touchstream_state_bytes"];
        let mut m = replicas.metrics(&names);
        for _ in 0..20 {
            if m.iter().all(Option::is_some) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
            m = replicas.metrics(&names);
        }
        replicas.check_alive()?;
        replicas.stop()?;
        (run.resident_bytes, run.customers) = (m[0], m[1]);
        let per = |v: Option<f64>| v.zip(m[1]).filter(|(_, c)| *c > 0.0).map(|(v, c)| v / c);
        run.resident_bytes_per_customer = per(m[0]);
        run.state_bytes_per_customer = per(m[2]);
        for key in REPORTED_TOPICS {
            let size = kafka::topic_size(&self.cli.brokers, &topics.output(key), READ_BACK)?;
            run.topics.insert(key.into(), TopicBytes { records: size.records, bytes: size.bytes, bytes_per_event: size.bytes as f64 / self.total() as f64 });
        }
        self.cleanup(&topics.outputs());
        Ok(run)
    }

    /// Latency at half the run's steady rate, on fresh replicas and a fresh input topic.
    fn latency(&self, mode: &str, slug: &str, run: &mut Run) -> Result<()> {
        let launch = self.launch(mode)?;
        let input = format!("{}.{slug}-paced.events", self.base);
        kafka::create_topics(&self.cli.brokers, &[&input], self.cli.partitions)?;
        let topics = RunTopics::new(&input, &format!("{}.{slug}-paced", self.base));
        let mut replicas = launch.start(&topics)?;
        let result = (|| {
            replicas.wait_assigned(self.cli.partitions, Duration::from_secs(180))?;
            // once more after a metrics report (every 5 s) of the idle replicas
            std::thread::sleep(Duration::from_millis(5500));
            let idle = replicas.metrics(&["touchstream_process_resident_bytes"])[0];
            let rate = run.steady_events_per_s * self.cli.latency_fraction;
            eprintln!("{mode}: latency at {rate:.0} events/s for {} s", self.cli.latency_seconds);
            let conversions = topics.output("conversions");
            let paced = self.paced(&input, &conversions, latency::Watch::Conversions, rate);
            let events = self.paced_events(rate)?;
            let l = paced.run(&events)?;
            replicas.check_alive()?;
            Ok::<_, anyhow::Error>((idle, l, rate, events))
        })();
        replicas.stop()?;
        let mut names = topics.outputs();
        names.push(input);
        self.cleanup(&names);
        let (idle, l, rate, events) = result?;
        let floor = self.latency_floor(slug, rate, &events)?;
        eprintln!("{mode}: the passthrough at {rate:.0} events/s: p50 {:?} ms, p99 {:?} ms", floor.p50_ms, floor.p99_ms);
        run.latency_floor = Some(floor);
        run.idle_resident_bytes = idle;
        run.added_resident_bytes_per_customer = run.resident_bytes.zip(idle).zip(run.customers).filter(|(_, c)| *c > 0.0).map(|((r, i), c)| (r - i) / c);
        eprintln!("{mode}: p50 {:?} ms, p99 {:?} ms over {} conversions", l.p50_ms, l.p99_ms, l.conversions_seen);
        run.latency = Some(l);
        Ok(())
    }

    /// A paced latency run of `--latency-seconds` at `rate` into `input`, watching `output`.
    fn paced<'a>(&'a self, input: &'a str, output: &'a str, watch: latency::Watch, rate: f64) -> latency::Paced<'a> {
        latency::Paced {
            brokers: &self.cli.brokers,
            input,
            output,
            watch,
            rate,
            seconds: self.cli.latency_seconds,
            drain: Duration::from_secs(10) + self.cli.commit_interval * 10,
        }
    }

    /// At least `rate * latency_seconds` events for a latency run: the backlog when it is long
    /// enough, else a simulation of as many more customers as that takes (another seed).
    fn paced_events(&self, rate: f64) -> Result<Arc<Vec<u8>>> {
        let need = (rate * self.cli.latency_seconds).ceil() as u64;
        let have = self.total();
        if need <= have {
            return Ok(Arc::clone(&self.events));
        }
        let mut paced = self.paced.lock().map_err(|_| anyhow!("the latency input's lock"))?;
        if let Some((n, ev)) = &*paced {
            if *n >= need {
                return Ok(Arc::clone(ev));
            }
        }
        let scale = need.div_ceil(have.max(1));
        let t0 = Instant::now();
        let ev = Arc::new(simulate(self.cli.customers * scale, self.cli.seed + 1, Some(need))?);
        eprintln!("latency input: {need} events of {} customers simulated in {:.1} s", self.cli.customers * scale, t0.elapsed().as_secs_f64());
        *paced = Some((need, Arc::clone(&ev)));
        Ok(ev)
    }

    /// The transport's floor: the same paced input at the same rate through the passthrough
    /// (exactly-once, the processor's batching and commit interval), a purchase's own copy
    /// becoming visible to a read_committed consumer.
    fn latency_floor(&self, slug: &str, rate: f64, events: &[u8]) -> Result<latency::Latency> {
        let input = format!("{}.{slug}-floor.events", self.base);
        let output = format!("{}.{slug}-floor.out", self.base);
        kafka::create_topics(&self.cli.brokers, &[&input, &output], self.cli.partitions)?;
        let (stop, ready) = (AtomicBool::new(false), AtomicBool::new(false));
        let group = format!("{}.{slug}-floor.group", self.base);
        let result = std::thread::scope(|scope| {
            let copier = scope.spawn(|| {
                let r = passthrough::Passthrough {
                    brokers: &self.cli.brokers,
                    input: &input,
                    output: &output,
                    group: &group,
                    end: &[],
                    commit_interval: self.cli.commit_interval,
                    max_batch: self.cli.max_batch,
                    timeout: self.cli.timeout,
                    plain: false,
                    stop: Some(&stop),
                    ready: Some(&ready),
                }
                .run();
                ready.store(true, Ordering::Relaxed); // never wait on a copier that failed
                r
            });
            let assigned = Instant::now();
            while !ready.load(Ordering::Relaxed) && assigned.elapsed() < Duration::from_secs(180) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let paced = self.paced(&input, &output, latency::Watch::Copies, rate);
            let l = if copier.is_finished() { Err(anyhow!("the passthrough stopped before the paced input")) } else { paced.run(events) };
            stop.store(true, Ordering::Relaxed);
            let copied = copier.join().map_err(|_| anyhow!("the passthrough panicked"))?;
            copied.and(l)
        });
        self.cleanup(&[input, output]);
        result
    }
}

fn stamp() -> String {
    let ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
    format!("tsload-{}-{}", std::process::id(), ms % 1_000_000_000)
}

fn simulate(customers: u64, seed: u64, max_events: Option<u64>) -> Result<Vec<u8>> {
    let mut world = World::default_world();
    world.seed = seed;
    world.customers = customers;
    let model = Model::new(world).map_err(|e| anyhow!("the simulator's default world: {e}"))?;
    let mut events = Vec::new();
    let opts = Options { max_events, ..Options::default() };
    touchstream_sim::run::run(&model, &opts, Some(&mut events), None).context("simulate the backlog")?;
    Ok(events)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.replicas == 0 || cli.partitions <= 0 || cli.rounds == 0 {
        bail!("--replicas, --partitions and --rounds must be at least 1");
    }
    if cli.latency_fraction.is_nan() || cli.latency_fraction <= 0.0 {
        bail!("--latency-fraction must be above 0");
    }
    let modes: Vec<String> = cli.modes.split(',').map(str::trim).filter(|m| !m.is_empty()).map(str::to_string).collect();
    for m in modes.iter().filter(|m| !is_passthrough(m)) {
        processor::mode_settings(m)?;
    }
    let log_dir = cli.log_dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&log_dir)?;
    let t0 = Instant::now();
    let events = simulate(cli.customers, cli.seed, cli.events)?;
    let base = stamp();
    let input = format!("{base}.events");
    kafka::create_topics(&cli.brokers, &[&input], cli.partitions)?;
    let sent = kafka::load_backlog(&cli.brokers, &input, &events)?;
    let end = kafka::end_offsets(&cli.brokers, &input)?;
    eprintln!("backlog: {sent} events ({} MB) in {input} ({} partitions), {:.1} s", events.len() / 1_000_000, cli.partitions, t0.elapsed().as_secs_f64());
    let h = Harness { cli, base, input, end, events: Arc::new(events), paced: Mutex::new(None), log_dir };
    let mut runs: Vec<Run> = Vec::new();
    let result = (|| {
        if let Some(first) = modes.iter().find(|m| !is_passthrough(m)) {
            for w in 0..h.cli.warmup_runs {
                let r = h.processor(first, &format!("warmup{w}"))?;
                eprintln!("warm-up {w} ({first}): {:.0} events/s steady, not reported", r.steady_events_per_s);
            }
        }
        for round in 0..h.cli.rounds {
            let order: Vec<(usize, &String)> = if round % 2 == 1 { modes.iter().enumerate().rev().collect() } else { modes.iter().enumerate().collect() };
            for (i, mode) in order {
                let mut r = if is_passthrough(mode) {
                    let r = h.passthrough(mode, round)?;
                    eprintln!("{mode}: {:.0} events/s steady", r.steady_events_per_s);
                    r
                } else {
                    let repeated = modes[..i].contains(mode);
                    let slug = match (mode.contains('=') || repeated, round) {
                        (false, 0) => mode.replace('_', "-"),
                        _ => format!("r{round}-mode{i}"),
                    };
                    let mut r = h.processor(mode, &slug)?;
                    if h.cli.latency_seconds > 0.0 {
                        h.latency(mode, &slug, &mut r)?;
                    }
                    r
                };
                r.round = round;
                runs.push(r);
            }
        }
        Ok::<_, anyhow::Error>(())
    })();
    h.cleanup(std::slice::from_ref(&h.input));
    result?;
    let base_rates: Vec<(usize, f64)> = runs.iter().filter(|r| r.mode == "passthrough").map(|r| (r.round, r.steady_events_per_s)).collect();
    for r in &mut runs {
        r.ratio_to_passthrough = base_rates.iter().find(|(round, _)| *round == r.round).map(|(_, b)| r.steady_events_per_s / b);
    }
    let report = Report {
        machine: Machine::this(),
        brokers: h.cli.brokers.clone(),
        touchstream: h.cli.touchstream.display().to_string(),
        commit_interval_ms: h.cli.commit_interval.as_millis() as u64,
        latency_fraction: h.cli.latency_fraction,
        backlog: Backlog {
            topic: h.input.clone(),
            partitions: h.cli.partitions,
            seed: h.cli.seed,
            customers: h.cli.customers,
            events: h.total(),
            bytes: h.events.len() as u64,
        },
        bytes_method: "key + value bytes of every record, read back read_committed after the run".into(),
        runs,
    };
    let md = report.markdown();
    println!("{md}");
    if let Some(path) = &h.cli.out {
        write(path, &(serde_json::to_string_pretty(&report)? + "\n"))?;
        write(&path.with_extension("md"), &md)?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("100ms").unwrap(), Duration::from_millis(100));
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert!(parse_duration("1h").is_err());
    }
}
