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

impl<'m> CustomerSim<'m> {
    /// Customer `idx`. `removed`: a channel (index in `Model::channels`) that does not exist in
    /// this run. `record`: keep events and truth (false for counterfactual counting runs).
    pub fn new(m: &'m Model, idx: u64, removed: Option<usize>, record: bool) -> CustomerSim<'m> {
        let w = &m.world;
        let seed = w.seed;
        let mut init = Rng::stream(seed, idx, P_INIT);
        let arrival = w.start_ms + ((idx as f64 + init.f64()) * m.spacing_ms) as i64;
        let sigma = w.baseline.propensity_sigma;
        let baseline = w.baseline.rate_per_day * (sigma * init.normal() - 0.5 * sigma * sigma).exp();
        let clock = |purpose: u64| {
            let mut rng = Rng::stream(seed, idx, purpose);
            Clock { need: rng.exp1(), rate: 0.0, rng }
        };
        let mut clocks = vec![clock(P_DECISION), clock(P_BROWSE)];
        let mut content = vec![Rng::stream(seed, idx, P_SESS_BROWSE), Rng::stream(seed, idx, P_SESS_PURCHASE)];
        let mut exposure = Vec::with_capacity(m.channels.len());
        for c in &m.channels {
            clocks.push(clock(p_ch_clock(c.ch)));
            clocks.push(clock(p_ch_intent_clock(c.ch)));
            content.push(Rng::stream(seed, idx, p_ch_session(c.ch)));
            exposure.push([Rng::stream(seed, idx, p_ch_content(c.ch)), Rng::stream(seed, idx, p_ch_intent_content(c.ch))]);
        }
        let off = (arrival - w.start_ms).rem_euclid(m.step_ms);
        let mut sim = CustomerSim {
            m,
            idx,
            removed,
            record,
            arrival,
            end: arrival + m.window_ms,
            t: arrival,
            step_start: arrival,
            step_end: arrival - off + m.step_ms,
            finished: false,
            baseline,
            loyalty: 1.0,
            purchases: 0,
            last_purchase: i64::MIN,
            acquisition: None,
            subscribed: false,
            last_touch_by_channel: [i64::MIN; 12],
            gstate: vec![[0.0; 2]; m.groups.len()],
            touches: Vec::new(),
            first_unfolded: 0,
            m_factor: 0.0,
            b_eff: 0.0,
            intent: 0.0,
            comp: vec![[0.0; 3]; m.channels.len()],
            clocks,
            decision_paused: false,
            resume_at_boundary: false,
            content,
            exposure,
            nav: Rng::stream(seed, idx, P_NAV),
            cause_rng: Rng::stream(seed, idx, P_CAUSE),
            misc: Rng::stream(seed, idx, P_MISC),
            session: None,
            sessions: 0,
            last_session_end: i64::MIN,
            pending_purchase: None,
            draft: None,
            cart: Vec::new(),
            cart_boost0: 0.0,
            cart_boost_ts: 0,
            cart_now: 0.0,
            cart_dirty: false,
            refr_exp: 1.0,
            refr_dirty: false,
            prosp: vec![1.0; m.channels.len()],
            cart_reminded: false,
            cart_last_activity: 0,
            seq: 0,
            out: VecDeque::new(),
            convs: VecDeque::new(),
            purchase_log: Vec::new(),
        };
        sim.compute_rates(arrival);
        sim
    }

    /// The customer's current purchase intent (hazard before the diurnal and cart multipliers).
    pub fn intent(&self) -> f64 {
        self.intent
    }

    /// The cause of the first purchase: None = not bought yet, Some(None) = the baseline.
    pub fn acquisition(&self) -> Option<Option<Channel>> {
        self.acquisition.map(|a| a.map(|k| self.m.channels[k].ch))
    }

    /// True when the front event is final (no event generated later can come before it).
    #[inline]
    pub fn ready(&self) -> bool {
        match self.out.front() {
            Some(e) => self.finished || e.ts <= self.t,
            None => false,
        }
    }

    /// Steps until an event can be taken or the customer is finished.
    pub fn advance_until_ready(&mut self) {
        while !self.finished && !self.ready() {
            self.step();
        }
    }

    /// Steps to the end of the customer's life.
    pub fn run_to_end(&mut self) {
        while !self.finished {
            self.step();
            if !self.record {
                self.out.clear();
            }
        }
    }

    fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    fn push(&mut self, ev: Event) {
        if !self.record {
            return;
        }
        let mut i = self.out.len();
        while i > 0 && self.out[i - 1].ts > ev.ts {
            i -= 1;
        }
        self.out.insert(i, ev);
    }

    fn reminder_due(&self) -> Option<i64> {
        let k = self.m.reminder_channel?;
        if self.removed == Some(k)
            || self.cart.is_empty()
            || self.cart_reminded
            || !self.subscribed
            || self.session.is_some()
            || self.draft.is_some()
            || self.t >= self.end
        {
            return None;
        }
        let delay = (self.m.channels[k].cfg.reminder_delay_hours * HOUR_MS as f64) as i64;
        Some((self.cart_last_activity + delay).max(self.t))
    }

    /// Simulates up to the next step boundary.
    pub fn step(&mut self) {
        if self.finished {
            return;
        }
        loop {
            #[derive(PartialEq)]
            enum Next {
                Boundary,
                Pending,
                Session,
                Reminder,
            }
            let mut horizon = self.step_end;
            let mut next = Next::Boundary;
            if let Some(p) = self.pending_purchase {
                if p < horizon {
                    horizon = p;
                    next = Next::Pending;
                }
            }
            if let Some(s) = &self.session {
                if s.next_ts < horizon {
                    horizon = s.next_ts;
                    next = Next::Session;
                }
            }
            if let Some(r) = self.reminder_due() {
                if r < horizon {
                    horizon = r;
                    next = Next::Reminder;
                }
            }
            horizon = horizon.max(self.t);
            let clock_end = horizon.min(self.end);
            if clock_end > self.t {
                let dt = (clock_end - self.t) as f64 / DAY;
                let mut best: Option<(f64, usize)> = None;
                for (i, c) in self.clocks.iter().enumerate() {
                    if c.rate > 0.0 && c.rate * dt >= c.need {
                        let x = c.need / c.rate;
                        if best.map_or(true, |(bx, _)| x < bx) {
                            best = Some((x, i));
                        }
                    }
                }
                if let Some((x, i)) = best {
                    for c in &mut self.clocks {
                        c.need -= c.rate * x;
                    }
                    let c = &mut self.clocks[i];
                    c.need = c.rng.exp1();
                    self.t = (self.t + ((x * DAY).ceil() as i64).max(1)).min(clock_end);
                    self.fire(i);
                    continue;
                }
                for c in &mut self.clocks {
                    c.need -= c.rate * dt;
                }
            }
            self.t = horizon;
            match next {
                Next::Boundary => {
                    self.boundary();
                    return;
                }
                Next::Pending => self.start_purchase_session(),
                Next::Session => self.session_event(),
                Next::Reminder => self.reminder(),
            }
        }
    }

    fn boundary(&mut self) {
        let t_new = self.step_end;
        let s = self.m.step_days;
        for (g, st) in self.m.groups.iter().zip(self.gstate.iter_mut()) {
            match g.kind {
                KernelKind::Exp => st[0] *= g.decay,
                KernelKind::Delayed => {
                    st[1] = g.decay * (st[1] + s * st[0]);
                    st[0] *= g.decay;
                }
            }
        }
        let mut i = self.first_unfolded;
        while i < self.touches.len() {
            let tch = &mut self.touches[i];
            if !tch.folded && tch.ts <= t_new {
                tch.folded = true;
                if tch.group != NO_GROUP {
                    let g = &self.m.groups[tch.group as usize];
                    let st = &mut self.gstate[tch.group as usize];
                    let age = (t_new - tch.ts) as f64 / DAY;
                    match g.kind {
                        KernelKind::Exp => st[0] += tch.w * (-age / g.days).exp2(),
                        KernelKind::Delayed => {
                            let e = (-age / g.days).exp();
                            st[0] += tch.w * e;
                            st[1] += tch.w * age * e;
                        }
                    }
                }
            }
            i += 1;
        }
        while self.first_unfolded < self.touches.len() && self.touches[self.first_unfolded].folded {
            self.first_unfolded += 1;
        }
        let full = t_new - self.step_start == self.m.step_ms;
        for (p, c) in self.prosp.iter_mut().zip(&self.m.channels) {
            if c.cfg.prospecting_days > 0.0 {
                *p = if full { *p * c.prosp_step } else { (-((t_new - self.arrival) as f64 / DAY) / c.cfg.prospecting_days).exp() };
            }
        }
        if self.cart.is_empty() {
            self.cart_now = 0.0;
        } else if self.cart_dirty || !full {
            self.cart_now = self.cart_boost0 * (-((t_new - self.cart_boost_ts) as f64) / self.m.cart_hl_ms).exp2();
        } else {
            self.cart_now *= self.m.cart_step;
        }
        self.cart_dirty = false;
        if self.purchases > 0 {
            if self.refr_dirty || !full {
                self.refr_exp = (-((t_new - self.last_purchase) as f64 / DAY) / self.m.world.purchase.refractory_recovery_days).exp();
            } else {
                self.refr_exp *= self.m.refr_step;
            }
            self.refr_dirty = false;
        }
        self.step_start = t_new;
        self.step_end = t_new + self.m.step_ms;
        if self.resume_at_boundary {
            self.resume_at_boundary = false;
            self.decision_paused = false;
        }
        self.compute_rates(t_new);
        if self.t >= self.end && self.session.is_none() && self.pending_purchase.is_none() {
            self.finished = true;
        }
    }

    fn compute_rates(&mut self, t: i64) {
        let m = self.m;
        let w = &m.world;
        let refr = if self.purchases > 0 {
            let f = w.purchase.refractory_floor;
            // Loyalty (the acquisition channel's repeat_factor) scales the whole hazard from the
            // first purchase on; as a multiplier it leaves every component's share unchanged.
            self.loyalty * (f + (1.0 - f) * (1.0 - self.refr_exp))
        } else {
            1.0
        };
        let mut touch_h = 0.0;
        for (g, st) in m.groups.iter().zip(&self.gstate) {
            touch_h += g.size
                * match g.kind {
                    KernelKind::Exp => st[0],
                    KernelKind::Delayed => g.coef * st[1],
                };
        }
        let b_eff = self.baseline;
        let intent = refr * (b_eff + touch_h);
        let diur = m.diurnal[(t.rem_euclid(DAY_MS) / HOUR_MS) as usize];
        let cart = if self.cart.is_empty() { 0.0 } else { self.cart_now };
        self.m_factor = refr * diur * (1.0 + cart);
        self.b_eff = b_eff;
        self.intent = intent;
        let alive = t < self.end;
        self.clocks[0].rate = if self.decision_paused || !alive { 0.0 } else { self.m_factor * (b_eff + touch_h) };
        let customer = self.purchases > 0;
        self.clocks[1].rate =
            if alive { diur * (w.browse.rate_per_day + w.browse.intent_rate * intent) * if customer { w.browse.customer_factor } else { 1.0 } } else { 0.0 };
        for (k, c) in m.channels.iter().enumerate() {
            let cfg = &c.cfg;
            let mut factor = diur;
            if customer {
                factor *= cfg.customer_factor;
            }
            if cfg.subscriber_only && !self.subscribed {
                factor = 0.0;
            }
            if cfg.kind == ChannelKind::Email {
                factor *= cfg.open_prob;
            }
            if !alive {
                factor = 0.0;
            }
            let removed = self.removed == Some(k);
            let comp = if factor == 0.0 {
                [0.0; 3]
            } else {
                let base = if cfg.prospecting_days > 0.0 {
                    let l = cfg.late_rate_fraction;
                    cfg.rate_per_day * (l + (1.0 - l) * self.prosp[k])
                } else {
                    cfg.rate_per_day
                };
                let ret = if cfg.retarget_rate_per_day > 0.0
                    && self.last_session_end != i64::MIN
                    && (t - self.last_session_end) as f64 <= cfg.retarget_hours * HOUR_MS as f64
                {
                    cfg.retarget_rate_per_day
                } else {
                    0.0
                };
                [factor * base, factor * ret, factor * cfg.intent_rate * intent]
            };
            self.comp[k] = comp;
            // A removed channel's intent-driven exposures become untracked visits through the
            // substitute (brand search without the ad: the organic result is clicked instead).
            self.clocks[2 + 2 * k].rate = if removed { 0.0 } else { comp[0] + comp[1] };
            self.clocks[3 + 2 * k].rate = if removed && c.substitute.is_none() { 0.0 } else { comp[2] };
        }
    }

    fn fire(&mut self, i: usize) {
        match i {
            0 => self.decide(),
            1 => {
                if self.session.is_none() {
                    let r = &mut self.content[0];
                    let entry = self.m.browse_entry[r.pick_cum(&self.m.browse_entry_cum)];
                    let first = self.t + 1000 + r.below(2000) as i64;
                    self.start_session(0, Some(entry), Campaign::None, first, false);
                }
            }
            _ => self.expose((i - 2) / 2, (i - 2) % 2),
        }
    }

    /// Channel `k` reaches the customer: `part` 0 = base or retargeting exposure, 1 = intent-driven.
    fn expose(&mut self, k: usize, part: usize) {
        let t = self.t;
        let cm = &self.m.channels[k];
        let cfg = &cm.cfg;
        let comp = self.comp[k];
        let r = &mut self.exposure[k][part];
        let u = r.f64() * (comp[0] + comp[1]);
        let campaign = if part == 1 {
            Campaign::Brand
        } else if u < comp[0] {
            match cfg.kind {
                ChannelKind::Impression => Campaign::Prospecting,
                ChannelKind::Click => Campaign::Generic,
                ChannelKind::Email => Campaign::Newsletter,
            }
        } else {
            Campaign::Retargeting
        };
        let clicked = r.chance(cfg.click_prob);
        if self.removed == Some(k) {
            if let Some(sub) = cm.substitute {
                self.start_session(2 + k, Some(sub), Campaign::None, t + 1000, false);
            }
            return;
        }
        match cfg.kind {
            ChannelKind::Impression => {
                let tc = t + 1000 + r.below(9000) as i64;
                self.add_touch(t, EventType::Impression, k, campaign);
                if clicked {
                    self.add_touch(tc, EventType::Click, k, campaign);
                    self.start_session(2 + k, Some(self.m.channels[k].ch), campaign, tc + 1000, false);
                }
            }
            ChannelKind::Click => {
                self.add_touch(t, EventType::Click, k, campaign);
                self.start_session(2 + k, Some(self.m.channels[k].ch), campaign, t + 1000, false);
            }
            ChannelKind::Email => {
                let tc = t + 5000 + (r.exp1() * 60_000.0) as i64;
                self.add_touch(t, EventType::EmailOpen, k, campaign);
                if clicked {
                    self.add_touch(tc, EventType::EmailClick, k, campaign);
                    self.start_session(2 + k, Some(self.m.channels[k].ch), campaign, tc + 1000, false);
                }
            }
        }
    }

    fn add_touch(&mut self, ts: i64, etype: EventType, k: usize, campaign: Campaign) {
        let seq = self.next_seq();
        let cm = &self.m.channels[k];
        let mut ev = Event::new(ts, seq, etype);
        ev.channel = Some(cm.ch);
        ev.campaign = campaign;
        self.push(ev);
        let mut w = 1.0;
        if cm.cfg.requires_prior_touch {
            let window = (self.m.world.synergy_days * DAY) as i64;
            let own = cm.ch.index();
            let prior = self.last_touch_by_channel.iter().enumerate().any(|(c, &lt)| c != own && lt != i64::MIN && lt <= ts && ts - lt <= window);
            if !prior {
                w = cm.cfg.alone_factor;
            }
        }
        let slot = &mut self.last_touch_by_channel[cm.ch.index()];
        *slot = (*slot).max(ts);
        self.touches.push(Touch { ts, seq, ch: k as u8, etype, group: cm.groups[etype.touch_index()], w, folded: false });
    }

    fn start_session(&mut self, content: usize, entry: Option<Channel>, campaign: Campaign, first_ts: i64, purchase: bool) {
        if let Some(s) = &mut self.session {
            // Already on the site: the new visit is part of the current session.
            if purchase {
                s.purchase = true;
            }
            return;
        }
        self.sessions += 1;
        self.session = Some(Session {
            id: self.sessions,
            content,
            entry,
            campaign,
            next_ts: first_ts.max(self.t),
            landed: false,
            purchase,
            planned: false,
            checked_out: false,
            events: 0,
            views: 0,
            plan: VecDeque::new(),
        });
    }

    /// The conversion hazard fired: the customer has decided to buy. The truth of the conversion
    /// is taken here, from the hazard components of the current step.
    fn decide(&mut self) {
        let t0 = self.step_start;
        let m = self.m_factor;
        let mut raw = Vec::with_capacity(self.touches.len());
        let mut sum = 0.0;
        for tch in &self.touches {
            let c = if tch.folded && tch.group != NO_GROUP {
                let g = &self.m.groups[tch.group as usize];
                m * g.size * tch.w * g.kernel((t0 - tch.ts) as f64 / DAY)
            } else {
                0.0
            };
            raw.push(c);
            sum += c;
        }
        let baseline = m * self.b_eff;
        let total = baseline + sum;
        debug_assert!((total - self.clocks[0].rate).abs() <= 1e-9 + 1e-6 * total, "truth {total} vs hazard {}", self.clocks[0].rate);
        let u = self.cause_rng.f64() * total;
        let cause = if u < baseline {
            None
        } else {
            let mut acc = baseline;
            let mut found = None;
            for (j, &c) in raw.iter().enumerate() {
                if c > 0.0 {
                    found = Some(self.touches[j].ch as usize);
                    acc += c;
                    if u < acc {
                        break;
                    }
                }
            }
            found
        };
        self.draft = Some(Draft { decision_ts: self.t, total, baseline, raw, cause });
        self.decision_paused = true;
        self.clocks[0].rate = 0.0;
        let delay = 1000 + (self.nav.exp1() * self.m.world.purchase.delay_minutes * 60_000.0) as i64;
        match &mut self.session {
            Some(s) => s.purchase = true,
            None => self.pending_purchase = Some(self.t + delay),
        }
    }

    /// A decided customer comes back to buy: through a navigational route (brand search, direct,
    /// organic search, ...), unless already on the site.
    fn start_purchase_session(&mut self) {
        self.pending_purchase = None;
        let u = self.nav.f64();
        let gap = 1000 + self.nav.below(3000) as i64;
        if let Some(s) = &mut self.session {
            s.purchase = true;
            return;
        }
        let total: f64 = self.m.routes.iter().filter(|r| !self.is_removed_route(r.0)).map(|r| r.1).sum();
        let mut x = u * total;
        let mut route = self.m.routes[0].0;
        for &(r, w) in &self.m.routes {
            if self.is_removed_route(r) {
                continue;
            }
            route = r;
            if x < w {
                break;
            }
            x -= w;
        }
        let t = self.t;
        match route {
            Route::Plain(ch) => self.start_session(1, Some(ch), Campaign::None, t + gap, true),
            Route::Marketing(k) => {
                self.add_touch(t, EventType::Click, k, Campaign::Brand);
                self.start_session(1, Some(self.m.channels[k].ch), Campaign::Brand, t + gap, true);
            }
        }
    }

    fn is_removed_route(&self, r: Route) -> bool {
        matches!(r, Route::Marketing(k) if Some(k) == self.removed)
    }

    fn reminder(&mut self) {
        let k = self.m.reminder_channel.expect("a reminder needs a reminder channel");
        self.cart_reminded = true;
        let cfg = &self.m.channels[k].cfg;
        let r = &mut self.exposure[k][0];
        let opened = r.chance(cfg.reminder_open_prob);
        let clicked = r.chance(cfg.reminder_click_prob);
        let tc = self.t + 5000 + (r.exp1() * 60_000.0) as i64;
        if opened {
            self.add_touch(self.t, EventType::EmailOpen, k, Campaign::CartReminder);
            if clicked {
                self.add_touch(tc, EventType::EmailClick, k, Campaign::CartReminder);
                self.start_session(2 + k, Some(self.m.channels[k].ch), Campaign::CartReminder, tc + 1000, false);
            }
        }
    }

    fn pick_product(r: &mut Rng, m: &Model) -> u32 {
        let n = m.world.catalog.products as f64;
        ((n * r.f64().powf(m.world.catalog.popularity_skew)) as u32).min(m.world.catalog.products - 1)
    }

    fn session_event(&mut self) {
        let mut s = self.session.take().expect("a session event needs a session");
        let t = self.t;
        let m = self.m;
        let sc = &m.world.session;
        let gap = {
            let r = &mut self.content[s.content];
            1000 + (r.exp1() * sc.gap_seconds * 1000.0) as i64
        };
        s.events += 1;
        if !s.landed {
            s.landed = true;
            let seq = self.next_seq();
            let mut ev = Event::new(t, seq, EventType::PageView);
            ev.channel = s.entry;
            ev.campaign = s.campaign;
            ev.session = s.id;
            self.push(ev);
            s.next_ts = t + gap;
            self.session = Some(s);
            return;
        }
        if s.purchase && !s.planned {
            s.planned = true;
            let r = &mut self.content[s.content];
            if self.cart.is_empty() {
                let p = Self::pick_product(r, m);
                let q = r.pick_cum(&m.qty_cum) as u16 + 1;
                s.plan.push_back(Action::ProductView(p));
                s.plan.push_back(Action::CartAdd(p, q));
                let extra = r.chance(m.world.purchase.extra_item_prob);
                let p2 = Self::pick_product(r, m);
                let q2 = r.pick_cum(&m.qty_cum) as u16 + 1;
                if extra {
                    s.plan.push_back(Action::ProductView(p2));
                    s.plan.push_back(Action::CartAdd(p2, q2));
                }
            }
            s.plan.push_back(Action::CheckoutStart);
            for &k in &m.checkout_channels {
                let hit = r.chance(m.channels[k].cfg.checkout_click_prob);
                if hit && self.removed != Some(k) {
                    s.plan.push_back(Action::Coupon(k as u8));
                }
            }
            s.plan.push_back(Action::Purchase);
        }
        if let Some(a) = s.plan.pop_front() {
            match a {
                Action::ProductView(p) => {
                    s.views += 1;
                    let seq = self.next_seq();
                    let mut ev = Event::new(t, seq, EventType::ProductView);
                    ev.session = s.id;
                    ev.product = p + 1;
                    self.push(ev);
                }
                Action::CartAdd(p, q) => self.cart_add(&s, p, q),
                Action::CheckoutStart => {
                    s.checked_out = true;
                    self.cart_last_activity = t;
                    let seq = self.next_seq();
                    let mut ev = Event::new(t, seq, EventType::CheckoutStart);
                    ev.session = s.id;
                    self.push(ev);
                }
                Action::Coupon(k) => self.add_touch(t, EventType::Click, k as usize, Campaign::Coupon),
                Action::Purchase => {
                    self.purchase(s.id);
                    self.end_session();
                    return;
                }
            }
            s.next_ts = t + gap;
            self.session = Some(s);
            return;
        }
        // Browsing.
        let rel = self.intent / (self.intent + sc.intent_half);
        let r = &mut self.content[s.content];
        let cont = s.events < sc.max_events && r.chance(sc.continue_prob + sc.continue_intent_bonus * rel);
        let u = r.f64();
        let p = Self::pick_product(r, m);
        let add = r.chance(sc.cart_add_max * rel);
        let q = r.pick_cum(&m.qty_cum) as u16 + 1;
        let remove = r.chance(sc.cart_remove_prob);
        let remove_line = r.below(self.cart.len().max(1) as u64) as usize;
        let checkout = r.chance(sc.checkout_abandon_prob);
        let term = (sc.search_terms as f64 * r.f64() * r.f64()) as u32;
        if !cont {
            if !self.cart.is_empty() && !s.checked_out && checkout {
                // Gets as far as the checkout, then leaves.
                let seq = self.next_seq();
                let mut ev = Event::new(t, seq, EventType::CheckoutStart);
                ev.session = s.id;
                self.push(ev);
                self.cart_last_activity = t;
                self.cart_boost0 *= m.world.cart.checkout_boost_factor;
                self.cart_dirty = true;
            }
            self.end_session();
            return;
        }
        let seq = self.next_seq();
        let mut ev = Event::new(t, seq, EventType::PageView);
        ev.session = s.id;
        if u < sc.product_view_share {
            s.views += 1;
            ev.etype = EventType::ProductView;
            ev.product = p + 1;
            if add {
                s.plan.push_back(Action::CartAdd(p, q));
            }
        } else if u < sc.product_view_share + sc.search_share {
            ev.etype = EventType::Search;
            ev.query = term + 1;
        } else if self.cart.len() >= 2 && remove {
            let (prod, qty, price) = self.cart.remove(remove_line);
            ev.etype = EventType::CartRemove;
            ev.product = prod + 1;
            ev.quantity = qty;
            ev.value_cents = price;
            self.cart_last_activity = t;
        }
        self.push(ev);
        s.next_ts = t + gap;
        self.session = Some(s);
    }

    fn cart_add(&mut self, s: &Session, p: u32, q: u16) {
        let t = self.t;
        let price = self.m.price(p);
        let seq = self.next_seq();
        let mut ev = Event::new(t, seq, EventType::CartAdd);
        ev.session = s.id;
        ev.product = p + 1;
        ev.value_cents = price;
        ev.quantity = q;
        self.push(ev);
        if self.cart.is_empty() {
            self.cart_reminded = false;
        }
        match self.cart.iter_mut().find(|l| l.0 == p) {
            Some(line) => line.1 = line.1.saturating_add(q),
            None => self.cart.push((p, q, price)),
        }
        let c = &self.m.world.cart;
        let value = self.cart.iter().map(|l| l.1 as f64 * l.2 as f64).sum::<f64>() / 100.0;
        let engagement = 1.0 + c.engagement_weight * (s.views.saturating_sub(1)).min(4) as f64;
        self.cart_boost0 = c.boost * engagement * c.value_ref / (c.value_ref + value);
        self.cart_boost_ts = t;
        self.cart_dirty = true;
        self.cart_last_activity = t;
    }

    fn end_session(&mut self) {
        self.session = None;
        self.last_session_end = self.t;
        let signup = self.misc.chance(self.m.world.browse.signup_prob);
        if !self.subscribed && signup {
            self.subscribed = true;
        }
    }

    fn purchase(&mut self, session: u32) {
        let t = self.t;
        let value: i64 = self.cart.iter().map(|l| l.1 as i64 * l.2).sum();
        let qty: u32 = self.cart.iter().map(|l| l.1 as u32).sum();
        let seq = self.next_seq();
        let mut ev = Event::new(t, seq, EventType::Purchase);
        ev.session = session;
        ev.value_cents = value;
        ev.quantity = qty.min(u16::MAX as u32) as u16;
        self.push(ev);
        let draft = self.draft.take().expect("a purchase follows a decision");
        self.purchases += 1;
        if self.purchases == 1 {
            self.acquisition = Some(draft.cause);
            self.loyalty = match draft.cause {
                None => self.m.world.baseline.repeat_factor,
                Some(k) => self.m.channels[k].cfg.repeat_factor,
            };
        }
        if self.record {
            let mut touches: Vec<TruthTouch> = self
                .touches
                .iter()
                .enumerate()
                .filter(|(_, tch)| tch.ts <= t)
                .map(|(j, tch)| TruthTouch {
                    seq: tch.seq,
                    ts: tch.ts,
                    channel: self.m.channels[tch.ch as usize].ch,
                    etype: tch.etype,
                    raw: draft.raw.get(j).copied().unwrap_or(0.0),
                })
                .collect();
            touches.sort_by_key(|x| (x.ts, x.seq));
            let ch = |k: Option<usize>| k.map(|k| self.m.channels[k].ch);
            self.convs.push_back(ConversionTruth {
                purchase_seq: seq,
                decision_ts: draft.decision_ts,
                ts: t,
                value_cents: value,
                purchase_index: self.purchases,
                total_hazard: draft.total,
                baseline_hazard: draft.baseline,
                cause: ch(draft.cause),
                acquisition: ch(self.acquisition.flatten()),
                touches,
            });
        }
        self.purchase_log.push((t, value));
        let subscribe = self.misc.chance(self.m.world.purchase.subscribe_prob);
        if subscribe {
            self.subscribed = true;
        }
        // The purchase spends the touches: their effect on the hazard ends here.
        self.touches.retain(|tch| tch.ts > t);
        self.first_unfolded = 0;
        for st in &mut self.gstate {
            *st = [0.0; 2];
        }
        self.cart.clear();
        self.cart_boost0 = 0.0;
        self.last_purchase = t;
        self.refr_dirty = true;
        self.resume_at_boundary = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(extra: &str) -> Model {
        let w = World::from_toml_str(&format!("customers = 200\nconcurrency = 200\n{extra}")).unwrap();
        Model::new(w).unwrap()
    }

    #[test]
    fn stepping_in_chunks_equals_running_through() {
        let m = model("");
        for idx in 0..40 {
            let mut a = CustomerSim::new(&m, idx, None, true);
            let mut taken = Vec::new();
            loop {
                a.advance_until_ready();
                match a.out.pop_front() {
                    Some(e) => taken.push((e.ts, e.seq, e.etype)),
                    None => break,
                }
            }
            let mut b = CustomerSim::new(&m, idx, None, true);
            while !b.finished {
                b.step();
            }
            let all: Vec<_> = b.out.iter().map(|e| (e.ts, e.seq, e.etype)).collect();
            assert_eq!(taken, all, "customer {idx}");
            assert!(all.windows(2).all(|w| w[0].0 <= w[1].0));
            let mut c = CustomerSim::new(&m, idx, None, false);
            c.run_to_end();
            assert_eq!(c.purchase_log, b.purchase_log);
        }
    }

    #[test]
    fn kernels_peak_at_one() {
        let g = GroupSpec { size: 1.0, kind: KernelKind::Delayed, days: 3.0, decay: 0.0, coef: 0.0 };
        assert!((g.kernel(3.0) - 1.0).abs() < 1e-12);
        assert!(g.kernel(0.0) == 0.0 && g.kernel(1.0) < 1.0 && g.kernel(6.0) < 1.0);
        let g = GroupSpec { size: 1.0, kind: KernelKind::Exp, days: 2.0, decay: 0.0, coef: 0.0 };
        assert!((g.kernel(0.0) - 1.0).abs() < 1e-12 && (g.kernel(2.0) - 0.5).abs() < 1e-12);
    }

    #[test]
    fn truth_shares_match_the_hazard() {
        // decide() checks in debug builds that the per-touch truth adds up to the simulated hazard.
        let m = model("");
        let mut n = 0;
        for idx in 0..100 {
            let mut s = CustomerSim::new(&m, idx, None, true);
            s.run_to_end();
            for c in &s.convs {
                let sum: f64 = c.touches.iter().map(|t| t.raw).sum::<f64>() + c.baseline_hazard;
                assert!((sum - c.total_hazard).abs() <= 1e-9 * c.total_hazard.max(1e-12));
                assert!(c.touches.iter().all(|t| t.ts <= c.ts && (t.ts <= c.decision_ts || t.raw == 0.0)));
                n += 1;
            }
        }
        assert!(n > 10);
    }
}
