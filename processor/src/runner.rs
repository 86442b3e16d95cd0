//! The processing loop: poll -> decode -> engine -> produce, and every commit interval: emit
//! changed channel windows and the state changelog, then commit. Exactly-once: the batch's
//! outputs, changelog records and input offsets commit in one Kafka transaction; on abort the loop
//! rewinds (state reloaded from the changelog, consumer back to the committed offsets).
//! At-least-once: outputs are delivered before the offsets that produced them are committed.
//! The loop owns all state; rebalance callbacks only leave signals for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::attribution::aggregate::{partial_key, partials_partition, total_key, ChannelAggregator};
use crate::avro::{AvroDecoder, DecodeError, OutputCodecs};
use crate::changelog::{ChangelogEntry, RestoreError};
use crate::config::{Config, Guarantee, InputFormat};
use crate::engine::{EngineConfig, Output, PartitionEngine};
use crate::event::{Channel, InvalidEvent, Validation};
use crate::http::Health;
use crate::kafka::admin::{self, AdminError};
use crate::kafka::consumer::{QuietEof, RebalanceSignal, SignallingContext};
use crate::kafka::sink::{OutRecord, Sink, SinkError, TxnClass};
use crate::kafka::{client_config, Role};
use crate::inference::{ModelError, ModelSet};
use crate::output::{ChannelWindowRecord, ScoreRecord};
use crate::registry::{Backoff, RegistryClient};
use crate::telemetry::Telemetry;
use crate::time::wall_clock_ms;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("consumer: {0}")]
    Consumer(KafkaError),
    #[error("commit failed: {0}")]
    Commit(KafkaError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot serialise an output record: {0}")]
    Serialise(#[from] serde_json::Error),
    #[error("restoring partition {partition} from the changelog: {message}")]
    Restore { partition: i32, message: String },
    #[error("the producer failed fatally 4 times in 10 minutes; last error: {0}")]
    ProducerFailed(String),
    #[error("fenced: another instance with transactional.id {0:?} took over; this one stops")]
    Fenced(String),
    #[error(transparent)]
    Models(#[from] ModelError),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("cannot encode an output record: {0}")]
    Encode(String),
}

impl From<RestoreError> for RunError {
    fn from(e: RestoreError) -> Self {
        RunError::Restore { partition: -1, message: e.to_string() }
    }
}

/// Counts for callers (the demo's summary, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub events: u64,
    pub invalid: u64,
    pub conversions: u64,
    pub alerts: u64,
    pub commits: u64,
    pub aborts: u64,
    pub restored_records: u64,
}

pub struct Runner {
    consumer: BaseConsumer<SignallingContext>,
    state: Processor,
}

impl Runner {
    /// `flag` set means: reload the models at the next batch boundary (SIGHUP, the folder watcher).
    pub fn with_reload(mut self, flag: Arc<AtomicBool>) -> Self {
        self.state.reload = flag;
        self
    }
}

/// Kafka timeout of the loop's blocking calls (commit, seek, committed offsets).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// Everything the loop owns besides the consumer.
struct Processor {
    cfg: Config,
    engine_cfg: EngineConfig,
    sink: Sink,
    telemetry: Telemetry,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
    engines: HashMap<i32, PartitionEngine>,
    aggregators: HashMap<i32, ChannelAggregator>,
    /// Next offset to commit per input partition.
    pending: HashMap<i32, i64>,
    /// Last committed offset per input partition (where a rewind goes back to); None: nothing
    /// committed yet (start from the beginning).
    committed: HashMap<i32, Option<i64>>,
    restorer: BaseConsumer<QuietEof>,
    changelog: Vec<ChangelogEntry>,
    /// Fault injection for tests: abort every Nth transaction instead of committing it.
    abort_every: Option<u64>,
    /// Fault injection for tests: a fatal producer error before the Nth commit.
    fatal_at: Option<u64>,
    transactions: u64,
    /// When the producer was last recreated after fatal errors.
    recreated: Vec<Instant>,
    last_input: HashMap<i32, Instant>,
    partials_partitions: i32,
    buf: Vec<u8>,
    keybuf: Vec<u8>,
    /// Input decoding: the format and, for avro/auto, the registry-backed decoder.
    input_format: InputFormat,
    avro: Option<AvroDecoder>,
    schema_fetches: u64,
    /// How the conversions, channels and alerts topics are written.
    codecs: OutputCodecs,
    /// Input partitions paused because the writer schema (id) they need could not be fetched;
    /// each was sought back to the record that needs it.
    paused: HashMap<i32, u32>,
    registry_backoff: Backoff,
    registry_retry_at: Instant,
    outputs: Vec<Output>,
    windows: Vec<ChannelWindowRecord>,
    batch_events: usize,
    last_commit: Instant,
    last_state_report: Instant,
    pub stats: RunStats,
    models: Option<Arc<ModelSet>>,
    reload: Arc<AtomicBool>,
    scores: Vec<ScoreRecord>,
    durations: Vec<(bool, f32)>,
}

impl Runner {
    /// Connects, subscribes to the events topic and the internal partials topic.
    pub fn new(cfg: Config, health: Arc<Health>, shutdown: Arc<AtomicBool>) -> Result<Runner, RunError> {
        let registry = if cfg.formats.uses_registry() { Some(RegistryClient::new(&cfg.registry).map_err(RunError::Registry)?) } else { None };
        let telemetry = Telemetry::new();
        // Output schemas first: the member joins the group only once it can write every output.
        let codecs = OutputCodecs::prepare(&cfg, registry.as_ref(), &shutdown, &health, &telemetry).map_err(RunError::Registry)?;
        let avro = match cfg.formats.events {
            InputFormat::Json => None,
            InputFormat::Avro | InputFormat::Auto => registry.clone().map(|r| AvroDecoder::new(Box::new(r))),
        };
        let partials_partitions = admin::partition_count(&cfg, &cfg.topics.channel_partials)?
            .ok_or_else(|| AdminError::Missing { topic: cfg.topics.channel_partials.clone() })?;
        if admin::partition_count(&cfg, &cfg.topics.events)?.is_none() {
            tracing::warn!(topic = %cfg.topics.events, "the events topic does not exist yet; waiting for it");
        }
        let consumer: BaseConsumer<SignallingContext> = client_config(&cfg, Role::Consumer)
            .create_with_context(SignallingContext::default())
            .map_err(RunError::Consumer)?;
        consumer
            .subscribe(&[cfg.topics.events.as_str(), cfg.topics.channel_partials.as_str()])
            .map_err(RunError::Consumer)?;
        let producer_config = client_config(&cfg, Role::Producer);
        let sink = match cfg.kafka.guarantee {
            Guarantee::ExactlyOnce => Sink::transactional(&producer_config, CALL_TIMEOUT)?,
            Guarantee::AtLeastOnce => Sink::new(&producer_config, CALL_TIMEOUT)?,
        };
        let mut restore_config = client_config(&cfg, Role::Admin);
        restore_config
            .set("group.id", format!("{}-restore", cfg.kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", "20")
            .set("auto.offset.reset", "earliest");
        let restorer: BaseConsumer<QuietEof> = restore_config.create_with_context(QuietEof).map_err(RunError::Consumer)?;
        let abort_every = std::env::var("TOUCHSTREAM_FAULT_ABORT_EVERY").ok().and_then(|v| v.parse().ok()).filter(|n: &u64| *n > 0);
        if let Some(n) = abort_every {
            tracing::warn!(every = n, "fault injection: aborting every {n}th transaction");
        }
        let fatal_at = std::env::var("TOUCHSTREAM_FAULT_FATAL_AT").ok().and_then(|v| v.parse().ok()).filter(|n: &u64| *n > 0);
        let telemetry = Telemetry::new();
        let models = ModelSet::load(&cfg.models)?;
        if let Some(m) = &models {
            telemetry.models_loaded(&m.version, false);
        }
        let state = Processor {
            engine_cfg: EngineConfig::from_config(&cfg).with_models(models.clone()),
            models,
            reload: Arc::new(AtomicBool::new(false)),
            scores: Vec::new(),
            durations: Vec::new(),
            input_format: cfg.formats.events,
            avro,
            schema_fetches: 0,
            codecs,
            paused: HashMap::new(),
            registry_backoff: Backoff::new(cfg.registry.retry_min.as_duration(), cfg.registry.retry_max.as_duration()),
            registry_retry_at: Instant::now(),
            keybuf: Vec::with_capacity(256),
            cfg,
            sink,
            telemetry,
            health,
            shutdown,
            engines: HashMap::new(),
            aggregators: HashMap::new(),
            pending: HashMap::new(),
            committed: HashMap::new(),
            restorer,
            changelog: Vec::new(),
            abort_every,
            fatal_at,
            transactions: 0,
            recreated: Vec::new(),
            last_input: HashMap::new(),
            partials_partitions,
            buf: Vec::with_capacity(4096),
            outputs: Vec::new(),
            windows: Vec::new(),
            batch_events: 0,
            last_commit: Instant::now(),
            last_state_report: Instant::now(),
            stats: RunStats::default(),
        };
        Ok(Runner { consumer, state })
    }

    /// Runs until the shutdown flag is set, then finishes the batch, flushes, commits and leaves
    /// the group.
    pub fn run(self) -> Result<RunStats, RunError> {
        let Runner { consumer, mut state } = self;
        let interval = state.cfg.processing.commit_interval.as_duration();
        let poll_timeout = interval.min(Duration::from_millis(100));
        let result = (|| {
            while !state.shutdown.load(Ordering::Acquire) {
                let polled = consumer.poll(poll_timeout);
                let step = state.apply_signals(&consumer, consumer.context().take()).and_then(|_| match polled {
                    Some(Ok(msg)) => state.handle(&consumer, &msg),
                    Some(Err(e)) => {
                        state.telemetry.consumer_error(&e.to_string());
                        Ok(())
                    }
                    None => Ok(()),
                });
                let step = step.and_then(|_| state.retry_registry(&consumer));
                let step = step.and_then(|_| {
                    if state.batch_events >= state.cfg.processing.max_batch_events || state.last_commit.elapsed() >= interval {
                        state.commit(&consumer)?;
                        if state.reload.swap(false, Ordering::AcqRel) {
                            state.reload_models();
                        }
                    }
                    Ok(())
                });
                match step {
                    Ok(()) => {}
                    // A failed produce inside a transaction: abort, rewind, redo.
                    Err(RunError::Sink(e)) if e.class() == Some(TxnClass::Abort) => {
                        tracing::warn!(error = %e, "produce failed inside the transaction; aborting and redoing");
                        state.abort_and_rewind(&consumer, "produce failed")?;
                    }
                    Err(RunError::Sink(e)) if e.class() == Some(TxnClass::Fenced) => {
                        return Err(RunError::Fenced(state.cfg.kafka.effective_transactional_id()))
                    }
                    Err(RunError::Sink(e)) if e.class() == Some(TxnClass::Fatal) => state.recreate_producer(&consumer, &e)?,
                    Err(e) => return Err(e),
                }
            }
            state.commit(&consumer)
        })();
        if result.is_err() {
            state.health.set_failed();
            if state.sink.in_transaction() {
                let _ = state.sink.abort_transaction();
            }
        }
        state.health.set_ready(false);
        consumer.unsubscribe();
        result.map(|_| state.stats)
    }
}

impl Processor {
    fn apply_signals(&mut self, consumer: &BaseConsumer<SignallingContext>, signals: Vec<RebalanceSignal>) -> Result<(), RunError> {
        for signal in signals {
            match signal {
                RebalanceSignal::Assigned(parts) => {
                    self.telemetry.assigned(&parts);
                    self.health.set_ready(false);
                    let events: Vec<i32> = parts.iter().filter(|(t, _)| *t == self.cfg.topics.events).map(|(_, p)| *p).collect();
                    for (topic, p) in &parts {
                        if *topic == self.cfg.topics.channel_partials {
                            self.aggregators.insert(*p, ChannelAggregator::new(self.cfg.attribution.window_retention.ms()));
                        }
                    }
                    self.load_partitions(consumer, &events)?;
                    self.health.set_ready(true);
                }
                RebalanceSignal::Revoked(parts) => {
                    for (topic, p) in &parts {
                        if *topic == self.cfg.topics.events {
                            self.engines.remove(p);
                            self.pending.remove(p);
                            self.committed.remove(p);
                            self.last_input.remove(p);
                            if self.paused.remove(p).is_some() && self.paused.is_empty() {
                                self.registry_recovered(0);
                            }
                        } else if *topic == self.cfg.topics.channel_partials {
                            self.aggregators.remove(p);
                        }
                    }
                    self.telemetry.revoked(&parts);
                    if self.sink.in_transaction() {
                        // The open transaction may hold work of the revoked partitions, which this
                        // member can no longer commit: abort it and redo the partitions it keeps.
                        self.abort_and_rewind(consumer, "partitions revoked")?;
                    }
                }
                RebalanceSignal::Failed(message) => self.telemetry.rebalance_failed(&message),
            }
        }
        Ok(())
    }

    /// Loads newly assigned input partitions: their committed offsets (stable: the broker waits
    /// for pending transactions to resolve), then their state from the changelog, then seeks.
    fn load_partitions(&mut self, consumer: &BaseConsumer<SignallingContext>, partitions: &[i32]) -> Result<(), RunError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.cfg.topics.events, *p);
        }
        let committed = consumer.committed_offsets(tpl, CALL_TIMEOUT).map_err(RunError::Consumer)?;
        for e in committed.elements() {
            let offset = match e.offset() {
                Offset::Offset(o) => Some(o),
                _ => None,
            };
            self.committed.insert(e.partition(), offset);
        }
        self.reload_partitions(consumer, partitions)
    }

    /// Restores partitions from the changelog and seeks them to the last committed offsets known
    /// to this member (no group-coordinator call, so this also works in the middle of a rebalance).
    fn reload_partitions(&mut self, consumer: &BaseConsumer<SignallingContext>, partitions: &[i32]) -> Result<(), RunError> {
        if partitions.is_empty() {
            return Ok(());
        }
        let mut seek = TopicPartitionList::new();
        for p in partitions {
            let offset = match self.committed.get(p).copied().flatten() {
                Some(o) => Offset::Offset(o),
                None => Offset::Beginning,
            };
            seek.add_partition_offset(&self.cfg.topics.events, *p, offset).map_err(RunError::Consumer)?;
        }
        let started = Instant::now();
        for engine in self.restore_partitions(partitions)? {
            let p = engine.partition();
            self.telemetry.restored(p, engine.customers(), started.elapsed());
            self.engines.insert(p, engine);
            self.last_input.insert(p, Instant::now());
            self.pending.remove(&p);
        }
        consumer.seek_partitions(seek, CALL_TIMEOUT).map_err(RunError::Consumer)?;
        Ok(())
    }

    /// Reads changelog partitions to their end (read_committed) into fresh engines.
    fn restore_partitions(&mut self, partitions: &[i32]) -> Result<Vec<PartitionEngine>, RunError> {
        let err = |p: i32, message: String| RunError::Restore { partition: p, message };
        let mut engines: HashMap<i32, PartitionEngine> =
            partitions.iter().map(|p| (*p, PartitionEngine::new(*p, self.engine_cfg.clone()))).collect();
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.cfg.topics.changelog, *p, Offset::Beginning).map_err(|e| err(*p, e.to_string()))?;
        }
        self.restorer.assign(&tpl).map_err(|e| err(-1, e.to_string()))?;
        let mut open: Vec<i32> = partitions.to_vec();
        let deadline = Instant::now() + Duration::from_secs(600);
        while !open.is_empty() {
            match self.restorer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let p = m.partition();
                    if let Some(engine) = engines.get_mut(&p) {
                        engine.restore(m.key().unwrap_or_default(), m.payload()).map_err(|e| err(p, e.to_string()))?;
                        self.stats.restored_records += 1;
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => open.retain(|x| *x != p),
                Some(Err(e)) => self.telemetry.consumer_error(&format!("changelog restore: {e}")),
                None if Instant::now() > deadline => return Err(err(open[0], "no end of the changelog within 600 s".into())),
                None => {}
            }
        }
        self.restorer.unassign().map_err(|e| err(-1, e.to_string()))?;
        Ok(engines
            .into_values()
            .map(|mut e| {
                e.finish_restore();
                e
            })
            .collect())
    }

    /// Aborts the open transaction and goes back to the last commit: every kept partition's state
    /// is reloaded from the changelog and its consumer position reset to the committed offset;
    /// aggregators re-read the partials topic.
    fn abort_and_rewind(&mut self, consumer: &BaseConsumer<SignallingContext>, why: &str) -> Result<(), RunError> {
        match self.sink.abort_transaction() {
            Ok(()) => {}
            Err(e) if e.class() == Some(TxnClass::Fenced) => return Err(RunError::Fenced(self.cfg.kafka.effective_transactional_id())),
            // A producer that cannot even abort is replaced: the new one's init aborts the transaction.
            Err(e) => return self.recreate_producer(consumer, &e),
        }
        self.stats.aborts += 1;
        self.telemetry.aborted(why);
        self.rewind(consumer)
    }

    /// A fatal producer error: replace the producer (its `init_transactions` aborts whatever the
    /// old one left open) and go back to the last commit. At most 3 times in 10 minutes; then stop.
    fn recreate_producer(&mut self, consumer: &BaseConsumer<SignallingContext>, cause: &SinkError) -> Result<(), RunError> {
        let now = Instant::now();
        self.recreated.retain(|t| now.duration_since(*t) < Duration::from_secs(600));
        if self.recreated.len() >= 3 {
            return Err(RunError::ProducerFailed(cause.to_string()));
        }
        // A fenced producer, or a member whose group session ran out (a paused or frozen process
        // whose partitions went to a successor with the same transactional id), must stop: a new
        // producer's init would fence the successor in turn. librdkafka notices a lost session
        // on its own threads; give it a moment after a long pause.
        std::thread::sleep(Duration::from_secs(1));
        if self.sink.is_fenced() || consumer.assignment_lost() {
            tracing::error!(error = %cause, "the producer failed after this member lost its group session or was fenced: stopping");
            return Err(RunError::Fenced(self.cfg.kafka.effective_transactional_id()));
        }
        self.recreated.push(now);
        tracing::error!(error = %cause, "fatal producer error: recreating the producer and reloading state from the changelog");
        self.sink = Sink::transactional(&client_config(&self.cfg, Role::Producer), CALL_TIMEOUT)?;
        self.rewind(consumer)
    }

    /// Forgets everything since the last commit: buffers, state (reloaded from the changelog),
    /// consumer positions (back to the committed offsets), channel aggregators (re-read).
    fn rewind(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        self.outputs.clear();
        self.windows.clear();
        self.changelog.clear();
        self.pending.clear();
        self.batch_events = 0;
        let partitions: Vec<i32> = self.engines.keys().copied().collect();
        self.engines.clear();
        self.reload_partitions(consumer, &partitions)?;
        if !self.aggregators.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for p in self.aggregators.keys() {
                tpl.add_partition_offset(&self.cfg.topics.channel_partials, *p, Offset::Beginning).map_err(RunError::Consumer)?;
            }
            for agg in self.aggregators.values_mut() {
                *agg = ChannelAggregator::new(self.cfg.attribution.window_retention.ms());
            }
            consumer.seek_partitions(tpl, CALL_TIMEOUT).map_err(RunError::Consumer)?;
        }
        Ok(())
    }

    fn handle(&mut self, consumer: &BaseConsumer<SignallingContext>, msg: &BorrowedMessage<'_>) -> Result<(), RunError> {
        let p = msg.partition();
        if msg.topic() == self.cfg.topics.channel_partials {
            let agg = self
                .aggregators
                .entry(p)
                .or_insert_with(|| ChannelAggregator::new(self.cfg.attribution.window_retention.ms()));
            match serde_json::from_slice::<ChannelWindowRecord>(msg.payload().unwrap_or_default()) {
                Ok(rec) if agg.apply(&rec) => {}
                Ok(_) => self.telemetry.bad_partial(p, msg.offset(), "not a partial"),
                Err(e) => self.telemetry.bad_partial(p, msg.offset(), &e.to_string()),
            }
            return Ok(());
        }
        if self.paused.contains_key(&p) {
            // Fetched before the pause took effect: it is read again after the resume.
            return Ok(());
        }
        let check = Validation { now: wall_clock_ms(), max_future_skew_ms: self.cfg.event_time.max_future_skew.ms() };
        let payload = msg.payload().unwrap_or_default();
        let decoded = crate::avro::decode_input(self.input_format, self.avro.as_mut(), msg.key(), payload, &check);
        if let Some(d) = &self.avro {
            if d.fetches != self.schema_fetches {
                self.telemetry.schema_fetched(d.fetches - self.schema_fetches);
                self.schema_fetches = d.fetches;
            }
        }
        if let Err(DecodeError::Unavailable { id, error }) = &decoded {
            return self.pause_for_registry(consumer, msg, *id, error);
        }
        self.batch_events += 1;
        self.pending.insert(p, msg.offset() + 1);
        self.last_input.insert(p, Instant::now());
        match decoded {
            Err(DecodeError::Unavailable { .. }) => unreachable!("handled above"),
            Ok(ev) => {
                let engine = self.engines.entry(p).or_insert_with(|| PartitionEngine::new(p, self.engine_cfg.clone()));
                let processed = engine.process(&ev, &mut self.outputs);
                self.telemetry.event(ev.event_type, processed.late);
                self.stats.events += 1;
                self.ship_outputs()?;
            }
            Err(DecodeError::Invalid(err)) => {
                self.telemetry.invalid(&err, msg.topic(), p, msg.offset());
                self.stats.invalid += 1;
                self.dead_letter(msg, &err)?;
            }
        }
        Ok(())
    }

    /// The registry is needed for `msg` and unavailable: pause its partition and seek it back to
    /// `msg`, so nothing is skipped; `retry_registry` resumes it once the schema can be fetched.
    /// Nothing waits in memory: librdkafka stops fetching a paused partition.
    fn pause_for_registry(&mut self, consumer: &BaseConsumer<SignallingContext>, msg: &BorrowedMessage<'_>, id: u32, error: &str) -> Result<(), RunError> {
        let p = msg.partition();
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(msg.topic(), p);
        consumer.pause(&tpl).map_err(RunError::Consumer)?;
        consumer.seek(msg.topic(), p, Offset::Offset(msg.offset()), CALL_TIMEOUT).map_err(RunError::Consumer)?;
        if self.paused.is_empty() {
            self.registry_retry_at = Instant::now() + self.registry_backoff.next_delay();
        }
        self.paused.insert(p, id);
        self.health.set_registry_down(true);
        self.telemetry.registry_unavailable(&format!("writer schema {id}: {error}"), self.paused.len(), self.registry_retry_at.saturating_duration_since(Instant::now()));
        Ok(())
    }

    /// Tries the registry again (with backoff) for the schemas paused partitions wait for; resumes
    /// them once every one is fetched (or known not to exist: those records go to the DLQ).
    fn retry_registry(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        if self.paused.is_empty() || Instant::now() < self.registry_retry_at {
            return Ok(());
        }
        let mut ids: Vec<u32> = self.paused.values().copied().collect();
        ids.sort_unstable();
        ids.dedup();
        if let Some(decoder) = self.avro.as_mut() {
            for id in ids {
                if let Err(DecodeError::Unavailable { error, .. }) = decoder.ensure(id) {
                    let delay = self.registry_backoff.next_delay();
                    self.registry_retry_at = Instant::now() + delay;
                    self.telemetry.registry_unavailable(&format!("writer schema {id}: {error}"), self.paused.len(), delay);
                    return Ok(());
                }
            }
        }
        let mut tpl = TopicPartitionList::new();
        for p in self.paused.keys() {
            tpl.add_partition(&self.cfg.topics.events, *p);
            self.last_input.insert(*p, Instant::now());
        }
        consumer.resume(&tpl).map_err(RunError::Consumer)?;
        let resumed = self.paused.len();
        self.paused.clear();
        self.registry_recovered(resumed);
        Ok(())
    }

    fn registry_recovered(&mut self, resumed: usize) {
        self.registry_backoff.reset();
        self.health.set_registry_down(false);
        self.telemetry.registry_recovered(resumed);
    }

    /// Writes the original key, bytes and headers to the DLQ, with headers naming the error.
    fn dead_letter(&mut self, msg: &BorrowedMessage<'_>, err: &InvalidEvent) -> Result<(), RunError> {
        let reason = err.to_string();
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let mut headers = OwnedHeaders::new();
        if let Some(h) = msg.headers() {
            for header in h.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let headers = headers
            .insert(Header { key: "touchstream.error.kind", value: Some(err.kind()) })
            .insert(Header { key: "touchstream.error.reason", value: Some(reason.as_str()) })
            .insert(Header { key: "touchstream.source.topic", value: Some(msg.topic()) })
            .insert(Header { key: "touchstream.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "touchstream.source.offset", value: Some(offset.as_str()) });
        self.sink.send(OutRecord {
            topic: &self.cfg.topics.dlq,
            partition: None,
            key: msg.key(),
            payload: msg.payload(),
            headers: Some(headers),
        })?;
        Ok(())
    }

    fn ship_outputs(&mut self) -> Result<(), RunError> {
        for out in self.outputs.drain(..) {
            self.buf.clear();
            self.keybuf.clear();
            let topic = match &out {
                Output::Conversion(c) => {
                    self.codecs.conversions.encode_value(c, &mut self.buf).map_err(RunError::Encode)?;
                    self.codecs.conversions.encode_key(&c.customer_id, &mut self.keybuf).map_err(RunError::Encode)?;
                    self.telemetry.conversion();
                    self.stats.conversions += 1;
                    &self.cfg.topics.conversions
                }
                Output::Alert(a) => {
                    self.codecs.alerts.encode_value(a, &mut self.buf).map_err(RunError::Encode)?;
                    self.codecs.alerts.encode_key(&a.customer_id, &mut self.keybuf).map_err(RunError::Encode)?;
                    self.telemetry.alert(a.reason);
                    self.stats.alerts += 1;
                    &self.cfg.topics.alerts
                }
            };
            self.sink.send(OutRecord { topic, partition: None, key: Some(&self.keybuf), payload: Some(&self.buf), headers: None })?;
        }
        Ok(())
    }

    /// Idle watermarks, changed windows and totals, then flush and commit.
    fn commit(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        let started = Instant::now();
        let idle = self.cfg.event_time.idle_timeout.as_duration();
        let now_ms = wall_clock_ms();
        for (p, engine) in self.engines.iter_mut() {
            // A partition paused for the registry is not idle: its input is waiting.
            if self.last_input.get(p).is_some_and(|t| t.elapsed() >= idle) && !self.paused.contains_key(p) {
                engine.advance_idle(now_ms, &mut self.outputs);
            }
        }
        self.ship_outputs()?;

        for engine in self.engines.values_mut() {
            if self.cfg.scores.enabled {
                engine.drain_scores(&mut self.scores);
            }
            let stats = engine.take_scoring_stats(&mut self.durations);
            self.telemetry.inference(&stats, &self.durations);
        }
        self.telemetry.scores(self.scores.len());
        for rec in self.scores.drain(..) {
            self.buf.clear();
            self.keybuf.clear();
            self.codecs.scores.encode_value(&rec, &mut self.buf).map_err(RunError::Encode)?;
            self.codecs.scores.encode_key(&rec.customer_id, &mut self.keybuf).map_err(RunError::Encode)?;
            self.sink.send(OutRecord { topic: &self.cfg.topics.scores, partition: None, key: Some(&self.keybuf), payload: Some(&self.buf), headers: None })?;
        }
        for (p, engine) in self.engines.iter_mut() {
            let from = self.windows.len();
            engine.drain_changed_windows(&mut self.windows);
            engine.drain_changelog(&self.windows[from..], &mut self.changelog)?;
            for entry in self.changelog.drain(..) {
                self.sink.send(OutRecord {
                    topic: &self.cfg.topics.changelog,
                    partition: Some(*p),
                    key: Some(&entry.key),
                    payload: entry.value.as_deref(),
                    headers: None,
                })?;
            }
        }
        for rec in self.windows.drain(..) {
            let channel = Channel::from_wire(&rec.channel).unwrap_or(Channel::Other);
            let src = rec.source_partition.unwrap_or_default();
            self.buf.clear();
            serde_json::to_writer(&mut self.buf, &rec)?;
            let key = partial_key(rec.window_start, channel, src);
            self.sink.send(OutRecord {
                topic: &self.cfg.topics.channel_partials,
                partition: Some(partials_partition(rec.window_start, channel, self.partials_partitions)),
                key: Some(key.as_bytes()),
                payload: Some(&self.buf),
                headers: None,
            })?;
        }
        for agg in self.aggregators.values_mut() {
            agg.drain_changed(&mut self.windows);
        }
        self.telemetry.window_updates(self.windows.len());
        for rec in self.windows.drain(..) {
            self.buf.clear();
            self.keybuf.clear();
            self.codecs.channels.encode_value(&rec, &mut self.buf).map_err(RunError::Encode)?;
            self.codecs.channels.encode_key(&total_key(rec.window_start, &rec.channel), &mut self.keybuf).map_err(RunError::Encode)?;
            self.sink.send(OutRecord { topic: &self.cfg.topics.channels, partition: None, key: Some(&self.keybuf), payload: Some(&self.buf), headers: None })?;
        }

        let mut tpl = TopicPartitionList::new();
        for (p, off) in &self.pending {
            tpl.add_partition_offset(&self.cfg.topics.events, *p, Offset::Offset(*off)).map_err(RunError::Commit)?;
        }
        if self.sink.is_transactional() {
            if self.sink.in_transaction() || !self.pending.is_empty() {
                self.transactions += 1;
                if self.fatal_at == Some(self.transactions) {
                    tracing::warn!("fault injection: fatal producer error");
                    self.sink.inject_fatal_error();
                }
                if self.abort_every.is_some_and(|n| self.transactions % n == 0) {
                    self.sink.flush()?;
                    return self.abort_and_rewind(consumer, "fault injection");
                }
                let group = consumer.group_metadata().ok_or_else(|| RunError::Consumer(KafkaError::NoMessageReceived))?;
                match self.sink.commit_transaction(&tpl, &group) {
                    Ok(()) => self.after_commit(started),
                    Err(e) => match e.class() {
                        Some(TxnClass::Abort) | Some(TxnClass::Retry) => {
                            tracing::warn!(error = %e, "transaction failed; aborting and redoing the batch");
                            return self.abort_and_rewind(consumer, "commit failed");
                        }
                        Some(TxnClass::Fenced) => return Err(RunError::Fenced(self.cfg.kafka.effective_transactional_id())),
                        _ => return Err(e.into()),
                    },
                }
            }
        } else {
            self.sink.flush()?;
            if !self.pending.is_empty() {
                consumer.commit(&tpl, CommitMode::Sync).map_err(RunError::Commit)?;
                self.after_commit(started);
            }
        }
        self.batch_events = 0;
        self.last_commit = Instant::now();
        if self.last_state_report.elapsed() >= Duration::from_secs(5) {
            self.report_state(now_ms);
        }
        Ok(())
    }

    /// Loads the models again (SIGHUP or a change in the models folder) and swaps them in at a
    /// batch boundary. A model that fails to load or validate is rejected; the old ones keep serving.
    fn reload_models(&mut self) {
        if !self.cfg.models.enabled {
            return;
        }
        let set = match ModelSet::load(&self.cfg.models) {
            Ok(set) => set,
            Err(e) => return self.telemetry.models_rejected(&e.to_string()),
        };
        let mut resets = 0;
        for engine in self.engines.values_mut() {
            match engine.set_models(set.clone()) {
                Ok(n) => resets += n as u64,
                Err(e) => return self.telemetry.models_rejected(&e),
            }
        }
        if resets > 0 {
            self.telemetry.hidden_resets(resets);
        }
        if let Some(m) = &set {
            self.telemetry.models_loaded(&m.version, true);
        }
        self.engine_cfg = self.engine_cfg.clone().with_models(set.clone());
        self.models = set;
    }

    fn after_commit(&mut self, started: Instant) {
        for (p, off) in self.pending.drain() {
            self.committed.insert(p, Some(off));
        }
        self.stats.commits += 1;
        self.telemetry.committed(self.batch_events, started.elapsed());
    }

    fn report_state(&mut self, now_ms: i64) {
        self.last_state_report = Instant::now();
        let customers = self.engines.values().map(|e| e.customers()).sum();
        let bytes = self.engines.values().map(|e| e.approx_bytes()).sum();
        let lag = self.engines.values().map(|e| e.watermark()).filter(|w| *w > i64::MIN / 4).min().map(|w| now_ms - w);
        let drops = self.engines.values().map(|e| e.windows().dropped_late).sum();
        self.telemetry.state(customers, bytes, self.engines.len(), lag, drops);
    }
}
