//! Erasure requests (`topics.erasure`, co-partitioned with the input: key = customer id). Each
//! owned input partition reads the same partition of the erasure topic through a consumer of its
//! own (assigned, no group), from the offset its state holds; at each commit the requests read so
//! far are applied to the partition's state, and the audit record, the changelog and scores
//! tombstones and the new erasure offset (in the changelog's meta record) commit in the batch's
//! transaction. A rewind restores the offset with the state, so a request is applied exactly once.

use rdkafka::consumer::BaseConsumer;
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};

use super::*;
use crate::engine::erasure::Erased;
use crate::kafka::partitioner::Partitioner;

/// An erasure request: the record's key is the customer id (the value may repeat it).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct ErasureRequest {
    #[serde(default)]
    pub request_id: Option<String>,
    #[serde(default)]
    pub customer_id: Option<String>,
    /// When it was requested (ms since the epoch).
    #[serde(default)]
    pub requested_ts: Option<i64>,
}

/// `topics.erasure_audit`, key = the request id: what one request erased. The customer appears
/// only as a SHA-256 hash, so the audit trail holds no personal data.
#[derive(Debug, Clone, Serialize)]
pub struct ErasureAudit {
    pub request_id: String,
    pub customer_id_sha256: String,
    pub requested_ts: Option<i64>,
    pub erased_ts: i64,
    pub partition: i32,
    pub offset: i64,
    /// `erased` (state held and removed), `not_found` (no state here: nothing held, already
    /// expired, or the request went to another partition than the customer's events) or `invalid`.
    pub status: &'static str,
    pub erased: Erased,
    /// The customer's key in the scores topic was tombstoned.
    pub scores_tombstoned: bool,
}

pub fn customer_hash(customer: &str) -> String {
    poison::sha256_hex(None, customer.as_bytes())
}

impl Processor {
    /// Points the erasure consumer at the owned partitions, each at the offset its state holds.
    pub(super) fn assign_erasure(&mut self) -> Result<(), RunError> {
        let Some(consumer) = &self.erasure else { return Ok(()) };
        let mut tpl = TopicPartitionList::new();
        for (p, engine) in &self.engines {
            tpl.add_partition_offset(&self.cfg.topics.erasure, *p, Offset::Offset(engine.erasure_offset())).map_err(RunError::Consumer)?;
        }
        consumer.assign(&tpl).map_err(RunError::Consumer)
    }

    /// Applies the erasure requests waiting for the owned partitions (up to a bound per commit).
    pub(super) fn apply_erasures(&mut self) -> Result<(), RunError> {
        let Some(consumer) = self.erasure.take() else { return Ok(()) };
        let result = self.apply_from(&consumer);
        self.erasure = Some(consumer);
        result
    }

    fn apply_from(&mut self, consumer: &BaseConsumer) -> Result<(), RunError> {
        for _ in 0..1000 {
            let msg = match consumer.poll(Timeout::After(Duration::ZERO)) {
                None => break,
                Some(Err(e)) => {
                    self.telemetry.consumer_error(&e, "erasure");
                    break;
                }
                Some(Ok(m)) => m,
            };
            let (p, offset) = (msg.partition(), msg.offset());
            let Some(engine) = self.engines.get_mut(&p) else { continue };
            if offset < engine.erasure_offset() {
                continue; // already applied (a re-read after a seek)
            }
            let request: ErasureRequest = msg.payload().and_then(|v| serde_json::from_slice(v).ok()).unwrap_or_default();
            let customer = msg.key().and_then(|k| std::str::from_utf8(k).ok()).map(str::to_string).or(request.customer_id.clone()).filter(|c| !c.is_empty());
            let request_id = request.request_id.clone().unwrap_or_else(|| format!("{}:{p}:{offset}", self.cfg.topics.erasure));
            let (status, erased) = match &customer {
                Some(c) => {
                    let erased = engine.erase(c, offset);
                    let elsewhere = self.input_partitions.and_then(|n| self.cfg.topics.partitioner.partition(c.as_bytes(), n)).is_some_and(|e| e != p);
                    (
                        if erased.found {
                            "erased"
                        } else if elsewhere {
                            "misrouted"
                        } else {
                            "not_found"
                        },
                        erased,
                    )
                }
                None => {
                    engine.erase("", offset); // moves the offset past it; no customer holds ""
                    ("invalid", Erased::default())
                }
            };
            let audit = ErasureAudit {
                request_id,
                customer_id_sha256: customer.as_deref().map(customer_hash).unwrap_or_default(),
                requested_ts: request.requested_ts,
                erased_ts: wall_clock_ms(),
                partition: p,
                offset,
                status,
                erased,
                scores_tombstoned: customer.is_some() && self.cfg.models.enabled && self.cfg.scores.enabled,
            };
            self.telemetry.erased(status, p, offset);
            self.writer.record(&mut self.sink, Kind::ErasureAudit, None, &audit.request_id, &audit)?;
        }
        Ok(())
    }

    /// Tombstones in the scores topic for customers erased or expired since the last commit.
    pub(super) fn ship_score_tombstones(&mut self) -> Result<(), RunError> {
        let mut keys = Vec::new();
        for engine in self.engines.values_mut() {
            engine.drain_score_tombstones(&mut keys);
        }
        if !(self.cfg.models.enabled && self.cfg.scores.enabled) {
            return Ok(());
        }
        for key in keys {
            self.writer.tombstone(&mut self.sink, Kind::Scores, &key)?;
        }
        Ok(())
    }
}

/// Sends one erasure request per customer to `topics.erasure`, keyed by the customer id, on the
/// partition `partitioner` gives (the event producers' one: `murmur2_random` for Java clients,
/// `consistent_random` for librdkafka's default); returns the request ids.
pub fn send_requests(cfg: &Config, customers: &[String], partitioner: Partitioner) -> Result<Vec<String>, String> {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    if cfg.topics.erasure.is_empty() {
        return Err("config key `topics.erasure` is empty: erasure is off".into());
    }
    if partitioner == Partitioner::Unchecked {
        return Err("config key `topics.partitioner` is `none`: name the event producers' partitioner with --partitioner".into());
    }
    let partitions = crate::kafka::admin::partition_count(cfg, &cfg.topics.erasure)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the erasure topic `{}` does not exist (a replica creates it at start)", cfg.topics.erasure))?;
    let producer: BaseProducer =
        client_config(cfg, Role::Admin).set("enable.idempotence", "true").create().map_err(|e| format!("cannot create a producer: {e}"))?;
    let now = wall_clock_ms();
    let mut ids = Vec::with_capacity(customers.len());
    for (n, customer) in customers.iter().enumerate() {
        let request_id = format!("erase-{now}-{}-{n}", std::process::id());
        let value = serde_json::to_vec(&ErasureRequest { request_id: Some(request_id.clone()), customer_id: None, requested_ts: Some(now) })
            .map_err(|e| e.to_string())?;
        let mut record = BaseRecord::to(&cfg.topics.erasure).key(customer.as_bytes()).payload(&value);
        if let Some(p) = partitioner.partition(customer.as_bytes(), partitions) {
            record = record.partition(p);
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::QueueFull), r)) => {
                    producer.poll(Duration::from_millis(100));
                    record = r;
                }
                Err((e, _)) => return Err(format!("sending the request for customer #{n}: {e}")),
            }
        }
        ids.push(request_id);
    }
    producer.flush(Duration::from_secs(30)).map_err(|e| format!("delivering the requests: {e}"))?;
    Ok(ids)
}

/// The erasure consumer: assigned partitions only (no group), read_committed.
pub(super) fn consumer(cfg: &Config) -> Result<Option<BaseConsumer>, RunError> {
    if cfg.topics.erasure.is_empty() {
        return Ok(None);
    }
    let mut c = crate::kafka::reader_config(cfg, "erasure");
    c.set("enable.auto.offset.store", "false").set("enable.partition.eof", "false").set("fetch.wait.max.ms", "100");
    c.create().map(Some).map_err(RunError::Consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_records_carry_a_hash_not_the_customer() {
        assert_eq!(customer_hash("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let request: ErasureRequest = serde_json::from_str(r#"{"request_id":"r1","requested_ts":5}"#).unwrap();
        assert_eq!((request.request_id.as_deref(), request.customer_id, request.requested_ts), (Some("r1"), None, Some(5)));
    }
}
