//! Deterministic generator of realistic customer journeys, used by the `demo`
//! command to feed events into the embedded Kafka.
//!
//! # Model
//!
//! A fixed number of *slots* ([`GeneratorConfig::active_customers`]) each holds
//! one customer whose journey is a small state machine. A journey is made of
//! one to four *episodes*; an episode is a few marketing touchpoints followed
//! by a website session:
//!
//! * **Touchpoints**: `impression` (display, paid_social, organic_social, sms,
//!   push, other) or `email_open` (email), spaced hours apart (before time
//!   scaling, see below). Each touch raises the customer's purchase propensity
//!   a little, by channel.
//! * **Session entry**: right after a touch the customer may click it
//!   (`click` / `email_click` of the same channel and campaign), or enter later
//!   on their own: via a tracked click (paid_search, affiliate, paid_social,
//!   display, sms, push, other, email) or untracked (organic_search, direct,
//!   referral, organic_social). Every session starts with a `page_view` that
//!   carries the entry channel (and campaign when known).
//! * **Session**: `page_view`, `product_view`, `search` a few seconds to minutes
//!   apart; products come mostly from the customer's favourite category. The
//!   probability of filling a cart depends on the propensity times the entry
//!   channel's lift (direct, email and paid_search convert best; display,
//!   paid_social and organic_social worst).
//! * **Cart**: `cart_add` (product, quantity, unit price), sometimes a
//!   `cart_remove`. At the first add the cart's outcome is drawn (again
//!   channel-dependent): quick purchase (`checkout_start`, `purchase` within
//!   30 minutes of the first add), abandonment (the customer goes silent; a
//!   quarter of them reach `checkout_start` first), purchase later (silence of
//!   at least 35 minutes, then a reminder: cart_reminder email, sms, push,
//!   retargeting display, or a direct visit, and a session ending in a
//!   purchase or not), or leave (every line is removed).
//! * **End**: after a purchase, an abandonment, or a last session without cart
//!   the journey ends and the slot takes a new customer. Finished customers are
//!   kept in a bounded queue; now and then the new occupant is an old customer
//!   (silent for at least two hours of event time) who comes back, mostly
//!   through direct, email or organic search, and buys more readily.
//!
//! Over a long stream roughly 30% of carts are purchased within 30 minutes,
//! 40% are abandoned and the rest are purchased later or emptied.
//!
//! # Time
//!
//! Slots are kept in a min-heap of (next event time, slot), so events come
//! out in non-decreasing event-time order. Gaps have a *fixed* part (in-session
//! gaps, the 35-minute floor of a later purchase) and a *flexible* part
//! (between touchpoints, episodes and customers). At construction a dry run of
//! a few thousand journeys measures both, and the flexible part is scaled so
//! that the whole stream advances by [`GeneratorConfig::mean_gap_ms`] per event
//! on average. The fixed parts are never scaled, so in-session gaps and the
//! 30-minute semantics of abandonment stay realistic; a mean gap so small that
//! even unscaled sessions cannot reach it gives a slower stream than asked.
//!
//! Unscaled, a journey has about 11 events over about 15 hours (touchpoints
//! hours to days apart). Each slot must produce an event every
//! `active_customers * mean_gap_ms` on average, so the defaults (2 000
//! customers, 180 ms, i.e. 6 minutes per customer event) compress the flexible
//! gaps about 15 times: a journey then spans about an hour of event time, with
//! touchpoints minutes to an hour or two apart. Fewer active customers or a
//! larger mean gap give longer, more realistic spacing (100 customers at 30 s
//! per event run nearly unscaled).
//!
//! # Determinism
//!
//! Randomness comes from an inline xoshiro256** seeded by SplitMix64, and the
//! logarithm and exponential used for distributions are computed with plain
//! arithmetic (no libm), so a seed gives a byte-identical stream on every
//! platform.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// 2026-01-01T00:00:00Z in ms since the Unix epoch.
const DEFAULT_START_TS_MS: i64 = 1_767_225_600_000;

const SECOND: f64 = 1_000.0;
const MINUTE: f64 = 60.0 * SECOND;
const HOUR: f64 = 60.0 * MINUTE;
const DAY: f64 = 24.0 * HOUR;

/// A finished customer may come back only after this much event time.
const RETURN_MIN_MS: i64 = 2 * 3_600_000;
/// Probability that a freed slot takes a returning customer (when one is due).
const P_RETURNING: f64 = 0.2;
/// Quick purchases: sessions with a cart end this long after the first add.
const QUICK_WINDOW_MS: i64 = 12 * 60_000;

/// Configuration of a [`JourneyGenerator`].
#[derive(Debug, Clone)]
pub struct GeneratorConfig {
    /// Seed of every random choice: the same seed gives the same byte-identical stream.
    pub seed: u64,
    /// customers with an active journey at any moment (memory stays bounded by this)
    pub active_customers: usize,
    /// event time of the first event, ms since epoch
    pub start_ts_ms: i64,
    /// mean gap of event time between consecutive events of the whole stream (ms); controls how fast simulated time runs
    pub mean_gap_ms: f64,
    /// Currency of purchase and cart values (ISO 4217 code, e.g. "EUR").
    pub currency: String,
}

impl Default for GeneratorConfig {
    /// Seed 42, 2 000 active customers, first event at 2026-01-01T00:00Z,
    /// 180 ms mean gap (one hour of event time per 20 000 events), EUR.
    fn default() -> Self {
        Self { seed: 42, active_customers: 2_000, start_ts_ms: DEFAULT_START_TS_MS, mean_gap_ms: 3_600_000.0 / 20_000.0, currency: "EUR".to_string() }
    }
}

/// One generated event.
#[derive(Debug, Clone)]
pub struct GeneratedEvent {
    /// The event's `customer_id` (the natural Kafka key).
    pub customer_id: String,
    /// The event's `ts`: event time in ms since the Unix epoch.
    pub ts: i64,
    /// the JSON value bytes in the input contract
    pub json: Vec<u8>,
    /// The event's `event_type`.
    pub event_type: &'static str,
}

// ---------------------------------------------------------------------------
// Event types and channels
// ---------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ev {
    Impression,
    Click,
    EmailOpen,
    EmailClick,
    PageView,
    ProductView,
    Search,
    CartAdd,
    CartRemove,
    CheckoutStart,
    Purchase,
}

impl Ev {
    fn name(self) -> &'static str {
        match self {
            Ev::Impression => "impression",
            Ev::Click => "click",
            Ev::EmailOpen => "email_open",
            Ev::EmailClick => "email_click",
            Ev::PageView => "page_view",
            Ev::ProductView => "product_view",
            Ev::Search => "search",
            Ev::CartAdd => "cart_add",
            Ev::CartRemove => "cart_remove",
            Ev::CheckoutStart => "checkout_start",
            Ev::Purchase => "purchase",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ch {
    PaidSearch,
    OrganicSearch,
    PaidSocial,
    OrganicSocial,
    Email,
    Display,
    Affiliate,
    Referral,
    Direct,
    Sms,
    Push,
    Other,
}

impl Ch {
    fn name(self) -> &'static str {
        match self {
            Ch::PaidSearch => "paid_search",
            Ch::OrganicSearch => "organic_search",
            Ch::PaidSocial => "paid_social",
            Ch::OrganicSocial => "organic_social",
            Ch::Email => "email",
            Ch::Display => "display",
            Ch::Affiliate => "affiliate",
            Ch::Referral => "referral",
            Ch::Direct => "direct",
            Ch::Sms => "sms",
            Ch::Push => "push",
            Ch::Other => "other",
        }
    }

    fn campaigns(self) -> &'static [&'static str] {
        match self {
            Ch::PaidSearch => &["brand", "generic", "competitor", "shopping_feed"],
            Ch::OrganicSearch | Ch::Direct => &[],
            Ch::PaidSocial => &["spring_sale", "prospecting_lookalike", "retargeting_q1", "influencer_collab"],
            Ch::OrganicSocial => &["community_post", "product_launch"],
            Ch::Email => &["newsletter_weekly", "spring_sale", "welcome_series", "cart_reminder", "winback"],
            Ch::Display => &["retargeting_q1", "prospecting_banner", "spring_sale"],
            Ch::Affiliate => &["cashback_partner", "coupon_site", "blog_review"],
            Ch::Referral => &["refer_a_friend", "partner_blog"],
            Ch::Sms => &["flash_sale", "cart_reminder"],
            Ch::Push => &["price_drop", "back_in_stock"],
            Ch::Other => &["podcast_promo", "qr_offline"],
        }
    }

    /// Multiplier of the purchase propensity of a session entered through this channel.
    fn lift(self) -> f64 {
        match self {
            Ch::PaidSearch => 1.25,
            Ch::OrganicSearch => 1.1,
            Ch::PaidSocial => 0.6,
            Ch::OrganicSocial => 0.65,
            Ch::Email => 1.35,
            Ch::Display => 0.5,
            Ch::Affiliate => 1.05,
            Ch::Referral => 1.0,
            Ch::Direct => 1.45,
            Ch::Sms => 1.05,
            Ch::Push => 0.85,
            Ch::Other => 0.6,
        }
    }

    /// Multiplier of the propensity for having seen a touch of this channel.
    fn touch_boost(self) -> f64 {
        match self {
            Ch::Email => 1.12,
            Ch::Sms => 1.08,
            Ch::Push => 1.05,
            Ch::PaidSocial => 1.04,
            Ch::OrganicSocial => 1.03,
            Ch::Display => 1.02,
            Ch::Other => 1.0,
            _ => 1.05,
        }
    }

    /// Probability that an impression / email open is clicked right away.
    fn click_through(self) -> f64 {
        match self {
            Ch::Email => 0.5,
            Ch::Display => 0.12,
            Ch::PaidSocial => 0.3,
            Ch::OrganicSocial => 0.25,
            Ch::Sms => 0.35,
            Ch::Push => 0.3,
            Ch::Other => 0.2,
            _ => 0.5,
        }
    }
}

/// Touch channels of a new customer's journey.
const NEW_TOUCH: &[(Ch, f64)] =
    &[(Ch::Display, 0.30), (Ch::PaidSocial, 0.28), (Ch::Email, 0.18), (Ch::Sms, 0.05), (Ch::Push, 0.07), (Ch::OrganicSocial, 0.07), (Ch::Other, 0.05)];
/// Touch channels of a returning customer's journey.
const RETURNING_TOUCH: &[(Ch, f64)] =
    &[(Ch::Email, 0.45), (Ch::Display, 0.15), (Ch::PaidSocial, 0.10), (Ch::Push, 0.15), (Ch::Sms, 0.10), (Ch::OrganicSocial, 0.05)];
/// Session entries not caused by a just-seen touch, new customers.
const NEW_ENTRY: &[(Ch, f64)] = &[
    (Ch::PaidSearch, 0.24),
    (Ch::OrganicSearch, 0.22),
    (Ch::Direct, 0.09),
    (Ch::Affiliate, 0.08),
    (Ch::Referral, 0.06),
    (Ch::OrganicSocial, 0.07),
    (Ch::PaidSocial, 0.08),
    (Ch::Display, 0.04),
    (Ch::Email, 0.04),
    (Ch::Sms, 0.02),
    (Ch::Push, 0.02),
    (Ch::Other, 0.04),
];
/// Session entries not caused by a just-seen touch, returning customers.
const RETURNING_ENTRY: &[(Ch, f64)] = &[
    (Ch::Direct, 0.30),
    (Ch::OrganicSearch, 0.18),
    (Ch::Email, 0.16),
    (Ch::PaidSearch, 0.14),
    (Ch::Push, 0.06),
    (Ch::Affiliate, 0.05),
    (Ch::Sms, 0.04),
    (Ch::Referral, 0.02),
    (Ch::OrganicSocial, 0.02),
    (Ch::PaidSocial, 0.02),
    (Ch::Display, 0.01),
];

const DEVICES: &[(&str, f64)] = &[("mobile", 0.58), ("desktop", 0.36), ("tablet", 0.06)];
const PLACEMENTS: &[&str] = &["feed", "stories", "sidebar", "homepage_banner", "article_inline"];
const MAIL_CLIENTS: &[&str] = &["gmail", "apple_mail", "outlook", "other"];

const N_CATEGORIES: u32 = 8;
const PER_CATEGORY: u32 = 50;
const N_PRODUCTS: u32 = N_CATEGORIES * PER_CATEGORY;
/// Median price (EUR) of each category.
const CATEGORY_MEDIAN_PRICE: [f64; N_CATEGORIES as usize] = [95.0, 130.0, 70.0, 60.0, 85.0, 45.0, 80.0, 30.0];
/// On-site search queries of each category.
const QUERIES: [[&str; 3]; N_CATEGORIES as usize] = [
    ["running shoes", "trail shoes", "sneakers"],
    ["rain jacket", "parka", "windbreaker"],
    ["wool sweater", "cardigan", "hoodie"],
    ["backpack", "duffel bag", "laptop bag"],
    ["sunglasses", "polarized sunglasses", "reading glasses"],
    ["desk lamp", "floor lamp", "led bulb"],
    ["coffee grinder", "espresso machine", "french press"],
    ["yoga mat", "dumbbells", "resistance bands"],
];

// ---------------------------------------------------------------------------
// Randomness (xoshiro256** seeded by SplitMix64) and platform-independent math
// ---------------------------------------------------------------------------

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[derive(Clone, Debug)]
struct Rng {
    s: [u64; 4],
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut st = seed;
        let s = [splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st), splitmix64(&mut st)];
        Rng { s }
    }

    fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in the open interval (0, 1).
    fn unit(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in 0..n (n > 0).
    fn below(&mut self, n: u32) -> u32 {
        (((self.next_u64() >> 32) * n as u64) >> 32) as u32
    }

    fn exponential(&mut self, mean: f64) -> f64 {
        -det_ln(self.unit()) * mean
    }

    /// Log-logistic draw (heavy right tail) with the given median, clamped.
    fn log_logistic(&mut self, median: f64, shape: f64, lo: f64, hi: f64) -> f64 {
        let u = self.unit();
        (median * det_exp(det_ln(u / (1.0 - u)) / shape)).clamp(lo, hi)
    }

    fn pick<T: Copy>(&mut self, table: &[(T, f64)]) -> T {
        let total: f64 = table.iter().map(|e| e.1).sum();
        let mut x = self.unit() * total;
        for &(item, w) in table {
            if x < w {
                return item;
            }
            x -= w;
        }
        table[table.len() - 1].0
    }

    fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len() as u32) as usize]
    }
}

/// Natural logarithm with plain IEEE arithmetic only (x > 0, normal).
fn det_ln(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return if x == f64::INFINITY { 709.0 } else { -745.0 };
    }
    let bits = x.to_bits();
    let mut e = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let mut m = f64::from_bits((bits & 0x000f_ffff_ffff_ffff) | 0x3ff0_0000_0000_0000);
    if m > std::f64::consts::SQRT_2 {
        m *= 0.5;
        e += 1;
    }
    let s = (m - 1.0) / (m + 1.0);
    let s2 = s * s;
    let mut term = s;
    let mut sum = s;
    let mut k = 3.0;
    while k < 22.0 {
        term *= s2;
        sum += term / k;
        k += 2.0;
    }
    2.0 * sum + e as f64 * std::f64::consts::LN_2
}

/// Exponential with plain IEEE arithmetic only.
fn det_exp(x: f64) -> f64 {
    let x = x.clamp(-700.0, 700.0);
    let k = (x / std::f64::consts::LN_2).round();
    let r = x - k * std::f64::consts::LN_2;
    let mut term = 1.0;
    let mut sum = 1.0;
    let mut i = 1.0;
    while i < 15.0 {
        term *= r / i;
        sum += term;
        i += 1.0;
    }
    sum * f64::from_bits(((k as i64 + 1023) as u64) << 52)
}

// ---------------------------------------------------------------------------
// Customer state machine
// ---------------------------------------------------------------------------

const NO_PRODUCT: u32 = u32::MAX;
const MAX_CART: usize = 6;

/// Gap of event time until a customer's next event: `fixed + scale * flex` ms.
#[derive(Clone, Copy, Debug, Default)]
struct Gap {
    fixed: f64,
    flex: f64,
}

impl Gap {
    fn fixed(ms: f64) -> Self {
        Gap { fixed: ms, flex: 0.0 }
    }
    fn flex(ms: f64) -> Self {
        Gap { fixed: 0.0, flex: ms }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Pending event is a pre-session touch (impression / email_open).
    Touch,
    /// Pending event is a cart reminder touch, always followed by its click.
    Reminder,
    /// Pending event is a click / email_click; a session starts next.
    Click,
    /// Pending event is inside a session.
    Session,
    /// Pending event is checkout_start.
    Checkout,
    /// Pending event is the purchase; the journey ends after it.
    Purchased,
    /// Pending event is a cart_remove of a customer emptying the cart.
    Removing,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    Undecided,
    Quick,
    Abandon,
    AbandonAtCheckout,
    Later,
    Leave,
    ReturnBuy,
    ReturnNoBuy,
}

#[derive(Clone, Copy, Debug)]
struct CartLine {
    product: u32,
    qty: u8,
}

#[derive(Clone, Debug)]
struct Customer {
    num: u64,
    purchases: u32,
    returning: bool,
    intent: f64,
    category: u32,

    // The pending event (emitted when the slot is popped from the heap).
    ev: Ev,
    ch: Option<Ch>,
    campaign: Option<&'static str>,
    with_session: bool,
    product: u32,
    qty: u8,
    value_cents: i64,
    prop: Option<(&'static str, &'static str)>,

    // Journey state.
    phase: Phase,
    sessions_left: u8,
    touches_left: u8,
    last_touch: Option<(Ch, Option<&'static str>)>,
    boost: f64,
    session: u64,
    entry: Ch,
    entry_campaign: Option<&'static str>,
    browse_left: u8,
    cart_goal: u8,
    last_product: u32,
    cart: [CartLine; MAX_CART],
    cart_len: u8,
    first_cart_ts: i64,
    outcome: Outcome,
}

impl Customer {
    fn blank() -> Self {
        Customer {
            num: 0,
            purchases: 0,
            returning: false,
            intent: 1.0,
            category: 0,
            ev: Ev::PageView,
            ch: None,
            campaign: None,
            with_session: false,
            product: NO_PRODUCT,
            qty: 0,
            value_cents: -1,
            prop: None,
            phase: Phase::Session,
            sessions_left: 0,
            touches_left: 0,
            last_touch: None,
            boost: 1.0,
            session: 0,
            entry: Ch::Direct,
            entry_campaign: None,
            browse_left: 0,
            cart_goal: 0,
            last_product: NO_PRODUCT,
            cart: [CartLine { product: 0, qty: 0 }; MAX_CART],
            cart_len: 0,
            first_cart_ts: 0,
            outcome: Outcome::Undecided,
        }
    }

    /// Purchase propensity of the current session.
    fn eff(&self) -> f64 {
        self.intent * self.entry.lift() * self.boost
    }

    fn set_pending(&mut self, ev: Ev, ch: Option<Ch>, campaign: Option<&'static str>, with_session: bool) {
        self.ev = ev;
        self.ch = ch;
        self.campaign = campaign;
        self.with_session = with_session;
        self.product = NO_PRODUCT;
        self.qty = 0;
        self.value_cents = -1;
        self.prop = None;
    }

    fn cart_total_cents(&self, m: &Model) -> i64 {
        self.cart[..self.cart_len as usize].iter().map(|l| m.prices[l.product as usize] as i64 * l.qty as i64).sum()
    }
}

/// Static parts of the model: the product catalog and the time scale.
#[derive(Debug)]
struct Model {
    /// Unit price in cents of each product.
    prices: Vec<u32>,
    /// Multiplier of the flexible part of gaps.
    flex_scale: f64,
}

impl Model {
    fn new(seed: u64) -> Self {
        let mut r = Rng::new(seed ^ 0xCA7A_106E_0000_0001);
        let prices = (0..N_PRODUCTS)
            .map(|p| {
                let median = CATEGORY_MEDIAN_PRICE[(p / PER_CATEGORY) as usize];
                let eur = r.log_logistic(median, 3.0, median * 0.2, median * 5.0).floor().max(1.0);
                (eur as u32) * 100 + 99
            })
            .collect();
        Model { prices, flex_scale: 1.0 }
    }

    fn gap_ms(&self, g: Gap) -> i64 {
        (g.fixed + self.flex_scale * g.flex).round().max(0.0) as i64
    }
}

fn pick_campaign(r: &mut Rng, ch: Ch) -> Option<&'static str> {
    let list = ch.campaigns();
    if list.is_empty() {
        None
    } else {
        Some(r.pick_str(list))
    }
}

fn pick_product(r: &mut Rng, category: u32) -> u32 {
    let cat = if r.chance(0.8) { category } else { r.below(N_CATEGORIES) };
    let u = r.unit();
    cat * PER_CATEGORY + ((u * u * PER_CATEGORY as f64) as u32).min(PER_CATEGORY - 1)
}

/// Gap between a freed slot's last event and its new customer's first event.
fn occupant_gap(r: &mut Rng) -> Gap {
    Gap::flex(r.exponential(45.0 * MINUTE))
}

/// Start a journey for customer `num` in `c`.
fn begin_journey(r: &mut Rng, sess: &mut u64, c: &mut Customer, num: u64, returning: bool, purchases: u32) {
    *c = Customer::blank();
    c.num = num;
    c.returning = returning;
    c.purchases = purchases;
    c.intent = 0.45 + r.unit();
    if purchases > 0 {
        c.intent *= 1.3;
    }
    c.category = r.below(N_CATEGORIES);
    c.sessions_left = 1;
    while c.sessions_left < 4 && r.chance(0.4) {
        c.sessions_left += 1;
    }
    c.touches_left = if returning { r.pick(&[(0u8, 0.55), (1, 0.35), (2, 0.10)]) } else { r.pick(&[(0u8, 0.25), (1, 0.30), (2, 0.25), (3, 0.12), (4, 0.08)]) };
    start_episode(r, sess, c);
}

fn start_episode(r: &mut Rng, sess: &mut u64, c: &mut Customer) {
    c.boost = 1.0;
    c.last_touch = None;
    c.session = 0;
    c.outcome = Outcome::Undecided;
    c.cart_len = 0;
    if c.touches_left > 0 {
        plan_touch(r, c);
    } else {
        plan_entry(r, sess, c);
    }
}

fn plan_touch(r: &mut Rng, c: &mut Customer) {
    let ch = r.pick(if c.returning { RETURNING_TOUCH } else { NEW_TOUCH });
    let camp = pick_campaign(r, ch);
    let ev = if ch == Ch::Email { Ev::EmailOpen } else { Ev::Impression };
    c.set_pending(ev, Some(ch), camp, false);
    c.prop = match ch {
        Ch::Email if r.chance(0.25) => Some(("mail_client", r.pick_str(MAIL_CLIENTS))),
        Ch::Display | Ch::PaidSocial | Ch::OrganicSocial if r.chance(0.3) => Some(("placement", r.pick_str(PLACEMENTS))),
        _ => None,
    };
    c.phase = Phase::Touch;
    c.boost *= ch.touch_boost();
    c.last_touch = Some((ch, camp));
}

fn plan_click(c: &mut Customer, ch: Ch, camp: Option<&'static str>) {
    let ev = if ch == Ch::Email { Ev::EmailClick } else { Ev::Click };
    c.set_pending(ev, Some(ch), camp, false);
    c.phase = Phase::Click;
    c.entry = ch;
    c.entry_campaign = camp;
}

/// A session entry not caused by a just-seen touch.
fn plan_entry(r: &mut Rng, sess: &mut u64, c: &mut Customer) {
    let ch = r.pick(if c.returning { RETURNING_ENTRY } else { NEW_ENTRY });
    let camp = pick_campaign(r, ch);
    match ch {
        Ch::OrganicSearch | Ch::Direct | Ch::Referral | Ch::OrganicSocial => start_session(r, sess, c, ch, camp),
        _ => plan_click(c, ch, camp),
    }
}

fn start_session(r: &mut Rng, sess: &mut u64, c: &mut Customer, ch: Ch, camp: Option<&'static str>) {
    *sess += 1;
    c.session = *sess;
    c.entry = ch;
    c.entry_campaign = camp;
    c.set_pending(Ev::PageView, Some(ch), camp, true);
    if r.chance(0.6) {
        c.prop = Some(("device", r.pick(DEVICES)));
    }
    c.phase = Phase::Session;
    c.last_product = NO_PRODUCT;
    match c.outcome {
        Outcome::ReturnBuy | Outcome::ReturnNoBuy => {
            c.browse_left = r.below(3) as u8;
            c.cart_goal = 0;
        }
        _ => {
            let eff = c.eff();
            let mut browse = 1 + r.below(3) as u8;
            while browse < 20 && r.chance(0.55 + 0.1 * eff.min(2.0)) {
                browse += 1;
            }
            c.browse_left = browse;
            let p_cart = (0.30 * eff).clamp(0.02, 0.85);
            c.cart_goal = if r.chance(p_cart) { 1 + r.chance(0.3) as u8 + r.chance(0.15) as u8 } else { 0 };
        }
    }
}

fn plan_product_view(r: &mut Rng, c: &mut Customer) {
    let p = pick_product(r, c.category);
    c.set_pending(Ev::ProductView, None, None, true);
    c.product = p;
    c.last_product = p;
}

fn plan_browse(r: &mut Rng, c: &mut Customer) {
    let x = r.unit();
    if x < 0.55 {
        plan_product_view(r, c);
    } else if x < 0.80 {
        c.set_pending(Ev::PageView, None, None, true);
    } else {
        if r.chance(0.15) {
            c.category = r.below(N_CATEGORIES);
        }
        let q = QUERIES[c.category as usize][r.below(3) as usize];
        c.set_pending(Ev::Search, None, None, true);
        c.prop = Some(("query", q));
    }
}

fn decide_outcome(r: &mut Rng, eff: f64) -> Outcome {
    let p_quick = (0.25 * eff).clamp(0.05, 0.7);
    let p_later = 0.2;
    let p_leave = 0.08;
    let x = r.unit();
    if x < p_quick {
        Outcome::Quick
    } else if x < p_quick + p_later {
        Outcome::Later
    } else if x < p_quick + p_later + p_leave {
        Outcome::Leave
    } else if r.chance(0.25) {
        Outcome::AbandonAtCheckout
    } else {
        Outcome::Abandon
    }
}

fn plan_cart_add(m: &Model, r: &mut Rng, c: &mut Customer, at: i64) {
    let product = c.last_product;
    let qty = r.pick(&[(1u8, 0.8), (2, 0.15), (3, 0.05)]);
    let len = c.cart_len as usize;
    if let Some(line) = c.cart[..len].iter_mut().find(|l| l.product == product) {
        line.qty = line.qty.saturating_add(qty);
    } else if len < MAX_CART {
        c.cart[len] = CartLine { product, qty };
        c.cart_len += 1;
    } else {
        c.cart[len - 1].qty = c.cart[len - 1].qty.saturating_add(qty);
    }
    c.set_pending(Ev::CartAdd, None, None, true);
    c.product = product;
    c.qty = qty;
    c.value_cents = m.prices[product as usize] as i64;
    c.cart_goal = c.cart_goal.saturating_sub(1);
    c.last_product = NO_PRODUCT;
    if c.outcome == Outcome::Undecided {
        c.first_cart_ts = at;
        c.outcome = decide_outcome(r, c.eff());
    }
}

fn plan_cart_remove(m: &Model, c: &mut Customer, idx: usize) {
    let line = c.cart[idx];
    let len = c.cart_len as usize;
    c.cart.copy_within(idx + 1..len, idx);
    c.cart_len -= 1;
    c.set_pending(Ev::CartRemove, None, None, true);
    c.product = line.product;
    c.qty = line.qty;
    c.value_cents = m.prices[line.product as usize] as i64;
}

fn plan_checkout(c: &mut Customer) {
    c.set_pending(Ev::CheckoutStart, None, None, true);
    c.phase = Phase::Checkout;
}

/// Re-engagement of a customer who left a cart and will come back to it.
fn plan_return(r: &mut Rng, sess: &mut u64, c: &mut Customer) {
    c.session = 0;
    c.outcome = if r.chance(0.85) { Outcome::ReturnBuy } else { Outcome::ReturnNoBuy };
    let x = r.unit();
    let (ev, ch, camp) = if x < 0.40 {
        (Ev::EmailOpen, Ch::Email, "cart_reminder")
    } else if x < 0.52 {
        (Ev::Impression, Ch::Sms, "cart_reminder")
    } else if x < 0.62 {
        (Ev::Impression, Ch::Push, "price_drop")
    } else if x < 0.75 {
        (Ev::Impression, Ch::Display, "retargeting_q1")
    } else {
        start_session(r, sess, c, Ch::Direct, None);
        return;
    };
    c.set_pending(ev, Some(ch), Some(camp), false);
    c.phase = Phase::Reminder;
    c.last_touch = Some((ch, Some(camp)));
}

fn next_episode(r: &mut Rng, sess: &mut u64, c: &mut Customer) -> Option<Gap> {
    c.sessions_left = c.sessions_left.saturating_sub(1);
    if c.sessions_left == 0 {
        return None;
    }
    c.touches_left = r.pick(&[(0u8, 0.4), (1, 0.35), (2, 0.25)]);
    start_episode(r, sess, c);
    Some(Gap::flex(r.log_logistic(8.0 * HOUR, 1.4, 30.0 * MINUTE, 5.0 * DAY)))
}

/// The session's browsing and cart adds are done: what comes next.
fn end_session(m: &Model, r: &mut Rng, sess: &mut u64, c: &mut Customer, g: Gap) -> Option<Gap> {
    if c.cart_len == 0 {
        return next_episode(r, sess, c);
    }
    match c.outcome {
        Outcome::Quick | Outcome::AbandonAtCheckout => {
            plan_checkout(c);
            Some(g)
        }
        Outcome::Later => {
            plan_return(r, sess, c);
            Some(Gap { fixed: 35.0 * MINUTE + r.unit() * 5.0 * MINUTE, flex: r.log_logistic(3.0 * HOUR, 1.5, 0.0, 2.0 * DAY) })
        }
        Outcome::Leave => {
            c.phase = Phase::Removing;
            plan_cart_remove(m, c, c.cart_len as usize - 1);
            Some(g)
        }
        _ => None, // abandoned: the customer goes silent
    }
}

fn session_step(m: &Model, r: &mut Rng, sess: &mut u64, c: &mut Customer, now: i64) -> Option<Gap> {
    let g = r.log_logistic(20.0 * SECOND, 1.8, SECOND, 4.0 * MINUTE);
    let gap = Gap::fixed(g);
    let at = now + g.round() as i64;
    match c.outcome {
        Outcome::ReturnBuy | Outcome::ReturnNoBuy => {
            if c.browse_left > 0 {
                c.browse_left -= 1;
                plan_browse(r, c);
            } else if c.outcome == Outcome::ReturnNoBuy && r.chance(0.5) {
                return None;
            } else {
                plan_checkout(c);
            }
            return Some(gap);
        }
        Outcome::Quick if at - c.first_cart_ts > QUICK_WINDOW_MS => {
            c.browse_left = 0;
            c.cart_goal = 0;
        }
        _ => {}
    }
    if c.ev == Ev::ProductView && c.cart_goal > 0 && c.last_product != NO_PRODUCT && (c.browse_left == 0 || r.chance(0.45)) {
        plan_cart_add(m, r, c, at);
        return Some(gap);
    }
    if c.ev == Ev::CartAdd && c.cart_len >= 2 && r.chance(0.12) {
        let idx = r.below(c.cart_len as u32) as usize;
        plan_cart_remove(m, c, idx);
        return Some(gap);
    }
    if c.browse_left > 0 {
        c.browse_left -= 1;
        plan_browse(r, c);
        return Some(gap);
    }
    if c.cart_goal > 0 {
        plan_product_view(r, c);
        return Some(gap);
    }
    end_session(m, r, sess, c, gap)
}

/// Called after the pending event of `c` (at event time `now`) was emitted:
/// plans the next one and returns the gap to it, or `None` when the journey ends.
fn advance(m: &Model, r: &mut Rng, sess: &mut u64, c: &mut Customer, now: i64) -> Option<Gap> {
    match c.phase {
        Phase::Touch => {
            c.touches_left = c.touches_left.saturating_sub(1);
            if c.touches_left > 0 {
                plan_touch(r, c);
                return Some(Gap::flex(r.log_logistic(3.0 * HOUR, 1.4, 10.0 * MINUTE, 4.0 * DAY)));
            }
            if let Some((ch, camp)) = c.last_touch {
                if r.chance(ch.click_through()) {
                    plan_click(c, ch, camp);
                    return Some(Gap::fixed(r.log_logistic(12.0 * SECOND, 1.5, SECOND, 15.0 * MINUTE)));
                }
            }
            plan_entry(r, sess, c);
            Some(Gap::flex(r.log_logistic(2.0 * HOUR, 1.3, 5.0 * MINUTE, 3.0 * DAY)))
        }
        Phase::Reminder => {
            let (ch, camp) = c.last_touch.unwrap_or((Ch::Email, None));
            plan_click(c, ch, camp);
            Some(Gap::fixed(r.log_logistic(40.0 * SECOND, 1.5, 2.0 * SECOND, 20.0 * MINUTE)))
        }
        Phase::Click => {
            let (ch, camp) = (c.entry, c.entry_campaign);
            start_session(r, sess, c, ch, camp);
            Some(Gap::fixed(r.log_logistic(1.5 * SECOND, 2.0, 200.0, 10.0 * SECOND)))
        }
        Phase::Session => session_step(m, r, sess, c, now),
        Phase::Checkout => match c.outcome {
            Outcome::Quick | Outcome::ReturnBuy => {
                let total = c.cart_total_cents(m);
                c.set_pending(Ev::Purchase, None, None, true);
                c.value_cents = total;
                c.phase = Phase::Purchased;
                Some(Gap::fixed(r.log_logistic(60.0 * SECOND, 2.0, 10.0 * SECOND, 4.0 * MINUTE)))
            }
            _ => None,
        },
        Phase::Purchased => {
            c.purchases += 1;
            c.cart_len = 0;
            None
        }
        Phase::Removing => {
            if c.cart_len > 0 {
                plan_cart_remove(m, c, c.cart_len as usize - 1);
                Some(Gap::fixed(r.log_logistic(8.0 * SECOND, 2.0, SECOND, MINUTE)))
            } else {
                next_episode(r, sess, c)
            }
        }
    }
}

// ---------------------------------------------------------------------------
// JSON writing
// ---------------------------------------------------------------------------

fn push_u64(out: &mut Vec<u8>, mut n: u64, min_width: usize) {
    let mut buf = [b'0'; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(buf.len() - min_width.min(buf.len()));
    out.extend_from_slice(&buf[start..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_u64(out, n.unsigned_abs(), 1);
}

/// Amount in cents as a JSON number with two decimals.
fn push_cents(out: &mut Vec<u8>, cents: i64) {
    if cents < 0 {
        out.push(b'-');
    }
    let c = cents.unsigned_abs();
    push_u64(out, c / 100, 1);
    out.push(b'.');
    push_u64(out, c % 100, 2);
}

/// A JSON string literal, escaped.
fn push_json_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s.as_bytes() {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 0xf) as usize]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

fn push_customer_id(out: &mut String, num: u64) {
    out.push_str("c-");
    let mut digits = [b'0'; 20];
    let mut i = digits.len();
    let mut n = num;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let start = i.min(digits.len() - 6);
    for &d in &digits[start..] {
        out.push(d as char);
    }
}

// ---------------------------------------------------------------------------
// The generator
// ---------------------------------------------------------------------------

/// A customer who finished a journey and may come back.
#[derive(Clone, Copy, Debug)]
struct Alumnus {
    num: u64,
    last_ts: i64,
    purchases: u32,
}

/// Deterministic, infinite stream of customer-journey events in
/// non-decreasing event-time order (see the module docs for the model).
pub struct JourneyGenerator {
    cfg: GeneratorConfig,
    model: Model,
    rng: Rng,
    /// (next event time, slot), smallest first.
    heap: BinaryHeap<Reverse<(i64, u32)>>,
    slots: Vec<Customer>,
    /// Finished customers, oldest first; bounded by `alumni_cap`.
    alumni: VecDeque<Alumnus>,
    alumni_cap: usize,
    next_customer: u64,
    next_session: u64,
    events: u64,
    event_prefix: String,
    session_prefix: String,
}

impl JourneyGenerator {
    /// Build a generator: draws the catalog, calibrates the time scale to
    /// `cfg.mean_gap_ms`, and starts `cfg.active_customers` journeys (at least one).
    pub fn new(cfg: GeneratorConfig) -> Self {
        let active = cfg.active_customers.max(1);
        let mean_gap = if cfg.mean_gap_ms.is_finite() && cfg.mean_gap_ms > 0.0 { cfg.mean_gap_ms } else { 1.0 };
        let mut model = Model::new(cfg.seed);

        // Dry run of journeys with unscaled gaps: events, fixed and flexible time per journey.
        let (events_per_journey, fixed_per_journey, flex_per_journey) = {
            let mut r = Rng::new(cfg.seed ^ 0x0CA1_1B8A_7E00_0002);
            let mut sess = 0u64;
            let mut c = Customer::blank();
            const JOURNEYS: usize = 4_000;
            let (mut events, mut fixed, mut flex) = (0u64, 0.0f64, 0.0f64);
            for j in 0..JOURNEYS {
                let returning = r.chance(0.15);
                let purchases = (returning && r.chance(0.5)) as u32;
                begin_journey(&mut r, &mut sess, &mut c, j as u64, returning, purchases);
                let g = occupant_gap(&mut r);
                flex += g.flex;
                let mut now = 0i64;
                loop {
                    events += 1;
                    match advance(&model, &mut r, &mut sess, &mut c, now) {
                        Some(g) => {
                            fixed += g.fixed;
                            flex += g.flex;
                            now += (g.fixed + g.flex).round() as i64;
                        }
                        None => break,
                    }
                }
            }
            let n = JOURNEYS as f64;
            (events as f64 / n, fixed / n, flex / n)
        };
        let target_cycle = active as f64 * mean_gap * events_per_journey;
        model.flex_scale = ((target_cycle - fixed_per_journey) / flex_per_journey.max(1.0)).clamp(1e-4, 1e4);
        let alumni_cap = ((2.0 * RETURN_MIN_MS as f64 / (mean_gap * events_per_journey)).ceil() as usize).clamp(256, 1 << 18);

        let mut g = JourneyGenerator {
            event_prefix: format!("e-{:x}-", cfg.seed),
            session_prefix: format!("s-{:x}-", cfg.seed),
            cfg,
            model,
            rng: Rng::new(0),
            heap: BinaryHeap::with_capacity(active),
            slots: Vec::with_capacity(active),
            alumni: VecDeque::with_capacity(alumni_cap.min(1 << 14)),
            alumni_cap,
            next_customer: 1,
            next_session: 0,
            events: 0,
        };
        g.rng = Rng::new(g.cfg.seed);

        // Initial journeys, spread over most of a cycle (close to the steady rate), rebased so that the first
        // event is exactly at start_ts_ms.
        let mut offsets = Vec::with_capacity(active);
        for _ in 0..active {
            let mut c = Customer::blank();
            let num = g.next_customer;
            g.next_customer += 1;
            begin_journey(&mut g.rng, &mut g.next_session, &mut c, num, false, 0);
            g.slots.push(c);
            offsets.push((g.rng.unit() * 0.8 * target_cycle) as i64);
        }
        let min_off = offsets.iter().copied().min().unwrap_or(0);
        for (slot, off) in offsets.into_iter().enumerate() {
            g.heap.push(Reverse((g.cfg.start_ts_ms + off - min_off, slot as u32)));
        }
        g
    }

    /// next event in non-decreasing event-time order across the whole stream (an infinite stream)
    pub fn next_event(&mut self) -> GeneratedEvent {
        let mut json = Vec::with_capacity(256);
        let mut customer_id = String::with_capacity(12);
        let (ts, ev) = self.step(&mut json, &mut customer_id);
        GeneratedEvent { customer_id, ts, json, event_type: ev.name() }
    }

    /// write the next event into `out` (cleared first) and return its customer id and ts without allocating per call where possible
    ///
    /// `customer_id` is cleared and receives the event's customer id; the
    /// return value is the event's `ts`.
    pub fn next_into(&mut self, out: &mut Vec<u8>, customer_id: &mut String) -> i64 {
        self.step(out, customer_id).0
    }

    /// Number of events generated so far.
    pub fn events_generated(&self) -> u64 {
        self.events
    }

    fn step(&mut self, out: &mut Vec<u8>, customer_id: &mut String) -> (i64, Ev) {
        let Reverse((ts, slot)) = self.heap.pop().expect("the heap always holds every slot");
        let idx = slot as usize;
        out.clear();
        customer_id.clear();
        let ev = {
            let c = &self.slots[idx];
            self.write_event(out, c, ts);
            push_customer_id(customer_id, c.num);
            c.ev
        };
        self.events += 1;

        let c = &mut self.slots[idx];
        let next_ts = match advance(&self.model, &mut self.rng, &mut self.next_session, c, ts) {
            Some(g) => ts + self.model.gap_ms(g),
            None => {
                // Journey over: retire the customer and give the slot to someone else.
                if self.alumni.len() >= self.alumni_cap {
                    self.alumni.pop_front();
                }
                self.alumni.push_back(Alumnus { num: c.num, last_ts: ts, purchases: c.purchases });
                let due = self.alumni.front().is_some_and(|a| a.last_ts + RETURN_MIN_MS <= ts);
                let (num, returning, purchases) = if due && self.rng.chance(P_RETURNING) {
                    let a = self.alumni.pop_front().expect("front exists");
                    (a.num, true, a.purchases)
                } else {
                    let n = self.next_customer;
                    self.next_customer += 1;
                    (n, false, 0)
                };
                begin_journey(&mut self.rng, &mut self.next_session, c, num, returning, purchases);
                ts + self.model.gap_ms(occupant_gap(&mut self.rng))
            }
        };
        self.heap.push(Reverse((next_ts, slot)));
        (ts, ev)
    }

    fn write_event(&self, out: &mut Vec<u8>, c: &Customer, ts: i64) {
        out.extend_from_slice(b"{\"event_id\":\"");
        out.extend_from_slice(self.event_prefix.as_bytes());
        push_u64(out, self.events, 1);
        out.extend_from_slice(b"\",\"customer_id\":\"c-");
        push_u64(out, c.num, 6);
        out.extend_from_slice(b"\",\"ts\":");
        push_i64(out, ts);
        out.extend_from_slice(b",\"event_type\":\"");
        out.extend_from_slice(c.ev.name().as_bytes());
        out.push(b'"');
        if let Some(ch) = c.ch {
            out.extend_from_slice(b",\"channel\":\"");
            out.extend_from_slice(ch.name().as_bytes());
            out.push(b'"');
        }
        if let Some(camp) = c.campaign {
            out.extend_from_slice(b",\"campaign\":");
            push_json_str(out, camp);
        }
        if c.with_session {
            out.extend_from_slice(b",\"session_id\":\"");
            out.extend_from_slice(self.session_prefix.as_bytes());
            push_u64(out, c.session, 1);
            out.push(b'"');
        }
        if c.product != NO_PRODUCT {
            out.extend_from_slice(b",\"product_id\":\"p-");
            push_u64(out, c.product as u64 + 1, 4);
            out.push(b'"');
        }
        if c.qty > 0 {
            out.extend_from_slice(b",\"quantity\":");
            push_u64(out, c.qty as u64, 1);
        }
        if c.value_cents >= 0 {
            out.extend_from_slice(b",\"value\":");
            push_cents(out, c.value_cents);
            out.extend_from_slice(b",\"currency\":");
            push_json_str(out, &self.cfg.currency);
        }
        if let Some((k, v)) = c.prop {
            out.extend_from_slice(b",\"properties\":{");
            push_json_str(out, k);
            out.push(b':');
            push_json_str(out, v);
            out.push(b'}');
        }
        out.push(b'}');
    }
}

impl Iterator for JourneyGenerator {
    type Item = GeneratedEvent;

    /// Always `Some`: the stream is infinite.
    fn next(&mut self) -> Option<GeneratedEvent> {
        Some(self.next_event())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    const EVENT_TYPES: [&str; 11] =
        ["impression", "click", "email_open", "email_click", "page_view", "product_view", "search", "cart_add", "cart_remove", "checkout_start", "purchase"];
    const CHANNELS: [&str; 12] =
        ["paid_search", "organic_search", "paid_social", "organic_social", "email", "display", "affiliate", "referral", "direct", "sms", "push", "other"];
    const MARKETING: [&str; 4] = ["impression", "click", "email_open", "email_click"];
    const THIRTY_MIN: i64 = 30 * 60_000;

    fn gen(seed: u64) -> JourneyGenerator {
        JourneyGenerator::new(GeneratorConfig { seed, ..GeneratorConfig::default() })
    }

    #[test]
    fn deterministic_math_is_accurate() {
        for &x in &[1e-12, 1e-6, 0.001, 0.1, 0.5, 0.9999, 1.0, 1.5, 2.0, 10.0, 12345.678] {
            assert!((det_ln(x) - x.ln()).abs() < 1e-12 * x.ln().abs().max(1.0), "ln {x}");
        }
        for &x in &[-50.0, -3.0, -0.5, 0.0, 0.3, 1.0, 2.5, 10.0, 50.0] {
            assert!((det_exp(x) - x.exp()).abs() <= 1e-13 * x.exp(), "exp {x}");
        }
    }

    #[test]
    fn same_seed_same_bytes_different_seed_differs() {
        let mut a = gen(7);
        let mut b = gen(7);
        for _ in 0..10_000 {
            let (x, y) = (a.next_event(), b.next_event());
            assert_eq!(x.json, y.json);
            assert_eq!(x.customer_id, y.customer_id);
            assert_eq!(x.ts, y.ts);
            assert_eq!(x.event_type, y.event_type);
        }
        let mut c = gen(8);
        let mut a = gen(7);
        let same = (0..10_000).filter(|_| a.next_event().json == c.next_event().json).count();
        assert_eq!(same, 0);
    }

    #[test]
    fn next_into_matches_next_event() {
        let mut a = gen(3);
        let mut b = gen(3);
        let mut buf = Vec::new();
        let mut cid = String::new();
        for _ in 0..5_000 {
            let e = a.next_event();
            let ts = b.next_into(&mut buf, &mut cid);
            assert_eq!(e.json, buf);
            assert_eq!(e.customer_id, cid);
            assert_eq!(e.ts, ts);
        }
        assert_eq!(a.events_generated(), 5_000);
        assert_eq!(b.events_generated(), 5_000);
    }

    #[test]
    fn events_follow_the_input_contract() {
        let mut g = gen(11);
        let mut seen_sessions = HashSet::new();
        let mut props_seen = 0;
        for _ in 0..100_000 {
            let e = g.next_event();
            let v: Value = serde_json::from_slice(&e.json).expect("valid JSON");
            let o = v.as_object().expect("object");
            assert!(o.get("event_id").and_then(Value::as_str).is_some());
            assert_eq!(o.get("customer_id").and_then(Value::as_str), Some(e.customer_id.as_str()));
            assert!(e.customer_id.starts_with("c-") && e.customer_id.len() >= 8);
            assert_eq!(o.get("ts").and_then(Value::as_i64), Some(e.ts));
            let et = o.get("event_type").and_then(Value::as_str).expect("event_type");
            assert_eq!(et, e.event_type);
            assert!(EVENT_TYPES.contains(&et), "{et}");
            for k in o.keys() {
                assert!(
                    [
                        "event_id",
                        "customer_id",
                        "ts",
                        "event_type",
                        "channel",
                        "campaign",
                        "session_id",
                        "value",
                        "currency",
                        "product_id",
                        "quantity",
                        "properties"
                    ]
                    .contains(&k.as_str()),
                    "unknown field {k}"
                );
            }
            let channel = o.get("channel").map(|c| c.as_str().expect("channel is a string"));
            if let Some(c) = channel {
                assert!(CHANNELS.contains(&c), "{c}");
            }
            let session = o.get("session_id").map(|s| s.as_str().expect("session_id string").to_string());
            let session_start = match &session {
                Some(s) => seen_sessions.insert(s.clone()),
                None => false,
            };
            if MARKETING.contains(&et) {
                assert!(channel.is_some(), "{et} without channel");
                assert!(session.is_none());
            } else if session_start {
                assert_eq!(et, "page_view", "a session starts with a page_view");
                assert!(channel.is_some(), "session start without channel");
            } else {
                assert!(channel.is_none(), "{et} with channel");
                assert!(session.is_some(), "{et} outside a session");
            }
            if let Some(c) = o.get("campaign") {
                assert!(c.as_str().is_some() && channel.is_some());
            }
            match et {
                "purchase" | "cart_add" | "cart_remove" => {
                    let value = o.get("value").and_then(Value::as_f64).expect("value");
                    assert!(value > 0.0);
                    assert_eq!(o.get("currency").and_then(Value::as_str), Some("EUR"));
                    if et != "purchase" {
                        assert!(o.get("product_id").and_then(Value::as_str).is_some());
                        assert!(o.get("quantity").and_then(Value::as_i64).unwrap() >= 1);
                    }
                }
                _ => {
                    assert!(o.get("value").is_none() && o.get("currency").is_none() && o.get("quantity").is_none());
                }
            }
            if et == "product_view" {
                assert!(o.get("product_id").and_then(Value::as_str).is_some());
            }
            if let Some(p) = o.get("properties") {
                let p = p.as_object().expect("properties is a map");
                assert!(!p.is_empty() && p.values().all(Value::is_string));
                props_seen += 1;
            }
        }
        assert!(props_seen > 1_000);
    }

    #[test]
    fn ts_non_decreasing_and_starts_at_start() {
        let mut g = gen(5);
        let first = g.next_event();
        assert_eq!(first.ts, GeneratorConfig::default().start_ts_ms);
        let mut last = first.ts;
        let mut buf = Vec::new();
        let mut cid = String::new();
        for _ in 0..200_000 {
            let ts = g.next_into(&mut buf, &mut cid);
            assert!(ts >= last, "{ts} < {last}");
            last = ts;
        }
    }

    #[test]
    fn event_ids_unique() {
        let mut g = gen(9);
        let mut ids = HashSet::new();
        for _ in 0..100_000 {
            let e = g.next_event();
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            assert!(ids.insert(v["event_id"].as_str().unwrap().to_string()));
        }
    }

    #[test]
    fn stream_has_realistic_mix() {
        struct Cart {
            open_ts: i64,
            abandoned: bool,
            lines: HashSet<String>,
        }
        let mut g = gen(42);
        let n = 200_000;
        let mut counts: HashMap<String, u64> = HashMap::new();
        let mut channels = HashSet::new();
        let mut last_ts: HashMap<String, i64> = HashMap::new();
        let mut carts: HashMap<String, Cart> = HashMap::new();
        // carts: opened, purchased within 30 min, purchased later, abandoned (silent for 30+ min), emptied
        let (mut opened, mut quick, mut later, mut abandoned, mut emptied) = (0u64, 0u64, 0u64, 0u64, 0u64);
        // sessions by entry channel, and purchases by the entry channel of their session
        let mut session_entry: HashMap<String, String> = HashMap::new();
        let mut sessions_by_ch: HashMap<String, u64> = HashMap::new();
        let mut purchases_by_ch: HashMap<String, u64> = HashMap::new();
        let mut end_ts = 0;
        let mut first_ts = 0;
        for i in 0..n {
            let e = g.next_event();
            if i == 0 {
                first_ts = e.ts;
            }
            end_ts = e.ts;
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            *counts.entry(e.event_type.to_string()).or_default() += 1;
            if let Some(c) = v["channel"].as_str() {
                channels.insert(c.to_string());
            }
            let cid = e.customer_id.clone();
            if let Some(prev) = last_ts.insert(cid.clone(), e.ts) {
                if e.ts - prev >= THIRTY_MIN {
                    if let Some(c) = carts.get_mut(&cid) {
                        c.abandoned = true;
                    }
                }
            }
            if let Some(s) = v["session_id"].as_str() {
                if !session_entry.contains_key(s) {
                    let ch = v["channel"].as_str().unwrap().to_string();
                    *sessions_by_ch.entry(ch.clone()).or_default() += 1;
                    session_entry.insert(s.to_string(), ch);
                }
            }
            match e.event_type {
                "cart_add" => {
                    let stale = !matches!(carts.get(&cid), Some(c) if !c.abandoned);
                    if stale {
                        if carts.remove(&cid).is_some() {
                            abandoned += 1;
                        }
                        opened += 1;
                        carts.insert(cid.clone(), Cart { open_ts: e.ts, abandoned: false, lines: HashSet::new() });
                    }
                    let product = v["product_id"].as_str().unwrap().to_string();
                    carts.get_mut(&cid).unwrap().lines.insert(product);
                }
                "cart_remove" => {
                    let product = v["product_id"].as_str().unwrap();
                    let c = carts.get_mut(&cid).expect("cart_remove of an open cart");
                    assert!(c.lines.remove(product), "cart_remove of a product in the cart");
                    if c.lines.is_empty() {
                        emptied += 1;
                        carts.remove(&cid);
                    }
                }
                "purchase" => {
                    let ch = session_entry[v["session_id"].as_str().unwrap()].clone();
                    *purchases_by_ch.entry(ch).or_default() += 1;
                    if let Some(c) = carts.remove(&cid) {
                        if !c.abandoned && e.ts - c.open_ts <= THIRTY_MIN {
                            quick += 1;
                        } else {
                            later += 1;
                        }
                    }
                }
                _ => {}
            }
        }
        for (cid, c) in &carts {
            if c.abandoned || end_ts - last_ts[cid] >= THIRTY_MIN {
                abandoned += 1;
            }
        }
        let closed = quick + later + abandoned + emptied;
        let pct = |x: u64| 100.0 * x as f64 / opened as f64;
        println!("counts: {counts:?}");
        println!(
            "carts opened {opened}: quick {quick} ({:.1}%), later {later} ({:.1}%), abandoned {abandoned} ({:.1}%), emptied {emptied} ({:.1}%)",
            pct(quick),
            pct(later),
            pct(abandoned),
            pct(emptied)
        );
        let mut conv: Vec<(String, f64, u64)> =
            sessions_by_ch.iter().map(|(c, s)| (c.clone(), *purchases_by_ch.get(c).unwrap_or(&0) as f64 / *s as f64, *s)).collect();
        conv.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        println!("purchases per session by entry channel: {conv:?}");
        let hours = (end_ts - first_ts) as f64 / 3_600_000.0;
        println!("event time covered: {hours:.2} h, mean gap {:.1} ms", (end_ts - first_ts) as f64 / n as f64);

        assert!(counts["purchase"] > 100);
        assert!(counts["cart_add"] > 500);
        assert!(counts.get("cart_remove").copied().unwrap_or(0) > 10);
        assert!(counts.get("checkout_start").copied().unwrap_or(0) > 100);
        assert!(abandoned > 100, "abandoned carts: {abandoned}");
        assert!(channels.len() >= 6, "{channels:?}");
        assert!(closed <= opened);
        let q = quick as f64 / opened as f64;
        let a = abandoned as f64 / opened as f64;
        assert!((0.22..=0.40).contains(&q), "quick purchase share {q}");
        assert!((0.30..=0.52).contains(&a), "abandoned share {a}");
        // channels differ in how often their sessions end in a purchase
        let rates: Vec<f64> = conv.iter().filter(|c| c.2 >= 300).map(|c| c.1).collect();
        assert!(rates.len() >= 6);
        assert!(rates[0] > 2.0 * rates[rates.len() - 1], "{conv:?}");
    }

    #[test]
    fn time_runs_at_the_configured_speed() {
        for &(active, gap) in &[(2_000usize, 180.0f64), (200, 1_000.0), (5_000, 60.0), (100, 30_000.0)] {
            let mut g = JourneyGenerator::new(GeneratorConfig { active_customers: active, mean_gap_ms: gap, ..GeneratorConfig::default() });
            let mut buf = Vec::new();
            let mut cid = String::new();
            let warm = 50 * active;
            let measured = 100 * active;
            let mut t0 = 0;
            for _ in 0..warm {
                t0 = g.next_into(&mut buf, &mut cid);
            }
            let mut t1 = t0;
            for _ in 0..measured {
                t1 = g.next_into(&mut buf, &mut cid);
            }
            let got = (t1 - t0) as f64 / measured as f64;
            println!("active {active}, asked {gap} ms, got {got:.1} ms (flex scale {:.4})", g.model.flex_scale);
            assert!((got / gap - 1.0).abs() < 0.25, "asked {gap}, got {got}");
        }
        // Faster than unscaled sessions allow: the stream is slower than asked, but still runs.
        let mut g = JourneyGenerator::new(GeneratorConfig { active_customers: 500, mean_gap_ms: 5.0, ..GeneratorConfig::default() });
        let first = g.next_event().ts;
        let last = (0..50_000).map(|_| g.next_event().ts).last().unwrap();
        assert!(last > first);
    }

    #[test]
    fn memory_stays_bounded() {
        let active = 300;
        let mut g = JourneyGenerator::new(GeneratorConfig { active_customers: active, ..GeneratorConfig::default() });
        let mut buf = Vec::new();
        let mut cid = String::new();
        let mut returning = 0;
        for i in 0..300_000 {
            g.next_into(&mut buf, &mut cid);
            if i % 1_000 == 0 {
                returning += g.slots.iter().filter(|c| c.returning).count();
            }
            assert_eq!(g.slots.len(), active);
            assert_eq!(g.heap.len(), active);
            assert!(g.alumni.len() <= g.alumni_cap);
        }
        let live: HashSet<u64> = g.slots.iter().map(|c| c.num).collect();
        assert_eq!(live.len(), active, "each live customer is in exactly one slot");
        assert!(g.next_customer > 1_000, "slots are recycled with new customers");
        assert!(returning > 0, "some old customers come back");
    }

    #[test]
    fn tiny_and_odd_configs_work() {
        let mut g = JourneyGenerator::new(GeneratorConfig { active_customers: 0, mean_gap_ms: 0.0, currency: "US\"D".into(), ..GeneratorConfig::default() });
        let mut last = i64::MIN;
        for _ in 0..20_000 {
            let e = g.next_event();
            assert!(e.ts >= last);
            last = e.ts;
            let v: Value = serde_json::from_slice(&e.json).unwrap();
            if let Some(c) = v.get("currency") {
                assert_eq!(c, "US\"D");
            }
        }
        assert_eq!(g.slots.len(), 1);
    }
}
