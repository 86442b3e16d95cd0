//! Why the model thinks a cart is abandoned: occlusion of the step model's input of the customer's
//! latest event. Each group of features (the cart's value, its items, checkout, the latest event,
//! its channel, the time of day, the session, purchase history, tenure, and the journey's hidden
//! state) is set, one group at a time, to the model's reference (the mean input of the training
//! log's cart events, `explain.reference` of its metadata; zeros, a customer with no history, for
//! the hidden state), and the step model is run again. A group's impact is how much P(abandon)
//! falls when it is replaced: positive when the customer's actual value makes abandonment more
//! likely than a typical cart's would. One batched model call per alert, none per event.

use crate::event::{Channel, EventType};
use crate::inference::features::{self, COUNT};
use crate::journey::CustomerState;
use crate::output::AbandonmentReason;

/// First numeric feature (after the event-type and channel one-hots).
const NUM: usize = EventType::COUNT + Channel::COUNT + 1;

/// A group of the step model's inputs that an alert reason names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    CartValue,
    CartItems,
    Checkout,
    LatestEvent,
    Channel,
    TimeOfDay,
    Session,
    PurchaseHistory,
    Tenure,
    Journey,
}

impl Group {
    pub const ALL: [Group; 10] = [
        Group::CartValue,
        Group::CartItems,
        Group::Checkout,
        Group::LatestEvent,
        Group::Channel,
        Group::TimeOfDay,
        Group::Session,
        Group::PurchaseHistory,
        Group::Tenure,
        Group::Journey,
    ];

    /// The name in the alert record (a fixed vocabulary, documented in the schema).
    pub fn as_str(self) -> &'static str {
        match self {
            Group::CartValue => "cart_value",
            Group::CartItems => "cart_items",
            Group::Checkout => "checkout",
            Group::LatestEvent => "latest_event",
            Group::Channel => "channel",
            Group::TimeOfDay => "time_of_day",
            Group::Session => "session",
            Group::PurchaseHistory => "purchase_history",
            Group::Tenure => "tenure",
            Group::Journey => "journey",
        }
    }

    /// The feature indices the group replaces (none for the hidden state).
    fn features(self) -> std::ops::Range<usize> {
        match self {
            Group::CartValue => NUM + 5..NUM + 6,
            Group::CartItems => NUM + 6..NUM + 7,
            Group::Checkout => NUM + 12..NUM + 13,
            // the event type's one-hot and the event's own value
            Group::LatestEvent => 0..EventType::COUNT,
            Group::Channel => EventType::COUNT..NUM,
            Group::TimeOfDay => NUM + 7..NUM + 9,
            // gap since the previous event, first event, new session
            Group::Session => NUM + 1..NUM + 4,
            Group::PurchaseHistory => NUM + 9..NUM + 11,
            Group::Tenure => NUM + 11..NUM + 12,
            Group::Journey => 0..0,
        }
    }
}

/// Writes into `rows` (features) and `hidden` one base row (`input` as stored: the features, then
/// the hidden state before the event) and one row per [`Group::ALL`] with that group replaced by
/// `reference`. `input` must hold [`COUNT`] features and the hidden state.
pub fn occlusion_rows(input: &[f32], reference: &[f32], rows: &mut Vec<f32>, hidden: &mut Vec<f32>) {
    let (x, h) = input.split_at(COUNT);
    rows.clear();
    hidden.clear();
    rows.extend_from_slice(x);
    hidden.extend_from_slice(h);
    for g in Group::ALL {
        let at = rows.len();
        rows.extend_from_slice(x);
        let r = g.features();
        rows[at + r.start..at + r.end].copy_from_slice(&reference[r.clone()]);
        if g == Group::LatestEvent {
            rows[at + NUM] = reference[NUM];
        }
        let at = hidden.len();
        hidden.extend_from_slice(h);
        if g == Group::Journey {
            hidden[at..].fill(0.0);
        }
    }
}

/// The top `n` reasons from the probabilities of [`occlusion_rows`] (base first): groups whose
/// actual value raises P(abandon) by at least 0.005, largest first.
pub fn top_reasons(p: &[f32], customer: &CustomerState, input: &[f32], n: usize) -> Vec<AbandonmentReason> {
    let base = f64::from(p[0]);
    let mut ranked: Vec<(f64, Group)> = Group::ALL.iter().zip(&p[1..]).map(|(&g, &q)| (base - f64::from(q), g)).filter(|(d, _)| *d >= 0.005).collect();
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked.truncate(n);
    ranked.into_iter().map(|(impact, g)| AbandonmentReason { feature: g.as_str(), value: describe(g, customer, input), impact }).collect()
}

/// The customer's actual value of a group, for a marketer.
fn describe(g: Group, c: &CustomerState, input: &[f32]) -> String {
    let x = &input[..COUNT];
    let unlog = |v: f32, scale: f64| (f64::from(v) * scale).exp_m1();
    let hot = |range: std::ops::Range<usize>| x[range.clone()].iter().position(|&v| v > 0.5).map(|i| range.start + i);
    let cart = c.cart.as_ref();
    match g {
        Group::CartValue => match cart {
            Some(cart) => format!("{:.2}{}", cart.value(), cart.currency.as_deref().map(|c| format!(" {c}")).unwrap_or_default()),
            None => "no cart".into(),
        },
        Group::CartItems => {
            let qty: i64 = cart.map_or(0, |cart| cart.lines.iter().map(|l| l.quantity).sum());
            format!("{qty} items in {} lines", cart.map_or(0, |cart| cart.lines.len()))
        }
        Group::Checkout => if cart.is_some_and(|cart| cart.checkout_started) { "checkout started" } else { "checkout not started" }.into(),
        Group::LatestEvent => hot(0..EventType::COUNT).map_or("unknown", |i| EventType::ALL[i].as_str()).into(),
        Group::Channel => hot(EventType::COUNT..NUM).and_then(|i| Channel::ALL.get(i - EventType::COUNT)).map_or("none", |ch| ch.as_str()).into(),
        Group::TimeOfDay => {
            let ts = cart.map_or(c.last_event_ts, |cart| cart.last_activity_ts);
            format!("{:02}:00 UTC", ts.rem_euclid(86_400_000) / 3_600_000)
        }
        Group::Session => {
            let minutes = unlog(x[NUM + 1], 15.0) / 60.0;
            if x[NUM + 2] > 0.5 {
                "first visit".into()
            } else if x[NUM + 3] > 0.5 {
                format!("new session after {}", duration(minutes))
            } else {
                format!("{} since the previous event", duration(minutes))
            }
        }
        Group::PurchaseHistory => {
            if x[NUM + 9] > 0.5 {
                format!("last purchase {} days before", unlog(x[NUM + 10], 5.0).round())
            } else {
                "no earlier purchase".into()
            }
        }
        Group::Tenure => format!("first seen {} days before", unlog(x[NUM + 11], 5.0).round()),
        Group::Journey => format!("{} touchpoints in the journey", c.touchpoints.len()),
    }
}

fn duration(minutes: f64) -> String {
    if minutes < 90.0 {
        format!("{} min", minutes.round())
    } else if minutes < 48.0 * 60.0 {
        format!("{:.0} h", minutes / 60.0)
    } else {
        format!("{:.0} days", minutes / 1440.0)
    }
}

/// Keeps (or drops) the step model's input of the customer's latest event: kept only while a cart
/// is open and not yet alerted, and only when the models can explain (`keep`).
pub fn remember_input(customer: &mut CustomerState, keep: bool, x: &[f32], h_before: &[f32]) {
    if keep && customer.cart.as_ref().is_some_and(|c| !c.alerted) {
        let n = x.len() + h_before.len();
        if customer.abandon_input.len() != n {
            customer.abandon_input = vec![0.0; n].into();
        }
        let (xs, hs) = customer.abandon_input.split_at_mut(x.len());
        xs.copy_from_slice(x);
        hs.copy_from_slice(h_before);
    } else if !customer.abandon_input.is_empty() {
        customer.abandon_input = Box::default();
    }
}

/// Whether `input` is a stored input for a model of `hidden` units.
pub fn fits(input: &[f32], hidden: usize) -> bool {
    input.len() == features::COUNT + hidden
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_group_replaces_only_its_own_inputs() {
        let hidden = 4;
        let input: Vec<f32> = (0..COUNT + hidden).map(|i| 1.0 + i as f32).collect();
        let reference: Vec<f32> = (0..COUNT).map(|i| -(i as f32)).collect();
        let (mut rows, mut h) = (Vec::new(), Vec::new());
        occlusion_rows(&input, &reference, &mut rows, &mut h);
        assert_eq!(rows.len(), COUNT * (1 + Group::ALL.len()));
        assert_eq!(h.len(), hidden * (1 + Group::ALL.len()));
        assert_eq!(&rows[..COUNT], &input[..COUNT]);
        let mut covered = vec![0; COUNT];
        for (n, g) in Group::ALL.iter().enumerate() {
            let row = &rows[(n + 1) * COUNT..(n + 2) * COUNT];
            let hrow = &h[(n + 1) * hidden..(n + 2) * hidden];
            for i in 0..COUNT {
                if row[i] != input[i] {
                    assert_eq!(row[i], reference[i], "{g:?} feature {i}");
                    covered[i] += 1;
                }
            }
            if *g == Group::Journey {
                assert!(hrow.iter().all(|&v| v == 0.0));
            } else {
                assert_eq!(hrow, &input[COUNT..]);
            }
        }
        // every feature but cart_open belongs to exactly one group
        for (i, c) in covered.iter().enumerate() {
            assert_eq!(*c, usize::from(i != NUM + 4), "feature {} ({})", i, features::NAMES[i]);
        }
    }

    #[test]
    fn reasons_are_the_groups_that_raise_p_abandon_largest_first() {
        let customer = CustomerState::new(0);
        let mut x = vec![0.0; COUNT + 2];
        x[EventType::ALL.iter().position(|e| *e == EventType::CartRemove).unwrap()] = 1.0;
        let mut p = vec![0.0f32; 1 + Group::ALL.len()];
        p[0] = 0.9;
        for (n, q) in p[1..].iter_mut().enumerate() {
            *q = 0.9;
            if Group::ALL[n] == Group::LatestEvent {
                *q = 0.6;
            }
            if Group::ALL[n] == Group::Checkout {
                *q = 0.8;
            }
            if Group::ALL[n] == Group::Tenure {
                *q = 0.95; // lowers P(abandon): not a reason
            }
        }
        let r = top_reasons(&p, &customer, &x, 3);
        assert_eq!(r.iter().map(|r| r.feature).collect::<Vec<_>>(), ["latest_event", "checkout"]);
        assert_eq!(r[0].value, "cart_remove");
        assert_eq!(r[1].value, "checkout not started");
        assert!((r[0].impact - 0.3).abs() < 1e-6);
    }
}
