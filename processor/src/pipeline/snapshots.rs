//! Which partitions a commit snapshots (checkpoint.rs writes them). Each owned partition is
//! snapshotted at least every `processing.snapshot_interval`, and the partitions are spread over
//! the interval: a partition new to the schedule comes due after `interval × (1 - rank / owned)`,
//! so that a commit encodes about one partition's changes of the last interval instead of every
//! partition's at once (that burst was the processor's latency tail: a commit of 0.1 to 1 s every
//! 10 s). A snapshot counts once its transaction committed: after a rewind the partition is still
//! due. Snapshots forced by something a replay would not redo (the engine's `snapshot_due`: an
//! erasure, a dead letter, a clean stop, ...) come on top and leave the schedule as it is.
//!
//! A snapshot's customer records are encoded on the fan-out threads (`encode`), in chunks of the
//! customers in their order: the encoding was about two thirds of a snapshot commit's time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::changelog::ChangelogEntry;
use crate::engine::{encode_customers, Unsaved};

/// Fewer customers than this per thread are encoded on the loop's thread alone.
const ENCODE_CHUNK_MIN: usize = 256;

/// The records of a snapshot's `customers`, in their order, encoded on up to `threads` threads.
pub(super) fn encode(threads: usize, customers: &mut [Unsaved], out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
    let n = threads.min(customers.len() / ENCODE_CHUNK_MIN);
    if n <= 1 {
        return encode_customers(customers, out);
    }
    let jobs = customers.chunks_mut(customers.len().div_ceil(n)).map(|chunk| (chunk.len(), chunk)).collect();
    let parts = super::fanout::fan_out(n, jobs, |chunk| {
        let mut part = Vec::new();
        encode_customers(chunk, &mut part).map(|()| part)
    });
    for part in parts {
        out.append(&mut part?);
    }
    Ok(())
}

pub(super) struct SnapshotClock {
    interval: Duration,
    /// When the last committed timed snapshot of each owned partition began (or, for one new to
    /// the schedule, the staggered time it counts from).
    last: HashMap<i32, Instant>,
    /// Timed snapshots in transactions not committed yet.
    unconfirmed: Vec<(i32, Instant)>,
    owned: Vec<i32>,
}

impl SnapshotClock {
    pub(super) fn new(interval: Duration) -> Self {
        SnapshotClock { interval, last: HashMap::new(), unconfirmed: Vec::new(), owned: Vec::new() }
    }

    /// Brings the schedule to the partitions owned now (`now`: when the commit began): a partition
    /// new to it counts from `now - interval × rank / owned`; one no longer owned is forgotten.
    pub(super) fn plan(&mut self, owned: impl Iterator<Item = i32>, now: Instant) {
        self.owned.clear();
        self.owned.extend(owned);
        self.owned.sort_unstable();
        let n = self.owned.len() as u32;
        for (rank, p) in self.owned.iter().enumerate() {
            self.last.entry(*p).or_insert_with(|| now.checked_sub(self.interval * rank as u32 / n).unwrap_or(now));
        }
        let owned = &self.owned;
        self.last.retain(|p, _| owned.binary_search(p).is_ok());
    }

    /// Whether partition `p`'s commit beginning at `now` is its timed snapshot.
    pub(super) fn timed(&self, p: i32, now: Instant) -> bool {
        self.last.get(&p).map_or(true, |t| now.saturating_duration_since(*t) >= self.interval)
    }

    /// `p`'s timed snapshot is in the transaction beginning at `at`.
    pub(super) fn taken(&mut self, p: i32, at: Instant) {
        self.unconfirmed.push((p, at));
    }

    /// The transactions holding the timed snapshots taken so far committed. A partition keeps its
    /// place in the interval: its time moves on by whole intervals (the next one is due within an
    /// interval of this one), so partitions that all came due while no commit ran (an idle input)
    /// snapshot together once and are spread again after it.
    pub(super) fn committed(&mut self) {
        for (p, at) in self.unconfirmed.drain(..) {
            if let Some(t) = self.last.get_mut(&p) {
                let elapsed = at.saturating_duration_since(*t);
                if self.interval.is_zero() {
                    *t = at;
                } else {
                    *t += self.interval.mul_f64((elapsed.as_secs_f64() / self.interval.as_secs_f64()).floor());
                }
            }
        }
    }

    /// The loop went back to the last commit: the snapshots since did not happen.
    pub(super) fn rewound(&mut self) {
        self.unconfirmed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    /// A partition's engine after `customers` customers with three touchpoints each.
    fn engine_with(customers: usize) -> crate::engine::PartitionEngine {
        use crate::event::{decode, Validation};
        let mut engine = crate::engine::PartitionEngine::new(0, crate::engine::EngineConfig::default());
        let check = Validation { now: i64::MAX / 2, max_future_skew_ms: 0 };
        let mut out = Vec::new();
        for i in 0..3 * customers {
            let (c, ts) = (format!("c{}", i % customers), 1_767_225_600_000 + i as i64 * 1000);
            let json = format!(r#"{{"event_id":"e{i}","customer_id":"{c}","ts":{ts},"event_type":"click","channel":"email","campaign":"k{}"}}"#, i % 7);
            engine.process(&decode(Some(c.as_bytes()), json.as_bytes(), &check).unwrap(), &mut out);
        }
        engine
    }

    fn snapshot(engine: &mut crate::engine::PartitionEngine, threads: usize) -> Vec<ChangelogEntry> {
        let mut log = Vec::new();
        engine.note_changes(&[], None, &mut log).unwrap();
        engine.drain_snapshot_with(Some(7), &mut log, |customers, out| encode(threads, customers, out)).unwrap();
        log
    }

    #[test]
    fn a_snapshot_encoded_on_threads_is_the_one_encoded_on_the_loop_thread() {
        let (mut serial, mut spread) = (engine_with(1000), engine_with(1000));
        let one = snapshot(&mut serial, 1);
        let three = snapshot(&mut spread, 3);
        assert_eq!(one.len(), 1001, "every customer and the meta record");
        assert_eq!(one, three);
        // every customer is back in the map, saved: the next snapshot has nothing to write
        assert_eq!(spread.customers(), 1000);
        assert!(spread.customer("c999").is_some());
        assert_eq!(snapshot(&mut spread, 3), Vec::new());
    }

    /// Runs commits every 100 ms for `commits` from `start` (after `idle` without a commit),
    /// each committing, and returns per commit the partitions whose timed snapshot it was.
    fn run(clock: &mut SnapshotClock, owned: &[i32], start: Instant, commits: u32) -> Vec<Vec<i32>> {
        run_after(clock, owned, start, Duration::ZERO, commits)
    }

    fn run_after(clock: &mut SnapshotClock, owned: &[i32], start: Instant, idle: Duration, commits: u32) -> Vec<Vec<i32>> {
        (0..commits)
            .map(|i| {
                let now = if i == 0 { start } else { start + idle + SECOND / 10 * i };
                clock.plan(owned.iter().copied(), now);
                let due: Vec<i32> = owned.iter().copied().filter(|p| clock.timed(*p, now)).collect();
                for p in &due {
                    clock.taken(*p, now);
                }
                clock.committed();
                due
            })
            .collect()
    }

    #[test]
    fn partitions_are_snapshotted_every_interval_at_different_commits() {
        let mut clock = SnapshotClock::new(10 * SECOND);
        let start = Instant::now();
        let owned = [0, 1, 2, 3];
        let commits = run(&mut clock, &owned, start, 400); // 40 s
        for p in owned {
            let at: Vec<usize> = commits.iter().enumerate().filter(|(_, d)| d.contains(&p)).map(|(i, _)| i).collect();
            assert!(at.len() >= 3, "partition {p} snapshotted at commits {at:?}");
            assert!(at[0] <= 100, "partition {p}'s first timed snapshot within the interval: {at:?}");
            for w in at.windows(2) {
                assert!(w[1] - w[0] <= 101, "partition {p} went {} commits without a snapshot", w[1] - w[0]);
            }
        }
        let most = commits.iter().map(Vec::len).max().unwrap();
        assert_eq!(most, 1, "no commit snapshots two partitions by the clock");
    }

    #[test]
    fn partitions_that_came_due_together_while_idle_are_spread_again_after_one_snapshot() {
        let mut clock = SnapshotClock::new(10 * SECOND);
        let owned = [0, 1, 2, 3];
        // planned at the first commit, then no commit for 25 s (no input): all are due at once
        let commits = run_after(&mut clock, &owned, Instant::now(), 25 * SECOND, 400);
        assert_eq!(commits[1].len(), 4, "the first commit after the idle time snapshots every partition");
        let most = commits[2..].iter().map(Vec::len).max().unwrap();
        assert_eq!(most, 1, "after it, no commit snapshots two partitions by the clock");
        for p in owned {
            let at: Vec<usize> = commits.iter().enumerate().filter(|(_, d)| d.contains(&p)).map(|(i, _)| i).collect();
            for w in at.windows(2) {
                assert!(w[1] - w[0] <= 101, "partition {p} went {} commits without a snapshot", w[1] - w[0]);
            }
        }
    }

    #[test]
    fn a_zero_interval_snapshots_every_partition_at_every_commit() {
        let mut clock = SnapshotClock::new(Duration::ZERO);
        let commits = run(&mut clock, &[0, 1], Instant::now(), 5);
        assert!(commits.iter().all(|d| d.len() == 2), "{commits:?}");
    }

    #[test]
    fn a_snapshot_counts_only_once_committed() {
        let mut clock = SnapshotClock::new(10 * SECOND);
        let start = Instant::now();
        clock.plan([7].into_iter(), start);
        assert!(!clock.timed(7, start), "one partition counts from now");
        let due = start + 10 * SECOND;
        assert!(clock.timed(7, due));
        clock.taken(7, due);
        clock.rewound();
        assert!(clock.timed(7, due + SECOND / 10), "the rewound transaction's snapshot did not happen");
        clock.taken(7, due);
        clock.committed();
        assert!(!clock.timed(7, due + SECOND));
    }

    #[test]
    fn a_partition_no_longer_owned_is_forgotten_and_comes_back_staggered() {
        let mut clock = SnapshotClock::new(10 * SECOND);
        let start = Instant::now();
        clock.plan([0, 1].into_iter(), start);
        assert!(clock.timed(1, start + 5 * SECOND) && !clock.timed(0, start + 5 * SECOND));
        clock.plan([0].into_iter(), start + SECOND);
        assert!(!clock.last.contains_key(&1));
        clock.plan([0, 1].into_iter(), start + 2 * SECOND);
        assert!(!clock.timed(1, start + 6 * SECOND) && clock.timed(1, start + 7 * SECOND), "rank 1 of 2 counts from half an interval ago");
    }
}
