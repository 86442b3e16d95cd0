//! Registry Avro output: each output topic's schema registered (or looked up) at start; records
//! serialised through serde into an Avro value, resolved against that schema and framed.

use std::sync::Arc;
use std::time::{Duration, Instant};

use apache_avro::Schema;
use serde::Serialize;

use super::registry::RegistryError;
use super::*;

/// Why an output codec could not be prepared or a record not be encoded. None of these is
/// retryable: a registry that is only unavailable is waited for inside `prepare` (see
/// [`RegistryWatch`]), so what comes out is a schema, config or record problem.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{file} does not parse: {message}")]
    SchemaInvalid { file: String, message: String },
    #[error("config key `registry.url`: an avro output needs the schema registry")]
    NoRegistry,
    #[error("stopped while waiting for the schema registry to register {subject}")]
    Stopped { subject: String },
    #[error(
        "the schema registry rejected {file} as a new version of subject `{subject}`: it is incompatible with the versions already \
         registered there ({message}). The schemas in schemas/ must evolve compatibly (README, \"Schema evolution\"); fix the schema, \
         or the subject's compatibility setting"
    )]
    Incompatible { file: String, subject: String, message: String },
    #[error("the schema registry refused {file} for subject `{subject}` (HTTP {status}): {message}")]
    Refused { file: String, subject: String, status: u16, message: String },
    #[error("{file} is not registered under subject `{subject}` and registry.auto_register is false: {message}")]
    NotRegistered { file: String, subject: String, message: String },
    /// A record that does not serialise or does not fit its topic's schema (a bug, not input).
    #[error("{subject}: {message}")]
    Encode { subject: String, message: String },
}

/// Whom `prepare` tells while it waits for an unavailable registry (the process's health and
/// telemetry; the codec does not know them).
pub trait RegistryWatch {
    fn registry_up(&self);
    fn registry_unavailable(&self, error: &str, retry_in: Duration);
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
    pub fn encode_value<T: Serialize>(&self, record: &T, buf: &mut Vec<u8>) -> Result<(), CodecError> {
        match self {
            OutputCodec::Json => serde_json::to_writer(buf, record).map_err(|e| CodecError::Encode { subject: "json".into(), message: e.to_string() }),
            OutputCodec::Avro { value, .. } => encode(record, value, buf),
        }
    }

    /// Appends the encoded key to `buf`.
    pub fn encode_key(&self, key: &str, buf: &mut Vec<u8>) -> Result<(), CodecError> {
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
pub fn encode<T: Serialize + ?Sized>(record: &T, target: &AvroTarget, buf: &mut Vec<u8>) -> Result<(), CodecError> {
    let err = |message: String| CodecError::Encode { subject: target.subject.clone(), message };
    let value = apache_avro::to_value(record).map_err(|e| err(e.to_string()))?;
    let value = value.resolve(&target.schema).map_err(|e| err(format!("the record does not fit the schema: {e}")))?;
    let body = apache_avro::to_avro_datum(&target.schema, value).map_err(|e| err(e.to_string()))?;
    frame(target.id, &body, buf);
    Ok(())
}

/// Registers (or looks up) one output subject's schema, waiting with backoff while the registry is
/// unavailable.
#[allow(clippy::too_many_arguments)]
pub(crate) fn register(
    client: &crate::codec::registry::RegistryClient,
    auto_register: bool,
    subject: &str,
    file: &str,
    text: &str,
    stop: &std::sync::atomic::AtomicBool,
    watch: &dyn RegistryWatch,
    backoff: &mut crate::codec::registry::Backoff,
) -> Result<AvroTarget, CodecError> {
    use std::sync::atomic::Ordering;
    let schema = Arc::new(Schema::parse_str(text).map_err(|e| CodecError::SchemaInvalid { file: file.into(), message: e.to_string() })?);
    let (file, subject_name) = (file.to_string(), subject.to_string());
    loop {
        let result = if auto_register { client.register(subject, text) } else { client.lookup(subject, text) };
        match result {
            Ok(id) => {
                watch.registry_up();
                backoff.reset();
                tracing::info!(%subject, id, registered = auto_register, "output schema ready");
                return Ok(AvroTarget { subject: subject.to_string(), id, schema });
            }
            Err(RegistryError::Unavailable(e)) => {
                let delay = backoff.next_delay();
                watch.registry_unavailable(&e, delay);
                let until = Instant::now() + delay;
                while Instant::now() < until {
                    if stop.load(Ordering::Acquire) {
                        return Err(CodecError::Stopped { subject: subject_name });
                    }
                    std::thread::sleep(Duration::from_millis(50).min(delay));
                }
            }
            Err(RegistryError::Rejected { status: 409, message }) => return Err(CodecError::Incompatible { file, subject: subject_name, message }),
            Err(RegistryError::Rejected { status, message }) => return Err(CodecError::Refused { file, subject: subject_name, status, message }),
            Err(RegistryError::NotFound(message)) => return Err(CodecError::NotRegistered { file, subject: subject_name, message }),
        }
    }
}
