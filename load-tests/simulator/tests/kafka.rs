//! `touchstream-sim --kafka-brokers` writes the stream straight into Kafka, keyed by customer, in
//! each customer's event order, with the truth files beside it. Needs a broker
//! (TOUCHSTREAM_TEST_BROKERS, set by scripts/test.sh).

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message};

#[test]
fn streams_into_kafka_keyed_by_customer_in_order() {
    let brokers = std::env::var("TOUCHSTREAM_TEST_BROKERS").expect("TOUCHSTREAM_TEST_BROKERS: run through scripts/test.sh");
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let topic = format!("sim-{}-{nanos}", std::process::id());
    let dir = std::env::temp_dir().join(&topic);
    let out = Command::new(env!("CARGO_BIN_EXE_touchstream-sim"))
        .args(["--customers", "60", "--seed", "9", "--kafka-brokers", &brokers, "--kafka-topic", &topic, "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let produced: u64 = stderr.split(" events produced").next().and_then(|s| s.rsplit(' ').next()).and_then(|n| n.parse().ok()).expect(&stderr);
    assert!(produced > 500, "{stderr}");
    assert!(dir.join("truth_conversions.jsonl").exists() && dir.join("truth_carts.jsonl").exists(), "truth beside the stream");

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut last_ts: HashMap<String, i64> = HashMap::new();
    let mut n = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while n < produced && Instant::now() < deadline {
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(500)) else { continue };
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        let customer = v["customer_id"].as_str().unwrap();
        assert_eq!(m.key(), Some(customer.as_bytes()), "keyed by customer");
        let ts = v["ts"].as_i64().unwrap();
        let prev = last_ts.insert(customer.to_string(), ts);
        assert!(prev.map_or(true, |p| p <= ts), "a customer's events in order");
        n += 1;
    }
    assert_eq!(n, produced, "every event arrived");
    let _ = std::fs::remove_dir_all(&dir);
}
