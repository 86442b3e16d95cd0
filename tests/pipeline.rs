//! End to end on a real broker: scripted journeys in, hand-computed credits, channel totals,
//! abandonment alerts (watermark and idle paths) and the DLQ out.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use serde_json::Value;

const RULES: [&str; 5] = ["time_decay", "last_touch", "first_touch", "linear", "position_based"];

/// A malformed record: key, value and the DLQ kind it should get.
type BadRecord<'a> = (Option<&'a [u8]>, Vec<u8>, &'a str);

struct Script {
    events: Vec<(i64, String, String)>, // (ts, customer, json)
    n: usize,
}

impl Script {
    fn add(&mut self, customer: &str, ts: i64, event_type: &str, extra: &str) -> String {
        self.n += 1;
        let id = format!("{customer}-{}", self.n);
        self.events.push((ts, customer.to_string(), event(&id, customer, ts, event_type, extra)));
        id
    }
}

fn credits(tp: &Value) -> [f64; 5] {
    RULES.map(|r| tp[r].as_f64().unwrap_or_else(|| panic!("{r} missing in {tp}")))
}

#[test]
fn journeys_credits_channel_totals_alerts_and_dead_letters() {
    let topics = Topics::new("pipeline");
    create_topic(&topics.events, 3);
    let now = now_ms();
    let t = (now - 60 * DAY).div_euclid(HOUR) * HOUR;

    // ---- partition 0: attribution and abandonment in event-time order
    let mut s = Script { events: Vec::new(), n: 0 };
    let alice_display = s.add("alice", t, "impression", r#","channel":"display","campaign":"spring""#);
    s.add("alice", t + 7 * DAY, "click", r#","channel":"paid_search","campaign":"brand""#);
    s.add("alice", t + 14 * DAY, "email_click", r#","channel":"email","campaign":"winback""#);
    let alice_buy = s.add("alice", t + 14 * DAY, "purchase", r#","value":70.0,"currency":"EUR""#);
    s.add("bob", t + HOUR, "click", r#","channel":"paid_social""#);
    let bob_buy = s.add("bob", t + 7 * DAY + HOUR, "purchase", r#","value":20.0"#);
    s.add("carol", t + 2 * HOUR, "email_open", r#","channel":"email""#);
    s.add("carol", t + 7 * DAY + 2 * HOUR, "click", r#","channel":"sms""#);
    let carol_buy = s.add("carol", t + 7 * DAY + 2 * HOUR, "purchase", r#","value":30.0"#);
    let dave_buy = s.add("dave", t + 3 * DAY, "purchase", r#","value":15.0"#);
    s.add("erin", t + 3 * HOUR, "impression", r#","channel":"affiliate""#);
    let erin_buy1 = s.add("erin", t + DAY + 3 * HOUR, "purchase", r#","value":10.0"#);
    s.add("erin", t + 2 * DAY, "click", r#","channel":"referral""#);
    let erin_buy2 = s.add("erin", t + 2 * DAY + 30 * MIN, "purchase", r#","value":12.0"#);
    s.add("frank", t + 4 * HOUR, "impression", r#","channel":"display""#);
    let frank_buy = s.add("frank", t + 31 * DAY + 4 * HOUR, "purchase", r#","value":5.0"#);
    // gina abandons a cart (alert at last activity + 30 min); hank buys within the timeout;
    // iris abandons a big cart.
    s.add("gina", t + 20 * DAY, "click", r#","channel":"display","campaign":"retarget""#);
    let gina_cart = s.add("gina", t + 20 * DAY + MIN, "cart_add", r#","product_id":"p1","quantity":2,"value":30.0,"currency":"EUR""#);
    s.add("gina", t + 20 * DAY + 5 * MIN, "page_view", "");
    s.add("hank", t + 20 * DAY + 2 * MIN, "cart_add", r#","product_id":"p2","value":200.0"#);
    let hank_buy = s.add("hank", t + 20 * DAY + 20 * MIN, "purchase", r#","value":200.0"#);
    let iris_cart = s.add("iris", t + 21 * DAY, "cart_add", r#","product_id":"p3","value":150.0"#);
    s.add("zed", t + 22 * DAY, "page_view", ""); // moves the watermark past both deadlines
    s.events.sort_by_key(|(ts, _, _)| *ts); // stable: equal ts keep script order

    let p = producer();
    for (_, customer, json) in &s.events {
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

    // ---- conversions: every credit column equals the hand-computed value
    let expected_conversions = 10;
    let records = read_until(&topics.conversions, Duration::from_secs(90), |r| r.len() >= expected_conversions);
    assert_eq!(records.len(), expected_conversions, "conversions: {records:?}\nprocessor log:\n{}", proc.log());
    let by_id: HashMap<String, Value> = records.iter().map(|r| (r.json()["conversion_id"].as_str().unwrap().to_string(), r.json())).collect();
    assert_eq!(by_id.len(), expected_conversions, "no duplicates");
    for r in &records {
        assert_eq!(r.key_str(), r.json()["customer_id"].as_str().unwrap(), "keyed by customer");
    }
    let check = |id: &str, channels: &[&str], expected: &[[f64; 5]]| {
        let c = &by_id[id];
        let tps = c["touchpoints"].as_array().unwrap();
        let got: Vec<&str> = tps.iter().map(|tp| tp["channel"].as_str().unwrap()).collect();
        assert_eq!(got, channels, "{id} journey");
        for (tp, exp) in tps.iter().zip(expected) {
            let cr = credits(tp);
            for (i, rule) in RULES.iter().enumerate() {
                assert_close(cr[i], exp[i], &format!("{id} {} {rule}", tp["channel"]));
            }
            assert!(tp["deep"].is_null());
        }
    };
    // alice: 14, 7 and 0 days before: decay weights 1/4, 1/2, 1 -> 1/7, 2/7, 4/7
    check(
        &alice_buy,
        &["display", "paid_search", "email"],
        &[[1.0 / 7.0, 0.0, 1.0, 1.0 / 3.0, 0.4], [2.0 / 7.0, 0.0, 0.0, 1.0 / 3.0, 0.2], [4.0 / 7.0, 1.0, 0.0, 1.0 / 3.0, 0.4]],
    );
    assert_eq!(by_id[&alice_buy]["touchpoints"][0]["event_id"], alice_display.as_str());
    assert_eq!(by_id[&alice_buy]["touchpoints"][0]["campaign"], "spring");
    assert_eq!(by_id[&alice_buy]["conversion_value"], 70.0);
    assert_eq!(by_id[&alice_buy]["currency"], "EUR");
    check(&bob_buy, &["paid_social"], &[[1.0; 5]]);
    check(&carol_buy, &["email", "sms"], &[[1.0 / 3.0, 0.0, 1.0, 0.5, 0.5], [2.0 / 3.0, 1.0, 0.0, 0.5, 0.5]]);
    check(&dave_buy, &["direct"], &[[1.0; 5]]);
    assert!(by_id[&dave_buy]["touchpoints"][0]["event_id"].is_null());
    check(&erin_buy1, &["affiliate"], &[[1.0; 5]]);
    check(&erin_buy2, &["referral"], &[[1.0; 5]]); // the affiliate touch was spent by the first purchase
    check(&frank_buy, &["direct"], &[[1.0; 5]]); // the impression is outside the 30-day lookback
    check(&hank_buy, &["direct"], &[[1.0; 5]]);
    check("jo-1", &["direct"], &[[1.0; 5]]);
    check("jo-2", &["direct"], &[[1.0; 5]]);

    // ---- alerts: gina and iris via the watermark, ivy via the idle partition, never hank
    let alerts = read_until(&topics.alerts, Duration::from_secs(60), |r| r.len() >= 3);
    let alerts_settled = read_all(&topics.alerts, Duration::from_secs(3));
    assert_eq!(alerts_settled.len(), 3, "exactly three alerts: {alerts:?}\nlog:\n{}", proc.log());
    let by_customer: HashMap<String, Value> = alerts_settled.iter().map(|r| (r.key_str(), r.json())).collect();
    let gina = &by_customer["gina"];
    assert_eq!(gina["alert_id"], format!("gina:{gina_cart}"));
    assert_eq!(gina["alert_ts"], t + 20 * DAY + 35 * MIN);
    assert_eq!(gina["last_activity_ts"], t + 20 * DAY + 5 * MIN);
    assert_eq!(gina["cart_value"], 60.0);
    assert_eq!(gina["currency"], "EUR");
    assert_eq!(gina["items"][0]["quantity"], 2);
    assert_eq!(gina["reason"], "inactivity_timeout");
    assert!(gina["abandonment_probability"].is_null());
    assert_eq!(gina["recommended_action"], "reminder");
    assert_eq!(gina["top_touchpoints"][0]["channel"], "display");
    assert_eq!(gina["top_touchpoints"][0]["campaign"], "retarget");
    assert_close(gina["top_touchpoints"][0]["time_decay_credit"].as_f64().unwrap(), 1.0, "gina top credit");
    let iris = &by_customer["iris"];
    assert_eq!(iris["alert_id"], format!("iris:{iris_cart}"));
    assert_eq!(iris["alert_ts"], t + 21 * DAY + 30 * MIN);
    assert_eq!(iris["recommended_action"], "incentive");
    let ivy = &by_customer["ivy"];
    assert_eq!(ivy["alert_ts"], ivy_ts + 30 * MIN, "idle path keeps the event-time alert_ts");
    assert!(!by_customer.contains_key("hank"));

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
    for (ts, _, json) in &s.events {
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
    assert_eq!(metric("touchstream_alerts_total{reason=\"inactivity_timeout\"}"), 3.0);
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
