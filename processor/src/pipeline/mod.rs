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
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use crate::attribution::aggregate::{partial_key, partials_partition, total_key, ChannelAggregator};
use crate::changelog::{ChangelogEntry, RestoreError};
use crate::codec::registry::{Backoff, RegistryClient};
use crate::codec::{AvroDecoder, CodecError, DecodeError, RegistryWatch};
use crate::config::{Config, Guarantee, InputFormat};
use crate::engine::{EngineConfig, Output, PartitionEngine};
use crate::event::{Channel, InvalidEvent, Validation};
use crate::http::Health;
use crate::inference::{ModelError, ModelSet};
use crate::kafka::admin::{self, AdminError};
use crate::kafka::consumer::{QuietEof, RebalanceSignal, SignallingContext};
use crate::kafka::partitioner::Partitioner;
use crate::kafka::sink::{OutRecord, Sink, SinkError, TxnClass};
use crate::kafka::{client_config, Role};
use crate::output::{ChannelWindowRecord, ConversionRecord, ScoreRecord};
use crate::outputs::{Kind, WriteError, Writer};
use crate::telemetry::Telemetry;
use crate::time::wall_clock_ms;

mod batch;
mod checkpoint;
mod deliver;
pub mod erasure;
mod fanout;
mod faults;
pub mod poison;
mod registry_pause;
mod replay;
mod restore;
mod restore_worker;
mod snapshots;

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
    #[error("the consumer failed fatally ({0}); this instance stops so that its supervisor starts a new one")]
    ConsumerFatal(String),
    #[error(transparent)]
    Models(#[from] ModelError),
    #[error("schema registry: {0}")]
    Registry(String),
    #[error("output codec: {0}")]
    Codec(#[from] CodecError),
}

impl From<WriteError> for RunError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Codec(e) => RunError::Codec(e),
            WriteError::Sink(e) => RunError::Sink(e),
        }
    }
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
    pub duplicates: u64,
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
    /// The largest record each output topic accepts (`kafka::admin::record_limits`): records
    /// over it are refused before they are sent, and DLQ records are sized to fit.
    pub fn with_record_limits(mut self, limits: HashMap<String, usize>) -> Self {
        self.state.dlq_budget = limits.get(&self.state.cfg.topics.dlq).copied().unwrap_or(admin::DEFAULT_MAX_MESSAGE_BYTES);
        self.state.sink.set_limits(limits.clone());
        self.state.record_limits = limits;
        self
    }

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
    /// The changelog reader; a restore that stalls replaces it (restore.rs).
    restorer: BaseConsumer<QuietEof>,
    changelog: Vec<ChangelogEntry>,
    /// Fault injection for the broker tests (faults.rs).
    faults: faults::Faults,
    restore_attempts: u64,
    transactions: u64,
    /// When the producer was last recreated after fatal errors.
    recreated: Vec<Instant>,
    last_input: HashMap<i32, Instant>,
    partials_partitions: i32,
    /// When the ends of replaying aggregators' partitions were last asked for (restore.rs).
    replay_probed: Option<Instant>,
    /// Input decoding: the format and, for avro/auto, the registry-backed decoder.
    input_format: InputFormat,
    avro: Option<AvroDecoder>,
    schema_fetches: u64,
    /// Every output topic's name and codec: the one send path (`outputs::OUTPUTS`).
    writer: Writer,
    /// Input partitions paused because the writer schema (id) they need could not be fetched;
    /// each was sought back to the record that needs it.
    paused: HashMap<i32, u32>,
    registry_backoff: Backoff,
    registry_retry_at: Instant,
    /// Outputs not sent yet: they wait here while the last transaction commits.
    outputs: Vec<Output>,
    windows: Vec<ChannelWindowRecord>,
    batch_events: usize,
    /// The transaction whose commit is on its way (checkpoint.rs).
    in_flight: Option<checkpoint::InFlight>,
    /// Rewinds so far: a record polled before a rewind is not handled after it.
    rewinds: u64,
    last_commit: Instant,
    /// Each partition's score records of a commit, encoded (deliver.rs).
    score_buffers: Vec<deliver::ScoreBuffer>,
    /// Which partitions a commit snapshots (snapshots.rs).
    snapshots: snapshots::SnapshotClock,
    last_state_report: Instant,
    pub stats: RunStats,
    models: Option<Arc<ModelSet>>,
    reload: Arc<AtomicBool>,
    durations: Vec<(bool, f32)>,
    /// Drift of the models' input over the latest sampled events of all partitions.
    drift: crate::inference::drift::DriftWindow,
    drift_psi: Vec<f64>,
    /// The shadow comparison of the candidate models with the active ones.
    board: crate::lifecycle::compare::Board,
    /// Redoing a batch that was too large for the broker in smaller transactions.
    isolation: Option<poison::Isolation>,
    /// Last successful commit, or last moment without input waiting.
    last_progress: Instant,
    /// Largest DLQ record the broker accepts (the DLQ topic's and the producer's limits).
    dlq_budget: usize,
    /// Largest record per output topic (given to every producer this loop creates).
    record_limits: HashMap<String, usize>,
    /// The input record whose own outputs were refused for their size, while it was handled.
    oversize_source: Option<(i32, i64)>,
    /// Input partitions that do not move while records wait.
    watch: poison::PositionWatch,
    /// Reads the erasure topic's partitions of the owned input partitions (none: erasure off).
    erasure: Option<BaseConsumer>,
    /// The events topic's partition count (for `topics.partitioner`'s check), once known.
    input_partitions: Option<i32>,
    /// Reads the internal partials topic in a group of its own (`<group_id>-partials`), so that
    /// each topic's partitions are balanced over the replicas on their own: in one group the
    /// sticky assignor balances the sum, and could give one replica every input partition and
    /// another every partials partition. Never commits: aggregators re-read from the beginning.
    partials: Option<BaseConsumer<SignallingContext>>,
    /// Threads the engines' work is spread over (`processing.threads`, fanout.rs).
    threads: usize,
}

/// The registry's state while the output codecs wait for it: `/readyz` and telemetry.
struct Watch<'a> {
    health: &'a Health,
    telemetry: &'a Telemetry,
}

impl RegistryWatch for Watch<'_> {
    fn registry_up(&self) {
        self.health.set_registry_down(false);
        self.telemetry.registry_up();
    }

    fn registry_unavailable(&self, error: &str, retry_in: Duration) {
        self.health.set_registry_down(true);
        self.telemetry.registry_unavailable(error, 0, retry_in);
    }
}

impl Runner {
    /// Connects, subscribes to the events topic and the internal partials topic.
    pub fn new(cfg: Config, health: Arc<Health>, shutdown: Arc<AtomicBool>) -> Result<Runner, RunError> {
        let registry = if cfg.formats.uses_registry() { Some(RegistryClient::new(&cfg.registry).map_err(RunError::Registry)?) } else { None };
        let telemetry = Telemetry::new();
        let snapshots = snapshots::SnapshotClock::new(cfg.processing.snapshot_interval.as_duration());
        // Output schemas first: the member joins the group only once it can write every output.
        let writer = Writer::prepare(&cfg, registry.as_ref(), &shutdown, &Watch { health: &health, telemetry: &telemetry })?;
        let avro = match cfg.formats.events {
            InputFormat::Json => None,
            InputFormat::Avro | InputFormat::Auto => registry.clone().map(|r| AvroDecoder::new(Box::new(r))),
        };
        let partials_partitions =
            admin::partition_count(&cfg, &cfg.topics.channel_partials)?.ok_or_else(|| AdminError::Missing { topic: cfg.topics.channel_partials.clone() })?;
        let input_partitions = admin::partition_count(&cfg, &cfg.topics.events)?;
        if input_partitions.is_none() {
            tracing::warn!(topic = %cfg.topics.events, "the events topic does not exist yet; waiting for it");
        }
        let consumer: BaseConsumer<SignallingContext> =
            client_config(&cfg, Role::Consumer).create_with_context(SignallingContext::default()).map_err(RunError::Consumer)?;
        consumer.subscribe(&[cfg.topics.events.as_str()]).map_err(RunError::Consumer)?;
        let mut partials_config = client_config(&cfg, Role::Consumer);
        // the end of each partials partition is reported: an aggregator writes totals only once it
        // has replayed its partition to the end (attribution/aggregate.rs)
        partials_config.set("group.id", format!("{}-partials", cfg.kafka.group_id)).set("enable.partition.eof", "true");
        // a dynamic member: its partitions are re-read from the beginning anyway, and as a static
        // member it was fenced by, or never rejoined after, its own session timeout in a broker
        // restart (then no totals at all)
        partials_config.remove("group.instance.id");
        let partials: BaseConsumer<SignallingContext> = partials_config.create_with_context(SignallingContext::default()).map_err(RunError::Consumer)?;
        partials.subscribe(&[cfg.topics.channel_partials.as_str()]).map_err(RunError::Consumer)?;
        let producer_config = client_config(&cfg, Role::Producer);
        let sink = match cfg.kafka.guarantee {
            Guarantee::ExactlyOnce => Sink::transactional(&producer_config, CALL_TIMEOUT)?,
            Guarantee::AtLeastOnce => Sink::new(&producer_config, CALL_TIMEOUT)?,
        };
        let restorer: BaseConsumer<QuietEof> = restore::restore_client_config(&cfg).create_with_context(QuietEof).map_err(RunError::Consumer)?;
        let cfg_erasure = cfg.clone();
        let cfg_threads = cfg.processing.threads;
        let faults = faults::Faults::from_env();
        let models = ModelSet::load(&cfg.models)?;
        let candidate = ModelSet::load_candidate(&cfg.models)?;
        let engine_cfg = EngineConfig::from_config(&cfg).with_models(models.clone()).with_candidate(candidate.clone());
        crate::alerts::Policy::check(&engine_cfg, models.as_deref())?;
        crate::alerts::Policy::check(&engine_cfg, candidate.as_deref()).map_err(|e| crate::inference::ModelError::Candidate(Box::new(e)))?;
        if let Some(c) = &candidate {
            tracing::info!(version = %c.version, "candidate models loaded: scored in shadow, never written");
        }
        if let Some(m) = &models {
            telemetry.models_loaded(&m.version, false);
        }
        let state = Processor {
            engine_cfg,
            models,
            reload: Arc::new(AtomicBool::new(false)),
            score_buffers: Vec::new(),
            durations: Vec::new(),
            drift: Default::default(),
            drift_psi: Vec::new(),
            board: Default::default(),
            input_format: cfg.formats.events,
            avro,
            schema_fetches: 0,
            writer,
            paused: HashMap::new(),
            registry_backoff: Backoff::new(cfg.registry.retry_min.as_duration(), cfg.registry.retry_max.as_duration()),
            registry_retry_at: Instant::now(),
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
            faults,
            restore_attempts: 0,
            transactions: 0,
            recreated: Vec::new(),
            last_input: HashMap::new(),
            partials_partitions,
            replay_probed: None,
            outputs: Vec::new(),
            windows: Vec::new(),
            batch_events: 0,
            in_flight: None,
            rewinds: 0,
            last_commit: Instant::now(),
            snapshots,
            last_state_report: Instant::now(),
            stats: RunStats::default(),
            isolation: None,
            last_progress: Instant::now(),
            dlq_budget: admin::DEFAULT_MAX_MESSAGE_BYTES,
            record_limits: HashMap::new(),
            oversize_source: None,
            watch: poison::PositionWatch::default(),
            erasure: erasure::consumer(&cfg_erasure)?,
            input_partitions,
            partials: Some(partials),
            threads: fanout::threads(cfg_threads),
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
                let max_batch = state.isolation.as_ref().map_or(state.cfg.processing.max_batch_events, |iso| iso.batch);
                let cap = max_batch.saturating_sub(state.batch_events).clamp(1, batch::POLL_BATCH);
                let (msgs, error) = batch::poll_batch(&consumer, poll_timeout, cap);
                // Records, or an error in their place (e.g. a batch that cannot be decompressed):
                // either way input is waiting; the stall rule reports one that never moves.
                let had_input = !msgs.is_empty() || error.is_some();
                let rewinds = state.rewinds;
                let step = state.apply_signals(&consumer, consumer.context().take()).and_then(|_| {
                    // records polled before a rewind are read again from the rewound position
                    if state.rewinds == rewinds && !msgs.is_empty() {
                        state.handle_batch(&consumer, &msgs)?;
                    }
                    match error {
                        Some(e) => {
                            state.telemetry.consumer_error(&e, "input");
                            crate::kafka::consumer::fatal(&consumer).map_or(Ok(()), |f| Err(RunError::ConsumerFatal(f)))
                        }
                        None => Ok(()),
                    }
                });
                drop(msgs);
                let step = step.and_then(|_| state.reap_commit(&consumer));
                let step = step.and_then(|_| state.poll_partials(&consumer));
                let step = step.and_then(|_| state.check_membership(&consumer));
                let step = step.and_then(|_| state.retry_registry(&consumer));
                let step = step.and_then(|_| {
                    let max_batch = state.isolation.as_ref().map_or(state.cfg.processing.max_batch_events, |iso| iso.batch);
                    if state.batch_events >= max_batch || state.last_commit.elapsed() >= interval {
                        state.commit(&consumer)?;
                        if state.reload.swap(false, Ordering::AcqRel) {
                            state.reload_models();
                        }
                        if state.health.models.take_swap_request() {
                            state.swap_models();
                        }
                    }
                    Ok(())
                });
                state.check_progress(had_input || state.batch_events > 0);
                match step {
                    Ok(()) => {}
                    Err(RunError::Sink(e)) => state.recover(&consumer, e, checkpoint::Phase::Produce)?,
                    Err(e) => return Err(e),
                }
            }
            state.finish_replays(&consumer)?;
            for engine in state.engines.values_mut() {
                engine.force_snapshot(); // the next owner restores without a replay
            }
            state.commit(&consumer)?;
            state.await_commit(&consumer).map(|_| ())
        })();
        if result.is_err() {
            state.health.set_failed();
            if state.sink.in_transaction() {
                let _ = state.sink.abort_transaction();
            }
        }
        state.health.set_ready(false);
        consumer.unsubscribe();
        if let Some(partials) = &state.partials {
            partials.unsubscribe();
        }
        result.map(|_| state.stats)
    }
}

impl Processor {
    /// Counts a keyed record that `topics.partitioner` would have put on another partition.
    fn check_routing(&mut self, key: &[u8], p: i32) {
        let partitioner = self.cfg.topics.partitioner;
        if partitioner == Partitioner::Unchecked {
            return;
        }
        let n = match self.input_partitions {
            Some(n) => n,
            None => {
                let n = admin::partition_count(&self.cfg, &self.cfg.topics.events).ok().flatten().unwrap_or(0);
                self.input_partitions = Some(n);
                n
            }
        };
        if let Some(expected) = partitioner.partition(key, n) {
            if expected != p {
                self.telemetry.misrouted(p, expected, partitioner.name());
            }
        }
    }

    /// Loads the models again (SIGHUP or a change in the models folder) and swaps them in at a
    /// batch boundary. A model that fails to load or validate is rejected; the old ones keep serving.
    fn reload_models(&mut self) {
        if !self.cfg.models.enabled {
            return;
        }
        let loaded = ModelSet::load(&self.cfg.models).and_then(|set| crate::alerts::Policy::check(&self.engine_cfg, set.as_deref()).map(|()| set));
        let candidate = ModelSet::load_candidate(&self.cfg.models).and_then(|set| {
            crate::alerts::Policy::check(&self.engine_cfg, set.as_deref()).map_err(|e| crate::inference::ModelError::Candidate(Box::new(e))).map(|()| set)
        });
        let (set, candidate) = match (loaded, candidate) {
            (Ok(set), Ok(candidate)) => (set, candidate),
            (Err(e), _) | (_, Err(e)) => return self.telemetry.models_rejected(&e.to_string()),
        };
        let mut resets = 0;
        for engine in self.engines.values_mut() {
            match engine.set_models(set.clone(), candidate.clone()) {
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
        self.engine_cfg = self.engine_cfg.clone().with_models(set.clone()).with_candidate(candidate);
        self.models = set;
        self.board.restart();
    }

    /// Swaps the candidate and the active models (`POST /models/promote` or `/rollback`) right
    /// after a commit, so the outputs of each transaction come from one model set: every
    /// partition's outputs switch `model_version` once, at the same input position.
    fn swap_models(&mut self) {
        let (Some(active), Some(candidate)) = (self.models.clone(), self.engine_cfg.candidate.clone()) else {
            return tracing::warn!("a model swap was requested, but there are no candidate models (models.candidate)");
        };
        let mut resets = 0;
        for engine in self.engines.values_mut() {
            resets += engine.promote().unwrap_or(0) as u64;
        }
        self.telemetry.models_swapped(&candidate.version, &active.version, resets);
        self.engine_cfg = self.engine_cfg.clone().with_models(Some(candidate.clone())).with_candidate(Some(active));
        self.models = Some(candidate);
        self.drift = Default::default();
        self.board.restart();
        self.board.swaps += 1;
    }

    /// Merges what the partitions' shadows measured and publishes the comparison.
    fn compare_models(&mut self) {
        let (Some(active), Some(candidate)) = (&self.models, &self.engine_cfg.candidate) else {
            return self.health.models.publish(None);
        };
        let mut open = 0;
        for engine in self.engines.values_mut() {
            if let Some(c) = engine.take_shadow() {
                self.board.add(&c);
            }
            open += engine.shadow_open_predictions() as u64;
        }
        self.board.set_open(open);
        let report = self.board.report(&active.version, &candidate.version);
        self.telemetry.shadow(&report);
        self.health.models.publish(Some(&report));
    }

    fn report_state(&mut self, now_ms: i64, lag: Vec<(i32, i64, i64)>) {
        self.telemetry.consumer_lag(lag.iter().map(|(p, _, l)| (*p, *l)));
        self.watch_positions(&lag);
        self.telemetry.process();
        self.last_state_report = Instant::now();
        let customers = self.engines.values().map(|e| e.customers()).sum();
        let bytes = self.engines.values().map(|e| e.approx_bytes()).sum();
        let lag = self.engines.values().map(|e| e.watermark()).filter(|w| *w > i64::MIN / 4).min().map(|w| now_ms - w);
        let drops = self.engines.values().map(|e| e.windows().dropped_late).sum();
        self.telemetry.state(customers, bytes, self.engines.len(), lag, drops);
        self.telemetry.aggregators_replaying(self.aggregators.values().filter(|a| a.replaying()).count());
    }
}
