//! Kafka plumbing: client settings, topic creation, the consumer's rebalance signals and the
//! output producer. librdkafka's blocking calls happen on the runner's own thread.

pub mod admin;
pub mod consumer;
pub mod partitioner;
pub mod probe;
pub mod sink;

use rdkafka::ClientConfig;

use crate::config::{Config, Guarantee};

/// Which client a configuration is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    Producer,
    Admin,
}

/// librdkafka settings for a client: Touchstream's own, then the passthrough tables.
pub fn client_config(cfg: &Config, role: Role) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.kafka.brokers);
    c.set("client.id", &cfg.kafka.client_id);
    match role {
        Role::Consumer => {
            c.set("group.id", &cfg.kafka.group_id)
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "earliest")
                .set("isolation.level", "read_committed")
                .set("enable.partition.eof", "false")
                .set("partition.assignment.strategy", "cooperative-sticky")
                // Once its local queue is full librdkafka puts off the next fetch by this much, 1 s
                // by default: a replica with a backlog drained the queue and waited out the rest
                // (the harness, README "Benchmarks": up to 10 % more events/s for the processor
                // and 2.2x for a plain passthrough at 10 ms).
                .set("fetch.queue.backoff.ms", "10");
            if cfg.kafka.static_membership {
                c.set("group.instance.id", cfg.kafka.effective_transactional_id());
            }
        }
        Role::Producer => {
            // Java-compatible partitioning by key, idempotent delivery, no reordering on retry.
            c.set("partitioner", "murmur2_random").set("enable.idempotence", "true").set("linger.ms", "5");
            // The sink only counts failed deliveries: without a report per delivered record the
            // commit's wait for outstanding records serves one event per failure, not per record.
            c.set("delivery.report.only.error", "true");
            if cfg.kafka.guarantee == Guarantee::ExactlyOnce {
                c.set("transactional.id", cfg.kafka.effective_transactional_id()).set("transaction.timeout.ms", cfg.kafka.transaction_timeout.ms().to_string());
            }
        }
        Role::Admin => {}
    }
    for (k, v) in &cfg.kafka.options {
        c.set(k, v);
    }
    let extra = match role {
        Role::Consumer => Some(&cfg.kafka.consumer),
        Role::Producer => Some(&cfg.kafka.producer),
        Role::Admin => None,
    };
    for (k, v) in extra.into_iter().flatten() {
        c.set(k, v);
    }
    c
}

/// A reader of assigned partitions (no group membership, no commits): read_committed, from the
/// beginning when nothing else is asked; `<group_id>-<purpose>` names it in the broker's logs.
pub fn reader_config(cfg: &Config, purpose: &str) -> ClientConfig {
    let mut c = client_config(cfg, Role::Admin);
    c.set("group.id", format!("{}-{purpose}", cfg.kafka.group_id))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("auto.offset.reset", "earliest");
    c
}
