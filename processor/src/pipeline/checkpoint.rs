//! THE exactly-once invariant lives here: a batch's outputs, changelog records and input offsets
//! commit in one Kafka transaction, or none of them do and the loop rewinds to the last commit
//! (state reloaded from the changelog and the input replayed from its snapshot to the committed
//! offsets, consumer back to those offsets). A commit writes a partition's changelog records only
//! when it is a snapshot of that partition (snapshots.rs says which), with the input offset it
//! commits. `recover` is the one mapping from a transactional error class to what the
//! loop does about it.
//!
//! The commit of transaction N runs on a thread of its own (`Sink::start_commit`) while the loop
//! reads and computes the next batch; nothing of that batch is sent before N committed
//! (`await_commit`): its outputs wait in memory and transaction N+1 begins only after N's answer.
//! If N fails, the rewind forgets that batch with everything else since the last commit.

use super::*;

/// A transaction whose commit is on its way: the batch it holds.
pub(super) struct InFlight {
    /// Next offset per input partition: what the transaction commits.
    offsets: HashMap<i32, i64>,
    events: usize,
    /// Time the loop spent on this commit before handing it over.
    foreground: Duration,
}

/// Where a transactional call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Phase {
    /// Sending a record inside the open transaction.
    Produce,
    /// Committing the transaction (outputs + offsets).
    Commit,
    /// Aborting it.
    Abort,
}

impl Phase {
    fn why(self) -> &'static str {
        match self {
            Phase::Produce => "produce failed",
            Phase::Commit => "commit failed",
            Phase::Abort => "abort failed",
        }
    }
}

/// What the loop does about a failed transactional call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recovery {
    /// Abort the transaction, rewind to the last commit and redo the batch.
    Redo,
    /// Replace the producer (its init aborts what the old one left open), then rewind.
    Replace,
    /// Another instance owns the transactional id: stop.
    Stop,
    /// Not a transactional error: give up.
    Fail,
}

/// The bytes of key and value a customer's changelog record may have, when some customer could
/// exceed them (then every commit checks the customers it changed, `note_changes`); None when no
/// customer can: the limits on input (`limits.*`, `journey.max_touchpoints`, `journey.dedupe_ids`)
/// bound every record, numbers at their widest varints, with 64 KB for the models' state.
pub(super) fn changelog_size_check(cfg: &Config, topic_limit: Option<usize>) -> Option<usize> {
    let field = cfg.limits.max_field_bytes;
    let widest =
        1024 + 65_536 + 6 * field + cfg.journey.max_touchpoints * (2 * field + 64) + cfg.limits.max_cart_lines * (field + 32) + cfg.journey.dedupe_ids * 10;
    let limit = topic_limit?.saturating_sub(crate::kafka::sink::RECORD_OVERHEAD);
    (widest > limit).then_some(limit)
}

/// The one mapping from a transactional error class to the loop's action. `too_large`: a record
/// of the batch was refused for its size (the redo then isolates it, see `poison`).
pub(super) fn recovery(class: Option<TxnClass>, phase: Phase, too_large: bool) -> Recovery {
    match (class, phase) {
        (Some(TxnClass::Fenced), _) => Recovery::Stop,
        (Some(TxnClass::Fatal), _) => Recovery::Replace,
        // A producer that cannot even abort is replaced: the new one's init aborts the transaction.
        (_, Phase::Abort) => Recovery::Replace,
        (Some(TxnClass::Abort | TxnClass::Retry), _) => Recovery::Redo,
        // At least once: a delivery refused for its size is redone (and isolated) too.
        (None, _) if too_large => Recovery::Redo,
        (None, _) => Recovery::Fail,
    }
}

impl Processor {
    /// Acts on a failed transactional call as `recovery` says.
    pub(super) fn recover(&mut self, consumer: &BaseConsumer<SignallingContext>, e: SinkError, phase: Phase) -> Result<(), RunError> {
        let too_large = self.sink.take_size_failure();
        match recovery(e.class(), phase, too_large) {
            Recovery::Redo => {
                tracing::warn!(error = %e, "{}; aborting the transaction and redoing the batch", phase.why());
                if too_large {
                    self.isolate_oversize();
                }
                self.abort_and_rewind(consumer, phase.why())
            }
            Recovery::Replace => self.recreate_producer(consumer, &e),
            Recovery::Stop => Err(RunError::Fenced(self.cfg.kafka.effective_transactional_id())),
            Recovery::Fail => Err(e.into()),
        }
    }

    /// Aborts the open transaction and goes back to the last commit: every kept partition's state
    /// is reloaded from the changelog and its consumer position reset to the committed offset;
    /// aggregators re-read the partials topic.
    pub(super) fn abort_and_rewind(&mut self, consumer: &BaseConsumer<SignallingContext>, why: &str) -> Result<(), RunError> {
        if !self.await_commit(consumer)? {
            return Ok(()); // the commit on its way failed: already back at the last commit
        }
        if !self.sink.in_transaction() {
            self.telemetry.rewound(why);
            return self.rewind(consumer);
        }
        if let Err(e) = self.sink.abort_transaction() {
            return self.recover(consumer, e, Phase::Abort);
        }
        self.stats.aborts += 1;
        self.telemetry.aborted(why);
        self.rewind(consumer)
    }

    /// A fatal producer error: replace the producer (its `init_transactions` aborts whatever the
    /// old one left open) and go back to the last commit. At most 3 times in 10 minutes; then stop.
    pub(super) fn recreate_producer(&mut self, consumer: &BaseConsumer<SignallingContext>, cause: &SinkError) -> Result<(), RunError> {
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
        self.sink.set_limits(self.record_limits.clone());
        self.rewind(consumer)
    }

    /// Forgets everything since the last commit: buffers, state (reloaded from the changelog),
    /// consumer positions (back to the committed offsets), channel aggregators (re-read).
    pub(super) fn rewind(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        self.rewinds += 1;
        self.snapshots.rewound();
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
                *agg = ChannelAggregator::new(self.cfg.attribution.window_retention.ms(), self.input_partitions.unwrap_or(0) as usize);
            }
            if let Some(partials) = &self.partials {
                partials.seek_partitions(tpl, CALL_TIMEOUT).map_err(RunError::Consumer)?;
            }
        }
        Ok(())
    }

    /// Waits for the answer of the commit on its way, if any: Ok(true) when it committed (or none
    /// was on its way), Ok(false) when it failed and the loop went back to the last commit.
    pub(super) fn await_commit(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<bool, RunError> {
        let Some(result) = self.sink.finish_commit() else { return Ok(true) };
        let flight = self.in_flight.take().expect("a commit on its way has its batch");
        match result {
            Ok(took) => {
                self.after_commit(flight.offsets, flight.events, flight.foreground, Some(took));
                Ok(true)
            }
            Err(e) => {
                // the failed batch, as `recover` (and the isolation of an oversize record) expects
                self.pending = flight.offsets;
                self.batch_events = flight.events;
                self.recover(consumer, e, Phase::Commit)?;
                Ok(false)
            }
        }
    }

    /// Settles the commit on its way if its answer is there (never waits).
    pub(super) fn reap_commit(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        if self.sink.commit_answered() {
            self.await_commit(consumer)?;
        }
        Ok(())
    }

    /// Idle watermarks, changed windows and totals, then flush and start the commit (answered
    /// by `await_commit`, at the latest when the next commit begins).
    pub(super) fn commit(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
        if !self.await_commit(consumer)? {
            // the last transaction failed: the loop went back to the commit before it
            self.last_commit = Instant::now();
            return Ok(());
        }
        let started = Instant::now();
        let idle = self.cfg.event_time.idle_timeout.as_duration();
        let now_ms = wall_clock_ms();
        for (p, engine) in self.engines.iter_mut() {
            // A partition paused for the registry is not idle: its input is waiting.
            if self.last_input.get(p).is_some_and(|t| t.elapsed() >= idle) && !self.paused.contains_key(p) {
                engine.advance_idle(now_ms, &mut self.outputs);
            }
            engine.settle(&mut self.outputs);
        }
        let mut phases = [Duration::ZERO; 5];
        phases[0] = started.elapsed();
        self.apply_erasures()?;
        self.ship_outputs()?;
        phases[1] = started.elapsed();

        for engine in self.engines.values_mut() {
            let stats = engine.take_scoring_stats(&mut self.durations);
            self.telemetry.inference(&stats, &self.durations);
            engine.take_drift(&mut self.drift);
        }
        if let Some(spec) = self.models.as_ref().and_then(|m| m.step.drift.as_ref()) {
            self.telemetry.drift(&mut self.drift, spec, &mut self.drift_psi);
        }
        self.compare_models();
        self.ship_score_tombstones()?;
        if self.cfg.scores.enabled {
            self.ship_scores()?;
        }
        // Snapshots: a partition's changes since its last snapshot, with the input offset this
        // transaction commits, at least every `processing.snapshot_interval` (the partitions spread
        // over it, snapshots.rs); sooner when a replay of its input would not redo what happened
        // (`snapshot_due`, a dead letter, a stop).
        phases[2] = started.elapsed();
        let (mut snapshotted, mut encoding, mut records) = (0, Duration::ZERO, 0);
        self.snapshots.plan(self.engines.keys().copied(), started);
        let max_record = changelog_size_check(&self.cfg, self.record_limits.get(&self.cfg.topics.changelog).copied());
        let threads = self.threads;
        for (p, engine) in self.engines.iter_mut() {
            let from = self.windows.len();
            engine.drain_changed_windows(&mut self.windows);
            engine.note_changes(&self.windows[from..], max_record, &mut self.changelog)?;
            let timed = self.snapshots.timed(*p, started);
            if timed || engine.snapshot_due() {
                let offset = self.pending.get(p).copied().or(self.committed.get(p).copied().flatten());
                let t = Instant::now();
                engine.drain_snapshot_with(offset, &mut self.changelog, |customers, out| snapshots::encode(threads, customers, out))?;
                encoding += t.elapsed();
                snapshotted += 1;
                if timed {
                    self.snapshots.taken(*p, started);
                }
            }
            records += self.changelog.len();
            for entry in self.changelog.drain(..) {
                self.writer.raw(&mut self.sink, Kind::Changelog, Some(*p), &entry.key, entry.value.as_deref())?;
            }
        }
        phases[3] = started.elapsed();
        for rec in self.windows.drain(..) {
            let channel = Channel::from_wire(&rec.channel).unwrap_or(Channel::Other);
            let src = rec.source_partition.unwrap_or_default();
            let partition = Some(partials_partition(rec.window_start, channel, self.partials_partitions));
            self.writer.record(&mut self.sink, Kind::ChannelPartials, partition, &partial_key(rec.window_start, channel, src), &rec)?;
        }
        for agg in self.aggregators.values_mut() {
            agg.drain_changed(&mut self.windows);
        }
        self.telemetry.window_updates(self.windows.len());
        for rec in self.windows.drain(..) {
            self.writer.record(&mut self.sink, Kind::Channels, None, &total_key(rec.window_start, &rec.channel), &rec)?;
        }

        phases[4] = started.elapsed();
        self.telemetry.commit_phases(&phases, snapshotted, encoding, records);
        let mut tpl = TopicPartitionList::new();
        for (p, off) in &self.pending {
            tpl.add_partition_offset(&self.cfg.topics.events, *p, Offset::Offset(*off)).map_err(RunError::Commit)?;
        }
        if self.sink.is_transactional() {
            if self.sink.in_transaction() || !self.pending.is_empty() {
                self.transactions += 1;
                if self.faults.fatal_at == Some(self.transactions) {
                    tracing::warn!("fault injection: fatal producer error");
                    self.sink.inject_fatal_error();
                }
                if self.faults.abort_now(!self.pending.is_empty()) {
                    self.sink.flush()?;
                    return self.abort_and_rewind(consumer, "fault injection");
                }
                let group = consumer.group_metadata().ok_or_else(|| RunError::Consumer(KafkaError::NoMessageReceived))?;
                if let Err(e) = self.sink.start_commit(tpl, group, self.faults.commit_delay) {
                    return self.recover(consumer, e, Phase::Commit);
                }
                let offsets = std::mem::take(&mut self.pending);
                self.in_flight = Some(InFlight { offsets, events: self.batch_events, foreground: started.elapsed() });
                if !self.cfg.processing.overlap_commit {
                    self.batch_events = 0;
                    self.await_commit(consumer)?;
                }
            }
        } else {
            self.sink.flush()?;
            if !self.pending.is_empty() {
                consumer.commit(&tpl, CommitMode::Sync).map_err(RunError::Commit)?;
                let offsets = std::mem::take(&mut self.pending);
                self.after_commit(offsets, self.batch_events, started.elapsed(), None);
            }
        }
        self.batch_events = 0;
        self.last_commit = Instant::now();
        if self.last_state_report.elapsed() >= Duration::from_secs(5) {
            self.report_state(now_ms, crate::kafka::consumer::lag(consumer, &self.cfg.topics.events));
        }
        Ok(())
    }

    /// A batch committed: `offsets` are where a rewind now goes back to.
    pub(super) fn after_commit(&mut self, offsets: HashMap<i32, i64>, events: usize, took: Duration, transaction: Option<Duration>) {
        for (p, off) in offsets {
            self.committed.insert(p, Some(off));
        }
        self.snapshots.committed();
        self.stats.commits += 1;
        self.telemetry.committed(events, took, transaction);
        self.last_progress = Instant::now();
        self.isolation_progress();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn customers_are_checked_against_the_changelog_limit_only_when_the_input_limits_allow_a_larger_record() {
        let cfg = Config::defaults();
        assert_eq!(changelog_size_check(&cfg, Some(1_048_588)), None, "the defaults bound a record far below 1 MB");
        assert_eq!(changelog_size_check(&cfg, None), None);
        assert_eq!(changelog_size_check(&cfg, Some(1_500)), Some(1_500 - crate::kafka::sink::RECORD_OVERHEAD));
    }

    #[test]
    fn every_error_class_has_one_action_per_phase() {
        use Phase::*;
        use Recovery::*;
        let table = [
            (Some(TxnClass::Retry), [Redo, Redo, Replace]),
            (Some(TxnClass::Abort), [Redo, Redo, Replace]),
            (Some(TxnClass::Fenced), [Stop, Stop, Stop]),
            (Some(TxnClass::Fatal), [Replace, Replace, Replace]),
            (None, [Fail, Fail, Replace]),
        ];
        for (class, actions) in table {
            for (phase, want) in [Produce, Commit, Abort].into_iter().zip(actions) {
                assert_eq!(recovery(class, phase, false), want, "{class:?} during {phase:?}");
                let sized = if want == Fail { Redo } else { want };
                assert_eq!(recovery(class, phase, true), sized, "{class:?} during {phase:?}, too large");
            }
        }
    }
}
