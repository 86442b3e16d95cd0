//! The journey step model's per-event feature vector, exactly as `models/tsdata.py` builds it for
//! training (the contract in `models/journey_step/metadata.json`, checked at load time).

use crate::event::{Channel, EventType};
use crate::time::Millis;

/// Number of features.
pub const COUNT: usize = 38;

/// Feature names in input order (must equal `feature_encoding.order` of the model's metadata).
pub const NAMES: [&str; COUNT] = [
    "event_type=impression",
    "event_type=click",
    "event_type=email_open",
    "event_type=email_click",
    "event_type=page_view",
    "event_type=product_view",
    "event_type=search",
    "event_type=cart_add",
    "event_type=cart_remove",
    "event_type=checkout_start",
    "event_type=purchase",
    "event_type=other",
    "channel=paid_search",
    "channel=organic_search",
    "channel=paid_social",
    "channel=organic_social",
    "channel=email",
    "channel=display",
    "channel=affiliate",
    "channel=referral",
    "channel=direct",
    "channel=sms",
    "channel=push",
    "channel=other",
    "channel=none",
    "log1p(value)/5",
    "log1p(seconds since previous event)/15",
    "first_event",
    "new_session",
    "cart_open",
    "log1p(cart_value)/5",
    "log1p(cart_quantity)/2",
    "sin(2pi*hour_utc/24)",
    "cos(2pi*hour_utc/24)",
    "has_purchased",
    "log1p(days since previous purchase)/5",
    "log1p(days since first event)/5",
    "checkout_started",
];

/// Normalisation constants (`feature_encoding.normalisation`).
pub const NORMALISATION: [(&str, f64); 7] = [
    ("value_log_scale", 5.0),
    ("gap_log_scale", 15.0),
    ("cart_value_log_scale", 5.0),
    ("cart_qty_log_scale", 2.0),
    ("since_purchase_log_scale", 5.0),
    ("age_log_scale", 5.0),
    ("new_session_gap_minutes", 30.0),
];

/// A gap this long without session ids starts a new session.
pub const NEW_SESSION_GAP_MS: Millis = 30 * 60_000;

const DAY_MS: f64 = 86_400_000.0;
const HOUR_MS: f64 = 3_600_000.0;
const NUM: usize = EventType::COUNT + Channel::COUNT + 1;

/// What the features of one event are computed from: the event and the customer's state after it.
#[derive(Debug, Clone, Copy)]
pub struct StepInput {
    pub ts: Millis,
    pub event_type: EventType,
    pub channel: Option<Channel>,
    pub value: Option<f64>,
    /// Milliseconds since the customer's previous event (0 for the first).
    pub gap_ms: Millis,
    pub first_event: bool,
    pub new_session: bool,
    /// The open cart after the event: (value, quantity, checkout started).
    pub cart: Option<(f64, f64, bool)>,
    /// The latest purchase at or before this event.
    pub last_purchase_ts: Option<Millis>,
    pub first_event_ts: Millis,
}

/// Writes the features of `input` into `out` (length [`COUNT`]).
pub fn encode(input: &StepInput, out: &mut [f32]) {
    debug_assert_eq!(out.len(), COUNT);
    out.fill(0.0);
    out[input.event_type.index()] = 1.0;
    out[EventType::COUNT + input.channel.map_or(Channel::COUNT, Channel::index)] = 1.0;
    let log = |x: f64, scale: f64| (x.max(0.0).ln_1p() / scale) as f32;
    let value = input.value.filter(|v| v.is_finite()).unwrap_or(0.0);
    out[NUM] = log(value, 5.0);
    out[NUM + 1] = log(input.gap_ms.max(0) as f64 / 1000.0, 15.0);
    out[NUM + 2] = f32::from(u8::from(input.first_event));
    out[NUM + 3] = f32::from(u8::from(input.new_session || input.first_event));
    if let Some((value, qty, checkout)) = input.cart {
        out[NUM + 4] = 1.0;
        out[NUM + 5] = log(value, 5.0);
        out[NUM + 6] = log(qty, 2.0);
        out[NUM + 12] = f32::from(u8::from(checkout));
    }
    let hour = input.ts.rem_euclid(86_400_000) as f64 / HOUR_MS;
    let angle = 2.0 * std::f64::consts::PI * hour / 24.0;
    out[NUM + 7] = angle.sin() as f32;
    out[NUM + 8] = angle.cos() as f32;
    if let Some(p) = input.last_purchase_ts {
        out[NUM + 9] = 1.0;
        out[NUM + 10] = log((input.ts - p) as f64 / DAY_MS, 5.0);
    }
    out[NUM + 11] = log((input.ts - input.first_event_ts) as f64 / DAY_MS, 5.0);
}

/// Whether this event starts a session: a different session id than the previous event's (an
/// absent previous id counts as different), or without a session id a gap of 30 minutes or more.
pub fn new_session(session_hash: u64, previous_hash: u64, gap_ms: Millis) -> bool {
    if session_hash != 0 {
        session_hash != previous_hash
    } else {
        gap_ms >= NEW_SESSION_GAP_MS
    }
}

/// A non-zero 64-bit FNV-1a hash of a session id (0 means "no session id").
pub fn session_hash(session: Option<&str>) -> u64 {
    match session {
        None => 0,
        Some(s) => {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in s.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h.max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_hot_and_scalars() {
        let mut x = [0f32; COUNT];
        let input = StepInput {
            ts: 1_704_067_200_000 + 6 * 3_600_000,
            event_type: EventType::CartAdd,
            channel: None,
            value: Some(20.0),
            gap_ms: 60_000,
            first_event: false,
            new_session: true,
            cart: Some((40.0, 2.0, true)),
            last_purchase_ts: Some(1_704_067_200_000 - 86_400_000),
            first_event_ts: 1_704_067_200_000 - 2 * 86_400_000,
        };
        encode(&input, &mut x);
        assert_eq!(x[7], 1.0);
        assert_eq!(x[24], 1.0, "no channel is channel=none");
        assert_eq!(x.iter().take(25).sum::<f32>(), 2.0);
        assert!((x[25] - (21f64.ln() / 5.0) as f32).abs() < 1e-7);
        assert!((x[26] - (61f64.ln() / 15.0) as f32).abs() < 1e-7);
        assert_eq!((x[27], x[28], x[29]), (0.0, 1.0, 1.0));
        assert!((x[32] - 1.0).abs() < 1e-6 && x[33].abs() < 1e-6, "06:00 UTC is a quarter turn");
        assert_eq!(x[34], 1.0);
        assert!((x[35] - ((1.25f64).ln_1p() / 5.0) as f32).abs() < 1e-6);
        assert_eq!(x[37], 1.0);
    }

    #[test]
    fn sessions() {
        let a = session_hash(Some("a"));
        assert_ne!(a, 0);
        assert!(new_session(a, 0, 0));
        assert!(!new_session(a, a, 10 * NEW_SESSION_GAP_MS));
        assert!(new_session(0, a, NEW_SESSION_GAP_MS));
        assert!(!new_session(0, a, NEW_SESSION_GAP_MS - 1));
    }
}
