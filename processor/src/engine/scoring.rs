//! The models inside a partition engine: the step model's pending events and their batched
//! "waves", and deep credit for a journey. One [`Scoring`] per partition engine: it owns its tract
//! execution state and buffers, so nothing is shared or locked per event.

use std::sync::Arc;
use std::time::Instant;

use super::shadow::{select_touches, Shadow};
use super::Customers;
use crate::alerts::reasons;
use crate::inference::deep_credit::{AttributionRunner, ModelTouch};
use crate::inference::drift::DriftCounts;
use crate::inference::features::{self, StepInput};
use crate::inference::step::{StepRunner, StepScores, EXPECTED_VALUE, P_ABANDON, P_PURCHASE};
use crate::inference::ModelSet;
use crate::journey::{CustomerState, ModelState};
use crate::output::AbandonmentReason;
use crate::time::Millis;

/// One event waiting for the step model.
#[derive(Debug, Clone, Copy)]
struct Request {
    /// Index into the engine's list of changed customers.
    customer: u32,
    /// The customer's n-th pending event: wave n runs after wave n-1.
    wave: u32,
    ts: Millis,
    /// A cart is open after the event (its P(abandon) counts for drift).
    cart_open: bool,
    /// ... and has not alerted yet: where the processor reads P(abandon) (shadow outcomes).
    cart_unalerted: bool,
    purchase: bool,
    /// The purchase's pending conversion ([`NO_CONVERSION`]: none), whose expected future value
    /// is this row's output.
    conversion: u64,
}

/// [`Scoring::enqueue`]'s tag of an event without a pending conversion.
pub const NO_CONVERSION: u64 = u64::MAX;

/// Counters for telemetry (drained by the runner).
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct ScoringStats {
    pub events: u64,
    pub calls: u64,
    pub rows: u64,
    pub errors: u64,
    /// Hidden states reset because the model's hidden size changed.
    pub resets: u64,
    pub seconds: f64,
    pub deep_calls: u64,
    pub deep_rows: u64,
    pub deep_fallbacks: u64,
    pub deep_seconds: f64,
}

#[derive(Debug)]
pub struct Scoring {
    pub set: Arc<ModelSet>,
    step: StepRunner,
    attr: AttributionRunner,
    feats: Vec<f32>,
    reqs: Vec<Request>,
    /// Requests in wave 0 (customers with a pending event).
    first_wave: usize,
    order: Vec<u32>,
    x: Vec<f32>,
    h: Vec<f32>,
    h_out: Vec<f32>,
    scores: Vec<StepScores>,
    checks: Vec<f32>,
    touches: Vec<ModelTouch>,
    /// This partition's sample of features for drift, taken by the loop.
    pub drift: DriftCounts,
    /// Pending events that trigger a flush by themselves.
    pub flush_at: usize,
    pub stats: ScoringStats,
    /// Seconds per model call since the last drain: (is deep credit, seconds); bounded.
    pub durations: Vec<(bool, f32)>,
    /// The candidate models, scored beside these and never written (`models.candidate`).
    pub shadow: Option<Shadow>,
    /// (conversion tag, the step model's expected future value after its purchase; NaN: none),
    /// for the engine's pending conversions.
    pub scored_conversions: Vec<(u64, f32)>,
    #[cfg(test)]
    last: Vec<f32>,
}

/// Deep credit of a journey, per journey touchpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct JourneyDeep {
    pub method: &'static str,
    pub p_conversion: Option<f64>,
    /// The conversion's share left to the customer's baseline (models with `baseline_share`).
    pub baseline: Option<f64>,
}

impl Scoring {
    pub fn new(set: Arc<ModelSet>, candidate: Option<Arc<ModelSet>>) -> Result<Scoring, String> {
        let shadow = candidate.map(Shadow::new).transpose()?;
        let step = StepRunner::new(&set.step).map_err(|e| format!("{e:#}"))?;
        let attr = AttributionRunner::new(&set.attribution).map_err(|e| format!("{e:#}"))?;
        let flush_at = set.max_batch * 64;
        Ok(Scoring {
            set,
            step,
            attr,
            feats: Vec::new(),
            reqs: Vec::new(),
            first_wave: 0,
            order: Vec::new(),
            x: Vec::new(),
            h: Vec::new(),
            h_out: Vec::new(),
            scores: Vec::new(),
            checks: Vec::new(),
            touches: Vec::new(),
            drift: DriftCounts::default(),
            flush_at,
            stats: ScoringStats::default(),
            durations: Vec::new(),
            shadow,
            scored_conversions: Vec::new(),
            #[cfg(test)]
            last: Vec::new(),
        })
    }

    pub fn pending(&self) -> usize {
        self.reqs.len()
    }

    /// Whether the queue's first wave fills a call: then running it costs no more calls than
    /// waiting, and keeps the customers' chains of pending events short (see [`Self::flush_waves`]).
    pub fn first_wave_full(&self) -> bool {
        self.first_wave >= self.set.max_batch
    }

    /// The feature vector of the latest event (tests).
    #[cfg(test)]
    pub fn last_features(&self) -> &[f32] {
        &self.last
    }

    /// Queues one event of `customer` (whose state already includes the event); `conversion` tags
    /// a purchase's pending conversion ([`NO_CONVERSION`]: none): its expected future value goes to
    /// `scored_conversions` when the event is scored.
    pub fn enqueue(&mut self, customer: &mut CustomerState, input: &StepInput, conversion: u64) {
        let at = self.feats.len();
        self.feats.resize(at + features::COUNT, 0.0);
        features::encode(input, &mut self.feats[at..]);
        if let Some(spec) = &self.set.step.drift {
            self.drift.observe(spec, &self.feats[at..]);
        }
        #[cfg(test)]
        {
            self.last = self.feats[at..].to_vec();
        }
        self.reqs.push(Request {
            customer: customer.changed_idx,
            wave: customer.pending,
            ts: input.ts,
            cart_open: input.cart.is_some(),
            cart_unalerted: customer.cart.as_ref().is_some_and(|c| !c.alerted),
            purchase: input.event_type == crate::event::EventType::Purchase,
            conversion,
        });
        if customer.pending == 0 {
            self.first_wave += 1;
        }
        customer.pending += 1;
        self.stats.events += 1;
    }

    /// Runs every pending event through the step model, wave by wave (a customer's events in
    /// order, different customers together, at most `max_batch` rows per call), and stores the
    /// new hidden states and scores in the customers' state.
    pub fn flush(&mut self, customers: &mut Customers, changed: &[Box<str>]) {
        self.flush_waves(customers, changed, u32::MAX);
    }

    /// Runs the first `waves` waves only: every pending event of a customer with at most that
    /// many (the other customers' first events fill the same calls). The rest stays queued, as
    /// the customers' next waves. A decision about one customer (a purchase, a due check) then
    /// costs as many calls as that customer has pending events, not as many as the longest chain
    /// in the queue (on the simulator's default world a full run was ~15 calls of ~7 rows).
    pub fn flush_waves(&mut self, customers: &mut Customers, changed: &[Box<str>], waves: u32) {
        if self.reqs.is_empty() {
            return;
        }
        let hdim = self.set.step.hidden;
        let f = features::COUNT;
        let max_batch = self.set.max_batch;
        let k = self.set.step.checks_ms.len();
        let explain = self.set.step.reference.is_some();
        let Scoring { set, reqs, order, feats, x, h, h_out, scores, checks, step, stats, durations, drift, shadow, first_wave, scored_conversions, .. } = self;
        let drift_spec = set.step.drift.as_ref();
        order.clear();
        order.extend(0..reqs.len() as u32);
        order.sort_by_key(|&i| reqs[i as usize].wave);
        let mut start = 0;
        while start < order.len() && reqs[order[start] as usize].wave < waves {
            let wave = reqs[order[start] as usize].wave;
            let mut end = start;
            while end < order.len() && end - start < max_batch && reqs[order[end] as usize].wave == wave {
                end += 1;
            }
            let rows = end - start;
            x.clear();
            h.clear();
            for &i in &order[start..end] {
                let i = i as usize;
                x.extend_from_slice(&feats[i * f..(i + 1) * f]);
                match customers.get(&changed[reqs[i].customer as usize]).and_then(|c| c.model.as_ref()) {
                    Some(m) if m.hidden().len() == hdim => h.extend_from_slice(m.hidden()),
                    Some(_) => {
                        stats.resets += 1;
                        h.resize(h.len() + hdim, 0.0);
                    }
                    None => h.resize(h.len() + hdim, 0.0),
                }
            }
            h_out.resize(rows * hdim, 0.0);
            scores.resize(rows, [0.0; 3]);
            checks.resize(rows * k, 0.0);
            let t = Instant::now();
            let ran = step.run(rows, x, h, h_out, scores, checks);
            let took = t.elapsed().as_secs_f64();
            stats.seconds += took;
            if durations.len() < 4096 {
                durations.push((false, took as f32));
            }
            stats.calls += 1;
            stats.rows += rows as u64;
            match ran {
                Ok(()) => {
                    if let Some(sh) = shadow.as_mut() {
                        let wave = &order[start..end];
                        let keys: Vec<&str> = wave.iter().map(|&i| &*changed[reqs[i as usize].customer as usize]).collect();
                        let events: Vec<(Millis, bool, bool)> =
                            wave.iter().map(|&i| (reqs[i as usize].ts, reqs[i as usize].purchase, reqs[i as usize].cart_unalerted)).collect();
                        sh.wave(&keys, x, &events, &scores[..rows], took);
                    }
                    for (j, &i) in order[start..end].iter().enumerate() {
                        let r = reqs[i as usize];
                        if r.conversion != NO_CONVERSION {
                            scored_conversions.push((r.conversion, scores[j][EXPECTED_VALUE]));
                        }
                        if let Some(spec) = drift_spec {
                            drift.observe_scores(spec, scores[j][P_PURCHASE], r.cart_open.then_some(scores[j][P_ABANDON]));
                        }
                        if let Some(c) = customers.get_mut(&changed[r.customer as usize]) {
                            let m = c.model.get_or_insert_with(|| Box::new(ModelState::empty()));
                            m.set(&h_out[j * hdim..(j + 1) * hdim], &checks[j * k..(j + 1) * k]);
                            m.scores = scores[j];
                            m.scored_ts = r.ts;
                            reasons::remember_input(c, explain, &x[j * f..(j + 1) * f], &h[j * hdim..(j + 1) * hdim]);
                        }
                    }
                }
                Err(e) => {
                    stats.errors += 1;
                    tracing::warn!(error = %format!("{e:#}"), rows, "step model failed; these events keep the previous scores");
                    for &i in &order[start..end] {
                        let r = reqs[i as usize];
                        if r.conversion != NO_CONVERSION {
                            let previous = customers.get(&changed[r.customer as usize]).and_then(|c| c.model.as_ref());
                            scored_conversions.push((r.conversion, previous.map_or(f32::NAN, |m| m.scores[EXPECTED_VALUE])));
                        }
                    }
                }
            }
            start = end;
        }
        for r in reqs.iter() {
            if let Some(c) = customers.get_mut(&changed[r.customer as usize]) {
                c.pending = 0;
            }
        }
        *first_wave = 0;
        if start == order.len() {
            reqs.clear();
            feats.clear();
        } else {
            // keep the later waves, renumbered from 0, in queue order
            let mut kept = 0;
            for i in 0..reqs.len() {
                let mut r = reqs[i];
                if r.wave < waves {
                    continue;
                }
                r.wave -= waves;
                if r.wave == 0 {
                    *first_wave += 1;
                }
                if let Some(c) = customers.get_mut(&changed[r.customer as usize]) {
                    c.pending += 1;
                }
                reqs[kept] = r;
                feats.copy_within(i * f..(i + 1) * f, kept * f);
                kept += 1;
            }
            reqs.truncate(kept);
            feats.truncate(kept * f);
        }
        if let Some(sh) = shadow.as_mut() {
            sh.expire();
        }
    }

    /// Swaps the candidate in ([`Shadow`]): the candidate's per-customer states become the active
    /// ones and the active ones the candidate's, so the old models stay in shadow (a rollback is
    /// another swap). Customers the candidate has not seen start from a zero state: returns how
    /// many. None without a candidate. Call after a flush.
    pub fn promote(&mut self, customers: &mut Customers) -> Option<usize> {
        let sh = self.shadow.as_mut()?;
        std::mem::swap(&mut self.set, &mut sh.set);
        std::mem::swap(&mut self.step, &mut sh.step);
        std::mem::swap(&mut self.attr, &mut sh.attr);
        let mut theirs = std::mem::take(&mut sh.states);
        let mut reset = 0;
        for (key, c) in customers.iter_mut() {
            let next = theirs.remove(key);
            reset += usize::from(next.is_none() && c.model.is_some());
            if let Some(old) = std::mem::replace(&mut c.model, next) {
                sh.states.insert(key.clone(), old);
            }
            // the stored input of an open cart holds the old model's hidden state
            c.abandon_input = Box::default();
        }
        sh.restart_comparison();
        self.flush_at = self.set.max_batch * 64;
        Some(reset)
    }

    /// The reasons for P(abandon) of `customer`'s open cart read at `column` of the re-check head
    /// (`p_abandon` when the model has none). Empty when the model has no reference or the input
    /// is not stored.
    pub fn abandon_reasons(&mut self, customer: &CustomerState, column: usize) -> Vec<AbandonmentReason> {
        match self.occlusion_probabilities(customer, column) {
            Some(p) => reasons::top_reasons(&p, customer, &customer.abandon_input, 3),
            None => Vec::new(),
        }
    }

    /// P(abandon) at `column` for the base row and each occlusion row of the customer's stored
    /// input ([`reasons::occlusion_rows`]): one model call (more only past `max_batch` rows).
    pub fn occlusion_probabilities(&mut self, customer: &CustomerState, column: usize) -> Option<Vec<f32>> {
        let step = &self.set.step;
        let (reference, hdim, k, f) = (step.reference.as_ref()?, step.hidden, step.checks_ms.len(), features::COUNT);
        if !reasons::fits(&customer.abandon_input, hdim) {
            return None;
        }
        reasons::occlusion_rows(&customer.abandon_input, reference, &mut self.x, &mut self.h);
        let total = self.h.len() / hdim;
        let mut p = Vec::with_capacity(total);
        let mut start = 0;
        while start < total {
            let rows = (total - start).min(self.set.max_batch);
            self.h_out.resize(rows * hdim, 0.0);
            self.scores.resize(rows, [0.0; 3]);
            self.checks.resize(rows * k, 0.0);
            let t = Instant::now();
            let ran = self.step.run(rows, &self.x[start * f..], &self.h[start * hdim..], &mut self.h_out, &mut self.scores, &mut self.checks);
            self.stats.seconds += t.elapsed().as_secs_f64();
            self.stats.calls += 1;
            self.stats.rows += rows as u64;
            if let Err(e) = ran {
                self.stats.errors += 1;
                tracing::warn!(error = %format!("{e:#}"), "step model failed; the alert has no reasons");
                return None;
            }
            p.extend((0..rows).map(|r| if k > 0 { self.checks[r * k + column.min(k - 1)] } else { self.scores[r][P_ABANDON] }));
            start += rows;
        }
        Some(p)
    }

    /// Deep credit for the journey `idx` (indices into `customer.touchpoints`, oldest first) ending
    /// at `until`. Writes one credit per journey touchpoint into `out`; touchpoints of the purchase
    /// path or beyond the model's length get 0. Falls back to `fallback` (time decay) when the
    /// model sees no lift.
    pub fn deep_credit(&mut self, customer: &CustomerState, idx: &[usize], until: Millis, fallback: &[f64], seed: u64, out: &mut Vec<f64>) -> JourneyDeep {
        let model = &self.set.attribution;
        let (first, eligible, previous) = select_touches(model, customer, idx, until, &mut self.touches);
        out.clear();
        out.resize(idx.len(), 0.0);
        let fall_back = |out: &mut Vec<f64>| {
            out.clear();
            out.extend_from_slice(fallback);
        };
        if self.touches.is_empty() {
            self.stats.deep_fallbacks += 1;
            fall_back(out);
            return JourneyDeep { method: "time_decay_fallback", p_conversion: None, baseline: None };
        }
        let t = Instant::now();
        let result = self.attr.deep_credit(model, self.set.deep_mode, until, previous, &self.touches, seed);
        let took = t.elapsed().as_secs_f64();
        self.stats.deep_seconds += took;
        if self.durations.len() < 4096 {
            self.durations.push((true, took as f32));
        }
        self.stats.deep_calls += 1;
        let deep = self.credit_of(result, first, eligible, fallback, out);
        if let Some(sh) = self.shadow.as_mut() {
            sh.deep_credit(customer, idx, until, seed, out, took);
        }
        deep
    }

    fn credit_of(
        &mut self,
        result: tract_onnx::prelude::TractResult<crate::inference::deep_credit::DeepCredit>,
        first: usize,
        eligible: usize,
        fallback: &[f64],
        out: &mut Vec<f64>,
    ) -> JourneyDeep {
        let model = &self.set.attribution;
        let fall_back = |out: &mut Vec<f64>| {
            out.clear();
            out.extend_from_slice(fallback);
        };
        match result {
            Ok(d) if !d.credits.is_empty() => {
                self.stats.deep_rows += self.attr.scores.len() as u64;
                out[first..eligible].copy_from_slice(&d.credits);
                let method = match self.set.deep_mode {
                    crate::inference::deep_credit::DeepMode::Removal => "removal_effect",
                    crate::inference::deep_credit::DeepMode::Shapley { .. } => "shapley",
                };
                JourneyDeep { method, p_conversion: Some(d.p_conversion), baseline: model.baseline_share.then_some(d.baseline) }
            }
            Ok(d) => {
                self.stats.deep_fallbacks += 1;
                fall_back(out);
                JourneyDeep { method: "time_decay_fallback", p_conversion: Some(d.p_conversion), baseline: None }
            }
            Err(e) => {
                self.stats.errors += 1;
                self.stats.deep_fallbacks += 1;
                tracing::warn!(error = %format!("{e:#}"), "attribution model failed; time decay used for deep credit");
                fall_back(out);
                JourneyDeep { method: "time_decay_fallback", p_conversion: None, baseline: None }
            }
        }
    }
}

/// The step model's input for an event, from the customer's state after it.
pub fn step_input(
    customer: &CustomerState,
    ts: Millis,
    event_type: crate::event::EventType,
    channel: Option<crate::event::Channel>,
    value: Option<f64>,
    gap_ms: Millis,
    new_session: bool,
) -> StepInput {
    StepInput {
        ts,
        event_type,
        channel,
        value,
        gap_ms,
        first_event: customer.counters.events == 1,
        new_session,
        cart: customer.cart.as_ref().map(|c| {
            let qty: i64 = c.lines.iter().map(|l| l.quantity).sum();
            (c.value(), qty as f64, c.checkout_started)
        }),
        last_purchase_ts: (customer.last_purchase_ts != Millis::MIN && customer.last_purchase_ts <= ts).then_some(customer.last_purchase_ts),
        first_event_ts: customer.first_event_ts,
    }
}

/// A stable 64-bit seed from a string (sampled Shapley values are deterministic per conversion).
pub fn seed_of(text: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
