//! The processing loop: poll -> decode -> engine -> produce, and every commit interval: emit
//! changed channel windows, flush outputs, commit offsets (at-least-once: outputs are delivered
//! before the offsets that produced them are committed). The loop owns all state; rebalance
//! callbacks only leave signals for it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::{Message, Offset, TopicPartitionList};

use crate::attribution::aggregate::{partial_key, partials_partition, total_key, ChannelAggregator};
use crate::config::Config;
use crate::engine::{EngineConfig, Output, PartitionEngine};
use crate::event::{self, Channel, InvalidEvent, Validation};
use crate::http::Health;
use crate::kafka::admin::{self, AdminError};
use crate::kafka::consumer::{RebalanceSignal, SignallingContext};
use crate::kafka::sink::{OutRecord, Sink, SinkError};
use crate::kafka::{client_config, Role};
use crate::output::ChannelWindowRecord;
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
}

/// Counts for callers (the demo's summary, tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct RunStats {
    pub events: u64,
    pub invalid: u64,
    pub conversions: u64,
    pub alerts: u64,
    pub commits: u64,
}

pub struct Runner {
    consumer: BaseConsumer<SignallingContext>,
    state: Processor,
}

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
    last_input: HashMap<i32, Instant>,
    partials_partitions: i32,
    buf: Vec<u8>,
    outputs: Vec<Output>,
    windows: Vec<ChannelWindowRecord>,
    batch_events: usize,
    last_commit: Instant,
    last_state_report: Instant,
    pub stats: RunStats,
}

impl Runner {
    /// Connects, subscribes to the events topic and the internal partials topic.
    pub fn new(cfg: Config, health: Arc<Health>, shutdown: Arc<AtomicBool>) -> Result<Runner, RunError> {
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
        let sink = Sink::new(&client_config(&cfg, Role::Producer), Duration::from_secs(60))?;
        let state = Processor {
            engine_cfg: EngineConfig::from_config(&cfg),
            cfg,
            sink,
            telemetry: Telemetry::new(),
            health,
            shutdown,
            engines: HashMap::new(),
            aggregators: HashMap::new(),
            pending: HashMap::new(),
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
                state.apply_signals(consumer.context().take());
                match polled {
                    Some(Ok(msg)) => state.handle(&msg)?,
                    Some(Err(e)) => state.telemetry.consumer_error(&e.to_string()),
                    None => {}
                }
                if state.batch_events >= state.cfg.processing.max_batch_events || state.last_commit.elapsed() >= interval {
                    state.commit(&consumer)?;
                }
            }
            state.commit(&consumer)
        })();
        if result.is_err() {
            state.health.set_failed();
        }
        state.health.set_ready(false);
        consumer.unsubscribe();
        result.map(|_| state.stats)
    }
}

impl Processor {
    fn apply_signals(&mut self, signals: Vec<RebalanceSignal>) {
        for signal in signals {
            match signal {
                RebalanceSignal::Assigned(parts) => {
                    let now = Instant::now();
                    for (topic, p) in &parts {
                        if *topic == self.cfg.topics.events {
                            self.engines.entry(*p).or_insert_with(|| PartitionEngine::new(*p, self.engine_cfg.clone()));
                            self.last_input.insert(*p, now);
                        } else if *topic == self.cfg.topics.channel_partials {
                            self.aggregators.entry(*p).or_insert_with(|| ChannelAggregator::new(self.cfg.attribution.window_retention.ms()));
                        }
                    }
                    self.telemetry.assigned(&parts);
                    self.health.set_ready(true);
                }
                RebalanceSignal::Revoked(parts) => {
                    for (topic, p) in &parts {
                        if *topic == self.cfg.topics.events {
                            self.engines.remove(p);
                            self.pending.remove(p);
                            self.last_input.remove(p);
                        } else if *topic == self.cfg.topics.channel_partials {
                            self.aggregators.remove(p);
                        }
                    }
                    self.telemetry.revoked(&parts);
                }
                RebalanceSignal::Failed(message) => self.telemetry.rebalance_failed(&message),
            }
        }
    }

    fn handle(&mut self, msg: &BorrowedMessage<'_>) -> Result<(), RunError> {
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
        self.batch_events += 1;
        self.pending.insert(p, msg.offset() + 1);
        self.last_input.insert(p, Instant::now());
        let check = Validation { now: wall_clock_ms(), max_future_skew_ms: self.cfg.event_time.max_future_skew.ms() };
        let payload = msg.payload().unwrap_or_default();
        match event::decode(msg.key(), payload, &check) {
            Ok(ev) => {
                let engine = self.engines.entry(p).or_insert_with(|| PartitionEngine::new(p, self.engine_cfg.clone()));
                let processed = engine.process(&ev, &mut self.outputs);
                self.telemetry.event(ev.event_type, processed.late);
                self.stats.events += 1;
                self.ship_outputs()?;
            }
            Err(err) => {
                self.telemetry.invalid(&err, msg.topic(), p, msg.offset());
                self.stats.invalid += 1;
                self.dead_letter(msg, &err)?;
            }
        }
        Ok(())
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
            payload: msg.payload().unwrap_or_default(),
            headers: Some(headers),
        })?;
        Ok(())
    }

    fn ship_outputs(&mut self) -> Result<(), RunError> {
        for out in self.outputs.drain(..) {
            self.buf.clear();
            let (topic, key) = match &out {
                Output::Conversion(c) => {
                    serde_json::to_writer(&mut self.buf, c)?;
                    self.telemetry.conversion();
                    self.stats.conversions += 1;
                    (&self.cfg.topics.conversions, c.customer_id.as_str())
                }
                Output::Alert(a) => {
                    serde_json::to_writer(&mut self.buf, a)?;
                    self.telemetry.alert();
                    self.stats.alerts += 1;
                    (&self.cfg.topics.alerts, a.customer_id.as_str())
                }
            };
            self.sink.send(OutRecord { topic, partition: None, key: Some(key.as_bytes()), payload: &self.buf, headers: None })?;
        }
        Ok(())
    }

    /// Idle watermarks, changed windows and totals, then flush and commit.
    fn commit(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        let started = Instant::now();
        let idle = self.cfg.event_time.idle_timeout.as_duration();
        let now_ms = wall_clock_ms();
        for (p, engine) in self.engines.iter_mut() {
            if self.last_input.get(p).is_some_and(|t| t.elapsed() >= idle) {
                engine.advance_idle(now_ms, &mut self.outputs);
            }
        }
        self.ship_outputs()?;

        for engine in self.engines.values_mut() {
            engine.drain_changed_windows(&mut self.windows);
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
                payload: &self.buf,
                headers: None,
            })?;
        }
        for agg in self.aggregators.values_mut() {
            agg.drain_changed(&mut self.windows);
        }
        self.telemetry.window_updates(self.windows.len());
        for rec in self.windows.drain(..) {
            self.buf.clear();
            serde_json::to_writer(&mut self.buf, &rec)?;
            let key = total_key(rec.window_start, &rec.channel);
            self.sink.send(OutRecord { topic: &self.cfg.topics.channels, partition: None, key: Some(key.as_bytes()), payload: &self.buf, headers: None })?;
        }

        self.sink.flush()?;
        if !self.pending.is_empty() {
            let mut tpl = TopicPartitionList::new();
            for (p, off) in &self.pending {
                tpl.add_partition_offset(&self.cfg.topics.events, *p, Offset::Offset(*off)).map_err(RunError::Commit)?;
            }
            consumer.commit(&tpl, CommitMode::Sync).map_err(RunError::Commit)?;
            self.pending.clear();
            self.stats.commits += 1;
            self.telemetry.committed(self.batch_events, started.elapsed());
        }
        self.batch_events = 0;
        self.last_commit = Instant::now();
        if self.last_state_report.elapsed() >= Duration::from_secs(5) {
            self.report_state(now_ms);
        }
        Ok(())
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
