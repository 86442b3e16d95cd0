//! Avro in the Confluent wire format: magic byte 0, the writer schema's 4-byte big-endian registry
//! id, then the Avro binary body.
//!
//! Input: [`AvroDecoder`] fetches each writer schema once by id (then caches it), decodes the body
//! with it and resolves the value against our reader schema (`schemas/journey_event.avsc`) by the
//! Avro resolution rules, so producers can evolve compatibly; the event then goes through the same
//! validation as JSON ([`crate::event::validate`]).
//! Output: [`OutputCodec`] serialises any output record through serde into an Avro value, resolves
//! it against the topic's schema (registered at start) and frames it.

use crate::event::{self, Event, InvalidEvent, Validation};

pub mod avro_in;
pub mod avro_out;
pub mod registry;
#[cfg(test)]
mod tests;

pub use avro_in::AvroDecoder;
pub use avro_out::{encode, AvroTarget, CodecError, OutputCodec, RegistryWatch};

/// Our reader schema of the input contract (the source of truth, versioned in git).
pub const JOURNEY_EVENT_SCHEMA: &str = include_str!("../../../schemas/journey_event.avsc");
pub const CONVERSION_SCHEMA: &str = include_str!("../../../schemas/attribution_conversion.avsc");
pub const CHANNEL_WINDOW_SCHEMA: &str = include_str!("../../../schemas/attribution_channel_window.avsc");
pub const SCORE_SCHEMA: &str = include_str!("../../../schemas/customer_score.avsc");
pub const ALERT_SCHEMA: &str = include_str!("../../../schemas/cart_abandonment_alert.avsc");
/// Schema of Avro-encoded string keys.
pub const STRING_KEY_SCHEMA: &str = r#""string""#;

pub const MAGIC: u8 = 0;

/// Frames an Avro body: magic byte, schema id, body.
pub fn frame(id: u32, body: &[u8], out: &mut Vec<u8>) {
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
}

/// Splits a Confluent-framed payload into (schema id, Avro body).
pub fn unframe(payload: &[u8]) -> Result<(u32, &[u8]), InvalidEvent> {
    match payload {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        [MAGIC, ..] => Err(InvalidEvent::NotAvro(format!("{} bytes is too short for the 5-byte header", payload.len()))),
        [m, ..] => Err(InvalidEvent::NotAvro(format!("magic byte is {m:#04x}, expected 0x00"))),
        [] => Err(InvalidEvent::NotAvro("empty value".into())),
    }
}

/// Why a record could not be decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum DecodeError {
    /// The record is bad: it goes to the DLQ.
    Invalid(InvalidEvent),
    /// The writer schema is needed but the registry is unavailable: the record must wait.
    Unavailable { id: u32, error: String },
}

impl From<InvalidEvent> for DecodeError {
    fn from(e: InvalidEvent) -> Self {
        DecodeError::Invalid(e)
    }
}

/// Decodes one input record in the configured format: JSON, registry Avro, or (auto) Avro when the
/// value starts with the magic byte. With the avro and auto formats a key in the Confluent framing
/// (an Avro `string`, as Confluent's serializer writes keys) is read as the customer id; plain
/// UTF-8 keys work in every format.
pub fn decode_input<'a>(
    format: crate::config::InputFormat,
    avro: Option<&mut AvroDecoder>,
    key: Option<&'a [u8]>,
    payload: &'a [u8],
    check: &Validation,
) -> Result<Event<'a>, DecodeError> {
    use crate::config::InputFormat;
    let Some(decoder) = avro.filter(|_| format != InputFormat::Json) else {
        return event::decode(key, payload, check).map_err(DecodeError::Invalid);
    };
    let key = match key {
        Some(k) if k.first() == Some(&MAGIC) => Some(decoder.key(k)?),
        other => other,
    };
    if format == InputFormat::Avro || payload.first() == Some(&MAGIC) {
        decoder.decode(key, payload, check)
    } else {
        event::decode(key, payload, check).map_err(DecodeError::Invalid)
    }
}
