//! One poll's worth of input records, handled in three steps:
//!
//! 1. on the loop's thread, in poll order: pauses and isolation, decoding and validation,
//!    positions, dead letters of what does not decode;
//! 2. the engines, one job per input partition with the partition's events in order, spread over
//!    `processing.threads` (fanout.rs);
//! 3. on the loop's thread, in poll order again: per event its telemetry, dead letters (repeats,
//!    an open cart over its line limit) and its outputs, sent one event at a time as before (an
//!    output the broker refuses for its size names the input record that produced it).
//!
//! Per partition this is the order of a record-at-a-time loop, so every output and every state
//! is the same; only the order of records of different partitions in the transaction differs.

use super::*;
use crate::engine::Processed;
use crate::event::Event;

/// At most this many records per batch (and never past `processing.max_batch_events`).
pub(super) const POLL_BATCH: usize = 8192;

/// Below this many events a batch runs on the loop's thread alone: starting threads would cost
/// more than they save.
const PARALLEL_MIN_EVENTS: usize = 64;

/// What the engine made of one event.
enum Done {
    Processed {
        processed: Processed,
        outputs: usize,
    },
    /// The event would grow its customer's open cart past `limits.max_cart_lines`.
    Invalid(InvalidEvent),
}

/// One partition's decoded events of the batch: (index in the batch, event).
type PartitionWork<'m> = (i32, Vec<(usize, Event<'m>)>);

/// An engine and its partition's events, weighted by their number (fanout.rs).
type EngineJob<'e, 'm> = (usize, (&'e mut PartitionEngine, &'e [(usize, Event<'m>)]));

/// Gathers up to `cap` records: the first waits up to `timeout`, the rest only take what is
/// already fetched. Stops at an error (returned beside the records, handled after them) and when
/// a rebalance signal is waiting (the loop applies it before handling the records, as it always has).
pub(super) fn poll_batch<'c>(consumer: &'c BaseConsumer<SignallingContext>, timeout: Duration, cap: usize) -> (Vec<BorrowedMessage<'c>>, Option<KafkaError>) {
    let mut batch = Vec::new();
    let mut wait = timeout;
    while batch.len() < cap {
        match consumer.poll(wait) {
            Some(Ok(msg)) => batch.push(msg),
            Some(Err(e)) => return (batch, Some(e)),
            None => break,
        }
        if consumer.context().pending() {
            break;
        }
        wait = Duration::ZERO;
    }
    (batch, None)
}

impl Processor {
    pub(super) fn handle_batch(&mut self, consumer: &BaseConsumer<SignallingContext>, msgs: &[BorrowedMessage<'_>]) -> Result<(), RunError> {
        let rewinds = self.rewinds;
        let mut work: Vec<PartitionWork<'_>> = Vec::new();
        // the partition slot (index in `work`) of each decoded event, in poll order
        let mut order: Vec<usize> = Vec::with_capacity(msgs.len());
        for (i, msg) in msgs.iter().enumerate() {
            if let Some(ev) = self.decode(consumer, msg)? {
                let p = msg.partition();
                let slot = match work.iter().position(|(q, _)| *q == p) {
                    Some(slot) => slot,
                    None => {
                        work.push((p, Vec::new()));
                        work.len() - 1
                    }
                };
                work[slot].1.push((i, ev));
                order.push(slot);
            }
            if self.rewinds != rewinds {
                // a dead letter waited for a commit that failed: the loop went back to the last
                // commit and reads these records again
                return Ok(());
            }
        }
        if order.is_empty() {
            return Ok(());
        }
        let results = self.run_engines(&work, order.len());
        self.finish_batch(consumer, msgs, &work, &order, results, rewinds)
    }

    /// Step 1 for one record: `Some(event)` when it goes to its engine; dead letters and pauses
    /// for the rest.
    fn decode<'m>(&mut self, consumer: &BaseConsumer<SignallingContext>, msg: &'m BorrowedMessage<'_>) -> Result<Option<Event<'m>>, RunError> {
        let p = msg.partition();
        if self.paused.contains_key(&p) {
            // Fetched before the pause took effect: it is read again after the resume.
            return Ok(None);
        }
        if let Some(key) = msg.key() {
            self.check_routing(key, p);
        }
        if self.is_isolated(p, msg.offset()) {
            self.batch_events += 1;
            self.pending.insert(p, msg.offset() + 1);
            let err = InvalidEvent::OutputTooLarge;
            self.telemetry.invalid(&err, msg.topic(), p, msg.offset());
            self.stats.invalid += 1;
            self.dead_letter(consumer, msg, &err)?;
            return Ok(None);
        }
        let decoded = self.decode_record(msg.key(), msg.payload().unwrap_or_default());
        if let Some(d) = &self.avro {
            if d.fetches != self.schema_fetches {
                self.telemetry.schema_fetched(d.fetches - self.schema_fetches);
                self.schema_fetches = d.fetches;
            }
        }
        let ev = match decoded {
            Err(DecodeError::Unavailable { id, error }) => {
                self.pause_for_registry(consumer, msg, id, &error)?;
                return Ok(None);
            }
            Ok(ev) => ev,
            Err(DecodeError::Invalid(err)) => {
                self.count_input(p, msg.offset());
                self.telemetry.invalid(&err, msg.topic(), p, msg.offset());
                self.stats.invalid += 1;
                self.dead_letter(consumer, msg, &err)?;
                return Ok(None);
            }
        };
        self.count_input(p, msg.offset());
        Ok(Some(ev))
    }

    /// Decodes and validates one input record: its size, its contents, its fields' sizes.
    pub(super) fn decode_record<'m>(&mut self, key: Option<&'m [u8]>, payload: &'m [u8]) -> Result<Event<'m>, DecodeError> {
        let check = Validation { now: wall_clock_ms(), max_future_skew_ms: self.cfg.event_time.max_future_skew.ms() };
        let decoded = match poison::oversize_record(key, payload, self.cfg.limits.max_record_bytes) {
            Some(err) => Err(DecodeError::Invalid(err)),
            None => crate::codec::decode_input(self.input_format, self.avro.as_mut(), key, payload, &check),
        };
        let max_field = self.cfg.limits.max_field_bytes;
        decoded.and_then(|ev| match poison::oversize_field(&ev, max_field) {
            Some(err) => Err(DecodeError::Invalid(err)),
            None => Ok(ev),
        })
    }

    fn count_input(&mut self, p: i32, offset: i64) {
        self.batch_events += 1;
        self.pending.insert(p, offset + 1);
        self.last_input.insert(p, Instant::now());
    }

    /// Step 2: each partition's events through its engine; per partition, what became of each
    /// event and the outputs, in order.
    fn run_engines(&mut self, work: &[PartitionWork<'_>], events: usize) -> Vec<(Vec<Done>, Vec<Output>)> {
        for (p, _) in work {
            if !self.engines.contains_key(p) {
                self.engines.insert(*p, PartitionEngine::new(*p, self.engine_cfg.clone()));
            }
        }
        let max_lines = self.cfg.limits.max_cart_lines;
        let mut jobs: Vec<EngineJob<'_, '_>> = Vec::with_capacity(work.len());
        let mut engines: Vec<(i32, &mut PartitionEngine)> = self.engines.iter_mut().map(|(p, e)| (*p, e)).collect();
        for (p, items) in work {
            let at = engines.iter().position(|(q, _)| q == p).expect("an engine per partition of the batch");
            let (_, engine) = engines.swap_remove(at);
            jobs.push((items.len(), (engine, items.as_slice())));
        }
        let threads = if events >= PARALLEL_MIN_EVENTS { self.threads } else { 1 };
        fanout::fan_out(threads, jobs, |(engine, items)| {
            let mut outputs = Vec::new();
            let done = items
                .iter()
                .map(|(_, ev)| match poison::oversize_cart(Some(engine), ev, max_lines) {
                    Some(err) => Done::Invalid(err),
                    None => {
                        let before = outputs.len();
                        let processed = engine.process(ev, &mut outputs);
                        Done::Processed { processed, outputs: outputs.len() - before }
                    }
                })
                .collect();
            (done, outputs)
        })
    }

    /// Step 3: telemetry, dead letters and outputs of each event, in poll order.
    fn finish_batch(
        &mut self,
        consumer: &BaseConsumer<SignallingContext>,
        msgs: &[BorrowedMessage<'_>],
        work: &[PartitionWork<'_>],
        order: &[usize],
        results: Vec<(Vec<Done>, Vec<Output>)>,
        rewinds: u64,
    ) -> Result<(), RunError> {
        let mut cursors: Vec<(std::vec::IntoIter<Done>, std::vec::IntoIter<Output>, usize)> =
            results.into_iter().map(|(done, outputs)| (done.into_iter(), outputs.into_iter(), 0)).collect();
        for &slot in order {
            let (done, outputs, next) = &mut cursors[slot];
            let (i, ev) = &work[slot].1[*next];
            *next += 1;
            let msg = &msgs[*i];
            let (p, offset) = (msg.partition(), msg.offset());
            match done.next().expect("one result per event") {
                Done::Invalid(err) => {
                    self.telemetry.invalid(&err, msg.topic(), p, offset);
                    self.stats.invalid += 1;
                    self.dead_letter(consumer, msg, &err)?;
                }
                Done::Processed { processed, outputs: n } => {
                    if !self.sink.committing() && !self.outputs.is_empty() {
                        // outputs of records read while the last transaction committed
                        self.ship_outputs()?;
                    }
                    self.outputs.extend(outputs.by_ref().take(n));
                    if processed.duplicate {
                        self.telemetry.duplicate();
                        self.stats.duplicates += 1;
                        if self.cfg.journey.dead_letter_duplicates {
                            self.dead_letter(consumer, msg, &InvalidEvent::Duplicate(poison::truncate_reason(&ev.event_id, 128).into_owned()))?;
                        }
                    } else {
                        self.telemetry.event(ev.event_type, processed.late);
                        self.stats.events += 1;
                    }
                    // while the last transaction commits, outputs wait (checkpoint.rs)
                    if !self.sink.committing() {
                        if let Err(e) = self.ship_outputs() {
                            if matches!(e, RunError::Sink(SinkError::TooLarge { .. })) {
                                // This record's own output is too large: it is the one to isolate.
                                self.oversize_source = Some((p, offset));
                            }
                            return Err(e);
                        }
                    }
                }
            }
            if self.rewinds != rewinds {
                return Ok(());
            }
        }
        Ok(())
    }
}
