//! The consumer context: rebalance callbacks only record what happened; the runner's loop reads
//! the signals after each poll and owns all state changes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, TopicPartitionList};

/// A change of the partitions this member owns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RebalanceSignal {
    Assigned(Vec<(String, i32)>),
    Revoked(Vec<(String, i32)>),
    Failed(String),
}

#[derive(Default)]
pub struct SignallingContext {
    signals: Mutex<Vec<RebalanceSignal>>,
    /// When partitions were revoked with no assignment since (a rebalance ends with an assign
    /// callback, possibly empty; see [`Self::unassigned_for`]).
    revoked_at: Mutex<Option<Instant>>,
}

impl SignallingContext {
    /// How long ago the group revoked this member's partitions without a new assignment since.
    /// A static member whose session timed out (a broker restart) can wait forever here
    /// (confluentinc/librdkafka#3437): the loop stops the replica after a bound, and a fresh
    /// member with the same instance id gets the partitions back at once.
    pub fn unassigned_for(&self) -> Option<Duration> {
        self.revoked_at.lock().expect("revoke lock").map(|t| t.elapsed())
    }

    /// Takes the signals recorded since the last call, in order.
    pub fn take(&self) -> Vec<RebalanceSignal> {
        std::mem::take(&mut *self.signals.lock().expect("signal lock"))
    }

    /// Whether signals wait to be taken.
    pub fn pending(&self) -> bool {
        !self.signals.lock().expect("signal lock").is_empty()
    }

    fn push(&self, s: RebalanceSignal) {
        self.signals.lock().expect("signal lock").push(s);
    }
}

fn list(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements().iter().map(|e| (e.topic().to_string(), e.partition())).collect()
}

impl ClientContext for SignallingContext {
    /// librdkafka reports a partition's end (`enable.partition.eof`, on the partials consumer) as an
    /// error event too; `poll` hands it to the loop, so it is not logged as an error here.
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_eof(&error) {
            tracing::error!(%error, %reason, "kafka client error");
        }
    }
}

fn is_eof(error: &KafkaError) -> bool {
    matches!(error, KafkaError::PartitionEOF(_)) || error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF)
}

impl ConsumerContext for SignallingContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            self.revoked_at.lock().expect("revoke lock").get_or_insert_with(Instant::now);
            self.push(RebalanceSignal::Revoked(list(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                *self.revoked_at.lock().expect("revoke lock") = None;
                self.push(RebalanceSignal::Assigned(list(tpl)))
            }
            Rebalance::Error(e) => self.push(RebalanceSignal::Failed(e.to_string())),
            Rebalance::Revoke(_) => {}
        }
    }
}

/// The consumer's fatal error, if it has one (e.g. a static member fenced after a broker restart):
/// it never heals, so the replica stops and its supervisor starts a fresh member.
pub fn fatal<C: ConsumerContext>(consumer: &BaseConsumer<C>) -> Option<String> {
    consumer.client().fatal_error().map(|(code, reason)| format!("{code:?}: {reason}"))
}

/// (partition, position, records not yet consumed) of `topic` per assigned partition: the high
/// watermark librdkafka last saw in a fetch response (cached, no request) minus the consumer's
/// position. Partitions without both yet are left out.
pub fn lag<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> Vec<(i32, i64, i64)> {
    use rdkafka::Offset;
    let Ok(positions) = consumer.position() else { return Vec::new() };
    let Ok(name) = std::ffi::CString::new(topic) else { return Vec::new() };
    let mut out = Vec::new();
    for e in positions.elements_for_topic(topic) {
        let Offset::Offset(position) = e.offset() else { continue };
        let (mut low, mut high) = (-1_i64, -1_i64);
        // SAFETY: the client pointer lives as long as `consumer`; librdkafka only reads `name` and
        // writes the two offsets.
        let err =
            unsafe { rdkafka::bindings::rd_kafka_get_watermark_offsets(consumer.client().native_ptr(), name.as_ptr(), e.partition(), &mut low, &mut high) };
        if err == rdkafka::types::RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0 {
            out.push((e.partition(), position, (high - position).max(0)));
        }
    }
    out
}

/// Context of the changelog reader: reaching the end of a partition is the point, not an error.
pub struct QuietEof;

impl ClientContext for QuietEof {
    fn error(&self, error: KafkaError, reason: &str) {
        if !is_eof(&error) {
            tracing::error!(%error, %reason, "changelog reader error");
        }
    }
}

impl ConsumerContext for QuietEof {}
