//! Event-to-output latency at a paced rate: the backlog's events are sent again, paced, into a
//! fresh input topic of fresh, ready replicas; each purchase's wall-clock send time is kept, and a
//! read_committed consumer of the conversions topic notes when each conversion becomes visible.
//! Latency = visible - sent, for the conversion whose `conversion_id` is the purchase's `event_id`.
//! The same paced input through the passthrough ([`Watch::Copies`]: the purchase's own copy
//! becoming visible) is the transport's floor at that rate: the latency of exactly-once batching
//! on this broker with nothing else to do.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

/// The shortest sleep of the paced sender: events due sooner go out at once.
const PACING_SLEEP_MIN: Duration = Duration::from_millis(1);

/// Latency of one paced run.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The paced input rate (events/s) and how long it was sent.
    pub rate: f64,
    pub events: u64,
    pub seconds: f64,
    pub purchases: u64,
    /// Purchases whose conversion was seen (the latencies are theirs).
    pub conversions_seen: u64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub max_ms: Option<f64>,
    /// Median latency of the last quarter of purchases (by send time) minus that of the first
    /// quarter: near zero when the replicas keep up with the rate, growing when they fall behind.
    pub trend_ms: Option<f64>,
    /// p50 and p99 of the purchases after the first quarter (by send time): the rate held once
    /// the fresh replicas warmed up (tract plans built on first use, the broker's JIT).
    pub steady_p50_ms: Option<f64>,
    pub steady_p99_ms: Option<f64>,
}

#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(borrow)]
    event_id: Cow<'a, str>,
    #[serde(borrow)]
    event_type: Cow<'a, str>,
}

#[derive(Deserialize)]
struct ConversionHead {
    conversion_id: String,
}

/// What the reader looks for in the watched topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// The processor's conversions: the `conversion_id` (the purchase's event id).
    Conversions,
    /// The passthrough's copies of the input: a purchase's `event_id`.
    Copies,
}

impl Watch {
    fn purchase_id(self, payload: &[u8]) -> Option<String> {
        match self {
            Watch::Conversions => serde_json::from_slice::<ConversionHead>(payload).ok().map(|c| c.conversion_id),
            Watch::Copies => serde_json::from_slice::<EventHead<'_>>(payload).ok().filter(|h| h.event_type == "purchase").map(|h| h.event_id.into_owned()),
        }
    }
}

/// The `customer_id` of one simulator line (written unescaped).
fn customer_id(line: &[u8]) -> &[u8] {
    const FIELD: &[u8] = b"\"customer_id\":\"";
    let Some(at) = line.windows(FIELD.len()).position(|w| w == FIELD).map(|i| i + FIELD.len()) else { return b"" };
    let end = line[at..].iter().position(|b| *b == b'"').map_or(line.len(), |i| at + i);
    &line[at..end]
}

/// Reads `topic` (read_committed) until `stop`, noting when each purchase's output (`watch`) was
/// first seen; `count` follows the number seen.
fn watch_outputs(brokers: &str, topic: &str, watch: Watch, stop: &AtomicBool, count: &AtomicUsize) -> Result<HashMap<String, Instant>> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "touchstream-load-latency")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        // answer fetches at once: the wait would count as latency
        .set("fetch.wait.max.ms", "5")
        .create()
        .context("conversions reader")?;
    let parts = crate::kafka::partitions(&c, topic)?;
    if parts.is_empty() {
        return Err(anyhow!("the watched topic {topic} does not exist"));
    }
    let mut tpl = TopicPartitionList::new();
    for p in parts {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    let mut seen = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        if let Some(Ok(m)) = c.poll(Duration::from_millis(20)) {
            let at = Instant::now();
            if let Some(id) = watch.purchase_id(m.payload().unwrap_or_default()) {
                seen.entry(id).or_insert(at);
                count.store(seen.len(), Ordering::Relaxed);
            }
        }
    }
    Ok(seen)
}

/// The `q` quantile (nearest rank) of sorted values.
pub fn quantile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

pub struct Paced<'a> {
    pub brokers: &'a str,
    pub input: &'a str,
    /// The topic watched for each purchase's output, and how.
    pub output: &'a str,
    pub watch: Watch,
    pub rate: f64,
    pub seconds: f64,
    /// After the last send, how long to wait for a conversion when none came.
    pub drain: Duration,
}

impl Paced<'_> {
    /// Sends the first `rate * seconds` lines of `events` (at most all of them) at `rate`.
    pub fn run(&self, events: &[u8]) -> Result<Latency> {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let watcher = {
            let (brokers, topic, watch, stop, count) = (self.brokers.to_string(), self.output.to_string(), self.watch, stop.clone(), count.clone());
            std::thread::spawn(move || watch_outputs(&brokers, &topic, watch, &stop, &count))
        };
        let sent = self.send(events);
        // Until a conversion was seen for every purchase (not every purchase need have one), or
        // nothing new came for `drain`.
        let wanted = sent.as_ref().map_or(0, |(_, p, _)| p.len());
        let (mut last, mut since) = (count.load(Ordering::Relaxed), Instant::now());
        while sent.is_ok() && !watcher.is_finished() && last < wanted && since.elapsed() < self.drain {
            std::thread::sleep(Duration::from_millis(50));
            let now = count.load(Ordering::Relaxed);
            if now != last {
                (last, since) = (now, Instant::now());
            }
        }
        stop.store(true, Ordering::Relaxed);
        let seen = watcher.join().map_err(|_| anyhow!("the conversions reader panicked"))??;
        let (n, purchases, seconds) = sent?;
        // in send order
        let in_order: Vec<f64> =
            purchases.iter().filter_map(|(id, at)| seen.get(id.as_str()).map(|v| v.saturating_duration_since(*at).as_secs_f64() * 1e3)).collect();
        let quarter = in_order.len() / 4;
        let median = |part: &[f64]| {
            let mut v = part.to_vec();
            v.sort_by(f64::total_cmp);
            quantile(&v, 0.5)
        };
        let trend_ms = if quarter > 0 { median(&in_order[in_order.len() - quarter..]).zip(median(&in_order[..quarter])).map(|(b, a)| b - a) } else { None };
        let mut steady = in_order[quarter..].to_vec();
        steady.sort_by(f64::total_cmp);
        let mut ms = in_order;
        ms.sort_by(f64::total_cmp);
        Ok(Latency {
            rate: self.rate,
            events: n,
            seconds,
            purchases: purchases.len() as u64,
            conversions_seen: ms.len() as u64,
            p50_ms: quantile(&ms, 0.5),
            p99_ms: quantile(&ms, 0.99),
            max_ms: ms.last().copied(),
            trend_ms,
            steady_p50_ms: quantile(&steady, 0.5),
            steady_p99_ms: quantile(&steady, 0.99),
        })
    }

    /// Sends paced; returns the events sent, each purchase's event id with its send time, and the
    /// seconds the sending took.
    #[allow(clippy::type_complexity)]
    fn send(&self, events: &[u8]) -> Result<(u64, Vec<(String, Instant)>, f64)> {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", self.brokers)
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .set("partitioner", "murmur2_random")
            .create()
            .context("paced producer")?;
        let limit = (self.rate * self.seconds).ceil().max(1.0) as u64;
        let (mut n, mut purchases) = (0u64, Vec::new());
        let start = Instant::now();
        for line in events.split(|b| *b == b'\n').filter(|l| !l.is_empty()).take(limit as usize) {
            // Sleep only once a millisecond or more is due: a sleep per event (tens of µs each)
            // made the sender a context switch per event, taking CPU from the processor on a
            // small machine; the events due within the millisecond go out together.
            let due = start + Duration::from_secs_f64(n as f64 / self.rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()).filter(|w| *w >= PACING_SLEEP_MIN) {
                std::thread::sleep(wait);
            }
            let head: EventHead<'_> = serde_json::from_slice(line).context("a simulator event")?;
            let mut rec: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(self.input).key(customer_id(line)).payload(line);
            let at = Instant::now();
            loop {
                match producer.send(rec) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        producer.poll(Duration::from_millis(1));
                        rec = r;
                    }
                    Err((e, _)) => return Err(anyhow!("paced send: {e}")),
                }
            }
            producer.poll(Duration::ZERO);
            if head.event_type == "purchase" {
                purchases.push((head.event_id.into_owned(), at));
            }
            n += 1;
        }
        let seconds = start.elapsed().as_secs_f64();
        producer.flush(Duration::from_secs(60))?;
        Ok((n, purchases, seconds))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), Some(50.0));
        assert_eq!(quantile(&v, 0.99), Some(99.0));
        assert_eq!(quantile(&[7.0], 0.99), Some(7.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn finds_each_outputs_purchase() {
        let purchase = br#"{"event_id":"c1-9","customer_id":"c1","event_type":"purchase","ts":1}"#;
        let view = br#"{"event_id":"c1-8","customer_id":"c1","event_type":"page_view","ts":1}"#;
        assert_eq!(Watch::Copies.purchase_id(purchase).as_deref(), Some("c1-9"));
        assert_eq!(Watch::Copies.purchase_id(view), None);
        assert_eq!(Watch::Conversions.purchase_id(br#"{"conversion_id":"c1-9","credits":[]}"#).as_deref(), Some("c1-9"));
        assert_eq!(Watch::Conversions.purchase_id(purchase), None);
    }

    #[test]
    fn finds_the_customer_id() {
        assert_eq!(customer_id(br#"{"event_id":"c1-2","customer_id":"c17","ts":1}"#), b"c17");
    }
}
