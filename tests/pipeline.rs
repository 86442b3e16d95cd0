//! End to end on a real broker: the scenarios of `tests/scenarios/` (hand-computed credits and
//! alerts, also run through the engine alone by `tests/scenarios.rs`) on one partition, an
//! abandoned cart only the idle-partition watermark fires on another, malformed records among good
//! ones on a third; channel totals, the DLQ, health and metrics out.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::scenarios::{self, RULES};
use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;

/// A malformed record: key, value and the DLQ kind it should get.
type BadRecord<'a> = (Option<&'a [u8]>, Vec<u8>, &'a str);

fn credits(tp: &Value) -> [f64; 5] {
    RULES.map(|r| tp[r].as_f64().unwrap_or_else(|| panic!("{r} missing in {tp}")))
}

#[test]
fn journeys_credits_channel_totals_alerts_and_dead_letters() {
    let topics = Topics::new("pipeline");
    create_topic(&topics.events, 3);
    let now = now_ms();
    let t = (now - 60 * DAY).div_euclid(HOUR) * HOUR;

    // ---- partition 0: the scenarios of tests/scenarios/ (attribution and abandonment), all of
    // them in one event-time order
    let scenarios = scenarios::all();
    let mut script: Vec<(i64, String, String)> = scenarios.iter().flat_map(|sc| sc.events(t)).collect();
    script.sort_by_key(|(ts, _, _)| *ts); // stable: equal ts keep script order

    let p = producer();
    for (_, customer, json) in &script {
        send_raw(&p, &topics.events, 0, Some(customer.as_bytes()), json.as_bytes(), None);
    }
    // ---- partition 1: a lone abandoned cart that only the idle-partition watermark can fire
    let ivy_ts = now - 40 * MIN;
    send_raw(&p, &topics.events, 1, Some(b"ivy"), event("ivy-1", "ivy", ivy_ts, "cart_add", r#","product_id":"p4","value":40.0"#).as_bytes(), None);
    // ---- partition 2: good events around malformed ones
    let jo1 = event("jo-1", "jo", t + 5 * DAY, "purchase", r#","value":9.0"#);
    let bad: Vec<BadRecord<'_>> = vec![
        (Some(b"jo"), b"this is not json {".to_vec(), "not_json"),
        (Some(b"jo"), format!(r#"{{"event_id":"x2","ts":{},"event_type":"click","channel":"email"}}"#, t).into_bytes(), "missing_field"),
        (Some(b"someone"), event("x3", "jo", t + 5 * DAY, "page_view", "").into_bytes(), "key_mismatch"),
        (Some(b"jo"), event("x4", "jo", now + 2 * DAY, "page_view", "").into_bytes(), "future_timestamp"),
        (Some(b"jo"), br#"{"event_id":"x5","customer_id":"jo","ts":"yesterday","event_type":"page_view"}"#.to_vec(), "invalid_field"),
    ];
    let jo2 = event("jo-2", "jo", t + 6 * DAY, "purchase", r#","value":11.0"#);
    send_raw(&p, &topics.events, 2, Some(b"jo"), jo1.as_bytes(), None);
    for (i, (key, payload, _)) in bad.iter().enumerate() {
        let headers = (i == 0).then(|| OwnedHeaders::new().insert(Header { key: "trace-id", value: Some("abc") }));
        send_raw(&p, &topics.events, 2, *key, payload, headers);
    }
    send_raw(&p, &topics.events, 2, Some(b"jo"), jo2.as_bytes(), None);
    flush(&p);

    let http = free_addr();
    // the rules contract (models off); tests/models.rs covers the models on the broker
    let proc = Processor::start(
        &topics,
        &[("event_time.idle_timeout", "4s"), ("http.enabled", "true"), ("http.listen", &http), ("models.enabled", "false"), ("alerts.target_delay", "30m")],
    );

    let expected_conversions = scenarios.iter().map(|sc| sc.expected().0).sum::<usize>() + 2;
    let expected_alerts = scenarios.iter().map(|sc| sc.expected().1).sum::<usize>() + 1;
    // ---- conversions and alerts: each scenario's, with every credit column; jo's two purchases
    // around the bad records; ivy's alert via the idle partition
    let records = read_until(&topics.conversions, Duration::from_secs(90), |r| r.len() >= expected_conversions);
    assert_eq!(records.len(), expected_conversions, "conversions: {records:?}\nprocessor log:\n{}", proc.log());
    for r in &records {
        assert_eq!(r.key_str(), r.json()["customer_id"].as_str().unwrap(), "keyed by customer");
    }
    let conversions: Vec<Value> = records.iter().map(|r| r.json()).collect();
    let alerts_settled = {
        read_until(&topics.alerts, Duration::from_secs(60), |r| r.len() >= expected_alerts);
        read_all(&topics.alerts, Duration::from_secs(3))
    };
    assert_eq!(alerts_settled.len(), expected_alerts, "alerts: {alerts_settled:?}\nlog:\n{}", proc.log());
    let alerts: Vec<Value> = alerts_settled.iter().map(|r| r.json()).collect();
    for sc in &scenarios {
        sc.check(t, &conversions, &alerts);
    }
    for id in ["jo-1", "jo-2"] {
        let c = conversions.iter().find(|c| c["conversion_id"] == id).unwrap_or_else(|| panic!("{id}"));
        assert_eq!(c["touchpoints"][0]["channel"], "direct");
    }
    let ivy = alerts.iter().find(|a| a["customer_id"] == "ivy").expect("ivy's alert");
    assert_eq!(ivy["alert_ts"], ivy_ts + 30 * MIN, "idle path keeps the event-time alert_ts");
    assert_eq!(ivy["reason"], "inactivity_timeout");

    // ---- DLQ: byte for byte, with reasons, while good events around them went through
    let mut dlq = read_until(&topics.dlq, Duration::from_secs(30), |r| r.len() >= bad.len());
    assert_eq!(dlq.len(), bad.len());
    // DLQ records are keyed by the original key, so they spread over partitions: order by source offset
    dlq.sort_by_key(|r| r.header("touchstream.source.offset").and_then(|o| o.parse::<i64>().ok()));
    for (rec, (key, payload, kind)) in dlq.iter().zip(&bad) {
        assert_eq!(&rec.payload, payload, "original bytes");
        assert_eq!(rec.key.as_deref(), *key, "original key");
        assert_eq!(rec.header("touchstream.error.kind").as_deref(), Some(*kind));
        assert!(!rec.header("touchstream.error.reason").unwrap_or_default().is_empty());
        assert_eq!(rec.header("touchstream.source.topic").as_deref(), Some(topics.events.as_str()));
        assert_eq!(rec.header("touchstream.source.partition").as_deref(), Some("2"));
    }
    let offsets: Vec<String> = dlq.iter().map(|r| r.header("touchstream.source.offset").unwrap()).collect();
    assert_eq!(offsets, ["1", "2", "3", "4", "5"]);
    assert_eq!(dlq[0].header("trace-id").as_deref(), Some("abc"), "original headers kept");
    assert!(dlq[1].header("touchstream.error.reason").unwrap().contains("customer_id"));

    // ---- channel totals: per (window, channel) they equal the sum over conversion credits, and
    // touchpoint counts equal the touchpoints sent in that window
    let mut expected: HashMap<String, (u64, [f64; 5], [f64; 5])> = HashMap::new();
    for r in &records {
        let c = r.json();
        let w = c["conversion_ts"].as_i64().unwrap().div_euclid(HOUR) * HOUR;
        let value = c["conversion_value"].as_f64().unwrap();
        for tp in c["touchpoints"].as_array().unwrap() {
            let e = expected.entry(format!("{w}|{}", tp["channel"].as_str().unwrap())).or_default();
            for (i, cr) in credits(tp).iter().enumerate() {
                e.1[i] += cr;
                e.2[i] += cr * value;
            }
        }
    }
    for (ts, _, json) in &script {
        let v: Value = serde_json::from_str(json).unwrap();
        if matches!(v["event_type"].as_str(), Some("impression" | "click" | "email_open" | "email_click")) {
            let w = ts.div_euclid(HOUR) * HOUR;
            expected.entry(format!("{w}|{}", v["channel"].as_str().unwrap())).or_default().0 += 1;
        }
    }
    let matches = |latest: &HashMap<String, Value>| {
        expected.iter().all(|(key, (n, conv, rev))| {
            latest.get(key).is_some_and(|v| {
                v["touchpoints"].as_u64() == Some(*n)
                    && RULES.iter().enumerate().all(|(i, r)| {
                        (v["credited_conversions"][r].as_f64().unwrap() - conv[i]).abs() < 1e-9
                            && (v["credited_revenue"][r].as_f64().unwrap() - rev[i]).abs() < 1e-9
                    })
            })
        }) && latest.len() == expected.len()
    };
    let totals = read_until(&topics.channels, Duration::from_secs(60), |r| matches(&latest_by_key(r)));
    let latest = latest_by_key(&totals);
    assert!(matches(&latest), "channel totals differ.\nexpected {expected:#?}\ngot {latest:#?}");
    let alice_email = &latest[&format!("{}|email", (t + 14 * DAY).div_euclid(HOUR) * HOUR)];
    assert_eq!(alice_email["window_end"].as_i64().unwrap() - alice_email["window_start"].as_i64().unwrap(), HOUR);
    assert!(alice_email.get("source_partition").is_none());

    // ---- HTTP: health, readiness and metrics of what just happened
    assert_eq!(http_get(&http, "/healthz").0, 200);
    assert_eq!(http_get(&http, "/readyz").0, 200);
    let (code, metrics) = http_get(&http, "/metrics");
    assert_eq!(code, 200);
    let metric = |line_start: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {line_start} in\n{metrics}"))
    };
    assert_eq!(metric("touchstream_conversions_total"), expected_conversions as f64);
    assert_eq!(metric("touchstream_alerts_total{reason=\"inactivity_timeout\"}"), expected_alerts as f64);
    assert_eq!(metric("touchstream_events_total{event_type=\"purchase\"}"), expected_conversions as f64);
    assert_eq!(metric("touchstream_invalid_events_total{kind=\"key_mismatch\"}"), 1.0);
    assert_eq!(metric("touchstream_registry_available"), 1.0, "no registry is needed: available");
    assert_eq!(metric("touchstream_stalled"), 0.0);
    // Lag and process gauges come with the state report (librdkafka statistics every 5 s).
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let lag_line = loop {
        let (_, m) = http_get(&http, "/metrics");
        let found: Vec<String> = m.lines().filter(|l| l.starts_with("touchstream_consumer_lag{")).map(str::to_string).collect();
        if found.len() == 3 && m.contains("touchstream_process_open_fds") && m.contains("touchstream_process_resident_bytes") {
            break found;
        }
        assert!(std::time::Instant::now() < deadline, "no lag for the 3 input partitions in\n{m}");
        std::thread::sleep(Duration::from_millis(500));
    };
    assert!(lag_line.iter().all(|l| l.ends_with(" 0")), "caught up: {lag_line:?}");

    let (status, log) = proc.stop();
    assert!(status.success(), "clean exit on SIGTERM: {status:?}\n{log}");
}
