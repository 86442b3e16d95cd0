//! Conversion assembly: the journey a purchase credits (touchpoints after the previous purchase,
//! within the lookback), its rule credits and, with models, deep credit; the purchase spends the
//! journey and closes the cart.

use crate::attribution::credits::{self, Credits};
use crate::engine::scoring::{self, Scoring};
use crate::engine::EngineConfig;
use crate::event::Event;
use crate::journey::CustomerState;
use crate::output::{ConversionRecord, CreditedTouchpoint};
use crate::time::Millis;

/// Buffers reused by every conversion and alert of a partition (no allocation per conversion).
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    pub ts: Vec<Millis>,
    pub idx: Vec<usize>,
    pub credits: Vec<Credits>,
    pub decay: Vec<f64>,
    pub deep: Vec<f64>,
}

/// The journey at `until`: touchpoints after the previous purchase, at or before `until` and within
/// the lookback; their indices and times go to `scratch.idx` / `scratch.ts`.
pub(crate) fn select_journey(customer: &CustomerState, until: Millis, lookback: Millis, scratch: &mut Scratch) {
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
pub(crate) fn convert(
    ev: &Event<'_>,
    customer: &mut CustomerState,
    cfg: &EngineConfig,
    scratch: &mut Scratch,
    scoring: Option<&mut Scoring>,
) -> ConversionRecord {
    let conv_ts = ev.ts;
    let value = ev.value.or_else(|| customer.cart.as_ref().map(|c| c.value())).unwrap_or(0.0);
    let currency = ev.currency.as_deref().map(str::to_string).or_else(|| customer.cart.as_ref().and_then(|c| c.currency.as_deref().map(str::to_string)));
    select_journey(customer, conv_ts, cfg.lookback, scratch);
    credits::assign(&scratch.ts, cfg.half_life, &mut scratch.credits);
    let mut deep_method = None;
    let mut conversion_probability = None;
    let mut deep_baseline = None;
    let with_models = scoring.is_some();
    if let Some(s) = scoring {
        let fallback: Vec<f64> = scratch.credits.iter().map(|c| c.0[0]).collect();
        let d = s.deep_credit(customer, &scratch.idx, conv_ts, &fallback, scoring::seed_of(&ev.event_id), &mut scratch.deep);
        deep_method = Some(d.method);
        conversion_probability = d.p_conversion;
        deep_baseline = d.baseline;
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
    customer.counters.purchases = customer.counters.purchases.saturating_add(1);
    customer.counters.revenue += value;
    ConversionRecord {
        conversion_id: ev.event_id.to_string(),
        customer_id: ev.customer_id.to_string(),
        conversion_ts: conv_ts,
        conversion_value: value,
        currency,
        touchpoints,
        deep_method,
        deep_baseline,
        conversion_probability,
        expected_future_value: None,
        model_version: None,
    }
}
