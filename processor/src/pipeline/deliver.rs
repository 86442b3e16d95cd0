//! Encoding and sending of the per-event outputs and of dead letters inside the open transaction.

use super::*;

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
        // check are not the input's alone): the commit that carries it is a snapshot of its partition
        self.snapshots.force(msg.partition());
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
