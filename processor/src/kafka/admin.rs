//! Creates the topics Touchstream writes, when missing, and reads partition counts.

use std::time::Duration;

use std::collections::HashMap;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, OwnedResourceSpecifier, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::BaseConsumer;
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;
use crate::kafka::probe::{self, Cause, ProbeContext};
use crate::kafka::{client_config, Role};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach Kafka at {brokers}: {message}")]
    Unreachable { brokers: String, message: String },
    /// The first contact failed for a named cause (authentication, TLS, configuration, network).
    #[error("cannot use Kafka at {brokers}: {hint} ({message})", hint = cause.hint())]
    Connect { brokers: String, cause: Cause, message: String },
    #[error("cannot create topic {topic}: {message}")]
    Create { topic: String, message: String },
    #[error("topic {topic} does not exist (and topics.create is false)")]
    Missing { topic: String },
    #[error("config key `topics.events`: input topic {topic} does not exist; it must exist before the processor starts, since the state changelog gets its partition count")]
    NoInput { topic: String },
    #[error("config key `topics.changelog`: {changelog} has {found} partitions but {events} has {expected}; partition i of the changelog must hold the state of input partition i")]
    ChangelogMismatch { changelog: String, found: i32, events: String, expected: i32 },
    #[error("config key `topics.erasure`: {erasure} has {found} partitions but {events} has {expected}; erasure requests must be co-partitioned with the input (same partition count, same partitioner)")]
    ErasureMismatch { erasure: String, found: i32, events: String, expected: i32 },
}

/// The broker's and librdkafka's default largest record (`message.max.bytes`).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 1_000_000;

/// The largest record each output topic accepts from this processor: the topic's
/// `max.message.bytes` (read from the broker) and the producer's `message.max.bytes`, whichever is
/// smaller. A topic the broker says nothing about gets the producer's limit.
pub async fn record_limits(cfg: &Config, out: &[TopicSpec]) -> HashMap<String, usize> {
    let producer = cfg
        .kafka
        .producer
        .get("message.max.bytes")
        .or_else(|| cfg.kafka.options.get("message.max.bytes"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MAX_MESSAGE_BYTES);
    let specs_by_name: HashMap<&str, Option<i64>> = out.iter().map(|t| (t.name.as_str(), t.retention_ms)).collect();
    let topics: Vec<String> = out.iter().map(|t| t.name.clone()).collect();
    let mut limits: HashMap<String, usize> = topics.iter().map(|t| (t.clone(), producer)).collect();
    let Ok(admin) = client_config(cfg, Role::Admin).create::<AdminClient<DefaultClientContext>>() else { return limits };
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let specs: Vec<ResourceSpecifier<'_>> = topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
    match admin.describe_configs(specs.iter(), &opts).await {
        Ok(results) => {
            for r in results.into_iter().flatten() {
                let OwnedResourceSpecifier::Topic(topic) = &r.specifier else { continue };
                let found = r.entries.iter().find(|e| e.name == "max.message.bytes").and_then(|e| e.value.as_deref()?.parse::<usize>().ok());
                let kept = r.entries.iter().find(|e| e.name == "retention.ms").and_then(|e| e.value.as_deref()?.parse::<i64>().ok());
                if let (Some(want), Some(kept)) = (specs_by_name.get(topic.as_str()).copied().flatten(), kept) {
                    if want != kept {
                        tracing::warn!(topic = %topic, configured_ms = want, topic_ms = kept, "an existing topic keeps records for another time than topics.retention says; the processor does not change existing topics (use kafka-configs --alter)");
                    }
                }
                if let Some(t) = found {
                    limits.insert(topic.clone(), t.min(producer));
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read the output topics' max.message.bytes; assuming the producer's limit"),
    }
    limits
}

/// A topic's `max.message.bytes` bounds a whole record batch, not one record: when an output topic
/// takes less than librdkafka's default batch (1 MB), the producer's `batch.size` is set below it
/// (unless configured), so that batches of small records are never refused.
pub fn fit_batches(cfg: &mut Config, limits: &HashMap<String, usize>) {
    const DEFAULT_BATCH: usize = 1_000_000;
    let Some(smallest) = limits.values().copied().min() else { return };
    if smallest < DEFAULT_BATCH && !cfg.kafka.producer.contains_key("batch.size") && !cfg.kafka.options.contains_key("batch.size") {
        let batch = smallest.saturating_sub(1024).max(1024);
        tracing::info!(batch_size = batch, smallest_topic_limit = smallest, "an output topic takes small batches: producer batch.size lowered");
        cfg.kafka.producer.insert("batch.size".into(), batch.to_string());
    }
}

/// A topic Touchstream writes and how it is configured.
pub struct TopicSpec {
    pub name: String,
    pub compacted: bool,
    pub retention_ms: Option<i64>,
    /// Partition count when not `topics.partitions`.
    pub partitions: Option<i32>,
}

/// Creates missing output topics (when `topics.create`), or checks that they exist; `specs` gives
/// them for the input's partition count.
pub async fn ensure_topics(cfg: &Config, specs: impl Fn(&Config, i32) -> Vec<TopicSpec>) -> Result<(), AdminError> {
    let input_partitions = partition_count(cfg, &cfg.topics.events)?.ok_or_else(|| AdminError::NoInput { topic: cfg.topics.events.clone() })?;
    let specs = specs(cfg, input_partitions);
    create_missing(cfg, &specs).await?;
    let found = appeared(cfg, &cfg.topics.changelog).await?;
    if !cfg.topics.erasure.is_empty() {
        let found = appeared(cfg, &cfg.topics.erasure).await?.unwrap_or(0);
        if found != input_partitions {
            return Err(AdminError::ErasureMismatch {
                erasure: cfg.topics.erasure.clone(),
                found,
                events: cfg.topics.events.clone(),
                expected: input_partitions,
            });
        }
    }
    let found = found.unwrap_or(0);
    if found != input_partitions {
        return Err(AdminError::ChangelogMismatch {
            changelog: cfg.topics.changelog.clone(),
            found,
            events: cfg.topics.events.clone(),
            expected: input_partitions,
        });
    }
    Ok(())
}

/// Partition count of `topic`, waiting up to 15 s for a topic just created to appear in the metadata.
async fn appeared(cfg: &Config, topic: &str) -> Result<Option<i32>, AdminError> {
    let mut found = partition_count(cfg, topic)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while found.is_none() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        found = partition_count(cfg, topic)?;
    }
    Ok(found)
}

async fn create_missing(cfg: &Config, specs: &[TopicSpec]) -> Result<(), AdminError> {
    if !cfg.topics.create {
        for s in specs {
            if partition_count(cfg, &s.name)?.is_none() {
                return Err(AdminError::Missing { topic: s.name.clone() });
            }
        }
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        client_config(cfg, Role::Admin).create().map_err(|e| AdminError::Unreachable { brokers: cfg.kafka.brokers.clone(), message: e.to_string() })?;
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.map(|r| r.to_string()).unwrap_or_default()).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            let mut n = NewTopic::new(&s.name, s.partitions.unwrap_or(cfg.topics.partitions), TopicReplication::Fixed(cfg.topics.replication_factor));
            if s.compacted {
                n = n.set("cleanup.policy", if r.is_empty() { "compact" } else { "compact,delete" });
            }
            if !r.is_empty() {
                n = n.set("retention.ms", r);
            }
            n
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))).request_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new_topics.iter(), &opts)
        .await
        .map_err(|e| AdminError::Unreachable { brokers: cfg.kafka.brokers.clone(), message: e.to_string() })?;
    for r in results {
        match r {
            Ok(_) => {}
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(AdminError::Create { topic, message: code.to_string() }),
        }
    }
    Ok(())
}

/// Number of partitions of `topic`, or None when it does not exist.
pub fn partition_count(cfg: &Config, topic: &str) -> Result<Option<i32>, AdminError> {
    let brokers = || cfg.kafka.brokers.clone();
    let consumer: BaseConsumer<ProbeContext> = client_config(cfg, Role::Admin).create_with_context(ProbeContext::default()).map_err(|e| {
        let message = e.to_string();
        AdminError::Connect { brokers: brokers(), cause: Cause::of(&message).unwrap_or(Cause::Configuration), message }
    })?;
    let md = probe::fetch_metadata(&consumer, topic, Duration::from_secs(15)).map_err(|(cause, message)| AdminError::Connect {
        brokers: brokers(),
        cause,
        message,
    })?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| {
        if t.error().is_some() || t.partitions().is_empty() {
            None
        } else {
            Some(t.partitions().len() as i32)
        }
    }))
}
