//! The input contract: one JSON object per Kafka record on the events topic, key = customer id.
//! Decoding borrows from the record's bytes (no allocation unless a string has escapes).

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::time::Millis;

pub use touchstream_contract::{Channel, EventType};

/// A decoded and validated event. Strings borrow from the record's bytes where possible.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub customer_id: Cow<'a, str>,
    pub ts: Millis,
    pub event_type: EventType,
    pub channel: Option<Channel>,
    pub campaign: Option<Cow<'a, str>>,
    pub session_id: Option<Cow<'a, str>>,
    pub value: Option<f64>,
    pub currency: Option<Cow<'a, str>>,
    pub product_id: Option<Cow<'a, str>>,
    pub quantity: Option<i64>,
}

/// Why an event was rejected. `kind()` is a bounded label for metrics and DLQ headers.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("value is not a JSON object: {0}")]
    NotJson(String),
    #[error("missing required field `{0}`")]
    MissingField(&'static str),
    #[error("field `{field}` is invalid: {reason}")]
    InvalidField { field: String, reason: String },
    #[error("record key {key:?} differs from customer_id {customer_id:?}")]
    KeyMismatch { key: Option<String>, customer_id: String },
    #[error("ts {ts} is more than {max_skew_ms} ms ahead of the wall clock ({now})")]
    FutureTimestamp { ts: Millis, now: Millis, max_skew_ms: Millis },
    #[error("value is not Confluent-framed Avro: {0}")]
    NotAvro(String),
    #[error("writer schema id {id} is unusable: {reason}")]
    UnknownSchema { id: u32, reason: String },
    #[error("writer schema id {id} cannot be resolved against the input schema (schemas/journey_event.avsc): {reason}")]
    IncompatibleSchema { id: u32, reason: String },
    #[error("{what} is {bytes} bytes, over the limit of {limit} ({key})")]
    TooLarge { what: String, bytes: usize, limit: usize, key: &'static str },
    #[error("a record this event produces (an output or its state change) is larger than the broker accepts")]
    OutputTooLarge,
    #[error("repeated event: the customer's state already holds event_id {0:?}")]
    Duplicate(String),
}

impl InvalidEvent {
    pub fn kind(&self) -> &'static str {
        match self {
            InvalidEvent::NotJson(_) => "not_json",
            InvalidEvent::MissingField(_) => "missing_field",
            InvalidEvent::InvalidField { .. } => "invalid_field",
            InvalidEvent::KeyMismatch { .. } => "key_mismatch",
            InvalidEvent::FutureTimestamp { .. } => "future_timestamp",
            InvalidEvent::NotAvro(_) => "not_avro",
            InvalidEvent::UnknownSchema { .. } => "unknown_schema",
            InvalidEvent::IncompatibleSchema { .. } => "incompatible_schema",
            InvalidEvent::TooLarge { .. } | InvalidEvent::OutputTooLarge => "too_large",
            InvalidEvent::Duplicate(_) => "duplicate",
        }
    }

    pub const KINDS: &'static [&'static str] = &[
        "not_json",
        "missing_field",
        "invalid_field",
        "key_mismatch",
        "future_timestamp",
        "not_avro",
        "unknown_schema",
        "incompatible_schema",
        "too_large",
        "duplicate",
    ];
}

/// Checks applied after decoding.
#[derive(Debug, Clone, Copy)]
pub struct Validation {
    /// Wall-clock now, ms.
    pub now: Millis,
    /// Largest accepted distance of `ts` ahead of `now`.
    pub max_future_skew_ms: Millis,
}

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(borrow, default)]
    event_id: Option<Text<'a>>,
    #[serde(borrow, default)]
    customer_id: Option<Text<'a>>,
    #[serde(default)]
    ts: Option<i64>,
    #[serde(borrow, default)]
    event_type: Option<Text<'a>>,
    #[serde(borrow, default)]
    channel: Option<Text<'a>>,
    #[serde(borrow, default)]
    campaign: Option<Text<'a>>,
    #[serde(borrow, default)]
    session_id: Option<Text<'a>>,
    #[serde(default)]
    value: Option<f64>,
    #[serde(borrow, default)]
    currency: Option<Text<'a>>,
    #[serde(borrow, default)]
    product_id: Option<Text<'a>>,
    #[serde(default)]
    quantity: Option<i64>,
    #[serde(default)]
    properties: Option<StringMap>,
}

/// A string that borrows from the input when it has no escapes.
struct Text<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

/// Validates that `properties` is a map of string to string without keeping it.
struct StringMap;

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of string to string")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                while let Some((_k, _v)) = map.next_entry::<Cow<'de, str>, Cow<'de, str>>()? {}
                Ok(StringMap)
            }
        }
        d.deserialize_map(V)
    }
}

/// Decodes and validates one record. `key` is the record key (must equal `customer_id`).
pub fn decode<'a>(key: Option<&[u8]>, payload: &'a [u8], check: &Validation) -> Result<Event<'a>, InvalidEvent> {
    if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        let shown = String::from_utf8_lossy(&payload[..payload.len().min(32)]).into_owned();
        return Err(InvalidEvent::NotJson(format!("expected a JSON object, got {shown:?}")));
    }
    // Fast path without path tracking; only a failed record is decoded again to name the field.
    let mut de = serde_json::Deserializer::from_slice(payload);
    let raw = match RawEvent::deserialize(&mut de).and_then(|raw| de.end().map(|_| raw)) {
        Ok(raw) => raw,
        Err(_) => return Err(explain(payload)),
    };
    let _ = raw.properties;
    let fields = Fields {
        event_id: raw.event_id.map(|t| t.0),
        customer_id: raw.customer_id.map(|t| t.0),
        ts: raw.ts,
        event_type: raw.event_type.map(|t| t.0),
        channel: raw.channel.map(|t| t.0),
        campaign: raw.campaign.map(|t| t.0),
        session_id: raw.session_id.map(|t| t.0),
        value: raw.value,
        currency: raw.currency.map(|t| t.0),
        product_id: raw.product_id.map(|t| t.0),
        quantity: raw.quantity,
    };
    validate(fields, key, check)
}

/// The fields of an event as decoded from any wire format (JSON, Avro), before validation.
#[derive(Debug, Default)]
pub struct Fields<'a> {
    pub event_id: Option<Cow<'a, str>>,
    pub customer_id: Option<Cow<'a, str>>,
    pub ts: Option<i64>,
    pub event_type: Option<Cow<'a, str>>,
    pub channel: Option<Cow<'a, str>>,
    pub campaign: Option<Cow<'a, str>>,
    pub session_id: Option<Cow<'a, str>>,
    pub value: Option<f64>,
    pub currency: Option<Cow<'a, str>>,
    pub product_id: Option<Cow<'a, str>>,
    pub quantity: Option<i64>,
}

/// The contract's checks, the same for every wire format: required fields, touchpoints carry a
/// channel, non-negative value and quantity, key = customer_id, ts not too far in the future.
pub fn validate<'a>(raw: Fields<'a>, key: Option<&[u8]>, check: &Validation) -> Result<Event<'a>, InvalidEvent> {
    let event_id = non_empty(raw.event_id, "event_id")?;
    let customer_id = non_empty(raw.customer_id, "customer_id")?;
    let ts = raw.ts.ok_or(InvalidEvent::MissingField("ts"))?;
    let event_type = EventType::parse(&raw.event_type.ok_or(InvalidEvent::MissingField("event_type"))?);
    let channel = raw.channel.as_deref().map(Channel::parse);
    if event_type.is_touchpoint() && channel.is_none() {
        return Err(InvalidEvent::MissingField("channel"));
    }
    if let Some(v) = raw.value {
        if !v.is_finite() || v < 0.0 {
            return Err(InvalidEvent::InvalidField { field: "value".into(), reason: format!("{v} is not a non-negative number") });
        }
    }
    if let Some(q) = raw.quantity {
        if q < 0 {
            return Err(InvalidEvent::InvalidField { field: "quantity".into(), reason: format!("{q} is negative") });
        }
    }
    if key != Some(customer_id.as_bytes()) {
        return Err(InvalidEvent::KeyMismatch { key: key.map(|k| String::from_utf8_lossy(k).into_owned()), customer_id: customer_id.into_owned() });
    }
    if ts > check.now.saturating_add(check.max_future_skew_ms) {
        return Err(InvalidEvent::FutureTimestamp { ts, now: check.now, max_skew_ms: check.max_future_skew_ms });
    }
    Ok(Event {
        event_id,
        customer_id,
        ts,
        event_type,
        channel,
        campaign: raw.campaign,
        session_id: raw.session_id,
        value: raw.value,
        currency: raw.currency,
        product_id: raw.product_id,
        quantity: raw.quantity,
    })
}

/// Decodes a failed record again, tracking the path, to say which field is wrong.
#[cold]
fn explain(payload: &[u8]) -> InvalidEvent {
    let mut de = serde_json::Deserializer::from_slice(payload);
    match serde_path_to_error::deserialize::<_, RawEvent<'_>>(&mut de) {
        Err(err) => {
            let path = err.path().to_string();
            let at_field = err.path().iter().next().is_some();
            let inner = err.into_inner();
            if inner.is_data() && at_field {
                InvalidEvent::InvalidField { field: path, reason: strip_position(&inner.to_string()) }
            } else {
                InvalidEvent::NotJson(inner.to_string())
            }
        }
        Ok(_) => match de.end() {
            Err(e) => InvalidEvent::NotJson(e.to_string()),
            Ok(()) => InvalidEvent::NotJson("undecodable".into()),
        },
    }
}

fn non_empty<'a>(v: Option<Cow<'a, str>>, field: &'static str) -> Result<Cow<'a, str>, InvalidEvent> {
    match v {
        None => Err(InvalidEvent::MissingField(field)),
        Some(s) if s.is_empty() => Err(InvalidEvent::InvalidField { field: field.into(), reason: "is empty".into() }),
        Some(s) => Ok(s),
    }
}

fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: Millis = 1_767_225_600_000; // 2026-01-01
    const CHECK: Validation = Validation { now: NOW, max_future_skew_ms: 3_600_000 };

    fn ok(json: &str) -> Event<'_> {
        decode(Some(b"c1"), json.as_bytes(), &CHECK).expect("valid")
    }
    fn err(key: Option<&[u8]>, json: &str) -> InvalidEvent {
        decode(key, json.as_bytes(), &CHECK).expect_err("invalid")
    }

    #[test]
    fn decodes_a_full_event_borrowing_strings() {
        let e = ok(r#"{"event_id":"e1","customer_id":"c1","ts":1000,"event_type":"click","channel":"paid_search",
            "campaign":"brand","session_id":"s1","value":1.5,"currency":"EUR","product_id":"p","quantity":2,
            "properties":{"device":"mobile"}}"#);
        assert_eq!(e.event_type, EventType::Click);
        assert_eq!(e.channel, Some(Channel::PaidSearch));
        assert_eq!(e.quantity, Some(2));
        assert!(matches!(e.event_id, Cow::Borrowed(_)));
    }

    #[test]
    fn unknown_types_and_channels_become_other() {
        let e = ok(r#"{"event_id":"e1","customer_id":"c1","ts":1000,"event_type":"wishlist","channel":"tv"}"#);
        assert_eq!(e.event_type, EventType::Other);
        assert_eq!(e.channel, Some(Channel::Other));
    }

    #[test]
    fn rejects_bad_input_with_a_reason() {
        assert_eq!(err(Some(b"c1"), "not json").kind(), "not_json");
        assert_eq!(err(Some(b"c1"), "[1,2]").kind(), "not_json");
        assert_eq!(err(Some(b"c1"), r#"{"customer_id":"c1","ts":1,"event_type":"click"}"#), InvalidEvent::MissingField("event_id"));
        let e = err(Some(b"c1"), r#"{"event_id":"e","customer_id":"c1","ts":"yesterday","event_type":"page_view"}"#);
        assert_eq!(e.kind(), "invalid_field");
        assert!(e.to_string().contains("`ts`"), "{e}");
        assert_eq!(err(Some(b"c1"), r#"{"event_id":"e","customer_id":"c1","ts":1,"event_type":"click"}"#), InvalidEvent::MissingField("channel"));
        assert_eq!(err(Some(b"c2"), r#"{"event_id":"e","customer_id":"c1","ts":1,"event_type":"page_view"}"#).kind(), "key_mismatch");
        assert_eq!(err(None, r#"{"event_id":"e","customer_id":"c1","ts":1,"event_type":"page_view"}"#).kind(), "key_mismatch");
        let future = format!(r#"{{"event_id":"e","customer_id":"c1","ts":{},"event_type":"page_view"}}"#, NOW + 3_600_001);
        assert_eq!(err(Some(b"c1"), &future).kind(), "future_timestamp");
        assert_eq!(err(Some(b"c1"), r#"{"event_id":"e","customer_id":"c1","ts":1,"event_type":"page_view","properties":{"a":1}}"#).kind(), "invalid_field");
        assert_eq!(err(Some(b"c1"), r#"{"event_id":"e","customer_id":"c1","ts":1,"event_type":"purchase","value":-3}"#).kind(), "invalid_field");
        assert_eq!(err(Some(b"c1"), r#"{"event_id":"","customer_id":"c1","ts":1,"event_type":"purchase"}"#).kind(), "invalid_field");
        assert_eq!(err(Some(b"c1"), r#"{"event_id":"e","customer_id":"c1","ts":1,"event_type":"purchase"} x"#).kind(), "not_json");
    }
}
