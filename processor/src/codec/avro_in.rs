//! Registry Avro input: writer schemas fetched once by id, compiled into a per-field plan that
//! decodes straight into the event (borrowed strings), with apache-avro resolution as the general
//! path for what the plan does not cover.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::types::Value;
use apache_avro::Schema;

use super::registry::{RegistryError, SchemaSource};
use super::*;
use crate::event::{self, Event, Fields, InvalidEvent, Validation};

/// A writer-schema id the registry does not know is asked again after this long.
pub(super) const NOT_FOUND_TTL: Duration = Duration::from_secs(60);

/// Decodes Confluent-framed Avro events; caches writer schemas per id.
pub struct AvroDecoder {
    reader: Schema,
    source: Box<dyn SchemaSource>,
    pub(super) writers: HashMap<u32, Arc<Writer>>,
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

    pub(super) fn writer(&mut self, id: u32) -> Result<Arc<Writer>, DecodeError> {
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
    pub(super) fn decode_generic(&self, id: u32, writer: &Schema, body: &[u8]) -> Result<Fields<'static>, InvalidEvent> {
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
pub(super) struct Writer {
    pub(super) schema: Schema,
    pub(super) plan: Result<Plan, PlanError>,
}

#[derive(Debug, Clone)]
pub(super) enum PlanError {
    /// The writer schema can never resolve against ours (e.g. it lacks a field we require).
    Incompatible(String),
    /// The plan does not cover it; the general path decodes it.
    Unsupported(String),
}

/// The fields of our reader schema (`schemas/journey_event.avsc`) a writer field resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
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
pub(super) enum Node {
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
pub(super) struct Plan {
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

    pub(super) fn decode<'a>(&self, id: u32, body: &'a [u8]) -> Result<Fields<'a>, InvalidEvent> {
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

pub(super) fn collect_named<'s>(schema: &'s Schema, named: &mut HashMap<apache_avro::schema::Name, &'s Schema>) {
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

pub(super) fn node(schema: &Schema, named: &HashMap<apache_avro::schema::Name, &Schema>, depth: usize) -> Result<Node, PlanError> {
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
pub(super) enum V<'a, 'p> {
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

pub(super) struct Cursor<'a> {
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
pub(super) const MAX_BLOCK: i64 = 1 << 24;

pub(super) fn read<'a, 'p>(node: &'p Node, c: &mut Cursor<'a>) -> Result<V<'a, 'p>, String> {
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
pub(super) fn assign<'a>(f: &mut Fields<'a>, slot: Slot, v: V<'a, '_>) -> Result<(), String> {
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

pub(super) fn kind(v: &V) -> &'static str {
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
pub(super) fn fields(value: Value) -> Result<Fields<'static>, InvalidEvent> {
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
