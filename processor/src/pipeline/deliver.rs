//! Encoding and sending of the per-event outputs and of dead letters inside the open transaction;
//! and of the score records of a commit, drained and encoded per partition on the fan-out threads
//! (about 3 µs a record on the loop thread alone, at every commit), sent from the loop's.

use super::*;
use crate::codec::OutputCodec;

/// Fewer score records than this in a commit are encoded on the loop's thread alone.
const SCORES_PARALLEL_MIN: usize = 256;

/// One partition's encoded score records: keys and values back to back in `bytes`.
#[derive(Debug, Default)]
pub(super) struct ScoreBuffer {
    bytes: Vec<u8>,
    /// Per record: where its key ends and its value begins, and where its value ends.
    ends: Vec<(usize, usize)>,
    records: Vec<ScoreRecord>,
}

impl ScoreBuffer {
    /// Drains `engine`'s score records (`PartitionEngine::drain_scores`) and encodes them.
    fn fill(&mut self, engine: &mut PartitionEngine, codec: &OutputCodec, telemetry: &Telemetry) -> Result<(), crate::codec::CodecError> {
        self.bytes.clear();
        self.ends.clear();
        engine.drain_scores(&mut self.records);
        telemetry.scores(&self.records);
        let records = std::mem::take(&mut self.records);
        let pushed = records.iter().try_for_each(|rec| self.push(codec, rec));
        self.records = records;
        self.records.clear();
        pushed
    }

    fn push(&mut self, codec: &OutputCodec, rec: &ScoreRecord) -> Result<(), crate::codec::CodecError> {
        codec.encode_key(&rec.customer_id, &mut self.bytes)?;
        let key_end = self.bytes.len();
        codec.encode_value(rec, &mut self.bytes)?;
        self.ends.push((key_end, self.bytes.len()));
        Ok(())
    }

    /// The (key, value) of each record, in order.
    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let starts = std::iter::once(0).chain(self.ends.iter().map(|(_, end)| *end));
        starts.zip(&self.ends).map(|(start, (key_end, end))| (&self.bytes[start..*key_end], &self.bytes[*key_end..*end]))
    }
}

impl Processor {
    /// Writes the original key, bytes and headers to the DLQ, with headers naming the error (the
    /// reason cut to `poison::MAX_REASON_BYTES`). An original that would not fit the DLQ topic
    /// keeps its first `limits.dlq_excerpt_bytes`, its size and SHA-256 (`kind = too_large`).
    /// Sends nothing while the last transaction commits: waits for its answer first (and after a
    /// failed commit, writes nothing: the rewind reads the record again).
    pub(super) fn dead_letter(&mut self, consumer: &BaseConsumer<SignallingContext>, msg: &BorrowedMessage<'_>, err: &InvalidEvent) -> Result<(), RunError> {
        if !self.await_commit(consumer)? {
            return Ok(());
        }
        // a replay of the input need not meet this record again (isolation and the future-skew
        // check are not the input's alone): the commit that carries it is a snapshot of its
        // partition. A partition without an engine has no state and no snapshot to replay from;
        // its engine's first commit will be a snapshot anyway.
        if let Some(engine) = self.engines.get_mut(&msg.partition()) {
            engine.force_snapshot();
        }
        let reason = poison::truncate_reason(&err.to_string(), poison::MAX_REASON_BYTES).into_owned();
        let partition = msg.partition().to_string();
        let offset = msg.offset().to_string();
        let (key, payload) = (msg.key(), msg.payload().unwrap_or_default());
        let original_headers: usize = msg.headers().map_or(0, |h| h.iter().map(|x| x.key.len() + x.value.map_or(0, <[u8]>::len) + 8).sum());
        let whole = poison::fits(key, payload, original_headers, self.dlq_budget);
        let excerpt = self.cfg.limits.dlq_excerpt_bytes;
        let (size, sha) =
            if whole { (String::new(), String::new()) } else { ((key.map_or(0, <[u8]>::len) + payload.len()).to_string(), poison::sha256_hex(key, payload)) };
        let mut headers = OwnedHeaders::new();
        if whole {
            if let Some(h) = msg.headers() {
                for header in h.iter() {
                    headers = headers.insert(Header { key: header.key, value: header.value });
                }
            }
        }
        let kind = if whole { err.kind() } else { "too_large" };
        headers = headers
            .insert(Header { key: "touchstream.error.kind", value: Some(kind) })
            .insert(Header { key: "touchstream.error.reason", value: Some(reason.as_str()) })
            .insert(Header { key: "touchstream.source.topic", value: Some(msg.topic()) })
            .insert(Header { key: "touchstream.source.partition", value: Some(partition.as_str()) })
            .insert(Header { key: "touchstream.source.offset", value: Some(offset.as_str()) });
        if !whole {
            headers = headers
                .insert(Header { key: "touchstream.original.bytes", value: Some(size.as_str()) })
                .insert(Header { key: "touchstream.original.sha256", value: Some(sha.as_str()) })
                .insert(Header { key: "touchstream.original.kind", value: Some(err.kind()) });
        }
        fn cut(b: &[u8], whole: bool, excerpt: usize) -> &[u8] {
            if whole {
                b
            } else {
                &b[..b.len().min(excerpt)]
            }
        }
        self.sink.send(OutRecord {
            topic: self.writer.topic(Kind::Dlq),
            partition: None,
            key: key.map(|k| cut(k, whole, excerpt)),
            payload: msg.payload().map(|b| cut(b, whole, excerpt)),
            headers: Some(headers),
        })?;
        Ok(())
    }

    /// The commit's score records: each partition's drained and encoded as one job of the
    /// fan-out (in the engines' order, as on one thread), then sent.
    pub(super) fn ship_scores(&mut self) -> Result<(), RunError> {
        let changed: usize = self.engines.values().map(PartitionEngine::changed_customers).sum();
        let threads = if changed >= SCORES_PARALLEL_MIN { self.threads } else { 1 };
        self.score_buffers.resize_with(self.engines.len().max(self.score_buffers.len()), ScoreBuffer::default);
        let (codec, telemetry) = (self.writer.codec(Kind::Scores), &self.telemetry);
        let jobs = self.engines.values_mut().zip(self.score_buffers.iter_mut()).map(|(engine, buf)| (engine.changed_customers(), (engine, buf))).collect();
        let encoded = fanout::fan_out(threads, jobs, |(engine, buf)| buf.fill(engine, codec, telemetry));
        for result in encoded {
            result.map_err(WriteError::from)?;
        }
        for buf in &self.score_buffers[..self.engines.len()] {
            for (key, value) in buf.iter() {
                self.writer.raw(&mut self.sink, Kind::Scores, None, key, Some(value))?;
            }
        }
        Ok(())
    }

    pub(super) fn ship_outputs(&mut self) -> Result<(), RunError> {
        for out in self.outputs.drain(..) {
            match &out {
                Output::Conversion(c) => {
                    match self.cfg.privacy.analytics_id(&c.customer_id) {
                        Some(id) => {
                            let pseudonymous = ConversionRecord { customer_id: id, ..c.clone() };
                            self.writer.record(&mut self.sink, Kind::Conversions, None, &pseudonymous.customer_id, &pseudonymous)?;
                        }
                        None => self.writer.record(&mut self.sink, Kind::Conversions, None, &c.customer_id, c)?,
                    }
                    self.telemetry.conversion(c);
                    self.stats.conversions += 1;
                }
                Output::Alert(a) => {
                    self.writer.record(&mut self.sink, Kind::Alerts, None, &a.customer_id, a)?;
                    self.telemetry.alert(a);
                    self.stats.alerts += 1;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoded_score_records_come_back_as_their_keys_and_values_in_order() {
        let mut buf = ScoreBuffer::default();
        let rec = |id: &str, p: f64| ScoreRecord {
            customer_id: id.into(),
            ts: 1,
            purchase_probability: p,
            abandonment_probability: 0.5,
            cart_open: p > 0.2,
            expected_value: 3.0,
            model_version: "v1".into(),
        };
        let records = [rec("a", 0.1), rec("customer-b", 0.25), rec("", 0.75)];
        for r in &records {
            buf.push(&OutputCodec::Json, r).unwrap();
        }
        let got: Vec<(String, serde_json::Value)> =
            buf.iter().map(|(k, v)| (String::from_utf8(k.to_vec()).unwrap(), serde_json::from_slice(v).unwrap())).collect();
        assert_eq!(got.len(), 3);
        for (r, (key, value)) in records.iter().zip(&got) {
            assert_eq!(key, &r.customer_id);
            assert_eq!(value, &serde_json::to_value(r).unwrap());
        }
    }
}
