//! The processing of one input partition: a deterministic function of (state, events in partition
//! order) -> (state, outputs). No I/O happens here; the runner feeds events and ships outputs.
//!
//! With models, every event also goes through the journey step model. Events wait in a small
//! queue and run in batched waves ([`scoring`]); the queue is flushed whenever a decision needs a
//! score (an inactivity check, an alert, an erasure, an expiry), when it is full, and before the
//! runner drains state, so every output sees exactly the scores of an unbatched run. A purchase's
//! conversion waits for the queue's next run instead (`conversions.rs`).

mod conversions;
pub mod erasure;
mod model_swap;
#[cfg(test)]
mod model_tests;
pub mod scoring;
pub mod shadow;
mod state_io;
#[cfg(test)]
mod tests;

pub use state_io::{encode_customers, Unsaved};

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::alerts;
use crate::attribution::conversion::{self, Scratch};
use crate::attribution::windows::ChannelWindows;
use crate::changelog::PartitionMeta;
use crate::config::{ActionTier, Config};
use crate::event::{Channel, Event, EventType};
use crate::inference::features;
use crate::inference::step::{EXPECTED_VALUE, P_ABANDON, P_PURCHASE};
use crate::inference::ModelSet;
use crate::journey::dedupe::SeenIds;
use crate::journey::{Campaigns, Cart, CustomerState};
use crate::output::{AlertRecord, ChannelWindowRecord, ConversionRecord, ScoreRecord};
use crate::time::{Millis, Watermark};
use scoring::{Scoring, ScoringStats};

/// The settings the engine reads, in milliseconds.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub lookback: Millis,
    pub max_touchpoints: usize,
    /// Event ids remembered per customer to drop repeats (0: off).
    pub dedupe_ids: usize,
    pub customer_ttl: Millis,
    pub half_life: Millis,
    pub window: Millis,
    pub window_retention: Millis,
    pub target_delay: Millis,
    /// 0: off.
    pub safety_net: Millis,
    pub model_check: Millis,
    pub abandon_threshold: Option<f64>,
    pub recovery_rate: f64,
    pub actions: Arc<[ActionTier]>,
    pub allowed_lateness: Millis,
    pub scores_min_change: f64,
    /// The models, when enabled (see [`EngineConfig::with_models`]).
    pub models: Option<Arc<ModelSet>>,
    /// Candidate models scored in shadow (`models.candidate`).
    pub candidate: Option<Arc<ModelSet>>,
}

impl EngineConfig {
    pub fn from_config(c: &Config) -> Self {
        EngineConfig {
            lookback: c.journey.lookback.ms(),
            max_touchpoints: c.journey.max_touchpoints,
            dedupe_ids: c.journey.dedupe_ids,
            customer_ttl: c.journey.customer_ttl.ms(),
            half_life: c.attribution.time_decay_half_life.ms(),
            window: c.attribution.window.ms(),
            window_retention: c.attribution.window_retention.ms(),
            target_delay: c.alerts.target_delay.ms(),
            safety_net: c.alerts.safety_net.ms(),
            model_check: c.alerts.model_check.ms(),
            abandon_threshold: c.alerts.abandon_threshold,
            recovery_rate: c.alerts.recovery_rate,
            actions: c.alerts.actions.clone().into(),
            allowed_lateness: c.event_time.allowed_lateness.ms(),
            scores_min_change: c.scores.min_change,
            models: None,
            candidate: None,
        }
    }

    pub fn with_models(mut self, models: Option<Arc<ModelSet>>) -> Self {
        self.models = models;
        self
    }

    pub fn with_candidate(mut self, candidate: Option<Arc<ModelSet>>) -> Self {
        self.candidate = candidate;
        self
    }
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig::from_config(&Config::defaults())
    }
}

/// What the engine emits for the runner to write.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Conversion(ConversionRecord),
    Alert(AlertRecord),
}

/// Per-event facts for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Processed {
    /// The event was behind the watermark when it arrived.
    pub late: bool,
    /// The customer's state already holds this event id: nothing changed.
    pub duplicate: bool,
}

/// A partition's customers by id. The state is boxed: a map slot then holds 24 bytes, not the
/// state's ~300, and the slots a hash map keeps empty (about half of them right after it grows)
/// cost that much less; ~310 bytes per customer at 1,000,000 customers.
pub type Customers = HashMap<Box<str>, Box<CustomerState>, RandomState>;

/// All state of one input partition.
#[derive(Debug)]
pub struct PartitionEngine {
    partition: i32,
    cfg: EngineConfig,
    customers: Customers,
    /// Lazy cart timers: (when something may be due, customer). A popped timer whose cart moved
    /// on is re-armed at the cart's next due time or dropped.
    timers: BinaryHeap<Reverse<(Millis, Box<str>)>>,
    windows: ChannelWindows,
    /// The campaign names this partition's touchpoints share.
    campaigns: Campaigns,
    watermark: Watermark,
    seq: u64,
    next_sweep: Millis,
    scratch: Scratch,
    scoring: Option<Scoring>,
    /// Conversions waiting for their purchase's score.
    conversions: conversions::PendingConversions,
    /// When carts alert, for the models in `scoring`.
    policy: alerts::Policy,
    /// Customers changed since the last changelog drain.
    changed: Vec<Box<str>>,
    /// Customers forgotten since the last changelog drain.
    forgotten: Vec<Box<str>>,
    /// Customers whose record in the scores topic must be tombstoned (erased, or expired after
    /// a score was written).
    score_tombstones: Vec<Box<str>>,
    /// The next offset of this partition of the erasure topic to apply.
    erasure_offset: i64,
    closed_windows: Vec<(Millis, Channel)>,
    meta_written: Option<PartitionMeta>,
    /// What the next snapshot writes, and the input offset of the last one (state_io.rs).
    snap: state_io::Snapshots,
    /// Events that arrived behind the watermark.
    pub late_events: u64,
    /// Customers forgotten after the TTL.
    pub expired_customers: u64,
}

/// The alert policy for `scoring`'s models; a policy that does not resolve (checked at start and
/// before a reload, so not expected here) leaves the rule alone.
fn policy_for(cfg: &EngineConfig, scoring: Option<&Scoring>, partition: i32) -> alerts::Policy {
    alerts::Policy::resolve(cfg, scoring.map(|s| &*s.set)).unwrap_or_else(|e| {
        tracing::error!(error = %e, partition, "no alert policy for these models; only the rule alerts");
        alerts::Policy { checks: Vec::new(), rule: Some((cfg.safety_net.max(cfg.target_delay), "safety_net")) }
    })
}

impl PartitionEngine {
    pub fn new(partition: i32, cfg: EngineConfig) -> Self {
        let scoring = cfg.models.as_ref().and_then(|m| match Scoring::new(m.clone(), cfg.candidate.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, partition, "cannot run the models; this partition runs rules only");
                None
            }
        });
        let mut windows = ChannelWindows::new(cfg.window, cfg.window_retention);
        windows.deep = scoring.is_some();
        let policy = policy_for(&cfg, scoring.as_ref(), partition);
        PartitionEngine {
            policy,
            partition,
            windows,
            watermark: Watermark::new(cfg.allowed_lateness),
            cfg,
            customers: HashMap::default(),
            timers: BinaryHeap::new(),
            campaigns: Campaigns::default(),
            seq: 0,
            next_sweep: Millis::MIN,
            scratch: Scratch::default(),
            scoring,
            conversions: Default::default(),
            changed: Vec::new(),
            forgotten: Vec::new(),
            score_tombstones: Vec::new(),
            erasure_offset: 0,
            closed_windows: Vec::new(),
            meta_written: None,
            snap: state_io::Snapshots::default(),
            late_events: 0,
            expired_customers: 0,
        }
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn watermark(&self) -> Millis {
        self.watermark.current()
    }

    pub fn customers(&self) -> usize {
        self.customers.len()
    }

    pub fn customer(&self, id: &str) -> Option<&CustomerState> {
        self.customers.get(id).map(|c| &**c)
    }

    pub fn windows(&self) -> &ChannelWindows {
        &self.windows
    }

    /// The models this engine runs.
    pub fn models(&self) -> Option<&Arc<ModelSet>> {
        self.scoring.as_ref().map(|s| &s.set)
    }

    /// Moves this partition's drift sample into `window` (the loop's, over all partitions).
    pub fn take_drift(&mut self, window: &mut crate::inference::drift::DriftWindow) {
        if let Some(s) = self.scoring.as_mut() {
            if let Some(spec) = &s.set.step.drift {
                window.absorb(&s.set.version, spec, &mut s.drift);
            }
        }
    }

    /// Model counters and per-call durations since the last call (`durations` is cleared first).
    pub fn take_scoring_stats(&mut self, durations: &mut Vec<(bool, f32)>) -> ScoringStats {
        durations.clear();
        match self.scoring.as_mut() {
            Some(s) => {
                durations.append(&mut s.durations);
                std::mem::take(&mut s.stats)
            }
            None => ScoringStats::default(),
        }
    }

    fn mark_changed(&mut self, key: &str) {
        if let Some(c) = self.customers.get_mut(key) {
            if !c.queued {
                c.queued = true;
                c.changed_idx = self.changed.len() as u32;
                self.changed.push(key.into());
            }
        }
    }

    /// Runs the step model on every pending event.
    pub fn flush(&mut self) {
        if let Some(s) = &mut self.scoring {
            s.flush(&mut self.customers, &self.changed);
        }
    }

    /// Runs the customer's pending events, if any: as many waves as it has (the other customers'
    /// events fill the same calls; their later events stay queued).
    fn flush_for(&mut self, key: &str) {
        let waves = self.customers.get(key).map_or(0, |c| c.pending);
        if let (true, Some(s)) = (waves > 0, &mut self.scoring) {
            s.flush_waves(&mut self.customers, &self.changed, waves);
        }
    }

    /// When the customer's open cart may next need attention: the model's next inactivity check
    /// or the timeout rule.
    fn next_due(&self, cart: &Cart) -> Option<Millis> {
        alerts::next_due(&self.policy, cart)
    }

    /// Processes one valid event of this partition.
    pub fn process(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) -> Processed {
        let id = SeenIds::hash(&ev.event_id);
        if self.cfg.dedupe_ids > 0 && self.customers.get(ev.customer_id.as_ref()).is_some_and(|c| c.seen.contains(id)) {
            return Processed { late: false, duplicate: true };
        }
        let late = self.watermark.is_late(ev.ts);
        if late {
            self.late_events += 1;
        }
        self.seq += 1;
        let wm = self.watermark.current();

        let key: &str = ev.customer_id.as_ref();
        if !self.customers.contains_key(key) {
            self.customers.insert(key.into(), Box::new(CustomerState::new(ev.ts)));
        }
        self.mark_changed(key);

        // The customer's own next event shows (in event time) whether the cart sat idle long
        // enough for the model's check or the timeout, whatever the watermark says; and checks
        // the watermark has passed run before any of the customer's events is applied, even a
        // late one (due timers may still be waiting for the step model's queue, see `on_watermark`).
        self.due_checks(key, ev.ts.max(wm), out);

        let conversion_tag = self.next_conversion_tag();
        let cfg = &self.cfg;
        let customer = self.customers.get_mut(key).expect("present");
        // The timers hold, for every open cart, an entry at or before its next due time; an event
        // that brings that time forward (a cart opens, or the customer returns to a cart whose
        // checks had all run) arms a new one below.
        let due_before = customer.cart.as_ref().filter(|c| !c.alerted).and_then(|c| alerts::next_due(&self.policy, c));
        let prev_ts = customer.last_event_ts;
        customer.touch(ev);
        customer.seen.insert(id, cfg.dedupe_ids);
        let mut conversion = None;
        match ev.event_type {
            t if t.is_touchpoint() => {
                customer.add_touchpoint(ev, &mut self.campaigns, cfg.lookback, cfg.max_touchpoints);
                self.windows.add_touchpoint(ev.ts, ev.channel.unwrap_or(Channel::Other), wm);
            }
            EventType::CartAdd | EventType::CartRemove | EventType::CheckoutStart => {
                customer.apply_cart(ev);
            }
            EventType::Purchase => {
                conversion = Some(conversion::convert(ev, customer, cfg, &mut self.scratch, self.scoring.as_mut()));
            }
            _ => {}
        }
        if let Some(due) = customer.cart.as_ref().filter(|c| !c.alerted).and_then(|c| alerts::next_due(&self.policy, c)) {
            if due_before.map_or(true, |before| due < before) {
                self.timers.push(Reverse((due, key.into())));
            }
        }
        if let Some(s) = &mut self.scoring {
            let gap = if customer.counters.events == 1 { 0 } else { (ev.ts - prev_ts).max(0) };
            let session = features::session_hash(ev.session_id.as_deref());
            let new_session = features::new_session(session, customer.prev_session, gap);
            customer.prev_session = session;
            let input = scoring::step_input(customer, ev.ts, ev.event_type, ev.channel, ev.value, gap, new_session);
            // a purchase's conversion waits for the step model's output for it (its expected
            // future value): `conversions.rs`
            let tag = if conversion.is_some() { conversion_tag } else { scoring::NO_CONVERSION };
            s.enqueue(customer, &input, tag);
        }
        if let Some(record) = conversion {
            self.conversion(record, wm, out);
        }
        if let Some(s) = &mut self.scoring {
            if s.pending() >= s.flush_at {
                self.flush();
            } else if s.first_wave_full() {
                s.flush_waves(&mut self.customers, &self.changed, 1);
            }
        }
        self.complete_conversions(out);

        self.watermark.observe(ev.ts);
        self.on_watermark(out);
        Processed { late, duplicate: false }
    }

    /// Runs the cart's model checks and rule that are due at `now` (event time), in time order;
    /// returns when the cart next needs attention if it is still open and has not alerted.
    fn due_checks(&mut self, key: &str, now: Millis, out: &mut Vec<Output>) -> Option<Millis> {
        loop {
            let cart = self.customers.get(key).and_then(|c| c.cart.as_ref())?;
            if cart.alerted {
                return None;
            }
            let rule = alerts::deadline(&self.policy, cart);
            match alerts::next_check(&self.policy, cart) {
                Some((at, k)) if at <= now && rule.map_or(true, |(deadline, _)| at <= deadline) => self.model_check(key, at, k, out),
                _ => match rule {
                    Some((deadline, reason)) if deadline <= now => {
                        self.alert(key, deadline, reason, out);
                        return None;
                    }
                    _ => return self.next_due(cart),
                },
            }
        }
    }

    /// The policy's inactivity check `k` of the customer's open cart: alert when P(abandon) for
    /// this inactivity (the re-check head's column, or `p_abandon`) reaches the check's threshold.
    fn model_check(&mut self, key: &str, check_at: Millis, k: usize, out: &mut Vec<Output>) {
        self.flush_for(key);
        let check = self.policy.checks[k];
        let Some(customer) = self.customers.get_mut(key) else { return };
        let p = customer.model.as_ref().map(|m| f64::from(alerts::abandon_probability(m, check.column)));
        let Some(cart) = customer.cart.as_mut() else { return };
        cart.model_checked = cart.last_activity_ts;
        cart.checks_done = u8::try_from(k + 1).unwrap_or(u8::MAX);
        self.mark_changed(key);
        if p.is_some_and(|p| p >= check.threshold) {
            self.alert(key, check_at, "model", out);
        }
    }

    fn alert(&mut self, key: &str, alert_ts: Millis, reason: &'static str, out: &mut Vec<Output>) {
        self.flush_for(key);
        self.mark_changed(key);
        let customer = self.customers.get_mut(key).expect("present");
        out.push(Output::Alert(alerts::build_alert(key, customer, (alert_ts, reason), &self.cfg, &self.policy, &mut self.scratch, self.scoring.as_mut())));
    }

    /// No input for the idle period: move the watermark to wall clock minus the allowed lateness.
    /// What it fires or forgets depends on the wall clock, which a replay of the input would not
    /// see again: such a commit is a snapshot.
    pub fn advance_idle(&mut self, wall_now: Millis, out: &mut Vec<Output>) {
        if self.watermark.advance_idle(wall_now) {
            let before = (out.len(), self.changed.len(), self.forgotten.len());
            self.settle(out);
            self.snap.force |= before != (out.len(), self.changed.len(), self.forgotten.len());
        }
    }

    /// Runs the queued events and fires every timer due at the watermark (the runner calls it
    /// before each commit, so no due check waits past a commit).
    pub fn settle(&mut self, out: &mut Vec<Output>) {
        self.flush();
        self.complete_conversions(out);
        debug_assert_eq!(self.conversions.len(), 0, "a settled queue leaves no conversion waiting");
        self.on_watermark(out);
    }

    /// Records for the channel windows changed since the last call.
    pub fn drain_changed_windows(&mut self, out: &mut Vec<ChannelWindowRecord>) {
        self.windows.drain_changed(self.partition, self.watermark.current(), out, &mut self.closed_windows);
    }

    /// Customers changed since the last drain (score records and the changelog's notes).
    pub fn changed_customers(&self) -> usize {
        self.changed.len()
    }

    /// Score records for the customers whose scores moved by more than `scores.min_change`
    /// since they were last written (call before [`Self::drain_changelog`]).
    pub fn drain_scores(&mut self, out: &mut Vec<ScoreRecord>) {
        self.flush();
        let Some(s) = &self.scoring else { return };
        let min = self.cfg.scores_min_change as f32;
        for key in &self.changed {
            let Some(c) = self.customers.get_mut(key) else { continue };
            let cart_open = c.cart.is_some();
            let Some(m) = c.model.as_mut() else { continue };
            let moved = match m.written {
                None => true,
                Some(w) => {
                    (m.scores[P_PURCHASE] - w[P_PURCHASE]).abs() > min
                        || (m.scores[P_ABANDON] - w[P_ABANDON]).abs() > min
                        || (m.scores[EXPECTED_VALUE] - w[EXPECTED_VALUE]).abs() > min * w[EXPECTED_VALUE].abs().max(1.0)
                }
            };
            if moved {
                m.written = Some(m.scores);
                out.push(ScoreRecord {
                    customer_id: key.to_string(),
                    ts: m.scored_ts,
                    purchase_probability: f64::from(m.scores[P_PURCHASE]),
                    abandonment_probability: f64::from(m.scores[P_ABANDON]),
                    cart_open,
                    expected_value: f64::from(m.scores[EXPECTED_VALUE]),
                    model_version: s.set.version.to_string(),
                });
            }
        }
    }

    /// Fires the timers due at the watermark and sweeps out expired customers.
    ///
    /// With models, due timers wait while events are queued for the step model, until the queue
    /// next runs (full, a purchase, the customer's own next event, an idle partition): a check
    /// reads only its own customer's state, which no other customer's event changes, and the
    /// customer's own next event runs its due checks before it is applied (`due_checks` in
    /// `process`). Firing them later gives the same outputs (their order among the batch's
    /// outputs may differ), and checks no longer cut the queue into waves of a few rows.
    fn on_watermark(&mut self, out: &mut Vec<Output>) {
        let wm = self.watermark.current();
        let sweep = wm >= self.next_sweep;
        if !sweep {
            let due = self.timers.peek().is_some_and(|Reverse((at, _))| *at <= wm);
            if !due || self.scoring.as_ref().is_some_and(|s| s.pending() > 0) {
                return;
            }
        }
        // before a sweep every due timer fires, so no cart's check waits past its customer's
        // expiry (and what expires does not depend on when the models last ran)
        if !sweep || self.expiring_with_work(wm) {
            self.flush();
        }
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > wm {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            let Some(next) = self.due_checks(&key, wm, out) else { continue };
            self.timers.push(Reverse((next, key)));
        }
        self.complete_conversions(out);
        if wm >= self.next_sweep {
            self.expire(wm);
            let step = (self.cfg.customer_ttl / 24).clamp(60_000, 3_600_000);
            self.next_sweep = wm.saturating_add(step);
        }
    }

    /// Whether a customer about to expire has queued events or an open cart that has not alerted.
    fn expiring_with_work(&self, wm: Millis) -> bool {
        let horizon = wm.saturating_sub(self.cfg.customer_ttl);
        self.customers.values().any(|c| c.last_event_ts < horizon && (c.pending > 0 || c.cart.as_ref().is_some_and(|cart| !cart.alerted)))
    }

    /// Forgets customers idle longer than the TTL (event time).
    fn expire(&mut self, wm: Millis) {
        let horizon = wm.saturating_sub(self.cfg.customer_ttl);
        // (the queue ran just before, in `on_watermark`: what expires does not depend on when
        // the models last ran)
        let before = self.customers.len();
        let first_forgotten = self.forgotten.len();
        let (forgotten, score_tombstones) = (&mut self.forgotten, &mut self.score_tombstones);
        self.customers.retain(|k, c| {
            let keep = c.last_event_ts >= horizon;
            if !keep {
                forgotten.push(k.clone());
                if c.model.as_ref().is_some_and(|m| m.written.is_some()) {
                    score_tombstones.push(k.clone());
                }
            }
            keep
        });
        self.expired_customers += (before - self.customers.len()) as u64;
        if let Some(sh) = self.scoring.as_mut().and_then(|s| s.shadow.as_mut()) {
            self.forgotten[first_forgotten..].iter().for_each(|k| sh.forget(k));
        }
    }
}
