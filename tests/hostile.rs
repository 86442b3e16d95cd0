//! Hostile input on a real broker: records too large for the broker or for their derived records,
//! repeated events (also across a kill -9), and input in every compression codec. In each case the
//! stream goes on, the bad record is in the DLQ once, and every other output is written exactly once.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::BaseProducer;
use rdkafka::ClientConfig;

/// Creates `name` with topic-level settings (e.g. a small `max.message.bytes`).
fn create_topic_with(name: &str, partitions: i32, settings: &[(&str, &str)]) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers()).create().expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in settings {
        topic = topic.set(k, v);
    }
    for r in rt.block_on(admin.create_topics([&topic], &AdminOptions::new())).expect("create topics") {
        r.expect("topic created");
    }
}

fn big_producer(compression: &str) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("linger.ms", "1")
        .set("message.max.bytes", "2000000")
        .set("partitioner", "murmur2_random")
        .set("compression.type", compression)
        .create()
        .expect("producer")
}

/// A customer's ordinary journey: a click and a purchase, on `partition`.
fn ordinary(p: &BaseProducer, topic: &str, partition: i32, customer: &str, ts: i64) {
    let click = event(&format!("{customer}-c"), customer, ts, "click", r#","channel":"email""#);
    let buy = event(&format!("{customer}-p"), customer, ts + 60_000, "purchase", r#","value":10.0"#);
    send_raw(p, topic, partition, Some(customer.as_bytes()), click.as_bytes(), None);
    send_raw(p, topic, partition, Some(customer.as_bytes()), buy.as_bytes(), None);
}

#[test]
fn oversize_records_go_to_the_dlq_and_every_partition_goes_on() {
    let topics = Topics::new("poison");
    create_topic(&topics.events, 3);
    // Conversions of long journeys do not fit this topic; the DLQ keeps excerpts of big records.
    create_topic_with(&topics.conversions, 3, &[("max.message.bytes", "4000")]);
    create_topic_with(&topics.dlq, 3, &[("max.message.bytes", "200000")]);
    let t = now_ms() - 10 * DAY;
    let p = big_producer("none");
    let huge = "9".repeat(900_000);
    let mut bad: Vec<(i32, &str)> = Vec::new(); // (partition, expected kind) in order of sending

    for i in 0..10 {
        ordinary(&p, &topics.events, i % 3, &format!("before{i}"), t + i as i64);
    }
    // 1. `ts` as a 900 KB string: over limits.max_record_bytes, kept as an excerpt (DLQ limit 200 KB).
    let rec = format!(r#"{{"event_id":"x1","customer_id":"m1","ts":"{huge}","event_type":"click","channel":"email"}}"#);
    send_raw(&p, &topics.events, 0, Some(b"m1"), rec.as_bytes(), None);
    bad.push((0, "too_large"));
    // 2. A key mismatch with a 900 KB customer_id.
    let rec = event("x2", &huge, t, "click", r#","channel":"email""#);
    send_raw(&p, &topics.events, 1, Some(b"m2"), rec.as_bytes(), None);
    bad.push((1, "too_large"));
    // 3. Two contract-valid clicks of one customer with 900 KB campaigns.
    for n in 0..2 {
        let rec = event(&format!("x3-{n}"), "m3", t + n, "click", &format!(r#","channel":"email","campaign":"{huge}""#));
        send_raw(&p, &topics.events, 2, Some(b"m3"), rec.as_bytes(), None);
        bad.push((2, "too_large"));
    }
    // 4. A 5 KB campaign (under the record limit, over limits.max_field_bytes).
    let rec = event("x4", "m4", t, "click", &format!(r#","channel":"email","campaign":"{}""#, "c".repeat(5000)));
    send_raw(&p, &topics.events, 0, Some(b"m4"), rec.as_bytes(), None);
    bad.push((0, "too_large"));
    // 5. A key mismatch with a 100 KB customer_id: kept whole, the reason cut short.
    let rec = event("x5", &"k".repeat(100_000), t, "click", r#","channel":"email""#);
    send_raw(&p, &topics.events, 1, Some(b"m5"), rec.as_bytes(), None);
    bad.push((1, "key_mismatch"));
    // 6. A valid journey whose conversion (40 touchpoints) is larger than the conversions topic takes.
    for n in 0..40 {
        let rec = event(&format!("m6-c{n}"), "m6", t + n, "click", r#","channel":"display","campaign":"a-long-campaign-name-for-size""#);
        send_raw(&p, &topics.events, 2, Some(b"m6"), rec.as_bytes(), None);
    }
    let rec = event("m6-p", "m6", t + 100, "purchase", r#","value":99.0"#);
    send_raw(&p, &topics.events, 2, Some(b"m6"), rec.as_bytes(), None);
    bad.push((2, "too_large"));
    for i in 0..10 {
        ordinary(&p, &topics.events, i % 3, &format!("after{i}"), t + 1000 + i as i64);
    }
    flush(&p);

    let proc = Processor::start(&topics, &[("event_time.idle_timeout", "1h")]);
    let want: HashSet<String> = (0..10).flat_map(|i| [format!("before{i}-p"), format!("after{i}-p")]).collect();
    let conversions = read_until(&topics.conversions, Duration::from_secs(180), |r| r.len() >= want.len());
    let dlq = read_until(&topics.dlq, Duration::from_secs(60), |r| r.len() >= bad.len());
    let extra_conv = read_all(&topics.conversions, Duration::from_secs(2));
    let log = proc.log();

    let got: Vec<String> = extra_conv.iter().map(|r| r.json()["conversion_id"].as_str().unwrap_or_default().to_string()).collect();
    assert_eq!(conversions.len(), want.len(), "every ordinary conversion arrived:\n{log}");
    assert_eq!(got.len(), want.len(), "no conversion twice, none of the poisoned customer: {got:?}");
    assert_eq!(got.iter().collect::<HashSet<_>>().len(), want.len(), "distinct conversions");
    let customers: HashSet<String> = extra_conv.iter().map(Record::key_str).collect();
    assert!(customers.iter().all(|c| c.starts_with("before") || c.starts_with("after")), "{customers:?}");
    let dlq = if dlq.len() > bad.len() { dlq } else { read_all(&topics.dlq, Duration::from_secs(2)) };
    assert_eq!(dlq.len(), bad.len(), "each bad record in the DLQ once:\n{log}");
    let mut by_partition: HashMap<i32, Vec<&Record>> = HashMap::new();
    let offset = |r: &Record| r.header("touchstream.source.offset").unwrap().parse::<i64>().unwrap();
    let mut dlq_in_order: Vec<&Record> = dlq.iter().collect();
    dlq_in_order.sort_by_key(|r| offset(r));
    for r in dlq_in_order {
        let src: i32 = r.header("touchstream.source.partition").unwrap().parse().unwrap();
        by_partition.entry(src).or_default().push(r);
        let reason = r.header("touchstream.error.reason").unwrap();
        assert!(reason.len() <= 512, "reason cut short: {} bytes", reason.len());
        assert!(r.payload.len() + r.key.as_ref().map_or(0, Vec::len) < 200_000, "fits the DLQ topic");
    }
    for (partition, kind) in &bad {
        let found = by_partition.get_mut(partition).and_then(|v| if v.is_empty() { None } else { Some(v.remove(0)) });
        let found = found.unwrap_or_else(|| panic!("a DLQ record from partition {partition}"));
        assert_eq!(found.header("touchstream.error.kind").as_deref(), Some(*kind), "{:?}", found.headers.iter().map(|(k, _)| k).collect::<Vec<_>>());
    }
    // The 900 KB records are kept as excerpts with their size and hash.
    let excerpts: Vec<&Record> = dlq.iter().filter(|r| r.header("touchstream.original.sha256").is_some()).collect();
    assert_eq!(excerpts.len(), 4, "four records too big for the DLQ topic");
    for r in excerpts {
        assert!(r.payload.len() <= 1024 && r.header("touchstream.original.bytes").unwrap().parse::<usize>().unwrap() > 900_000);
        assert_eq!(r.header("touchstream.original.sha256").unwrap().len(), 64);
    }
    assert!(log.contains("larger than the broker accepts"), "the isolated record is logged:\n{log}");
    // The conversion too large for its topic is refused before it is sent, while its purchase is
    // handled: the batch is redone once, without that purchase. One abort, plus at most the epoch
    // bump librdkafka needs when the abort purged records it had already numbered.
    let aborts = log.matches("aborting the transaction and redoing the batch").count();
    assert!((1..=2).contains(&aborts), "{aborts} aborts for the poisoned record:\n{log}");
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
}

/// A customer whose state record outgrows the changelog topic's `max.message.bytes`: the failure
/// comes at commit and cannot be traced to one input record, so the batch is redone one record per
/// transaction; each record whose own transaction fails goes to the DLQ. No batch aborts twice.
#[test]
fn a_state_record_too_large_for_the_changelog_is_isolated_record_by_record() {
    let topics = Topics::new("poison-state");
    create_topic(&topics.events, 2);
    create_topic_with(&topics.changelog, 2, &[("cleanup.policy", "compact"), ("max.message.bytes", "1500")]);
    let t = now_ms() - 10 * DAY;
    let p = big_producer("none");
    for i in 0..10 {
        ordinary(&p, &topics.events, i % 2, &format!("ok{i}"), t + i as i64);
    }
    // each click its own campaign: a record names a campaign once, so repeats would not grow it
    for n in 0..40 {
        let extra = format!(r#","channel":"display","campaign":"a-campaign-name-of-sixty-characters-xxxxxxxxxxxxxxxxxxxxxx-{n:02}""#);
        let rec = event(&format!("m7-c{n}"), "m7", t + 100 + n, "click", &extra);
        send_raw(&p, &topics.events, 0, Some(b"m7"), rec.as_bytes(), None);
    }
    for i in 10..20 {
        ordinary(&p, &topics.events, i % 2, &format!("ok{i}"), t + 1000 + i as i64);
    }
    flush(&p);
    let mut proc = Processor::start(&topics, &[("event_time.idle_timeout", "1h")]);
    proc.assert_caught_up(&topics, Duration::from_secs(240), "caught up");
    let conversions = read_all(&topics.conversions, Duration::from_secs(2));
    let dlq = read_all(&topics.dlq, Duration::from_secs(1));
    let log = proc.log();
    let ids: HashSet<String> = conversions.iter().map(|r| r.json()["conversion_id"].as_str().unwrap().to_string()).collect();
    assert_eq!((ids.len(), conversions.len()), (20, 20), "every ordinary conversion once:\n{log}");
    assert!(!dlq.is_empty(), "the clicks that outgrow the changelog are dead-lettered:\n{log}");
    let offsets: HashSet<String> = dlq.iter().map(|r| r.header("touchstream.source.offset").unwrap()).collect();
    assert_eq!(offsets.len(), dlq.len(), "each once");
    for r in &dlq {
        assert_eq!(r.key_str(), "m7");
        assert_eq!(r.header("touchstream.error.kind").as_deref(), Some("too_large"));
    }
    // One abort for the failed batch, then one per record whose own transaction failed (each may
    // be followed by librdkafka's epoch bump after a purge: at most one more abort each).
    let aborts = log.matches("aborting the transaction and redoing the batch").count();
    assert!(aborts <= 2 * (1 + dlq.len()), "{aborts} aborts for {} isolated records:\n{log}", dlq.len());
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn repeated_events_count_once_across_a_kill() {
    let topics = Topics::new("dupes");
    create_topic(&topics.events, 2);
    let t = now_ms() - 5 * DAY;
    let p = producer();
    let click = event("d-c1", "dora", t, "click", r#","channel":"email""#);
    let buy = event("d-p1", "dora", t + 60_000, "purchase", r#","value":30.0"#);
    for rec in [&click, &click, &buy, &buy, &buy] {
        send_raw(&p, &topics.events, 0, Some(b"dora"), rec.as_bytes(), None);
    }
    flush(&p);
    let mut proc = Processor::start_as(&topics, "a", EOS_SETTINGS, &[]);
    let first = read_until(&topics.conversions, Duration::from_secs(120), |r| !r.is_empty());
    assert_eq!(first.len(), 1, "one conversion:\n{}", proc.log());
    proc.assert_caught_up(&topics, Duration::from_secs(60), "caught up");
    kill9(&proc);
    drop(proc);

    // After a kill -9 and a restart (state restored from the changelog), copies are still repeats.
    let click2 = event("d-c2", "dora", t + 2 * 60_000, "click", r#","channel":"display""#);
    let buy2 = event("d-p2", "dora", t + 3 * 60_000, "purchase", r#","value":5.0"#);
    for rec in [&buy, &click, &click2, &click2, &buy2, &buy2] {
        send_raw(&p, &topics.events, 0, Some(b"dora"), rec.as_bytes(), None);
    }
    flush(&p);
    let settings: Vec<(&str, &str)> = EOS_SETTINGS.iter().copied().chain([("journey.dead_letter_duplicates", "true")]).collect();
    let mut proc = Processor::start_as(&topics, "a", &settings, &[]);
    let all = read_until(&topics.conversions, Duration::from_secs(120), |r| r.len() >= 2);
    proc.assert_caught_up(&topics, Duration::from_secs(60), "caught up");
    let all = if all.len() > 2 { all } else { read_all(&topics.conversions, Duration::from_secs(2)) };
    assert_eq!(all.len(), 2, "two conversions in all:\n{}", proc.log());
    let conv1 = all[0].json();
    let conv2 = all[1].json();
    assert_eq!(conv1["touchpoints"].as_array().unwrap().len(), 1, "the repeated click is one touchpoint: {conv1}");
    let tps2 = conv2["touchpoints"].as_array().unwrap();
    assert_eq!(tps2.len(), 1, "only the new click counts for the second purchase: {conv2}");
    assert_eq!(tps2[0]["channel"], "display");
    let dlq = read_until(&topics.dlq, Duration::from_secs(30), |r| r.len() >= 4);
    let kinds: Vec<String> = dlq.iter().map(|r| r.header("touchstream.error.kind").unwrap_or_default()).collect();
    assert_eq!(kinds, vec!["duplicate"; 4], "the restarted replica dead-letters the four repeats it saw:\n{}", proc.log());
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
}

#[test]
fn every_compression_codec_in_and_out() {
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    let events = unique("codecs.events");
    create_topic(&events, 4);
    let t = now_ms() - 5 * DAY;
    // Input: each partition written with another codec.
    for (i, codec) in codecs.iter().enumerate() {
        let p = big_producer(codec);
        for n in 0..25 {
            ordinary(&p, &events, i as i32, &format!("{codec}-{n}"), t + n);
        }
        flush(&p);
    }
    // Output: one replica per codec, each on its own group and output topics.
    let runs: Vec<(Topics, Processor)> = codecs
        .iter()
        .map(|codec| {
            let mut topics = Topics::new(&format!("codec-{codec}"));
            topics.events = events.clone();
            let proc = Processor::start(&topics, &[("kafka.producer.compression.type", codec), ("event_time.idle_timeout", "1h")]);
            (topics, proc)
        })
        .collect();
    for ((topics, proc), codec) in runs.into_iter().zip(codecs) {
        let conv = read_until(&topics.conversions, Duration::from_secs(180), |r| r.len() >= 100);
        assert_eq!(conv.len(), 100, "{codec}: all 100 conversions from 4 input codecs:\n{}", proc.log());
        let per_codec: HashSet<String> = conv.iter().map(|r| r.key_str().split('-').next().unwrap().to_string()).collect();
        assert_eq!(per_codec.len(), 4, "{codec}: every input codec decoded");
        assert!(read_all(&topics.dlq, Duration::from_millis(500)).is_empty(), "{codec}: nothing dead-lettered");
        let (status, log) = proc.stop();
        assert!(status.success(), "{codec}: {log}");
    }
}
