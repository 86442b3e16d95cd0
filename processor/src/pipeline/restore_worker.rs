//! The restore's second thread. The loop polls the changelog and copies each record into a batch;
//! a worker decodes the batches, in order, into the partitions' fresh engines. Fetching (librdkafka
//! and the broker) and decoding (about half of a large restore's wall time, on the loop thread
//! before) then overlap.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::engine::PartitionEngine;

/// Records per batch handed to the worker, and the bytes after which a batch goes early.
const BATCH_RECORDS: usize = 512;
const BATCH_BYTES: usize = 1 << 20;
/// Batches on their way: the poll runs this far ahead of the decoding at most.
const IN_FLIGHT: usize = 8;

/// What a failed restore says: the partition and why.
pub(super) type RestoreFailure = (i32, String);

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    records: Vec<(i32, Range<usize>, Option<Range<usize>>)>,
}

pub(super) struct RestoreWorker {
    batch: Batch,
    to_worker: SyncSender<Batch>,
    spare: Receiver<Batch>,
    handle: JoinHandle<Result<HashMap<i32, PartitionEngine>, RestoreFailure>>,
}

impl RestoreWorker {
    /// Starts the worker with the engines it fills.
    pub fn start(mut engines: HashMap<i32, PartitionEngine>) -> Result<RestoreWorker, String> {
        let (to_worker, batches) = sync_channel::<Batch>(IN_FLIGHT);
        let (give_back, spare) = sync_channel::<Batch>(IN_FLIGHT + 1);
        let handle = std::thread::Builder::new()
            .name("touchstream-restore".into())
            .spawn(move || {
                for mut batch in batches {
                    for (p, key, value) in batch.records.drain(..) {
                        if let Some(engine) = engines.get_mut(&p) {
                            engine.restore(&batch.bytes[key], value.map(|v| &batch.bytes[v])).map_err(|e| (p, e.to_string()))?;
                        }
                    }
                    batch.bytes.clear();
                    let _ = give_back.try_send(batch);
                }
                Ok(engines)
            })
            .map_err(|e| format!("cannot start the restore thread: {e}"))?;
        Ok(RestoreWorker { batch: Batch::default(), to_worker, spare, handle })
    }

    /// Queues one changelog record (a tombstone has no value). Err: the worker stopped on a
    /// record it could not restore; [`Self::finish`] says which.
    pub fn push(&mut self, partition: i32, key: &[u8], value: Option<&[u8]>) -> Result<(), ()> {
        let b = &mut self.batch;
        let k = b.bytes.len()..b.bytes.len() + key.len();
        b.bytes.extend_from_slice(key);
        let v = value.map(|v| {
            let r = b.bytes.len()..b.bytes.len() + v.len();
            b.bytes.extend_from_slice(v);
            r
        });
        b.records.push((partition, k, v));
        if b.records.len() >= BATCH_RECORDS || b.bytes.len() >= BATCH_BYTES {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<(), ()> {
        let next = self.spare.try_recv().unwrap_or_default();
        let full = std::mem::replace(&mut self.batch, next);
        self.to_worker.send(full).map_err(|_| ())
    }

    /// Waits until every queued record is restored and hands the engines back.
    pub fn finish(mut self) -> Result<HashMap<i32, PartitionEngine>, RestoreFailure> {
        if !self.batch.records.is_empty() {
            let _ = self.send();
        }
        let RestoreWorker { to_worker, handle, .. } = self;
        drop(to_worker);
        handle.join().unwrap_or_else(|_| Err((-1, "the restore thread panicked".into())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineConfig;
    use crate::event::{decode, Validation};

    /// 700 customers' changelog records (two batches and more) through the worker, in order: a
    /// tombstone after a record removes the customer; a corrupt record names its partition.
    #[test]
    fn restores_in_order_across_batches_and_names_a_corrupt_partition() {
        let t0 = 1_700_000_000_000_i64;
        let mut source = PartitionEngine::new(0, EngineConfig::default());
        let check = Validation { now: t0 + 86_400_000, max_future_skew_ms: 0 };
        let mut out = Vec::new();
        for n in 0..700 {
            let json = format!(r#"{{"event_id":"e{n}","customer_id":"c{n}","ts":{},"event_type":"click","channel":"email"}}"#, t0 + n);
            let key = format!("c{n}");
            source.process(&decode(Some(key.as_bytes()), json.as_bytes(), &check).unwrap(), &mut out);
        }
        let mut log = Vec::new();
        source.drain_changelog(&[], &mut log).unwrap();
        let engines = [0, 1].into_iter().map(|p| (p, PartitionEngine::new(p, EngineConfig::default()))).collect();
        let mut worker = RestoreWorker::start(engines).unwrap();
        for entry in &log {
            worker.push(0, &entry.key, entry.value.as_deref()).unwrap();
        }
        worker.push(0, b"c7", None).unwrap();
        worker.push(2, b"c8", Some(b"not ours")).unwrap();
        let engines = worker.finish().unwrap();
        assert_eq!(engines[&0].customers(), 699);
        assert_eq!(engines[&1].customers(), 0);

        let engines = [(1, PartitionEngine::new(1, EngineConfig::default()))].into_iter().collect();
        let mut worker = RestoreWorker::start(engines).unwrap();
        worker.push(1, b"c1", Some(&[0xff, 1, 2])).unwrap();
        let (p, message) = worker.finish().unwrap_err();
        assert_eq!(p, 1, "{message}");
    }
}
