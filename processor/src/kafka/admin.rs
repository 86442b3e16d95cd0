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
    #[error("config key `topics.events`: input topic {topic} does not exist; it must exist before the processor starts, since the state changelog gets its partition count")]
    NoInput { topic: String },
    #[error("config key `topics.changelog`: {changelog} has {found} partitions but {events} has {expected}; partition i of the changelog must hold the state of input partition i")]
    ChangelogMismatch { changelog: String, found: i32, events: String, expected: i32 },
}

/// A topic Touchstream writes and how it is configured.
pub struct TopicSpec {
    pub name: String,
    pub compacted: bool,
    pub retention_ms: Option<i64>,
    /// Partition count when not `topics.partitions`.
    pub partitions: Option<i32>,
}

/// The topics the processor writes: event topics (conversions, alerts, DLQ) are not compacted;
/// upsert topics (channel totals, scores, internal partials, state changelog) are. The changelog gets the
/// input topic's partition count.
pub fn output_topics(cfg: &Config, input_partitions: i32) -> Vec<TopicSpec> {
    let t = &cfg.topics;
    let partial_retention = cfg.attribution.window_retention.ms() + cfg.attribution.window.ms() + 86_400_000;
    let spec = |name: &String, compacted, retention_ms, partitions| TopicSpec { name: name.clone(), compacted, retention_ms, partitions };
    let mut topics = vec![
        spec(&t.conversions, false, None, None),
        spec(&t.alerts, false, None, None),
        spec(&t.dlq, false, None, None),
        spec(&t.channels, true, None, None),
        spec(&t.channel_partials, true, Some(partial_retention), None),
        spec(&t.changelog, true, None, Some(input_partitions)),
    ];
    if cfg.models.enabled && cfg.scores.enabled {
        topics.push(spec(&t.scores, true, None, None));
    }
    topics
}

/// Creates missing output topics (when `topics.create`), or checks that they exist.
pub async fn ensure_topics(cfg: &Config) -> Result<(), AdminError> {
    let input_partitions = partition_count(cfg, &cfg.topics.events)?.ok_or_else(|| AdminError::NoInput { topic: cfg.topics.events.clone() })?;
    let specs = output_topics(cfg, input_partitions);
    create_missing(cfg, &specs).await?;
    let found = partition_count(cfg, &cfg.topics.changelog)?.unwrap_or(0);
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

async fn create_missing(cfg: &Config, specs: &[TopicSpec]) -> Result<(), AdminError> {
    if !cfg.topics.create {
        for s in specs {
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
