//! Shadow scoring: the candidate models (`models.candidate`) run beside the active ones on every
//! event and conversion of the partition, with their own per-customer hidden states, and write
//! nothing. What they are compared on: realised outcomes of the step model's predictions
//! ([`Outcomes`]), the divergence of deep credit's channel shares, and the cost of each.
//!
//! The candidate's states live in memory only (not in the changelog): after a restart it starts
//! cold, and a promotion resets the customers it has not seen since (see DESIGN.md).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use foldhash::fast::RandomState;

use crate::event::Channel;
use crate::inference::deep_credit::{campaign_bucket, AttributionModel, AttributionRunner, ModelTouch};
use crate::inference::outcomes::{OutcomeCounts, Outcomes, Scored};
use crate::inference::step::{StepRunner, StepScores, P_ABANDON, P_PURCHASE};
use crate::inference::ModelSet;
use crate::journey::{CustomerState, ModelState};
use crate::time::Millis;

/// What the shadow measured since the last drain; adds up across partitions.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowCounts {
    pub outcomes: OutcomeCounts,
    /// Events scored by both roles.
    pub events: u64,
    /// Step-model seconds per role over those events.
    pub step_seconds: [f64; 2],
    /// Conversions given deep credit by both roles.
    pub conversions: u64,
    pub deep_seconds: [f64; 2],
    /// Per role: the conversions' channel shares of deep credit, summed.
    pub channel_credit: [[f64; Channel::COUNT]; 2],
    /// Sum over conversions of the total-variation distance between the roles' channel shares.
    pub divergence: f64,
}

impl Default for ShadowCounts {
    fn default() -> Self {
        ShadowCounts {
            outcomes: OutcomeCounts::default(),
            events: 0,
            step_seconds: [0.0; 2],
            conversions: 0,
            deep_seconds: [0.0; 2],
            channel_credit: [[0.0; Channel::COUNT]; 2],
            divergence: 0.0,
        }
    }
}

impl ShadowCounts {
    pub fn merge(&mut self, o: &ShadowCounts) {
        self.outcomes.merge(&o.outcomes);
        self.events += o.events;
        self.conversions += o.conversions;
        self.divergence += o.divergence;
        for r in 0..2 {
            self.step_seconds[r] += o.step_seconds[r];
            self.deep_seconds[r] += o.deep_seconds[r];
            for c in 0..Channel::COUNT {
                self.channel_credit[r][c] += o.channel_credit[r][c];
            }
        }
    }
}

/// The candidate models of one partition engine.
#[derive(Debug)]
pub struct Shadow {
    pub set: Arc<ModelSet>,
    pub(super) step: StepRunner,
    pub(super) attr: AttributionRunner,
    /// The candidate's state per customer (hidden state and scores after the latest event).
    pub(super) states: HashMap<Box<str>, Box<ModelState>, RandomState>,
    h: Vec<f32>,
    h_out: Vec<f32>,
    scores: Vec<StepScores>,
    checks: Vec<f32>,
    touches: Vec<ModelTouch>,
    credits: Vec<f64>,
    outcomes: Outcomes,
    counts: ShadowCounts,
}

impl Shadow {
    pub fn new(set: Arc<ModelSet>) -> Result<Shadow, String> {
        Ok(Shadow {
            step: StepRunner::new(&set.step).map_err(|e| format!("candidate: {e:#}"))?,
            attr: AttributionRunner::new(&set.attribution).map_err(|e| format!("candidate: {e:#}"))?,
            set,
            states: HashMap::default(),
            h: Vec::new(),
            h_out: Vec::new(),
            scores: Vec::new(),
            checks: Vec::new(),
            touches: Vec::new(),
            credits: Vec::new(),
            outcomes: Outcomes::default(),
            counts: ShadowCounts::default(),
        })
    }

    /// Runs the candidate step model on one wave the active model has just run: `x` holds the
    /// rows' features (the same for both: one input contract), `keys` their customers, `events`
    /// (ts, is a purchase, cart open after it), `active` the active model's scores.
    pub(super) fn wave(&mut self, keys: &[&str], x: &[f32], events: &[(Millis, bool, bool)], active: &[StepScores], active_seconds: f64) {
        let rows = keys.len();
        let hdim = self.set.step.hidden;
        let k = self.set.step.checks_ms.len();
        self.h.clear();
        for key in keys {
            match self.states.get(*key) {
                Some(m) if m.hidden().len() == hdim => self.h.extend_from_slice(m.hidden()),
                _ => self.h.resize(self.h.len() + hdim, 0.0),
            }
        }
        self.h_out.resize(rows * hdim, 0.0);
        self.scores.resize(rows, [0.0; 3]);
        self.checks.resize(rows * k, 0.0);
        let t = Instant::now();
        let ran = self.step.run(rows, x, &self.h, &mut self.h_out, &mut self.scores, &mut self.checks);
        self.counts.step_seconds[1] += t.elapsed().as_secs_f64();
        self.counts.step_seconds[0] += active_seconds;
        if let Err(e) = ran {
            tracing::warn!(error = %format!("{e:#}"), rows, "candidate step model failed; these events are not compared");
            return;
        }
        self.counts.events += rows as u64;
        for (j, key) in keys.iter().enumerate() {
            let m = match self.states.get_mut(*key) {
                Some(m) => m,
                None => self.states.entry((*key).into()).or_insert_with(|| Box::new(ModelState::empty())),
            };
            m.set(&self.h_out[j * hdim..(j + 1) * hdim], &self.checks[j * k..(j + 1) * k]);
            m.scores = self.scores[j];
            let (ts, purchase, cart_open) = events[j];
            m.scored_ts = ts;
            let (a, c) = (active[j], self.scores[j]);
            let scored = Scored { ts, purchase, cart_open, p_purchase: [a[P_PURCHASE], c[P_PURCHASE]], p_abandon: [a[P_ABANDON], c[P_ABANDON]] };
            self.outcomes.observe(key, &scored);
        }
    }

    /// Resolves the predictions whose horizon has passed (after a flush).
    pub(super) fn expire(&mut self) {
        self.outcomes.expire();
    }

    /// The candidate's deep credit of the same journey, compared with the active one's
    /// (`active`: per journey touchpoint, as written).
    pub(super) fn deep_credit(&mut self, customer: &CustomerState, idx: &[usize], until: Millis, seed: u64, active: &[f64], active_seconds: f64) {
        let model = &self.set.attribution;
        let (first, eligible, previous) = select_touches(model, customer, idx, until, &mut self.touches);
        self.credits.clear();
        self.credits.resize(idx.len(), 0.0);
        let t = Instant::now();
        let got = if self.touches.is_empty() { None } else { self.attr.deep_credit(model, self.set.deep_mode, until, previous, &self.touches, seed).ok() };
        self.counts.deep_seconds[1] += t.elapsed().as_secs_f64();
        self.counts.deep_seconds[0] += active_seconds;
        match got {
            Some(d) if !d.credits.is_empty() => self.credits[first..eligible].copy_from_slice(&d.credits),
            // no lift: the candidate would fall back to time decay, as the active one does
            _ => return,
        }
        let shares = |credits: &[f64]| {
            let mut s = [0.0; Channel::COUNT];
            for (&i, c) in idx.iter().zip(credits) {
                s[customer.touchpoints[i].channel.index()] += c;
            }
            let total: f64 = s.iter().sum();
            if total > 0.0 {
                s.iter_mut().for_each(|v| *v /= total);
            }
            (s, total > 0.0)
        };
        let ((a, a_ok), (c, c_ok)) = (shares(active), shares(&self.credits));
        if !(a_ok && c_ok) {
            return;
        }
        self.counts.conversions += 1;
        self.counts.divergence += 0.5 * a.iter().zip(&c).map(|(x, y)| (x - y).abs()).sum::<f64>();
        for ch in 0..Channel::COUNT {
            self.counts.channel_credit[0][ch] += a[ch];
            self.counts.channel_credit[1][ch] += c[ch];
        }
    }

    /// Forgets a customer (erased or expired).
    pub(super) fn forget(&mut self, key: &str) {
        self.states.remove(key);
        self.outcomes.forget(key);
    }

    /// What was measured since the last call.
    pub fn take(&mut self) -> ShadowCounts {
        let mut c = std::mem::take(&mut self.counts);
        c.outcomes = self.outcomes.take();
        c
    }

    /// Open predictions waiting for their outcome.
    pub fn open_predictions(&self) -> usize {
        self.outcomes.open()
    }

    /// After a promotion the roles are swapped: what was measured so far no longer applies.
    pub(super) fn restart_comparison(&mut self) {
        self.outcomes = Outcomes::default();
        self.counts = ShadowCounts::default();
    }
}

/// The touchpoints of the journey `idx` the attribution model reads: those before its purchase
/// path, the latest `len` of them. Returns (first, end) into `idx` and the previous purchase.
pub(super) fn select_touches(
    model: &AttributionModel,
    customer: &CustomerState,
    idx: &[usize],
    until: Millis,
    touches: &mut Vec<ModelTouch>,
) -> (usize, usize, Option<Millis>) {
    let previous = (customer.last_purchase_ts != Millis::MIN && customer.last_purchase_ts <= until).then_some(customer.last_purchase_ts);
    let cut = until.saturating_sub(model.purchase_path_ms);
    let eligible = idx.iter().take_while(|&&i| customer.touchpoints[i].ts <= cut).count();
    let room = model.len - usize::from(model.previous_purchase_token && previous.is_some());
    let first = eligible.saturating_sub(room);
    touches.clear();
    for &i in &idx[first..eligible] {
        let t = &customer.touchpoints[i];
        touches.push(ModelTouch { channel: t.channel, event_type: t.event_type, campaign_bucket: campaign_bucket(t.campaign.as_deref()), ts: t.ts });
    }
    (first, eligible, previous)
}
