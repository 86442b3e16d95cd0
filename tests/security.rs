//! Secured clusters on a real broker: `scripts/kafka.sh` starts the test broker with SSL,
//! SASL_SSL (SCRAM-SHA-256 and -512, PLAIN) and mutual-TLS listeners and a CA made at start. The
//! processor runs end to end, exactly-once, over each; a wrong password, an untrusted broker
//! certificate and a missing client certificate each fail the start with a message naming the cause.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run the tests with scripts/test.sh, which starts the secured listeners"))
}

fn tls(file: &str) -> String {
    format!("{}/{file}", var("TOUCHSTREAM_TEST_TLS_DIR"))
}

/// librdkafka settings of one way in, as `TOUCHSTREAM__KAFKA__OPTIONS__*` variables.
fn listener(name: &str) -> (String, Vec<(String, String)>) {
    let opt = |k: &str, v: String| (format!("TOUCHSTREAM__KAFKA__OPTIONS__{k}"), v);
    match name {
        "ssl" => (var("TOUCHSTREAM_TEST_BROKERS_SSL"), vec![opt("SECURITY.PROTOCOL", "SSL".into()), opt("SSL.CA.LOCATION", tls("ca.pem"))]),
        "scram-256" | "scram-512" | "plain" => {
            let (user, password, mechanism) = match name {
                "scram-256" => (var("TOUCHSTREAM_TEST_SCRAM_USER"), var("TOUCHSTREAM_TEST_SCRAM_PASSWORD"), "SCRAM-SHA-256"),
                "scram-512" => (var("TOUCHSTREAM_TEST_SCRAM512_USER"), var("TOUCHSTREAM_TEST_SCRAM512_PASSWORD"), "SCRAM-SHA-512"),
                _ => (var("TOUCHSTREAM_TEST_PLAIN_USER"), var("TOUCHSTREAM_TEST_PLAIN_PASSWORD"), "PLAIN"),
            };
            (
                var("TOUCHSTREAM_TEST_BROKERS_SASL_SSL"),
                vec![
                    opt("SECURITY.PROTOCOL", "SASL_SSL".into()),
                    opt("SSL.CA.LOCATION", tls("ca.pem")),
                    opt("SASL.MECHANISMS", mechanism.into()),
                    opt("SASL.USERNAME", user),
                    opt("SASL.PASSWORD", password),
                ],
            )
        }
        "mtls" => (
            var("TOUCHSTREAM_TEST_BROKERS_MTLS"),
            vec![
                opt("SECURITY.PROTOCOL", "SSL".into()),
                opt("SSL.CA.LOCATION", tls("ca.pem")),
                opt("SSL.CERTIFICATE.LOCATION", tls("client.pem")),
                opt("SSL.KEY.LOCATION", tls("client.key")),
            ],
        ),
        other => panic!("unknown listener {other}"),
    }
}

#[test]
fn runs_exactly_once_over_every_secured_listener() {
    let names = ["ssl", "scram-256", "scram-512", "plain", "mtls"];
    let t = now_ms() - 5 * DAY;
    let runs: Vec<(&str, Topics, Processor)> = names
        .iter()
        .map(|name| {
            let topics = Topics::new(&format!("secure-{name}"));
            create_topic(&topics.events, 2);
            let p = producer();
            for n in 0..5 {
                let customer = format!("{name}-{n}");
                let click = event(&format!("{customer}-c"), &customer, t + n, "click", r#","channel":"email""#);
                let buy = event(&format!("{customer}-p"), &customer, t + n + 60_000, "purchase", r#","value":10.0"#);
                send_keyed(&p, &topics.events, customer.as_bytes(), click.as_bytes());
                send_keyed(&p, &topics.events, customer.as_bytes(), buy.as_bytes());
            }
            flush(&p);
            let (brokers, env) = listener(name);
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let proc = Processor::start_as(&topics, "a", &[("kafka.brokers", &brokers), ("event_time.idle_timeout", "1h")], &env);
            (*name, topics, proc)
        })
        .collect();
    for (name, topics, proc) in runs {
        // Read back over the plaintext listener.
        let conv = read_until(&topics.conversions, Duration::from_secs(120), |r| r.len() >= 5);
        assert_eq!(conv.len(), 5, "{name}: five conversions:\n{}", proc.log());
        assert!(wait_caught_up(&topics, Duration::from_secs(60)), "{name}: offsets committed in the transactions:\n{}", proc.log());
        let again = read_all(&topics.conversions, Duration::from_secs(1));
        assert_eq!(again.len(), 5, "{name}: nothing twice");
        let (status, log) = proc.stop();
        assert!(status.success(), "{name}: {log}");
        assert!(!log.contains("SASL.PASSWORD") && !log.contains(&var("TOUCHSTREAM_TEST_SCRAM_PASSWORD")), "{name}: no secret in the log");
    }
}

/// Runs `touchstream run` against `brokers` with `env`; returns its exit status and output once it
/// exits (it must, within 60 s).
fn start_fails(brokers: &str, env: &[(String, String)]) -> String {
    let topics = Topics::new("secure-fail");
    create_topic(&topics.events, 1);
    let log = std::env::temp_dir().join(format!("{}.log", unique("secure-fail")));
    let mut child = Command::new(env!("CARGO_BIN_EXE_touchstream"))
        .arg("run")
        .args(topics.args())
        .args(["--set", &format!("kafka.brokers={brokers}")])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("touchstream did not fail within 60 s:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(!status.success(), "{out}");
    out
}

#[test]
fn bad_credentials_and_certificates_fail_at_start_naming_the_cause() {
    let set = |env: &mut Vec<(String, String)>, key: &str, value: String| {
        let k = format!("TOUCHSTREAM__KAFKA__OPTIONS__{key}");
        env.retain(|(x, _)| *x != k);
        env.push((k, value));
    };
    let (brokers, mut env) = listener("scram-256");
    set(&mut env, "SASL.PASSWORD", "not-the-password".into());
    let out = start_fails(&brokers, &env);
    assert!(out.contains("SASL authentication failed"), "wrong password:\n{out}");
    assert!(!out.contains("not-the-password"), "the password is not printed:\n{out}");

    let (brokers, mut env) = listener("ssl");
    set(&mut env, "SSL.CA.LOCATION", tls("other-ca.pem"));
    let out = start_fails(&brokers, &env);
    assert!(out.contains("certificate is not trusted"), "untrusted broker certificate:\n{out}");

    let (brokers, mut env) = listener("mtls");
    env.retain(|(k, _)| !k.contains("SSL.CERTIFICATE") && !k.contains("SSL.KEY"));
    let out = start_fails(&brokers, &env);
    assert!(out.contains("client certificate"), "missing client certificate:\n{out}");
    assert!(!out.contains("cannot reach Kafka"), "{out}");
}
