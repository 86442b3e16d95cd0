//! Whether a processor has caught up with its input and, when it has not, why. A CI log keeps only
//! the start of a long failure message: the facts come first (the process, the group's committed
//! offsets against the ends of the events topic), then the end of the processor's log, where an
//! error or a panic is.

use std::fmt;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{brokers, end_offsets, Processor, Topics};

/// Committed offsets of `group` on `topic` (-1 where none), or why they could not be read.
pub fn try_committed_offsets(group: &str, topic: &str, partitions: &[i32]) -> Result<Vec<(i32, i64)>, String> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", group)
        .set("isolation.level", "read_committed")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    for p in partitions {
        tpl.add_partition(topic, *p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).map_err(|e| e.to_string())?;
    Ok(got.elements().iter().map(|e| (e.partition(), if let Offset::Offset(o) = e.offset() { o } else { -1 })).collect())
}

/// A group's committed offsets on the events topic against the topic's ends.
pub struct Progress {
    end: Vec<(i32, i64)>,
    committed: Result<Vec<(i32, i64)>, String>,
}

impl Progress {
    /// The ends of the events topic, read once; [`Self::refresh`] reads the committed offsets.
    pub fn new(topics: &Topics) -> Progress {
        Progress { end: end_offsets(&topics.events), committed: Err("not read yet".into()) }
    }

    pub fn refresh(&mut self, topics: &Topics) -> &mut Self {
        let parts: Vec<i32> = self.end.iter().map(|(p, _)| *p).collect();
        self.committed = try_committed_offsets(&topics.group, &topics.events, &parts);
        self
    }

    /// Every partition's end committed (an empty partition has nothing to commit).
    pub fn caught_up(&self) -> bool {
        self.committed.as_ref().is_ok_and(|c| c.iter().zip(&self.end).all(|((_, c), (_, e))| c == e || (*e == 0 && *c == -1)))
    }
}

impl fmt::Display for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.committed {
            Ok(committed) => {
                let parts: Vec<String> = committed.iter().zip(&self.end).map(|((p, c), (_, e))| format!("p{p} {c}/{e}")).collect();
                write!(f, "committed/end {}", parts.join(", "))
            }
            Err(e) => write!(f, "committed offsets not read ({e}); ends {:?}", self.end),
        }
    }
}

/// Polls `topics.group`'s committed offsets until they reach the ends of the events topic: Err
/// with why not (what `stopped` says, or the timeout) and the last offsets read.
fn poll_caught_up(topics: &Topics, timeout: Duration, mut stopped: impl FnMut() -> Option<String>) -> Result<(), String> {
    let mut progress = Progress::new(topics);
    let started = Instant::now();
    loop {
        if progress.refresh(topics).caught_up() {
            return Ok(());
        }
        let why = stopped().or_else(|| (started.elapsed() >= timeout).then(|| format!("running, not caught up after {} s", timeout.as_secs())));
        if let Some(why) = why {
            return Err(format!("{why}; {progress}"));
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Waits until `topics.group` has committed the end of every partition of the events topic.
pub fn wait_caught_up(topics: &Topics, timeout: Duration) -> bool {
    poll_caught_up(topics, timeout, || None).is_ok()
}

impl Processor {
    /// Waits until this processor's group has committed the end of every events partition. Err,
    /// as soon as the process exits or when the timeout passes: what it was doing, as above.
    pub fn wait_caught_up(&mut self, topics: &Topics, timeout: Duration) -> Result<(), String> {
        let child = &mut self.child;
        let waited = poll_caught_up(topics, timeout, || child.try_wait().ok().flatten().map(|status| format!("exited ({status})")));
        waited.map_err(|why| format!("{why}; the last lines of its log:\n{}", self.log_tail(30)))
    }

    /// Panics, saying `what` and why, unless this processor catches up within `timeout`.
    pub fn assert_caught_up(&mut self, topics: &Topics, timeout: Duration, what: &str) {
        if let Err(why) = self.wait_caught_up(topics, timeout) {
            panic!("{what} ({}): the processor did not catch up: {why}", topics.group);
        }
    }

    /// The last `lines` lines of the log, each cut to 400 characters.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = self.log();
        let all: Vec<&str> = log.lines().collect();
        let cut = |l: &str| match l.char_indices().nth(400) {
            Some((at, _)) => format!("{}…", &l[..at]),
            None => l.to_string(),
        };
        all[all.len().saturating_sub(lines)..].iter().map(|l| cut(l)).collect::<Vec<_>>().join("\n")
    }
}
