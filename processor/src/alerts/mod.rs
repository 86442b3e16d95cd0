//! Cart-abandonment alerts: when the model re-checks an idle cart (its inactivity schedule, or
//! one check at `alerts.model_check`), the rule's deadline, P(abandon) at a check, the alert record
//! with its top touchpoints, and the `recommended_action` tiers. The engine owns the timers and
//! calls these at the right event times.

use crate::attribution::conversion::{select_journey, Scratch};
use crate::attribution::credits;
use crate::config::ActionTier;
use crate::engine::scoring::{self, Scoring};
use crate::engine::EngineConfig;
use crate::inference::step::{P_ABANDON, P_PURCHASE};
use crate::journey::{Cart, CustomerState, ModelState};
use crate::output::{AlertRecord, CartItem, TopTouchpoint};
use crate::time::Millis;

/// The first matching `recommended_action` tier (alerts without a probability match tiers with
/// `min_probability = 0` only); "reminder" when none matches.
pub fn recommended_action(actions: &[ActionTier], probability: Option<f64>, cart_value: f64) -> String {
    let p = probability.unwrap_or(0.0);
    actions
        .iter()
        .find(|t| (probability.is_some() || t.min_probability == 0.0) && p >= t.min_probability && cart_value >= t.min_cart_value)
        .map_or_else(|| "reminder".to_string(), |t| t.action.clone())
}

/// The model's next inactivity check of the cart, if one is left: (when, which). With a re-check
/// head, its schedule (`abandon_checks_minutes`) after the cart's last activity; otherwise one check
/// at `alerts.model_check`.
pub(crate) fn next_check(cfg: &EngineConfig, scoring: Option<&Scoring>, cart: &Cart) -> Option<(Millis, usize)> {
    let schedule = &scoring?.set.step.checks_ms;
    let done = if cart.model_checked == cart.last_activity_ts { usize::from(cart.checks_done) } else { 0 };
    let after = if schedule.is_empty() { (done == 0).then_some(cfg.model_check)? } else { *schedule.get(done)? };
    Some((cart.last_activity_ts.saturating_add(after), done))
}

pub(crate) fn next_due(cfg: &EngineConfig, scoring: Option<&Scoring>, cart: &Cart) -> Millis {
    let rule = cart.deadline(cfg.inactivity_timeout);
    next_check(cfg, scoring, cart).map_or(rule, |(at, _)| at.min(rule))
}

/// P(abandon) read at check `k`: the re-check head's column, or `p_abandon` without one.
pub(crate) fn abandon_probability(m: &ModelState, k: usize) -> f32 {
    match m.checks.get(k).or(m.checks.last()) {
        Some(p) => *p,
        None => m.scores[P_ABANDON],
    }
}

/// Builds the abandonment alert of the customer's open cart at `alert_ts` and marks it alerted.
pub(crate) fn build_alert(
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
    let mut ranked: Vec<(f64, usize, usize)> =
        (0..scratch.idx.len()).map(|n| (if with_models { scratch.deep[n] } else { scratch.decay[n] }, n, scratch.idx[n])).collect();
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
        items: cart.lines.iter().map(|l| CartItem { product_id: l.product_id.to_string(), quantity: l.quantity, unit_price: l.unit_price }).collect(),
        last_activity_ts: cart.last_activity_ts,
        reason,
        abandonment_probability: probability,
        conversion_probability,
        top_touchpoints,
        recommended_action: recommended_action(&cfg.actions, probability, cart_value),
        model_version,
    }
}
