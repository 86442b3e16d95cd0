//! The one send path of the output topics: a record is encoded with its topic's codec (JSON, or
//! registry Avro as `[formats]` says) into reused buffers and handed to the transactional sink.

use serde::Serialize;

use super::{Kind, OUTPUTS};
use crate::codec::avro_out::register;
use crate::codec::registry::{Backoff, RegistryClient};
use crate::codec::{AvroTarget, CodecError, OutputCodec, RegistryWatch, STRING_KEY_SCHEMA};
use crate::config::{Config, KeyFormat, OutputFormat};
use crate::kafka::sink::{OutRecord, Sink, SinkError};

/// Why a record was not handed to the sink.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The record does not encode (a bug or a schema mismatch, never retried).
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The sink refused it (its variants say whether that can be retried).
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Every output topic's name and codec, and the buffers records are encoded into.
#[derive(Debug)]
pub struct Writer {
    topics: [String; OUTPUTS.len()],
    codecs: [OutputCodec; OUTPUTS.len()],
    value: Vec<u8>,
    key: Vec<u8>,
}

fn index(kind: Kind) -> usize {
    OUTPUTS.iter().position(|s| s.kind == kind).expect("every kind has a row")
}

impl Writer {
    /// Every topic as JSON (no registry).
    pub fn json(cfg: &Config) -> Writer {
        Writer {
            topics: OUTPUTS.map(|s| (s.topic)(&cfg.topics).to_string()),
            codecs: OUTPUTS.map(|_| OutputCodec::Json),
            value: Vec::with_capacity(4096),
            key: Vec::with_capacity(256),
        }
    }

    /// Registers (or, without `registry.auto_register`, looks up) the schema of every Avro output
    /// topic this configuration writes, under `<topic>-value` (and `<topic>-key` for Avro keys).
    /// Waits with backoff while the registry is unavailable (until `stop` is set); an incompatible
    /// or refused schema is an error that says which subject and why.
    pub fn prepare(
        cfg: &Config,
        client: Option<&RegistryClient>,
        stop: &std::sync::atomic::AtomicBool,
        watch: &dyn RegistryWatch,
    ) -> Result<Writer, CodecError> {
        let mut w = Writer::json(cfg);
        let mut backoff = Backoff::new(cfg.registry.retry_min.as_duration(), cfg.registry.retry_max.as_duration());
        for (i, spec) in OUTPUTS.iter().enumerate() {
            let Some(avro) = spec.avro.filter(|a| (a.format)(&cfg.formats) == OutputFormat::Avro && (spec.enabled)(cfg)) else { continue };
            let client = client.ok_or(CodecError::NoRegistry)?;
            let topic = &w.topics[i];
            let mut reg = |subject: String, file: &str, text: &str| -> Result<AvroTarget, CodecError> {
                register(client, cfg.registry.auto_register, &subject, file, text, stop, watch, &mut backoff)
            };
            let value = reg(format!("{topic}-value"), avro.file, avro.schema)?;
            let key = match cfg.formats.keys {
                KeyFormat::String => None,
                KeyFormat::Avro => Some(reg(format!("{topic}-key"), "the string key schema", STRING_KEY_SCHEMA)?),
            };
            w.codecs[i] = OutputCodec::Avro { value, key };
        }
        Ok(w)
    }

    /// The topic of `kind`.
    pub fn topic(&self, kind: Kind) -> &str {
        &self.topics[index(kind)]
    }

    /// The codec of `kind`'s topic (to encode records elsewhere, e.g. on other threads, and send
    /// them with [`Self::raw`]).
    pub fn codec(&self, kind: Kind) -> &OutputCodec {
        &self.codecs[index(kind)]
    }

    /// Encodes `record` and its key with the topic's codec and sends it (partition None: by key).
    pub fn record<T: Serialize>(&mut self, sink: &mut Sink, kind: Kind, partition: Option<i32>, key: &str, record: &T) -> Result<(), WriteError> {
        let i = index(kind);
        self.value.clear();
        self.key.clear();
        self.codecs[i].encode_value(record, &mut self.value)?;
        self.codecs[i].encode_key(key, &mut self.key)?;
        sink.send(OutRecord { topic: &self.topics[i], partition, key: Some(&self.key), payload: Some(&self.value), headers: None })?;
        Ok(())
    }

    /// A null value for `key` (a tombstone on a compacted topic).
    pub fn tombstone(&mut self, sink: &mut Sink, kind: Kind, key: &str) -> Result<(), WriteError> {
        let i = index(kind);
        self.key.clear();
        self.codecs[i].encode_key(key, &mut self.key)?;
        sink.send(OutRecord { topic: &self.topics[i], partition: None, key: Some(&self.key), payload: None, headers: None })?;
        Ok(())
    }

    /// Bytes encoded elsewhere (the changelog's binary records), as they are.
    pub fn raw(&mut self, sink: &mut Sink, kind: Kind, partition: Option<i32>, key: &[u8], value: Option<&[u8]>) -> Result<(), WriteError> {
        sink.send(OutRecord { topic: &self.topics[index(kind)], partition, key: Some(key), payload: value, headers: None })?;
        Ok(())
    }
}
