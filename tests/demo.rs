//! `touchstream demo` (the README's first command) runs with no external service and prints a
//! summary with conversions and alerts read back from its output topics.

use std::process::Command;

#[test]
fn demo_runs_and_exits_cleanly_with_output() {
    let out = Command::new(env!("CARGO_BIN_EXE_touchstream"))
        .args(["demo", "--seconds", "10", "--every", "2", "--rate", "3000"])
        .output()
        .expect("run touchstream demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    assert!(stdout.contains("top channels by credited conversions"), "{stdout}");
    let last = stdout.lines().rev().find(|l| l.starts_with("demo finished")).expect("final line");
    let conversions: u64 = last.split("wrote ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(conversions > 0, "{last}");
    assert!(!stderr.contains("ERROR"), "no errors logged:\n{stderr}");
}
