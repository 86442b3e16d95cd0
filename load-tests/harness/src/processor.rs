//! Running `touchstream run` replicas of one consumer group (as tests/common/mod.rs starts them),
//! reading their Prometheus metrics, and stopping them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// The output topics the processor writes, by their `topics.*` config key.
pub const OUTPUT_KEYS: [&str; 9] = ["conversions", "channels", "alerts", "dlq", "channel_partials", "changelog", "scores", "erasure", "erasure_audit"];

/// The settings (`--set key=value`) of a mode: the named ones of issue 13, or a mode written as
/// settings itself, `key=value[+key=value...]`.
pub fn mode_settings(mode: &str) -> Result<Vec<String>> {
    Ok(match mode {
        "defaults" => vec![],
        "models_off" => vec!["models.enabled=false".into()],
        "at_least_once" => vec!["kafka.guarantee=at_least_once".into()],
        // defaults plus candidate models scored in shadow (the shipped ones again: the same cost
        // as any candidate of the same architecture)
        "shadow" => vec![format!("models.candidate={}", concat!(env!("CARGO_MANIFEST_DIR"), "/../../models"))],
        m if m.contains('=') => m.split('+').map(str::to_string).collect(),
        m => bail!("unknown mode {m:?}: passthrough, defaults, models_off, at_least_once, shadow, or settings such as processing.commit_interval=1s"),
    })
}

/// A setting as the report shows it: paths inside this checkout relative to its root, so that a
/// report names no folder of the machine it ran on.
pub fn reported_setting(setting: &str) -> String {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../../");
    setting.replace(root, "")
}

/// The topic names and group of one processor run.
#[derive(Debug, Clone)]
pub struct RunTopics {
    pub events: String,
    pub group: String,
    pub prefix: String,
}

impl RunTopics {
    pub fn new(events: &str, prefix: &str) -> RunTopics {
        RunTopics { events: events.to_string(), group: format!("{prefix}.group"), prefix: prefix.to_string() }
    }

    pub fn output(&self, key: &str) -> String {
        format!("{}.{}", self.prefix, key.replace('_', "-"))
    }

    pub fn outputs(&self) -> Vec<String> {
        OUTPUT_KEYS.iter().map(|k| self.output(k)).collect()
    }
}

/// What every replica of a run gets.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub brokers: &'a str,
    pub partitions: i32,
    pub replicas: usize,
    /// The mode's settings and the harness's extra `--set`s.
    pub settings: Vec<String>,
    pub log_dir: &'a Path,
}

/// Running replicas; killed on drop if not stopped.
pub struct Replicas {
    children: Vec<Child>,
    ports: Vec<u16>,
    pub logs: Vec<PathBuf>,
    pub spawned: Instant,
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Launch<'_> {
    pub fn start(&self, topics: &RunTopics) -> Result<Replicas> {
        if !self.binary.exists() {
            bail!("{} does not exist: build it (cargo build --release -p touchstream) or pass --touchstream", self.binary.display());
        }
        let mut r = Replicas { children: Vec::new(), ports: Vec::new(), logs: Vec::new(), spawned: Instant::now() };
        for i in 0..self.replicas {
            let port = free_port()?;
            let mut sets = vec![
                format!("kafka.brokers={}", self.brokers),
                format!("kafka.group_id={}", topics.group),
                format!("kafka.transactional_id={}-{i}", topics.group),
                format!("topics.events={}", topics.events),
                format!("topics.partitions={}", self.partitions),
                "http.enabled=true".into(),
                format!("http.listen=127.0.0.1:{port}"),
            ];
            sets.extend(OUTPUT_KEYS.iter().map(|k| format!("topics.{k}={}", topics.output(k))));
            sets.extend(self.settings.iter().cloned());
            let log = self.log_dir.join(format!("{}-{i}.log", topics.prefix));
            let file = std::fs::File::create(&log).with_context(|| format!("log file {}", log.display()))?;
            let mut cmd = Command::new(self.binary);
            cmd.arg("run").env("RUST_LOG", std::env::var("TOUCHSTREAM_LOAD_LOG").unwrap_or_else(|_| "warn".into()));
            for s in &sets {
                cmd.arg("--set").arg(s);
            }
            cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::from(file));
            r.children.push(cmd.spawn().with_context(|| format!("start {}", self.binary.display()))?);
            r.ports.push(port);
            r.logs.push(log);
        }
        Ok(r)
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// One metric from a Prometheus text page: the sum over its label sets, None if absent.
pub fn parse_metric(page: &str, name: &str) -> Option<f64> {
    let values: Vec<f64> = page
        .lines()
        .filter(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{')))
        .filter_map(|l| l.split_whitespace().last()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

fn scrape(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_string())
}

impl Replicas {
    /// Fails with the end of its log if a replica has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for (child, log) in self.children.iter_mut().zip(&self.logs) {
            if let Some(status) = child.try_wait()? {
                bail!("touchstream exited early ({status}); end of {}:\n{}", log.display(), tail(log, 30));
            }
        }
        Ok(())
    }

    /// Each metric summed over the replicas (None unless every replica serves it).
    pub fn metrics(&self, names: &[&str]) -> Vec<Option<f64>> {
        let pages: Vec<Option<String>> = self.ports.iter().map(|p| scrape(*p)).collect();
        names.iter().map(|n| pages.iter().map(|p| p.as_deref().and_then(|p| parse_metric(p, n))).sum()).collect()
    }

    /// Waits until the replicas together own every input partition (their state restored).
    pub fn wait_assigned(&mut self, partitions: i32, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if self.metrics(&["touchstream_assigned_partitions"])[0].is_some_and(|n| n >= f64::from(partitions)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the replicas did not own all {partitions} input partitions within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM every replica, then waits for them to exit (SIGKILL after 60 s). Each replica's
    /// last metrics page is kept beside its log (`.metrics`): where the run's time went.
    /// The replicas' process ids.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    pub fn stop(mut self) -> Result<()> {
        for (port, log) in self.ports.iter().zip(&self.logs) {
            if let Some(page) = scrape(*port) {
                let _ = std::fs::write(log.with_extension("metrics"), page);
            }
        }
        for c in &self.children {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        for c in &mut self.children {
            loop {
                if c.try_wait()?.is_some() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    eprintln!("touchstream {} did not stop within 60 s of SIGTERM; killed", c.id());
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        self.children.clear();
        Ok(())
    }
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let page = "# TYPE touchstream_customers gauge\ntouchstream_customers 12\ntouchstream_customers_x 5\n\
                    touchstream_consumer_lag{partition=\"0\"} 3\ntouchstream_consumer_lag{partition=\"1\"} 4\n";
        assert_eq!(parse_metric(page, "touchstream_customers"), Some(12.0));
        assert_eq!(parse_metric(page, "touchstream_consumer_lag"), Some(7.0));
        assert_eq!(parse_metric(page, "touchstream_state_bytes"), None);
    }

    #[test]
    fn modes_are_settings() {
        assert!(mode_settings("defaults").unwrap().is_empty());
        assert_eq!(mode_settings("models_off").unwrap(), ["models.enabled=false"]);
        assert_eq!(mode_settings("a.b=1+c.d=x").unwrap(), ["a.b=1", "c.d=x"]);
        assert!(mode_settings("shadow").unwrap()[0].starts_with("models.candidate="));
        assert_eq!(reported_setting(&mode_settings("shadow").unwrap()[0]), "models.candidate=models");
        assert!(mode_settings("nope").is_err());
    }
}
