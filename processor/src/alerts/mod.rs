//! Cart-abandonment alerts: when the model re-checks an idle cart (its inactivity schedule, or
//! one check at `alerts.model_check`), the rule's deadline, P(abandon) at a check, the alert record
//! with its top touchpoints, and the `recommended_action` tiers. The engine owns the timers and
//! calls these at the right event times.

pub mod reasons;

use crate::attribution::conversion::{select_journey, Scratch};
use crate::attribution::credits;
use crate::config::ActionTier;
use crate::engine::scoring::{self, Scoring};
use crate::engine::EngineConfig;
use crate::inference::step::{P_ABANDON, P_PURCHASE};
use crate::inference::{ModelError, ModelSet};
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

/// One inactivity check of a policy: `after` the cart's last activity, read the re-check head's
/// `column` (or `p_abandon` without a head) and alert at or above `threshold`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Check {
    pub after: Millis,
    pub column: usize,
    pub threshold: f64,
}

/// When carts alert: the model's checks (in inactivity order) and the rule's deadline with its
/// reason. Resolved from the config and the step model's `alert_policies` (at start, and on every
/// model reload).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub checks: Vec<Check>,
    /// (inactivity, reason): `safety_net` with models, `inactivity_timeout` without; none when off.
    pub rule: Option<(Millis, &'static str)>,
}

impl Policy {
    /// The policy for `cfg.target_delay` and the models (none: the timer rule only). Errors name the
    /// config key to change.
    pub fn resolve(cfg: &EngineConfig, models: Option<&ModelSet>) -> Result<Policy, String> {
        let Some(set) = models else {
            return Ok(Policy { checks: Vec::new(), rule: Some((cfg.target_delay, "inactivity_timeout")) });
        };
        let rule = (cfg.safety_net > 0).then_some((cfg.safety_net, "safety_net"));
        let step = &set.step;
        let override_threshold = cfg.abandon_threshold;
        let checks = if step.checks_ms.is_empty() {
            let threshold = override_threshold.ok_or_else(|| {
                format!("alerts.abandon_threshold: the step model `{}` has no re-check head and no alert policy; set a threshold", step.meta.name)
            })?;
            vec![Check { after: cfg.model_check, column: 0, threshold }]
        } else if let Some(threshold) = override_threshold {
            // one threshold at every check of the head up to the target delay
            step.checks_ms.iter().enumerate().filter(|(_, &at)| at <= cfg.target_delay).map(|(column, &after)| Check { after, column, threshold }).collect()
        } else {
            let p = step.policies.iter().filter(|p| p.target_ms <= cfg.target_delay).max_by_key(|p| p.target_ms).ok_or_else(|| {
                let targets: Vec<String> = step.policies.iter().map(|p| format!("{}m", p.target_ms / 60_000)).collect();
                format!(
                    "alerts.target_delay: the step model `{}` has alert policies for {targets:?} only; choose one of those or set alerts.abandon_threshold",
                    step.meta.name
                )
            })?;
            p.checks.iter().map(|&(column, threshold)| Check { after: step.checks_ms[column], column, threshold }).collect()
        };
        Ok(Policy { checks, rule })
    }

    /// Whether the config and the models give a policy (at start and before a model reload).
    pub fn check(cfg: &EngineConfig, models: Option<&ModelSet>) -> Result<(), ModelError> {
        Policy::resolve(cfg, models)
            .map(|_| ())
            .map_err(|message| ModelError::AlertPolicy { model: models.map_or_else(String::new, |m| m.step.meta.name.clone()), message })
    }
}

/// The model's next inactivity check of the cart, if one is left: (when, which).
pub(crate) fn next_check(policy: &Policy, cart: &Cart) -> Option<(Millis, usize)> {
    let done = if cart.model_checked == cart.last_activity_ts { usize::from(cart.checks_done) } else { 0 };
    let check = policy.checks.get(done)?;
    Some((cart.last_activity_ts.saturating_add(check.after), done))
}

/// The rule's deadline of the cart, if the policy has a rule.
pub(crate) fn deadline(policy: &Policy, cart: &Cart) -> Option<(Millis, &'static str)> {
    policy.rule.map(|(after, reason)| (cart.deadline(after), reason))
}

/// When the cart next needs attention (a check or the rule); none when nothing is left.
pub(crate) fn next_due(policy: &Policy, cart: &Cart) -> Option<Millis> {
    let check = next_check(policy, cart).map(|(at, _)| at);
    let rule = deadline(policy, cart).map(|(at, _)| at);
    match (check, rule) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// P(abandon) read at check `k`: the re-check head's column, or `p_abandon` without one.
pub(crate) fn abandon_probability(m: &ModelState, k: usize) -> f32 {
    match m.checks().get(k).or(m.checks().last()) {
        Some(p) => *p,
        None => m.scores[P_ABANDON],
    }
}

/// Builds the abandonment alert of the customer's open cart, fired at (`alert_ts`, `reason`), and
/// marks it alerted.
pub(crate) fn build_alert(
    key: &str,
    customer: &mut CustomerState,
    (alert_ts, reason): (Millis, &'static str),
    cfg: &EngineConfig,
    policy: &Policy,
    scratch: &mut Scratch,
    scoring: Option<&mut Scoring>,
) -> AlertRecord {
    select_journey(customer, alert_ts, cfg.lookback, scratch);
    credits::time_decay(&scratch.ts, cfg.half_life, &mut scratch.decay);
    let (mut probability, mut conversion_probability, mut model_version) = (None, None, None);
    let mut abandonment_reasons = Vec::new();
    let with_models = scoring.is_some();
    if let Some(s) = scoring {
        if let Some(m) = &customer.model {
            // P(abandon) for the current inactivity: the latest check read, else the 10-minute one
            let cart = customer.cart.as_ref().expect("alert needs an open cart");
            let done = if cart.model_checked == cart.last_activity_ts { usize::from(cart.checks_done.max(1)) - 1 } else { 0 };
            let column = policy.checks.get(done).or(policy.checks.last()).map_or(0, |c| c.column);
            probability = Some(f64::from(abandon_probability(m, column)));
            conversion_probability = Some(f64::from(m.scores[P_PURCHASE]));
            abandonment_reasons = s.abandon_reasons(customer, column);
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
    customer.counters.alerts = customer.counters.alerts.saturating_add(1);
    customer.abandon_input = Box::default();
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
        abandonment_reasons,
        recommended_action: recommended_action(&cfg.actions, probability, cart_value),
        expected_recoverable_value: probability.map(|p| cart_value * p * cfg.recovery_rate),
        model_version,
    }
}
