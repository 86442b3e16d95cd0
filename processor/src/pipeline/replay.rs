//! The second half of a restore. A partition's changelog holds its state as of its last
//! snapshot (`input_offset` in the meta record); the transactions since committed outputs and
//! input offsets only. Here the input from the snapshot's offset to the committed offset is run
//! through the restored engine again and what it makes for the topics is dropped: it was
//! committed with those offsets. Then the partition is where its last commit left it.

use super::*;
use crate::kafka::consumer::QuietEof;

/// A replay that has not reached its partitions' committed offsets by then fails the processor.
const REPLAY_DEADLINE: Duration = Duration::from_secs(600);

impl Processor {
    /// Replays, into restored engines, the input between their snapshot and the committed offset.
    pub(super) fn replay_input(&mut self, engines: &mut [PartitionEngine]) -> Result<(), RunError> {
        let err = |p: i32, message: String| RunError::Restore { partition: p, message };
        // partition -> (index of its engine, next offset to replay, committed offset)
        let mut open: HashMap<i32, (usize, i64, i64)> = HashMap::new();
        for (i, engine) in engines.iter().enumerate() {
            let p = engine.partition();
            if let (Some(from), Some(Some(to))) = (engine.snapshot_offset(), self.committed.get(&p).copied()) {
                if from < to {
                    open.insert(p, (i, from, to));
                }
            }
        }
        if open.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut tpl = TopicPartitionList::new();
        for (p, (_, from, _)) in &open {
            tpl.add_partition_offset(&self.cfg.topics.events, *p, Offset::Offset(*from)).map_err(|e| err(*p, e.to_string()))?;
            if let Ok((low, _)) = self.restorer.fetch_watermarks(&self.cfg.topics.events, *p, Duration::from_secs(5)) {
                if low > *from {
                    self.telemetry.replay_gap(*p, *from, low);
                }
            }
        }
        let reader: BaseConsumer<QuietEof> = restore::restore_client_config(&self.cfg).create_with_context(QuietEof).map_err(RunError::Consumer)?;
        reader.assign(&tpl).map_err(|e| err(-1, e.to_string()))?;
        let replayed = open.iter().map(|(p, (i, ..))| (*p, *i)).collect::<Vec<_>>();
        let (max_lines, deadline) = (self.cfg.limits.max_cart_lines, started + REPLAY_DEADLINE);
        let mut outputs = Vec::new();
        let mut events = 0u64;
        let mut checked = Instant::now();
        while !open.is_empty() {
            if Instant::now() > deadline {
                let p = *open.keys().next().expect("open");
                return Err(err(p, format!("the input was not replayed to the committed offset within {} s", REPLAY_DEADLINE.as_secs())));
            }
            match reader.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    let (p, offset) = (m.partition(), m.offset());
                    let Some(&(i, _, to)) = open.get(&p) else { continue };
                    if offset >= to {
                        open.remove(&p);
                        continue;
                    }
                    // Records that went to the dead-letter topic are not here: their commit was a
                    // snapshot. A schema registry that does not answer is waited for.
                    let ev = loop {
                        match self.decode_record(m.key(), m.payload().unwrap_or_default()) {
                            Err(DecodeError::Unavailable { error, .. }) if Instant::now() < deadline => {
                                self.telemetry.registry_unavailable(&error, 0, Duration::from_secs(1));
                                std::thread::sleep(Duration::from_secs(1));
                            }
                            decoded => break decoded.ok(),
                        }
                    };
                    if let Some(ev) = ev {
                        let engine = &mut engines[i];
                        if poison::oversize_cart(Some(engine), &ev, max_lines).is_none() {
                            engine.process(&ev, &mut outputs);
                            outputs.clear();
                            events += 1;
                        }
                    }
                    if offset + 1 >= to {
                        open.remove(&p);
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    open.remove(&p);
                }
                Some(Err(e)) => self.telemetry.consumer_error(&e, "input replay"),
                None => {}
            }
            if checked.elapsed() >= Duration::from_millis(100) {
                // read_committed positions move past transaction markers, never handed over
                checked = Instant::now();
                let positions = reader.position().map_err(|e| err(-1, e.to_string()))?;
                for e in positions.elements() {
                    if let (Offset::Offset(o), Some((_, _, to))) = (e.offset(), open.get(&e.partition())) {
                        if o >= *to {
                            open.remove(&e.partition());
                        }
                    }
                }
            }
        }
        drop(reader);
        for (_, i) in &replayed {
            engines[*i].finish_replay(self.cfg.models.enabled && self.cfg.scores.enabled);
        }
        let partitions: Vec<i32> = replayed.iter().map(|(p, _)| *p).collect();
        self.telemetry.replayed(&partitions, events, started.elapsed());
        Ok(())
    }
}
