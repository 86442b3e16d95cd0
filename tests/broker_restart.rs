//! The broker restarts in the middle of a stream (its own test binary: nothing else runs while the
//! broker is down). The processor rides it out — retrying, aborting and redoing, or exiting and
//! being restarted by its supervisor — and the outputs equal a failure-free run's.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

#[test]
fn broker_restart_mid_stream() {
    let topics = Topics::new("brokerrestart");
    create_topic(&topics.events, 4);
    let events = simulated(12_000, 21);
    produce_events(&topics.events, &events[..6000], 0.0);
    let mut proc = Processor::start_as(&topics, "a", EOS_SETTINGS, &[]);
    // let it get going (a first commit), then restart the broker underneath it
    wait_until("a first commit", Duration::from_secs(60), Some(&proc), || committed_total(&topics) > 0);
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let status = Command::new("bash").arg("scripts/kafka.sh").arg("restart-broker").current_dir(root).status().expect("restart the broker");
    assert!(status.success(), "broker restarted");
    // more input after the restart
    produce_events(&topics.events, &events[6000..], 5.0);
    // a supervisor: restart the processor if it gave up while the broker was away
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut restarts = 0;
    let mut logs = String::new();
    loop {
        if let Some(status) = proc.child.try_wait().unwrap() {
            logs.push_str(&format!("---- exited with {status:?}\n{}", proc.log()));
            restarts += 1;
            assert!(restarts <= 3, "the processor keeps failing after the broker restart:\n{logs}");
            proc = Processor::start_as(&topics, "a", EOS_SETTINGS, &[]);
        }
        if wait_caught_up(&topics, Duration::from_secs(2)) {
            break;
        }
        assert!(Instant::now() < deadline, "not caught up after the broker restart:\n{logs}\n{}", proc.log());
    }
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    assert_same_outputs(&got, &want);
    println!("broker restart: processor restarts needed: {restarts}");
}
