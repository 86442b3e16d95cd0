//! The engine on scripted journeys: credits, alerts, restore equivalence, batching independence.

use super::*;
use crate::changelog::ChangelogEntry;
use crate::event::{decode, Validation};

const MIN: Millis = 60_000;
const DAY: Millis = 86_400_000;
const T0: Millis = 1_767_225_600_000;

struct Feed {
    engine: PartitionEngine,
    out: Vec<Output>,
    n: u64,
}

impl Feed {
    fn new() -> Self {
        // without models: the rule is a timer at the target delay, 30 minutes here
        Feed { engine: PartitionEngine::new(0, EngineConfig { target_delay: 30 * MIN, ..EngineConfig::default() }), out: Vec::new(), n: 0 }
    }
    fn send(&mut self, customer: &str, ts: Millis, event_type: &str, extra: &str) {
        self.n += 1;
        let json = format!(r#"{{"event_id":"e{}","customer_id":"{customer}","ts":{ts},"event_type":"{event_type}"{extra}}}"#, self.n);
        let check = Validation { now: T0 + 365 * DAY, max_future_skew_ms: 0 };
        let ev = decode(Some(customer.as_bytes()), json.as_bytes(), &check).unwrap();
        self.engine.process(&ev, &mut self.out);
    }
    fn conversions(&self) -> Vec<&ConversionRecord> {
        self.out.iter().filter_map(|o| if let Output::Conversion(c) = o { Some(c) } else { None }).collect()
    }
    fn alerts(&self) -> Vec<&AlertRecord> {
        self.out.iter().filter_map(|o| if let Output::Alert(a) = o { Some(a) } else { None }).collect()
    }
}

#[test]
fn purchase_credits_the_journey_since_the_last_purchase() {
    let mut f = Feed::new();
    f.send("a", T0, "impression", r#","channel":"display","campaign":"spring""#);
    f.send("a", T0 + DAY, "purchase", r#","value":10"#);
    f.send("a", T0 + 2 * DAY, "click", r#","channel":"paid_search""#);
    f.send("a", T0 + 9 * DAY, "email_click", r#","channel":"email""#);
    f.send("a", T0 + 9 * DAY + MIN, "purchase", r#","value":30,"currency":"EUR""#);
    let c = f.conversions();
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].touchpoints.len(), 1);
    let second = c[1];
    assert_eq!(second.conversion_value, 30.0);
    assert_eq!(second.currency.as_deref(), Some("EUR"));
    let channels: Vec<_> = second.touchpoints.iter().map(|t| t.channel).collect();
    assert_eq!(channels, [Channel::PaidSearch, Channel::Email], "the display touch was spent by the first purchase");
    // 7 days apart = one half-life: 1/3 and 2/3 (up to the one minute before the conversion)
    let w_old = (-(7.0 * DAY as f64 + MIN as f64) / (7.0 * DAY as f64)).exp2();
    let w_new = (-(MIN as f64) / (7.0 * DAY as f64)).exp2();
    assert!((second.touchpoints[0].time_decay - w_old / (w_old + w_new)).abs() < 1e-12);
    assert_eq!(second.touchpoints[1].last_touch, 1.0);
}

#[test]
fn conversion_without_touchpoints_is_direct() {
    let mut f = Feed::new();
    f.send("b", T0, "purchase", r#","value":5"#);
    let c = f.conversions();
    assert_eq!(c[0].touchpoints.len(), 1);
    assert_eq!(c[0].touchpoints[0].channel, Channel::Direct);
    assert_eq!(c[0].touchpoints[0].event_id, None);
    assert_eq!(c[0].touchpoints[0].time_decay, 1.0);
    let n = f.engine.windows().get(T0, Channel::Direct).unwrap();
    assert_eq!(n.conversions, [1.0; 5]);
    assert_eq!(n.revenue, [5.0; 5]);
}

#[test]
fn abandoned_cart_alerts_once_at_last_activity_plus_timeout() {
    let mut f = Feed::new();
    f.send("c", T0, "click", r#","channel":"email","campaign":"w""#);
    f.send("c", T0 + MIN, "cart_add", r#","product_id":"p1","quantity":2,"value":60,"currency":"EUR""#);
    f.send("c", T0 + 5 * MIN, "page_view", "");
    // other customers move the watermark: 5m + 30m + 1m lateness
    f.send("x", T0 + 35 * MIN, "page_view", "");
    assert!(f.alerts().is_empty(), "watermark at 34m, deadline at 35m");
    f.send("x", T0 + 36 * MIN, "page_view", "");
    let a = f.alerts();
    assert_eq!(a.len(), 1);
    assert_eq!(a[0].alert_ts, T0 + 35 * MIN);
    assert_eq!(a[0].last_activity_ts, T0 + 5 * MIN);
    assert_eq!(a[0].cart_value, 120.0);
    assert_eq!(a[0].recommended_action, "incentive");
    assert_eq!(a[0].alert_id, "c:e2");
    assert_eq!(a[0].top_touchpoints.len(), 1);
    assert_eq!(a[0].top_touchpoints[0].channel, Channel::Email);
    f.send("x", T0 + 300 * MIN, "page_view", "");
    f.send("c", T0 + 301 * MIN, "page_view", "");
    assert_eq!(f.alerts().len(), 1, "one alert per cart");
    // a new cart after a purchase may alert again
    f.send("c", T0 + 302 * MIN, "purchase", r#","value":120"#);
    f.send("c", T0 + 303 * MIN, "cart_add", r#","product_id":"p2","value":5"#);
    f.send("x", T0 + 400 * MIN, "page_view", "");
    let a = f.alerts();
    assert_eq!(a.len(), 2);
    assert_eq!(a[1].recommended_action, "reminder");
    assert_eq!(a[1].alert_ts, T0 + 333 * MIN);
}

#[test]
fn purchase_within_the_timeout_never_alerts() {
    let mut f = Feed::new();
    f.send("d", T0, "cart_add", r#","product_id":"p","value":10"#);
    f.send("d", T0 + 20 * MIN, "purchase", r#","value":10"#);
    f.send("x", T0 + 10 * DAY, "page_view", "");
    assert!(f.alerts().is_empty());
    assert_eq!(f.conversions()[0].conversion_value, 10.0);
}

#[test]
fn the_customers_own_late_return_proves_abandonment() {
    let mut f = Feed::new();
    f.send("e", T0, "cart_add", r#","product_id":"p","value":10"#);
    // no other traffic: the watermark only moves with this customer's events
    f.send("e", T0 + 31 * MIN, "purchase", r#","value":10"#);
    let a = f.alerts();
    assert_eq!(a.len(), 1, "31 minutes of silence is abandonment, even if the customer came back");
    assert_eq!(a[0].alert_ts, T0 + 30 * MIN);
    assert_eq!(f.conversions().len(), 1);
}

#[test]
fn emptied_cart_does_not_alert_and_idle_advance_fires_timers() {
    let mut f = Feed::new();
    f.send("g", T0, "cart_add", r#","product_id":"p","value":10"#);
    f.send("g", T0 + MIN, "cart_remove", r#","product_id":"p""#);
    f.send("h", T0 + 2 * MIN, "cart_add", r#","product_id":"q","value":10"#);
    let mut out = Vec::new();
    f.engine.advance_idle(T0 + 2 * MIN + 31 * MIN, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let Output::Alert(a) = &out[0] else { panic!() };
    assert_eq!(a.customer_id, "h");
    assert_eq!(a.alert_ts, T0 + 32 * MIN);
}

#[test]
fn an_idle_partition_writes_nothing_until_a_timer_fires() {
    let mut f = Feed::new();
    f.send("g", T0, "click", r#","channel":"email""#);
    f.send("g", T0 + MIN, "cart_add", r#","product_id":"p","value":10"#);
    let mut log = Vec::new();
    f.engine.drain_changelog(&[], &mut log).unwrap();
    assert!(!log.is_empty(), "the first drain writes the customer and the meta");
    // The idle watermark follows the wall clock: nothing changes, nothing is written.
    let mut out = Vec::new();
    for minute in 2..20 {
        f.engine.advance_idle(T0 + minute * MIN + MIN, &mut out);
        log.clear();
        f.engine.drain_changelog(&[], &mut log).unwrap();
        assert!(log.is_empty() && out.is_empty(), "minute {minute}: {log:?} {out:?}");
    }
    // Until the cart's timer fires: the alert, the customer and the meta go out together.
    f.engine.advance_idle(T0 + 40 * MIN, &mut out);
    log.clear();
    f.engine.drain_changelog(&[], &mut log).unwrap();
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(log.iter().any(|e| e.key == crate::changelog::META_KEY) && log.len() >= 2, "{log:?}");
}

#[test]
fn restoring_from_the_changelog_continues_exactly_like_an_uninterrupted_run() {
    // short retention and TTL so that windows close and customers expire within the stream
    let cfg = EngineConfig { window_retention: 0, customer_ttl: 40 * MIN, ..EngineConfig::default() };
    restore_equivalence(cfg, &[9_699, 20_272], 1);
}

/// Snapshots every 7th commit; a crash restores the last snapshot and replays the input since
/// (its outputs dropped): the state and every output after it are an uninterrupted run's.
#[test]
fn a_snapshot_and_a_replay_of_the_input_since_continue_like_an_uninterrupted_run() {
    let cfg = EngineConfig { window_retention: 0, customer_ttl: 40 * MIN, ..EngineConfig::default() };
    restore_equivalence(cfg.clone(), &[9_699, 20_272], 7);
    let crashes: Vec<usize> = (1..30).map(|k| k * 970 + 96).collect();
    let cfg = EngineConfig { target_delay: 30 * MIN, abandon_threshold: Some(0.5), ..cfg };
    restore_equivalence(cfg.with_models(Some(crate::inference::test_models())), &crashes, 7);
}

/// With models, a low threshold at the model's early checks (many model alerts) and a crash after
/// many commits: the model's checks and scores replay exactly.
#[test]
fn model_alerts_replay_exactly_after_a_restore() {
    let cfg = EngineConfig { window_retention: 0, customer_ttl: 40 * MIN, target_delay: 30 * MIN, abandon_threshold: Some(0.5), ..EngineConfig::default() };
    let crashes: Vec<usize> = (1..30).map(|k| k * 970 + 96).collect();
    let out = restore_equivalence(cfg.with_models(Some(crate::inference::test_models())), &crashes, 1);
    let model_alerts = out.iter().filter(|o| matches!(o, Output::Alert(a) if a.reason == "model")).count();
    assert!(model_alerts > 20, "the stream has model alerts to compare: {model_alerts}");
}

/// Runs the demo stream whole and with a commit every 97 events, every `snapshot_every`-th of
/// them a snapshot, and a crash + restore (+ replay of the input since the snapshot) after the
/// commits at `crashes`; asserts the same outputs and returns them.
fn restore_equivalence(cfg: EngineConfig, crashes: &[usize], snapshot_every: usize) -> Vec<Output> {
    let raw: Vec<(String, Vec<u8>)> = touchstream_sim::stream::default_events(3, 300, 0.5, 30_000).into_iter().map(|r| (r.customer_id, r.json)).collect();
    let check = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };
    let events: Vec<Event<'_>> = raw.iter().map(|(k, j)| decode(Some(k.as_bytes()), j, &check).unwrap()).collect();

    let mut whole = PartitionEngine::new(0, cfg.clone());
    let mut expected = Vec::new();
    for e in &events {
        whole.process(e, &mut expected);
    }

    // the same stream with a "commit" every 97 events, and a crash + restore at two points
    let mut engine = PartitionEngine::new(0, cfg.clone());
    let mut got = Vec::new();
    let mut log: Vec<ChangelogEntry> = Vec::new();
    let (mut windows, mut wins) = (Vec::new(), Vec::new());
    let mut replays = 0;
    for (i, e) in events.iter().enumerate() {
        engine.process(e, &mut got);
        if i % 97 == 96 {
            engine.settle(&mut got);
            engine.drain_changed_windows(&mut windows);
            wins.append(&mut windows);
            engine.note_changes(&wins, None, &mut log).unwrap();
            if (i / 97) % snapshot_every == 0 || engine.snapshot_due() {
                engine.drain_snapshot(Some(i as i64 + 1), &mut log).unwrap();
            }
            wins.clear();
        }
        if crashes.contains(&i) {
            // crash right after a commit: rebuild from the changelog, replay the input since
            let mut restored = PartitionEngine::new(0, cfg.clone());
            for entry in &log {
                restored.restore(&entry.key, entry.value.as_deref()).unwrap();
            }
            restored.finish_restore();
            let from = restored.snapshot_offset().expect("a snapshot") as usize;
            replays += usize::from(from <= i);
            let mut dropped = Vec::new();
            for e in &events[from..=i] {
                restored.process(e, &mut dropped);
            }
            if from <= i {
                restored.finish_replay(false);
            }
            assert_eq!(restored.customers(), engine.customers());
            for (k, c) in &engine.customers {
                let mut r = restored.customers[k].clone();
                (r.queued, r.unsaved) = (c.queued, c.unsaved);
                assert_eq!(&r, c, "customer {k}");
            }
            engine = restored;
        }
    }
    assert!(expected.len() > 100, "the stream has conversions and alerts: {}", expected.len());
    assert_eq!(replays > 0, snapshot_every > 1, "crashes between snapshots replay the input since");
    // both settled at the end (as before a commit); the same outputs, though with models due
    // checks wait for the step model's queue, so their place among a batch's outputs may differ
    whole.settle(&mut expected);
    engine.settle(&mut got);
    assert_eq!(as_set(&got), as_set(&expected));
    let tombstones = log.iter().filter(|e| e.value.is_none()).count();
    assert!(tombstones > 0, "closed windows and expired customers are deleted from the changelog");
    assert!(whole.expired_customers > 0);
    got
}

#[test]
fn output_does_not_depend_on_how_events_are_batched_and_customers_expire() {
    // the engine sees events one by one; a second run over the same events yields the same records
    let mut runs = Vec::new();
    for _ in 0..2 {
        let mut f = Feed::new();
        for i in 0..200i64 {
            let c = format!("k{}", i % 17);
            let t = T0 + i * 7 * MIN;
            match i % 5 {
                0 => f.send(&c, t, "impression", r#","channel":"display""#),
                1 => f.send(&c, t, "cart_add", r#","product_id":"p","value":3"#),
                2 => f.send(&c, t, "click", r#","channel":"affiliate""#),
                3 => f.send(&c, t, "page_view", ""),
                _ => {
                    if i % 3 == 0 {
                        f.send(&c, t, "purchase", r#","value":9"#)
                    }
                }
            }
        }
        f.send("late", T0 + 40 * DAY, "page_view", "");
        assert_eq!(f.engine.customers(), 1, "all but the newest customer expired after the TTL");
        runs.push(f.out);
    }
    assert_eq!(runs[0], runs[1]);
    assert!(runs[0].iter().any(|o| matches!(o, Output::Alert(_))));
}

/// An erased customer leaves the state (their cart's alert is cancelled) with a changelog
/// tombstone and a scores tombstone; the erasure offset rides in the meta record and restores;
/// the customer's next event starts a fresh journey.
#[test]
fn erasure_forgets_the_customer_and_its_offset_restores_with_the_state() {
    let mut f = Feed::new();
    f.send("c", T0, "click", r#","channel":"email""#);
    f.send("c", T0 + MIN, "cart_add", r#","product_id":"p1","quantity":1,"value":10"#);
    f.send("d", T0, "click", r#","channel":"display""#);
    let mut log = Vec::new();
    f.engine.drain_changelog(&[], &mut log).unwrap();
    let erased = f.engine.erase("c", 41);
    assert_eq!((erased.found, erased.touchpoints, erased.open_cart), (true, 1, true));
    assert!(!f.engine.erase("nobody", 42).found);
    assert_eq!(f.engine.erasure_offset(), 43);
    let mut tombstones = Vec::new();
    f.engine.drain_score_tombstones(&mut tombstones);
    assert_eq!(tombstones, vec![Box::from("c"), Box::from("nobody")]);
    let mut log2 = Vec::new();
    f.engine.drain_changelog(&[], &mut log2).unwrap();
    assert!(log2.iter().any(|e| e.key == b"c" && e.value.is_none()), "changelog tombstone");
    log.extend(log2);
    // the watermark passes the cart's deadline: no alert for an erased cart
    f.send("d", T0 + 120 * MIN, "page_view", "");
    assert!(f.alerts().is_empty());
    // restore from the changelog: the offset comes back, the customer does not
    let mut restored = PartitionEngine::new(0, f.engine.cfg.clone());
    for e in &log {
        restored.restore(&e.key, e.value.as_deref()).unwrap();
    }
    assert_eq!(restored.erasure_offset(), 43);
    assert!(restored.customer("c").is_none() && restored.customer("d").is_some());
    // a later event of the customer starts fresh
    f.send("c", T0 + 180 * MIN, "purchase", r#","value":5"#);
    let c = f.conversions().pop().unwrap();
    assert!(c.touchpoints.len() == 1 && c.touchpoints[0].event_id.is_none(), "{c:?}");
}

/// A customer who expires by the TTL after a score was written leaves the scores topic too (a
/// tombstone); one who never had a score written gets none.
#[test]
fn expiry_tombstones_the_scores_of_customers_who_had_one() {
    let cfg = EngineConfig { customer_ttl: DAY, ..EngineConfig::default() }.with_models(Some(crate::inference::test_models()));
    let mut f = Feed { engine: PartitionEngine::new(0, cfg), out: Vec::new(), n: 0 };
    f.send("scored", T0, "click", r#","channel":"email""#);
    let mut scores = Vec::new();
    f.engine.drain_scores(&mut scores);
    assert_eq!(scores.iter().map(|s| s.customer_id.as_str()).collect::<Vec<_>>(), ["scored"]);
    f.engine.drain_changelog(&[], &mut Vec::new()).unwrap();
    // "unscored" arrives after the drain: its score is never written
    f.send("unscored", T0 + MIN, "click", r#","channel":"email""#);
    let mut tombstones = Vec::new();
    f.engine.drain_score_tombstones(&mut tombstones);
    assert!(tombstones.is_empty());
    // two days later both are past the TTL
    f.send("later", T0 + 2 * DAY + 2 * 3_600_000, "page_view", "");
    assert!(f.engine.customer("scored").is_none() && f.engine.customer("unscored").is_none());
    f.engine.drain_score_tombstones(&mut tombstones);
    assert_eq!(tombstones, vec![Box::<str>::from("scored")]);
}

/// Outputs in a canonical order (their debug text, sorted), to compare runs that may write them
/// in another order within a batch.
pub(super) fn as_set(outputs: &[Output]) -> Vec<String> {
    let mut v: Vec<String> = outputs.iter().map(|o| format!("{o:?}")).collect();
    v.sort();
    v
}

/// Above the sample size the state gauge is the sample's mean times the count: with customers
/// of two shapes mixed evenly, it stays within 2% of the exact sum.
#[test]
fn state_bytes_above_the_sample_are_estimated_from_it() {
    let mut f = Feed::new();
    let n = super::state_io::STATE_SAMPLE + 8_000;
    for i in 0..n {
        let c = format!("customer-{i}");
        f.send(&c, T0 + i as Millis, "click", r#","channel":"email","campaign":"spring""#);
        if i % 2 == 0 {
            f.send(&c, T0 + i as Millis + 1, "impression", r#","channel":"display","campaign":"autumn-display""#);
        }
    }
    let exact: usize = f.engine.customers.iter().map(|(k, c)| c.approx_bytes(k.len())).sum::<usize>() + f.engine.windows.len() * 128;
    let estimate = f.engine.approx_bytes();
    assert_eq!(f.engine.customers(), n);
    assert!((estimate as f64 - exact as f64).abs() < 0.02 * exact as f64, "estimate {estimate}, exact {exact}");
}

#[test]
fn a_forced_snapshot_is_due_until_the_next_snapshot_is_drained() {
    let mut f = Feed::new();
    f.send("a", T0, "click", r#","channel":"email""#);
    let mut log = Vec::new();
    f.engine.note_changes(&[], None, &mut log).unwrap();
    assert!(f.engine.snapshot_due(), "no snapshot yet");
    f.engine.drain_snapshot(Some(1), &mut log).unwrap();
    assert!(!f.engine.snapshot_due());
    f.engine.force_snapshot(); // a dead letter, a clean stop
    assert!(f.engine.snapshot_due());
    log.clear();
    f.engine.drain_snapshot(Some(2), &mut log).unwrap();
    assert!(!f.engine.snapshot_due());
    assert_eq!(f.engine.snapshot_offset(), Some(2));
}
