//! The generative model: one customer's journey as a hazard process (see README.md, "The model").
//!
//! Time advances in steps of `step_minutes` on a global grid. Inside a step every rate (the
//! conversion hazard, the browse rate, each channel's exposure rate) is constant; they are
//! recomputed at each step boundary, where the touches of the step enter the hazard. Each rate
//! drives an exponential clock (the time at which its integrated rate passes an Exp(1) draw from
//! its own random stream), so events fall at exact millisecond times and a re-run with one channel
//! removed reuses every other stream's numbers.

use std::collections::VecDeque;

use crate::config::{ChannelCfg, ChannelKind, KernelKind, World};
use crate::event::{Campaign, Channel, Event, EventType};
use crate::rng::Rng;

pub const DAY_MS: i64 = 86_400_000;
const DAY: f64 = 86_400_000.0;
const HOUR_MS: i64 = 3_600_000;
const NO_GROUP: u16 = u16::MAX;

// Purposes of the random streams (stable: a channel's streams depend on its wire index only).
const P_INIT: u64 = 1;
const P_DECISION: u64 = 2;
const P_BROWSE: u64 = 3;
const P_SESS_BROWSE: u64 = 4;
const P_SESS_PURCHASE: u64 = 5;
const P_NAV: u64 = 6;
const P_CAUSE: u64 = 7;
const P_MISC: u64 = 8;
const P_CATALOG: u64 = 9;
fn p_ch_clock(ch: Channel) -> u64 {
    100 + ch.index() as u64
}
fn p_ch_content(ch: Channel) -> u64 {
    200 + ch.index() as u64
}
fn p_ch_session(ch: Channel) -> u64 {
    300 + ch.index() as u64
}
fn p_ch_intent_clock(ch: Channel) -> u64 {
    400 + ch.index() as u64
}
fn p_ch_intent_content(ch: Channel) -> u64 {
    500 + ch.index() as u64
}

/// One (channel, touch type) effect: a kernel times a size.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    pub size: f64,
    pub kind: KernelKind,
    pub days: f64,
    /// Multiplicative decay of the aggregate over one step.
    decay: f64,
    /// Delayed kernel: `e / days`.
    coef: f64,
}

impl GroupSpec {
    /// The kernel at `age_days` (1 at its peak).
    #[inline]
    pub fn kernel(&self, age_days: f64) -> f64 {
        match self.kind {
            KernelKind::Exp => (-age_days / self.days).exp2(),
            KernelKind::Delayed => {
                let x = age_days / self.days;
                x * (1.0 - x).exp()
            }
        }
    }
}

#[derive(Debug, Clone)]
pub struct ChannelModel {
    pub ch: Channel,
    pub cfg: ChannelCfg,
    /// Effect group per touch type (impression, click, email_open, email_click).
    groups: [u16; 4],
    /// Where the intent-driven exposures' visits come from when the channel is removed.
    substitute: Option<Channel>,
    /// Decay over one step of the prospecting part of the base rate.
    prosp_step: f64,
}

#[derive(Debug, Clone, Copy)]
enum Route {
    Plain(Channel),
    Marketing(usize),
}

/// The world, resolved for simulation. Shared read-only by all customers.
#[derive(Debug, Clone)]
pub struct Model {
    pub world: World,
    pub step_ms: i64,
    step_days: f64,
    spacing_ms: f64,
    pub window_ms: i64,
    /// The enabled marketing channels, in wire order.
    pub channels: Vec<ChannelModel>,
    pub groups: Vec<GroupSpec>,
    diurnal: [f64; 24],
    browse_entry: Vec<Channel>,
    browse_entry_cum: Vec<f64>,
    routes: Vec<(Route, f64)>,
    prices: Vec<i64>,
    qty_cum: Vec<f64>,
    reminder_channel: Option<usize>,
    checkout_channels: Vec<usize>,
    cart_hl_ms: f64,
    cart_step: f64,
    refr_step: f64,
}

fn cumulative(w: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    w.map(|x| {
        acc += x;
        acc
    })
    .collect()
}

impl Model {
    pub fn new(world: World) -> Result<Model, String> {
        world.validate()?;
        let step_ms = world.step_minutes as i64 * 60_000;
        let step_days = step_ms as f64 / DAY;
        let window_ms = (world.customer_days * DAY).round() as i64;
        let spacing_ms = window_ms as f64 / world.concurrency as f64;
        let mut channels = Vec::new();
        let mut groups = Vec::new();
        for &ch in Channel::ALL {
            let Some(cfg) = world.channels.get(ch.as_str()) else { continue };
            if !cfg.enabled {
                continue;
            }
            let mut g = [NO_GROUP; 4];
            for (touch, e) in &cfg.effects {
                let et = EventType::from_wire(touch).ok_or_else(|| format!("unknown touch type {touch}"))?;
                if e.size <= 0.0 {
                    continue;
                }
                let decay = match e.kernel {
                    KernelKind::Exp => (-step_days / e.days).exp2(),
                    KernelKind::Delayed => (-step_days / e.days).exp(),
                };
                g[et.touch_index()] = groups.len() as u16;
                groups.push(GroupSpec { size: e.size, kind: e.kernel, days: e.days, decay, coef: std::f64::consts::E / e.days });
            }
            let substitute = match &cfg.intent_substitute {
                Some(name) => Some(Channel::from_wire(name).ok_or_else(|| format!("unknown channel {name}"))?),
                None => None,
            };
            let prosp_step = if cfg.prospecting_days > 0.0 { (-step_days / cfg.prospecting_days).exp() } else { 1.0 };
            channels.push(ChannelModel { ch, cfg: cfg.clone(), groups: g, substitute, prosp_step });
        }
        let mut diurnal = [1.0; 24];
        for (h, d) in diurnal.iter_mut().enumerate() {
            let phase = std::f64::consts::TAU * (h as f64 + 0.5 - world.diurnal_peak_hour) / 24.0;
            *d = 1.0 + world.diurnal_amplitude * phase.cos();
        }
        let mut browse_entry = Vec::new();
        let mut weights = Vec::new();
        for (k, &v) in &world.browse.entry {
            browse_entry.push(Channel::from_wire(k).ok_or_else(|| format!("unknown channel {k}"))?);
            weights.push(v);
        }
        let browse_entry_cum = cumulative(weights.into_iter());
        let mut routes = Vec::new();
        for (k, &v) in &world.purchase.navigation {
            if v > 0.0 {
                routes.push((Route::Plain(Channel::from_wire(k).ok_or_else(|| format!("unknown channel {k}"))?), v));
            }
        }
        for (i, c) in channels.iter().enumerate() {
            if c.cfg.navigational_weight > 0.0 {
                routes.push((Route::Marketing(i), c.cfg.navigational_weight));
            }
        }
        if routes.is_empty() {
            routes.push((Route::Plain(Channel::Direct), 1.0));
        }
        let mut cat = Rng::stream(world.seed, u64::MAX, P_CATALOG);
        let prices = (0..world.catalog.products)
            .map(|_| {
                let euros = world.catalog.price_median * (world.catalog.price_sigma * cat.normal()).exp();
                (euros.round() as i64 * 100 - 1).max(99)
            })
            .collect();
        let qty_cum = cumulative(world.catalog.quantity_weights.iter().copied());
        let reminder_channel = channels.iter().position(|c| c.cfg.reminder_open_prob > 0.0);
        let checkout_channels = (0..channels.len()).filter(|&i| channels[i].cfg.checkout_click_prob > 0.0).collect();
        let cart_hl_ms = world.cart.boost_half_life_hours * HOUR_MS as f64;
        let cart_step = (-(step_ms as f64) / cart_hl_ms).exp2();
        let refr_step = (-step_days / world.purchase.refractory_recovery_days).exp();
        Ok(Model {
            world,
            step_ms,
            step_days,
            spacing_ms,
            window_ms,
            channels,
            groups,
            diurnal,
            browse_entry,
            browse_entry_cum,
            routes,
            prices,
            qty_cum,
            reminder_channel,
            checkout_channels,
            cart_hl_ms,
            cart_step,
            refr_step,
        })
    }

    pub fn seed(&self) -> u64 {
        self.world.seed
    }

    /// When customer `idx` arrives: arrivals are spread evenly, one per `customer_days /
    /// concurrency`, with a uniform jitter inside each slot, so at most `concurrency + 1` customers
    /// are inside their window at any time.
    pub fn arrival(&self, idx: u64) -> i64 {
        let mut init = Rng::stream(self.world.seed, idx, P_INIT);
        self.world.start_ms + ((idx as f64 + init.f64()) * self.spacing_ms) as i64
    }

    /// Index in `channels` of a channel, if it is an enabled marketing channel.
    pub fn channel_index(&self, ch: Channel) -> Option<usize> {
        self.channels.iter().position(|c| c.ch == ch)
    }

    fn price(&self, product: u32) -> i64 {
        self.prices[product as usize]
    }
}

#[derive(Debug, Clone, Copy)]
struct Touch {
    ts: i64,
    seq: u32,
    /// Index in `Model::channels`.
    ch: u8,
    etype: EventType,
    group: u16,
    /// Synergy weight (1, or the channel's `alone_factor` without a prior touch of another channel).
    w: f64,
    folded: bool,
}

#[derive(Debug, Clone)]
struct Clock {
    need: f64,
    rate: f64,
    rng: Rng,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Action {
    ProductView(u32),
    CartAdd(u32, u16),
    CheckoutStart,
    Coupon(u8),
    Purchase,
}

#[derive(Debug, Clone)]
struct Session {
    id: u32,
    /// Index of the content stream (0 browse, 1 purchase, 2 + k channel k).
    content: usize,
    entry: Option<Channel>,
    campaign: Campaign,
    next_ts: i64,
    landed: bool,
    purchase: bool,
    planned: bool,
    checked_out: bool,
    events: u32,
    views: u32,
    plan: VecDeque<Action>,
}

#[derive(Debug, Clone)]
struct Draft {
    decision_ts: i64,
    total: f64,
    baseline: f64,
    /// Hazard contribution of `touches[j]` at the decision (touches added later: none).
    raw: Vec<f64>,
    /// Index in `Model::channels` of the component drawn as the cause (None = baseline).
    cause: Option<usize>,
}

/// A touchpoint's part in a conversion.
#[derive(Debug, Clone)]
pub struct TruthTouch {
    pub seq: u32,
    pub ts: i64,
    pub channel: Channel,
    pub etype: EventType,
    /// Hazard contribution (conversions per day) at the decision.
    pub raw: f64,
}

/// Ground truth of one conversion, emitted with its purchase event.
#[derive(Debug, Clone)]
pub struct ConversionTruth {
    pub purchase_seq: u32,
    pub decision_ts: i64,
    pub ts: i64,
    pub value_cents: i64,
    pub purchase_index: u32,
    /// Total hazard at the decision (baseline + all touches), conversions per day.
    pub total_hazard: f64,
    pub baseline_hazard: f64,
    pub cause: Option<Channel>,
    pub acquisition: Option<Channel>,
    pub touches: Vec<TruthTouch>,
}

/// One customer's simulation. Resumable: [`CustomerSim::step`] advances one step.
#[derive(Debug, Clone)]
pub struct CustomerSim<'m> {
    m: &'m Model,
    pub idx: u64,
    removed: Option<usize>,
    record: bool,
    pub arrival: i64,
    pub end: i64,
    /// Simulated time: every event with `ts <= t` has been generated.
    pub t: i64,
    step_start: i64,
    step_end: i64,
    pub finished: bool,
    baseline: f64,
    loyalty: f64,
    purchases: u32,
    last_purchase: i64,
    /// Cause of the first purchase: None = not yet, Some(None) = baseline.
    acquisition: Option<Option<usize>>,
    subscribed: bool,
    last_touch_by_channel: [i64; 12],
    gstate: Vec<[f64; 2]>,
    touches: Vec<Touch>,
    first_unfolded: usize,
    m_factor: f64,
    b_eff: f64,
    intent: f64,
    comp: Vec<[f64; 3]>,
    /// 0 decision, 1 browse, 2 + 2k channel k's base and retargeting exposures, 3 + 2k its
    /// intent-driven exposures.
    clocks: Vec<Clock>,
    decision_paused: bool,
    resume_at_boundary: bool,
    content: Vec<Rng>,
    /// Per channel: draws of the base/retargeting exposures, then of the intent-driven ones.
    exposure: Vec<[Rng; 2]>,
    nav: Rng,
    cause_rng: Rng,
    misc: Rng,
    session: Option<Session>,
    sessions: u32,
    last_session_end: i64,
    pending_purchase: Option<i64>,
    draft: Option<Draft>,
    cart: Vec<(u32, u16, i64)>,
    cart_boost0: f64,
    cart_boost_ts: i64,
    /// The cart boost at the current step (kept by multiplication; recomputed when `cart_dirty`).
    cart_now: f64,
    cart_dirty: bool,
    /// exp(-days since the last purchase / recovery) at the current step (recomputed when
    /// `refr_dirty`).
    refr_exp: f64,
    refr_dirty: bool,
    /// Per channel: exp(-customer age / prospecting_days) at the current step.
    prosp: Vec<f64>,
    cart_reminded: bool,
    cart_last_activity: i64,
    seq: u32,
    /// Generated events not yet taken, sorted by ts.
    pub out: VecDeque<Event>,
    /// Truth of generated purchases not yet taken, in purchase order.
    pub convs: VecDeque<ConversionTruth>,
    /// Every purchase: (ts, value in cents).
    pub purchase_log: Vec<(i64, i64)>,
}

mod customer;
mod session;
#[cfg(test)]
mod tests;
