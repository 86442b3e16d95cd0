//! Channel totals across partitions. Every input partition publishes its running numbers per
//! (window, channel) to the internal partials topic, partitioned by (window, channel); the owner of
//! a partials partition sums the latest partial of each source partition and upserts the total to
//! the channels topic. Partials are cumulative, so replaying them is harmless (idempotent).

use std::collections::HashMap;

use foldhash::fast::RandomState;

use crate::event::Channel;
use crate::output::{ChannelWindowRecord, WindowNumbers};
use crate::time::Millis;

/// Partition of the partials topic for a (window, channel): a fixed hash (FNV-1a), the same in
/// every process and version.
pub fn partials_partition(window_start: Millis, channel: Channel, partitions: i32) -> i32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in window_start.to_be_bytes().iter().chain(channel.as_str().as_bytes()) {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % partitions.max(1) as u64) as i32
}

/// Key of a partial on the internal topic.
pub fn partial_key(window_start: Millis, channel: Channel, source_partition: i32) -> String {
    format!("{window_start}|{channel}|{source_partition}")
}

/// Key of a total on the channels topic.
pub fn total_key(window_start: Millis, channel: &str) -> String {
    format!("{window_start}|{channel}")
}

#[derive(Debug, Default)]
struct Entry {
    window_end: Millis,
    partials: Vec<(i32, WindowNumbers)>,
    dirty: bool,
}

/// Sums partials for the (window, channel) keys of one partials partition.
#[derive(Debug)]
pub struct ChannelAggregator {
    retention: Millis,
    /// How many source (input) partitions publish partials (0: unknown, count those seen).
    sources: usize,
    entries: HashMap<(Millis, Channel), Entry, RandomState>,
    dirty: Vec<(Millis, Channel)>,
    /// Newest window end reported by each source partition: windows older than the slowest
    /// source's newest minus the retention are forgotten.
    newest_by_source: Vec<(i32, Millis)>,
    /// Partials that arrived for windows already forgotten (dropped rather than written as a
    /// wrong total).
    pub dropped_late: u64,
    /// Still replaying its partials partition from the beginning: no total is written until it
    /// has read to the end ([`Self::caught_up`]), so that a rebuilt aggregator never writes the
    /// sum of only the partials it has read so far.
    replaying: bool,
    /// The partition's end (high watermark) when the replay started, once known: the replay is
    /// over when the reader's position reaches it, even if the end-of-partition event was missed
    /// (librdkafka re-arms it on every seek and fetch-session change, e.g. around a broker restart).
    replay_end: Option<i64>,
}

impl ChannelAggregator {
    /// `retention`: totals are forgotten once they end this long before the newest window of the
    /// slowest of the `sources` source partitions. Nothing is forgotten before every source has
    /// published: a source that has not started yet (a replay where one input partition is read
    /// before another) is the slowest of all. (An input partition that never gets an event keeps
    /// every window: at most one entry per window and channel.)
    pub fn new(retention: Millis, sources: usize) -> Self {
        ChannelAggregator {
            retention,
            sources,
            entries: HashMap::default(),
            dirty: Vec::new(),
            newest_by_source: Vec::new(),
            dropped_late: 0,
            replaying: true,
            replay_end: None,
        }
    }

    /// The partials partition has been read to its end: totals are written from now on.
    pub fn caught_up(&mut self) {
        self.replaying = false;
    }

    /// Whether the replay still needs its end offset (see [`Self::replay_until`]).
    pub fn needs_replay_end(&self) -> bool {
        self.replaying && self.replay_end.is_none()
    }

    /// The partition's end offset when the replay started.
    pub fn replay_until(&mut self, end: i64) {
        self.replay_end = Some(end);
        self.reached(0);
    }

    /// The reader's position in the partition (the next offset it will read): ends the replay
    /// once it reaches the end recorded by [`Self::replay_until`].
    pub fn reached(&mut self, position: i64) {
        if self.replay_end.is_some_and(|end| position >= end) {
            self.replaying = false;
        }
    }

    /// Whether it is still replaying its partition (writes nothing yet).
    pub fn replaying(&self) -> bool {
        self.replaying
    }

    fn horizon(&self) -> Millis {
        if self.newest_by_source.len() < self.sources {
            return Millis::MIN;
        }
        self.newest_by_source.iter().map(|(_, w)| *w).min().unwrap_or(Millis::MIN).saturating_sub(self.retention)
    }

    /// Takes a partial (the latest numbers of one source partition for one window and channel).
    /// Returns false when the record is not a partial.
    pub fn apply(&mut self, rec: &ChannelWindowRecord) -> bool {
        let (Some(src), Some(channel)) = (rec.source_partition, Channel::from_wire(&rec.channel)) else { return false };
        match self.newest_by_source.iter_mut().find(|(p, _)| *p == src) {
            Some((_, w)) => *w = (*w).max(rec.window_end),
            None => self.newest_by_source.push((src, rec.window_end)),
        }
        let key = (rec.window_start, channel);
        if rec.window_end < self.horizon() && !self.entries.contains_key(&key) {
            self.dropped_late += 1;
            return true;
        }
        let e = self.entries.entry(key).or_default();
        e.window_end = rec.window_end;
        let numbers = rec.numbers();
        match e.partials.iter_mut().find(|(p, _)| *p == src) {
            Some((_, n)) => *n = numbers,
            None => e.partials.push((src, numbers)),
        }
        if !e.dirty {
            e.dirty = true;
            self.dirty.push(key);
        }
        true
    }

    /// Writes the total of every key changed since the last call; forgets expired windows.
    pub fn drain_changed(&mut self, out: &mut Vec<ChannelWindowRecord>) {
        if self.replaying {
            return;
        }
        for key in self.dirty.drain(..) {
            if let Some(e) = self.entries.get_mut(&key) {
                e.dirty = false;
                let mut total = WindowNumbers::default();
                for (_, n) in &e.partials {
                    total.add(n);
                }
                out.push(ChannelWindowRecord::new(key.0, e.window_end - key.0, key.1, &total, None));
            }
        }
        let horizon = self.horizon();
        self.entries.retain(|_, e| e.window_end >= horizon);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn partial(src: i32, touchpoints: u64, td: f64) -> ChannelWindowRecord {
        let n = WindowNumbers { touchpoints, conversions: [td, 0.0, 0.0, 0.0, 0.0], revenue: [td * 10.0, 0.0, 0.0, 0.0, 0.0], deep: None };
        ChannelWindowRecord::new(0, 3_600_000, Channel::Email, &n, Some(src))
    }

    #[test]
    fn sums_latest_partial_of_each_source_idempotently() {
        let mut a = ChannelAggregator::new(86_400_000, 2);
        a.apply(&partial(0, 1, 0.5));
        let mut out = Vec::new();
        a.drain_changed(&mut out);
        assert!(out.is_empty() && a.replaying(), "nothing is written while the partition is replayed");
        a.caught_up();
        a.apply(&partial(1, 2, 0.25));
        a.apply(&partial(0, 3, 1.5)); // newer partial of source 0 replaces the old one
        a.apply(&partial(1, 2, 0.25)); // a replayed partial changes nothing
        a.drain_changed(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].touchpoints, 5);
        assert_eq!(out[0].credited_conversions.time_decay, 1.75);
        assert_eq!(out[0].credited_revenue.time_decay, 17.5);
        assert_eq!(out[0].source_partition, None);
        out.clear();
        a.drain_changed(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_replay_ends_at_the_recorded_end_offset_without_an_end_event() {
        let mut a = ChannelAggregator::new(86_400_000, 1);
        assert!(a.needs_replay_end());
        a.replay_until(5);
        assert!(!a.needs_replay_end() && a.replaying());
        a.reached(4);
        assert!(a.replaying(), "offset 4 of 0..5 not read yet");
        a.reached(5);
        assert!(!a.replaying());
        let mut empty = ChannelAggregator::new(86_400_000, 1);
        empty.replay_until(0);
        assert!(!empty.replaying(), "an empty partition has nothing to replay");
    }

    #[test]
    fn a_lagging_source_holds_old_windows_and_forgotten_ones_are_never_rewritten() {
        let day = 86_400_000;
        let mut a = ChannelAggregator::new(day, 2);
        a.caught_up();
        let at = |src: i32, start: Millis, td: f64| {
            let n = WindowNumbers { touchpoints: 1, conversions: [td, 0.0, 0.0, 0.0, 0.0], revenue: [0.0; 5], deep: None };
            ChannelWindowRecord::new(start, 3_600_000, Channel::Email, &n, Some(src))
        };
        a.apply(&at(0, 0, 1.0));
        a.apply(&at(0, 10 * day, 1.0));
        // source 1 has not published at all yet (its input partition is read later): nothing is forgotten
        let mut out = Vec::new();
        a.drain_changed(&mut out);
        assert_eq!(a.len(), 2);
        a.apply(&at(1, 0, 2.0)); // source 1 is far behind: window 0 must still sum both
        out.clear();
        a.drain_changed(&mut out);
        let w0 = out.iter().find(|r| r.window_start == 0).unwrap();
        assert_eq!(w0.credited_conversions.time_decay, 3.0);
        a.apply(&at(1, 10 * day, 1.0)); // both sources moved on: window 0 is forgotten
        out.clear();
        a.drain_changed(&mut out);
        assert_eq!(a.len(), 1);
        a.apply(&at(0, 0, 5.0)); // a straggler for a forgotten window is dropped, not written alone
        out.clear();
        a.drain_changed(&mut out);
        assert!(out.is_empty());
        assert_eq!(a.dropped_late, 1);
    }

    #[test]
    fn partials_partition_is_stable_and_in_range() {
        let p = partials_partition(1_767_225_600_000, Channel::Email, 6);
        assert!((0..6).contains(&p));
        assert_eq!(p, partials_partition(1_767_225_600_000, Channel::Email, 6));
        let spread: std::collections::HashSet<i32> = (0..48).map(|h| partials_partition(h * 3_600_000, Channel::Display, 6)).collect();
        assert!(spread.len() >= 4, "keys spread over partitions: {spread:?}");
    }
}
