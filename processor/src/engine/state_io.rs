//! The partition's state in and out of the changelog: the records of what changed since the last
//! drain (customers, forgotten customers, windows, the meta record), and the restore that rebuilds
//! a partition from them; and the estimate of its size for the state gauge.

use std::cmp::Reverse;

use super::*;
use crate::changelog::{self, ChangelogEntry, ChangelogKey, PartitionMeta, RestoreError};
use crate::output::WindowNumbers;

/// What changed since the partition's last snapshot, for the next one to write; and where the
/// last one was. Between snapshots the changelog gets nothing from this partition: its state is
/// the last snapshot plus the input since (DESIGN.md, "Snapshots").
#[derive(Debug, Default)]
pub(super) struct Snapshots {
    customers: Vec<Box<str>>,
    forgotten: Vec<Box<str>>,
    windows: HashMap<(Millis, Channel), WindowNumbers>,
    closed: Vec<(Millis, Channel)>,
    /// The input offset of the last snapshot (None: none yet, or state from before snapshots).
    input_offset: Option<i64>,
    /// The next commit must be a snapshot ([`PartitionEngine::snapshot_due`]).
    pub(super) force: bool,
    /// The customers a snapshot is encoding (empty in between; its capacity is kept).
    taken: Vec<Unsaved>,
}

/// A customer a snapshot writes, out of the partition's map while its record is encoded.
pub type Unsaved = (Box<str>, Box<CustomerState>);

/// The changelog records of `customers`, in their order.
pub fn encode_customers(customers: &mut [Unsaved], out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
    out.reserve(customers.len());
    for (key, c) in customers.iter_mut() {
        let mut value = Vec::with_capacity(changelog::size_hint(c));
        changelog::encode_customer(c, &mut value)?;
        out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: Some(value) });
    }
    Ok(())
}

/// Customers (and timers) whose size is measured for the state gauge ([`PartitionEngine::approx_bytes`]).
pub(super) const STATE_SAMPLE: usize = 16_384;

impl PartitionEngine {
    /// Approximate bytes of state (customers, timers, windows). Exact up to [`STATE_SAMPLE`]
    /// customers; above that, the mean of that many customers (the first in the map's hash
    /// order, so a sample unrelated to who they are) times the count: the gauge is read every few
    /// seconds, and a walk over a million customers held the loop for half a second.
    pub fn approx_bytes(&self) -> usize {
        let sampled = |n: usize, sum: usize, total: usize| if n == 0 { 0 } else { (sum as f64 * total as f64 / n as f64) as usize };
        let (n, sum) = self.customers.iter().take(STATE_SAMPLE).fold((0, 0), |(n, sum), (k, c)| (n + 1, sum + c.approx_bytes(k.len())));
        let customers = sampled(n, sum, self.customers.len());
        let (n, sum) = self.timers.iter().take(STATE_SAMPLE).fold((0, 0), |(n, sum), Reverse((_, k))| (n + 1, sum + 24 + k.len()));
        customers + sampled(n, sum, self.timers.len()) + self.windows.len() * 128
    }

    /// Changelog records for everything that changed since the last snapshot, as a snapshot
    /// without an input offset ([`Self::note_changes`] then [`Self::drain_snapshot`]).
    pub fn drain_changelog(&mut self, windows: &[ChannelWindowRecord], out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
        self.note_changes(windows, None, out)?;
        self.drain_snapshot(None, out)
    }

    /// Adds what changed since the last call to what the next snapshot writes: changed
    /// customers, forgotten customers and closed windows, changed windows (`windows`, as drained
    /// by [`Self::drain_changed_windows`]). Runs the queued events first. Called at every commit;
    /// nothing is encoded here, except a changed customer that may have outgrown `max_record`
    /// (key + value bytes the changelog accepts): encoded, and if it did, its record goes to
    /// `out` now, so that the commit of the input that grew it fails for its size and isolates
    /// that input (`pipeline/poison.rs`), as when every commit wrote the changelog. The test is
    /// 4x the state's in-memory size (plus its event-id hashes, up to 10 bytes each as varints):
    /// well above the encoding, which is several times smaller, so only large customers are encoded.
    pub fn note_changes(&mut self, windows: &[ChannelWindowRecord], max_record: Option<usize>, out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
        self.flush();
        let unsaved = &mut self.snap;
        for key in self.changed.drain(..) {
            if let Some(c) = self.customers.get_mut(&key) {
                c.queued = false;
                c.changed_idx = 0;
                if let Some(limit) = max_record.filter(|l| 4 * c.approx_bytes(key.len()) + 10 * c.seen.len() + key.len() > *l) {
                    let mut value = Vec::new();
                    changelog::encode_customer(c, &mut value)?;
                    if key.len() + value.len() > limit {
                        out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: Some(value) });
                    }
                }
                if !c.unsaved {
                    c.unsaved = true;
                    unsaved.customers.push(key);
                }
            }
        }
        unsaved.forgotten.append(&mut self.forgotten);
        for w in windows {
            let key = (w.window_start, Channel::from_wire(&w.channel).unwrap_or(Channel::Other));
            if !unsaved.closed.is_empty() {
                unsaved.closed.retain(|k| *k != key);
            }
            unsaved.windows.insert(key, w.numbers());
        }
        for key in self.closed_windows.drain(..) {
            unsaved.windows.remove(&key);
            unsaved.closed.push(key);
        }
        Ok(())
    }

    /// Whether this partition's next commit must be a snapshot whatever the interval: it has
    /// none yet, or something happened that a replay of its input would not do again (an
    /// erasure, an idle watermark that fired, a model swap; from the loop: a dead letter, a clean
    /// stop, [`Self::force_snapshot`]).
    pub fn snapshot_due(&self) -> bool {
        self.snap.force || self.snap.input_offset.is_none()
    }

    /// Makes this partition's next commit a snapshot.
    pub fn force_snapshot(&mut self) {
        self.snap.force = true;
    }

    /// The input offset of the last snapshot (restored from the changelog's meta record).
    pub fn snapshot_offset(&self) -> Option<i64> {
        self.snap.input_offset
    }

    /// The snapshot: changelog records for everything noted since the last one, and the meta
    /// record with `input_offset`, the partition's next input offset committed with it (None:
    /// no input yet, or a caller without offsets). Call [`Self::note_changes`] first.
    pub fn drain_snapshot(&mut self, input_offset: Option<i64>, out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
        self.drain_snapshot_with(input_offset, out, encode_customers)
    }

    /// [`Self::drain_snapshot`], with the changed customers' records made by `encode` (in the
    /// order of the slice, which it may split over threads: each customer is its own record).
    /// The customers are out of the map while `encode` runs, and back in it afterwards whatever
    /// `encode` returned.
    pub fn drain_snapshot_with(
        &mut self,
        input_offset: Option<i64>,
        out: &mut Vec<ChangelogEntry>,
        encode: impl FnOnce(&mut [Unsaved], &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error>,
    ) -> Result<(), serde_json::Error> {
        let first = out.len();
        let mut taken = std::mem::take(&mut self.snap.taken);
        for key in self.snap.customers.drain(..) {
            if self.customers.get(&key).is_some_and(|c| c.unsaved) {
                if let Some(mut c) = self.customers.remove(&key) {
                    c.unsaved = false;
                    taken.push((key, c));
                }
            }
        }
        let encoded = encode(&mut taken, out);
        for (key, c) in taken.drain(..) {
            self.customers.insert(key, c);
        }
        self.snap.taken = taken;
        encoded?;
        for key in self.snap.forgotten.drain(..) {
            if !self.customers.contains_key(&key) {
                out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: None });
            }
        }
        for ((start, channel), numbers) in self.snap.windows.drain() {
            out.push(ChangelogEntry { key: changelog::window_key(start, channel), value: Some(serde_json::to_vec(&numbers)?) });
        }
        for (start, channel) in self.snap.closed.drain(..) {
            out.push(ChangelogEntry { key: changelog::window_key(start, channel), value: None });
        }
        self.snap.force = false;
        if input_offset.is_some() {
            self.snap.input_offset = input_offset;
        }
        // The meta goes with any other change, or when more than the watermark moved: an idle
        // partition whose watermark follows the wall clock writes nothing until a timer fires.
        // Not persisting a bare idle advance is safe: it produced no output, and after a restore
        // the next idle advance moves the watermark again.
        let meta = self.meta();
        let more_than_watermark = self.meta_written.map(PartitionMeta::without_watermark) != Some(meta.without_watermark());
        if self.meta_written != Some(meta) && (out.len() > first || more_than_watermark) {
            out.push(ChangelogEntry { key: changelog::META_KEY.to_vec(), value: Some(serde_json::to_vec(&meta)?) });
            self.meta_written = Some(meta);
        }
        Ok(())
    }

    fn meta(&self) -> PartitionMeta {
        PartitionMeta {
            max_event_ts: self.watermark.max_event_ts(),
            watermark: self.watermark.current(),
            seq: self.seq,
            next_sweep: self.next_sweep,
            late_events: self.late_events,
            expired_customers: self.expired_customers,
            dropped_late: self.windows.dropped_late,
            erasure_offset: self.erasure_offset,
            input_offset: self.snap.input_offset,
        }
    }

    /// Applies one changelog record (in changelog order) to a partition being restored.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RestoreError> {
        let corrupt = |e: serde_json::Error| RestoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() };
        match changelog::parse_key(key) {
            Some(ChangelogKey::Customer(id)) => match value {
                Some(v) => {
                    let state = changelog::decode_customer_shared(v, &mut self.campaigns)
                        .map_err(|message| RestoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message })?;
                    self.customers.insert(id.into(), Box::new(state));
                }
                None => {
                    self.customers.remove(id);
                }
            },
            Some(ChangelogKey::Window(start, channel)) => match value {
                Some(v) => {
                    let numbers: WindowNumbers = serde_json::from_slice(v).map_err(corrupt)?;
                    self.windows.restore(start, channel, numbers);
                }
                None => self.windows.forget(start, channel),
            },
            Some(ChangelogKey::Meta) => {
                if let Some(v) = value {
                    let m: PartitionMeta = serde_json::from_slice(v).map_err(corrupt)?;
                    self.watermark = Watermark::restore(self.cfg.allowed_lateness, m.max_event_ts, m.watermark);
                    self.seq = m.seq;
                    self.next_sweep = m.next_sweep;
                    self.late_events = m.late_events;
                    self.expired_customers = m.expired_customers;
                    self.windows.dropped_late = m.dropped_late;
                    self.erasure_offset = m.erasure_offset;
                    self.snap.input_offset = m.input_offset;
                    self.meta_written = Some(m);
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Ends a replay of input whose outputs were committed with it before the restore: runs the
    /// queued events and fires what is due, then drops what that made for the topics (outputs,
    /// score records, score tombstones) and the model measurements (counted the first time). Its
    /// changes wait for the next snapshot. `scores`: the scores topic is on (a score counts as
    /// written, as it was the first time).
    pub fn finish_replay(&mut self, scores: bool) {
        let mut outputs = Vec::new();
        self.settle(&mut outputs);
        if scores {
            self.drain_scores(&mut Vec::new());
        }
        let mut windows = Vec::new();
        self.drain_changed_windows(&mut windows);
        // (nothing to check: what the replay changed was committed before)
        let _ = self.note_changes(&windows, None, &mut Vec::new());
        self.score_tombstones.clear();
        self.take_scoring_stats(&mut Vec::new());
        self.take_drift(&mut crate::inference::drift::DriftWindow::default());
    }

    /// Ends a restore: re-arms the timers of open carts.
    pub fn finish_restore(&mut self) {
        self.timers.clear();
        let mut timers = std::mem::take(&mut self.timers);
        for (key, c) in &self.customers {
            if let Some(cart) = &c.cart {
                if let Some(due) = self.next_due(cart).filter(|_| !cart.alerted) {
                    timers.push(Reverse((due, key.clone())));
                }
            }
        }
        self.timers = timers;
    }
}
