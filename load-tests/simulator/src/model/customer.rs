//! A customer's clocks and hazard: stepping, rates, exposures, touches and the purchase decision
//! (with its truth).

use super::*;

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

    pub(super) fn next_seq(&mut self) -> u32 {
        let s = self.seq;
        self.seq += 1;
        s
    }

    pub(super) fn push(&mut self, ev: Event) {
        if !self.record {
            return;
        }
        let mut i = self.out.len();
        while i > 0 && self.out[i - 1].ts > ev.ts {
            i -= 1;
        }
        self.out.insert(i, ev);
    }

    pub(super) fn reminder_due(&self) -> Option<i64> {
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

    pub(super) fn boundary(&mut self) {
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

    pub(super) fn compute_rates(&mut self, t: i64) {
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

    pub(super) fn fire(&mut self, i: usize) {
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
    pub(super) fn expose(&mut self, k: usize, part: usize) {
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

    pub(super) fn add_touch(&mut self, ts: i64, etype: EventType, k: usize, campaign: Campaign) {
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

    pub(super) fn start_session(&mut self, content: usize, entry: Option<Channel>, campaign: Campaign, first_ts: i64, purchase: bool) {
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
    pub(super) fn decide(&mut self) {
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
    pub(super) fn start_purchase_session(&mut self) {
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

    pub(super) fn is_removed_route(&self, r: Route) -> bool {
        matches!(r, Route::Marketing(k) if Some(k) == self.removed)
    }

    pub(super) fn reminder(&mut self) {
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
}
