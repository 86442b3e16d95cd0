//! Partition ownership: rebalance signals applied by the loop, committed offsets read, state
//! restored from the changelog before a partition is processed.

use super::*;

impl Processor {
    pub(super) fn apply_signals(&mut self, consumer: &BaseConsumer<SignallingContext>, signals: Vec<RebalanceSignal>) -> Result<(), RunError> {
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
        for engine in self.restore_partitions(partitions)? {
            let p = engine.partition();
            self.telemetry.restored(p, engine.customers(), started.elapsed());
            self.engines.insert(p, engine);
            self.last_input.insert(p, Instant::now());
            self.pending.remove(&p);
        }
        consumer.seek_partitions(seek, CALL_TIMEOUT).map_err(RunError::Consumer)?;
        self.assign_erasure()
    }

    /// Reads changelog partitions to their end (read_committed) into fresh engines.
    pub(super) fn restore_partitions(&mut self, partitions: &[i32]) -> Result<Vec<PartitionEngine>, RunError> {
        let err = |p: i32, message: String| RunError::Restore { partition: p, message };
        let mut engines: HashMap<i32, PartitionEngine> = partitions.iter().map(|p| (*p, PartitionEngine::new(*p, self.engine_cfg.clone()))).collect();
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
                Some(Err(e)) => self.telemetry.consumer_error(&e, "changelog restore"),
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
}

/// Channel aggregators: their partials partitions read into them, and replayed to the end on a
/// clean stop.
impl Processor {
    /// Reads what the partials consumer has (up to a bound per loop turn) into the aggregators,
    /// after applying its rebalance signals.
    pub(super) fn poll_partials(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
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
                Some(Err(e)) => self.telemetry.consumer_error(&e, "partials"),
                Some(Ok(msg)) => {
                    let (p, offset) = (msg.partition(), msg.offset());
                    let agg = self
                        .aggregators
                        .entry(p)
                        .or_insert_with(|| ChannelAggregator::new(self.cfg.attribution.window_retention.ms(), self.input_partitions.unwrap_or(0) as usize));
                    match serde_json::from_slice::<ChannelWindowRecord>(msg.payload().unwrap_or_default()) {
                        Ok(rec) if agg.apply(&rec) => {}
                        Ok(_) => self.telemetry.bad_partial(p, offset, "not a partial"),
                        Err(e) => self.telemetry.bad_partial(p, offset, &e.to_string()),
                    }
                }
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
