//! The output producer: sends records, tracks delivery failures, and flushes before a commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientConfig, ClientContext};

/// Errors of the output path. `retriable()` says whether trying again may help.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot create the producer: {0}")]
    Create(KafkaError),
    #[error("{count} output record(s) were not delivered; first error: {first}")]
    Delivery { count: u64, first: String },
    #[error("flushing outputs timed out after {0:?}")]
    FlushTimeout(Duration),
    #[error("producing to {topic} failed: {source}")]
    Send { topic: String, source: KafkaError },
}

impl SinkError {
    pub fn retriable(&self) -> bool {
        matches!(self, SinkError::FlushTimeout(_))
    }
}

#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, msg)) = result {
            use rdkafka::Message;
            self.failed.fetch_add(1, Ordering::Relaxed);
            let mut first = self.first_error.lock().expect("delivery lock");
            if first.is_none() {
                *first = Some(format!("{err} (topic {})", msg.topic()));
            }
        }
    }
}

/// A record to write.
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    pub payload: &'a [u8],
    pub headers: Option<OwnedHeaders>,
}

pub struct Sink {
    producer: BaseProducer<DeliveryTracker>,
    flush_timeout: Duration,
    /// Records sent since creation.
    pub sent: u64,
}

impl Sink {
    pub fn new(config: &ClientConfig, flush_timeout: Duration) -> Result<Sink, SinkError> {
        let producer = config.create_with_context(DeliveryTracker::default()).map_err(SinkError::Create)?;
        Ok(Sink { producer, flush_timeout, sent: 0 })
    }

    /// Queues a record; waits for room when librdkafka's queue is full.
    pub fn send(&mut self, rec: OutRecord<'_>) -> Result<(), SinkError> {
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(rec.topic).payload(rec.payload);
        if let Some(k) = rec.key {
            record = record.key(k);
        }
        if let Some(p) = rec.partition {
            record = record.partition(p);
        }
        if let Some(h) = rec.headers {
            record = record.headers(h);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent += 1;
                    return Ok(());
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(SinkError::Send { topic: rec.topic.to_string(), source: e }),
            }
        }
    }

    /// Serves delivery callbacks without blocking.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Waits until every queued record is delivered; fails if any delivery failed since the last flush.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.producer.flush(self.flush_timeout).map_err(|_| SinkError::FlushTimeout(self.flush_timeout))?;
        let ctx = self.producer.context();
        let count = ctx.failed.swap(0, Ordering::AcqRel);
        if count > 0 {
            let first = ctx.first_error.lock().expect("delivery lock").take().unwrap_or_default();
            return Err(SinkError::Delivery { count, first });
        }
        Ok(())
    }
}
