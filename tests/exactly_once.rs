//! Exactly-once, proven by failures against a real broker: every output topic read read_committed
//! after a run with failures equals a failure-free run over the same input — nothing missing,
//! nothing duplicated, every credit and total equal.

mod common;

use std::time::{Duration, Instant};

use common::*;

const PARTITIONS: i32 = 4;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Two replicas; a random one is killed with SIGKILL at random moments and restarted, at least
/// ten times, while the input is still arriving. `load-tests/kill-test.sh` runs it at scale
/// (TOUCHSTREAM_KILL_EVENTS, TOUCHSTREAM_KILLS, TOUCHSTREAM_KILL_SECONDS).
#[test]
fn kill9_replicas_at_random_moments() {
    let topics = Topics::new("kill");
    create_topic(&topics.events, PARTITIONS);
    let events: usize = env_or("TOUCHSTREAM_KILL_EVENTS", 24_000);
    let min_kills: u32 = env_or("TOUCHSTREAM_KILLS", 10);
    let seconds: f64 = env_or("TOUCHSTREAM_KILL_SECONDS", 40.0);
    let budget = Duration::from_secs_f64(seconds * 2.0 + min_kills as f64 * 6.0 + 120.0);
    let producer = {
        let t = topics.events.clone();
        std::thread::spawn(move || produce_stream(&t, events, 11, seconds))
    };
    let mut replicas = [Some(Processor::start_as(&topics, "a", EOS_SETTINGS, &[])), Some(Processor::start_as(&topics, "b", EOS_SETTINGS, &[]))];
    let mut rng = Lcg(0x5eed);
    let mut kills = 0;
    let started = Instant::now();
    while kills < min_kills || !producer.is_finished() {
        std::thread::sleep(Duration::from_millis(1_500 + rng.below(3_000)));
        let i = rng.below(2) as usize;
        let victim = replicas[i].take().unwrap();
        kill9(&victim);
        drop(victim);
        kills += 1;
        std::thread::sleep(Duration::from_millis(rng.below(1_000)));
        replicas[i] = Some(Processor::start_as(&topics, if i == 0 { "a" } else { "b" }, EOS_SETTINGS, &[]));
        assert!(started.elapsed() < budget, "kill loop overran");
    }
    producer.join().unwrap();
    let caught_up = wait_caught_up(&topics, Duration::from_secs(180).max(budget / 2));
    let logs: Vec<String> = replicas.iter().flatten().map(|p| p.log()).collect();
    assert!(caught_up, "the group caught up after {kills} kills:\n{}", logs.join("\n----\n"));
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    for r in replicas.into_iter().flatten() {
        let (status, log) = r.stop();
        assert!(status.success(), "{log}");
    }
    assert_same_outputs(&got, &want);
    println!(
        "KILL TEST PASS: {events} events, {kills} kills (SIGKILL) of 2 replicas; {} conversions, {} alerts, {} channel windows: none missing, none duplicated, all equal to a failure-free run",
        want.conversions.len(),
        want.alerts.len(),
        want.channels.len()
    );
}

/// A failure between produce and commit (injected: every 3rd transaction that carries input is
/// aborted): the aborted batches are invisible to read_committed readers and redone exactly once.
#[test]
fn aborted_transactions_are_invisible_and_redone_once() {
    let topics = Topics::new("abort");
    create_topic(&topics.events, PARTITIONS);
    produce_stream(&topics.events, 12_000, 12, 0.0);
    let mut proc = Processor::start_as(&topics, "a", &eos_with(&[("processing.max_batch_events", "500")]), &[("TOUCHSTREAM_FAULT_ABORT_EVERY", "3")]);
    proc.assert_caught_up(&topics, Duration::from_secs(180), "caught up");
    // after the last abort the aggregators replay their partials before writing totals again
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    let aborts = log.matches("transaction aborted").count();
    assert!(aborts >= 3, "the fault was injected ({aborts} aborts):\n{log}");
    // between snapshots (every 10 s) a rewind restores the last one and replays the input since
    assert!(log.contains("input replayed from the snapshots to the committed offsets"), "the rewinds replayed input:\n{log}");
    // the aborted records are in the log, visible to a read_uncommitted reader only
    let uncommitted = read_uncommitted_count(&topics.conversions);
    assert!(uncommitted > got.conversion_records, "aborted conversions exist ({uncommitted} written, {} committed)", got.conversion_records);
    assert_same_outputs(&got, &want);
}

/// A paused replica (SIGSTOP) is replaced by a new instance with the same transactional id; when
/// it resumes it is fenced and stops, and the outputs are still exactly once.
#[test]
fn a_resumed_zombie_is_fenced() {
    let topics = Topics::new("zombie");
    create_topic(&topics.events, PARTITIONS);
    let producer = {
        let t = topics.events.clone();
        std::thread::spawn(move || produce_stream(&t, 10_000, 13, 20.0))
    };
    let zombie = Processor::start_as(&topics, "same", EOS_SETTINGS, &[]);
    wait_until("the first replica's first commit", Duration::from_secs(60), Some(&zombie), || committed_total(&topics) > 0);
    signal(&zombie, "STOP");
    let successor = Processor::start_as(&topics, "same", EOS_SETTINGS, &[]);
    // the zombie's session expires and the successor takes over: commits move while the zombie is stopped
    let before = committed_total(&topics);
    wait_until("the successor's commits", Duration::from_secs(90), Some(&successor), || committed_total(&topics) > before);
    signal(&zombie, "CONT");
    let mut zombie = zombie;
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = zombie.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "the zombie neither stopped nor was fenced:\n{}", zombie.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!status.success(), "a fenced instance exits with an error");
    assert!(zombie.log().contains("fenced"), "{}", zombie.log());
    producer.join().unwrap();
    assert!(wait_caught_up(&topics, Duration::from_secs(180)), "successor:\n{}\nzombie:\n{}", successor.log(), zombie.log());
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = successor.stop();
    assert!(status.success(), "{log}");
    assert_same_outputs(&got, &want);
}

/// Scaling 1 -> 3 -> 1 replicas while the input arrives (graceful joins and leaves).
#[test]
fn scaling_one_three_one() {
    let topics = Topics::new("scale");
    create_topic(&topics.events, PARTITIONS);
    let producer = {
        let t = topics.events.clone();
        std::thread::spawn(move || produce_stream(&t, 12_000, 14, 24.0))
    };
    let mut a = Processor::start_as(&topics, "a", EOS_SETTINGS, &[]);
    wait_until("a's first commit", Duration::from_secs(60), Some(&a), || committed_total(&topics) > 0);
    let b = Processor::start_as(&topics, "b", EOS_SETTINGS, &[]);
    let c = Processor::start_as(&topics, "c", EOS_SETTINGS, &[]);
    // both joined, own partitions, and the group moved on after the rebalance
    wait_until("b and c own partitions", Duration::from_secs(90), Some(&b), || owns_partitions(&b) && owns_partitions(&c));
    let before = committed_total(&topics);
    wait_until("commits after the scale-out", Duration::from_secs(90), Some(&b), || committed_total(&topics) > before);
    for p in [b, c] {
        let (status, log) = p.stop();
        assert!(status.success(), "{log}");
    }
    producer.join().unwrap();
    a.assert_caught_up(&topics, Duration::from_secs(180), "caught up");
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");
    assert_same_outputs(&got, &want);
}

/// A rebalance while outputs wait in memory. A commit runs on its own thread while the loop reads
/// on; the outputs of what it reads meanwhile are sent only after the commit's answer. Here each
/// commit waits 8 s on its thread (`TOUCHSTREAM_FAULT_COMMIT_DELAY_MS`) and commits are 5,000
/// events or 40 s apart: of a burst of 9,000 events, the 4,000 read during the first commit stay
/// in memory after it, until the next commit. A second replica joins meanwhile and takes half the
/// partitions, from the committed offsets. The outputs in memory must go with the partitions
/// (the member redoes what it keeps), or the new owner's records are written twice.
#[test]
fn a_rebalance_while_outputs_wait_in_memory_repeats_nothing() {
    let topics = Topics::new("rebalance-in-memory");
    create_topic(&topics.events, PARTITIONS);
    let settings = eos_with(&[("processing.commit_interval", "40s"), ("processing.max_batch_events", "5000"), ("kafka.transaction_timeout", "60s")]);
    let slow = [("TOUCHSTREAM_FAULT_COMMIT_DELAY_MS", "8000")];
    let a = Processor::start_as(&topics, "a", &settings, &slow);
    wait_until("a owns partitions", Duration::from_secs(60), Some(&a), || owns_partitions(&a));
    produce_events(&topics.events, &simulated(9000, 23), 0.0);
    wait_until("the first commit", Duration::from_secs(60), Some(&a), || committed_total(&topics) > 0);
    let b = Processor::start_as(&topics, "b", &settings, &[]);
    wait_until("b owns partitions", Duration::from_secs(90), Some(&b), || owns_partitions(&b));
    assert!(wait_caught_up(&topics, Duration::from_secs(180)), "{}\n{}", a.log(), b.log());
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = a.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("fault injection is on") && log.contains("partitions revoked"), "a gave partitions up: {log}");
    let (status, log) = b.stop();
    assert!(status.success(), "{log}");
    assert_same_outputs(&got, &want);
}

fn read_uncommitted_count(topic: &str) -> usize {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{ClientConfig, Offset, TopicPartitionList};
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", unique("uncommitted"))
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    let ends = end_offsets(topic);
    let mut tpl = TopicPartitionList::new();
    for (p, _) in &ends {
        tpl.add_partition_offset(topic, *p, Offset::Beginning).unwrap();
    }
    c.assign(&tpl).unwrap();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Some(Ok(_)) = c.poll(Duration::from_millis(200)) {
            n += 1;
        }
    }
    n
}

/// A fatal producer error (injected inside librdkafka before the 4th commit): the processor
/// replaces its producer, reloads state from the changelog and goes on; outputs exactly once.
#[test]
fn a_fatal_producer_error_is_survived_by_recreating_the_producer() {
    let topics = Topics::new("fatal");
    create_topic(&topics.events, PARTITIONS);
    produce_stream(&topics.events, 12_000, 15, 0.0);
    let mut proc = Processor::start_as(&topics, "a", &eos_with(&[("processing.max_batch_events", "500")]), &[("TOUCHSTREAM_FAULT_FATAL_AT", "4")]);
    proc.assert_caught_up(&topics, Duration::from_secs(180), "caught up");
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("recreating the producer"), "the fault was injected and handled:\n{log}");
    assert_same_outputs(&got, &want);
}

/// The state reload after a fatal producer error stalls (injected: that restore attempt sees
/// nothing, as a client whose metadata keeps the changelog partitions unknown after a broker
/// restart): after 20 s without progress the restore client is replaced and the partitions read
/// again, and the outputs are a failure-free run's.
#[test]
fn a_stalled_restore_starts_over_with_a_new_client() {
    let topics = Topics::new("restorestall");
    create_topic(&topics.events, PARTITIONS);
    produce_stream(&topics.events, 6000, 16, 0.0);
    // restore 1: the assignment (empty changelog); restore 2: the reload after the fatal error
    let env = [("TOUCHSTREAM_FAULT_FATAL_AT", "4"), ("TOUCHSTREAM_FAULT_RESTORE_BLIND", "2")];
    let mut proc = Processor::start_as(&topics, "a", &eos_with(&[("processing.max_batch_events", "500")]), &env);
    proc.assert_caught_up(&topics, Duration::from_secs(180), "caught up");
    let want = reference_run(&topics.events);
    let got = outputs_when_totals_settle(&topics, &want);
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("this restore attempt sees nothing"), "the fault was injected:\n{log}");
    assert!(log.contains("changelog restore stalled"), "the stall was detected:\n{log}");
    assert_same_outputs(&got, &want);
}
