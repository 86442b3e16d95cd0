//! `touchstream export`: the input topic, read_committed, as JSON lines in the input contract (what
//! `models/train.py --log` reads): every valid event once, with its fields; invalid records skipped.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::*;
use serde_json::Value;

#[test]
fn export_writes_every_valid_event_of_the_input_topic_once() {
    let topics = Topics::new("export");
    create_topic(&topics.events, 3);
    let t = now_ms() - DAY;
    let p = producer();
    let mut sent: HashMap<String, Value> = HashMap::new();
    for n in 0..300 {
        let c = format!("c{}", n % 37);
        let (kind, extra) = match n % 5 {
            0 => ("click", r#","channel":"paid_search","campaign":"brand","session_id":"s1""#),
            1 => ("page_view", ""),
            2 => ("cart_add", r#","product_id":"p7","quantity":2,"value":19.5,"currency":"EUR""#),
            3 => ("impression", r#","channel":"display""#),
            _ => ("purchase", r#","value":39.0,"currency":"EUR""#),
        };
        let json = event(&format!("e{n}"), &c, t + n * 1000, kind, extra);
        sent.insert(format!("e{n}"), serde_json::from_str(&json).unwrap());
        send_keyed(&p, &topics.events, c.as_bytes(), json.as_bytes());
    }
    send_keyed(&p, &topics.events, b"x", b"not json");
    send_keyed(&p, &topics.events, b"y", br#"{"event_id":"bad","customer_id":"y","ts":1}"#);
    flush(&p);

    let out = std::env::temp_dir().join(format!("{}.jsonl", unique("export")));
    let run = Command::new(env!("CARGO_BIN_EXE_touchstream")).arg("export").args(topics.args()).arg("--out").arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("exported 300 events (2 invalid skipped) from 3 partitions"), "{stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let lines: Vec<Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 300);
    for got in &lines {
        let want = &sent[got["event_id"].as_str().unwrap()];
        for (field, value) in want.as_object().unwrap() {
            assert_eq!(&got[field], value, "{field} of {got}");
        }
    }
    let mut ids: Vec<&str> = lines.iter().map(|l| l["event_id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 300, "each event once");

    // nothing at or after a start in the future
    let run =
        Command::new(env!("CARGO_BIN_EXE_touchstream")).arg("export").args(topics.args()).args(["--since", "0s"]).arg("--out").arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 0);
    let _ = std::fs::remove_file(&out);
}
