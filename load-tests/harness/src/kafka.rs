//! Broker helpers: topics, the backlog, end and committed offsets, and reading topics back.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a future to completion on this thread. The admin client's futures are completed by
/// librdkafka's own threads, so no async runtime is needed.
pub fn block_on<F: Future>(f: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut f = std::pin::pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park_timeout(Duration::from_millis(50));
    }
}

fn admin(brokers: &str) -> Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new().set("bootstrap.servers", brokers).create().with_context(|| format!("admin client for {brokers}"))
}

/// Creates `names`, each with `partitions` partitions and one replica.
pub fn create_topics(brokers: &str, names: &[&str], partitions: i32) -> Result<()> {
    let topics: Vec<NewTopic<'_>> = names.iter().map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1))).collect();
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for r in block_on(admin(brokers)?.create_topics(&topics, &opts)).context("create topics")? {
        r.map_err(|(t, e)| anyhow!("create topic {t}: {e}"))?;
    }
    Ok(())
}

/// Deletes `names`; topics that do not exist are no error.
pub fn delete_topics(brokers: &str, names: &[&str]) -> Result<()> {
    let opts = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for r in block_on(admin(brokers)?.delete_topics(names, &opts)).context("delete topics")? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((t, e)) => return Err(anyhow!("delete topic {t}: {e}")),
        }
    }
    Ok(())
}

fn consumer(brokers: &str, group: &str) -> Result<BaseConsumer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("consumer")
}

/// The partition ids of `topic` (empty if it does not exist).
pub fn partitions(c: &BaseConsumer, topic: &str) -> Result<Vec<i32>> {
    let md = c.fetch_metadata(Some(topic), TIMEOUT).with_context(|| format!("metadata of {topic}"))?;
    let mut out: Vec<i32> = md.topics().iter().filter(|t| t.error().is_none()).flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    out.sort_unstable();
    Ok(out)
}

/// The end offset of every partition of `topic`, by partition id.
pub fn end_offsets(brokers: &str, topic: &str) -> Result<Vec<(i32, i64)>> {
    let c = consumer(brokers, "touchstream-load-offsets")?;
    partitions(&c, topic)?
        .into_iter()
        .map(|p| c.fetch_watermarks(topic, p, TIMEOUT).map(|(_, high)| (p, high)).with_context(|| format!("end offset of {topic}/{p}")))
        .collect()
}

/// Watches the offsets a consumer group has committed on one topic.
pub struct GroupWatch {
    consumer: BaseConsumer,
    topic: String,
    end: Vec<(i32, i64)>,
}

impl GroupWatch {
    pub fn new(brokers: &str, group: &str, topic: &str, end: &[(i32, i64)]) -> Result<GroupWatch> {
        Ok(GroupWatch { consumer: consumer(brokers, group)?, topic: topic.to_string(), end: end.to_vec() })
    }

    /// Committed offset per partition (-1 where none yet).
    pub fn committed(&self) -> Vec<i64> {
        let mut tpl = TopicPartitionList::new();
        for (p, _) in &self.end {
            tpl.add_partition(&self.topic, *p);
        }
        match self.consumer.committed_offsets(tpl, TIMEOUT) {
            Ok(got) => self
                .end
                .iter()
                .map(|(p, _)| match got.find_partition(&self.topic, *p).map(|e| e.offset()) {
                    Some(Offset::Offset(o)) => o,
                    _ => -1,
                })
                .collect(),
            Err(_) => vec![-1; self.end.len()],
        }
    }

    /// Records committed so far (the sum of the committed offsets) and whether every partition
    /// is committed up to its end (an empty partition has nothing to commit).
    pub fn progress(&self) -> (i64, bool) {
        let committed = self.committed();
        let total = committed.iter().map(|c| (*c).max(0)).sum();
        let done = committed.iter().zip(&self.end).all(|(c, (_, e))| *c >= *e || (*e == 0 && *c == -1));
        (total, done)
    }
}

/// What a topic holds, read back read_committed.
#[derive(Debug, Clone, Copy, Default)]
pub struct TopicSize {
    pub records: u64,
    /// Key + value bytes of every record (headers and the batch overhead not counted).
    pub bytes: u64,
}

/// Reads every committed record of `topic` from the beginning to the last stable offset.
/// A topic that does not exist is empty.
pub fn topic_size(brokers: &str, topic: &str, timeout: Duration) -> Result<TopicSize> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "touchstream-load-reader")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .context("reader")?;
    let parts = partitions(&c, topic)?;
    let mut size = TopicSize::default();
    if parts.is_empty() {
        return Ok(size);
    }
    let mut tpl = TopicPartitionList::new();
    for p in &parts {
        tpl.add_partition_offset(topic, *p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let (mut open, deadline) = (parts.len(), Instant::now() + timeout);
    while open > 0 {
        if Instant::now() > deadline {
            return Err(anyhow!("reading {topic} back took over {timeout:?} ({} records so far)", size.records));
        }
        match c.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                size.records += 1;
                size.bytes += (m.key().map_or(0, <[u8]>::len) + m.payload().map_or(0, <[u8]>::len)) as u64;
            }
            Some(Err(KafkaError::PartitionEOF(_))) => open -= 1,
            Some(Err(e)) => return Err(anyhow!("reading {topic}: {e}")),
            None => {}
        }
    }
    Ok(size)
}

/// Loads the JSON lines of `events` into `topic`, keyed by customer id (the simulator's sink).
pub fn load_backlog(brokers: &str, topic: &str, events: &[u8]) -> Result<u64> {
    use std::io::Write;
    let mut sink = touchstream_sim::kafka::KafkaSink::new(brokers, topic, None).map_err(|e| anyhow!(e))?;
    sink.write_all(events)?;
    sink.finish().map_err(|e| anyhow!(e))
}
