//! Every topic the processor writes, in one table ([`OUTPUTS`]): its config key, whether it is
//! compacted, how many partitions it gets, how long it keeps records, when it is written, its Avro
//! schema when it can be Avro, and what keys its records. The topics created at start
//! ([`topic_specs`]), the codecs registered with the schema registry and the one send path
//! ([`Writer`]) are derived from it. DESIGN.md ("Adding an output") has the recipe.

mod writer;

pub use writer::{WriteError, Writer};

use crate::codec::{ALERT_SCHEMA, CHANNEL_WINDOW_SCHEMA, CONVERSION_SCHEMA, SCORE_SCHEMA};
use crate::config::{Config, FormatsConfig, OutputFormat, TopicsConfig};
use crate::kafka::admin::TopicSpec;

/// One output topic (an index into [`OUTPUTS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Conversions,
    Alerts,
    Channels,
    Scores,
    Dlq,
    ChannelPartials,
    Changelog,
    ErasureRequests,
    ErasureAudit,
}

/// How many partitions a topic gets when the processor creates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    /// `topics.partitions`.
    Configured,
    /// The input topic's count: partition i belongs to input partition i.
    Input,
}

/// The Avro side of a topic that can be written as registry Avro.
#[derive(Debug, Clone, Copy)]
pub struct Avro {
    /// The schema's file (for messages) and text (compiled in).
    pub file: &'static str,
    pub schema: &'static str,
    /// Its `[formats]` entry.
    pub format: fn(&FormatsConfig) -> OutputFormat,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct OutputSpec {
    pub kind: Kind,
    /// The topic's key under `[topics]`.
    pub key: &'static str,
    pub topic: fn(&TopicsConfig) -> &str,
    /// Upsert topic (one current record per key) rather than a log of events.
    pub compacted: bool,
    pub partitions: Partitions,
    /// `retention.ms` when the processor creates it (None: the broker's default).
    pub retention_ms: fn(&Config) -> Option<i64>,
    /// Whether this configuration writes (and creates) the topic.
    pub enabled: fn(&Config) -> bool,
    /// None: JSON values, UTF-8 keys.
    pub avro: Option<Avro>,
    /// What a record's key is (documentation; README "Topics").
    pub record_key: &'static str,
}

fn always(_: &Config) -> bool {
    true
}
fn scores_on(cfg: &Config) -> bool {
    cfg.models.enabled && cfg.scores.enabled
}
fn erasure_on(cfg: &Config) -> bool {
    !cfg.topics.erasure.is_empty()
}
fn broker_default(_: &Config) -> Option<i64> {
    None
}
/// `topics.retention.<key>` (validated at load: a bad value never gets here).
fn retention(cfg: &Config, key: &str) -> Option<i64> {
    cfg.topics.retention.parsed().ok()?.into_iter().find(|(k, _)| k.rsplit('.').next() == Some(key)).and_then(|(_, ms)| ms)
}

/// The table. Order is the order of creation.
pub const OUTPUTS: [OutputSpec; 9] = [
    OutputSpec {
        kind: Kind::Conversions,
        key: "conversions",
        topic: |t| &t.conversions,
        compacted: false,
        partitions: Partitions::Configured,
        retention_ms: |c| retention(c, "conversions"),
        enabled: always,
        avro: Some(Avro { file: "schemas/attribution_conversion.avsc", schema: CONVERSION_SCHEMA, format: |f| f.conversions }),
        record_key: "customer id (or its analytics id)",
    },
    OutputSpec {
        kind: Kind::Alerts,
        key: "alerts",
        topic: |t| &t.alerts,
        compacted: false,
        partitions: Partitions::Configured,
        retention_ms: |c| retention(c, "alerts"),
        enabled: always,
        avro: Some(Avro { file: "schemas/cart_abandonment_alert.avsc", schema: ALERT_SCHEMA, format: |f| f.alerts }),
        record_key: "customer id",
    },
    OutputSpec {
        kind: Kind::Dlq,
        key: "dlq",
        topic: |t| &t.dlq,
        compacted: false,
        partitions: Partitions::Configured,
        retention_ms: |c| retention(c, "dlq"),
        enabled: always,
        avro: None,
        record_key: "the original record's key",
    },
    OutputSpec {
        kind: Kind::Channels,
        key: "channels",
        topic: |t| &t.channels,
        compacted: true,
        partitions: Partitions::Configured,
        retention_ms: broker_default,
        enabled: always,
        avro: Some(Avro { file: "schemas/attribution_channel_window.avsc", schema: CHANNEL_WINDOW_SCHEMA, format: |f| f.channels }),
        record_key: "<window start>|<channel>",
    },
    OutputSpec {
        kind: Kind::ChannelPartials,
        key: "channel_partials",
        topic: |t| &t.channel_partials,
        compacted: true,
        partitions: Partitions::Configured,
        // a partial outlives its window's retention by a day
        retention_ms: |c| Some(c.attribution.window_retention.ms() + c.attribution.window.ms() + 86_400_000),
        enabled: always,
        avro: None,
        record_key: "<window start>|<channel>|<input partition>",
    },
    OutputSpec {
        kind: Kind::Changelog,
        key: "changelog",
        topic: |t| &t.changelog,
        compacted: true,
        partitions: Partitions::Input,
        retention_ms: broker_default,
        enabled: always,
        avro: None,
        record_key: "customer id, window key or the partition's meta key",
    },
    OutputSpec {
        kind: Kind::Scores,
        key: "scores",
        topic: |t| &t.scores,
        compacted: true,
        partitions: Partitions::Configured,
        retention_ms: broker_default,
        enabled: scores_on,
        avro: Some(Avro { file: "schemas/customer_score.avsc", schema: SCORE_SCHEMA, format: |f| f.scores }),
        record_key: "customer id",
    },
    OutputSpec {
        kind: Kind::ErasureRequests,
        key: "erasure",
        topic: |t| &t.erasure,
        compacted: false,
        partitions: Partitions::Input,
        retention_ms: |c| retention(c, "erasure"),
        enabled: erasure_on,
        avro: None,
        record_key: "customer id (written by `touchstream erase`)",
    },
    OutputSpec {
        kind: Kind::ErasureAudit,
        key: "erasure_audit",
        topic: |t| &t.erasure_audit,
        compacted: false,
        partitions: Partitions::Configured,
        retention_ms: |c| retention(c, "erasure_audit"),
        enabled: erasure_on,
        avro: None,
        record_key: "request id",
    },
];

/// The row of `kind`.
pub fn spec(kind: Kind) -> &'static OutputSpec {
    OUTPUTS.iter().find(|s| s.kind == kind).expect("every kind has a row")
}

/// The topics this configuration writes, as the admin client creates them.
pub fn topic_specs(cfg: &Config, input_partitions: i32) -> Vec<TopicSpec> {
    OUTPUTS
        .iter()
        .filter(|s| (s.enabled)(cfg))
        .map(|s| TopicSpec {
            name: (s.topic)(&cfg.topics).to_string(),
            compacted: s.compacted,
            retention_ms: (s.retention_ms)(cfg),
            partitions: (s.partitions == Partitions::Input).then_some(input_partitions),
        })
        .collect()
}

/// Whether this configuration writes any topic as registry Avro.
pub fn any_avro(cfg: &Config) -> bool {
    OUTPUTS.iter().any(|s| s.avro.is_some_and(|a| (a.format)(&cfg.formats) == OutputFormat::Avro))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_one_row_and_every_row_its_config_key() {
        let cfg = Config::defaults();
        let topics = toml::Value::try_from(&cfg.topics).unwrap();
        for (i, s) in OUTPUTS.iter().enumerate() {
            assert_eq!(OUTPUTS.iter().filter(|o| o.kind == s.kind).count(), 1, "{:?}", s.kind);
            assert_eq!(spec(s.kind).key, s.key);
            assert_eq!(topics.get(s.key).and_then(|v| v.as_str()), Some((s.topic)(&cfg.topics)), "row {i}: `topics.{}`", s.key);
        }
    }

    #[test]
    fn created_topics_follow_the_table() {
        let mut cfg = Config::defaults();
        let specs = topic_specs(&cfg, 4);
        let of = |specs: &[TopicSpec], name: &str| specs.iter().find(|s| s.name == name).map(|s| (s.compacted, s.partitions));
        assert_eq!(of(&specs, &cfg.topics.changelog), Some((true, Some(4))));
        assert_eq!(of(&specs, &cfg.topics.conversions), Some((false, None)));
        assert_eq!(of(&specs, &cfg.topics.erasure), Some((false, Some(4))));
        cfg.topics.erasure.clear();
        cfg.models.enabled = false;
        let specs = topic_specs(&cfg, 4);
        assert!(of(&specs, &cfg.topics.erasure_audit).is_none() && of(&specs, &cfg.topics.scores).is_none(), "off: not created");
        assert!(!any_avro(&cfg));
        cfg.formats.alerts = OutputFormat::Avro;
        assert!(any_avro(&cfg));
    }
}
