//! No poison pill: no input record can stop the stream.
//!
//! 1. Bounded input: a record over `limits.max_record_bytes`, or an event with a string field over
//!    `limits.max_field_bytes`, goes to the DLQ (`too_large`) instead of into state or outputs.
//! 2. Dead letters always fit: error reasons never echo unbounded input, and a DLQ record that
//!    would not fit the broker's limit keeps the first `limits.dlq_excerpt_bytes` of the original
//!    with its size and SHA-256.
//! 3. Isolation: every output topic's limit is read at start and a record over it is refused
//!    before it is sent. When that record is an output of the input record being handled, that
//!    input record is known: the batch is redone once, without it (it goes to the DLQ). When the
//!    failure cannot be traced to one record (a state record at commit, or the broker refused a
//!    record) the failed range is redone one input record per transaction; the record whose own
//!    transaction fails is dead-lettered and skipped. No batch aborts twice; everything else is
//!    processed exactly once as usual.
//! 4. A replica that cannot progress says so: `/readyz` and `touchstream_stalled`.

use std::collections::{HashMap, HashSet};

use super::*;
use crate::event::Event;

/// Bytes a record batch adds around one record (headers of the batch and the record).
const RECORD_OVERHEAD: usize = 512;
/// Longest error reason written to a DLQ header or a log line.
pub const MAX_REASON_BYTES: usize = 512;

/// Cuts `text` to at most `max` bytes on a character boundary, marking the cut.
pub fn truncate_reason(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return text.into();
    }
    let mut end = max.saturating_sub(24);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…[{} bytes cut]", &text[..end], text.len() - end).into()
}

/// The first string field of `ev` longer than `max` bytes, as an error.
pub fn oversize_field(ev: &Event<'_>, max: usize) -> Option<InvalidEvent> {
    let fields: [(&str, Option<&str>); 6] = [
        ("event_id", Some(&ev.event_id)),
        ("customer_id", Some(&ev.customer_id)),
        ("campaign", ev.campaign.as_deref()),
        ("session_id", ev.session_id.as_deref()),
        ("currency", ev.currency.as_deref()),
        ("product_id", ev.product_id.as_deref()),
    ];
    fields.into_iter().find_map(|(name, value)| {
        let len = value.map_or(0, str::len);
        (len > max).then(|| InvalidEvent::TooLarge { what: format!("field `{name}`"), bytes: len, limit: max, key: "limits.max_field_bytes" })
    })
}

/// A `cart_add` of a new product to a cart that already holds `max` distinct products, as an error.
pub fn oversize_cart(engine: Option<&crate::engine::PartitionEngine>, ev: &Event<'_>, max: usize) -> Option<InvalidEvent> {
    if ev.event_type != crate::event::EventType::CartAdd {
        return None;
    }
    let cart = engine?.customer(&ev.customer_id)?.cart.as_ref()?;
    let product = ev.product_id.as_deref().unwrap_or("unknown");
    (cart.lines.len() >= max && !cart.lines.iter().any(|l| &*l.product_id == product)).then(|| InvalidEvent::TooLarge {
        what: "the open cart".into(),
        bytes: cart.lines.len() + 1,
        limit: max,
        key: "limits.max_cart_lines (distinct products, not bytes)",
    })
}

/// A record over `limits.max_record_bytes`, as an error.
pub fn oversize_record(key: Option<&[u8]>, payload: &[u8], max: usize) -> Option<InvalidEvent> {
    let bytes = key.map_or(0, <[u8]>::len) + payload.len();
    (bytes > max).then(|| InvalidEvent::TooLarge { what: "the record".into(), bytes, limit: max, key: "limits.max_record_bytes" })
}

/// Hex SHA-256 of the key and value of a record, for DLQ records that keep an excerpt only.
pub fn sha256_hex(key: Option<&[u8]>, payload: &[u8]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(key.unwrap_or_default());
    ctx.update(payload);
    ctx.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a DLQ record of this original (key, value, headers) plus our headers fits `budget`.
pub fn fits(key: Option<&[u8]>, payload: &[u8], headers_bytes: usize, budget: usize) -> bool {
    key.map_or(0, <[u8]>::len) + payload.len() + headers_bytes + 1024 + RECORD_OVERHEAD <= budget
}

/// Redoing a batch whose transaction was too large, in smaller transactions.
#[derive(Debug)]
pub(super) struct Isolation {
    /// The failed range: next offsets per input partition; isolation ends once all are committed.
    until: HashMap<i32, i64>,
    /// Input records per transaction while isolating.
    pub(super) batch: usize,
    /// Records whose own transaction was too large: dead-lettered instead of processed.
    skip: HashSet<(i32, i64)>,
}

/// Positions of the input partitions over time, to find one that does not move while records wait.
#[derive(Debug, Default)]
pub(super) struct PositionWatch {
    /// Per partition: its position and since when it has not moved (with records waiting).
    positions: HashMap<i32, (i64, Instant)>,
    /// Partitions stuck for the timeout.
    pub(super) stuck: HashSet<i32>,
}

impl PositionWatch {
    /// Takes (partition, position, records waiting) of the owned partitions at `now`; returns the
    /// partitions newly stuck (partition, offset, waiting, for how long) and those moving again.
    #[allow(clippy::type_complexity)]
    pub(super) fn observe(
        &mut self,
        positions: &[(i32, i64, i64)],
        paused: impl Fn(i32) -> bool,
        now: Instant,
        timeout: Duration,
    ) -> (Vec<(i32, i64, i64, Duration)>, Vec<(i32, i64)>) {
        let (mut stuck, mut moving) = (Vec::new(), Vec::new());
        for &(p, position, waiting) in positions {
            let entry = self.positions.entry(p).or_insert((position, now));
            if waiting == 0 || paused(p) || entry.0 != position {
                *entry = (position, now);
                if self.stuck.remove(&p) {
                    moving.push((p, position));
                }
            } else if now.duration_since(entry.1) >= timeout && self.stuck.insert(p) {
                stuck.push((p, position, waiting, now.duration_since(entry.1)));
            }
        }
        self.positions.retain(|p, _| positions.iter().any(|(q, _, _)| q == p));
        self.stuck.retain(|p| positions.iter().any(|(q, _, _)| q == p));
        (stuck, moving)
    }
}

impl Processor {
    /// A transaction failed because a record was too large: narrow down to the input record.
    /// Called before the abort, while `pending` and `batch_events` still describe the batch.
    pub(super) fn isolate_oversize(&mut self) {
        let pending = self.pending.clone();
        let events = self.batch_events;
        if let Some((p, offset)) = self.oversize_source.take() {
            // Known at once (its own output was refused): redo the batch without it, at full size.
            let iso = self.isolation.get_or_insert_with(|| Isolation { until: pending.clone(), batch: usize::MAX, skip: HashSet::new() });
            iso.skip.insert((p, offset));
            self.telemetry.poison_isolated(p, offset);
            return;
        }
        if pending.is_empty() {
            tracing::error!("a transaction without input failed for a record's size; nothing to isolate");
            return;
        }
        match &mut self.isolation {
            // A transaction of one input record failed: that record is the one.
            Some(iso) if events <= 1 && pending.len() == 1 => {
                let (&p, &next) = pending.iter().next().expect("one partition");
                iso.skip.insert((p, next - 1));
                self.telemetry.poison_isolated(p, next - 1);
            }
            // Redo the failed range one input record per transaction: each batch aborts at most once.
            Some(iso) => {
                iso.until = pending;
                iso.batch = 1;
            }
            None => self.isolation = Some(Isolation { until: pending, batch: 1, skip: HashSet::new() }),
        }
        tracing::warn!(events, "a record of the transaction was too large for the broker; redoing the batch one input record per transaction");
    }

    /// Whether `msg` is a record isolated as too large.
    pub(super) fn is_isolated(&self, partition: i32, offset: i64) -> bool {
        self.isolation.as_ref().is_some_and(|iso| iso.skip.contains(&(partition, offset)))
    }

    /// After a commit: isolation ends once the failed range is committed (or no longer ours).
    pub(super) fn isolation_progress(&mut self) {
        let done = self.isolation.as_ref().is_some_and(|iso| {
            iso.until.iter().all(|(p, next)| match self.committed.get(p) {
                Some(Some(c)) => c >= next,
                Some(None) => false,
                None => true,
            })
        });
        if done {
            self.isolation = None;
            tracing::info!("isolation finished; batches back to normal size");
        }
    }

    /// Finds input partitions whose position has not moved for the stall timeout while records
    /// wait (e.g. a batch the consumer cannot decompress or parse): each is logged once with its
    /// offset and counted, and the replica reports itself stalled while any is stuck, even when
    /// its other partitions progress.
    pub(super) fn watch_positions(&mut self, positions: &[(i32, i64, i64)]) {
        let timeout = self.cfg.processing.stall_timeout.as_duration();
        let paused = &self.paused;
        let (stuck, moving) = self.watch.observe(positions, |p| paused.contains_key(&p), Instant::now(), timeout);
        for (p, offset, waiting, since) in stuck {
            tracing::error!(partition = p, offset, waiting, seconds = since.as_secs(), "input partition does not move: records wait at this offset and none is delivered (see touchstream_consumer_errors_total); /readyz reports not ready");
        }
        for (p, offset) in moving {
            tracing::info!(partition = p, offset, "input partition moves again");
        }
        self.telemetry.stuck_partitions(self.watch.stuck.len());
    }

    /// Marks the replica stalled when input waits and nothing was committed for the timeout.
    pub(super) fn check_progress(&mut self, input_waiting: bool) {
        if !input_waiting {
            self.last_progress = Instant::now();
        }
        let stalled = self.last_progress.elapsed() >= self.cfg.processing.stall_timeout.as_duration() || !self.watch.stuck.is_empty();
        if stalled != self.health.is_stalled() {
            self.health.set_stalled(stalled);
            self.telemetry.stalled(stalled, self.last_progress.elapsed());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_that_does_not_move_with_records_waiting_is_stuck_once() {
        let mut w = PositionWatch::default();
        let t0 = Instant::now();
        let minute = Duration::from_secs(60);
        let at = |m: u32| t0 + minute * m;
        let none = |_| false;
        // 0 moves, 1 sits at 40 with 7 waiting, 2 sits at 9 with nothing waiting.
        assert_eq!(w.observe(&[(0, 10, 5), (1, 40, 7), (2, 9, 0)], none, at(0), 2 * minute), (vec![], vec![]));
        assert_eq!(w.observe(&[(0, 20, 5), (1, 40, 7), (2, 9, 0)], none, at(1), 2 * minute), (vec![], vec![]));
        let (stuck, moving) = w.observe(&[(0, 30, 5), (1, 40, 7), (2, 9, 0)], none, at(2), 2 * minute);
        assert_eq!((stuck, moving), (vec![(1, 40, 7, 2 * minute)], vec![]));
        assert_eq!(w.observe(&[(0, 40, 5), (1, 40, 7), (2, 9, 0)], none, at(3), 2 * minute), (vec![], vec![]), "reported once");
        assert!(w.stuck.contains(&1));
        // A paused partition (waiting for the registry) is not stuck; one that moves is released.
        assert_eq!(w.observe(&[(0, 50, 5), (1, 41, 6), (2, 9, 0)], |p| p == 0, at(9), 2 * minute), (vec![], vec![(1, 41)]));
        assert!(w.stuck.is_empty());
    }

    #[test]
    fn a_cart_takes_at_most_its_limit_of_distinct_products() {
        use crate::engine::{EngineConfig, PartitionEngine};
        let check = Validation { now: i64::MAX / 2, max_future_skew_ms: 0 };
        let mut engine = PartitionEngine::new(0, EngineConfig::default());
        let add =
            |n: u32, product: &str| format!(r#"{{"event_id":"e{n}","customer_id":"u","ts":{n},"event_type":"cart_add","product_id":"{product}","value":1}}"#);
        let mut out = Vec::new();
        for (n, product) in ["a", "b", "c"].iter().enumerate() {
            let json = add(n as u32, product);
            let ev = crate::event::decode(Some(b"u"), json.as_bytes(), &check).unwrap();
            assert!(oversize_cart(Some(&engine), &ev, 3).is_none());
            engine.process(&ev, &mut out);
        }
        let (more, again) = (add(9, "d"), add(10, "a"));
        let more = crate::event::decode(Some(b"u"), more.as_bytes(), &check).unwrap();
        let again = crate::event::decode(Some(b"u"), again.as_bytes(), &check).unwrap();
        let err = oversize_cart(Some(&engine), &more, 3).expect("a fourth product");
        assert_eq!(err.kind(), "too_large");
        assert!(err.to_string().contains("limits.max_cart_lines"), "{err}");
        assert!(oversize_cart(Some(&engine), &again, 3).is_none(), "more of a product already in the cart");
        assert!(oversize_cart(None, &more, 3).is_none());
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary_with_a_marker() {
        assert_eq!(truncate_reason("short", 512), "short");
        let long = "é".repeat(1000);
        let cut = truncate_reason(&long, 100);
        assert!(cut.len() <= 100 && cut.ends_with("bytes cut]"), "{cut}");
    }

    #[test]
    fn oversize_fields_and_records_are_named() {
        let check = Validation { now: i64::MAX / 2, max_future_skew_ms: 0 };
        let campaign = "c".repeat(600);
        let json = format!(r#"{{"event_id":"e1","customer_id":"u1","ts":1,"event_type":"click","channel":"email","campaign":"{campaign}"}}"#);
        let ev = crate::event::decode(Some(b"u1"), json.as_bytes(), &check).unwrap();
        let err = oversize_field(&ev, 512).expect("campaign is too long");
        assert_eq!(err.kind(), "too_large");
        assert!(err.to_string().contains("campaign") && err.to_string().contains("limits.max_field_bytes"), "{err}");
        assert!(oversize_field(&ev, 600).is_none());
        assert!(oversize_record(Some(b"u1"), json.as_bytes(), 100).is_some());
        assert!(oversize_record(Some(b"u1"), json.as_bytes(), 10_000).is_none());
        assert_eq!(sha256_hex(None, b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
