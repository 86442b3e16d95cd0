//! A partition whose records need a writer schema the registry cannot serve waits, paused and
//! sought back to that record, until the registry answers again.

use super::*;

impl Processor {
    /// The registry is needed for `msg` and unavailable: pause its partition and seek it back to
    /// `msg`, so nothing is skipped; `retry_registry` resumes it once the schema can be fetched.
    /// Nothing waits in memory: librdkafka stops fetching a paused partition.
    pub(super) fn pause_for_registry(
        &mut self,
        consumer: &BaseConsumer<SignallingContext>,
        msg: &BorrowedMessage<'_>,
        id: u32,
        error: &str,
    ) -> Result<(), RunError> {
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
        self.telemetry.registry_unavailable(
            &format!("writer schema {id}: {error}"),
            self.paused.len(),
            self.registry_retry_at.saturating_duration_since(Instant::now()),
        );
        Ok(())
    }

    /// Tries the registry again (with backoff) for the schemas paused partitions wait for; resumes
    /// them once every one is fetched (or known not to exist: those records go to the DLQ).
    pub(super) fn retry_registry(&mut self, consumer: &BaseConsumer<SignallingContext>) -> Result<(), RunError> {
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

    pub(super) fn registry_recovered(&mut self, resumed: usize) {
        self.registry_backoff.reset();
        self.health.set_registry_down(false);
        self.telemetry.registry_recovered(resumed);
    }
}
