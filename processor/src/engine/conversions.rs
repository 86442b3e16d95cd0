//! Conversions waiting for the step model: a purchase's conversion record is complete once the
//! model has scored the purchase (its expected future value, which also weighs the channel
//! windows' deep credit). Instead of running the customer's queued events at once (a chain of
//! small tract calls per purchase), the record waits in a queue until the queue's next run scores
//! it, and the queue's ready prefix is written in arrival order (so the windows' sums add up in the
//! same order whatever the batching). Every run of the whole queue (`settle`, before each commit)
//! completes them all: nothing waits across a commit.

use std::collections::VecDeque;

use super::*;

/// A conversion waiting for its purchase's score.
#[derive(Debug)]
struct Waiting {
    record: ConversionRecord,
    /// The watermark when the purchase was processed (for the channel windows).
    wm: Millis,
    /// The expected future value once scored (NaN: the model gave none).
    future: Option<f32>,
    /// The models' version when the purchase was queued.
    version: String,
}

/// The queue of [`Waiting`] conversions; tags number them from the first ever queued.
#[derive(Debug, Default)]
pub(super) struct PendingConversions {
    queue: VecDeque<Waiting>,
    /// The tag of `queue[0]`.
    first: u64,
}

impl PendingConversions {
    pub(super) fn len(&self) -> usize {
        self.queue.len()
    }
}

impl PartitionEngine {
    /// The tag the next queued conversion gets.
    pub(super) fn next_conversion_tag(&self) -> u64 {
        self.conversions.first + self.conversions.queue.len() as u64
    }

    /// Writes `record` now without models, or queues it for its purchase's score.
    pub(super) fn conversion(&mut self, record: ConversionRecord, wm: Millis, out: &mut Vec<Output>) {
        match &self.scoring {
            Some(s) => self.conversions.queue.push_back(Waiting { record, wm, future: None, version: s.set.version.to_string() }),
            None => self.write_conversion(record, None, None, wm, out),
        }
    }

    /// Takes the scores the step model has produced for queued conversions.
    pub(super) fn collect_conversion_scores(&mut self) {
        let Some(s) = self.scoring.as_mut() else { return };
        let first = self.conversions.first;
        for (tag, value) in s.scored_conversions.drain(..) {
            if let Some(w) = tag.checked_sub(first).and_then(|i| self.conversions.queue.get_mut(i as usize)) {
                w.future = Some(value);
            }
        }
    }

    /// Writes the queued conversions whose purchase is scored, oldest first, up to the first that
    /// is not.
    pub(super) fn complete_conversions(&mut self, out: &mut Vec<Output>) {
        self.collect_conversion_scores();
        while self.conversions.queue.front().is_some_and(|w| w.future.is_some()) {
            let w = self.conversions.queue.pop_front().expect("checked");
            self.conversions.first += 1;
            let future = w.future.filter(|v| !v.is_nan()).map(f64::from);
            let version = future.is_some().then_some(w.version);
            self.write_conversion(w.record, future, version, w.wm, out);
        }
    }

    fn write_conversion(&mut self, mut record: ConversionRecord, future: Option<f64>, version: Option<String>, wm: Millis, out: &mut Vec<Output>) {
        record.model_version = version;
        record.expected_future_value = future;
        for t in &record.touchpoints {
            let rules = [t.time_decay, t.last_touch, t.first_touch, t.linear, t.position_based];
            let deep = t.deep.map(|d| (d, future.unwrap_or(0.0)));
            self.windows.add_credit(record.conversion_ts, t.channel, &rules, deep, record.conversion_value, wm);
        }
        out.push(Output::Conversion(record));
    }
}
