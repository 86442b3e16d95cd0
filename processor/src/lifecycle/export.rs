//! `touchstream export`: the input topic (JSON or registry Avro, read_committed) from a start time
//! to its end at the moment of the call, written as JSON lines in the input contract, the format
//! `models/train.py --log` reads. Invalid records are skipped and counted, as the processor
//! dead-letters them.

use std::io::Write;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::Serialize;

use crate::codec::registry::RegistryClient;
use crate::codec::{decode_input, AvroDecoder, DecodeError};
use crate::config::{Config, InputFormat};
use crate::event::{Event, Validation};
use crate::kafka::{client_config, Role};
use crate::time::{wall_clock_ms, Millis};

/// What an export wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    pub events: u64,
    pub invalid: u64,
    pub partitions: usize,
}

/// One event in the input contract (the fields the processor reads).
#[derive(Serialize)]
struct Line<'a> {
    event_id: &'a str,
    customer_id: &'a str,
    ts: Millis,
    event_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    channel: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    campaign: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    currency: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    product_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    quantity: Option<i64>,
}

impl<'a> Line<'a> {
    fn of(e: &'a Event<'a>) -> Line<'a> {
        Line {
            event_id: &e.event_id,
            customer_id: &e.customer_id,
            ts: e.ts,
            event_type: e.event_type.as_str(),
            channel: e.channel.map(|c| c.as_str()),
            campaign: e.campaign.as_deref(),
            session_id: e.session_id.as_deref(),
            value: e.value,
            currency: e.currency.as_deref(),
            product_id: e.product_id.as_deref(),
            quantity: e.quantity,
        }
    }
}

/// Writes the events of `cfg.topics.events` whose record timestamp is at or after `from_ms` (the
/// topic's start when None) up to the end offsets at the call, in partition order, to `out`.
pub fn export(cfg: &Config, from_ms: Option<Millis>, out: &mut dyn Write) -> Result<Exported, String> {
    let topic = &cfg.topics.events;
    let mut c = client_config(cfg, Role::Admin);
    c.set("group.id", format!("{}-export", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .set("auto.offset.reset", "earliest");
    let consumer: BaseConsumer = c.create().map_err(|e| format!("cannot create a consumer: {e}"))?;
    let timeout = Duration::from_secs(30);
    let md = consumer.fetch_metadata(Some(topic), timeout).map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions: Vec<i32> = md.topics().iter().flat_map(|t| t.partitions().iter().map(|p| p.id())).collect();
    if partitions.is_empty() {
        return Err(format!("config key `topics.events`: topic {topic} does not exist or has no partitions"));
    }
    // where each partition starts and ends
    let mut ends = std::collections::HashMap::new();
    let mut start = TopicPartitionList::new();
    for &p in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, timeout).map_err(|e| format!("offsets of {topic}/{p}: {e}"))?;
        if high > low {
            ends.insert(p, high);
            start.add_partition_offset(topic, p, from_ms.map_or(Offset::Beginning, Offset::Offset)).map_err(|e| e.to_string())?;
        }
    }
    let start = match from_ms {
        Some(_) => consumer.offsets_for_times(start, timeout).map_err(|e| format!("offsets for the start time: {e}"))?,
        None => start,
    };
    let mut tpl = TopicPartitionList::new();
    for e in start.elements() {
        match e.offset() {
            Offset::Offset(o) if o < ends[&e.partition()] => tpl.add_partition_offset(topic, e.partition(), Offset::Offset(o)).map_err(|e| e.to_string())?,
            Offset::Beginning => tpl.add_partition_offset(topic, e.partition(), Offset::Beginning).map_err(|e| e.to_string())?,
            _ => {
                ends.remove(&e.partition()); // nothing at or after the start time
            }
        }
    }
    let mut done = Exported { partitions: ends.len(), ..Exported::default() };
    if ends.is_empty() {
        return Ok(done);
    }
    consumer.assign(&tpl).map_err(|e| e.to_string())?;
    let registry = if cfg.formats.uses_registry() { Some(RegistryClient::new(&cfg.registry)?) } else { None };
    let mut avro = match cfg.formats.events {
        InputFormat::Json => None,
        InputFormat::Avro | InputFormat::Auto => registry.map(|r| AvroDecoder::new(Box::new(r))),
    };
    let check = Validation { now: wall_clock_ms(), max_future_skew_ms: cfg.event_time.max_future_skew.ms() };
    let mut line = Vec::with_capacity(512);
    let mut idle_since = Instant::now();
    while !ends.is_empty() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                idle_since = Instant::now();
                let p = m.partition();
                let Some(&end) = ends.get(&p) else { continue };
                if m.offset() >= end {
                    ends.remove(&p);
                    continue;
                }
                match decode_input(cfg.formats.events, avro.as_mut(), m.key(), m.payload().unwrap_or_default(), &check) {
                    Ok(e) => {
                        line.clear();
                        serde_json::to_writer(&mut line, &Line::of(&e)).map_err(|e| e.to_string())?;
                        line.push(b'\n');
                        out.write_all(&line).map_err(|e| format!("writing: {e}"))?;
                        done.events += 1;
                    }
                    Err(DecodeError::Invalid(_)) => done.invalid += 1,
                    Err(DecodeError::Unavailable { id, error }) => return Err(format!("schema registry unavailable for writer schema {id}: {error}")),
                }
                if m.offset() + 1 >= end {
                    ends.remove(&p);
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
            }
            Some(Err(e)) => return Err(format!("reading {topic}: {e}")),
            None if idle_since.elapsed() > Duration::from_secs(120) => return Err(format!("no record of {topic} for 120 s before its end")),
            None => {}
        }
    }
    out.flush().map_err(|e| format!("writing: {e}"))?;
    Ok(done)
}
