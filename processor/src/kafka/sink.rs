//! The output producer: sends records, tracks delivery failures, and either flushes before an
//! offset commit (at-least-once) or runs one Kafka transaction per batch holding the outputs, the
//! state changelog and the consumed offsets (exactly-once). Its blocking librdkafka calls run on
//! the runner's own thread, never on the async runtime. Transaction errors are classified:
//! retry, abort (then rewind), or fatal (fenced by a newer instance, or a broken producer).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::ConsumerGroupMetadata;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext, PurgeConfig};
use rdkafka::TopicPartitionList;
use rdkafka::{ClientConfig, ClientContext};

/// Errors of the output path; `class()` says what to do about a transactional one.
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
    #[error("transaction {op} failed ({class:?}): {source}")]
    Transaction { op: &'static str, class: TxnClass, source: KafkaError },
    #[error("a record for {topic} is larger than the producer accepts: {source}")]
    TooLarge { topic: String, source: KafkaError },
    #[error("the commit thread failed: {0}")]
    CommitThread(String),
}

/// What to do about a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnClass {
    /// Call again.
    Retry,
    /// Abort the transaction, rewind to the last commit and redo.
    Abort,
    /// Another instance with the same transactional.id took over: this one must stop.
    Fenced,
    /// The producer cannot go on.
    Fatal,
}

impl SinkError {
    /// The transactional class of the error, if it came from a transactional call.
    pub fn class(&self) -> Option<TxnClass> {
        match self {
            SinkError::Transaction { class, .. } => Some(*class),
            // Nothing was queued: redo the batch (and isolate the record that caused it).
            SinkError::TooLarge { .. } => Some(TxnClass::Abort),
            _ => None,
        }
    }
}

/// Classifies a transactional error as librdkafka reports it.
pub fn classify(err: &KafkaError) -> TxnClass {
    let fenced = |code: RDKafkaErrorCode| matches!(code, RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch);
    match err {
        KafkaError::Transaction(e) if fenced(e.code()) => TxnClass::Fenced,
        KafkaError::Transaction(e) if e.is_fatal() => TxnClass::Fatal,
        KafkaError::Transaction(e) if e.txn_requires_abort() => TxnClass::Abort,
        KafkaError::Transaction(e) if e.is_retriable() => TxnClass::Retry,
        KafkaError::Transaction(_) => TxnClass::Abort,
        other => match other.rdkafka_error_code() {
            Some(code) if fenced(code) => TxnClass::Fenced,
            _ => TxnClass::Abort,
        },
    }
}

#[derive(Default)]
pub struct DeliveryTracker {
    failed: AtomicU64,
    /// A record was refused for its size (by the client or the broker).
    too_large: AtomicBool,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for DeliveryTracker {}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, msg)) = result {
            use rdkafka::Message;
            self.failed.fetch_add(1, Ordering::Relaxed);
            if is_size(err) {
                self.too_large.store(true, Ordering::Release);
            }
            let mut first = self.first_error.lock().expect("delivery lock");
            if first.is_none() {
                *first = Some(format!("{err} (topic {})", msg.topic()));
            }
        }
    }
}

/// Runs a transactional call, again while librdkafka says it is retriable (at most 5 times).
fn retry(op: &'static str, mut call: impl FnMut() -> Result<(), KafkaError>) -> Result<(), SinkError> {
    let mut attempts = 0;
    loop {
        match call() {
            Ok(()) => return Ok(()),
            Err(e) if classify(&e) == TxnClass::Retry && attempts < 5 => attempts += 1,
            Err(e) => return Err(SinkError::Transaction { op, class: classify(&e), source: e }),
        }
    }
}

/// Bytes a record batch adds around one record (batch and record headers).
pub(crate) const RECORD_OVERHEAD: usize = 128;

/// A record to write.
pub struct OutRecord<'a> {
    pub topic: &'a str,
    pub partition: Option<i32>,
    pub key: Option<&'a [u8]>,
    /// None writes a null value (a tombstone on compacted topics).
    pub payload: Option<&'a [u8]>,
    pub headers: Option<OwnedHeaders>,
}

pub struct Sink {
    producer: Arc<BaseProducer<DeliveryTracker>>,
    flush_timeout: Duration,
    transactional: bool,
    /// A transaction is open: begun, or committing (until `finish_commit` says it committed).
    in_transaction: bool,
    /// The commit of the open transaction, on a thread of its own (`start_commit`).
    committing: Option<JoinHandle<(Result<(), SinkError>, Duration)>>,
    /// Largest record per topic the broker accepts; larger ones are refused before sending.
    limits: HashMap<String, usize>,
}

impl Sink {
    /// A plain (idempotent) producer for at-least-once delivery.
    pub fn new(config: &ClientConfig, flush_timeout: Duration) -> Result<Sink, SinkError> {
        let producer = Arc::new(config.create_with_context(DeliveryTracker::default()).map_err(SinkError::Create)?);
        Ok(Sink { producer, flush_timeout, transactional: false, in_transaction: false, committing: None, limits: HashMap::new() })
    }

    /// A transactional producer: `config` must carry `transactional.id`. Initialising fences any
    /// older instance with the same id and aborts its open transaction.
    pub fn transactional(config: &ClientConfig, timeout: Duration) -> Result<Sink, SinkError> {
        let producer: BaseProducer<DeliveryTracker> = config.create_with_context(DeliveryTracker::default()).map_err(SinkError::Create)?;
        retry("init", || producer.init_transactions(timeout))?;
        Ok(Sink { producer: Arc::new(producer), flush_timeout: timeout, transactional: true, in_transaction: false, committing: None, limits: HashMap::new() })
    }

    /// Test-only fault injection: raises a fatal error inside librdkafka, as a broken producer would.
    pub fn inject_fatal_error(&self) {
        use std::ffi::CString;
        let reason = CString::new("fault injection").expect("no NUL");
        // SAFETY: the client pointer is valid for the producer's lifetime; librdkafka copies the reason.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                self.producer.client().native_ptr(),
                rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// The largest record per topic (`kafka::admin::record_limits`).
    pub fn set_limits(&mut self, limits: HashMap<String, usize>) {
        self.limits = limits;
    }

    pub fn is_transactional(&self) -> bool {
        self.transactional
    }

    /// Whether a transaction is open (always false for a plain producer).
    pub fn in_transaction(&self) -> bool {
        self.in_transaction
    }

    fn refine(&self, e: SinkError) -> SinkError {
        refine(&self.producer, e)
    }

    /// Whether the producer's fatal error (if any) says that this instance was fenced.
    pub fn is_fenced(&self) -> bool {
        self.producer.client().fatal_error().is_some_and(|(code, _)| is_fence(code))
    }

    fn ensure_transaction(&mut self) -> Result<(), SinkError> {
        if self.transactional && !self.in_transaction {
            let begun = self.producer.begin_transaction().map_err(|e| SinkError::Transaction { op: "begin", class: classify(&e), source: e });
            begun.map_err(|e| self.refine(e))?;
            self.in_transaction = true;
        }
        Ok(())
    }

    /// Starts committing the open transaction together with the consumer offsets `offsets` of
    /// `group` (retriable failures retried; an error means abort, or stop if fenced/fatal) on a
    /// thread of its own and returns at once: the caller may go on reading and computing, but
    /// must send nothing until `finish_commit` has returned (the next transaction begins only
    /// after this one committed). `delay` holds the thread back before it starts (fault
    /// injection for tests; zero otherwise).
    pub fn start_commit(&mut self, offsets: TopicPartitionList, group: ConsumerGroupMetadata, delay: Duration) -> Result<(), SinkError> {
        self.ensure_transaction()?;
        let (producer, timeout) = (Arc::clone(&self.producer), self.flush_timeout);
        let thread = std::thread::Builder::new().name("touchstream-commit".into());
        let handle = thread
            .spawn(move || {
                let started = Instant::now();
                std::thread::sleep(delay);
                (commit_open(&producer, &offsets, &group, timeout), started.elapsed())
            })
            .map_err(|e| SinkError::CommitThread(e.to_string()))?;
        self.committing = Some(handle);
        Ok(())
    }

    /// Whether a commit started by `start_commit` has not been finished yet.
    pub fn committing(&self) -> bool {
        self.committing.is_some()
    }

    /// Whether the commit on its way (if any) has an answer: `finish_commit` will not wait.
    pub fn commit_answered(&self) -> bool {
        self.committing.as_ref().is_some_and(JoinHandle::is_finished)
    }

    /// Waits for the commit started by `start_commit` (None: none was on its way); Ok holds how
    /// long the commit took. After an error the transaction is still open: abort it (or stop, if
    /// fenced/fatal).
    pub fn finish_commit(&mut self) -> Option<Result<Duration, SinkError>> {
        let handle = self.committing.take()?;
        let (result, took) = handle.join().unwrap_or_else(|_| (Err(SinkError::CommitThread("it panicked".into())), Duration::ZERO));
        Some(self.committed(result).map(|()| took))
    }

    fn committed(&mut self, result: Result<(), SinkError>) -> Result<(), SinkError> {
        result?;
        self.in_transaction = false;
        self.producer.context().failed.swap(0, Ordering::AcqRel);
        Ok(())
    }

    /// Aborts the open transaction: nothing it wrote becomes visible to read_committed readers.
    pub fn abort_transaction(&mut self) -> Result<(), SinkError> {
        // A commit on its way is answered first (the loop settles it before it aborts; this is
        // for the way out after an error); if it committed, there is nothing left to abort.
        let _ = self.finish_commit();
        if !self.in_transaction {
            return Ok(());
        }
        // librdkafka's abort waits until every queued record's delivery report was served, but
        // rust-rdkafka's BaseProducer::abort_transaction (unlike its commit) does not serve them:
        // purge what is queued and serve the reports here first, or the abort blocks until timeout.
        self.producer.purge(PurgeConfig::default().queue());
        let _ = self.deliver_all(self.flush_timeout);
        let timeout = self.flush_timeout;
        retry("abort", || self.producer.abort_transaction(timeout)).map_err(|e| self.refine(e))?;
        self.in_transaction = false;
        self.producer.context().failed.swap(0, Ordering::AcqRel);
        *self.producer.context().first_error.lock().expect("delivery lock") = None;
        Ok(())
    }

    /// Queues a record (inside the open transaction, beginning one if needed); waits for room
    /// when librdkafka's queue is full.
    pub fn send(&mut self, rec: OutRecord<'_>) -> Result<(), SinkError> {
        debug_assert!(self.committing.is_none(), "a record sent while the last transaction commits");
        if let Some(limit) = self.limits.get(rec.topic) {
            let headers: usize = rec.headers.as_ref().map_or(0, |h| h.iter().map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len) + 8).sum());
            let size = rec.key.map_or(0, <[u8]>::len) + rec.payload.map_or(0, <[u8]>::len) + headers + RECORD_OVERHEAD;
            if size > *limit {
                self.producer.context().too_large.store(true, Ordering::Release);
                let source = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
                return Err(SinkError::TooLarge { topic: rec.topic.to_string(), source });
            }
        }
        self.ensure_transaction()?;
        let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(rec.topic);
        if let Some(p) = rec.payload {
            record = record.payload(p);
        }
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
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    record = r;
                    self.producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) if is_size(&e) => {
                    self.producer.context().too_large.store(true, Ordering::Release);
                    return Err(SinkError::TooLarge { topic: rec.topic.to_string(), source: e });
                }
                Err((e, _)) if self.transactional => return Err(self.refine(SinkError::Transaction { op: "produce", class: classify(&e), source: e })),
                Err((e, _)) => return Err(SinkError::Send { topic: rec.topic.to_string(), source: e }),
            }
        }
    }

    /// Whether a record was refused for its size since the last call (then cleared).
    pub fn take_size_failure(&self) -> bool {
        self.producer.context().too_large.swap(false, Ordering::AcqRel)
    }

    fn deliver_all(&self, timeout: Duration) -> Result<(), KafkaError> {
        deliver_all(&self.producer, timeout)
    }

    /// Waits until every queued record is delivered; fails if any delivery failed since the last flush.
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.deliver_all(self.flush_timeout).map_err(|_| SinkError::FlushTimeout(self.flush_timeout))?;
        let ctx = self.producer.context();
        let count = ctx.failed.swap(0, Ordering::AcqRel);
        if count > 0 {
            let first = ctx.first_error.lock().expect("delivery lock").take().unwrap_or_default();
            return Err(SinkError::Delivery { count, first });
        }
        Ok(())
    }
}

/// Commits the open transaction of `producer` with `offsets` of `group`: offsets, deliveries,
/// then the commit itself, each retried while retriable.
fn commit_open(
    producer: &BaseProducer<DeliveryTracker>,
    offsets: &TopicPartitionList,
    group: &ConsumerGroupMetadata,
    timeout: Duration,
) -> Result<(), SinkError> {
    retry("send_offsets", || producer.send_offsets_to_transaction(offsets, group, timeout)).map_err(|e| refine(producer, e))?;
    // deliveries first, without the client's own flush (which polls in 100 ms steps)
    deliver_all(producer, timeout).map_err(|e| refine(producer, SinkError::Transaction { op: "flush", class: classify(&e), source: e }))?;
    retry("commit", || producer.commit_transaction(timeout)).map_err(|e| refine(producer, e))
}

/// A producer that raised a fatal error cannot go on, whatever the failed call said; when that
/// fatal error is a fence (a newer instance took the transactional id), it must stop rather
/// than recreate the producer (which would fence the newer instance in turn).
fn refine(producer: &BaseProducer<DeliveryTracker>, e: SinkError) -> SinkError {
    match e {
        SinkError::Transaction { op, class, source } if class != TxnClass::Fenced => match producer.client().fatal_error() {
            Some((code, _)) if is_fence(code) => SinkError::Transaction { op, class: TxnClass::Fenced, source },
            Some(_) => SinkError::Transaction { op, class: TxnClass::Fatal, source },
            None => SinkError::Transaction { op, class, source },
        },
        other => other,
    }
}

/// Sends every queued record now and serves delivery reports until none is outstanding.
/// rust-rdkafka's `flush` (also called by its `commit_transaction`) polls the report queue in
/// steps of a full 100 ms, so every commit took at least 100 ms; here the queue is served every
/// 250 µs (measured with the throughput harness: commits went from ~105 ms to a few ms). The
/// harness's passthrough baseline waits with this too.
pub fn deliver_all<C: ProducerContext>(producer: &BaseProducer<C>, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        // a zero-timeout flush sends what lingers and says whether anything is outstanding
        match producer.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if Instant::now() < deadline => {
                // serve what is queued (failed deliveries, errors) without waiting, then sleep:
                // rust-rdkafka's `poll(1 ms)` spins through its last sub-millisecond (the
                // queue's timeout is in whole milliseconds), which burned a core while waiting
                producer.poll(Duration::ZERO);
                std::thread::sleep(Duration::from_micros(250));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Whether an error says that a record is larger than the client or the broker accepts.
fn is_size(err: &KafkaError) -> bool {
    matches!(err.rdkafka_error_code(), Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize))
}

fn is_fence(code: RDKafkaErrorCode) -> bool {
    matches!(code, RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced | RDKafkaErrorCode::InvalidProducerEpoch)
}
