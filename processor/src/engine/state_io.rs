//! The partition's state in and out of the changelog: the records of what changed since the last
//! drain (customers, forgotten customers, windows, the meta record), and the restore that rebuilds
//! a partition from them; and the estimate of its size for the state gauge.

use std::cmp::Reverse;

use super::*;
use crate::changelog::{self, ChangelogEntry, ChangelogKey, PartitionMeta, RestoreError};
use crate::output::WindowNumbers;

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

    /// Changelog records for everything that changed since the last call: changed customers,
    /// forgotten customers and closed windows (tombstones), changed windows (`windows`, as drained
    /// by [`Self::drain_changed_windows`]) and the partition's meta record.
    pub fn drain_changelog(&mut self, windows: &[ChannelWindowRecord], out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
        self.flush();
        let first = out.len();
        for key in self.changed.drain(..) {
            if let Some(c) = self.customers.get_mut(&key) {
                c.queued = false;
                c.changed_idx = 0;
                let mut value = Vec::with_capacity(256);
                changelog::encode_customer(c, &mut value)?;
                out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: Some(value) });
            }
        }
        for key in self.forgotten.drain(..) {
            if !self.customers.contains_key(&key) {
                out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: None });
            }
        }
        for w in windows {
            let channel = Channel::from_wire(&w.channel).unwrap_or(Channel::Other);
            out.push(ChangelogEntry { key: changelog::window_key(w.window_start, channel), value: Some(serde_json::to_vec(&w.numbers())?) });
        }
        for (start, channel) in self.closed_windows.drain(..) {
            out.push(ChangelogEntry { key: changelog::window_key(start, channel), value: None });
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
        }
    }

    /// Applies one changelog record (in changelog order) to a partition being restored.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RestoreError> {
        let corrupt = |e: serde_json::Error| RestoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() };
        match changelog::parse_key(key) {
            Some(ChangelogKey::Customer(id)) => match value {
                Some(v) => {
                    let state =
                        changelog::decode_customer(v).map_err(|message| RestoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message })?;
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
                    self.meta_written = Some(m);
                }
            }
            None => {}
        }
        Ok(())
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
