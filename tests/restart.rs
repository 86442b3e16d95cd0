//! Restarting the processor on the same group continues from the committed offsets: after a
//! graceful stop (SIGTERM) nothing is lost and nothing is processed twice.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn send_journeys(topics: &Topics, from: usize, to: usize, t: i64) {
    let p = producer();
    for i in from..to {
        let c = format!("cust-{i}");
        let part = (i % 2) as i32;
        let ts = t + i as i64 * MIN;
        send_raw(&p, &topics.events, part, Some(c.as_bytes()), event(&format!("t-{i}"), &c, ts, "click", r#","channel":"email""#).as_bytes(), None);
        send_raw(&p, &topics.events, part, Some(c.as_bytes()), event(&format!("buy-{i}"), &c, ts + MIN, "purchase", r#","value":1.0"#).as_bytes(), None);
    }
    flush(&p);
}

fn committed(topics: &Topics) -> Vec<i64> {
    let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", brokers()).set("group.id", &topics.group).create().unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&topics.events, 0);
    tpl.add_partition(&topics.events, 1);
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).unwrap();
    got.elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(o) => o,
            other => panic!("no committed offset: {other:?}"),
        })
        .collect()
}

#[test]
fn restart_continues_from_committed_offsets() {
    let topics = Topics::new("restart");
    create_topic(&topics.events, 2);
    let t = (now_ms() - 10 * DAY).div_euclid(HOUR) * HOUR;

    send_journeys(&topics, 0, 100, t);
    // windows close right after they end, so the changelog holds tombstones the restart must read
    let settings = [("attribution.window_retention", "0"), ("event_time.idle_timeout", "1h")];
    let first = Processor::start(&topics, &settings);
    let got = read_until(&topics.conversions, Duration::from_secs(90), |r| r.len() >= 100);
    assert_eq!(got.len(), 100, "first run: {}", first.log());
    let (status, log) = first.stop();
    assert!(status.success(), "clean exit: {status:?}\n{log}");
    assert_eq!(committed(&topics), vec![100, 100], "every consumed record's offset committed on shutdown");

    send_journeys(&topics, 100, 200, t);
    let second = Processor::start(&topics, &settings);
    read_until(&topics.conversions, Duration::from_secs(90), |r| r.len() >= 200);
    let all = read_all(&topics.conversions, Duration::from_secs(4));
    let ids: HashSet<String> = all.iter().map(|r| r.json()["conversion_id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 200, "every purchase converted: {}", second.log());
    assert_eq!(all.len(), 200, "nothing reprocessed after a graceful restart");
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
    assert_eq!(committed(&topics), vec![200, 200]);
}

/// With the default settings (librdkafka's 45 s session timeout) a replica killed with SIGKILL and
/// restarted under the same transactional id takes its partitions back at once (static group
/// membership): outputs flow again long before the old session would have expired.
#[test]
fn a_killed_replica_resumes_at_once_when_restarted() {
    let topics = Topics::new("resume");
    create_topic(&topics.events, 2);
    let t = (now_ms() - 10 * DAY).div_euclid(HOUR) * HOUR;
    send_journeys(&topics, 0, 50, t);
    let settings = [("event_time.idle_timeout", "1h")];
    let first = Processor::start(&topics, &settings);
    let got = read_until(&topics.conversions, Duration::from_secs(90), |r| r.len() >= 50);
    assert_eq!(got.len(), 50, "first run: {}", first.log());
    kill9(&first);
    drop(first);

    send_journeys(&topics, 50, 100, t);
    let restarted = std::time::Instant::now();
    let second = Processor::start(&topics, &settings);
    let got = read_until(&topics.conversions, Duration::from_secs(90), |r| r.len() >= 100);
    let resumed = restarted.elapsed();
    println!("RESUME: outputs of new input visible {:.1} s after restarting a SIGKILLed replica (default session timeout 45 s)", resumed.as_secs_f64());
    assert_eq!(got.len(), 100, "{}", second.log());
    // Without static membership the group would wait for the dead member's session (45 s).
    assert!(resumed < Duration::from_secs(40), "resumed after {resumed:?}: the partitions waited for the old session\n{}", second.log());
    let all = read_all(&topics.conversions, Duration::from_secs(3));
    let ids: HashSet<String> = all.iter().map(|r| r.json()["conversion_id"].as_str().unwrap().to_string()).collect();
    assert_eq!((ids.len(), all.len()), (100, 100), "nothing lost, nothing twice");
    let (status, log) = second.stop();
    assert!(status.success(), "{log}");
}
