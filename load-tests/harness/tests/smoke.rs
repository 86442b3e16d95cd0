//! A smoke run of the throughput harness with a tiny backlog on the test broker that
//! `scripts/test.sh` starts (TOUCHSTREAM_TEST_BROKERS): the passthrough and the processor's
//! defaults (with a short latency run) complete, twice (two rounds, the second in reverse order),
//! and report positive numbers, CPU time included. Speed itself is a report, never asserted here.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The debug `touchstream` binary. CARGO_BIN_EXE_* only covers this crate's binaries, so look
/// beside ours (same target dir, whatever it is), then in the workspace's target/debug.
fn touchstream() -> PathBuf {
    let beside = Path::new(env!("CARGO_BIN_EXE_touchstream-load")).with_file_name("touchstream");
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/touchstream");
    for p in [beside, workspace] {
        if p.exists() {
            return p;
        }
    }
    panic!("the debug touchstream binary is missing: `cargo test --workspace` builds it, or run `cargo build -p touchstream` first");
}

#[test]
fn the_throughput_harness_runs_end_to_end() {
    let brokers = std::env::var("TOUCHSTREAM_TEST_BROKERS")
        .expect("TOUCHSTREAM_TEST_BROKERS is not set: run the tests with scripts/test.sh, which starts a Kafka broker");
    let dir = std::env::temp_dir().join(format!("touchstream-load-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("report.json");
    let run = Command::new(env!("CARGO_BIN_EXE_touchstream-load"))
        .args(["--brokers", &brokers, "--customers", "200", "--events", "2000", "--partitions", "2", "--modes", "passthrough,defaults"])
        .args(["--latency-seconds", "3", "--rounds", "2", "--warmup-runs", "0"])
        .arg("--touchstream")
        .arg(touchstream())
        .arg("--log-dir")
        .arg(&dir)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "touchstream-load failed:\n{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert!(report["backlog"]["events"].as_u64().unwrap() > 0, "{report}");
    let runs = report["runs"].as_array().unwrap();
    let order: Vec<(&str, u64)> = runs.iter().map(|r| (r["mode"].as_str().unwrap(), r["round"].as_u64().unwrap())).collect();
    assert_eq!(order, [("passthrough", 0), ("defaults", 0), ("defaults", 1), ("passthrough", 1)]);
    for r in runs {
        assert!(r["machine_cpu_seconds"].as_f64().is_some_and(|v| v > 0.0), "{r}");
        // the replicas' CPU time (ticks of 10 ms; the passthrough of 2,000 records may take less)
        let floor = if r["mode"] == "defaults" { 0.0 } else { -1.0 };
        assert!(r["cpu_seconds"].as_f64().is_some_and(|v| v > floor), "{r}");
    }
    for r in runs {
        for field in ["events_per_s", "steady_events_per_s", "ratio_to_passthrough", "seconds"] {
            assert!(r[field].as_f64().is_some_and(|v| v > 0.0), "{field} of {r}");
        }
    }
    let p = &runs[1];
    assert!(p["topics"]["changelog"]["bytes_per_event"].as_f64().unwrap() > 0.0, "the processor writes its changelog: {p}");
    for field in ["resident_bytes", "customers", "resident_bytes_per_customer"] {
        assert!(p[field].as_f64().is_some_and(|v| v > 0.0), "{field} of {p}");
    }
    let l = &p["latency"];
    assert!(l["events"].as_u64().unwrap() > 0 && l["rate"].as_f64().unwrap() > 0.0, "{l}");
    if l["conversions_seen"].as_u64().unwrap() > 0 {
        assert!(l["p50_ms"].as_f64().unwrap() > 0.0 && l["max_ms"].as_f64().unwrap() >= l["p99_ms"].as_f64().unwrap(), "{l}");
    }
    // the transport's floor: the same paced input through the passthrough; every purchase's copy
    // is an output, so every one is seen
    let f = &p["latency_floor"];
    assert_eq!(f["rate"].as_f64(), l["rate"].as_f64(), "the floor runs at the processor's latency rate: {f}");
    assert!(f["purchases"].as_u64().unwrap() > 0 && f["conversions_seen"] == f["purchases"], "{f}");
    assert!(f["p50_ms"].as_f64().unwrap() > 0.0 && f["max_ms"].as_f64().unwrap() >= f["p99_ms"].as_f64().unwrap(), "{f}");
    let md = std::fs::read_to_string(out.with_extension("md")).unwrap();
    assert!(md.contains("Medians over 2 rounds") && md.contains("process CPU"), "{md}");
    let _ = std::fs::remove_dir_all(&dir);
}
