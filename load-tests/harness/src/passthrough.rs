//! The baseline: a plain exactly-once passthrough (consume -> produce, nothing else) with the
//! processor's batching: read_committed input, and a transaction with the input offsets
//! (send_offsets_to_transaction) committed every commit interval or every `max_batch` records,
//! whichever comes first. Producer and consumer settings follow processor/src/kafka/mod.rs (the
//! `plain` variant leaves librdkafka's fetch queue backoff at its default, 1 s, as a passthrough
//! written without tuning would, and as issue 13's baseline did). As in
//! the processor, a transaction commits on a thread of its own while the next records are read;
//! they are produced once it committed (records read meanwhile wait in memory).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use touchstream::kafka::sink::deliver_all;

use crate::Timing;

const TX_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Passthrough<'a> {
    pub brokers: &'a str,
    pub input: &'a str,
    pub output: &'a str,
    pub group: &'a str,
    pub end: &'a [(i32, i64)],
    pub commit_interval: Duration,
    pub max_batch: usize,
    pub timeout: Duration,
    /// librdkafka's default `fetch.queue.backoff.ms` instead of the processor's 10 ms.
    pub plain: bool,
    /// Without `end` (empty): runs until this is set (the latency run's transport floor).
    pub stop: Option<&'a AtomicBool>,
    /// Set once the consumer owns partitions.
    pub ready: Option<&'a AtomicBool>,
}

impl Passthrough<'_> {
    /// Copies the whole input to the output; times it from the clients' creation (`seconds`) and
    /// from the first commit (`steady_*`).
    pub fn run(&self) -> Result<Timing> {
        let started = Instant::now();
        // the harness's own CPU: the passthrough's clients are the only work it does meanwhile
        let (cpu0, busy0) = (crate::cpu::process_seconds(std::process::id()), crate::cpu::machine_busy_seconds());
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", self.brokers)
            .set("group.id", self.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("partition.assignment.strategy", "cooperative-sticky");
        if !self.plain {
            config.set("fetch.queue.backoff.ms", "10"); // as the processor's consumer
        }
        let consumer: BaseConsumer = config.create().context("passthrough consumer")?;
        consumer.subscribe(&[self.input])?;
        let producer: Arc<BaseProducer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", self.brokers)
                .set("partitioner", "murmur2_random")
                .set("enable.idempotence", "true")
                .set("linger.ms", "5")
                .set("delivery.report.only.error", "true") // as the processor's producer
                .set("transactional.id", format!("{}-tx", self.group))
                .set("transaction.timeout.ms", "10000")
                .create()
                .context("passthrough producer")?,
        );
        producer.init_transactions(TX_TIMEOUT)?;
        producer.begin_transaction()?;

        let end: BTreeMap<i32, i64> = self.end.iter().copied().collect();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let (mut pending, mut last_commit) = (0usize, Instant::now());
        let mut first: Option<(Instant, i64)> = None;
        let mut committing: Option<(JoinHandle<Result<()>>, i64, bool)> = None;
        // records read while a transaction commits: (key, payload)
        let mut waiting: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
        let deadline = started + self.timeout;
        loop {
            if let Some(ready) = self.ready.filter(|r| !r.load(Ordering::Relaxed)) {
                if consumer.assignment().is_ok_and(|a| a.count() > 0) {
                    ready.store(true, Ordering::Relaxed);
                }
            }
            if self.stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
                break;
            }
            match consumer.poll(Duration::from_millis(10)) {
                Some(Ok(m)) => {
                    if committing.is_some() {
                        waiting.push((m.key().map(<[u8]>::to_vec), m.payload().unwrap_or_default().to_vec()));
                    } else {
                        send(&producer, self.output, m.key(), m.payload().unwrap_or_default())?;
                    }
                    next.insert(m.partition(), m.offset() + 1);
                    pending += 1;
                }
                // a topic created a moment ago may be unknown to the consumer's first metadata
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::UnknownTopicOrPartition))) => {}
                Some(Err(e)) => bail!("passthrough consume: {e}"),
                None => {}
            }
            let due = pending > 0 && (pending >= self.max_batch || last_commit.elapsed() >= self.commit_interval);
            if committing.as_ref().is_some_and(|(h, _, _)| h.is_finished()) || (due && committing.is_some()) {
                let (handle, committed, done) = committing.take().expect("a commit on its way");
                handle.join().map_err(|_| anyhow!("the commit thread panicked"))??;
                first.get_or_insert((Instant::now(), committed));
                if done {
                    break;
                }
                producer.begin_transaction()?;
                for (k, v) in waiting.drain(..) {
                    send(&producer, self.output, k.as_deref(), &v)?;
                }
            }
            if due && committing.is_none() {
                let mut tpl = TopicPartitionList::new();
                for (p, o) in &next {
                    tpl.add_partition_offset(self.input, *p, Offset::Offset(*o))?;
                }
                let meta = consumer.group_metadata().ok_or_else(|| anyhow!("no group metadata"))?;
                let p = Arc::clone(&producer);
                let handle = std::thread::spawn(move || -> Result<()> {
                    p.send_offsets_to_transaction(&tpl, &meta, TX_TIMEOUT)?;
                    deliver_all(&p, TX_TIMEOUT).map_err(|e| anyhow!("passthrough flush: {e}"))?;
                    p.commit_transaction(TX_TIMEOUT)?;
                    Ok(())
                });
                let done = !end.is_empty() && end.iter().all(|(p, e)| next.get(p).copied().unwrap_or(0) >= *e);
                committing = Some((handle, next.values().sum(), done));
                pending = 0;
                last_commit = Instant::now();
            }
            if Instant::now() > deadline {
                bail!("the passthrough did not finish within {:?}", self.timeout);
            }
        }
        let done = Instant::now();
        if let Some((handle, _, _)) = committing.take() {
            // stopped with a commit on its way
            handle.join().map_err(|_| anyhow!("the commit thread panicked"))??;
        }
        producer.abort_transaction(TX_TIMEOUT).ok();
        let total: i64 = end.values().sum();
        let (t1, c1) = first.unwrap_or((started, 0));
        let since = |now: Option<f64>, then: Option<f64>| now.zip(then).map(|(b, a)| b - a);
        Ok(Timing {
            seconds: (done - started).as_secs_f64(),
            steady_seconds: (done - t1).as_secs_f64(),
            steady_events: (total - c1).max(0) as u64,
            cpu_seconds: since(crate::cpu::process_seconds(std::process::id()), cpu0),
            machine_cpu_seconds: since(crate::cpu::machine_busy_seconds(), busy0),
        })
    }
}

/// Queues one record, waiting for room when the queue is full.
fn send(producer: &BaseProducer, topic: &str, key: Option<&[u8]>, payload: &[u8]) -> Result<()> {
    let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic).payload(payload);
    if let Some(k) = key {
        rec = rec.key(k);
    }
    loop {
        match producer.send(rec) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                producer.poll(Duration::from_millis(5));
                rec = r;
            }
            Err((e, _)) => bail!("passthrough send: {e}"),
        }
    }
}
