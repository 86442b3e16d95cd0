use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use apache_avro::types::Value;
use apache_avro::Schema;

use super::avro_in::*;
use super::avro_out::*;
use super::registry::{RegistryError, SchemaSource};
use super::*;
use crate::event::{Channel, EventType};

const NOW: i64 = 1_767_225_600_000;
const CHECK: Validation = Validation { now: NOW, max_future_skew_ms: 3_600_000 };

/// Schemas by id, as a registry would serve them; ids absent are "not found", id 666 is down.
struct Fixed(HashMap<u32, String>);
impl SchemaSource for Fixed {
    fn schema_by_id(&self, id: u32) -> Result<(String, String), RegistryError> {
        if id == 666 {
            return Err(RegistryError::Unavailable("connection refused".into()));
        }
        self.0.get(&id).map(|s| (s.clone(), "AVRO".into())).ok_or_else(|| RegistryError::NotFound(format!("schema id {id}")))
    }
}

/// An older producer: no session_id/properties, fields reordered, a field we no longer have.
const OLD: &str = r#"{"type":"record","name":"JourneyEvent","namespace":"io.touchstream.v1","fields":[
    {"name":"customer_id","type":"string"},
    {"name":"event_id","type":"string"},
    {"name":"event_type","type":{"type":"enum","name":"EventType","symbols":["impression","click","page_view","purchase"]}},
    {"name":"ts","type":"long"},
    {"name":"legacy_score","type":"int","default":0},
    {"name":"channel","type":["null",{"type":"enum","name":"Channel","symbols":["paid_search","email","display"]}],"default":null},
    {"name":"value","type":["null","float"],"default":null}]}"#;
/// A newer producer: a new optional field and new enum symbols (resolved to `other`).
const NEW: &str = r#"{"type":"record","name":"JourneyEvent","namespace":"io.touchstream.v1","fields":[
    {"name":"event_id","type":"string"},
    {"name":"customer_id","type":"string"},
    {"name":"ts","type":{"type":"long","logicalType":"timestamp-millis"}},
    {"name":"event_type","type":{"type":"enum","name":"EventType","symbols":["impression","click","purchase","wishlist_add","other"],"default":"other"}},
    {"name":"channel","type":["null",{"type":"enum","name":"Channel","symbols":["paid_search","email","tiktok","other"],"default":"other"}],"default":null},
    {"name":"device","type":["null","string"],"default":null},
    {"name":"campaign","type":["null","string"],"default":null},
    {"name":"value","type":["null","double"],"default":null},
    {"name":"quantity","type":["null","int"],"default":null}]}"#;
/// Incompatible: no event_id at all (required by us, no default).
const NO_ID: &str = r#"{"type":"record","name":"JourneyEvent","fields":[
    {"name":"customer_id","type":"string"},{"name":"ts","type":"long"},{"name":"event_type","type":"string"}]}"#;

fn decoder() -> AvroDecoder {
    let map = [(1, JOURNEY_EVENT_SCHEMA), (2, OLD), (3, NEW), (4, NO_ID), (5, "{not a schema")].into_iter().map(|(i, s)| (i, s.to_string())).collect();
    AvroDecoder::new(Box::new(Fixed(map)))
}

fn encode_with(id: u32, schema: &str, fields: Vec<(&str, Value)>) -> Vec<u8> {
    let schema = Schema::parse_str(schema).unwrap();
    let mut record = apache_avro::types::Record::new(&schema).unwrap();
    for (k, v) in fields {
        record.put(k, v);
    }
    let body = apache_avro::to_avro_datum(&schema, record).unwrap();
    let mut out = Vec::new();
    frame(id, &body, &mut out);
    out
}

fn enum_(i: u32, s: &str) -> Value {
    Value::Enum(i, s.into())
}
fn some(i: u32, v: Value) -> Value {
    Value::Union(i, Box::new(v))
}
fn null() -> Value {
    Value::Union(0, Box::new(Value::Null))
}

fn current(id: &str, customer: &str, ts: i64, etype: (u32, &str), channel: Value) -> Vec<u8> {
    encode_with(
        1,
        JOURNEY_EVENT_SCHEMA,
        vec![
            ("event_id", id.into()),
            ("customer_id", customer.into()),
            ("ts", Value::TimestampMillis(ts)),
            ("event_type", enum_(etype.0, etype.1)),
            ("channel", channel),
            ("campaign", some(1, "brand".into())),
            ("session_id", null()),
            ("value", null()),
            ("currency", null()),
            ("product_id", null()),
            ("quantity", some(1, Value::Int(2))),
            ("properties", some(1, Value::Map([("device".to_string(), Value::String("ios".into()))].into()))),
        ],
    )
}

#[test]
fn decodes_our_own_schema() {
    let mut d = decoder();
    let rec = current("e1", "c1", 1000, (1, "click"), some(1, enum_(4, "email")));
    let e = d.decode(Some(b"c1"), &rec, &CHECK).unwrap();
    assert_eq!((e.event_id.as_ref(), e.customer_id.as_ref(), e.ts), ("e1", "c1", 1000));
    assert_eq!((e.event_type, e.channel), (EventType::Click, Some(Channel::Email)));
    assert_eq!((e.campaign.as_deref(), e.quantity, e.value), (Some("brand"), Some(2), None));
    // cached: a second record costs no fetch
    d.decode(Some(b"c1"), &current("e2", "c1", 1001, (10, "purchase"), null()), &CHECK).unwrap();
    assert_eq!(d.fetches, 1);
}

#[test]
fn resolves_older_and_newer_writer_schemas() {
    let mut d = decoder();
    let old = encode_with(
        2,
        OLD,
        vec![
            ("customer_id", "c1".into()),
            ("event_id", "o1".into()),
            ("event_type", enum_(3, "purchase")),
            ("ts", Value::Long(5000)),
            ("legacy_score", Value::Int(9)),
            ("channel", null()),
            ("value", some(1, Value::Float(12.5))),
        ],
    );
    let e = d.decode(Some(b"c1"), &old, &CHECK).unwrap();
    assert_eq!((e.event_id.as_ref(), e.ts, e.event_type, e.value), ("o1", 5000, EventType::Purchase, Some(12.5)));
    assert_eq!((e.session_id, e.campaign, e.quantity), (None, None, None));

    let new = encode_with(
        3,
        NEW,
        vec![
            ("event_id", "n1".into()),
            ("customer_id", "c1".into()),
            ("ts", Value::TimestampMillis(6000)),
            ("event_type", enum_(1, "click")),
            ("channel", some(1, enum_(2, "tiktok"))),
            ("device", some(1, "android".into())),
            ("campaign", some(1, "launch".into())),
            ("value", null()),
            ("quantity", null()),
        ],
    );
    let e = d.decode(Some(b"c1"), &new, &CHECK).unwrap();
    assert_eq!((e.event_type, e.channel, e.campaign.as_deref()), (EventType::Click, Some(Channel::Other), Some("launch")));
    let wish = encode_with(
        3,
        NEW,
        vec![
            ("event_id", "n2".into()),
            ("customer_id", "c1".into()),
            ("ts", Value::TimestampMillis(6001)),
            ("event_type", enum_(3, "wishlist_add")),
            ("channel", null()),
            ("device", null()),
            ("campaign", null()),
            ("value", null()),
            ("quantity", null()),
        ],
    );
    assert_eq!(d.decode(Some(b"c1"), &wish, &CHECK).unwrap().event_type, EventType::Other);
}

#[test]
fn bad_records_are_invalid_with_a_reason_and_an_outage_is_not() {
    let mut d = decoder();
    fn kind(r: Result<Event<'_>, DecodeError>) -> &'static str {
        match r {
            Err(DecodeError::Invalid(e)) => e.kind(),
            other => panic!("{other:?}"),
        }
    }
    let _unused = |r: Result<Event<'static>, DecodeError>| match r {
        Err(DecodeError::Invalid(e)) => e.kind(),
        other => panic!("{other:?}"),
    };
    assert_eq!(kind(d.decode(Some(b"c1"), br#"{"event_id":"e"}"#, &CHECK)), "not_avro");
    assert_eq!(kind(d.decode(Some(b"c1"), &[0, 0, 1], &CHECK)), "not_avro");
    let good = current("e1", "c1", 1000, (1, "click"), some(1, enum_(4, "email")));
    assert_eq!(kind(d.decode(Some(b"c1"), &good[..good.len() - 3], &CHECK)), "not_avro");
    let mut unknown = good.clone();
    unknown[1..5].copy_from_slice(&99u32.to_be_bytes());
    assert_eq!(kind(d.decode(Some(b"c1"), &unknown, &CHECK)), "unknown_schema");
    let mut broken = good.clone();
    broken[1..5].copy_from_slice(&5u32.to_be_bytes());
    assert_eq!(kind(d.decode(Some(b"c1"), &broken, &CHECK)), "unknown_schema");
    let no_id = encode_with(4, NO_ID, vec![("customer_id", "c1".into()), ("ts", Value::Long(1)), ("event_type", "click".into())]);
    let r = d.decode(Some(b"c1"), &no_id, &CHECK);
    assert!(matches!(&r, Err(DecodeError::Invalid(InvalidEvent::IncompatibleSchema { id: 4, reason })) if reason.contains("event_id")), "{r:?}");
    // the same validation as JSON
    assert_eq!(kind(d.decode(Some(b"c2"), &good, &CHECK)), "key_mismatch");
    assert_eq!(kind(d.decode(Some(b"c1"), &current("e1", "c1", 1000, (1, "click"), null()), &CHECK)), "missing_field");
    // registry down: not the record's fault
    let mut down = good.clone();
    down[1..5].copy_from_slice(&666u32.to_be_bytes());
    assert!(matches!(d.decode(Some(b"c1"), &down, &CHECK), Err(DecodeError::Unavailable { id: 666, .. })));
    assert!(matches!(d.ensure(666), Err(DecodeError::Unavailable { .. })));
    assert!(d.ensure(99).is_ok(), "known unusable ids need no registry");
}

#[test]
fn outputs_round_trip_through_their_schemas() {
    use crate::output::{ConversionRecord, CreditedTouchpoint};
    let schema = Arc::new(Schema::parse_str(CONVERSION_SCHEMA).unwrap());
    let target = AvroTarget { subject: "conversions-value".into(), id: 42, schema: schema.clone() };
    let key = AvroTarget { subject: "conversions-key".into(), id: 43, schema: Arc::new(Schema::parse_str(STRING_KEY_SCHEMA).unwrap()) };
    let codec = OutputCodec::Avro { value: target, key: Some(key) };
    let rec = ConversionRecord {
        conversion_id: "p1".into(),
        customer_id: "c1".into(),
        conversion_ts: 9000,
        conversion_value: 70.0,
        currency: Some("EUR".into()),
        touchpoints: vec![CreditedTouchpoint::direct(9000, Some(1.0))],
        deep_method: Some("time_decay_fallback"),
        deep_baseline: None,
        conversion_probability: Some(0.25),
        expected_future_value: Some(12.5),
        model_version: Some("v1".into()),
    };
    let mut buf = Vec::new();
    codec.encode_value(&rec, &mut buf).unwrap();
    let (id, mut body) = unframe(&buf).unwrap();
    assert_eq!(id, 42);
    let back = apache_avro::from_avro_datum(&schema, &mut body, None).unwrap();
    let json: serde_json::Value = apache_avro::from_value(&back).unwrap();
    assert_eq!(json["conversion_id"], "p1");
    assert_eq!(json["touchpoints"][0]["channel"], "direct");
    assert_eq!(json["expected_future_value"], 12.5);
    assert_eq!(json["model_version"], "v1");
    let mut k = Vec::new();
    codec.encode_key("c1", &mut k).unwrap();
    assert_eq!(k, [0, 0, 0, 0, 43, 4, b'c', b'1']);
    let mut j = Vec::new();
    OutputCodec::Json.encode_key("c1", &mut j).unwrap();
    assert_eq!(j, b"c1");
}

#[test]
fn schemas_evolve_compatibly_from_every_released_version() {
    use apache_avro::schema_compatibility::SchemaCompatibility;
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas");
    let current = [
        ("journey_event.avsc", JOURNEY_EVENT_SCHEMA),
        ("attribution_conversion.avsc", CONVERSION_SCHEMA),
        ("attribution_channel_window.avsc", CHANNEL_WINDOW_SCHEMA),
        ("cart_abandonment_alert.avsc", ALERT_SCHEMA),
        ("customer_score.avsc", SCORE_SCHEMA),
    ];
    let mut checked = 0;
    for release in std::fs::read_dir(format!("{root}/released")).unwrap() {
        let dir = release.unwrap().path();
        for (file, text) in current {
            let Ok(old) = std::fs::read_to_string(dir.join(file)) else { continue };
            let old = Schema::parse_str(&old).unwrap();
            let new = Schema::parse_str(text).unwrap();
            let at = dir.display();
            SchemaCompatibility::can_read(&old, &new).unwrap_or_else(|e| panic!("{file} cannot read {at}/{file}: {e}"));
            SchemaCompatibility::can_read(&new, &old).unwrap_or_else(|e| panic!("{at}/{file} cannot read {file}: {e}"));
            checked += 1;
        }
    }
    assert!(checked >= 4, "no released schemas found under {root}/released");
    // and the check does catch a breaking change
    let broken = CONVERSION_SCHEMA.replace(r#"{"name": "conversion_value", "type": "double"},"#, r#"{"name": "conversion_value", "type": "string"},"#);
    assert_ne!(broken, CONVERSION_SCHEMA);
    let (a, b) = (Schema::parse_str(CONVERSION_SCHEMA).unwrap(), Schema::parse_str(&broken).unwrap());
    assert!(SchemaCompatibility::can_read(&a, &b).is_err());
}

/// Simulated events in our schema, framed under id 1.
fn generated(n: usize) -> Vec<(String, Vec<u8>)> {
    let schema = Schema::parse_str(JOURNEY_EVENT_SCHEMA).unwrap();
    touchstream_sim::stream::default_events(3, 50, 0.2, n as u64)
        .into_iter()
        .map(|r| {
            let customer = r.customer_id;
            let json: serde_json::Value = serde_json::from_slice(&r.json).unwrap();
            let value = Value::from(json).resolve(&schema).unwrap();
            let mut out = Vec::new();
            frame(1, &apache_avro::to_avro_datum(&schema, value).unwrap(), &mut out);
            (customer, out)
        })
        .collect()
}

/// The plan against apache-avro's own decoding and resolution (the general path).
fn both<'a>(d: &mut AvroDecoder, key: &[u8], payload: &'a [u8]) -> (Result<Event<'a>, String>, Result<Event<'static>, String>) {
    let (id, body) = unframe(payload).unwrap();
    let writer = d.writer(id).unwrap();
    let check = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };
    let fast = writer.plan.as_ref().map_err(|e| format!("{e:?}")).and_then(|p| p.decode(id, body).map_err(|e| e.kind().to_string()));
    let fast = fast.and_then(|f| event::validate(f, Some(key), &check).map_err(|e| e.kind().to_string()));
    let slow = d.decode_generic(id, &writer.schema, body).map_err(|e| e.kind().to_string());
    let slow = slow.and_then(|f| event::validate(f, Some(key), &check).map_err(|e| e.kind().to_string()));
    (fast, slow)
}

#[test]
fn the_plan_agrees_with_apache_avro_resolution_and_borrows() {
    let mut d = decoder();
    for (key, payload) in generated(3000) {
        let (fast, slow) = both(&mut d, key.as_bytes(), &payload);
        assert_eq!(fast, slow, "{key}");
        let e = fast.unwrap();
        assert!(matches!(e.event_id, Cow::Borrowed(_)) && matches!(e.customer_id, Cow::Borrowed(_)));
        // every truncation fails cleanly (stricter than apache-avro, which reads union
        // indexes missing at the end of the input as null)
        for cut in [5, payload.len() / 2, payload.len() - 1] {
            let (fast, _) = both(&mut d, key.as_bytes(), &payload[..cut]);
            assert_eq!(fast, Err("not_avro".to_string()), "cut at {cut}");
        }
    }
    let old = encode_with(
        2,
        OLD,
        vec![
            ("customer_id", "c1".into()),
            ("event_id", "o1".into()),
            ("event_type", enum_(2, "page_view")),
            ("ts", Value::Long(5000)),
            ("legacy_score", Value::Int(9)),
            ("channel", some(1, enum_(2, "display"))),
            ("value", some(1, Value::Float(1.5))),
        ],
    );
    let new = encode_with(
        3,
        NEW,
        vec![
            ("event_id", "n1".into()),
            ("customer_id", "c1".into()),
            ("ts", Value::TimestampMillis(6000)),
            ("event_type", enum_(3, "wishlist_add")),
            ("channel", some(1, enum_(2, "tiktok"))),
            ("device", some(1, "ios".into())),
            ("campaign", some(1, "x".into())),
            ("value", some(1, Value::Double(2.0))),
            ("quantity", some(1, Value::Int(3))),
        ],
    );
    for payload in [old, new] {
        let (fast, slow) = both(&mut d, b"c1", &payload);
        assert!(fast.is_ok(), "{fast:?}");
        assert_eq!(fast, slow);
    }
}

#[test]
fn recursive_writer_schemas_take_the_general_path() {
    const LINKED: &str = r#"{"type":"record","name":"JourneyEvent","fields":[
        {"name":"event_id","type":"string"},{"name":"customer_id","type":"string"},{"name":"ts","type":"long"},
        {"name":"event_type","type":"string"},
        {"name":"trail","type":["null",{"type":"record","name":"Node","fields":[{"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}],"default":null}]}"#;
    let mut map: HashMap<u32, String> = HashMap::new();
    map.insert(7, LINKED.to_string());
    let mut d = AvroDecoder::new(Box::new(Fixed(map)));
    let trail = Value::Union(
        1,
        Box::new(Value::Record(vec![
            ("v".into(), Value::Int(1)),
            (
                "next".into(),
                Value::Union(1, Box::new(Value::Record(vec![("v".into(), Value::Int(2)), ("next".into(), Value::Union(0, Box::new(Value::Null)))]))),
            ),
        ])),
    );
    let payload = encode_with(
        7,
        LINKED,
        vec![("event_id", "r1".into()), ("customer_id", "c1".into()), ("ts", Value::Long(1)), ("event_type", "click".into()), ("trail", trail)],
    );
    // click without a channel: decoded (by the general path), then rejected by validation
    assert_eq!(d.decode(Some(b"c1"), &payload, &CHECK), Err(DecodeError::Invalid(InvalidEvent::MissingField("channel"))));
    assert!(matches!(d.writers[&7].plan, Err(PlanError::Unsupported(_))));
}

#[test]
fn framed_avro_string_keys_are_read_as_the_customer_id() {
    use crate::config::InputFormat;
    let mut map: HashMap<u32, String> = HashMap::new();
    map.insert(1, JOURNEY_EVENT_SCHEMA.to_string());
    map.insert(8, STRING_KEY_SCHEMA.to_string());
    let mut d = AvroDecoder::new(Box::new(Fixed(map)));
    let key = [0, 0, 0, 0, 8, 4, b'c', b'1'];
    let value = current("e1", "c1", 1000, (1, "click"), some(1, enum_(4, "email")));
    let json = br#"{"event_id":"e2","customer_id":"c1","ts":1000,"event_type":"page_view"}"#;
    for (format, payload) in [(InputFormat::Avro, &value[..]), (InputFormat::Auto, &value[..]), (InputFormat::Auto, &json[..])] {
        let e = decode_input(format, Some(&mut d), Some(&key), payload, &CHECK).unwrap();
        assert_eq!(e.customer_id, "c1");
        let e = decode_input(format, Some(&mut d), Some(b"c1"), payload, &CHECK).unwrap();
        assert_eq!(e.customer_id, "c1", "plain keys still work");
    }
    // the json format never looks inside keys
    let r = decode_input(InputFormat::Json, Some(&mut d), Some(&key), json, &CHECK);
    assert!(matches!(r, Err(DecodeError::Invalid(InvalidEvent::KeyMismatch { .. }))), "{r:?}");
    let not_a_string = [0, 0, 0, 0, 1, 4, b'c', b'1'];
    let r = decode_input(InputFormat::Avro, Some(&mut d), Some(&not_a_string), &value, &CHECK);
    assert!(matches!(r, Err(DecodeError::Invalid(InvalidEvent::IncompatibleSchema { id: 1, .. }))), "{r:?}");
    let r = decode_input(InputFormat::Avro, Some(&mut d), Some(&key[..6]), &value, &CHECK);
    assert!(matches!(r, Err(DecodeError::Invalid(InvalidEvent::NotAvro(_)))), "{r:?}");
}
