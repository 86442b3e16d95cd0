//! Creates the topics Touchstream writes, when missing, and reads partition counts.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use crate::config::Config;
use crate::kafka::{client_config, Role};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("cannot reach Kafka at {brokers}: {message}")]
    Unreachable { brokers: String, message: String },
    #[error("cannot create topic {topic}: {message}")]
    Create { topic: String, message: String },
    #[error("topic {topic} does not exist (and topics.create is false)")]
    Missing { topic: String },
}

/// A topic Touchstream writes and how it is configured.
pub struct TopicSpec {
    pub name: String,
    pub compacted: bool,
    pub retention_ms: Option<i64>,
}

/// The output topics: event topics (conversions, alerts, DLQ) are not compacted; upsert topics
/// (channel totals, internal partials) are.
pub fn output_topics(cfg: &Config) -> Vec<TopicSpec> {
    let t = &cfg.topics;
    let partial_retention = cfg.attribution.window_retention.ms() + cfg.attribution.window.ms() + 86_400_000;
    vec![
        TopicSpec { name: t.conversions.clone(), compacted: false, retention_ms: None },
        TopicSpec { name: t.alerts.clone(), compacted: false, retention_ms: None },
        TopicSpec { name: t.dlq.clone(), compacted: false, retention_ms: None },
        TopicSpec { name: t.channels.clone(), compacted: true, retention_ms: None },
        TopicSpec { name: t.channel_partials.clone(), compacted: true, retention_ms: Some(partial_retention) },
    ]
}

/// Creates missing output topics (when `topics.create`), or checks that they exist.
pub async fn ensure_topics(cfg: &Config) -> Result<(), AdminError> {
    let specs = output_topics(cfg);
    if !cfg.topics.create {
        for s in &specs {
            if partition_count(cfg, &s.name)?.is_none() {
                return Err(AdminError::Missing { topic: s.name.clone() });
            }
        }
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, Role::Admin)
        .create()
        .map_err(|e| AdminError::Unreachable { brokers: cfg.kafka.brokers.clone(), message: e.to_string() })?;
    let retention: Vec<String> = specs.iter().map(|s| s.retention_ms.map(|r| r.to_string()).unwrap_or_default()).collect();
    let new_topics: Vec<NewTopic<'_>> = specs
        .iter()
        .zip(&retention)
        .map(|(s, r)| {
            let mut n = NewTopic::new(&s.name, cfg.topics.partitions, TopicReplication::Fixed(cfg.topics.replication_factor));
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
    let consumer: BaseConsumer = client_config(cfg, Role::Admin)
        .create()
        .map_err(|e| AdminError::Unreachable { brokers: cfg.kafka.brokers.clone(), message: e.to_string() })?;
    let md = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(15))
        .map_err(|e| AdminError::Unreachable { brokers: cfg.kafka.brokers.clone(), message: e.to_string() })?;
    Ok(md.topics().iter().find(|t| t.name() == topic).and_then(|t| {
        if t.error().is_some() || t.partitions().is_empty() {
            None
        } else {
            Some(t.partitions().len() as i32)
        }
    }))
}
