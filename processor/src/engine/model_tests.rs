//! The engine with models against `models/fixtures/stream_parity.json`: the training pipeline's own
//! features, ONNX Runtime step outputs and deep credits for a stream of simulated customers.

use serde_json::Value;

use super::*;
use crate::event::{decode, Validation};
use crate::inference::test_models;

fn engine_with_models() -> PartitionEngine {
    PartitionEngine::new(0, EngineConfig::default().with_models(Some(test_models())))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

/// Feeds `events` one at a time, flushing after each, and compares features, scores and hidden
/// state heads with `steps`, then the deep credit of every conversion.
fn check_stream(events: &[Value], steps: &[Value], conversions: &[Value]) -> usize {
    let mut engine = engine_with_models();
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let mut out = Vec::new();
    let mut worst = [0f64; 5];
    let mut explained = 0;
    for (ev, step) in events.iter().zip(steps) {
        let text = serde_json::to_string(ev).unwrap();
        let key = ev["customer_id"].as_str().unwrap();
        let e = decode(Some(key.as_bytes()), text.as_bytes(), &check).unwrap_or_else(|err| panic!("{err}: {text}"));
        engine.process(&e, &mut out);
        let s = engine.scoring.as_ref().unwrap();
        let got = s.last_features().to_vec();
        engine.flush();
        let want: Vec<f64> = step["features"].as_array().unwrap().iter().map(f).collect();
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let d = (f64::from(*g) - w).abs();
            worst[0] = worst[0].max(d);
            assert!(d <= 1e-6, "event {}: feature {} ({}) is {g}, the pipeline computes {w}", step["event_id"], i, features::NAMES[i]);
        }
        let m = engine.customer(key).unwrap().model.as_ref().unwrap();
        let (pp, pa, ev_) = (f64::from(m.scores[P_PURCHASE]), f64::from(m.scores[P_ABANDON]), f64::from(m.scores[EXPECTED_VALUE]));
        let d = [
            (pp - f(&step["p_purchase"])).abs(),
            (pa - f(&step["p_abandon"])).abs(),
            (ev_ - f(&step["expected_value"])).abs() / f(&step["expected_value"]).abs().max(1.0),
        ];
        for (k, d) in d.iter().enumerate() {
            worst[1 + k.min(2)] = worst[1 + k.min(2)].max(*d);
            assert!(*d <= 1e-4, "event {}: score {k} differs by {d} from ONNX Runtime", step["event_id"]);
        }
        for (j, w) in step["hidden_out_head"].as_array().unwrap().iter().enumerate() {
            assert!((f64::from(m.hidden()[j]) - f(w)).abs() <= 1e-4, "event {}: hidden[{j}]", step["event_id"]);
        }
        // the re-check head's probabilities, kept in the customer's state
        let want = step["p_abandon_after"].as_array().expect("the fixture carries p_abandon_after");
        assert_eq!(m.checks().len(), want.len(), "event {}: re-check values", step["event_id"]);
        for (j, w) in want.iter().enumerate() {
            let d = (f64::from(m.checks()[j]) - f(w)).abs();
            worst[4] = worst[4].max(d);
            assert!(d <= 1e-4, "event {}: p_abandon_after[{j}] differs by {d} from ONNX Runtime", step["event_id"]);
        }
        // an open cart keeps the model's input of its latest event, and rerunning it (the base
        // row of the alert reasons) gives the stored probabilities
        let c = engine.customer(key).unwrap().clone();
        if c.cart.as_ref().is_some_and(|cart| !cart.alerted) {
            let m = c.model.as_ref().unwrap();
            for column in [0, m.checks().len() - 1] {
                let p = engine.scoring.as_mut().unwrap().occlusion_probabilities(&c, column).expect("an open cart keeps its input");
                assert_eq!(p.len(), 1 + crate::alerts::reasons::Group::ALL.len());
                assert!((p[0] - m.checks()[column]).abs() <= 1e-6, "event {}: base row gives {} not {}", step["event_id"], p[0], m.checks()[column]);
            }
            explained += 1;
        } else {
            assert!(c.abandon_input.is_empty(), "event {}: no cart, no stored input", step["event_id"]);
        }
    }

    // a conversion is written once its purchase is scored and the engine next writes outputs
    engine.settle(&mut out);
    let records: Vec<&ConversionRecord> = out.iter().filter_map(|o| if let Output::Conversion(c) = o { Some(c) } else { None }).collect();
    assert_eq!(records.len(), conversions.len(), "one conversion record per purchase");
    for want in conversions {
        let id = want["purchase_event_id"].as_str().unwrap();
        let got = records.iter().find(|r| r.conversion_id == id).unwrap_or_else(|| panic!("no conversion {id}"));
        // credits and the baseline's share make the whole conversion
        let sum: f64 = got.touchpoints.iter().map(|t| t.deep.unwrap()).sum::<f64>() + got.deep_baseline.unwrap_or(0.0);
        assert!((sum - 1.0).abs() < 1e-9, "{id}: deep credits and baseline sum to {sum}");
        if want["skipped_no_touchpoints"].as_bool() == Some(true) {
            assert_eq!(got.touchpoints[0].channel, Channel::Direct);
            continue;
        }
        let fallback = want["fallback_time_decay"].as_bool().unwrap();
        assert_eq!(got.deep_method == Some("time_decay_fallback"), fallback, "{id}: fallback");
        if !fallback {
            assert!((got.conversion_probability.unwrap() - f(&want["p_full"])).abs() <= 1e-5, "{id}: P(conversion)");
        }
        let journey = want["journey"].as_array().unwrap();
        assert_eq!(got.touchpoints.len(), journey.len(), "{id}: journey length");
        for (t, w) in got.touchpoints.iter().zip(journey) {
            assert_eq!(t.event_id.as_deref(), w["event_id"].as_str(), "{id}: journey order");
            let d = (t.deep.unwrap() - f(&w["credit"])).abs();
            assert!(d <= 1e-3, "{id}: deep credit of {} is {} but the pipeline computes {}", w["event_id"], t.deep.unwrap(), w["credit"]);
        }
    }
    eprintln!(
        "max differences: features {:.2e}, p_purchase {:.2e}, p_abandon {:.2e}, expected value (rel) {:.2e}, p_abandon_after {:.2e}",
        worst[0], worst[1], worst[2], worst[3], worst[4]
    );
    explained
}

#[test]
fn features_scores_and_deep_credit_match_the_training_pipeline() {
    let doc: Value = serde_json::from_str(include_str!("../../../models/fixtures/stream_parity.json")).unwrap();
    let arr = |v: &Value| v.as_array().unwrap().clone();
    let mut explained = check_stream(&arr(&doc["events"]), &arr(&doc["steps"]), &arr(&doc["conversions"]));
    let syn = &doc["synthetic"];
    explained += check_stream(&arr(&syn["events"]), &arr(&syn["steps"]), &arr(&syn["conversions"]));
    assert!(explained > 0, "the streams have open carts");
}

/// Scores and every output are the same whether the step model ran one event at a time or in
/// large waves of many customers.
#[test]
fn outputs_do_not_depend_on_inference_batching() {
    let events = touchstream_sim::stream::default_events(42, 300, 0.5, 6000);
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let run = |flush_each: bool| {
        // thresholds low enough that the model alerts too, beside the rule
        let cfg = EngineConfig { abandon_threshold: Some(0.8), ..EngineConfig::default() };
        let mut engine = PartitionEngine::new(0, cfg.with_models(Some(test_models())));
        let mut out = Vec::new();
        for ev in &events {
            engine.process(&decode(Some(ev.customer_id.as_bytes()), &ev.json, &check).unwrap(), &mut out);
            if flush_each {
                engine.flush();
            }
        }
        engine.advance_idle(i64::MAX / 4, &mut out);
        let mut scores = Vec::new();
        engine.drain_scores(&mut scores);
        let stats = engine.take_scoring_stats(&mut Vec::new());
        (out, scores, stats)
    };
    let (one, one_scores, one_stats) = run(true);
    let (batched, batched_scores, batched_stats) = run(false);
    assert_eq!(one_stats.rows, batched_stats.rows);
    // the simulated stream's waves are cut by cart decisions that need a score (~6 rows a call)
    assert!(batched_stats.calls * 4 < one_stats.calls, "batched: {} calls for {} rows", batched_stats.calls, batched_stats.rows);
    assert_eq!(one_scores, batched_scores);
    assert_eq!(super::tests::as_set(&one), super::tests::as_set(&batched));
    let alerts = |reason: &str| one.iter().filter(|o| matches!(o, Output::Alert(a) if a.reason == reason)).count();
    assert!(alerts("model") > 0 && alerts("safety_net") > 0, "model {} safety net {}", alerts("model"), alerts("safety_net"));
}

/// A hidden state of another layout (restored from an older model) is reset, counted, and the
/// customer goes on with the current model; swapping models in and out keeps the engine running.
#[test]
fn hidden_states_of_another_layout_are_reset_and_models_can_be_swapped() {
    let mut engine = engine_with_models();
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let mut out = Vec::new();
    let send = |engine: &mut PartitionEngine, out: &mut Vec<Output>, id: &str, ts: i64, kind: &str| {
        let json = format!(r#"{{"event_id":"{id}","customer_id":"a","ts":{ts},"event_type":"{kind}","channel":"email"}}"#);
        engine.process(&decode(Some(b"a"), json.as_bytes(), &check).unwrap(), out);
        engine.settle(out);
    };
    send(&mut engine, &mut out, "1", 1_767_225_600_000, "click");
    assert_eq!(engine.customer("a").unwrap().model.as_ref().unwrap().hidden().len(), 64);
    engine.customers.get_mut("a").unwrap().model.as_mut().unwrap().set(&[0.5; 10], &[]);
    send(&mut engine, &mut out, "2", 1_767_225_660_000, "click");
    let stats = engine.take_scoring_stats(&mut Vec::new());
    assert_eq!(stats.resets, 1);
    assert_eq!(engine.customer("a").unwrap().model.as_ref().unwrap().hidden().len(), 64);

    assert_eq!(engine.set_models(Some(test_models()), None).unwrap(), 0, "same layout: nothing reset");
    assert_eq!(engine.set_models(None, None).unwrap(), 1, "models off: the hidden state is dropped");
    send(&mut engine, &mut out, "3", 1_767_225_720_000, "purchase");
    let Some(Output::Conversion(c)) = out.last() else { panic!("a conversion") };
    assert!(c.deep_method.is_none() && c.model_version.is_none() && c.touchpoints.iter().all(|t| t.deep.is_none()));
    engine.set_models(Some(test_models()), None).unwrap();
    send(&mut engine, &mut out, "4", 1_767_225_780_000, "click");
    send(&mut engine, &mut out, "5", 1_767_225_840_000, "purchase");
    let Some(Output::Conversion(c)) = out.last() else { panic!("a conversion") };
    assert_eq!(c.model_version.as_deref(), Some(&*test_models().version));
    assert!((c.touchpoints.iter().map(|t| t.deep.unwrap()).sum::<f64>() + c.deep_baseline.unwrap_or(0.0) - 1.0).abs() < 1e-9);
}

/// With the re-check head, an idle cart is checked at each inactivity of the model's schedule (by
/// the watermark, or by the customer's own next event), in order, and alerts at the first check
/// whose probability reaches the threshold, carrying that probability; without an alert the safety
/// net fires with the last probability read.
#[test]
fn idle_carts_are_rechecked_on_the_models_schedule() {
    let schedule = test_models().step.checks_ms.clone();
    assert!(schedule.len() > 2, "the built-in step model has a re-check head: {schedule:?}");
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let t0 = 1_767_225_600_000;
    let events = [
        (t0, r#""event_type":"click","channel":"paid_social""#),
        (t0 + 20_000, r#""event_type":"page_view""#),
        (t0 + 60_000, r#""event_type":"product_view","product_id":"p1""#),
        (t0 + 90_000, r#""event_type":"cart_add","product_id":"p1","quantity":1,"value":80.0,"currency":"EUR""#),
    ];
    let last = t0 + 90_000;
    let engine_with = |threshold: f64| {
        let cfg = EngineConfig {
            target_delay: *schedule.last().unwrap(),
            safety_net: schedule.last().unwrap() + 3_600_000,
            abandon_threshold: Some(threshold),
            ..EngineConfig::default()
        };
        let mut engine = PartitionEngine::new(0, cfg.with_models(Some(test_models())));
        let mut out = Vec::new();
        for (n, (ts, rest)) in events.iter().enumerate() {
            let json = format!(r#"{{"event_id":"e{n}","customer_id":"a","ts":{ts},{rest}}}"#);
            engine.process(&decode(Some(b"a"), json.as_bytes(), &check).unwrap(), &mut out);
        }
        engine.flush();
        (engine, out)
    };
    let alerts = |out: &[Output]| -> Vec<AlertRecord> { out.iter().filter_map(|o| if let Output::Alert(a) = o { Some(a.clone()) } else { None }).collect() };

    // never reached: every check runs, then the rule alerts with the last check's probability
    let k_last = schedule.len() - 1;
    let (mut engine, mut out) = engine_with(1.1);
    let p = engine.customer("a").unwrap().model.as_ref().unwrap().checks().to_vec();
    assert_eq!(p.len(), schedule.len());
    assert!(p.iter().all(|p| (0.0..=1.0).contains(p)));
    engine.advance_idle(last + schedule[1] + 1 + engine.cfg.allowed_lateness, &mut out);
    assert!(alerts(&out).is_empty());
    assert_eq!(engine.customer("a").unwrap().cart.as_ref().unwrap().checks_done, 2, "the checks due so far ran");
    engine.advance_idle(i64::MAX / 4, &mut out);
    let a = alerts(&out);
    assert_eq!(a.len(), 1);
    assert_eq!((a[0].reason, a[0].alert_ts), ("safety_net", last + engine.cfg.safety_net));
    assert_eq!(a[0].abandonment_probability, Some(f64::from(*p.last().unwrap())));

    // a customer who comes back to the cart after every check ran (well before the safety net) is
    // checked again on the schedule from the return, by the watermark alone
    let (mut engine, mut out) = engine_with(1.1);
    engine.advance_idle(last + schedule[k_last] + 1 + engine.cfg.allowed_lateness, &mut out);
    assert_eq!(usize::from(engine.customer("a").unwrap().cart.as_ref().unwrap().checks_done), schedule.len());
    let back = last + schedule[k_last] + 60_000;
    let json = format!(r#"{{"event_id":"back","customer_id":"a","ts":{back},"event_type":"page_view"}}"#);
    engine.process(&decode(Some(b"a"), json.as_bytes(), &check).unwrap(), &mut out);
    engine.advance_idle(back + schedule[1] + 1 + engine.cfg.allowed_lateness, &mut out);
    let cart = engine.customer("a").unwrap().cart.clone().unwrap();
    assert_eq!((cart.model_checked, cart.checks_done), (back, 2), "the checks after the return ran");
    assert!(alerts(&out).is_empty());

    // a threshold only the most confident early check reaches: the alert comes at that check
    let top = p[..k_last].iter().cloned().fold(f32::MIN, f32::max);
    let j = p.iter().position(|x| *x == top).unwrap();
    for by_event in [false, true] {
        let (mut engine, mut out) = engine_with(f64::from(top));
        if by_event {
            // the customer's own next event, long after, shows the inactivity
            let json = format!(r#"{{"event_id":"late","customer_id":"a","ts":{},"event_type":"page_view"}}"#, last + schedule[k_last] + 1);
            engine.process(&decode(Some(b"a"), json.as_bytes(), &check).unwrap(), &mut out);
        } else {
            engine.advance_idle(i64::MAX / 4, &mut out);
        }
        let a = alerts(&out);
        assert_eq!(a.len(), 1, "by event: {by_event}");
        assert_eq!((a[0].reason, a[0].alert_ts), ("model", last + schedule[j]), "check {j} of {p:?}");
        assert_eq!(a[0].abandonment_probability, Some(f64::from(top)));
        let value = a[0].expected_recoverable_value.unwrap();
        assert!((value - 80.0 * f64::from(top) * engine.cfg.recovery_rate).abs() < 1e-9, "{value}");
    }
}

/// The model's policies: the one for the largest target at or below `alerts.target_delay` is used,
/// its checks only, each with its threshold; a target below every policy is refused naming the key;
/// without models the rule is the timer at the target delay.
#[test]
fn the_alert_policy_follows_the_target_delay() {
    use crate::alerts::Policy;
    let models = test_models();
    let step = &models.step;
    assert!(!step.policies.is_empty(), "the built-in step model carries alert policies");
    for p in &step.policies {
        let cfg = EngineConfig { target_delay: p.target_ms + 60_000, ..EngineConfig::default() };
        let policy = Policy::resolve(&cfg, Some(&models)).unwrap();
        let got: Vec<(i64, f64)> = policy.checks.iter().map(|c| (c.after, c.threshold)).collect();
        let want: Vec<(i64, f64)> = p.checks.iter().map(|&(col, t)| (step.checks_ms[col], t)).collect();
        assert_eq!(got, want);
        assert_eq!(policy.rule, Some((cfg.safety_net, "safety_net")));
    }
    let smallest = step.policies.iter().map(|p| p.target_ms).min().unwrap();
    let cfg = EngineConfig { target_delay: smallest - 1, ..EngineConfig::default() };
    let e = Policy::check(&cfg, Some(&models)).unwrap_err().to_string();
    assert!(e.contains("alerts.target_delay"), "{e}");
    let cfg = EngineConfig { target_delay: smallest - 1, abandon_threshold: Some(0.9), ..EngineConfig::default() };
    assert!(Policy::resolve(&cfg, Some(&models)).unwrap().checks.iter().all(|c| c.after < smallest && c.threshold == 0.9));
    let cfg = EngineConfig { safety_net: 0, ..EngineConfig::default() };
    assert_eq!(Policy::resolve(&cfg, Some(&models)).unwrap().rule, None);
    assert_eq!(Policy::resolve(&cfg, None).unwrap(), Policy { checks: Vec::new(), rule: Some((cfg.target_delay, "inactivity_timeout")) });
}

/// The binary customer state (with the step model's hidden state and re-check values) restores to
/// the same state and is much smaller than the JSON of earlier versions, which still restores.
#[test]
fn customer_state_is_binary_and_json_still_restores() {
    let doc: Value = serde_json::from_str(include_str!("../../../models/fixtures/stream_parity.json")).unwrap();
    let mut engine = engine_with_models();
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let mut out = Vec::new();
    for ev in doc["events"].as_array().unwrap() {
        let text = serde_json::to_string(ev).unwrap();
        let key = ev["customer_id"].as_str().unwrap();
        engine.process(&decode(Some(key.as_bytes()), text.as_bytes(), &check).unwrap(), &mut out);
    }
    let mut log = Vec::new();
    engine.drain_changelog(&[], &mut log).unwrap();
    let (mut binary, mut json, mut customers, mut compact, mut v2_bytes, mut shared_campaigns) = (0, 0, 0, 0, 0, 0);
    let mut engine_names = Vec::new();
    for e in &log {
        let Some(crate::changelog::ChangelogKey::Customer(id)) = crate::changelog::parse_key(&e.key) else { continue };
        let value = e.value.as_ref().unwrap();
        assert_eq!(value[0], crate::changelog::CUSTOMER_V3);
        let state = engine.customer(id).unwrap();
        assert!(state.model.is_some(), "{id} has model state");
        let back: CustomerState = crate::changelog::decode_customer(value).unwrap();
        assert_eq!(&back, state, "{id} round trips");
        // a campaign's name is one allocation per partition in the engine, and per customer in a
        // decoded record (the restore then shares it with the partition's)
        shared_campaigns += shared_names(state, &mut engine_names, id);
        shared_names(&back, &mut Vec::new(), id);
        // version 2: the touchpoints in the state's own serde form
        let mut v2 = Vec::new();
        crate::changelog::encode_customer_v2(state, &mut v2).unwrap();
        assert_eq!(&crate::changelog::decode_customer(&v2).unwrap(), state, "{id} from version 2");
        if !state.touchpoints.is_empty() {
            assert!(value.len() < v2.len(), "{id}: version 3 ({} B) is smaller than version 2 ({} B)", value.len(), v2.len());
        }
        compact += value.len();
        v2_bytes += v2.len();
        // version 1 was version 2 without the trailing `abandon_input`
        let mut without = state.clone();
        without.abandon_input = Box::default();
        let mut v1 = Vec::new();
        crate::changelog::encode_customer_v2(&without, &mut v1).unwrap();
        assert_eq!(v1.pop(), Some(0));
        v1[0] = crate::changelog::CUSTOMER_V1;
        let old: CustomerState = crate::changelog::decode_customer(&v1).unwrap();
        assert_eq!(old, without, "{id} from version 1");
        let old = serde_json::to_vec(state).unwrap();
        let mut from_json: CustomerState = crate::changelog::decode_customer(&old).unwrap();
        // serde_json reads floats to the nearest 1e-15 or so; the binary encoding is exact.
        assert!((from_json.counters.revenue - state.counters.revenue).abs() < 1e-9);
        from_json.counters.revenue = state.counters.revenue;
        assert_eq!(&from_json, state, "{id} from the JSON of earlier versions");
        binary += value.len();
        json += old.len();
        customers += 1;
    }
    // a restore shares them across the partition's customers again
    let mut restored = engine_with_models();
    let mut restored_names = Vec::new();
    for e in &log {
        restored.restore(&e.key, e.value.as_deref()).unwrap();
    }
    for e in &log {
        if let Some(crate::changelog::ChangelogKey::Customer(id)) = crate::changelog::parse_key(&e.key) {
            shared_names(restored.customer(id).unwrap(), &mut restored_names, id);
        }
    }
    assert_eq!(restored_names, engine_names);
    println!("changelog customer records: {customers}, binary {binary} B, JSON {json} B ({:.2}x); version 2 {v2_bytes} B", binary as f64 / json as f64);
    assert!(compact < v2_bytes, "version 3 {compact} B vs version 2 {v2_bytes} B");
    assert!(customers >= 5 && binary * 2 < json, "binary {binary} B vs JSON {json} B");
    assert!(shared_campaigns > 0, "the stream repeats no campaign within a customer: the sharing is untested");
}

/// How many of `s`'s campaign names are already in `names` (asserting that they are the same
/// allocation); adds the others.
fn shared_names(s: &CustomerState, names: &mut Vec<crate::journey::Campaign>, id: &str) -> usize {
    let mut shared = 0;
    for a in s.touchpoints.iter().filter_map(|t| t.campaign.as_ref()) {
        match names.iter().find(|b| **a == ***b) {
            Some(b) => {
                shared += 1;
                assert!(a.shares(b), "{id}: campaign {a} allocated twice");
            }
            None => names.push(a.clone()),
        }
    }
    shared
}

/// How the step model's queue is run (partial runs for one customer's decision, the first wave as
/// soon as it fills a call, everything at a settle) changes neither a score nor an output: the same
/// stream run event by event (a full run after every event) gives the same bits, in fewer calls.
#[test]
fn the_queue_schedule_changes_no_score_and_no_output() {
    let raw = touchstream_sim::stream::default_events(7, 300, 0.5, 3_000);
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let run = |each_event: bool| {
        let mut engine = engine_with_models();
        let mut out = Vec::new();
        for r in &raw {
            engine.process(&decode(Some(r.customer_id.as_bytes()), &r.json, &check).unwrap(), &mut out);
            if each_event {
                engine.flush();
            }
        }
        engine.settle(&mut out);
        let stats = engine.take_scoring_stats(&mut Vec::new());
        (engine, out, stats)
    };
    let (queued, queued_out, queued_stats) = run(false);
    let (single, single_out, single_stats) = run(true);
    assert_eq!(queued_stats.rows, single_stats.rows);
    assert!(queued_stats.calls * 2 < single_stats.calls, "queued {} calls, one by one {}", queued_stats.calls, single_stats.calls);
    assert!(queued_out.iter().any(|o| matches!(o, Output::Conversion(_))) && queued_out.iter().any(|o| matches!(o, Output::Alert(_))));
    let sorted = |out: &[Output]| {
        let mut v: Vec<String> = out.iter().map(|o| format!("{o:?}")).collect();
        v.sort();
        v
    };
    let (a, b) = (sorted(&queued_out), sorted(&single_out));
    assert_eq!(a.len(), b.len());
    if let Some((x, y)) = a.iter().zip(&b).find(|(x, y)| x != y) {
        panic!("the outputs differ:\nqueued     {x}\none by one {y}");
    }
    assert_eq!(queued.customers(), single.customers());
    for r in &raw {
        let (a, b) = (queued.customer(&r.customer_id).unwrap(), single.customer(&r.customer_id).unwrap());
        let (a, b) = (a.model.as_ref().unwrap(), b.model.as_ref().unwrap());
        assert!(a.hidden() == b.hidden() && a.scores == b.scores && a.checks() == b.checks(), "customer {}", r.customer_id);
    }
}

/// A purchase does not run its customer's queued events through the step model on its own: its
/// conversion waits for the queue's next run and is written then, with the same expected future
/// value as when every event is scored at once.
#[test]
fn a_conversion_waits_for_the_queue_instead_of_running_it() {
    let check = Validation { now: i64::MAX / 2, max_future_skew_ms: i64::MAX / 4 };
    let events = [("1", "click"), ("2", "page_view"), ("3", "cart_add"), ("4", "purchase")];
    let run = |each_event: bool| {
        let mut engine = engine_with_models();
        let mut out = Vec::new();
        for (i, (id, kind)) in events.iter().enumerate() {
            let ts = 1_767_225_600_000 + i as i64 * 60_000;
            let json = format!(r#"{{"event_id":"{id}","customer_id":"a","ts":{ts},"event_type":"{kind}","channel":"email","value":9.5}}"#);
            engine.process(&decode(Some(b"a"), json.as_bytes(), &check).unwrap(), &mut out);
            if each_event {
                engine.settle(&mut out);
            }
        }
        let before = (engine.take_scoring_stats(&mut Vec::new()).calls, out.iter().filter(|o| matches!(o, Output::Conversion(_))).count());
        engine.settle(&mut out);
        let value = out.iter().find_map(|o| if let Output::Conversion(c) = o { c.expected_future_value } else { None });
        (before, value)
    };
    let ((queued_calls, queued_written), queued_value) = run(false);
    assert_eq!((queued_calls, queued_written), (0, 0), "the purchase left the queue and its conversion waiting");
    let ((single_calls, single_written), single_value) = run(true);
    assert_eq!((single_calls, single_written), (4, 1));
    assert!(queued_value.is_some() && queued_value == single_value, "{queued_value:?} {single_value:?}");
}
