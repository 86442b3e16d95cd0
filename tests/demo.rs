//! `touchstream demo` (the README's first command) runs with no external service and prints a
//! summary read back from its output topics: channel shares under each method, live scores, the
//! latest alert with its probabilities, action and reasons, and a conversion's credits per touchpoint.

use std::process::Command;

#[test]
fn demo_runs_and_exits_cleanly_with_output() {
    let out = Command::new(env!("CARGO_BIN_EXE_touchstream"))
        .args(["demo", "--seconds", "15", "--every", "2", "--rate", "3000"])
        .output()
        .expect("run touchstream demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for section in [
        "channel shares of credited conversions",
        "deep",
        "live scores",
        "latest multi-touch conversion",
        "latest alert",
        "P(abandon)",
        "why P(abandon) is high",
    ] {
        assert!(stdout.contains(section), "`{section}` missing:\n{stdout}");
    }
    // the model's alerts name the inputs that drove P(abandon), e.g. `checkout = checkout not started (+0.12)`
    assert!(stdout.lines().any(|l| l.contains("why P(abandon) is high:") && l.contains(" = ") && l.contains("(+")), "no alert with reasons:\n{stdout}");
    let last = stdout.lines().rev().find(|l| l.starts_with("demo finished")).expect("final line");
    let conversions: u64 = last.split("wrote ").nth(1).and_then(|s| s.split_whitespace().next()).unwrap().parse().unwrap();
    assert!(conversions > 0, "{last}");
    assert!(!stderr.contains("ERROR"), "no errors logged:\n{stderr}");
}
