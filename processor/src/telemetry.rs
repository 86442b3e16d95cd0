//! Telemetry as typed events: each method is the one place that writes the log line and updates
//! the metric for what happened. Metric names follow Prometheus conventions; labels are bounded
//! (event type, error kind, topic role), never a customer id.

use std::time::Duration;

use crate::inference::drift::{DriftSpec, DriftWindow};
use crate::inference::features;
use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram, Counter, Gauge, Histogram};

use crate::event::{Channel, EventType, InvalidEvent};
use crate::output::{AlertRecord, ConversionRecord, ScoreRecord};

/// The `method` label of the credit counter: the five rules, then deep credit.
pub const CREDIT_METHODS: [&str; 6] = ["time_decay", "last_touch", "first_touch", "linear", "position_based", "deep"];

/// A commit whose foreground took longer than this gets a debug line saying where the time went
/// (a quarter of the default commit interval: a snapshot's commit shows).
pub const SLOW_COMMIT: Duration = Duration::from_millis(25);

pub struct Telemetry {
    events: Vec<Counter>,
    invalid: Vec<Counter>,
    late: Counter,
    conversions: Counter,
    alerts: Counter,
    alerts_safety_net: Counter,
    /// Channel x method (`CREDIT_METHODS`).
    credited: Vec<Counter>,
    alert_probability: Histogram,
    score_purchase: Histogram,
    score_abandon: Histogram,
    window_updates: Counter,
    late_window_drops: Gauge,
    batch_seconds: Histogram,
    transaction_seconds: Histogram,
    batch_events: Histogram,
    commits: Counter,
    customers: Gauge,
    state_bytes: Gauge,
    partitions: Gauge,
    watermark_lag: Gauge,
    rebalances: Counter,
    aborts: Counter,
    restore_seconds: Histogram,
    alerts_model: Counter,
    scores: Counter,
    inference_step: Histogram,
    inference_deep: Histogram,
    inference_rows: Counter,
    inference_errors: Counter,
    deep_fallbacks: Counter,
    hidden_resets: Counter,
    registry_available: Gauge,
    /// Input partitions whose lag was last reported (to zero the ones this member lost).
    lag_partitions: std::sync::Mutex<Vec<i32>>,
    registry_paused: Gauge,
    registry_errors: Counter,
    schema_fetches: Counter,
    misrouted: Counter,
    misrouted_seen: std::sync::atomic::AtomicU64,
}

impl Default for Telemetry {
    fn default() -> Self {
        Self::new()
    }
}

impl Telemetry {
    pub fn new() -> Self {
        describe_counter!("touchstream_events_total", "Valid input events processed, by event type");
        describe_counter!("touchstream_replayed_events_total", "Input events replayed into restored state (from a snapshot to the committed offset)");
        describe_counter!("touchstream_invalid_events_total", "Input records sent to the DLQ, by error kind");
        describe_counter!("touchstream_late_events_total", "Events that arrived behind their partition's watermark");
        describe_counter!("touchstream_conversions_total", "Conversion records written");
        describe_counter!("touchstream_alerts_total", "Cart-abandonment alerts written");
        describe_counter!(
            "touchstream_credited_conversions_millis_total",
            "Conversions credited to each channel by each method, in thousandths of a conversion (channel shares = a channel's rate / the sum)"
        );
        describe_histogram!(
            "touchstream_score_probability",
            "Model probabilities: purchase and abandon on written scores (abandon with an open cart), alert_abandon on alerts"
        );
        describe_counter!("touchstream_channel_window_updates_total", "Channel window totals written");
        describe_gauge!("touchstream_late_window_contributions", "Contributions dropped because their window had closed");
        describe_histogram!("touchstream_commit_seconds", "Time to flush outputs and commit offsets");
        describe_histogram!(
            "touchstream_transaction_commit_seconds",
            "Of the commit, the time in the transaction's commit alone (offsets to the transaction, deliveries awaited, end of transaction)"
        );
        describe_histogram!("touchstream_batch_events", "Input records per committed batch");
        describe_counter!("touchstream_commits_total", "Offset commits");
        describe_gauge!("touchstream_customers", "Customers held in journey state");
        describe_gauge!("touchstream_state_bytes", "Approximate bytes of journey state");
        describe_gauge!("touchstream_assigned_partitions", "Input partitions owned by this member");
        describe_gauge!("touchstream_channel_aggregators_replaying", "Channel aggregators replaying their partials partition (no totals written yet)");
        describe_gauge!("touchstream_watermark_lag_seconds", "Wall clock minus the lowest partition watermark");
        describe_counter!("touchstream_rebalances_total", "Partition assignment changes");
        describe_counter!("touchstream_transaction_aborts_total", "Transactions aborted and redone");
        describe_histogram!("touchstream_restore_seconds", "Time to restore one partition's state from the changelog");
        describe_counter!("touchstream_scores_total", "Customer score records written to the scores topic");
        describe_histogram!("touchstream_inference_seconds", "Time per model call (step: one batched wave; deep: one conversion or alert)");
        describe_counter!("touchstream_inference_rows_total", "Rows (events, or journeys for deep credit) run through a model");
        describe_counter!("touchstream_inference_errors_total", "Model calls that failed (their events keep the previous scores)");
        describe_counter!("touchstream_deep_credit_fallbacks_total", "Conversions whose deep credit fell back to time decay");
        describe_counter!("touchstream_hidden_state_resets_total", "Customer hidden states reset because the step model's layout changed");
        describe_counter!("touchstream_model_reloads_total", "Model reloads, by result (loaded or rejected)");
        describe_gauge!("touchstream_registry_available", "1 unless the schema registry is needed and unavailable");
        describe_gauge!("touchstream_registry_paused_partitions", "Input partitions paused until the schema registry is back");
        describe_counter!("touchstream_registry_errors_total", "Failed schema-registry requests (retried)");
        describe_counter!("touchstream_registry_schema_fetches_total", "Writer schemas fetched from the registry (cache misses)");
        describe_gauge!("touchstream_consumer_lag", "Records of the input topic not yet consumed, per owned partition");
        describe_gauge!("touchstream_process_resident_bytes", "Resident memory of the process");
        describe_gauge!("touchstream_process_open_fds", "Open file descriptors of the process");
        describe_counter!("touchstream_input_misrouted_total", "Keyed input records on another partition than topics.partitioner gives for their key");
        describe_counter!("touchstream_duplicates_total", "Repeated events dropped (event_id already in the customer's state)");
        describe_counter!("touchstream_poison_records_total", "Input records isolated because a record they produce is larger than the broker accepts");
        describe_gauge!(
            "touchstream_model_drift_psi",
            "Population-stability index of a step-model feature: live sample vs the training log (above drift.psi_threshold, 0.2: retrain)"
        );
        describe_gauge!(
            "touchstream_model_drift_score_psi",
            "Population-stability index of a step-model output (P(purchase), P(abandon) with a cart open): live sample vs the training log"
        );
        describe_counter!("touchstream_model_swaps_total", "Promotions and rollbacks: the candidate and the active models changed roles");
        describe_gauge!("touchstream_shadow_auc", "Shadow comparison: AUC of realised outcomes, by role (active, candidate) and target");
        describe_gauge!("touchstream_shadow_log_loss", "Shadow comparison: log-loss of realised outcomes, by role and target");
        describe_gauge!("touchstream_shadow_calibration_error", "Shadow comparison: expected calibration error, by role and target");
        describe_gauge!("touchstream_shadow_outcomes", "Shadow comparison: predictions whose outcome is known, by target");
        describe_gauge!("touchstream_shadow_events", "Shadow comparison: events scored by both roles");
        describe_gauge!(
            "touchstream_shadow_credit_divergence",
            "Shadow comparison: mean total-variation distance of deep credit's channel shares per conversion"
        );
        describe_gauge!("touchstream_shadow_step_seconds_per_event", "Shadow comparison: step-model seconds per event, by role");
        describe_gauge!("touchstream_shadow_deep_seconds_per_conversion", "Shadow comparison: deep-credit seconds per conversion, by role");
        describe_gauge!("touchstream_model_drift_max_psi", "The largest touchstream_model_drift_psi or touchstream_model_drift_score_psi");
        describe_gauge!("touchstream_model_drift_sampled_events", "Sampled events in the drift window (1 in 8 scored events, latest 100 000)");
        describe_gauge!("touchstream_stalled", "1 while input waits and nothing has been committed for processing.stall_timeout");
        gauge!("touchstream_stalled").set(0.0);
        describe_gauge!("touchstream_stuck_partitions", "Input partitions that have not moved for processing.stall_timeout with records waiting");
        gauge!("touchstream_stuck_partitions").set(0.0);
        // Counters that move only on rare events exist from the start (dashboards, alert rules).
        counter!("touchstream_duplicates_total").absolute(0);
        counter!("touchstream_poison_records_total").absolute(0);
        describe_counter!("touchstream_erasures_total", "Erasure requests applied, by status (erased, not_found, invalid)");
        for status in ["erased", "not_found", "invalid"] {
            counter!("touchstream_erasures_total", "status" => status).absolute(0);
        }
        describe_counter!("touchstream_consumer_errors_total", "Errors the consumer reported instead of records, by librdkafka error code");
        let telemetry = Telemetry {
            events: EventType::ALL.iter().map(|t| counter!("touchstream_events_total", "event_type" => t.as_str())).collect(),
            invalid: InvalidEvent::KINDS.iter().map(|k| counter!("touchstream_invalid_events_total", "kind" => *k)).collect(),
            late: counter!("touchstream_late_events_total"),
            conversions: counter!("touchstream_conversions_total"),
            alerts: counter!("touchstream_alerts_total", "reason" => "inactivity_timeout"),
            alerts_model: counter!("touchstream_alerts_total", "reason" => "model"),
            alerts_safety_net: counter!("touchstream_alerts_total", "reason" => "safety_net"),
            credited: Channel::ALL
                .iter()
                .flat_map(|c| {
                    CREDIT_METHODS.iter().map(move |m| counter!("touchstream_credited_conversions_millis_total", "channel" => c.as_str(), "method" => *m))
                })
                .collect(),
            alert_probability: histogram!("touchstream_score_probability", "score" => "alert_abandon"),
            score_purchase: histogram!("touchstream_score_probability", "score" => "purchase"),
            score_abandon: histogram!("touchstream_score_probability", "score" => "abandon"),
            scores: counter!("touchstream_scores_total"),
            inference_step: histogram!("touchstream_inference_seconds", "model" => "step"),
            inference_deep: histogram!("touchstream_inference_seconds", "model" => "attribution"),
            inference_rows: counter!("touchstream_inference_rows_total", "model" => "step"),
            inference_errors: counter!("touchstream_inference_errors_total"),
            deep_fallbacks: counter!("touchstream_deep_credit_fallbacks_total"),
            hidden_resets: counter!("touchstream_hidden_state_resets_total"),
            window_updates: counter!("touchstream_channel_window_updates_total"),
            late_window_drops: gauge!("touchstream_late_window_contributions"),
            batch_seconds: histogram!("touchstream_commit_seconds"),
            transaction_seconds: histogram!("touchstream_transaction_commit_seconds"),
            batch_events: histogram!("touchstream_batch_events"),
            commits: counter!("touchstream_commits_total"),
            customers: gauge!("touchstream_customers"),
            state_bytes: gauge!("touchstream_state_bytes"),
            partitions: gauge!("touchstream_assigned_partitions"),
            watermark_lag: gauge!("touchstream_watermark_lag_seconds"),
            rebalances: counter!("touchstream_rebalances_total"),
            aborts: counter!("touchstream_transaction_aborts_total"),
            restore_seconds: histogram!("touchstream_restore_seconds"),
            registry_available: gauge!("touchstream_registry_available"),
            registry_paused: gauge!("touchstream_registry_paused_partitions"),
            registry_errors: counter!("touchstream_registry_errors_total"),
            schema_fetches: counter!("touchstream_registry_schema_fetches_total"),
            misrouted: counter!("touchstream_input_misrouted_total"),
            misrouted_seen: std::sync::atomic::AtomicU64::new(0),
            lag_partitions: std::sync::Mutex::new(Vec::new()),
        };
        // 1 until a registry that is needed fails (a JSON-only deployment never needs one).
        telemetry.registry_available.set(1.0);
        telemetry
    }

    #[inline]
    pub fn event(&self, t: EventType, late: bool) {
        self.events[t.index()].increment(1);
        if late {
            self.late.increment(1);
        }
    }

    pub fn invalid(&self, err: &InvalidEvent, topic: &str, partition: i32, offset: i64) {
        let i = InvalidEvent::KINDS.iter().position(|k| *k == err.kind()).unwrap_or(0);
        self.invalid[i].increment(1);
        tracing::warn!(kind = err.kind(), %topic, partition, offset, reason = %err, "invalid event sent to the DLQ");
    }

    /// A conversion written; its credit per channel and method goes to
    /// `touchstream_credited_conversions_millis_total` (thousandths of a conversion), from which a
    /// dashboard reads channel shares per method.
    #[inline]
    pub fn conversion(&self, c: &ConversionRecord) {
        self.conversions.increment(1);
        for t in &c.touchpoints {
            let row = t.channel.index() * CREDIT_METHODS.len();
            let rules = [t.time_decay, t.last_touch, t.first_touch, t.linear, t.position_based];
            for (m, credit) in rules.into_iter().chain(t.deep).enumerate() {
                self.credited[row + m].increment((credit * 1000.0).round().max(0.0) as u64);
            }
        }
    }

    /// An alert written, by reason; its P(abandon) goes to the score histogram.
    #[inline]
    pub fn alert(&self, a: &AlertRecord) {
        if let Some(p) = a.abandonment_probability {
            self.alert_probability.record(p);
        }
        match a.reason {
            "model" => self.alerts_model.increment(1),
            "safety_net" => self.alerts_safety_net.increment(1),
            _ => self.alerts.increment(1),
        }
    }

    /// Score records about to be written, and their distribution.
    /// An erasure request applied (`status`: erased, not_found, invalid).
    pub fn erased(&self, status: &'static str, partition: i32, offset: i64) {
        counter!("touchstream_erasures_total", "status" => status).increment(1);
        tracing::info!(status, partition, offset, "erasure request applied");
    }

    pub fn scores(&self, records: &[ScoreRecord]) {
        self.scores.increment(records.len() as u64);
        for r in records {
            self.score_purchase.record(r.purchase_probability);
            if r.cart_open {
                self.score_abandon.record(r.abandonment_probability);
            }
        }
    }

    /// Model work since the last report.
    pub fn inference(&self, s: &crate::engine::scoring::ScoringStats, durations: &[(bool, f32)]) {
        for &(deep, secs) in durations {
            if deep {
                self.inference_deep.record(f64::from(secs));
            } else {
                self.inference_step.record(f64::from(secs));
            }
        }
        self.inference_rows.increment(s.rows);
        self.inference_errors.increment(s.errors);
        self.deep_fallbacks.increment(s.deep_fallbacks);
        if s.resets > 0 {
            self.hidden_resets(s.resets);
        }
    }

    /// PSI per feature of the models' input over the drift window (when it has enough events), and
    /// one log line each time the largest crosses the model's threshold (up or down).
    pub fn drift(&self, window: &mut DriftWindow, spec: &DriftSpec, psi: &mut Vec<f64>) {
        gauge!("touchstream_model_drift_sampled_events").set(window.events() as f64);
        if !window.psi(spec, psi) {
            // not enough sampled events yet: unknown, not "no drift"
            gauge!("touchstream_model_drift_max_psi").set(f64::NAN);
            return;
        }
        let (mut max, mut worst) = (0.0f64, 0);
        for (i, &p) in psi.iter().enumerate() {
            let name = spec.names[i];
            if i < features::COUNT {
                gauge!("touchstream_model_drift_psi", "feature" => name).set(p);
            } else {
                gauge!("touchstream_model_drift_score_psi", "score" => name).set(p);
            }
            if p > max {
                (max, worst) = (p, i);
            }
        }
        gauge!("touchstream_model_drift_max_psi").set(max);
        let above = max > spec.threshold;
        if above != window.alarmed {
            window.alarmed = above;
            if above {
                tracing::warn!(psi = max, input = spec.names[worst], threshold = spec.threshold, version = %window.version, "live input has drifted from the models' training data: retraining is due");
            } else {
                tracing::info!(psi = max, threshold = spec.threshold, "live input is back within the models' training distribution");
            }
        }
    }

    pub fn hidden_resets(&self, n: u64) {
        tracing::warn!(customers = n, "the step model's hidden-state layout changed: these customers' hidden states were reset to zeros");
        self.hidden_resets.increment(n);
    }

    pub fn models_loaded(&self, version: &str, reload: bool) {
        tracing::info!(version, reload, "models loaded");
        if reload {
            counter!("touchstream_model_reloads_total", "result" => "loaded").increment(1);
        }
    }

    /// The candidate and the active models changed roles (a promotion or a rollback).
    pub fn models_swapped(&self, active: &str, candidate: &str, resets: u64) {
        tracing::warn!(
            active,
            candidate,
            hidden_states_reset = resets,
            "models swapped: the former candidate is active, the former active models run in shadow"
        );
        counter!("touchstream_model_swaps_total").increment(1);
    }

    /// The shadow comparison (`models.candidate`): quality per role and target, credit
    /// divergence and cost; labels are the bounded role and target names.
    pub fn shadow(&self, r: &crate::lifecycle::compare::Report) {
        use crate::inference::outcomes::ROLES;
        let nan = |v: Option<f64>| v.unwrap_or(f64::NAN);
        for t in &r.targets {
            let target = t.target.clone();
            gauge!("touchstream_shadow_outcomes", "target" => target.clone()).set(t.outcomes as f64);
            for (role, q) in ROLES.iter().zip([&t.active, &t.candidate]) {
                gauge!("touchstream_shadow_auc", "role" => *role, "target" => target.clone()).set(nan(q.auc));
                gauge!("touchstream_shadow_log_loss", "role" => *role, "target" => target.clone()).set(nan(q.log_loss));
                gauge!("touchstream_shadow_calibration_error", "role" => *role, "target" => target.clone()).set(nan(q.calibration_error));
            }
        }
        gauge!("touchstream_shadow_credit_divergence").set(nan(r.credit_divergence));
        gauge!("touchstream_shadow_events").set(r.events as f64);
        for (role, c) in ROLES.iter().zip(&r.cost) {
            gauge!("touchstream_shadow_step_seconds_per_event", "role" => *role).set(nan(c.step_us_per_event.map(|v| v / 1e6)));
            gauge!("touchstream_shadow_deep_seconds_per_conversion", "role" => *role).set(nan(c.deep_ms_per_conversion.map(|v| v / 1e3)));
        }
    }

    pub fn models_rejected(&self, error: &str) {
        tracing::error!(error, "new models rejected; the current models keep serving");
        counter!("touchstream_model_reloads_total", "result" => "rejected").increment(1);
    }

    pub fn window_updates(&self, n: usize) {
        self.window_updates.increment(n as u64);
    }

    /// Where a commit's foreground time went (cumulative at the end of each phase: timers, outputs,
    /// scores, snapshots of `snapshotted` partitions, channel windows; of the snapshots, the
    /// encoding of their `changelog_records`): a debug line when it took longer than
    /// [`SLOW_COMMIT`].
    pub fn commit_phases(&self, phases: &[Duration; 5], snapshotted: usize, encoding: Duration, changelog_records: usize) {
        if phases[4] >= SLOW_COMMIT {
            let ms = |d: Duration| d.as_millis() as u64;
            let [timers, outputs, scores, snapshots, windows] = phases.map(ms);
            let encoding_ms = ms(encoding);
            tracing::debug!(
                timers,
                outputs,
                scores,
                snapshots,
                windows,
                snapshotted,
                encoding_ms,
                changelog_records,
                "slow commit: cumulative ms at the end of each phase"
            );
        }
    }

    /// A batch committed: `took` for the whole commit, `transaction` of it in the transaction's
    /// own commit (none without transactions).
    pub fn committed(&self, events: usize, took: Duration, transaction: Option<Duration>) {
        self.commits.increment(1);
        self.batch_seconds.record(took.as_secs_f64());
        if let Some(t) = transaction {
            self.transaction_seconds.record(t.as_secs_f64());
        }
        self.batch_events.record(events as f64);
        tracing::debug!(events, took_ms = took.as_millis() as u64, "batch committed");
    }

    pub fn state(&self, customers: usize, bytes: usize, partitions: usize, watermark_lag_ms: Option<i64>, late_window_drops: u64) {
        self.customers.set(customers as f64);
        self.state_bytes.set(bytes as f64);
        self.partitions.set(partitions as f64);
        self.late_window_drops.set(late_window_drops as f64);
        if let Some(lag) = watermark_lag_ms {
            self.watermark_lag.set(lag as f64 / 1000.0);
        }
    }

    pub fn assigned(&self, partitions: &[(String, i32)]) {
        self.rebalances.increment(1);
        tracing::info!(count = partitions.len(), partitions = %partition_list(partitions), "partitions assigned");
    }

    pub fn revoked(&self, partitions: &[(String, i32)]) {
        self.rebalances.increment(1);
        tracing::info!(count = partitions.len(), partitions = %partition_list(partitions), "partitions revoked; their state is dropped");
    }

    pub fn aborted(&self, why: &str) {
        self.aborts.increment(1);
        tracing::warn!(%why, "transaction aborted; state reloaded from the changelog and input rewound to the last commit");
    }

    /// Work since the last commit was dropped with no transaction open (e.g. outputs still in
    /// memory when partitions were revoked): nothing to abort, the same rewind.
    pub fn rewound(&self, why: &str) {
        tracing::info!(%why, "work since the last commit dropped; state reloaded from the changelog and input rewound to the last commit");
    }

    pub fn restored(&self, partition: i32, customers: usize, took: Duration) {
        self.restore_seconds.record(took.as_secs_f64());
        tracing::info!(partition, customers, took_ms = took.as_millis() as u64, "partition state restored from the changelog");
    }

    /// Restored partitions were brought from their snapshot to the committed offset by a replay
    /// of their input (`events` events, outputs dropped).
    pub fn replayed(&self, partitions: &[i32], events: u64, took: Duration) {
        counter!("touchstream_replayed_events_total").increment(events);
        tracing::info!(?partitions, events, took_ms = took.as_millis() as u64, "input replayed from the snapshots to the committed offsets");
    }

    /// The input a replay needs is gone (retention shorter than `processing.snapshot_interval`
    /// and the time to restore): the state misses the events between `from` and `low`.
    pub fn replay_gap(&self, partition: i32, from: i64, low: i64) {
        counter!("touchstream_replay_gaps_total").increment(1);
        tracing::error!(partition, from, low, "input since the snapshot is partly deleted: the restored state misses those events");
    }

    /// A changelog restore made no progress for `after`: it starts over with a new client.
    pub fn restore_stalled(&self, partitions: usize, after: Duration) {
        counter!("touchstream_restore_stalls_total").increment(1);
        tracing::warn!(partitions, after_s = after.as_secs(), "changelog restore stalled; replacing the restore client and reading again");
    }

    pub fn rebalance_failed(&self, message: &str) {
        tracing::error!(%message, "rebalance failed");
    }

    /// An error the consumer reported instead of a record (`kind`: librdkafka's error code name,
    /// a bounded set).
    pub fn consumer_error(&self, error: &rdkafka::error::KafkaError, context: &str) {
        let kind = error.rdkafka_error_code().map(|c| format!("{c:?}")).unwrap_or_else(|| "Other".into());
        counter!("touchstream_consumer_errors_total", "kind" => kind).increment(1);
        tracing::warn!(%error, context, "consumer error");
    }

    /// The registry is needed and failed: `paused` partitions wait, the next try is in `retry_in`.
    pub fn registry_unavailable(&self, error: &str, paused: usize, retry_in: Duration) {
        self.registry_errors.increment(1);
        self.registry_available.set(0.0);
        self.registry_paused.set(paused as f64);
        tracing::warn!(%error, paused_partitions = paused, retry_in_ms = retry_in.as_millis() as u64, "schema registry unavailable; retrying with backoff (input partitions that need it wait, paused)");
    }

    pub fn registry_recovered(&self, resumed: usize) {
        self.registry_available.set(1.0);
        self.registry_paused.set(0.0);
        tracing::info!(resumed_partitions = resumed, "schema registry available again; consumption resumed");
    }

    /// Records of the input topic not yet consumed, per owned partition (librdkafka statistics).
    pub fn consumer_lag(&self, lag: impl Iterator<Item = (i32, i64)>) {
        let mut reported = self.lag_partitions.lock().expect("lag lock");
        let now: Vec<(i32, i64)> = lag.collect();
        for p in reported.iter().filter(|p| !now.iter().any(|(q, _)| q == *p)) {
            gauge!("touchstream_consumer_lag", "partition" => p.to_string()).set(0.0);
        }
        for (p, l) in &now {
            gauge!("touchstream_consumer_lag", "partition" => p.to_string()).set(*l as f64);
        }
        *reported = now.into_iter().map(|(p, _)| p).collect();
    }

    /// The process's resident memory and open file descriptors (Linux /proc; absent elsewhere).
    pub fn process(&self) {
        if let Some(bytes) = resident_bytes(None) {
            gauge!("touchstream_process_resident_bytes").set(bytes as f64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            gauge!("touchstream_process_open_fds").set(dir.count() as f64);
        }
    }

    /// Channel aggregators still replaying their partials partition (writing no totals yet).
    pub fn aggregators_replaying(&self, n: usize) {
        gauge!("touchstream_channel_aggregators_replaying").set(n as f64);
    }

    /// Input partitions that have not moved for the stall timeout with records waiting.
    pub fn stuck_partitions(&self, n: usize) {
        gauge!("touchstream_stuck_partitions").set(n as f64);
    }

    /// A repeated event dropped.
    pub fn duplicate(&self) {
        counter!("touchstream_duplicates_total").increment(1);
    }

    /// A record whose own transaction was too large for the broker: dead-lettered and skipped.
    pub fn poison_isolated(&self, partition: i32, offset: i64) {
        counter!("touchstream_poison_records_total").increment(1);
        tracing::error!(partition, offset, "an input record produces a record larger than the broker accepts: sent to the DLQ (too_large) and skipped");
    }

    /// The replica could not commit while input was waiting for `processing.stall_timeout` (or recovered).
    pub fn stalled(&self, stalled: bool, since: Duration) {
        gauge!("touchstream_stalled").set(if stalled { 1.0 } else { 0.0 });
        if stalled {
            tracing::error!(seconds = since.as_secs(), "no progress: input is waiting and nothing was committed; /readyz reports not ready");
        } else {
            tracing::info!("progress again: /readyz follows readiness as usual");
        }
    }

    pub fn registry_up(&self) {
        self.registry_available.set(1.0);
    }

    pub fn schema_fetched(&self, n: u64) {
        self.schema_fetches.increment(n);
    }

    /// A keyed input record on another partition than `topics.partitioner` gives for its key: the
    /// producers partition differently, so erasure requests miss their customer (logged on the
    /// first and then every 10 000th).
    pub fn misrouted(&self, partition: i32, expected: i32, partitioner: &'static str) {
        self.misrouted.increment(1);
        let n = self.misrouted_seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n % 10_000 == 0 {
            tracing::warn!(
                partition,
                expected,
                partitioner,
                seen = n + 1,
                "an input record's key maps to another partition under topics.partitioner: set it to the event producers' partitioner (erasure requests rely on it)"
            );
        }
    }

    pub fn bad_partial(&self, partition: i32, offset: i64, message: &str) {
        tracing::error!(partition, offset, %message, "unreadable record on the internal partials topic; skipped");
    }
}

/// `topic:0,1,2` per topic (one field in JSON logs a log query can split), instead of a Debug list.
/// Resident memory of a process, this one when `pid` is None (Linux `/proc/<pid>/status`, VmRSS;
/// None elsewhere).
pub fn resident_bytes(pid: Option<u32>) -> Option<u64> {
    let path = pid.map_or_else(|| "/proc/self/status".to_string(), |p| format!("/proc/{p}/status"));
    let status = std::fs::read_to_string(path).ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(kb * 1024)
}

fn partition_list(partitions: &[(String, i32)]) -> String {
    let mut out = String::new();
    let mut topic: Option<&str> = None;
    for (t, p) in partitions {
        if topic != Some(t.as_str()) {
            if topic.is_some() {
                out.push(' ');
            }
            out.push_str(t);
            out.push(':');
            topic = Some(t);
        } else {
            out.push(',');
        }
        out.push_str(&p.to_string());
    }
    out
}
