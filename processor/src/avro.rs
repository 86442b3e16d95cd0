//! Avro in the Confluent wire format: magic byte 0, the writer schema's 4-byte big-endian registry
//! id, then the Avro binary body.
//!
//! Input: [`AvroDecoder`] fetches each writer schema once by id (then caches it), decodes the body
//! with it and resolves the value against our reader schema (`schemas/journey_event.avsc`) by the
//! Avro resolution rules, so producers can evolve compatibly; the event then goes through the same
//! validation as JSON ([`crate::event::validate`]).
//! Output: [`OutputCodec`] serialises any output record through serde into an Avro value, resolves
//! it against the topic's schema (registered at start) and frames it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;
use serde::Serialize;

use crate::event::{self, Event, Fields, InvalidEvent, Validation};
use crate::registry::{RegistryError, SchemaSource};

/// Our reader schema of the input contract (the source of truth, versioned in git).
pub const JOURNEY_EVENT_SCHEMA: &str = include_str!("../../schemas/journey_event.avsc");
pub const CONVERSION_SCHEMA: &str = include_str!("../../schemas/attribution_conversion.avsc");
pub const CHANNEL_WINDOW_SCHEMA: &str = include_str!("../../schemas/attribution_channel_window.avsc");
pub const SCORE_SCHEMA: &str = include_str!("../../schemas/customer_score.avsc");
pub const ALERT_SCHEMA: &str = include_str!("../../schemas/cart_abandonment_alert.avsc");
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

/// A writer-schema id the registry does not know is asked again after this long.
const NOT_FOUND_TTL: Duration = Duration::from_secs(60);

/// Decodes Confluent-framed Avro events; caches writer schemas per id.
pub struct AvroDecoder {
    reader: Schema,
    source: Box<dyn SchemaSource>,
    writers: HashMap<u32, Arc<Writer>>,
    /// Ids that cannot be used, with why and since when (unparseable schemas stay; unknown ids
    /// are retried after NOT_FOUND_TTL, in case they were registered late).
    unusable: HashMap<u32, (String, Option<Instant>)>,
    /// Schemas fetched from the source (for metrics and tests).
    pub fetches: u64,
}

impl AvroDecoder {
    pub fn new(source: Box<dyn SchemaSource>) -> AvroDecoder {
        let reader = Schema::parse_str(JOURNEY_EVENT_SCHEMA).expect("schemas/journey_event.avsc parses");
        AvroDecoder { reader, source, writers: HashMap::new(), unusable: HashMap::new(), fetches: 0 }
    }

    /// Makes sure the writer schema `id` is cached (or known unusable); `Unavailable` while the
    /// registry cannot say.
    pub fn ensure(&mut self, id: u32) -> Result<(), DecodeError> {
        self.writer(id).map(|_| ()).or_else(|e| match e {
            DecodeError::Invalid(_) => Ok(()),
            other => Err(other),
        })
    }

    fn writer(&mut self, id: u32) -> Result<Arc<Writer>, DecodeError> {
        if let Some(s) = self.writers.get(&id) {
            return Ok(s.clone());
        }
        if let Some((reason, since)) = self.unusable.get(&id) {
            if since.map_or(true, |t| t.elapsed() < NOT_FOUND_TTL) {
                return Err(InvalidEvent::UnknownSchema { id, reason: reason.clone() }.into());
            }
        }
        self.fetches += 1;
        let unusable = |this: &mut Self, reason: String, retry: bool| {
            this.unusable.insert(id, (reason.clone(), retry.then(Instant::now)));
            Err(DecodeError::Invalid(InvalidEvent::UnknownSchema { id, reason }))
        };
        match self.source.schema_by_id(id) {
            Ok((_, kind)) if !kind.eq_ignore_ascii_case("AVRO") => unusable(self, format!("it is a {kind} schema, not Avro"), false),
            Ok((text, _)) => match Schema::parse_str(&text) {
                Ok(schema) => {
                    let plan = Plan::compile(&schema);
                    if let Err(PlanError::Unsupported(why)) = &plan {
                        tracing::info!(id, %why, "writer schema decoded by the general Avro path");
                    }
                    let writer = Arc::new(Writer { schema, plan });
                    self.unusable.remove(&id);
                    self.writers.insert(id, writer.clone());
                    Ok(writer)
                }
                Err(e) => unusable(self, format!("the registry's schema does not parse: {e}"), false),
            },
            Err(RegistryError::NotFound(m)) => unusable(self, m, true),
            Err(e) => Err(DecodeError::Unavailable { id, error: e.to_string() }),
        }
    }

    /// Decodes and validates one Confluent-framed record. `key` must equal `customer_id`. Strings
    /// borrow from `payload`.
    pub fn decode<'a>(&mut self, key: Option<&[u8]>, payload: &'a [u8], check: &Validation) -> Result<Event<'a>, DecodeError> {
        let (id, body) = unframe(payload)?;
        let writer = self.writer(id)?;
        let fields = match &writer.plan {
            Ok(plan) => plan.decode(id, body)?,
            Err(PlanError::Incompatible(reason)) => return Err(InvalidEvent::IncompatibleSchema { id, reason: reason.clone() }.into()),
            Err(PlanError::Unsupported(_)) => self.decode_generic(id, &writer.schema, body)?,
        };
        Ok(event::validate(fields, key, check)?)
    }

    /// The general path: apache-avro decodes into its values and resolves them against our
    /// schema. For writer schemas the plan does not cover (recursive types); also the reference
    /// the plan is tested against.
    fn decode_generic(&self, id: u32, writer: &Schema, body: &[u8]) -> Result<Fields<'static>, InvalidEvent> {
        let mut rest = body;
        let value = apache_avro::from_avro_datum(writer, &mut rest, None)
            .map_err(|e| InvalidEvent::NotAvro(format!("the body does not decode with writer schema id {id}: {e}")))?;
        if !rest.is_empty() {
            return Err(InvalidEvent::NotAvro(format!("{} bytes left after the body written with schema id {id}", rest.len())));
        }
        let value = value.resolve(&self.reader).map_err(|e| InvalidEvent::IncompatibleSchema { id, reason: e.to_string() })?;
        fields(value)
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

impl AvroDecoder {
    /// The string inside a Confluent-framed Avro key whose writer schema is `string`.
    pub fn key<'k>(&mut self, key: &'k [u8]) -> Result<&'k [u8], DecodeError> {
        let (id, body) = unframe(key).map_err(|e| InvalidEvent::NotAvro(format!("key: {e}")))?;
        let writer = self.writer(id)?;
        if !matches!(writer.schema, Schema::String | Schema::Uuid) {
            return Err(InvalidEvent::IncompatibleSchema { id, reason: "the key's schema is not an Avro string".into() }.into());
        }
        let mut c = Cursor { buf: body, pos: 0 };
        let bad = |e: String| InvalidEvent::NotAvro(format!("key with schema id {id}: {e}"));
        let n = c.len().map_err(bad)?;
        let text = c.take(n).map_err(bad)?;
        if c.pos != body.len() {
            return Err(bad(format!("{} bytes left after the string", body.len() - c.pos)).into());
        }
        Ok(text)
    }
}

/// A cached writer schema and its decoding plan.
struct Writer {
    schema: Schema,
    plan: Result<Plan, PlanError>,
}

#[derive(Debug, Clone)]
enum PlanError {
    /// The writer schema can never resolve against ours (e.g. it lacks a field we require).
    Incompatible(String),
    /// The plan does not cover it; the general path decodes it.
    Unsupported(String),
}

/// The fields of our reader schema (`schemas/journey_event.avsc`) a writer field resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    EventId,
    CustomerId,
    Ts,
    EventType,
    Channel,
    Campaign,
    SessionId,
    Value,
    Currency,
    ProductId,
    Quantity,
    Properties,
    /// Not in our schema: read over.
    Ignore,
}

impl Slot {
    fn of(name: &str) -> Slot {
        match name {
            "event_id" => Slot::EventId,
            "customer_id" => Slot::CustomerId,
            "ts" => Slot::Ts,
            "event_type" => Slot::EventType,
            "channel" => Slot::Channel,
            "campaign" => Slot::Campaign,
            "session_id" => Slot::SessionId,
            "value" => Slot::Value,
            "currency" => Slot::Currency,
            "product_id" => Slot::ProductId,
            "quantity" => Slot::Quantity,
            "properties" => Slot::Properties,
            _ => Slot::Ignore,
        }
    }
}

/// The layout of a writer-schema value (logical types by their underlying type).
#[derive(Debug)]
enum Node {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Enum(Vec<String>),
    Fixed(usize),
    Array(Box<Node>),
    Map(Box<Node>),
    Record(Vec<Node>),
    Union(Vec<Node>),
}

/// A writer schema compiled for decoding straight into [`Fields`], borrowing strings from the
/// record: the writer's fields in order, each with the field of ours it resolves to. The same
/// resolution rules as Avro's (and apache-avro's): fields matched by name, writer-only fields
/// skipped, our optional fields absent from the writer null, unknown enum symbols `other`, int and
/// long promoted to double, a writer union resolved per record by its branch.
#[derive(Debug)]
struct Plan {
    fields: Vec<(String, Node, Slot)>,
}

impl Plan {
    fn compile(schema: &Schema) -> Result<Plan, PlanError> {
        let mut named = HashMap::new();
        collect_named(schema, &mut named);
        let Schema::Record(record) = schema else {
            return Err(PlanError::Incompatible(format!("the writer schema is a {:?}, ours is a record", apache_avro::schema::SchemaKind::from(schema))));
        };
        let mut fields = Vec::with_capacity(record.fields.len());
        for f in &record.fields {
            fields.push((f.name.clone(), node(&f.schema, &named, 0)?, Slot::of(&f.name)));
        }
        for required in ["event_id", "customer_id", "ts", "event_type"] {
            if !fields.iter().any(|(n, _, _)| n == required) {
                return Err(PlanError::Incompatible(format!("the writer schema has no field `{required}`, which ours requires (no default)")));
            }
        }
        Ok(Plan { fields })
    }

    fn decode<'a>(&self, id: u32, body: &'a [u8]) -> Result<Fields<'a>, InvalidEvent> {
        let mut c = Cursor { buf: body, pos: 0 };
        let mut f = Fields::default();
        let not_avro = |e: String| InvalidEvent::NotAvro(format!("the body does not decode with writer schema id {id}: {e}"));
        for (name, node, slot) in &self.fields {
            let v = read(node, &mut c).map_err(not_avro)?;
            assign(&mut f, *slot, v).map_err(|e| InvalidEvent::IncompatibleSchema { id, reason: format!("field `{name}`: {e}") })?;
        }
        if c.pos != body.len() {
            return Err(InvalidEvent::NotAvro(format!("{} bytes left after the body written with schema id {id}", body.len() - c.pos)));
        }
        Ok(f)
    }
}

fn collect_named<'s>(schema: &'s Schema, named: &mut HashMap<apache_avro::schema::Name, &'s Schema>) {
    match schema {
        Schema::Record(r) => {
            named.insert(r.name.clone(), schema);
            for f in &r.fields {
                collect_named(&f.schema, named);
            }
        }
        Schema::Enum(e) => {
            named.insert(e.name.clone(), schema);
        }
        Schema::Fixed(x) => {
            named.insert(x.name.clone(), schema);
        }
        Schema::Decimal(d) => collect_named(&d.inner, named),
        Schema::Array(a) => collect_named(&a.items, named),
        Schema::Map(m) => collect_named(&m.types, named),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_named(v, named)),
        _ => {}
    }
}

fn node(schema: &Schema, named: &HashMap<apache_avro::schema::Name, &Schema>, depth: usize) -> Result<Node, PlanError> {
    if depth > 32 {
        return Err(PlanError::Unsupported("nested more than 32 levels deep (or recursive)".into()));
    }
    let d = depth + 1;
    Ok(match schema {
        Schema::Null => Node::Null,
        Schema::Boolean => Node::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Node::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Node::Long,
        Schema::Float => Node::Float,
        Schema::Double => Node::Double,
        Schema::Bytes | Schema::BigDecimal => Node::Bytes,
        Schema::String | Schema::Uuid => Node::String,
        Schema::Duration => Node::Fixed(12),
        Schema::Decimal(x) => node(&x.inner, named, d)?,
        Schema::Enum(e) => Node::Enum(e.symbols.clone()),
        Schema::Fixed(x) => Node::Fixed(x.size),
        Schema::Array(a) => Node::Array(Box::new(node(&a.items, named, d)?)),
        Schema::Map(m) => Node::Map(Box::new(node(&m.types, named, d)?)),
        Schema::Record(r) => Node::Record(r.fields.iter().map(|f| node(&f.schema, named, d)).collect::<Result<_, _>>()?),
        Schema::Union(u) => Node::Union(u.variants().iter().map(|v| node(v, named, d)).collect::<Result<_, _>>()?),
        Schema::Ref { name } => match named.get(name) {
            Some(target) => node(target, named, d)?,
            None => return Err(PlanError::Unsupported(format!("unresolved reference to {}", name.fullname(None)))),
        },
    })
}

/// One decoded writer value, as far as our fields care.
#[derive(Debug)]
enum V<'a, 'p> {
    Null,
    Bool,
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Symbol(&'p str),
    /// An array, map, record or fixed (read over).
    Complex,
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or_else(|| format!("truncated: {n} more bytes needed at byte {}", self.pos))?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    /// A zig-zag varint long.
    fn long(&mut self) -> Result<i64, String> {
        let mut n: u64 = 0;
        for shift in (0..70).step_by(7) {
            let b = *self.buf.get(self.pos).ok_or("truncated varint")?;
            self.pos += 1;
            if shift == 63 && b > 1 {
                return Err("varint overflows a long".into());
            }
            n |= ((b & 0x7f) as u64) << shift;
            if b & 0x80 == 0 {
                return Ok((n >> 1) as i64 ^ -((n & 1) as i64));
            }
        }
        Err("varint overflows a long".into())
    }

    fn len(&mut self) -> Result<usize, String> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| format!("negative length {n}"))
    }
}

/// Largest block count of an array or map we read (a guard against garbage).
const MAX_BLOCK: i64 = 1 << 24;

fn read<'a, 'p>(node: &'p Node, c: &mut Cursor<'a>) -> Result<V<'a, 'p>, String> {
    Ok(match node {
        Node::Null => V::Null,
        Node::Boolean => match c.take(1)?[0] {
            0 | 1 => V::Bool,
            b => return Err(format!("{b} is not a boolean")),
        },
        Node::Int => {
            let n = c.long()?;
            V::Int(i32::try_from(n).map_err(|_| format!("{n} overflows an int"))?)
        }
        Node::Long => V::Long(c.long()?),
        Node::Float => V::Float(f32::from_le_bytes(c.take(4)?.try_into().expect("4 bytes"))),
        Node::Double => V::Double(f64::from_le_bytes(c.take(8)?.try_into().expect("8 bytes"))),
        Node::Bytes => {
            let n = c.len()?;
            V::Bytes(c.take(n)?)
        }
        Node::String => {
            let n = c.len()?;
            V::Str(std::str::from_utf8(c.take(n)?).map_err(|e| format!("a string is not UTF-8: {e}"))?)
        }
        Node::Enum(symbols) => {
            let i = c.long()?;
            V::Symbol(usize::try_from(i).ok().and_then(|i| symbols.get(i)).ok_or_else(|| format!("enum index {i} out of range"))?)
        }
        Node::Fixed(n) => {
            c.take(*n)?;
            V::Complex
        }
        Node::Array(item) | Node::Map(item) => {
            let map = matches!(node, Node::Map(_));
            loop {
                let mut count = c.long()?;
                if count == 0 {
                    break;
                }
                if count < 0 {
                    count = -count;
                    c.long()?; // the block's size in bytes
                }
                if count > MAX_BLOCK {
                    return Err(format!("block of {count} items"));
                }
                for _ in 0..count {
                    if map {
                        let n = c.len()?;
                        c.take(n)?;
                    }
                    read(item, c)?;
                }
            }
            V::Complex
        }
        Node::Record(fields) => {
            for f in fields {
                read(f, c)?;
            }
            V::Complex
        }
        Node::Union(branches) => {
            let i = c.long()?;
            let branch = usize::try_from(i).ok().and_then(|i| branches.get(i)).ok_or_else(|| format!("union branch {i} out of range"))?;
            read(branch, c)?
        }
    })
}

/// Resolves one writer value into our field, by the Avro rules for that field's reader type.
fn assign<'a>(f: &mut Fields<'a>, slot: Slot, v: V<'a, '_>) -> Result<(), String> {
    let mismatch = |v: &V, ours: &str| format!("a writer {} does not resolve to our {ours}", kind(v));
    let text = |v: V<'a, '_>, required: bool, ours: &str| -> Result<Option<Cow<'a, str>>, String> {
        match v {
            V::Str(s) => Ok(Some(Cow::Borrowed(s))),
            V::Bytes(b) => std::str::from_utf8(b).map(|s| Some(Cow::Borrowed(s))).map_err(|e| format!("bytes that are not UTF-8: {e}")),
            V::Null if !required => Ok(None),
            other => Err(mismatch(&other, ours)),
        }
    };
    match slot {
        Slot::EventId => f.event_id = text(v, true, "string")?,
        Slot::CustomerId => f.customer_id = text(v, true, "string")?,
        Slot::Campaign => f.campaign = text(v, false, "[null, string]")?,
        Slot::SessionId => f.session_id = text(v, false, "[null, string]")?,
        Slot::Currency => f.currency = text(v, false, "[null, string]")?,
        Slot::ProductId => f.product_id = text(v, false, "[null, string]")?,
        Slot::Ts => {
            f.ts = Some(match v {
                V::Int(n) => n as i64,
                V::Long(n) => n,
                other => return Err(mismatch(&other, "long")),
            })
        }
        Slot::Quantity => {
            f.quantity = match v {
                V::Int(n) => Some(n as i64),
                V::Null => None,
                other => return Err(mismatch(&other, "[null, int]")),
            }
        }
        Slot::Value => {
            f.value = match v {
                V::Int(n) => Some(n as f64),
                V::Long(n) => Some(n as f64),
                V::Float(x) => Some(x as f64),
                V::Double(x) => Some(x),
                V::Null => None,
                other => return Err(mismatch(&other, "[null, double]")),
            }
        }
        // Our enums have the default `other`: an unknown symbol reads as `other`.
        Slot::EventType => {
            f.event_type = Some(match v {
                V::Symbol(s) => Cow::Borrowed(crate::event::EventType::parse(s).as_str()),
                V::Str(s) => Cow::Borrowed(s),
                other => return Err(mismatch(&other, "EventType enum")),
            })
        }
        Slot::Channel => {
            f.channel = match v {
                V::Symbol(s) => Some(Cow::Borrowed(crate::event::Channel::parse(s).as_str())),
                V::Str(s) => Some(Cow::Borrowed(s)),
                V::Null => None,
                other => return Err(mismatch(&other, "[null, Channel enum]")),
            }
        }
        Slot::Properties => match v {
            V::Null | V::Complex => {}
            other => return Err(mismatch(&other, "[null, map<string>]")),
        },
        Slot::Ignore => {}
    }
    Ok(())
}

fn kind(v: &V) -> &'static str {
    match v {
        V::Null => "null",
        V::Bool => "boolean",
        V::Int(_) => "int",
        V::Long(_) => "long",
        V::Float(_) => "float",
        V::Double(_) => "double",
        V::Str(_) => "string",
        V::Bytes(_) => "bytes",
        V::Symbol(_) => "enum",
        V::Complex => "array, map, record or fixed",
    }
}

/// Reads the contract's fields out of a value resolved against the reader schema.
fn fields(value: Value) -> Result<Fields<'static>, InvalidEvent> {
    let Value::Record(record) = value else {
        return Err(InvalidEvent::NotAvro("not a record".into()));
    };
    let mut f = Fields::default();
    for (name, v) in record {
        let v = match v {
            Value::Union(_, inner) => *inner,
            other => other,
        };
        let text = |v: Value| -> Result<Option<Cow<'static, str>>, InvalidEvent> {
            match v {
                Value::Null => Ok(None),
                Value::String(s) | Value::Enum(_, s) => Ok(Some(Cow::Owned(s))),
                other => Err(InvalidEvent::InvalidField { field: name.clone(), reason: format!("unexpected Avro value {other:?}") }),
            }
        };
        let long = |v: &Value| match v {
            Value::Long(n) | Value::TimestampMillis(n) => Some(*n),
            Value::Int(n) => Some(*n as i64),
            _ => None,
        };
        match name.as_str() {
            "event_id" => f.event_id = text(v)?,
            "customer_id" => f.customer_id = text(v)?,
            "event_type" => f.event_type = text(v)?,
            "channel" => f.channel = text(v)?,
            "campaign" => f.campaign = text(v)?,
            "session_id" => f.session_id = text(v)?,
            "currency" => f.currency = text(v)?,
            "product_id" => f.product_id = text(v)?,
            "ts" => f.ts = long(&v),
            "quantity" => f.quantity = long(&v),
            "value" => {
                f.value = match v {
                    Value::Double(d) => Some(d),
                    Value::Float(d) => Some(d as f64),
                    _ => None,
                }
            }
            _ => {}
        }
    }
    Ok(f)
}

/// An Avro output subject: its schema and the id the registry gave it.
#[derive(Debug, Clone)]
pub struct AvroTarget {
    pub subject: String,
    pub id: u32,
    pub schema: Arc<Schema>,
}

/// How one output topic is written.
#[derive(Debug, Clone)]
pub enum OutputCodec {
    /// JSON values, UTF-8 keys.
    Json,
    /// Confluent-framed Avro values; keys Avro strings when `key` is set, else UTF-8.
    Avro { value: AvroTarget, key: Option<AvroTarget> },
}

impl OutputCodec {
    /// Appends the encoded value of `record` to `buf`.
    pub fn encode_value<T: Serialize>(&self, record: &T, buf: &mut Vec<u8>) -> Result<(), String> {
        match self {
            OutputCodec::Json => serde_json::to_writer(buf, record).map_err(|e| e.to_string()),
            OutputCodec::Avro { value, .. } => encode(record, value, buf),
        }
    }

    /// Appends the encoded key to `buf`.
    pub fn encode_key(&self, key: &str, buf: &mut Vec<u8>) -> Result<(), String> {
        match self {
            OutputCodec::Avro { key: Some(target), .. } => encode(&key, target, buf),
            _ => {
                buf.extend_from_slice(key.as_bytes());
                Ok(())
            }
        }
    }
}

/// Serde -> Avro value -> resolved against the target schema -> framed Avro binary.
pub fn encode<T: Serialize + ?Sized>(record: &T, target: &AvroTarget, buf: &mut Vec<u8>) -> Result<(), String> {
    let value = apache_avro::to_value(record).map_err(|e| format!("{}: {e}", target.subject))?;
    let value = value.resolve(&target.schema).map_err(|e| format!("record does not fit the schema of {}: {e}", target.subject))?;
    let body = apache_avro::to_avro_datum(&target.schema, value).map_err(|e| format!("{}: {e}", target.subject))?;
    frame(target.id, &body, buf);
    Ok(())
}

/// The codecs of the output topics that can be Avro.
#[derive(Debug, Clone)]
pub struct OutputCodecs {
    pub conversions: OutputCodec,
    pub channels: OutputCodec,
    pub alerts: OutputCodec,
    pub scores: OutputCodec,
}

impl OutputCodecs {
    pub fn json() -> OutputCodecs {
        OutputCodecs { conversions: OutputCodec::Json, channels: OutputCodec::Json, alerts: OutputCodec::Json, scores: OutputCodec::Json }
    }

    /// Registers (or, without `registry.auto_register`, looks up) the schema of every Avro output
    /// topic under `<topic>-value` (and `<topic>-key` for Avro keys). Waits with backoff while the
    /// registry is unavailable (until `stop` is set); an incompatible or refused schema is an error
    /// that says which subject and why.
    pub fn prepare(
        cfg: &crate::config::Config,
        client: Option<&crate::registry::RegistryClient>,
        stop: &std::sync::atomic::AtomicBool,
        health: &crate::http::Health,
        telemetry: &crate::telemetry::Telemetry,
    ) -> Result<OutputCodecs, String> {
        use crate::config::{KeyFormat, OutputFormat};
        let mut backoff = crate::registry::Backoff::new(cfg.registry.retry_min.as_duration(), cfg.registry.retry_max.as_duration());
        let mut codec = |format: OutputFormat, topic: &str, file: &str, text: &str| -> Result<OutputCodec, String> {
            if format == OutputFormat::Json {
                return Ok(OutputCodec::Json);
            }
            let client = client.ok_or("config key `registry.url`: an avro output needs the schema registry")?;
            let value = register(client, cfg.registry.auto_register, &format!("{topic}-value"), file, text, stop, health, telemetry, &mut backoff)?;
            let key = match cfg.formats.keys {
                KeyFormat::String => None,
                KeyFormat::Avro => Some(register(
                    client,
                    cfg.registry.auto_register,
                    &format!("{topic}-key"),
                    "the string key schema",
                    STRING_KEY_SCHEMA,
                    stop,
                    health,
                    telemetry,
                    &mut backoff,
                )?),
            };
            Ok(OutputCodec::Avro { value, key })
        };
        let f = &cfg.formats;
        let t = &cfg.topics;
        Ok(OutputCodecs {
            conversions: codec(f.conversions, &t.conversions, "schemas/attribution_conversion.avsc", CONVERSION_SCHEMA)?,
            channels: codec(f.channels, &t.channels, "schemas/attribution_channel_window.avsc", CHANNEL_WINDOW_SCHEMA)?,
            alerts: codec(f.alerts, &t.alerts, "schemas/cart_abandonment_alert.avsc", ALERT_SCHEMA)?,
            scores: if cfg.models.enabled && cfg.scores.enabled {
                codec(f.scores, &t.scores, "schemas/customer_score.avsc", SCORE_SCHEMA)?
            } else {
                OutputCodec::Json
            },
        })
    }
}

#[allow(clippy::too_many_arguments)]
fn register(
    client: &crate::registry::RegistryClient,
    auto_register: bool,
    subject: &str,
    file: &str,
    text: &str,
    stop: &std::sync::atomic::AtomicBool,
    health: &crate::http::Health,
    telemetry: &crate::telemetry::Telemetry,
    backoff: &mut crate::registry::Backoff,
) -> Result<AvroTarget, String> {
    use std::sync::atomic::Ordering;
    let schema = Arc::new(Schema::parse_str(text).map_err(|e| format!("{file} does not parse: {e}"))?);
    loop {
        let result = if auto_register { client.register(subject, text) } else { client.lookup(subject, text) };
        match result {
            Ok(id) => {
                health.set_registry_down(false);
                telemetry.registry_up();
                backoff.reset();
                tracing::info!(%subject, id, registered = auto_register, "output schema ready");
                return Ok(AvroTarget { subject: subject.to_string(), id, schema });
            }
            Err(RegistryError::Unavailable(e)) => {
                health.set_registry_down(true);
                let delay = backoff.next_delay();
                telemetry.registry_unavailable(&e, 0, delay);
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if stop.load(Ordering::Acquire) {
                        return Err(format!("stopped while waiting for the schema registry to register {subject}"));
                    }
                    std::thread::sleep(Duration::from_millis(50).min(delay));
                }
            }
            Err(RegistryError::Rejected { status: 409, message }) => {
                return Err(format!(
                    "the schema registry rejected {file} as a new version of subject `{subject}`: it is incompatible with \
                     the versions already registered there ({message}). The schemas in schemas/ must evolve compatibly \
                     (README, \"Schema evolution\"); fix the schema, or the subject's compatibility setting"
                ))
            }
            Err(RegistryError::Rejected { status, message }) => {
                return Err(format!("the schema registry refused {file} for subject `{subject}` (HTTP {status}): {message}"))
            }
            Err(RegistryError::NotFound(m)) => {
                return Err(format!("{file} is not registered under subject `{subject}` and registry.auto_register is false: {m}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
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

    /// Events of the demo generator in our schema, framed under id 1.
    fn generated(n: usize) -> Vec<(String, Vec<u8>)> {
        use crate::demo::generator::{GeneratorConfig, JourneyGenerator};
        let schema = Schema::parse_str(JOURNEY_EVENT_SCHEMA).unwrap();
        let mut gen = JourneyGenerator::new(GeneratorConfig { seed: 3, active_customers: 50, ..GeneratorConfig::default() });
        (0..n)
            .map(|_| {
                let (mut json, mut customer) = (Vec::new(), String::new());
                gen.next_into(&mut json, &mut customer);
                let json: serde_json::Value = serde_json::from_slice(&json).unwrap();
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
}
