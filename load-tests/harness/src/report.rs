//! The report: JSON (every number) and a markdown table (the ones a platform team sizes with).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::latency::Latency;

/// Output topics in the report's order, by `topics.*` key.
pub const REPORTED_TOPICS: [&str; 7] = ["conversions", "alerts", "channels", "channel_partials", "changelog", "scores", "dlq"];

#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_gb: f64,
}

impl Machine {
    pub fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map_or("", |(_, v)| v.trim()).to_string();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kb: f64 = meminfo.lines().find(|l| l.starts_with("MemTotal:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()).unwrap_or(0.0);
        Machine { cores: std::thread::available_parallelism().map_or(0, |n| n.get()), cpu, memory_gb: (kb / 1024.0 / 1024.0 * 10.0).round() / 10.0 }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Backlog {
    pub topic: String,
    pub partitions: i32,
    pub seed: u64,
    pub customers: u64,
    pub events: u64,
    pub bytes: u64,
}

/// Bytes one run wrote to one topic.
#[derive(Debug, Clone, Serialize)]
pub struct TopicBytes {
    pub records: u64,
    pub bytes: u64,
    pub bytes_per_event: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub mode: String,
    /// The `--set`s of the mode (none for the passthrough and the defaults).
    pub settings: Vec<String>,
    pub replicas: usize,
    pub events: u64,
    /// From the start (process spawn; the passthrough's client creation) until the group's
    /// committed offsets reach the input's end offsets.
    pub seconds: f64,
    pub events_per_s: f64,
    /// From the first commit to the last: the start (models, topics, group join) left out.
    pub steady_seconds: f64,
    pub steady_events: u64,
    pub steady_events_per_s: f64,
    /// CPU seconds of the measured process(es) (the replicas; for a passthrough, the harness)
    /// from start to caught up, and of the whole machine (all cores busy) over the same time.
    pub cpu_seconds: Option<f64>,
    pub machine_cpu_seconds: Option<f64>,
    /// Which pass over the modes (`--rounds`), from 0.
    pub round: usize,
    /// steady_events_per_s over the passthrough's (of the same round).
    pub ratio_to_passthrough: Option<f64>,
    /// Key + value bytes of every record read back read_committed, by `topics.*` key.
    pub topics: BTreeMap<String, TopicBytes>,
    /// Summed over the replicas, read from their /metrics when caught up.
    pub resident_bytes: Option<f64>,
    pub customers: Option<f64>,
    pub resident_bytes_per_customer: Option<f64>,
    /// The processor's own estimate of its state (`touchstream_state_bytes`) per customer.
    pub state_bytes_per_customer: Option<f64>,
    /// RSS of fresh, idle replicas that own their partitions (before the latency run's input),
    /// and (RSS - that) per customer.
    pub idle_resident_bytes: Option<f64>,
    pub added_resident_bytes_per_customer: Option<f64>,
    pub latency: Option<Latency>,
    /// The same paced input at the same rate through the passthrough: the transport's floor.
    pub latency_floor: Option<Latency>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub machine: Machine,
    pub brokers: String,
    pub touchstream: String,
    pub commit_interval_ms: u64,
    pub latency_fraction: f64,
    pub backlog: Backlog,
    pub bytes_method: String,
    pub runs: Vec<Run>,
}

fn num(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 100.0 {
        let s = format!("{v:.0}");
        // thousands separators
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), num)
}

fn bytes(v: Option<f64>) -> String {
    match v {
        Some(b) if b >= 1e6 => format!("{:.0} MB", b / 1e6),
        Some(b) if b >= 1e4 => format!("{:.1} KB", b / 1e3),
        Some(b) => format!("{b:.0} B"),
        None => "-".into(),
    }
}

/// The median (the mean of the middle two for an even count); NaN for none.
pub fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Report {
    /// Each mode once, in first-run order, with its steady rates and ratios over the rounds.
    fn by_mode(&self) -> Vec<(&str, Vec<f64>, Vec<f64>)> {
        let mut out: Vec<(&str, Vec<f64>, Vec<f64>)> = Vec::new();
        for r in &self.runs {
            let i = match out.iter().position(|(m, _, _)| *m == r.mode) {
                Some(i) => i,
                None => {
                    out.push((&r.mode, Vec::new(), Vec::new()));
                    out.len() - 1
                }
            };
            out[i].1.push(r.steady_events_per_s);
            out[i].2.extend(r.ratio_to_passthrough);
        }
        out
    }

    /// The report as markdown: the setup, then throughput, bytes and memory, latency.
    pub fn markdown(&self) -> String {
        let b = &self.backlog;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "Backlog: {} events ({:.0} B each) of {} simulated customers (seed {}), {} input partitions; commit interval {} ms; \
             machine: {} cores, {}, {} GB.\n",
            num(b.events as f64),
            b.bytes as f64 / b.events.max(1) as f64,
            num(b.customers as f64),
            b.seed,
            b.partitions,
            self.commit_interval_ms,
            self.machine.cores,
            self.machine.cpu,
            self.machine.memory_gb
        );
        let rounds = self.runs.iter().map(|r| r.round + 1).max().unwrap_or(1);
        s += "| run | round | replicas | events/s (steady) | x passthrough | events/s (from start) | seconds (from start) | process CPU µs/event | rest of machine CPU µs/event |\n";
        s += "|---|---|---|---|---|---|---|---|---|\n";
        for r in &self.runs {
            let per_event = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.1}", v * 1e6 / r.events.max(1) as f64));
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
                r.mode,
                r.round + 1,
                r.replicas,
                num(r.steady_events_per_s),
                r.ratio_to_passthrough.map_or("-".into(), |x| format!("{x:.3}")),
                num(r.events_per_s),
                r.seconds,
                per_event(r.cpu_seconds),
                per_event(r.machine_cpu_seconds.zip(r.cpu_seconds).map(|(m, c)| (m - c).max(0.0)))
            );
        }
        if rounds > 1 {
            let _ = writeln!(s, "\nMedians over {rounds} rounds (every other round in reverse order, so that no mode always runs later in the sitting):\n");
            s += "| run | events/s (steady), median | min | max | x passthrough, median |\n|---|---|---|---|---|\n";
            for (mode, rates, ratios) in self.by_mode() {
                let _ = writeln!(
                    s,
                    "| {mode} | {} | {} | {} | {} |",
                    num(median(&rates)),
                    num(rates.iter().copied().fold(f64::INFINITY, f64::min)),
                    num(rates.iter().copied().fold(0.0, f64::max)),
                    if ratios.is_empty() { "-".into() } else { format!("{:.3}", median(&ratios)) }
                );
            }
        }
        let _ = writeln!(s, "\nBytes written per input event ({}); memory when caught up:\n", self.bytes_method);
        s += "| run | conversions | alerts | channels | partials | changelog | scores | dlq | RSS | customers | RSS/customer | state/customer | idle RSS | (RSS - idle)/customer |\n";
        s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
        for r in self.runs.iter().filter(|r| !crate::is_passthrough(&r.mode)) {
            let _ = write!(s, "| {} |", r.mode);
            for t in REPORTED_TOPICS {
                let _ = write!(s, " {} |", r.topics.get(t).map_or("-".into(), |t| num(t.bytes_per_event)));
            }
            let _ = writeln!(
                s,
                " {} | {} | {} | {} | {} | {} |",
                bytes(r.resident_bytes),
                opt(r.customers),
                bytes(r.resident_bytes_per_customer),
                bytes(r.state_bytes_per_customer),
                bytes(r.idle_resident_bytes),
                bytes(r.added_resident_bytes_per_customer)
            );
        }
        if self.runs.iter().any(|r| r.latency.is_some()) {
            let _ = writeln!(
                s,
                "\nEvent-to-output latency at {:.0}% of each run's steady rate, fresh replicas (purchase sent -> its conversion visible to a read_committed consumer):\n",
                self.latency_fraction * 100.0
            );
            s += "| run | rate (events/s) | seconds | purchases | conversions seen | p50 ms | p99 ms | max ms | trend ms (last - first quarter) | after the first quarter: p50 ms | p99 ms | passthrough at that rate: p50 ms | p99 ms | after the first quarter: p99 ms |\n";
            s += "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
            for r in &self.runs {
                if let Some(l) = &r.latency {
                    let _ = writeln!(
                        s,
                        "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                        r.mode,
                        num(l.rate),
                        l.seconds,
                        l.purchases,
                        l.conversions_seen,
                        opt(l.p50_ms),
                        opt(l.p99_ms),
                        opt(l.max_ms),
                        l.trend_ms.map_or("-".into(), |t| format!("{t:+.0}")),
                        opt(l.steady_p50_ms),
                        opt(l.steady_p99_ms),
                        opt(r.latency_floor.as_ref().and_then(|f| f.p50_ms)),
                        opt(r.latency_floor.as_ref().and_then(|f| f.p99_ms)),
                        opt(r.latency_floor.as_ref().and_then(|f| f.steady_p99_ms))
                    );
                }
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{median, num};

    #[test]
    fn medians() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(num(134_800.4), "134,800");
        assert_eq!(num(999.0), "999");
        assert_eq!(num(1000.0), "1,000");
        assert_eq!(num(12.34), "12.3");
        assert_eq!(num(0.5), "0.50");
        assert_eq!(num(f64::NAN), "-");
    }
}
