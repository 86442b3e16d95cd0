//! A smoke run of the throughput harness (`touchstream-load`) with a tiny backlog on the test
//! broker: every run completes and reports numbers. Speed itself is a report, never asserted.

use std::path::Path;
use std::process::Command;

#[test]
fn the_throughput_harness_runs_end_to_end() {
    let brokers = std::env::var("TOUCHSTREAM_TEST_BROKERS").expect("TOUCHSTREAM_TEST_BROKERS (scripts/test.sh starts the broker)");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let touchstream = root.join("target/debug/touchstream");
    assert!(touchstream.exists(), "{} is built by `cargo test --workspace`", touchstream.display());
    let out = std::env::temp_dir().join(format!("touchstream-load-{}.json", std::process::id()));
    let run = Command::new(env!("CARGO_BIN_EXE_touchstream-load"))
        .args(["--brokers", &brokers, "--customers", "40", "--partitions", "2", "--modes", "passthrough,defaults,models_off"])
        .arg("--touchstream")
        .arg(&touchstream)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let runs = report["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    for r in runs {
        assert!(r["events_per_s"].as_f64().unwrap() > 0.0, "{r}");
        assert!(r["ratio_to_passthrough"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert!(runs[1]["bytes_per_event"]["changelog"].as_f64().unwrap() > 0.0, "the processor writes its changelog: {}", runs[1]);
    assert!(runs[1]["customers"].as_f64().unwrap() > 0.0);
    let _ = std::fs::remove_file(&out);
    let _ = std::fs::remove_file(out.with_extension("md"));
}
