//! The processing of one input partition: a deterministic function of (state, events in partition
//! order) -> (state, outputs). No I/O happens here; the runner feeds events and ships outputs.
//!
//! With models, every event also goes through the journey step model. Events wait in a small
//! queue and run in batched waves ([`scoring`]); the queue is flushed whenever a decision needs a
//! score (a purchase, an inactivity check, a timeout alert), when it is full, and before the
//! runner drains state, so every output sees exactly the scores of an unbatched run.

pub mod scoring;
#[cfg(test)]
mod model_tests;

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Arc;

use foldhash::fast::RandomState;

use crate::attribution::credits::{self, Credits};
use crate::attribution::windows::ChannelWindows;
use crate::changelog::{self, ChangelogEntry, ChangelogKey, PartitionMeta, RestoreError};
use crate::config::{ActionTier, Config};
use crate::event::{Channel, Event, EventType};
use crate::inference::features;
use crate::inference::step::{EXPECTED_VALUE, P_ABANDON, P_PURCHASE};
use crate::inference::ModelSet;
use crate::journey::{Cart, CustomerState, ModelState};
use crate::output::WindowNumbers;
use crate::output::{AlertRecord, CartItem, ChannelWindowRecord, ConversionRecord, CreditedTouchpoint, ScoreRecord, TopTouchpoint};
use crate::time::{Millis, Watermark};
use scoring::{Scoring, ScoringStats};

/// The settings the engine reads, in milliseconds.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub lookback: Millis,
    pub max_touchpoints: usize,
    pub customer_ttl: Millis,
    pub half_life: Millis,
    pub window: Millis,
    pub window_retention: Millis,
    pub inactivity_timeout: Millis,
    pub model_check: Millis,
    pub abandon_threshold: f64,
    pub last_check_threshold: f64,
    pub actions: Arc<[ActionTier]>,
    pub allowed_lateness: Millis,
    pub scores_min_change: f64,
    /// The models, when enabled (see [`EngineConfig::with_models`]).
    pub models: Option<Arc<ModelSet>>,
}

impl EngineConfig {
    pub fn from_config(c: &Config) -> Self {
        EngineConfig {
            lookback: c.journey.lookback.ms(),
            max_touchpoints: c.journey.max_touchpoints,
            customer_ttl: c.journey.customer_ttl.ms(),
            half_life: c.attribution.time_decay_half_life.ms(),
            window: c.attribution.window.ms(),
            window_retention: c.attribution.window_retention.ms(),
            inactivity_timeout: c.alerts.inactivity_timeout.ms(),
            model_check: c.alerts.model_check.ms(),
            abandon_threshold: c.alerts.abandon_threshold,
            last_check_threshold: c.alerts.last_check_threshold,
            actions: c.alerts.actions.clone().into(),
            allowed_lateness: c.event_time.allowed_lateness.ms(),
            scores_min_change: c.scores.min_change,
            models: None,
        }
    }

    pub fn with_models(mut self, models: Option<Arc<ModelSet>>) -> Self {
        self.models = models;
        self
    }

    /// The first matching `recommended_action` tier.
    fn action(&self, probability: Option<f64>, cart_value: f64) -> String {
        let p = probability.unwrap_or(0.0);
        self.actions
            .iter()
            .find(|t| (probability.is_some() || t.min_probability == 0.0) && p >= t.min_probability && cart_value >= t.min_cart_value)
            .map_or_else(|| "reminder".to_string(), |t| t.action.clone())
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
}

#[derive(Debug, Default)]
struct Scratch {
    ts: Vec<Millis>,
    idx: Vec<usize>,
    credits: Vec<Credits>,
    decay: Vec<f64>,
    deep: Vec<f64>,
}

/// All state of one input partition.
#[derive(Debug)]
pub struct PartitionEngine {
    partition: i32,
    cfg: EngineConfig,
    customers: HashMap<Box<str>, CustomerState, RandomState>,
    /// Lazy cart timers: (when something may be due, customer). A popped timer whose cart moved
    /// on is re-armed at the cart's next due time or dropped.
    timers: BinaryHeap<Reverse<(Millis, Box<str>)>>,
    windows: ChannelWindows,
    watermark: Watermark,
    seq: u64,
    next_sweep: Millis,
    scratch: Scratch,
    scoring: Option<Scoring>,
    /// Customers changed since the last changelog drain.
    changed: Vec<Box<str>>,
    /// Customers forgotten since the last changelog drain.
    forgotten: Vec<Box<str>>,
    closed_windows: Vec<(Millis, Channel)>,
    meta_written: Option<PartitionMeta>,
    /// Events that arrived behind the watermark.
    pub late_events: u64,
    /// Customers forgotten after the TTL.
    pub expired_customers: u64,
}

impl PartitionEngine {
    pub fn new(partition: i32, cfg: EngineConfig) -> Self {
        let scoring = cfg.models.as_ref().and_then(|m| match Scoring::new(m.clone()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::error!(error = %e, partition, "cannot run the models; this partition runs rules only");
                None
            }
        });
        let mut windows = ChannelWindows::new(cfg.window, cfg.window_retention);
        windows.deep = scoring.is_some();
        PartitionEngine {
            partition,
            windows,
            watermark: Watermark::new(cfg.allowed_lateness),
            cfg,
            customers: HashMap::default(),
            timers: BinaryHeap::new(),
            seq: 0,
            next_sweep: Millis::MIN,
            scratch: Scratch::default(),
            scoring,
            changed: Vec::new(),
            forgotten: Vec::new(),
            closed_windows: Vec::new(),
            meta_written: None,
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
        self.customers.get(id)
    }

    pub fn windows(&self) -> &ChannelWindows {
        &self.windows
    }

    /// The models this engine runs.
    pub fn models(&self) -> Option<&Arc<ModelSet>> {
        self.scoring.as_ref().map(|s| &s.set)
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

    /// Swaps the models (a reload): pending events finish on the old ones first. When the step
    /// model's hidden size changes, every hidden state is reset; returns how many were.
    pub fn set_models(&mut self, models: Option<Arc<ModelSet>>) -> Result<usize, String> {
        let next = models.as_ref().map(|m| Scoring::new(m.clone())).transpose()?;
        self.flush();
        let old_hidden = self.scoring.as_ref().map(|s| s.set.step.hidden);
        let new_hidden = models.as_ref().map(|m| m.step.hidden);
        let mut reset = 0;
        if old_hidden != new_hidden {
            for (key, c) in self.customers.iter_mut() {
                if c.model.as_ref().is_some_and(|m| Some(m.hidden.len()) != new_hidden) {
                    c.model = None;
                    reset += 1;
                    if !c.queued {
                        c.queued = true;
                        c.changed_idx = self.changed.len() as u32;
                        self.changed.push(key.clone());
                    }
                }
            }
        }
        self.cfg.models = models;
        self.windows.deep = next.is_some();
        self.scoring = next;
        Ok(reset)
    }

    /// Approximate bytes of state (customers, timers, windows).
    pub fn approx_bytes(&self) -> usize {
        let customers: usize = self.customers.iter().map(|(k, c)| c.approx_bytes(k.len())).sum();
        let timers: usize = self.timers.iter().map(|Reverse((_, k))| 24 + k.len()).sum();
        customers + timers + self.windows.len() * 128
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

    fn flush_for(&mut self, key: &str) {
        if self.customers.get(key).is_some_and(|c| c.pending > 0) {
            self.flush();
        }
    }

    /// When the customer's open cart may next need attention: the model's next inactivity check
    /// or the timeout rule.
    fn next_due(&self, cart: &Cart) -> Millis {
        next_due(&self.cfg, self.scoring.as_ref(), cart)
    }

    /// Processes one valid event of this partition.
    pub fn process(&mut self, ev: &Event<'_>, out: &mut Vec<Output>) -> Processed {
        let late = self.watermark.is_late(ev.ts);
        if late {
            self.late_events += 1;
        }
        self.seq += 1;
        let seq = self.seq;
        let wm = self.watermark.current();

        let key: &str = ev.customer_id.as_ref();
        if !self.customers.contains_key(key) {
            self.customers.insert(key.into(), CustomerState::new(ev.ts));
        }
        self.mark_changed(key);

        // The customer's own next event shows (in event time) whether the cart sat idle long
        // enough for the model's check or the timeout, whatever the watermark says.
        self.due_checks(key, ev.ts, out);

        let cfg = &self.cfg;
        let customer = self.customers.get_mut(key).expect("present");
        let prev_ts = customer.last_event_ts;
        customer.touch(ev);
        let mut conversion = None;
        match ev.event_type {
            t if t.is_touchpoint() => {
                customer.add_touchpoint(ev, seq, cfg.lookback, cfg.max_touchpoints);
                self.windows.add_touchpoint(ev.ts, ev.channel.unwrap_or(Channel::Other), wm);
            }
            EventType::CartAdd | EventType::CartRemove | EventType::CheckoutStart => {
                if customer.apply_cart(ev) {
                    let due = next_due(cfg, self.scoring.as_ref(), customer.cart.as_ref().expect("just opened"));
                    self.timers.push(Reverse((due, key.into())));
                }
            }
            EventType::Purchase => {
                conversion = Some(convert(ev, customer, cfg, &mut self.scratch, self.scoring.as_mut()));
            }
            _ => {}
        }
        if let Some(s) = &mut self.scoring {
            let gap = if customer.counters.events == 1 { 0 } else { (ev.ts - prev_ts).max(0) };
            let session = features::session_hash(ev.session_id.as_deref());
            let new_session = features::new_session(session, customer.prev_session, gap);
            customer.prev_session = session;
            let input = scoring::step_input(customer, ev.ts, ev.event_type, ev.channel, ev.value, gap, new_session);
            s.enqueue(customer, &input);
        }
        if let Some(mut record) = conversion {
            // The expected future value after the purchase is the step model's output for it.
            self.flush();
            let future = self.scoring.as_ref().and_then(|s| {
                let m = self.customers.get(key)?.model.as_ref()?;
                record.model_version = Some(s.set.version.to_string());
                Some(f64::from(m.scores[EXPECTED_VALUE]))
            });
            record.expected_future_value = future;
            for t in &record.touchpoints {
                let rules = [t.time_decay, t.last_touch, t.first_touch, t.linear, t.position_based];
                let deep = t.deep.map(|d| (d, future.unwrap_or(0.0)));
                self.windows.add_credit(record.conversion_ts, t.channel, &rules, deep, record.conversion_value, wm);
            }
            out.push(Output::Conversion(record));
        }
        if self.scoring.as_ref().is_some_and(|s| s.pending() >= s.flush_at) {
            self.flush();
        }

        if self.watermark.observe(ev.ts) {
            self.on_watermark(out);
        }
        Processed { late }
    }

    /// Runs the cart's model checks and rule that are due at `now` (event time), in time order;
    /// returns when the cart next needs attention if it is still open and has not alerted.
    fn due_checks(&mut self, key: &str, now: Millis, out: &mut Vec<Output>) -> Option<Millis> {
        loop {
            let cart = self.customers.get(key).and_then(|c| c.cart.as_ref())?;
            if cart.alerted {
                return None;
            }
            let deadline = cart.deadline(self.cfg.inactivity_timeout);
            match next_check(&self.cfg, self.scoring.as_ref(), cart) {
                Some((at, k)) if at <= now && at <= deadline => self.model_check(key, at, k, out),
                _ if deadline <= now => {
                    self.alert(key, deadline, "inactivity_timeout", out);
                    return None;
                }
                _ => return Some(self.next_due(cart)),
            }
        }
    }

    /// The model's inactivity check `k` of the customer's open cart: alert when P(abandon) for
    /// this inactivity (the re-check head's column `k`, or `p_abandon`) reaches the threshold.
    fn model_check(&mut self, key: &str, check_at: Millis, k: usize, out: &mut Vec<Output>) {
        self.flush_for(key);
        let Some(customer) = self.customers.get_mut(key) else { return };
        let p = customer.model.as_ref().map(|m| f64::from(abandon_probability(m, k)));
        let Some(cart) = customer.cart.as_mut() else { return };
        cart.model_checked = cart.last_activity_ts;
        cart.checks_done = u8::try_from(k + 1).unwrap_or(u8::MAX);
        self.mark_changed(key);
        let checks = self.scoring.as_ref().map_or(0, |s| s.set.step.checks_ms.len());
        let threshold = if checks > 1 && k + 1 == checks { self.cfg.last_check_threshold } else { self.cfg.abandon_threshold };
        if p.is_some_and(|p| p >= threshold) {
            self.alert(key, check_at, "model", out);
        }
    }

    fn alert(&mut self, key: &str, alert_ts: Millis, reason: &'static str, out: &mut Vec<Output>) {
        self.flush_for(key);
        self.mark_changed(key);
        let customer = self.customers.get_mut(key).expect("present");
        out.push(Output::Alert(build_alert(key, customer, alert_ts, reason, &self.cfg, &mut self.scratch, self.scoring.as_mut())));
    }

    /// No input for the idle period: move the watermark to wall clock minus the allowed lateness.
    pub fn advance_idle(&mut self, wall_now: Millis, out: &mut Vec<Output>) {
        if self.watermark.advance_idle(wall_now) {
            self.on_watermark(out);
        }
    }

    /// Records for the channel windows changed since the last call.
    pub fn drain_changed_windows(&mut self, out: &mut Vec<ChannelWindowRecord>) {
        self.windows.drain_changed(self.partition, self.watermark.current(), out, &mut self.closed_windows);
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

    /// Changelog records for everything that changed since the last call: changed customers,
    /// forgotten customers and closed windows (tombstones), changed windows (`windows`, as drained
    /// by [`Self::drain_changed_windows`]) and the partition's meta record.
    pub fn drain_changelog(&mut self, windows: &[ChannelWindowRecord], out: &mut Vec<ChangelogEntry>) -> Result<(), serde_json::Error> {
        self.flush();
        for key in self.changed.drain(..) {
            if let Some(c) = self.customers.get_mut(&key) {
                c.queued = false;
                c.changed_idx = 0;
                out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: Some(serde_json::to_vec(c)?) });
            }
        }
        for key in self.forgotten.drain(..) {
            if !self.customers.contains_key(&key) {
                out.push(ChangelogEntry { key: key.as_bytes().to_vec(), value: None });
            }
        }
        for w in windows {
            let channel = Channel::from_wire(&w.channel).unwrap_or(Channel::Other);
            out.push(ChangelogEntry { key: changelog::window_key(w.window_start, channel), value: Some(serde_json::to_vec(&w.numbers())?) });
        }
        for (start, channel) in self.closed_windows.drain(..) {
            out.push(ChangelogEntry { key: changelog::window_key(start, channel), value: None });
        }
        let meta = self.meta();
        if self.meta_written != Some(meta) {
            out.push(ChangelogEntry { key: changelog::META_KEY.to_vec(), value: Some(serde_json::to_vec(&meta)?) });
            self.meta_written = Some(meta);
        }
        Ok(())
    }

    fn meta(&self) -> PartitionMeta {
        PartitionMeta {
            max_event_ts: self.watermark.max_event_ts(),
            watermark: self.watermark.current(),
            seq: self.seq,
            next_sweep: self.next_sweep,
            late_events: self.late_events,
            expired_customers: self.expired_customers,
            dropped_late: self.windows.dropped_late,
        }
    }

    /// Applies one changelog record (in changelog order) to a partition being restored.
    pub fn restore(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<(), RestoreError> {
        let corrupt = |e: serde_json::Error| RestoreError::Corrupt { key: String::from_utf8_lossy(key).into_owned(), message: e.to_string() };
        match changelog::parse_key(key) {
            Some(ChangelogKey::Customer(id)) => match value {
                Some(v) => {
                    let state: CustomerState = serde_json::from_slice(v).map_err(corrupt)?;
                    self.customers.insert(id.into(), state);
                }
                None => {
                    self.customers.remove(id);
                }
            },
            Some(ChangelogKey::Window(start, channel)) => match value {
                Some(v) => {
                    let numbers: WindowNumbers = serde_json::from_slice(v).map_err(corrupt)?;
                    self.windows.restore(start, channel, numbers);
                }
                None => self.windows.forget(start, channel),
            },
            Some(ChangelogKey::Meta) => {
                if let Some(v) = value {
                    let m: PartitionMeta = serde_json::from_slice(v).map_err(corrupt)?;
                    self.watermark = Watermark::restore(self.cfg.allowed_lateness, m.max_event_ts, m.watermark);
                    self.seq = m.seq;
                    self.next_sweep = m.next_sweep;
                    self.late_events = m.late_events;
                    self.expired_customers = m.expired_customers;
                    self.windows.dropped_late = m.dropped_late;
                    self.meta_written = Some(m);
                }
            }
            None => {}
        }
        Ok(())
    }

    /// Ends a restore: re-arms the timers of open carts.
    pub fn finish_restore(&mut self) {
        self.timers.clear();
        let mut timers = std::mem::take(&mut self.timers);
        for (key, c) in &self.customers {
            if let Some(cart) = &c.cart {
                if !cart.alerted {
                    timers.push(Reverse((self.next_due(cart), key.clone())));
                }
            }
        }
        self.timers = timers;
    }

    fn on_watermark(&mut self, out: &mut Vec<Output>) {
        let wm = self.watermark.current();
        while let Some(Reverse((due, _))) = self.timers.peek() {
            if *due > wm {
                break;
            }
            let Reverse((_, key)) = self.timers.pop().expect("peeked");
            let Some(next) = self.due_checks(&key, wm, out) else { continue };
            self.timers.push(Reverse((next, key)));
        }
        if wm >= self.next_sweep {
            self.expire(wm);
            let step = (self.cfg.customer_ttl / 24).clamp(60_000, 3_600_000);
            self.next_sweep = wm.saturating_add(step);
        }
    }

    /// Forgets customers idle longer than the TTL (event time).
    fn expire(&mut self, wm: Millis) {
        let horizon = wm.saturating_sub(self.cfg.customer_ttl);
        let before = self.customers.len();
        let forgotten = &mut self.forgotten;
        self.customers.retain(|k, c| {
            // a customer with events waiting for the step model stays until the next sweep
            let keep = c.last_event_ts >= horizon || c.pending > 0;
            if !keep {
                forgotten.push(k.clone());
            }
            keep
        });
        self.expired_customers += (before - self.customers.len()) as u64;
    }
}

/// The journey at `until`: touchpoints after the previous purchase, at or before `until` and within
/// the lookback; their indices and times go to `scratch.idx` / `scratch.ts`.
fn select_journey(customer: &CustomerState, until: Millis, lookback: Millis, scratch: &mut Scratch) {
    let from = until.saturating_sub(lookback);
    scratch.idx.clear();
    scratch.ts.clear();
    for (i, t) in customer.touchpoints.iter().enumerate() {
        if t.ts > customer.last_purchase_ts && t.ts <= until && t.ts >= from {
            scratch.idx.push(i);
            scratch.ts.push(t.ts);
        }
    }
}

/// Builds the conversion record for a purchase (rule credits, and deep credit with models);
/// spends the journey's touchpoints and closes the cart. The caller credits the channel windows.
fn convert(ev: &Event<'_>, customer: &mut CustomerState, cfg: &EngineConfig, scratch: &mut Scratch, scoring: Option<&mut Scoring>) -> ConversionRecord {
    let conv_ts = ev.ts;
    let value = ev.value.or_else(|| customer.cart.as_ref().map(|c| c.value())).unwrap_or(0.0);
    let currency = ev.currency.as_deref().map(str::to_string).or_else(|| customer.cart.as_ref().and_then(|c| c.currency.as_deref().map(str::to_string)));
    select_journey(customer, conv_ts, cfg.lookback, scratch);
    credits::assign(&scratch.ts, cfg.half_life, &mut scratch.credits);
    let mut deep_method = None;
    let mut conversion_probability = None;
    let with_models = scoring.is_some();
    if let Some(s) = scoring {
        let fallback: Vec<f64> = scratch.credits.iter().map(|c| c.0[0]).collect();
        let d = s.deep_credit(customer, &scratch.idx, conv_ts, &fallback, scoring::seed_of(&ev.event_id), &mut scratch.deep);
        deep_method = Some(d.method);
        conversion_probability = d.p_conversion;
    }
    let mut touchpoints = Vec::with_capacity(scratch.idx.len().max(1));
    for (n, (&i, c)) in scratch.idx.iter().zip(&scratch.credits).enumerate() {
        let t = &customer.touchpoints[i];
        touchpoints.push(CreditedTouchpoint {
            event_id: Some(t.event_id.to_string()),
            channel: t.channel,
            campaign: t.campaign.as_deref().map(str::to_string),
            ts: t.ts,
            event_type: t.event_type.as_str(),
            time_decay: c.0[0],
            last_touch: c.0[1],
            first_touch: c.0[2],
            linear: c.0[3],
            position_based: c.0[4],
            deep: with_models.then(|| scratch.deep[n]),
        });
    }
    if touchpoints.is_empty() {
        touchpoints.push(CreditedTouchpoint::direct(conv_ts, with_models.then_some(1.0)));
    }
    customer.touchpoints.retain(|t| t.ts > conv_ts);
    customer.last_purchase_ts = customer.last_purchase_ts.max(conv_ts);
    customer.cart = None;
    customer.counters.purchases += 1;
    customer.counters.revenue += value;
    ConversionRecord {
        conversion_id: ev.event_id.to_string(),
        customer_id: ev.customer_id.to_string(),
        conversion_ts: conv_ts,
        conversion_value: value,
        currency,
        touchpoints,
        deep_method,
        conversion_probability,
        expected_future_value: None,
        model_version: None,
    }
}

/// The model's next inactivity check of the cart, if one is left: (when, which). With a re-check
/// head, its schedule (`abandon_checks_minutes`) after the cart's last activity; otherwise one check
/// at `alerts.model_check`.
fn next_check(cfg: &EngineConfig, scoring: Option<&Scoring>, cart: &Cart) -> Option<(Millis, usize)> {
    let schedule = &scoring?.set.step.checks_ms;
    let done = if cart.model_checked == cart.last_activity_ts { usize::from(cart.checks_done) } else { 0 };
    let after = if schedule.is_empty() { (done == 0).then_some(cfg.model_check)? } else { *schedule.get(done)? };
    Some((cart.last_activity_ts.saturating_add(after), done))
}

fn next_due(cfg: &EngineConfig, scoring: Option<&Scoring>, cart: &Cart) -> Millis {
    let rule = cart.deadline(cfg.inactivity_timeout);
    next_check(cfg, scoring, cart).map_or(rule, |(at, _)| at.min(rule))
}

/// P(abandon) read at check `k`: the re-check head's column, or `p_abandon` without one.
fn abandon_probability(m: &ModelState, k: usize) -> f32 {
    match m.checks.get(k).or(m.checks.last()) {
        Some(p) => *p,
        None => m.scores[P_ABANDON],
    }
}

/// Builds the abandonment alert of the customer's open cart at `alert_ts` and marks it alerted.
fn build_alert(
    key: &str,
    customer: &mut CustomerState,
    alert_ts: Millis,
    reason: &'static str,
    cfg: &EngineConfig,
    scratch: &mut Scratch,
    scoring: Option<&mut Scoring>,
) -> AlertRecord {
    select_journey(customer, alert_ts, cfg.lookback, scratch);
    credits::time_decay(&scratch.ts, cfg.half_life, &mut scratch.decay);
    let (mut probability, mut conversion_probability, mut model_version) = (None, None, None);
    let with_models = scoring.is_some();
    if let Some(s) = scoring {
        if let Some(m) = &customer.model {
            // P(abandon) for the current inactivity: the latest check read, else the 10-minute one
            let cart = customer.cart.as_ref().expect("alert needs an open cart");
            let k = if cart.model_checked == cart.last_activity_ts { usize::from(cart.checks_done.max(1)) - 1 } else { 0 };
            probability = Some(f64::from(abandon_probability(m, k)));
            conversion_probability = Some(f64::from(m.scores[P_PURCHASE]));
        }
        model_version = Some(s.set.version.to_string());
        let fallback = scratch.decay.clone();
        s.deep_credit(customer, &scratch.idx, alert_ts, &fallback, scoring::seed_of(key), &mut scratch.deep);
    }
    let mut ranked: Vec<(f64, usize, usize)> = (0..scratch.idx.len())
        .map(|n| (if with_models { scratch.deep[n] } else { scratch.decay[n] }, n, scratch.idx[n]))
        .collect();
    // highest credit first; among equals the latest touch
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.2.cmp(&a.2)));
    let top_touchpoints = ranked
        .iter()
        .take(3)
        .map(|&(_, n, i)| {
            let t = &customer.touchpoints[i];
            TopTouchpoint {
                channel: t.channel,
                campaign: t.campaign.as_deref().map(str::to_string),
                time_decay_credit: scratch.decay[n],
                deep_credit: with_models.then(|| scratch.deep[n]),
            }
        })
        .collect();
    customer.counters.alerts += 1;
    let cart = customer.cart.as_mut().expect("alert needs an open cart");
    cart.alerted = true;
    let cart_value = cart.value();
    AlertRecord {
        alert_id: format!("{key}:{}", cart.opened_by),
        customer_id: key.to_string(),
        alert_ts,
        cart_value,
        currency: cart.currency.as_deref().map(str::to_string),
        items: cart
            .lines
            .iter()
            .map(|l| CartItem { product_id: l.product_id.to_string(), quantity: l.quantity, unit_price: l.unit_price })
            .collect(),
        last_activity_ts: cart.last_activity_ts,
        reason,
        abandonment_probability: probability,
        conversion_probability,
        top_touchpoints,
        recommended_action: cfg.action(probability, cart_value),
        model_version,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{decode, Validation};

    const MIN: Millis = 60_000;
    const DAY: Millis = 86_400_000;
    const T0: Millis = 1_767_225_600_000;

    struct Feed {
        engine: PartitionEngine,
        out: Vec<Output>,
        n: u64,
    }

    impl Feed {
        fn new() -> Self {
            Feed { engine: PartitionEngine::new(0, EngineConfig::default()), out: Vec::new(), n: 0 }
        }
        fn send(&mut self, customer: &str, ts: Millis, event_type: &str, extra: &str) {
            self.n += 1;
            let json = format!(r#"{{"event_id":"e{}","customer_id":"{customer}","ts":{ts},"event_type":"{event_type}"{extra}}}"#, self.n);
            let check = Validation { now: T0 + 365 * DAY, max_future_skew_ms: 0 };
            let ev = decode(Some(customer.as_bytes()), json.as_bytes(), &check).unwrap();
            self.engine.process(&ev, &mut self.out);
        }
        fn conversions(&self) -> Vec<&ConversionRecord> {
            self.out.iter().filter_map(|o| if let Output::Conversion(c) = o { Some(c) } else { None }).collect()
        }
        fn alerts(&self) -> Vec<&AlertRecord> {
            self.out.iter().filter_map(|o| if let Output::Alert(a) = o { Some(a) } else { None }).collect()
        }
    }

    #[test]
    fn purchase_credits_the_journey_since_the_last_purchase() {
        let mut f = Feed::new();
        f.send("a", T0, "impression", r#","channel":"display","campaign":"spring""#);
        f.send("a", T0 + DAY, "purchase", r#","value":10"#);
        f.send("a", T0 + 2 * DAY, "click", r#","channel":"paid_search""#);
        f.send("a", T0 + 9 * DAY, "email_click", r#","channel":"email""#);
        f.send("a", T0 + 9 * DAY + MIN, "purchase", r#","value":30,"currency":"EUR""#);
        let c = f.conversions();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].touchpoints.len(), 1);
        let second = c[1];
        assert_eq!(second.conversion_value, 30.0);
        assert_eq!(second.currency.as_deref(), Some("EUR"));
        let channels: Vec<_> = second.touchpoints.iter().map(|t| t.channel).collect();
        assert_eq!(channels, [Channel::PaidSearch, Channel::Email], "the display touch was spent by the first purchase");
        // 7 days apart = one half-life: 1/3 and 2/3 (up to the one minute before the conversion)
        let w_old = (-(7.0 * DAY as f64 + MIN as f64) / (7.0 * DAY as f64)).exp2();
        let w_new = (-(MIN as f64) / (7.0 * DAY as f64)).exp2();
        assert!((second.touchpoints[0].time_decay - w_old / (w_old + w_new)).abs() < 1e-12);
        assert_eq!(second.touchpoints[1].last_touch, 1.0);
    }

    #[test]
    fn conversion_without_touchpoints_is_direct() {
        let mut f = Feed::new();
        f.send("b", T0, "purchase", r#","value":5"#);
        let c = f.conversions();
        assert_eq!(c[0].touchpoints.len(), 1);
        assert_eq!(c[0].touchpoints[0].channel, Channel::Direct);
        assert_eq!(c[0].touchpoints[0].event_id, None);
        assert_eq!(c[0].touchpoints[0].time_decay, 1.0);
        let n = f.engine.windows().get(T0, Channel::Direct).unwrap();
        assert_eq!(n.conversions, [1.0; 5]);
        assert_eq!(n.revenue, [5.0; 5]);
    }

    #[test]
    fn abandoned_cart_alerts_once_at_last_activity_plus_timeout() {
        let mut f = Feed::new();
        f.send("c", T0, "click", r#","channel":"email","campaign":"w""#);
        f.send("c", T0 + MIN, "cart_add", r#","product_id":"p1","quantity":2,"value":60,"currency":"EUR""#);
        f.send("c", T0 + 5 * MIN, "page_view", "");
        // other customers move the watermark: 5m + 30m + 1m lateness
        f.send("x", T0 + 35 * MIN, "page_view", "");
        assert!(f.alerts().is_empty(), "watermark at 34m, deadline at 35m");
        f.send("x", T0 + 36 * MIN, "page_view", "");
        let a = f.alerts();
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].alert_ts, T0 + 35 * MIN);
        assert_eq!(a[0].last_activity_ts, T0 + 5 * MIN);
        assert_eq!(a[0].cart_value, 120.0);
        assert_eq!(a[0].recommended_action, "incentive");
        assert_eq!(a[0].alert_id, "c:e2");
        assert_eq!(a[0].top_touchpoints.len(), 1);
        assert_eq!(a[0].top_touchpoints[0].channel, Channel::Email);
        f.send("x", T0 + 300 * MIN, "page_view", "");
        f.send("c", T0 + 301 * MIN, "page_view", "");
        assert_eq!(f.alerts().len(), 1, "one alert per cart");
        // a new cart after a purchase may alert again
        f.send("c", T0 + 302 * MIN, "purchase", r#","value":120"#);
        f.send("c", T0 + 303 * MIN, "cart_add", r#","product_id":"p2","value":5"#);
        f.send("x", T0 + 400 * MIN, "page_view", "");
        let a = f.alerts();
        assert_eq!(a.len(), 2);
        assert_eq!(a[1].recommended_action, "reminder");
        assert_eq!(a[1].alert_ts, T0 + 333 * MIN);
    }

    #[test]
    fn purchase_within_the_timeout_never_alerts() {
        let mut f = Feed::new();
        f.send("d", T0, "cart_add", r#","product_id":"p","value":10"#);
        f.send("d", T0 + 20 * MIN, "purchase", r#","value":10"#);
        f.send("x", T0 + 10 * DAY, "page_view", "");
        assert!(f.alerts().is_empty());
        assert_eq!(f.conversions()[0].conversion_value, 10.0);
    }

    #[test]
    fn the_customers_own_late_return_proves_abandonment() {
        let mut f = Feed::new();
        f.send("e", T0, "cart_add", r#","product_id":"p","value":10"#);
        // no other traffic: the watermark only moves with this customer's events
        f.send("e", T0 + 31 * MIN, "purchase", r#","value":10"#);
        let a = f.alerts();
        assert_eq!(a.len(), 1, "31 minutes of silence is abandonment, even if the customer came back");
        assert_eq!(a[0].alert_ts, T0 + 30 * MIN);
        assert_eq!(f.conversions().len(), 1);
    }

    #[test]
    fn emptied_cart_does_not_alert_and_idle_advance_fires_timers() {
        let mut f = Feed::new();
        f.send("g", T0, "cart_add", r#","product_id":"p","value":10"#);
        f.send("g", T0 + MIN, "cart_remove", r#","product_id":"p""#);
        f.send("h", T0 + 2 * MIN, "cart_add", r#","product_id":"q","value":10"#);
        let mut out = Vec::new();
        f.engine.advance_idle(T0 + 2 * MIN + 31 * MIN, &mut out);
        assert_eq!(out.len(), 1, "{out:?}");
        let Output::Alert(a) = &out[0] else { panic!() };
        assert_eq!(a.customer_id, "h");
        assert_eq!(a.alert_ts, T0 + 32 * MIN);
    }

    #[test]
    fn restoring_from_the_changelog_continues_exactly_like_an_uninterrupted_run() {
        use crate::demo::generator::{GeneratorConfig, JourneyGenerator};
        let mut gen = JourneyGenerator::new(GeneratorConfig { seed: 3, active_customers: 300, ..GeneratorConfig::default() });
        let raw: Vec<(String, Vec<u8>)> = (0..30_000)
            .map(|_| {
                let (mut j, mut c) = (Vec::new(), String::new());
                gen.next_into(&mut j, &mut c);
                (c, j)
            })
            .collect();
        let check = Validation { now: i64::MAX / 4, max_future_skew_ms: 0 };
        let events: Vec<Event<'_>> = raw.iter().map(|(k, j)| decode(Some(k.as_bytes()), j, &check).unwrap()).collect();

        // short retention and TTL so that windows close and customers expire within the stream
        let cfg = EngineConfig { window_retention: 0, customer_ttl: 40 * MIN, ..EngineConfig::default() };
        let mut whole = PartitionEngine::new(0, cfg.clone());
        let mut expected = Vec::new();
        for e in &events {
            whole.process(e, &mut expected);
        }

        // the same stream with a "commit" every 97 events, and a crash + restore at two points
        let mut engine = PartitionEngine::new(0, cfg.clone());
        let mut got = Vec::new();
        let mut log: Vec<ChangelogEntry> = Vec::new();
        let (mut windows, mut wins) = (Vec::new(), Vec::new());
        for (i, e) in events.iter().enumerate() {
            engine.process(e, &mut got);
            if i % 97 == 96 {
                engine.drain_changed_windows(&mut windows);
                wins.append(&mut windows);
                engine.drain_changelog(&wins, &mut log).unwrap();
                wins.clear();
            }
            if i == 9_699 || i == 20_272 {
                // crash right after a commit: rebuild from the changelog alone
                let mut restored = PartitionEngine::new(0, cfg.clone());
                for entry in &log {
                    restored.restore(&entry.key, entry.value.as_deref()).unwrap();
                }
                restored.finish_restore();
                assert_eq!(restored.customers(), engine.customers());
                for (k, c) in &engine.customers {
                    let mut r = restored.customers[k].clone();
                    r.queued = c.queued;
                    assert_eq!(&r, c, "customer {k}");
                }
                engine = restored;
            }
        }
        assert!(expected.len() > 100, "the stream has conversions and alerts: {}", expected.len());
        assert_eq!(got, expected);
        let tombstones = log.iter().filter(|e| e.value.is_none()).count();
        assert!(tombstones > 0, "closed windows and expired customers are deleted from the changelog");
        assert!(whole.expired_customers > 0);
    }

    #[test]
    fn output_does_not_depend_on_how_events_are_batched_and_customers_expire() {
        // the engine sees events one by one; a second run over the same events yields the same records
        let mut runs = Vec::new();
        for _ in 0..2 {
            let mut f = Feed::new();
            for i in 0..200i64 {
                let c = format!("k{}", i % 17);
                let t = T0 + i * 7 * MIN;
                match i % 5 {
                    0 => f.send(&c, t, "impression", r#","channel":"display""#),
                    1 => f.send(&c, t, "cart_add", r#","product_id":"p","value":3"#),
                    2 => f.send(&c, t, "click", r#","channel":"affiliate""#),
                    3 => f.send(&c, t, "page_view", ""),
                    _ => if i % 3 == 0 { f.send(&c, t, "purchase", r#","value":9"#) },
                }
            }
            f.send("late", T0 + 40 * DAY, "page_view", "");
            assert_eq!(f.engine.customers(), 1, "all but the newest customer expired after the TTL");
            runs.push(f.out);
        }
        assert_eq!(runs[0], runs[1]);
        assert!(runs[0].iter().any(|o| matches!(o, Output::Alert(_))));
    }
}
