//! Typed configuration: embedded defaults < config file < `TOUCHSTREAM__*` environment < flags.
//! Unknown keys and broken invariants fail at start with a message naming the key.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::time::Span;

mod layers;
mod secrets;
pub use layers::{parse_override, Sources};
use secrets::masked_properties;
pub use secrets::{is_secret_property, PrivacyConfig, Secret, MASK};

/// The embedded defaults: every key the processor reads.
pub const DEFAULTS: &str = include_str!("defaults.toml");
/// Prefix of environment overrides: `TOUCHSTREAM__KAFKA__BROKERS=host:9092`.
pub const ENV_PREFIX: &str = "TOUCHSTREAM__";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub topics: TopicsConfig,
    pub processing: ProcessingConfig,
    pub event_time: EventTimeConfig,
    pub journey: JourneyConfig,
    pub attribution: AttributionConfig,
    pub alerts: AlertsConfig,
    pub models: ModelsConfig,
    pub scores: ScoresConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
    pub registry: RegistryConfig,
    pub formats: FormatsConfig,
    pub limits: LimitsConfig,
    pub privacy: PrivacyConfig,
}

/// Bounds on input, so that no record can make a derived record too large for the broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Input records larger than this (key + value) go to the DLQ as `too_large`, undecoded.
    pub max_record_bytes: usize,
    /// Each string field of an event (ids, campaign, session, currency, product) at most this long.
    pub max_field_bytes: usize,
    /// Bytes of the original kept in a DLQ record that cannot hold all of it.
    pub dlq_excerpt_bytes: usize,
    /// Distinct products in one open cart; a `cart_add` of one more goes to the DLQ (`too_large`).
    pub max_cart_lines: usize,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    pub brokers: String,
    pub group_id: String,
    pub client_id: String,
    pub guarantee: Guarantee,
    pub transactional_id: String,
    pub transaction_timeout: Span,
    /// Static group membership: `group.instance.id` = the transactional id, so a restarted
    /// replica takes its partitions back without a rebalance.
    pub static_membership: bool,
    /// librdkafka properties for every client.
    #[serde(serialize_with = "masked_properties")]
    pub options: BTreeMap<String, String>,
    /// librdkafka properties for the consumer.
    #[serde(serialize_with = "masked_properties")]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka properties for the producer.
    #[serde(serialize_with = "masked_properties")]
    pub producer: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    /// Outputs, state changes and offsets of a batch commit in one Kafka transaction.
    ExactlyOnce,
    /// Outputs are flushed before offsets are committed: nothing is lost, a crash may repeat outputs.
    AtLeastOnce,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsConfig {
    pub events: String,
    pub conversions: String,
    pub channels: String,
    pub alerts: String,
    pub dlq: String,
    pub channel_partials: String,
    pub changelog: String,
    pub scores: String,
    /// Erasure requests, co-partitioned with `events` ("": erasure off).
    pub erasure: String,
    /// What each erasure request erased.
    pub erasure_audit: String,
    /// How the event producers partition by key (checked on the input; used by `touchstream erase`).
    pub partitioner: crate::kafka::partitioner::Partitioner,
    pub create: bool,
    pub partitions: i32,
    pub replication_factor: i32,
    /// `retention.ms` of the topics the processor creates.
    pub retention: RetentionConfig,
}

/// How long the topics holding personal data keep it, set as `retention.ms` when the processor
/// creates them: a duration, `forever` (-1) or `""` (the broker's default). An existing topic is
/// not changed; a difference is reported at start.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    pub conversions: String,
    pub alerts: String,
    pub dlq: String,
    pub erasure: String,
    pub erasure_audit: String,
}

impl RetentionConfig {
    /// `retention.ms` per topic key (None: the broker's default).
    pub fn parsed(&self) -> Result<[(&'static str, Option<i64>); 5], ConfigError> {
        let one = |key: &'static str, text: &str| -> Result<(&'static str, Option<i64>), ConfigError> {
            let t = text.trim();
            let ms = match t {
                "" => None,
                "forever" => Some(-1),
                _ => match Span::parse(t) {
                    Ok(s) if s.ms() > 0 => Some(s.ms()),
                    Ok(_) => return Err(key_err(key, "must be > 0, `forever` or \"\" (the broker's default)")),
                    Err(e) => return Err(key_err(key, e)),
                },
            };
            Ok((key, ms))
        };
        Ok([
            one("topics.retention.conversions", &self.conversions)?,
            one("topics.retention.alerts", &self.alerts)?,
            one("topics.retention.dlq", &self.dlq)?,
            one("topics.retention.erasure", &self.erasure)?,
            one("topics.retention.erasure_audit", &self.erasure_audit)?,
        ])
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessingConfig {
    pub commit_interval: Span,
    pub max_batch_events: usize,
    /// Exactly-once: read and compute the next batch while a transaction commits (its outputs
    /// are sent once the commit answered). false: the loop waits for every commit.
    pub overlap_commit: bool,
    /// Input waiting and nothing committed for this long: `/readyz` fails, `touchstream_stalled` is 1.
    pub stall_timeout: Span,
    /// Threads the partitions' engines run on (0: one per core the process may use).
    pub threads: usize,
    /// Every partition's changed state goes to the changelog at least this often (a snapshot
    /// with its input offset); a restore replays the input since. 0: at every commit.
    pub snapshot_interval: Span,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventTimeConfig {
    pub allowed_lateness: Span,
    pub idle_timeout: Span,
    pub max_future_skew: Span,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JourneyConfig {
    pub lookback: Span,
    pub max_touchpoints: usize,
    /// A repeat of any of a customer's last this-many event ids is dropped (0: keep repeats).
    pub dedupe_ids: usize,
    /// Write dropped repeats to the DLQ (`duplicate`) as well as counting them.
    pub dead_letter_duplicates: bool,
    pub customer_ttl: Span,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AttributionConfig {
    pub time_decay_half_life: Span,
    pub window: Span,
    pub window_retention: Span,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// How soon after a cart's last activity alerts should come: with models, the step model's
    /// alert policy for this target (the largest `alert_policies` target at or below it in its
    /// metadata); without models, the rule alerts every cart idle this long.
    pub target_delay: Span,
    /// With models: carts the model has not alerted by this inactivity alert with reason
    /// `safety_net` ("0s": off).
    pub safety_net: Span,
    /// With a step model without a re-check head: the inactivity after which P(abandon) is read.
    pub model_check: Span,
    /// Instead of the model's policies: this threshold at every check of its re-check head up to
    /// `target_delay` (or at `model_check` for a model without a head, where it is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abandon_threshold: Option<f64>,
    /// `expected_recoverable_value` of an alert = cart value x P(abandon) x this (the share of
    /// abandoned carts a message wins back; measure it with a holdout group).
    pub recovery_rate: f64,
    /// `recommended_action` tiers, first match wins.
    pub actions: Vec<ActionTier>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ActionTier {
    pub action: String,
    /// Matches alerts whose P(abandon) is at least this (alerts without a probability match 0 only).
    #[serde(default)]
    pub min_probability: f64,
    #[serde(default)]
    pub min_cart_value: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelsConfig {
    pub enabled: bool,
    /// Folder holding `<name>/model.onnx` + `metadata.json`; empty = the models built into the binary.
    pub dir: String,
    pub step: String,
    pub attribution: String,
    pub deep_credit: DeepCreditMode,
    pub shapley_samples: usize,
    pub shapley_exact_max: usize,
    /// Rows per tract call of the step model.
    pub max_batch: usize,
    pub check_fixtures: bool,
    /// Watch `dir` and reload on change (SIGHUP always reloads).
    pub watch: bool,
    /// A folder like `dir` with candidate models scored in shadow beside the active ones (their
    /// outputs are never written); empty: none. `touchstream models report` compares them,
    /// `touchstream models promote` swaps them in.
    #[serde(default)]
    pub candidate: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DeepCreditMode {
    Removal,
    Shapley,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScoresConfig {
    pub enabled: bool,
    /// A customer's score is written when P(purchase) or P(abandon) moved by more than this, or
    /// the expected value by more than this fraction.
    pub min_change: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub enabled: bool,
    pub listen: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    pub level: String,
}

/// The schema registry (Confluent REST API) used by the Avro formats.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Base URL, e.g. `https://registry:8081` or Apicurio's `http://host:8080/apis/ccompat/v7`.
    pub url: String,
    pub username: String,
    pub password: Secret,
    /// PEM file of the CA certificates to trust (empty: Mozilla's roots).
    pub ca_file: String,
    /// PEM files of a client certificate chain and its key, for mutual TLS.
    pub cert_file: String,
    pub key_file: String,
    pub timeout: Span,
    pub retry_min: Span,
    pub retry_max: Span,
    /// Register the output schemas at start (else they must already be registered).
    pub auto_register: bool,
}

/// Wire format of each topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FormatsConfig {
    pub events: InputFormat,
    pub conversions: OutputFormat,
    pub channels: OutputFormat,
    pub alerts: OutputFormat,
    pub scores: OutputFormat,
    pub keys: KeyFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFormat {
    Json,
    /// Confluent wire format: magic byte 0, 4-byte schema id, Avro body.
    Avro,
    /// Magic byte 0: registry Avro, anything else: JSON.
    Auto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    Json,
    Avro,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyFormat {
    /// Plain UTF-8 bytes.
    String,
    /// An Avro `string` in the Confluent wire format (subject `<topic>-key`), on Avro output topics.
    Avro,
}

impl FormatsConfig {
    /// Whether any topic needs the schema registry.
    pub fn uses_registry(&self) -> bool {
        // every entry but `events` and `keys` is an output topic's OutputFormat
        let table = toml::Value::try_from(self).ok();
        let avro_output =
            table.as_ref().and_then(toml::Value::as_table).is_some_and(|t| t.iter().any(|(k, v)| k != "events" && k != "keys" && v.as_str() == Some("avro")));
        self.events != InputFormat::Json || avro_output
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

/// A configuration problem, always naming the key (or the file) at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
}

fn key_err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Key { key: key.to_string(), message: message.into() }
}

impl Config {
    /// The embedded defaults alone.
    pub fn defaults() -> Config {
        Config::load(&Sources::default()).expect("embedded defaults are valid")
    }

    /// Invariants that types alone do not express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &str, s: Span| if s.ms() > 0 { Ok(()) } else { Err(key_err(key, format!("must be > 0, got {s}"))) };
        let non_negative = |key: &str, s: Span| if s.ms() >= 0 { Ok(()) } else { Err(key_err(key, "must be >= 0")) };
        let not_blank = |key: &str, s: &str| if s.trim().is_empty() { Err(key_err(key, "must not be empty")) } else { Ok(()) };
        not_blank("kafka.brokers", &self.kafka.brokers)?;
        not_blank("kafka.group_id", &self.kafka.group_id)?;
        not_blank("kafka.client_id", &self.kafka.client_id)?;
        // every topic name under [topics] (the erasure pair only when erasure is on)
        let table = toml::Value::try_from(&self.topics).map_err(|e| key_err("topics", e.to_string()))?;
        let erasure_on = !self.topics.erasure.is_empty();
        let topics: Vec<(String, &str)> = table
            .as_table()
            .into_iter()
            .flatten()
            .filter(|(k, _)| k.as_str() != "partitioner" && (erasure_on || !k.starts_with("erasure")))
            .filter_map(|(k, v)| Some((format!("topics.{k}"), v.as_str()?)))
            .collect();
        for (i, (key, name)) in topics.iter().enumerate() {
            not_blank(key, name)?;
            if name.len() > 249 || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')) {
                return Err(key_err(key, format!("`{name}` is not a valid Kafka topic name")));
            }
            if let Some((other, _)) = topics[..i].iter().find(|(_, n)| n == name) {
                return Err(key_err(key, format!("`{name}` is also used by `{other}`; every topic must differ")));
            }
        }
        self.topics.retention.parsed()?;
        if self.topics.partitions < 1 {
            return Err(key_err("topics.partitions", "must be >= 1"));
        }
        if self.topics.replication_factor < 1 {
            return Err(key_err("topics.replication_factor", "must be >= 1"));
        }
        positive("processing.commit_interval", self.processing.commit_interval)?;
        if self.kafka.transaction_timeout.ms() < 1000 {
            return Err(key_err("kafka.transaction_timeout", "must be at least 1s"));
        }
        if self.kafka.transaction_timeout <= self.processing.commit_interval {
            return Err(key_err("kafka.transaction_timeout", "must be longer than processing.commit_interval"));
        }
        if self.processing.max_batch_events == 0 {
            return Err(key_err("processing.max_batch_events", "must be >= 1"));
        }
        non_negative("event_time.allowed_lateness", self.event_time.allowed_lateness)?;
        positive("event_time.idle_timeout", self.event_time.idle_timeout)?;
        non_negative("event_time.max_future_skew", self.event_time.max_future_skew)?;
        positive("journey.lookback", self.journey.lookback)?;
        if !(1..=1024).contains(&self.journey.max_touchpoints) {
            return Err(key_err("journey.max_touchpoints", "must be between 1 and 1024"));
        }
        positive("journey.customer_ttl", self.journey.customer_ttl)?;
        if self.journey.customer_ttl < self.alerts.target_delay.max(self.alerts.safety_net) {
            return Err(key_err(
                "journey.customer_ttl",
                "must be at least alerts.target_delay and alerts.safety_net, or carts would be forgotten before they alert",
            ));
        }
        positive("attribution.time_decay_half_life", self.attribution.time_decay_half_life)?;
        positive("attribution.window", self.attribution.window)?;
        non_negative("attribution.window_retention", self.attribution.window_retention)?;
        positive("alerts.target_delay", self.alerts.target_delay)?;
        non_negative("alerts.safety_net", self.alerts.safety_net)?;
        if self.alerts.safety_net.ms() > 0 && self.alerts.safety_net < self.alerts.target_delay {
            return Err(key_err("alerts.safety_net", "must be at least alerts.target_delay (or 0s: off)"));
        }
        positive("alerts.model_check", self.alerts.model_check)?;
        if self.alerts.abandon_threshold.is_some_and(|t| !(0.0..=1.0).contains(&t)) {
            return Err(key_err("alerts.abandon_threshold", "must be between 0 and 1"));
        }
        if !(0.0..=1.0).contains(&self.alerts.recovery_rate) {
            return Err(key_err("alerts.recovery_rate", "must be between 0 and 1"));
        }
        if self.alerts.actions.is_empty() {
            return Err(key_err("alerts.actions", "needs at least one tier"));
        }
        for (i, t) in self.alerts.actions.iter().enumerate() {
            let key = format!("alerts.actions[{i}]");
            not_blank(&format!("{key}.action"), &t.action)?;
            if !(0.0..=1.0).contains(&t.min_probability) {
                return Err(key_err(&format!("{key}.min_probability"), "must be between 0 and 1"));
            }
            if !t.min_cart_value.is_finite() || t.min_cart_value < 0.0 {
                return Err(key_err(&format!("{key}.min_cart_value"), "must be a non-negative number"));
            }
        }
        if !self.alerts.actions.iter().any(|t| t.min_probability == 0.0 && t.min_cart_value == 0.0) {
            return Err(key_err("alerts.actions", "needs a catch-all tier (min_probability = 0, min_cart_value = 0)"));
        }
        if self.models.enabled {
            not_blank("models.step", &self.models.step)?;
            not_blank("models.attribution", &self.models.attribution)?;
            if !self.models.dir.trim().is_empty() && !Path::new(&self.models.dir).is_dir() {
                return Err(key_err("models.dir", format!("`{}` is not a folder", self.models.dir)));
            }
            if !(1..=4096).contains(&self.models.max_batch) {
                return Err(key_err("models.max_batch", "must be between 1 and 4096"));
            }
            if !(1..=4096).contains(&self.models.shapley_samples) {
                return Err(key_err("models.shapley_samples", "must be between 1 and 4096"));
            }
            if self.models.shapley_exact_max > 12 {
                return Err(key_err("models.shapley_exact_max", "must be at most 12 (2^12 model rows per conversion)"));
            }
        }
        if !self.scores.min_change.is_finite() || self.scores.min_change < 0.0 {
            return Err(key_err("scores.min_change", "must be a non-negative number"));
        }
        if self.http.enabled && self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(key_err("http.listen", format!("`{}` is not an address like 0.0.0.0:9464", self.http.listen)));
        }
        if self.formats.uses_registry() {
            let url = self.registry.url.trim();
            if url.is_empty() {
                return Err(key_err("registry.url", "must be set when a topic uses the avro or auto format (see [formats])"));
            }
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(key_err("registry.url", format!("`{url}` is not an http:// or https:// URL")));
            }
        }
        positive("registry.timeout", self.registry.timeout)?;
        positive("processing.stall_timeout", self.processing.stall_timeout)?;
        if self.limits.max_field_bytes == 0 || self.limits.max_field_bytes > self.limits.max_record_bytes {
            return Err(key_err("limits.max_field_bytes", "must be > 0 and at most limits.max_record_bytes"));
        }
        if self.limits.max_cart_lines == 0 {
            return Err(key_err("limits.max_cart_lines", "must be > 0"));
        }
        if !(64..=65_536).contains(&self.limits.dlq_excerpt_bytes) {
            return Err(key_err("limits.dlq_excerpt_bytes", "must be between 64 and 65536"));
        }
        positive("registry.retry_min", self.registry.retry_min)?;
        if self.registry.retry_max < self.registry.retry_min {
            return Err(key_err("registry.retry_max", "must be at least registry.retry_min"));
        }
        if !self.registry.password.0.is_empty() && self.registry.username.is_empty() {
            return Err(key_err("registry.username", "must be set when registry.password is"));
        }
        if self.registry.cert_file.is_empty() != self.registry.key_file.is_empty() {
            return Err(key_err("registry.key_file", "registry.cert_file and registry.key_file go together"));
        }
        for (table, map) in [("kafka.options", &self.kafka.options), ("kafka.consumer", &self.kafka.consumer), ("kafka.producer", &self.kafka.producer)] {
            for key in map.keys() {
                if MANAGED_KAFKA_KEYS.contains(&key.as_str()) {
                    return Err(key_err(&format!("{table}.{key}"), "is set by Touchstream itself; use the typed key instead (kafka.brokers, kafka.group_id, kafka.transactional_id, kafka.transaction_timeout, kafka.guarantee) or leave it out"));
                }
            }
        }
        Ok(())
    }
}

/// librdkafka properties Touchstream sets itself and that the passthrough tables may not override.
pub const MANAGED_KAFKA_KEYS: &[&str] =
    &["bootstrap.servers", "group.id", "enable.auto.commit", "enable.auto.offset.store", "isolation.level", "transactional.id", "transaction.timeout.ms"];

impl KafkaConfig {
    /// The transactional id of this replica: the configured one, or `<group_id>-<hostname>`.
    pub fn effective_transactional_id(&self) -> String {
        if !self.transactional_id.trim().is_empty() {
            return self.transactional_id.clone();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
            .unwrap_or_else(|| "touchstream".into());
        format!("{}-{host}", self.group_id)
    }
}

#[cfg(test)]
mod tests;
