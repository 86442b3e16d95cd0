//! Per-customer journey state: recent marketing touchpoints, the open cart, session and counters.

mod campaign;
pub mod dedupe;
mod model_state;
mod short_text;

pub use campaign::{Campaign, Campaigns};
pub use model_state::ModelState;
pub use short_text::ShortText;

use std::collections::VecDeque;
use std::mem::size_of;

use serde::{Deserialize, Serialize};

use crate::event::{Channel, Event, EventType};
use crate::time::Millis;

/// A marketing touchpoint kept for attribution: 48 bytes. Touchpoints of equal `ts` are kept in
/// arrival order (their order in [`CustomerState::touchpoints`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredTouchpoint", into = "StoredTouchpoint")]
pub struct Touchpoint {
    pub event_id: ShortText,
    /// Shared by the partition's touchpoints of the same campaign ([`Campaigns`]).
    pub campaign: Option<Campaign>,
    pub ts: Millis,
    pub channel: Channel,
    pub event_type: EventType,
}

/// A touchpoint in the serde form of changelog versions 1 and 2 (and JSON), which also stored
/// the partition's arrival number (`seq`): read and ignored, written as 0.
#[derive(Serialize, Deserialize)]
struct StoredTouchpoint {
    event_id: ShortText,
    campaign: Option<Campaign>,
    ts: Millis,
    seq: u64,
    channel: Channel,
    event_type: EventType,
}

impl From<StoredTouchpoint> for Touchpoint {
    fn from(t: StoredTouchpoint) -> Self {
        Touchpoint { event_id: t.event_id, campaign: t.campaign, ts: t.ts, channel: t.channel, event_type: t.event_type }
    }
}

impl From<Touchpoint> for StoredTouchpoint {
    fn from(t: Touchpoint) -> Self {
        StoredTouchpoint { event_id: t.event_id, campaign: t.campaign, ts: t.ts, seq: 0, channel: t.channel, event_type: t.event_type }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CartLine {
    pub product_id: Box<str>,
    pub quantity: i64,
    pub unit_price: f64,
}

/// An open cart: opened by a `cart_add`, changed by `cart_add`/`cart_remove`, closed by `purchase`
/// or by becoming empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cart {
    /// The event that opened the cart; with the customer id it names the cart (and its alert).
    pub opened_by: Box<str>,
    pub opened_ts: Millis,
    pub lines: Vec<CartLine>,
    pub currency: Option<Box<str>>,
    /// Latest event time of any event of the customer since the cart opened.
    pub last_activity_ts: Millis,
    /// Latest event time of a cart event.
    pub last_cart_ts: Millis,
    /// Set once the abandonment alert for this cart was written.
    pub alerted: bool,
    /// A `checkout_start` happened since the cart opened.
    #[serde(default)]
    pub checkout_started: bool,
    /// With models: the `last_activity_ts` whose inactivity checks have started ...
    #[serde(default = "never")]
    pub model_checked: Millis,
    /// ... and how many of them are done (the model's re-check schedule, or the one check).
    #[serde(default = "one")]
    pub checks_done: u8,
}

fn one() -> u8 {
    1
}

fn never() -> Millis {
    Millis::MIN
}

impl Cart {
    pub fn value(&self) -> f64 {
        self.lines.iter().map(|l| l.quantity as f64 * l.unit_price).sum()
    }

    /// Event time at which the cart counts as abandoned if nothing else happens.
    #[inline]
    pub fn deadline(&self, timeout: Millis) -> Millis {
        self.last_activity_ts.saturating_add(timeout)
    }
}

/// Per-customer counts (saturating; 32 bits in memory, varints in the changelog like the 64-bit
/// ones of earlier versions).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Counters {
    pub events: u32,
    pub touchpoints: u32,
    pub purchases: u32,
    pub revenue: f64,
    pub carts_opened: u32,
    pub alerts: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerState {
    /// Touchpoints sorted by ts (equal ts in arrival order), bounded by the lookback and
    /// `max_touchpoints`.
    pub touchpoints: VecDeque<Touchpoint>,
    /// Boxed: most customers have no open cart, and the state is ~90 bytes smaller for them
    /// (the same bytes in the changelog).
    pub cart: Option<Box<Cart>>,
    pub session_id: Option<ShortText>,
    pub session_start_ts: Millis,
    pub first_event_ts: Millis,
    pub last_event_ts: Millis,
    /// Event time of the latest purchase; touchpoints at or before it are spent.
    pub last_purchase_ts: Millis,
    pub counters: Counters,
    /// Hash of the previous event's session id (0: none), for the step model's `new_session`.
    #[serde(default)]
    pub prev_session: u64,
    /// The step model's state (absent without models, or before the first scored event).
    #[serde(default)]
    pub model: Option<Box<ModelState>>,
    /// Hashes of the latest event ids, to drop repeated events.
    #[serde(default)]
    pub seen: dedupe::SeenIds,
    /// While a cart is open and not alerted, with models that explain: the step model's input of
    /// the latest event (its features, then the hidden state before it), from which an alert's
    /// reasons are computed (`alerts::reasons`). Empty otherwise. Must stay the last stored field
    /// (the changelog reads version-1 states, which lack it, by appending its empty encoding).
    #[serde(default)]
    pub abandon_input: Box<[f32]>,
    /// Queued for the changelog since the last drain (not part of the state itself).
    #[serde(skip)]
    pub(crate) queued: bool,
    /// Position in the engine's list of changed customers while queued.
    #[serde(skip)]
    pub(crate) changed_idx: u32,
    /// Events of this customer waiting for the step model.
    #[serde(skip)]
    pub(crate) pending: u32,
    /// Changed since the partition's last snapshot (in its list of customers to write).
    #[serde(skip)]
    pub(crate) unsaved: bool,
}

impl CustomerState {
    pub fn new(ts: Millis) -> Self {
        CustomerState {
            touchpoints: VecDeque::new(),
            cart: None,
            session_id: None,
            session_start_ts: ts,
            first_event_ts: ts,
            last_event_ts: ts,
            last_purchase_ts: Millis::MIN,
            counters: Counters::default(),
            prev_session: 0,
            model: None,
            seen: dedupe::SeenIds::default(),
            abandon_input: Box::default(),
            queued: false,
            changed_idx: 0,
            pending: 0,
            unsaved: false,
        }
    }

    /// Adds a touchpoint in (ts, arrival) order, then enforces the lookback and the size bound
    /// (oldest dropped first). Its campaign name is `campaigns`' shared one.
    pub fn add_touchpoint(&mut self, ev: &Event<'_>, campaigns: &mut Campaigns, lookback: Millis, max: usize) {
        let tp = Touchpoint {
            event_id: ev.event_id.as_ref().into(),
            campaign: ev.campaign.as_deref().map(|name| campaigns.get(name)),
            ts: ev.ts,
            channel: ev.channel.unwrap_or(Channel::Other),
            event_type: ev.event_type,
        };
        let len = self.touchpoints.len();
        if len == self.touchpoints.capacity() {
            // by half (at least 2) and never past max + 1: doubling left a third of the room
            // empty on average, 64 bytes a slot
            let want = (len + (len / 2).max(2)).min(max + 1).max(len + 1);
            self.touchpoints.reserve_exact(want - len);
        }
        match self.touchpoints.back() {
            Some(last) if last.ts > tp.ts => {
                let at = self.touchpoints.partition_point(|t| t.ts <= tp.ts);
                self.touchpoints.insert(at, tp);
            }
            _ => self.touchpoints.push_back(tp),
        }
        let horizon = self.last_event_ts.max(ev.ts).saturating_sub(lookback);
        while self.touchpoints.front().is_some_and(|t| t.ts < horizon) {
            self.touchpoints.pop_front();
        }
        while self.touchpoints.len() > max {
            self.touchpoints.pop_front();
        }
        self.counters.touchpoints = self.counters.touchpoints.saturating_add(1);
    }

    /// Shares the campaign names of a restored state's touchpoints with the partition's.
    pub fn share_campaigns(&mut self, campaigns: &mut Campaigns) {
        for c in self.touchpoints.iter_mut().filter_map(|t| t.campaign.as_mut()) {
            campaigns.share(c);
        }
    }

    /// Applies a cart event. Returns true when this event opened a new cart.
    pub fn apply_cart(&mut self, ev: &Event<'_>) -> bool {
        let product = ev.product_id.as_deref().unwrap_or("unknown");
        match ev.event_type {
            EventType::CartAdd => {
                let qty = ev.quantity.unwrap_or(1);
                if qty == 0 && self.cart.is_none() {
                    return false;
                }
                let opened = self.cart.is_none();
                let cart = self.cart.get_or_insert_with(|| {
                    Box::new(Cart {
                        opened_by: ev.event_id.as_ref().into(),
                        opened_ts: ev.ts,
                        lines: Vec::new(),
                        currency: None,
                        last_activity_ts: ev.ts,
                        last_cart_ts: ev.ts,
                        alerted: false,
                        checkout_started: false,
                        model_checked: Millis::MIN,
                        checks_done: 0,
                    })
                });
                if let Some(c) = &ev.currency {
                    if cart.currency.as_deref() != Some(c.as_ref()) {
                        cart.currency = Some(c.as_ref().into());
                    }
                }
                let price = ev.value.unwrap_or(0.0);
                match cart.lines.iter_mut().find(|l| &*l.product_id == product) {
                    Some(line) => {
                        line.quantity += qty;
                        if ev.value.is_some() {
                            line.unit_price = price;
                        }
                    }
                    None => cart.lines.push(CartLine { product_id: product.into(), quantity: qty, unit_price: price }),
                }
                cart.last_cart_ts = cart.last_cart_ts.max(ev.ts);
                if opened {
                    self.counters.carts_opened = self.counters.carts_opened.saturating_add(1);
                }
                opened
            }
            EventType::CartRemove => {
                if let Some(cart) = &mut self.cart {
                    if let Some(i) = cart.lines.iter().position(|l| &*l.product_id == product) {
                        let left = match ev.quantity {
                            Some(q) => cart.lines[i].quantity - q,
                            None => 0,
                        };
                        if left > 0 {
                            cart.lines[i].quantity = left;
                        } else {
                            cart.lines.swap_remove(i);
                        }
                    }
                    cart.last_cart_ts = cart.last_cart_ts.max(ev.ts);
                    if cart.lines.is_empty() {
                        self.cart = None;
                    }
                }
                false
            }
            EventType::CheckoutStart => {
                if let Some(cart) = &mut self.cart {
                    cart.checkout_started = true;
                }
                false
            }
            _ => false,
        }
    }

    /// Notes activity for the inactivity timer and the session.
    pub fn touch(&mut self, ev: &Event<'_>) {
        self.counters.events = self.counters.events.saturating_add(1);
        self.last_event_ts = self.last_event_ts.max(ev.ts);
        self.first_event_ts = self.first_event_ts.min(ev.ts);
        if let Some(cart) = &mut self.cart {
            cart.last_activity_ts = cart.last_activity_ts.max(ev.ts);
        }
        if let Some(s) = &ev.session_id {
            if self.session_id.as_deref() != Some(s.as_ref()) {
                self.session_id = Some(s.as_ref().into());
                self.session_start_ts = ev.ts;
            }
        }
    }

    /// Approximate heap and inline bytes held by this customer (for the state-size metric).
    pub fn approx_bytes(&self, key_len: usize) -> usize {
        let mut n = size_of::<Self>() + key_len + self.touchpoints.capacity() * size_of::<Touchpoint>();
        for t in &self.touchpoints {
            // a shared campaign name counts once over its holders
            n += t.event_id.heap_bytes() + t.campaign.as_ref().map_or(0, Campaign::heap_share);
        }
        if let Some(c) = &self.cart {
            n += size_of::<Cart>() + c.opened_by.len() + c.lines.capacity() * size_of::<CartLine>();
            n += c.lines.iter().map(|l| l.product_id.len()).sum::<usize>();
        }
        if let Some(m) = &self.model {
            n += size_of::<ModelState>() + (m.hidden().len() + m.checks().len()) * size_of::<f32>();
        }
        n += self.abandon_input.len() * size_of::<f32>() + self.seen.len() * size_of::<u64>();
        n + self.session_id.as_ref().map_or(0, |s| s.heap_bytes())
    }
}
