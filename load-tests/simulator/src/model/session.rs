//! A customer's visits: pages, cart changes, the end of a visit and the purchase.

use super::*;

impl<'m> CustomerSim<'m> {
    pub(super) fn pick_product(r: &mut Rng, m: &Model) -> u32 {
        let n = m.world.catalog.products as f64;
        ((n * r.f64().powf(m.world.catalog.popularity_skew)) as u32).min(m.world.catalog.products - 1)
    }

    pub(super) fn session_event(&mut self) {
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

    pub(super) fn cart_add(&mut self, s: &Session, p: u32, q: u16) {
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

    pub(super) fn end_session(&mut self) {
        self.session = None;
        self.last_session_end = self.t;
        let signup = self.misc.chance(self.m.world.browse.signup_prob);
        if !self.subscribed && signup {
            self.subscribed = true;
        }
    }

    pub(super) fn purchase(&mut self, session: u32) {
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
