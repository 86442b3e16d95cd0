//! Partition ownership: rebalance signals applied by the loop, committed offsets read, state
//! restored from the changelog before a partition is processed.

use super::restore_worker::RestoreWorker;
use super::*;

/// A restore attempt with no progress for this long is retried with a new client.
const RESTORE_STALL: Duration = Duration::from_secs(20);
/// A restore that has not read its partitions to the end by then fails the processor.
const RESTORE_DEADLINE: Duration = Duration::from_secs(600);

/// The changelog reader's client: read_committed from the beginning, ends reported, and fetches of
/// up to 16 MB a partition (a restore reads whole partitions; the default 1 MB made one fetch
/// round trip per ~1,500 customer records). Once its local queue is full (64 MB) librdkafka puts
/// off the next fetch by `fetch.queue.backoff.ms`, 1 s by default: the restore drained the queue
/// in half that and waited out the rest, with the machine two-thirds idle; 10 ms keeps it fed.
pub(super) fn restore_client_config(cfg: &Config) -> ClientConfig {
    let mut c = crate::kafka::reader_config(cfg, "restore");
    c.set("enable.partition.eof", "true").set("fetch.wait.max.ms", "20").set("max.partition.fetch.bytes", "16777216").set("fetch.queue.backoff.ms", "10");
    c
}

impl Processor {
    pub(super) fn apply_signals(&mut self, consumer: &BaseConsumer<SignallingContext>, signals: Vec<RebalanceSignal>) -> Result<(), RunError> {
        if !signals.is_empty() {
            // the commit on its way holds offsets of the partitions that may move: answer it first
            self.await_commit(consumer)?;
        }
        for signal in signals {
            match signal {
                RebalanceSignal::Assigned(parts) => {
                    self.telemetry.assigned(&parts);
                    self.health.set_ready(false);
                    let events: Vec<i32> = parts.iter().filter(|(t, _)| *t == self.cfg.topics.events).map(|(_, p)| *p).collect();
                    for (topic, p) in &parts {
                        if *topic == self.cfg.topics.channel_partials {
                            self.aggregators
                                .insert(*p, ChannelAggregator::new(self.cfg.attribution.window_retention.ms(), self.input_partitions.unwrap_or(0) as usize));
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
                    self.assign_erasure()?;
                    if self.sink.in_transaction() || self.batch_events > 0 || !self.outputs.is_empty() {
                        // Work since the last commit may come from the revoked partitions, which
                        // this member can no longer commit: the open transaction, and outputs of
                        // records read while the last commit was on its way (still in memory,
                        // never sent). Sent later, they would repeat what the new owner writes.
                        // Abort, forget both and redo the partitions it keeps.
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
    pub(super) fn load_partitions(&mut self, consumer: &BaseConsumer<SignallingContext>, partitions: &[i32]) -> Result<(), RunError> {
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
    pub(super) fn reload_partitions(&mut self, consumer: &BaseConsumer<SignallingContext>, partitions: &[i32]) -> Result<(), RunError> {
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
        let mut engines = self.restore_partitions(partitions)?;
        self.replay_input(&mut engines)?;
        for engine in engines {
            let p = engine.partition();
            self.telemetry.restored(p, engine.customers(), started.elapsed());
            self.engines.insert(p, engine);
            self.last_input.insert(p, Instant::now());
            self.pending.remove(&p);
        }
        consumer.seek_partitions(seek, CALL_TIMEOUT).map_err(RunError::Consumer)?;
        self.assign_erasure()
    }

    /// Reads changelog partitions to their end (read_committed) into fresh engines. An attempt
    /// that makes no progress for [`RESTORE_STALL`] (no record, no end learnt, no partition done)
    /// is given up: the restore client is replaced (its metadata cache can keep a partition
    /// "unknown" after a broker restart, and then it neither fetches it nor learns its end) and
    /// the partitions are read again from the beginning, within an overall [`RESTORE_DEADLINE`].
    pub(super) fn restore_partitions(&mut self, partitions: &[i32]) -> Result<Vec<PartitionEngine>, RunError> {
        let deadline = Instant::now() + RESTORE_DEADLINE;
        loop {
            if let Some(engines) = self.restore_attempt(partitions, deadline)? {
                return Ok(engines);
            }
            self.telemetry.restore_stalled(partitions.len(), RESTORE_STALL);
            let _ = self.restorer.unassign();
            self.restorer = restore_client_config(&self.cfg).create_with_context(QuietEof).map_err(RunError::Consumer)?;
        }
    }

    /// One pass of [`Self::restore_partitions`]: `None` when it stalled.
    fn restore_attempt(&mut self, partitions: &[i32], deadline: Instant) -> Result<Option<Vec<PartitionEngine>>, RunError> {
        let err = |p: i32, message: String| RunError::Restore { partition: p, message };
        self.restore_attempts += 1;
        let blind = self.faults.restore_blind_at == Some(self.restore_attempts);
        if blind {
            tracing::warn!(attempt = self.restore_attempts, "fault injection: this restore attempt sees nothing");
        }
        let engines: HashMap<i32, PartitionEngine> = partitions.iter().map(|p| (*p, PartitionEngine::new(*p, self.engine_cfg.clone()))).collect();
        let mut worker = RestoreWorker::start(engines).map_err(|e| err(-1, e))?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition_offset(&self.cfg.topics.changelog, *p, Offset::Beginning).map_err(|e| err(*p, e.to_string()))?;
        }
        self.restorer.assign(&tpl).map_err(|e| err(-1, e.to_string()))?;
        // A partition is read when librdkafka reports its end, or when the reader's position
        // reaches the end offset it had when the restore began: the end event is re-armed by every
        // fetch-session reset, so one can be missed around a broker restart.
        let mut open: Vec<i32> = partitions.to_vec();
        let mut ends: HashMap<i32, i64> = HashMap::new();
        let (mut probed, mut checked, mut refreshed) = (None::<Instant>, Instant::now(), None::<Instant>);
        let mut progress = Instant::now();
        while !open.is_empty() {
            let (open_before, ends_before) = (open.len(), ends.len());
            if !blind && ends.len() < partitions.len() && !probed.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
                probed = Some(Instant::now());
                let unknown: Vec<i32> = partitions.iter().copied().filter(|p| !ends.contains_key(p)).collect();
                let mut failed = false;
                for p in &unknown {
                    match self.restorer.fetch_watermarks(&self.cfg.topics.changelog, *p, Duration::from_secs(1)) {
                        Ok((low, high)) => {
                            ends.insert(*p, if low >= high { 0 } else { high });
                        }
                        Err(e) => {
                            failed = true;
                            self.telemetry.consumer_error(&e, "changelog end offset");
                        }
                    }
                }
                if failed && !refreshed.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
                    // a metadata response replaces the client's cached view of the topic
                    refreshed = Some(Instant::now());
                    if let Err(e) = self.restorer.fetch_metadata(Some(&self.cfg.topics.changelog), Duration::from_secs(1)) {
                        self.telemetry.consumer_error(&e, "changelog metadata");
                    }
                }
                open.retain(|p| ends.get(p) != Some(&0));
            }
            let polled = self.restorer.poll(Duration::from_millis(100)).filter(|_| !blind);
            let mut read_to = None;
            match polled {
                Some(Ok(m)) => {
                    let p = m.partition();
                    if partitions.contains(&p) {
                        if worker.push(p, m.key().unwrap_or_default(), m.payload()).is_err() {
                            // the worker stopped on a record it could not restore: it says which
                            break;
                        }
                        self.stats.restored_records += 1;
                    }
                    read_to = Some((p, m.offset() + 1));
                    progress = Instant::now();
                }
                Some(Err(KafkaError::PartitionEOF(p))) => open.retain(|x| *x != p),
                Some(Err(e)) => self.telemetry.consumer_error(&e, "changelog restore"),
                None if Instant::now() > deadline => return Err(err(open[0], format!("no end of the changelog within {} s", RESTORE_DEADLINE.as_secs()))),
                None => {}
            }
            if let Some((p, next)) = read_to {
                if ends.get(&p).is_some_and(|end| next >= *end) {
                    open.retain(|x| *x != p);
                }
            }
            if checked.elapsed() >= Duration::from_millis(100) && !ends.is_empty() {
                // transaction markers are never handed over as messages: positions move past them
                checked = Instant::now();
                let positions = self.restorer.position().map_err(|e| err(-1, e.to_string()))?;
                for e in positions.elements() {
                    if let (Offset::Offset(o), Some(end)) = (e.offset(), ends.get(&e.partition())) {
                        if o >= *end {
                            open.retain(|x| *x != e.partition());
                        }
                    }
                }
            }
            if open.len() < open_before || ends.len() > ends_before {
                progress = Instant::now();
            } else if !open.is_empty() && progress.elapsed() >= RESTORE_STALL {
                return Ok(None);
            }
        }
        let engines = worker.finish().map_err(|(p, message)| err(p, message))?;
        self.restorer.unassign().map_err(|e| err(-1, e.to_string()))?;
        Ok(Some(
            engines
                .into_values()
                .map(|mut e| {
                    e.finish_restore();
                    e
                })
                .collect(),
        ))
    }
}

/// Channel aggregators: their partials partitions read into them, and replayed to the end on a
/// clean stop.
impl Processor {
    /// Reads what the partials consumer has (up to a bound per loop turn) into the aggregators,
    /// after applying its rebalance signals.
    pub(super) fn poll_partials(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        self.probe_replay_ends();
        for _ in 0..1000 {
            let Some(partials) = &self.partials else { return Ok(()) };
            let polled = partials.poll(Duration::ZERO).map(|r| r.map(|m| m.detach()));
            let signals = partials.context().take();
            self.apply_signals(consumer, signals)?;
            match polled {
                None => break,
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    if let Some(agg) = self.aggregators.get_mut(&p) {
                        agg.caught_up();
                    }
                }
                Some(Err(e)) => {
                    self.telemetry.consumer_error(&e, "partials");
                    // fenced as a static member (its group is `<group_id>-partials`), it would
                    // never be assigned its partitions again: stop like the input consumer does
                    if let Some(fatal) = self.partials.as_ref().and_then(crate::kafka::consumer::fatal) {
                        return Err(RunError::ConsumerFatal(format!("partials consumer: {fatal}")));
                    }
                }
                Some(Ok(msg)) => {
                    let (p, offset) = (msg.partition(), msg.offset());
                    let agg = self
                        .aggregators
                        .entry(p)
                        .or_insert_with(|| ChannelAggregator::new(self.cfg.attribution.window_retention.ms(), self.input_partitions.unwrap_or(0) as usize));
                    agg.reached(offset + 1);
                    match serde_json::from_slice::<ChannelWindowRecord>(msg.payload().unwrap_or_default()) {
                        Ok(rec) if agg.apply(&rec) => {}
                        Ok(_) => self.telemetry.bad_partial(p, offset, "not a partial"),
                        Err(e) => self.telemetry.bad_partial(p, offset, &e.to_string()),
                    }
                }
            }
        }
        self.replay_positions();
        Ok(())
    }

    /// Records, for aggregators that start a replay, their partition's end (high watermark):
    /// the replay is over when the reader gets there, whether or not librdkafka reports the end.
    /// Asked at most every 200 ms (a broker call; it fails while the broker is away).
    fn probe_replay_ends(&mut self) {
        let Some(partials) = &self.partials else { return };
        if self.replay_probed.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) || !self.aggregators.values().any(ChannelAggregator::needs_replay_end) {
            return;
        }
        self.replay_probed = Some(Instant::now());
        for (p, agg) in self.aggregators.iter_mut().filter(|(_, a)| a.needs_replay_end()) {
            match partials.fetch_watermarks(&self.cfg.topics.channel_partials, *p, Duration::from_secs(1)) {
                Ok((_, high)) => agg.replay_until(high),
                Err(e) => self.telemetry.consumer_error(&e, "partials end offset"),
            }
        }
    }

    /// Feeds the reader's positions to replaying aggregators: read_committed positions move past
    /// transaction markers, which are never handed to the loop as messages.
    fn replay_positions(&mut self) {
        let Some(partials) = &self.partials else { return };
        if !self.aggregators.values().any(ChannelAggregator::replaying) {
            return;
        }
        let Ok(positions) = partials.position() else { return };
        for e in positions.elements_for_topic(&self.cfg.topics.channel_partials) {
            if let (Offset::Offset(o), Some(agg)) = (e.offset(), self.aggregators.get_mut(&e.partition())) {
                agg.reached(o);
            }
        }
    }

    /// Stops the replica when a consumer's partitions were revoked and nothing was assigned for
    /// three session timeouts (at least 30 s): see [`SignallingContext::unassigned_for`].
    pub(super) fn check_membership(&self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        let session = self.cfg.kafka.consumer.get("session.timeout.ms").and_then(|v| v.parse::<u64>().ok()).unwrap_or(45_000);
        let bound = Duration::from_millis(session * 3).max(Duration::from_secs(30));
        let waiting = [Some(consumer.context()), self.partials.as_ref().map(|p| p.context())];
        for (name, ctx) in ["input", "partials"].into_iter().zip(waiting) {
            if let Some(waited) = ctx.and_then(|c| c.unassigned_for()).filter(|w| *w > bound) {
                return Err(RunError::ConsumerFatal(format!(
                    "the {name} consumer has had no assignment for {} s since its partitions were revoked (a static member's lost session, librdkafka#3437): stopping so that a fresh member rejoins",
                    waited.as_secs()
                )));
            }
        }
        Ok(())
    }

    /// On a clean stop: lets aggregators still replaying their partials partition read it to the
    /// end (at most 10 s), so that the last commit writes their totals.
    pub(super) fn finish_replays(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.aggregators.values().any(ChannelAggregator::replaying) && Instant::now() < deadline {
            self.poll_partials(consumer)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }
}
