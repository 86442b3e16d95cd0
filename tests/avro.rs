//! Avro end to end against a real Kafka broker and a real Confluent-compatible schema registry
//! (`scripts/test.sh` starts Apicurio Registry: TOUCHSTREAM_TEST_REGISTRY): registry Avro input
//! with compatible older and newer writer schemas beside JSON, Avro outputs, the DLQ for what
//! cannot be resolved, a registry outage that pauses and resumes consumption, an incompatible
//! output schema that stops the start, and a foreign client (Python confluent-kafka + fastavro)
//! on both sides.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use common::*;
use serde_json::json;
use touchstream::codec::registry::RegistryClient;
use touchstream::codec::{frame, unframe, JOURNEY_EVENT_SCHEMA};
use touchstream::config::Config;

fn registry_url() -> String {
    std::env::var("TOUCHSTREAM_TEST_REGISTRY")
        .expect("TOUCHSTREAM_TEST_REGISTRY is not set: run the tests with scripts/test.sh, which starts a schema registry")
}

fn registry() -> RegistryClient {
    registry_at(&registry_url())
}

fn registry_at(url: &str) -> RegistryClient {
    let mut cfg = Config::defaults().registry;
    cfg.url = url.to_string();
    RegistryClient::new(&cfg).unwrap()
}

/// An older writer of the input contract: fewer fields, another order, a field we do not have.
const OLD: &str = r#"{"type":"record","name":"JourneyEvent","namespace":"io.touchstream.v1","fields":[
    {"name":"customer_id","type":"string"},
    {"name":"event_id","type":"string"},
    {"name":"ts","type":"long"},
    {"name":"event_type","type":{"type":"enum","name":"EventType","symbols":["impression","click","purchase"]}},
    {"name":"channel","type":["null",{"type":"enum","name":"Channel","symbols":["paid_search","email","display"]}],"default":null},
    {"name":"legacy_score","type":"int","default":0},
    {"name":"value","type":["null","double"],"default":null}]}"#;
/// A newer writer: an extra optional field, a channel symbol we do not know (read as `other`).
const NEW: &str = r#"{"type":"record","name":"JourneyEvent","namespace":"io.touchstream.v1","fields":[
    {"name":"event_id","type":"string"},
    {"name":"customer_id","type":"string"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"event_type","type":{"type":"enum","name":"EventType","symbols":["impression","click","purchase","other"],"default":"other"}},
    {"name":"channel","type":["null",{"type":"enum","name":"Channel","symbols":["paid_search","email","tiktok","other"],"default":"other"}],"default":null},
    {"name":"device","type":["null","string"],"default":null},
    {"name":"campaign","type":["null","string"],"default":null},
    {"name":"value","type":["null","double"],"default":null}]}"#;
/// Cannot be resolved against ours: no event_id, which we require and has no default.
const NO_EVENT_ID: &str = r#"{"type":"record","name":"JourneyEvent","namespace":"io.touchstream.v1","fields":[
    {"name":"customer_id","type":"string"},{"name":"ts","type":"long"},{"name":"event_type","type":"string"}]}"#;

/// Encodes `record` (JSON, by field name) with `schema` in the Confluent framing under `id`.
fn avro_event(schema: &str, id: u32, record: serde_json::Value) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    let value: Value = record.into();
    let value = value.resolve(&schema).unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    frame(id, &apache_avro::to_avro_datum(&schema, value).unwrap(), &mut out);
    out
}

/// Decodes a Confluent-framed value with its writer schema fetched from the registry, as JSON.
fn decode_output(bytes: &[u8]) -> (u32, serde_json::Value) {
    let (id, mut body) = unframe(bytes).unwrap_or_else(|e| panic!("{e}: {bytes:?}"));
    let (text, _) = registry().fetch(id).unwrap();
    let schema = Schema::parse_str(&text).unwrap();
    let value = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
    assert!(body.is_empty(), "trailing bytes");
    (id, to_json(value))
}

fn to_json(v: Value) -> serde_json::Value {
    match v {
        Value::Null => serde_json::Value::Null,
        Value::Boolean(b) => json!(b),
        Value::Int(n) => json!(n),
        Value::Long(n) | Value::TimestampMillis(n) => json!(n),
        Value::Double(d) => json!(d),
        Value::Float(d) => json!(d),
        Value::String(s) | Value::Enum(_, s) => json!(s),
        Value::Union(_, inner) => to_json(*inner),
        Value::Array(items) => serde_json::Value::Array(items.into_iter().map(to_json).collect()),
        Value::Map(m) => serde_json::Value::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Value::Record(fields) => serde_json::Value::Object(fields.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        other => panic!("unexpected {other:?}"),
    }
}

fn avro_settings(registry: &str) -> Vec<(&'static str, String)> {
    vec![
        ("registry.url", registry.to_string()),
        ("formats.conversions", "avro".into()),
        ("formats.alerts", "avro".into()),
        ("formats.channels", "avro".into()),
        ("event_time.idle_timeout", "1h".into()),
    ]
}

fn start(topics: &Topics, settings: &[(&'static str, String)]) -> Processor {
    let extra: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Processor::start(topics, &extra)
}

#[test]
fn avro_and_json_input_resolved_against_our_schema_and_avro_outputs() {
    let topics = Topics::new("avro-e2e");
    create_topic(&topics.events, 1);
    let reg = registry();
    let subject = format!("{}-value", topics.events);
    let current = reg.register(&subject, JOURNEY_EVENT_SCHEMA).unwrap();
    let old = reg.register(&subject, OLD).unwrap();
    let new = reg.register(&subject, NEW).unwrap();
    let broken = reg.register(&format!("{}-broken-value", topics.events), NO_EVENT_ID).unwrap();
    let t = (now_ms() - 10 * DAY).div_euclid(HOUR) * HOUR;

    let p = producer();
    let alice = |payload: Vec<u8>| send_raw(&p, &topics.events, 0, Some(b"alice"), &payload, None);
    // a1 with its key as Confluent's serializer writes an Avro string key
    let key_id = reg.register(&format!("{}-key", topics.events), r#""string""#).unwrap();
    let mut avro_key = Vec::new();
    frame(key_id, &apache_avro::to_avro_datum(&Schema::String, Value::String("alice".into())).unwrap(), &mut avro_key);
    send_raw(
        &p,
        &topics.events,
        0,
        Some(&avro_key),
        &avro_event(
            JOURNEY_EVENT_SCHEMA,
            current,
            json!({"event_id":"a1","customer_id":"alice","ts":t,"event_type":"impression",
        "channel":"email","campaign":"spring","session_id":null,"value":null,"currency":null,"product_id":null,"quantity":null,
        "properties":{"device":"ios"}}),
        ),
        None,
    );
    alice(avro_event(
        OLD,
        old,
        json!({"customer_id":"alice","event_id":"a2","ts":t + HOUR,"event_type":"click","channel":"paid_search","legacy_score":3,"value":null}),
    ));
    alice(avro_event(
        NEW,
        new,
        json!({"event_id":"a3","customer_id":"alice","ts":t + 2 * HOUR,"event_type":"click","channel":"tiktok","device":"android","campaign":"launch","value":null}),
    ));
    // auto: anything without the magic byte is JSON
    alice(event("a4", "alice", t + 3 * HOUR, "purchase", r#","value":50.0,"currency":"EUR""#).into_bytes());
    // unusable records, each between good ones
    let unresolvable = avro_event(NO_EVENT_ID, broken, json!({"customer_id":"alice","ts":t,"event_type":"click"}));
    let mut unknown_id = avro_event(
        JOURNEY_EVENT_SCHEMA,
        current,
        json!({"event_id":"x","customer_id":"alice","ts":t,"event_type":"click",
        "channel":"email","campaign":null,"session_id":null,"value":null,"currency":null,"product_id":null,"quantity":null,"properties":null}),
    );
    unknown_id[1..5].copy_from_slice(&2_000_000_000u32.to_be_bytes());
    let truncated = vec![0u8, 0, 0];
    for bad in [&unresolvable, &unknown_id, &truncated] {
        alice(bad.clone());
    }
    // bob abandons a cart; zed moves the watermark past its deadline
    send_raw(
        &p,
        &topics.events,
        0,
        Some(b"bob"),
        &avro_event(
            OLD,
            old,
            json!({"customer_id":"bob","event_id":"b1","ts":t + 4 * HOUR,"event_type":"click","channel":"display","legacy_score":0,"value":null}),
        ),
        None,
    );
    send_raw(&p, &topics.events, 0, Some(b"bob"), event("b2", "bob", t + 4 * HOUR + MIN, "cart_add", r#","product_id":"p1","value":30.0"#).as_bytes(), None);
    send_raw(&p, &topics.events, 0, Some(b"zed"), event("z1", "zed", t + 2 * DAY, "page_view", "").as_bytes(), None);
    flush(&p);

    // The processor reaches the registry over https, trusting the test CA only (the test's own
    // client registers over plain http: the same registry).
    let https = std::env::var("TOUCHSTREAM_TEST_REGISTRY_HTTPS").expect("TOUCHSTREAM_TEST_REGISTRY_HTTPS (scripts/test.sh)");
    let mut settings = avro_settings(&https);
    settings.push(("registry.ca_file", std::env::var("TOUCHSTREAM_TEST_REGISTRY_CA").expect("TOUCHSTREAM_TEST_REGISTRY_CA")));
    settings.push(("formats.events", "auto".into()));
    settings.push(("formats.keys", "avro".into()));
    let proc = start(&topics, &settings);

    let conversions = read_until(&topics.conversions, Duration::from_secs(90), |r| !r.is_empty());
    assert_eq!(conversions.len(), 1, "{}", proc.log());
    let (_, conv) = decode_output(&conversions[0].payload);
    let (_, key) = decode_output(conversions[0].key.as_deref().unwrap());
    assert_eq!(key, json!("alice"));
    assert_eq!(conv["conversion_id"], "a4");
    assert_eq!(conv["conversion_value"], 50.0);
    let channels: Vec<&str> = conv["touchpoints"].as_array().unwrap().iter().map(|tp| tp["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["email", "paid_search", "other"], "{conv}");
    let tps = conv["touchpoints"].as_array().unwrap();
    assert_eq!(tps[0]["campaign"], "spring");
    assert_eq!(tps[2]["campaign"], "launch");
    assert_close(tps[2]["last_touch"].as_f64().unwrap(), 1.0, "last touch");
    assert_close(tps[0]["first_touch"].as_f64().unwrap(), 1.0, "first touch");

    let alerts = read_until(&topics.alerts, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(alerts.len(), 1, "{}", proc.log());
    let (_, alert) = decode_output(&alerts[0].payload);
    assert_eq!(alert["alert_id"], "bob:b2");
    assert_eq!(alert["top_touchpoints"][0]["channel"], "display");

    let channel_windows = read_until(&topics.channels, Duration::from_secs(60), |r| r.len() >= 3);
    assert!(!channel_windows.is_empty());
    for r in &channel_windows {
        let (_, w) = decode_output(&r.payload);
        let (_, k) = decode_output(r.key.as_deref().unwrap());
        assert_eq!(k.as_str().unwrap(), format!("{}|{}", w["window_start"], w["channel"].as_str().unwrap()));
    }

    let dlq = read_until(&topics.dlq, Duration::from_secs(30), |r| r.len() >= 3);
    let kinds: Vec<String> = dlq.iter().map(|r| r.header("touchstream.error.kind").unwrap()).collect();
    assert_eq!(kinds, ["incompatible_schema", "unknown_schema", "not_avro"], "{}", proc.log());
    assert!(dlq[0].header("touchstream.error.reason").unwrap().contains("event_id"), "{:?}", dlq[0].header("touchstream.error.reason"));
    assert_eq!(dlq[0].payload, unresolvable, "original bytes kept");
    assert_eq!(dlq[1].payload, unknown_id);
    assert_eq!(dlq[2].payload, truncated);

    // the output subjects were registered under TopicNameStrategy names
    let conv_subject = format!("{}-value", topics.conversions);
    let (text, _) = registry().fetch(unframe(&conversions[0].payload).unwrap().0).unwrap();
    assert!(text.contains("AttributionConversion"), "{conv_subject}: {text}");
    let (status, _) = proc.stop();
    assert!(status.success());
}

/// Forwards TCP connections to `target` while `up` is set. Otherwise it plays a registry that is
/// down (new connections dropped) or, with `stall` set, one that is too slow (new connections
/// accepted and never answered); kept-alive connections are cut at their next request.
fn switchable_proxy(target: String, up: Arc<AtomicBool>, stall: bool) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        let mut stalled = Vec::new();
        for conn in listener.incoming() {
            let Ok(client) = conn else { continue };
            if !up.load(Ordering::Acquire) {
                if stall {
                    stalled.push(client);
                }
                continue;
            }
            let Ok(server) = TcpStream::connect(&target) else { continue };
            // Kept-alive connections are cut too, at their next request.
            let pipe = |mut from: TcpStream, mut to: TcpStream, up: Arc<AtomicBool>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 8192];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || !up.load(Ordering::Acquire) || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to.shutdown(std::net::Shutdown::Both);
                    let _ = from.shutdown(std::net::Shutdown::Both);
                });
            };
            pipe(client.try_clone().unwrap(), server.try_clone().unwrap(), up.clone());
            pipe(server, client, up.clone());
        }
    });
    addr
}

/// `http_get`, or (0, "") while nothing listens yet.
fn get(addr: &str, path: &str) -> (u16, String) {
    if TcpStream::connect(addr).is_err() {
        return (0, String::new());
    }
    http_get(addr, path)
}

#[track_caller]
fn wait_for(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    wait_logged(None, what, timeout, cond)
}

/// `wait_for`, showing the processor's log on a timeout.
#[track_caller]
fn wait_logged(proc: Option<&Processor>, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}; log:\n{}", proc.map(|p| p.log()).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_registry_too_slow_to_answer_pauses_consumption_and_nothing_is_lost() {
    let topics = Topics::new("avro-outage");
    create_topic(&topics.events, 1);
    let url = registry_url();
    let hostport = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let path = url.trim_start_matches("http://").split_once('/').unwrap().1.to_string();
    let up = Arc::new(AtomicBool::new(true));
    let proxy = switchable_proxy(hostport, up.clone(), true);
    let reg = registry();
    let subject = format!("{}-value", topics.events);
    let current = reg.register(&subject, JOURNEY_EVENT_SCHEMA).unwrap();
    let t = (now_ms() - 2 * DAY).div_euclid(HOUR) * HOUR;
    let p = producer();
    let dave = |schema: &str, id: u32, rec: serde_json::Value| send_raw(&p, &topics.events, 0, Some(b"dave"), &avro_event(schema, id, rec), None);
    dave(
        JOURNEY_EVENT_SCHEMA,
        current,
        json!({"event_id":"d1","customer_id":"dave","ts":t,"event_type":"click","channel":"email",
        "campaign":null,"session_id":null,"value":null,"currency":null,"product_id":null,"quantity":null,"properties":null}),
    );
    flush(&p);

    let http = free_addr();
    let mut settings = vec![
        ("registry.url", format!("http://{proxy}/{path}")),
        ("registry.retry_min", "100ms".to_string()),
        ("registry.retry_max", "500ms".to_string()),
        ("registry.timeout", "1s".to_string()),
        ("formats.events", "avro".to_string()),
        ("http.enabled", "true".to_string()),
        ("http.listen", http.clone()),
        ("event_time.idle_timeout", "1h".to_string()),
    ];
    settings.push(("processing.commit_interval", "100ms".into()));
    let proc = start(&topics, &settings);
    wait_for("ready", Duration::from_secs(60), || get(&http, "/readyz").0 == 200);
    wait_for("d1 consumed", Duration::from_secs(60), || committed_offsets(&topics.group, &topics.events, &[0]) == [(0, 1)]);

    // The registry becomes too slow to answer (registry.timeout); a producer starts writing with
    // a schema we have not seen.
    up.store(false, Ordering::Release);
    let new = reg.register(&subject, NEW).unwrap();
    dave(
        NEW,
        new,
        json!({"event_id":"d2","customer_id":"dave","ts":t + HOUR,"event_type":"click","channel":"tiktok","device":null,"campaign":null,"value":null}),
    );
    dave(
        NEW,
        new,
        json!({"event_id":"d3","customer_id":"dave","ts":t + 2 * HOUR,"event_type":"purchase","channel":null,"device":null,"campaign":null,"value":20.0}),
    );
    flush(&p);
    wait_logged(Some(&proc), "not ready", Duration::from_secs(30), || get(&http, "/readyz") == (503, "not ready: schema registry unavailable\n".into()));
    assert_eq!(metric(&http, "touchstream_registry_available"), Some(0.0));
    assert_eq!(metric(&http, "touchstream_registry_paused_partitions"), Some(1.0));
    // the loop goes on retrying the registry while the record waits
    let errors = |h: &str| metric(h, "touchstream_registry_errors_total").unwrap_or(0.0);
    let before = errors(&http);
    wait_for("two more registry retries while the record waits", Duration::from_secs(30), || errors(&http) >= before + 2.0);
    assert_eq!(committed_offsets(&topics.group, &topics.events, &[0]), [(0, 1)], "nothing past the waiting record is committed");
    assert!(read_all(&topics.conversions, Duration::from_millis(500)).is_empty());
    assert!(read_all(&topics.dlq, Duration::from_millis(500)).is_empty(), "an outage is not the record's fault");

    // Back: it resumes by itself, from the record that waited.
    up.store(true, Ordering::Release);
    wait_for("ready again", Duration::from_secs(30), || get(&http, "/readyz").0 == 200);
    let conversions = read_until(&topics.conversions, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(conversions.len(), 1, "{}", proc.log());
    let conv = conversions[0].json();
    assert_eq!(conv["conversion_id"], "d3");
    let channels: Vec<&str> = conv["touchpoints"].as_array().unwrap().iter().map(|tp| tp["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["email", "other"]);
    assert_eq!(metric(&http, "touchstream_registry_available"), Some(1.0));
    assert!(read_all(&topics.dlq, Duration::from_millis(500)).is_empty());
    let (status, log) = proc.stop();
    assert!(status.success(), "{log}");
    assert!(log.contains("schema registry unavailable") && log.contains("consumption resumed"), "{log}");
}

#[test]
fn the_start_waits_for_an_unavailable_registry_and_says_so() {
    let topics = Topics::new("avro-start");
    create_topic(&topics.events, 1);
    let url = registry_url();
    let hostport = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    let path = url.trim_start_matches("http://").split_once('/').unwrap().1.to_string();
    let up = Arc::new(AtomicBool::new(false));
    let proxy = switchable_proxy(hostport, up.clone(), false);
    let http = free_addr();
    let mut settings = avro_settings(&format!("http://{proxy}/{path}"));
    settings.extend([
        ("registry.retry_min", "100ms".to_string()),
        ("registry.retry_max", "500ms".to_string()),
        ("http.enabled", "true".to_string()),
        ("http.listen", http.clone()),
    ]);
    let proc = start(&topics, &settings);
    wait_logged(Some(&proc), "not ready", Duration::from_secs(30), || get(&http, "/readyz") == (503, "not ready: schema registry unavailable\n".into()));
    assert_eq!(metric(&http, "touchstream_registry_available"), Some(0.0));
    let t = now_ms() - DAY;
    let p = producer();
    send_raw(&p, &topics.events, 0, Some(b"eve"), event("e1", "eve", t, "purchase", r#","value":5.0"#).as_bytes(), None);
    flush(&p);
    assert!(wait_for_log(&proc, "schema registry unavailable", Duration::from_secs(30)), "{}", proc.log());
    up.store(true, Ordering::Release);
    wait_logged(Some(&proc), "ready", Duration::from_secs(60), || get(&http, "/readyz").0 == 200);
    let conversions = read_until(&topics.conversions, Duration::from_secs(60), |r| !r.is_empty());
    assert_eq!(conversions.len(), 1, "{}", proc.log());
    assert_eq!(decode_output(&conversions[0].payload).1["conversion_id"], "e1");
    let (status, _) = proc.stop();
    assert!(status.success());
}

#[test]
fn an_incompatible_output_schema_stops_the_start_with_a_clear_message() {
    let topics = Topics::new("avro-incompatible");
    create_topic(&topics.events, 1);
    let subject = format!("{}-value", topics.conversions);
    // An earlier, different AttributionConversion under our subject, and a BACKWARD rule on it:
    // ours cannot read its conversion_id (int -> string does not promote).
    let earlier = r#"{"type":"record","name":"AttributionConversion","namespace":"io.touchstream.v1","fields":[{"name":"conversion_id","type":"int"}]}"#;
    registry().register(&subject, earlier).unwrap();
    let agent = ureq::Agent::new_with_defaults();
    let mut resp = agent
        .put(&format!("{}/config/{subject}", registry_url()))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .send(r#"{"compatibility":"BACKWARD"}"#)
        .expect("set the subject's compatibility");
    assert!(resp.status().is_success(), "{}", resp.body_mut().read_to_string().unwrap_or_default());

    let settings = avro_settings(&registry_url());
    let mut proc = start(&topics, &settings);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = proc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "still running: {}", proc.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = proc.log();
    assert!(!status.success());
    assert!(log.contains(&subject) && log.contains("incompatible") && log.contains("schemas/attribution_conversion.avsc"), "{log}");
}

fn python() -> String {
    if let Ok(p) = std::env::var("TOUCHSTREAM_TEST_PYTHON") {
        return p;
    }
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let out = Command::new("bash").arg(format!("{root}/scripts/interop-venv.sh")).output().expect("scripts/interop-venv.sh");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn interop(args: &[&str], stdin: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/interop/client.py");
    let mut child = Command::new(python()).arg(script).args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("python");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "client.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_foreign_client_writes_our_avro_input_and_reads_our_avro_outputs() {
    let topics = Topics::new("avro-interop");
    create_topic(&topics.events, 1);
    let t = (now_ms() - 3 * DAY).div_euclid(HOUR) * HOUR;
    let lines = [
        json!({"writer":"old","key":"carol","record":{"customer_id":"carol","event_id":"c1","ts":t,"event_type":"impression","channel":"display","legacy_score":1,"value":null}}),
        json!({"writer":"new","key":"carol","record":{"event_id":"c2","customer_id":"carol","ts":t + HOUR,"event_type":"click","channel":"tiktok","device":"ios","campaign":"launch","value":null}}),
        json!({"writer":"old","key":"carol","record":{"customer_id":"carol","event_id":"c3","ts":t + 2 * HOUR,"event_type":"click","channel":"email","legacy_score":0,"value":null}}),
        json!({"writer":"new","key":"carol","record":{"event_id":"c4","customer_id":"carol","ts":t + 3 * HOUR,"event_type":"purchase","channel":null,"device":null,"campaign":null,"value":80.0}}),
    ];
    let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let produced = interop(&["produce", &brokers(), &registry_url(), &topics.events], &input);
    assert!(produced.contains(r#""produced": 4"#), "{produced}");

    let mut settings = avro_settings(&registry_url());
    settings.push(("formats.events", "avro".into()));
    let proc = start(&topics, &settings);
    let out = interop(&["consume", &brokers(), &registry_url(), &topics.conversions, "1", "90"], "");
    let records: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 1, "{}", proc.log());
    let conv = &records[0];
    assert_eq!(conv["key"], "carol");
    let v = &conv["value"];
    assert_eq!(v["conversion_id"], "c4");
    assert_eq!(v["conversion_ts"], t + 3 * HOUR);
    assert_eq!(v["conversion_value"], 80.0);
    let tps = v["touchpoints"].as_array().unwrap();
    let channels: Vec<&str> = tps.iter().map(|tp| tp["channel"].as_str().unwrap()).collect();
    assert_eq!(channels, ["display", "other", "email"]);
    for rule in ["time_decay", "last_touch", "first_touch", "linear", "position_based"] {
        let sum: f64 = tps.iter().map(|tp| tp[rule].as_f64().unwrap()).sum();
        assert_close(sum, 1.0, rule);
    }
    assert_close(tps[1]["linear"].as_f64().unwrap(), 1.0 / 3.0, "linear");
    // the model fields (optional in the schema) reach the foreign reader too
    // deep credit and the share left to the customer's baseline make the whole conversion
    let deep: f64 = tps.iter().map(|tp| tp["deep"].as_f64().unwrap()).sum::<f64>() + v["deep_baseline"].as_f64().unwrap_or(0.0);
    assert_close(deep, 1.0, "deep");
    assert!(v["model_version"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(v["deep_method"].is_string() && v["expected_future_value"].is_number(), "{v}");

    let out = interop(&["consume", &brokers(), &registry_url(), &topics.channels, "3", "60"], "");
    let windows: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!windows.is_empty(), "{}", proc.log());
    for w in &windows {
        let v = &w["value"];
        assert_eq!(w["key"].as_str().unwrap(), format!("{}|{}", v["window_start"], v["channel"].as_str().unwrap()));
        assert_eq!(v["window_end"].as_i64().unwrap() - v["window_start"].as_i64().unwrap(), HOUR);
    }
    assert!(read_all(&topics.dlq, Duration::from_millis(500)).is_empty());
    let (status, _) = proc.stop();
    assert!(status.success());
}
