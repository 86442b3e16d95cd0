//! Erasure of a customer, end to end on a real broker: `touchstream erase` sends the request; the
//! replica that owns the customer's partition removes them from its state, tombstones the
//! changelog and the scores topic and writes one audit record, in the batch's transaction. After a
//! kill -9 and a restart nothing comes back: no second audit record, no old journey in the
//! customer's next conversion, no alert for the erased cart.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use touchstream::kafka::partitioner::Partitioner;

fn erase(topics: &Topics, customers: &[&str]) -> Vec<String> {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_touchstream"));
    cmd.arg("erase").args(topics.args());
    for c in customers {
        cmd.args(["--customer", c]);
    }
    let out = cmd.output().expect("run touchstream erase");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(str::to_string).collect()
}

/// The latest record of `key` in `records` (a compacted topic as a reader sees it).
fn latest<'a>(records: &'a [Record], key: &str) -> Option<&'a Record> {
    records.iter().filter(|r| r.key.as_deref() == Some(key.as_bytes())).max_by_key(|r| r.offset)
}

#[test]
fn an_erased_customer_is_gone_from_state_changelog_and_scores_exactly_once() {
    let topics = Topics::new("erasure");
    // the test producer partitions like the Java clients (murmur2), `topics.partitioner`'s default
    create_topic(&topics.events, 3);
    let t = now_ms() - 2 * DAY;
    let p = producer();
    let send = |id: &str, c: &str, ts: i64, kind: &str, extra: &str| send_keyed(&p, &topics.events, c.as_bytes(), event(id, c, ts, kind, extra).as_bytes());
    send("a1", "alice", t, "click", r#","channel":"email","campaign":"spring""#);
    send("a2", "alice", t + MIN, "cart_add", r#","product_id":"p1","quantity":1,"value":40.0,"currency":"EUR""#);
    send("b1", "bob", t, "click", r#","channel":"display""#);
    send("b2", "bob", t + MIN, "purchase", r#","value":10.0"#);
    flush(&p);
    // mallory's event is on another partition than the partitioner gives: counted, and her
    // erasure request (on the right partition) finds nothing and says why
    let home = Partitioner::Murmur2.partition(b"mallory", 3).unwrap();
    send_raw(&p, &topics.events, (home + 1) % 3, Some(b"mallory"), event("m1", "mallory", t, "page_view", "").as_bytes(), None);
    flush(&p);
    let http = free_addr();
    let settings = [("event_time.idle_timeout", "1h"), ("processing.commit_interval", "200ms"), ("http.enabled", "true"), ("http.listen", http.as_str())];
    let mut proc = Processor::start(&topics, &settings);
    proc.assert_caught_up(&topics, Duration::from_secs(120), "caught up");
    assert_eq!(metric(&http, "touchstream_input_misrouted_total"), Some(1.0), "one misrouted record:\n{}", proc.log());
    // the topics that hold personal data were created with `topics.retention`'s defaults
    assert_eq!(topic_config(&topics.dlq, "retention.ms").as_deref(), Some("604800000"));
    assert_eq!(topic_config(&topics.alerts, "retention.ms").as_deref(), Some("2592000000"));
    assert_eq!(topic_config(&topics.erasure, "retention.ms").as_deref(), Some("2592000000"));
    let scores = read_until(&topics.scores, Duration::from_secs(30), |r| latest(r, "alice").is_some());
    assert!(latest(&scores, "alice").is_some_and(|r| !r.payload.is_empty()), "alice has a score before the erasure");

    let ids = erase(&topics, &["alice", "nobody", "mallory"]);
    assert_eq!(ids.len(), 3);
    let audit = read_until(&topics.erasure_audit, Duration::from_secs(60), |r| r.len() >= 3);
    assert_eq!(audit.len(), 3, "one audit record per request:\n{}", proc.log());
    let by_id = |id: &str| audit.iter().map(|r| r.json()).find(|a| a["request_id"] == id).unwrap_or_else(|| panic!("no audit for {id}"));
    let alice = by_id(&ids[0]);
    assert_eq!(alice["status"], "erased", "{alice}");
    assert_eq!(alice["erased"]["touchpoints"], 1);
    assert_eq!(alice["erased"]["open_cart"], true);
    assert_eq!(alice["erased"]["model_state"], true);
    assert_eq!(alice["customer_id_sha256"].as_str().unwrap().len(), 64);
    assert!(!alice.to_string().contains("alice"), "the audit holds no customer id: {alice}");
    assert_eq!(by_id(&ids[1])["status"], "not_found");
    assert_eq!(by_id(&ids[2])["status"], "not_found", "the request went where the partitioner says; her event did not (the metric says so)");
    // a request written with another partitioner than the events' lands on the wrong partition
    let wrong = (Partitioner::Murmur2.partition(b"trudy", 3).unwrap() + 1) % 3;
    send_raw(&p, &topics.erasure, wrong, Some(b"trudy"), br#"{"request_id":"by-hand"}"#, None);
    let audit = read_until(&topics.erasure_audit, Duration::from_secs(60), |r| r.len() >= 4);
    assert_eq!(audit.iter().map(|r| r.json()).find(|a| a["request_id"] == "by-hand").unwrap()["status"], "misrouted");

    // tombstones in the changelog and the scores topic
    let changelog = read_until(&topics.changelog, Duration::from_secs(30), |r| latest(r, "alice").is_some_and(|r| r.payload.is_empty()));
    assert!(latest(&changelog, "alice").is_some_and(|r| r.payload.is_empty()), "changelog tombstone");
    assert!(latest(&changelog, "bob").is_some_and(|r| !r.payload.is_empty()), "bob is untouched");
    let scores = read_until(&topics.scores, Duration::from_secs(30), |r| latest(r, "alice").is_some_and(|r| r.payload.is_empty()));
    assert!(latest(&scores, "alice").is_some_and(|r| r.payload.is_empty()), "scores tombstone");

    // kill -9 and restart: the erasure is not applied again, and nothing of alice comes back
    kill9(&proc);
    let _ = proc.stop();
    let mut proc = Processor::start(&topics, &settings);
    send("a3", "alice", t + 3 * HOUR, "purchase", r#","value":40.0"#);
    // a later event moves the watermark far past any inactivity check or safety net of the old cart
    send("b3", "bob", t + 2 * DAY - HOUR, "page_view", "");
    flush(&p);
    proc.assert_caught_up(&topics, Duration::from_secs(120), "caught up");
    let conversions = read_until(&topics.conversions, Duration::from_secs(30), |r| r.iter().any(|c| c.json()["conversion_id"] == "a3"));
    let a3 = conversions.iter().map(|r| r.json()).find(|c| c["conversion_id"] == "a3").expect("alice's new purchase converts");
    let tps = a3["touchpoints"].as_array().unwrap();
    assert!(tps.len() == 1 && tps[0]["event_id"].is_null(), "a fresh journey without the erased click: {a3}");
    let alerts = read_all(&topics.alerts, Duration::from_secs(3));
    assert!(alerts.iter().all(|r| r.key.as_deref() != Some(b"alice".as_slice())), "no alert for the erased cart");
    let audit = read_all(&topics.erasure_audit, Duration::from_secs(3));
    assert_eq!(audit.len(), 4, "no request applied twice");
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
}

/// With `privacy.analytics_id_key`, the conversions topic carries the keyed hash of the customer
/// id (key and field), the alerts the real id; `check-config` never prints the key.
#[test]
fn analytics_outputs_carry_a_keyed_hash_of_the_customer() {
    let topics = Topics::new("pseudonymous");
    create_topic(&topics.events, 1);
    let t = now_ms() - 2 * DAY;
    let p = producer();
    let send = |id: &str, c: &str, ts: i64, kind: &str, extra: &str| send_keyed(&p, &topics.events, c.as_bytes(), event(id, c, ts, kind, extra).as_bytes());
    send("e1", "eve", t, "click", r#","channel":"email""#);
    send("e2", "eve", t + MIN, "purchase", r#","value":12.0"#);
    send("f1", "fay", t, "cart_add", r#","product_id":"p1","quantity":1,"value":10.0"#);
    send("g1", "gus", t + 2 * DAY - HOUR, "page_view", "");
    flush(&p);
    let secret = "analytics-secret";
    let settings = [("event_time.idle_timeout", "1h"), ("privacy.analytics_id_key", secret), ("models.enabled", "false"), ("alerts.target_delay", "30m")];
    let mut proc = Processor::start(&topics, &settings);
    proc.assert_caught_up(&topics, Duration::from_secs(120), "caught up");
    let conversions = read_until(&topics.conversions, Duration::from_secs(30), |r| !r.is_empty());
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let want: String = ring::hmac::sign(&key, b"eve").as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(conversions.len(), 1);
    assert_eq!(conversions[0].key_str(), want);
    assert_eq!(conversions[0].json()["customer_id"], want);
    let alerts = read_until(&topics.alerts, Duration::from_secs(30), |r| !r.is_empty());
    assert_eq!(alerts[0].json()["customer_id"], "fay", "alerts keep the id for messaging");
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");

    let out = Command::new(env!("CARGO_BIN_EXE_touchstream")).args(["check-config", "--set", &format!("privacy.analytics_id_key={secret}")]).output().unwrap();
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && printed.contains("analytics_id_key = \"***\"") && !printed.contains(secret), "{printed}");
}

/// The issue's scenario: two replicas over a generated stream; mid-stream a customer is erased and
/// both replicas are killed (kill -9) right after the request, so whichever owns the customer dies
/// around it; they restart, apply the requests, and the stream goes on. Afterwards the compacted
/// topics, read to the end with tombstones applied (what a restore reads), hold nothing of the
/// customer; each request has exactly one audit record (the unknown customer's says `not_found`);
/// every other customer's conversions, alerts and the channel totals equal a failure-free run
/// without the erasure.
#[test]
fn erasure_mid_stream_with_two_replicas_and_kills_changes_nothing_else() {
    use std::collections::HashMap;
    let topics = Topics::new("erasure-two");
    create_topic(&topics.events, 4);
    // customers who stay 4 days (one arriving every hour), so that some are done by mid-stream
    let mut world = touchstream_sim::stream::default_world(77, 3000, 125.0);
    world.customer_days = 4.0;
    world.concurrency = 96;
    let records = touchstream_sim::stream::events(world, 16_000).unwrap();
    let first_end = records[7999].ts;
    let events: Vec<(String, Vec<u8>)> = records.into_iter().map(|r| (r.customer_id, r.json)).collect();
    let (first, second) = events.split_at(8000);
    // the victim: the first half's busiest customer who does not come back in the second half and
    // was active in its last 10 days (still inside customer_ttl when the erasure comes)
    let recent = |json: &[u8]| serde_json::from_slice::<serde_json::Value>(json).unwrap()["ts"].as_i64().unwrap() > first_end - 10 * DAY;
    let mut counts: HashMap<&str, (usize, bool)> = HashMap::new();
    for (c, json) in first {
        let e = counts.entry(c.as_str()).or_default();
        e.0 += 1;
        e.1 |= recent(json);
    }
    let later: std::collections::HashSet<&str> = second.iter().map(|(c, _)| c.as_str()).collect();
    let victim =
        counts.iter().filter(|(c, (_, active))| *active && !later.contains(*c)).max_by_key(|(c, (n, _))| (*n, *c)).map(|(c, _)| c.to_string()).unwrap();
    let p = producer();
    let produce = |part: &[(String, Vec<u8>)]| {
        for (c, json) in part {
            send_keyed(&p, &topics.events, c.as_bytes(), json);
        }
        flush(&p);
    };
    produce(first);
    let start = |name: &str| Processor::start_as(&topics, name, EOS_SETTINGS, &[]);
    let (a, b) = (start("a"), start("b"));
    assert!(wait_caught_up(&topics, Duration::from_secs(240)), "{}\n{}", a.log(), b.log());
    let nobody = unique("nobody");
    let ids = erase(&topics, &[&victim, &nobody]);
    kill9(&a);
    kill9(&b);
    drop((a, b));
    let (a, b) = (start("a"), start("b"));
    // The stream goes on once the requests are applied: the second half moves event time on by
    // weeks, and a request applied after customer_ttl has expired the victim finds nothing
    // (`not_found`, correctly, and no longer this test's scenario).
    let applied = read_until(&topics.erasure_audit, Duration::from_secs(120), |r| r.len() >= 2);
    assert!(applied.len() >= 2, "both requests applied after the restart:\n{}\n{}", a.log(), b.log());
    produce(second);
    assert!(wait_caught_up(&topics, Duration::from_secs(300)), "{}\n{}", a.log(), b.log());
    let audit = read_until(&topics.erasure_audit, Duration::from_secs(60), |r| r.len() >= 2);
    let statuses: HashMap<String, String> =
        audit.iter().map(|r| r.json()).map(|a| (a["request_id"].as_str().unwrap().to_string(), a["status"].as_str().unwrap().to_string())).collect();
    assert_eq!(audit.len(), 2, "one audit record per request, across the kills: {statuses:?}\n{}\n{}", a.log(), b.log());
    assert_eq!(statuses[&ids[0]], "erased");
    assert_eq!(statuses[&ids[1]], "not_found", "erasing an unknown customer is a confirmed no-op");
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    for (s, name) in [(a.stop(), "a"), (b.stop(), "b")] {
        assert!(s.0.success(), "replica {name}: {}", s.1);
    }

    // what a restore reads: each key's last record; the victim has none left (tombstoned) or never had one
    for topic in [&topics.changelog, &topics.scores] {
        let records = read_all(topic, Duration::from_secs(3));
        let left = latest(&records, &victim).is_some_and(|r| !r.payload.is_empty());
        assert!(!left, "{topic} still holds the erased customer");
        assert!(records.iter().any(|r| r.key.as_deref() != Some(victim.as_bytes()) && !r.payload.is_empty()), "{topic} holds the others");
    }

    let others = |o: &Outputs| {
        let keep = |m: &HashMap<String, serde_json::Value>| -> HashMap<String, serde_json::Value> {
            m.iter().filter(|(_, v)| v["customer_id"] != victim.as_str()).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let (conversions, alerts) = (keep(&o.conversions), keep(&o.alerts));
        Outputs { conversion_records: conversions.len(), alert_records: alerts.len(), conversions, alerts, channels: o.channels.clone() }
    };
    assert_eq!(got.conversion_records, got.conversions.len(), "no conversion written twice");
    assert_eq!(got.alert_records, got.alerts.len(), "no alert written twice");
    assert_same_outputs(&others(&got), &others(&want));
}
