//! One input partition's per-channel numbers in tumbling event-time windows ("partials"). They are
//! summed across partitions by [`super::aggregate`].

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::event::Channel;
use crate::output::{ChannelWindowRecord, WindowNumbers};
use crate::time::{window_start, Millis};

#[derive(Debug, Default)]
struct Entry {
    numbers: WindowNumbers,
    dirty: bool,
}

/// Channel numbers of one input partition, by (window start, channel).
#[derive(Debug)]
pub struct ChannelWindows {
    width: Millis,
    retention: Millis,
    entries: HashMap<(Millis, Channel), Entry, RandomState>,
    dirty: Vec<(Millis, Channel)>,
    /// Windows closed for good since the last drain (tombstones for the changelog).
    closed: Vec<(Millis, Channel)>,
    /// Contributions that arrived for windows already closed and dropped.
    pub dropped_late: u64,
    /// Models run: every window carries deep numbers (zero until credited).
    pub deep: bool,
}

impl ChannelWindows {
    pub fn new(width: Millis, retention: Millis) -> Self {
        ChannelWindows { width, retention, entries: HashMap::default(), dirty: Vec::new(), closed: Vec::new(), dropped_late: 0, deep: false }
    }

    /// Whether the window holding `ts` still accepts contributions at watermark `wm`.
    #[inline]
    pub fn is_open(&self, ts: Millis, wm: Millis) -> bool {
        window_start(ts, self.width) + self.width + self.retention > wm
    }

    #[inline]
    fn entry(&mut self, ts: Millis, channel: Channel, wm: Millis) -> Option<&mut Entry> {
        if !self.is_open(ts, wm) {
            self.dropped_late += 1;
            return None;
        }
        let key = (window_start(ts, self.width), channel);
        let deep = self.deep;
        let e = self
            .entries
            .entry(key)
            .or_insert_with(|| Entry { numbers: WindowNumbers { deep: deep.then_some([0.0; 3]), ..WindowNumbers::default() }, dirty: false });
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(key);
        }
        Some(e)
    }

    /// Counts a touchpoint in the window of its own event time.
    #[inline]
    pub fn add_touchpoint(&mut self, ts: Millis, channel: Channel, wm: Millis) {
        if let Some(e) = self.entry(ts, channel, wm) {
            e.numbers.touchpoints += 1;
        }
    }

    /// Credits a conversion at `conversion_ts` worth `value` to `channel` with per-rule `credit`,
    /// and with models its `deep` credit and the customer's expected future value.
    #[inline]
    pub fn add_credit(&mut self, conversion_ts: Millis, channel: Channel, credit: &[f64; 5], deep: Option<(f64, f64)>, value: f64, wm: Millis) {
        if let Some(e) = self.entry(conversion_ts, channel, wm) {
            for (i, c) in credit.iter().enumerate() {
                e.numbers.conversions[i] += c;
                e.numbers.revenue[i] += c * value;
            }
            if let Some((d, future)) = deep {
                let n = e.numbers.deep.get_or_insert([0.0; 3]);
                n[0] += d;
                n[1] += d * value;
                n[2] += d * future;
            }
        }
    }

    /// Writes a record for every window changed since the last call, then drops windows that
    /// closed for good at watermark `wm` (their keys go to `closed`).
    pub fn drain_changed(&mut self, source_partition: i32, wm: Millis, out: &mut Vec<ChannelWindowRecord>, closed: &mut Vec<(Millis, Channel)>) {
        for key in self.dirty.drain(..) {
            if let Some(e) = self.entries.get_mut(&key) {
                e.dirty = false;
                out.push(ChannelWindowRecord::new(key.0, self.width, key.1, &e.numbers, Some(source_partition)));
            }
        }
        let (width, retention) = (self.width, self.retention);
        let gone = &mut self.closed;
        self.entries.retain(|&(start, channel), _| {
            let keep = start + width + retention > wm;
            if !keep {
                gone.push((start, channel));
            }
            keep
        });
        closed.append(&mut self.closed);
    }

    /// Puts back a window's numbers from the changelog (not marked changed).
    pub fn restore(&mut self, window_start: Millis, channel: Channel, numbers: WindowNumbers) {
        self.entries.insert((window_start, channel), Entry { numbers, dirty: false });
    }

    /// Forgets a window (a changelog tombstone).
    pub fn forget(&mut self, window_start: Millis, channel: Channel) {
        self.entries.remove(&(window_start, channel));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Current numbers of one window (tests and diagnostics).
    pub fn get(&self, ts: Millis, channel: Channel) -> Option<WindowNumbers> {
        self.entries.get(&(window_start(ts, self.width), channel)).map(|e| e.numbers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: Millis = 3_600_000;

    #[test]
    fn counts_and_credits_land_in_their_windows_and_drain_once() {
        let mut w = ChannelWindows::new(H, 2 * H);
        w.add_touchpoint(10, Channel::Email, 0);
        w.add_touchpoint(H + 10, Channel::Email, 0);
        w.add_credit(H + 20, Channel::Email, &[0.5, 1.0, 0.0, 0.5, 0.5], None, 10.0, 0);
        let mut out = Vec::new();
        w.drain_changed(3, 0, &mut out, &mut Vec::new());
        assert_eq!(out.len(), 2);
        let second = out.iter().find(|r| r.window_start == H).unwrap();
        assert_eq!(second.touchpoints, 1);
        assert_eq!(second.credited_conversions.last_touch, 1.0);
        assert_eq!(second.credited_revenue.time_decay, 5.0);
        assert_eq!(second.source_partition, Some(3));
        out.clear();
        w.drain_changed(3, 0, &mut out, &mut Vec::new());
        assert!(out.is_empty(), "nothing changed since");
    }

    #[test]
    fn closed_windows_are_dropped_and_late_contributions_counted() {
        let mut w = ChannelWindows::new(H, H);
        w.add_touchpoint(10, Channel::Display, 0);
        let (mut out, mut closed) = (Vec::new(), Vec::new());
        w.drain_changed(0, 2 * H, &mut out, &mut closed);
        assert!(w.is_empty());
        assert_eq!(closed, [(0, Channel::Display)]);
        w.add_touchpoint(20, Channel::Display, 2 * H);
        assert_eq!(w.dropped_late, 1);
        assert!(w.is_empty());
    }
}
