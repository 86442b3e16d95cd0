//! The streaming driver: merges the active customers' events into one time-ordered stream (a heap
//! keyed by each customer's next event), and writes the truth files as it goes.
//!
//! Memory is bounded by the number of customers inside their window at once (`concurrency`):
//! a customer is started when the stream reaches its arrival and dropped once its last event is out.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::Instant;

use serde::Serialize;

use crate::event::{customer_id, event_id, write_json, Channel, Event, EventType};
use crate::model::{ConversionTruth, CustomerSim, Model};

/// What to run besides the events.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stop after this many events (the truth then covers what was written).
    pub max_events: Option<u64>,
    /// Re-simulate every customer once per channel with that channel removed, under the same
    /// random numbers, and report the conversions lost (true incremental conversions).
    pub counterfactual: bool,
}

/// What a run produced.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub events: u64,
    pub customers: u64,
    pub conversions: u64,
    pub revenue: f64,
    pub carts: u64,
    pub abandoned_carts: u64,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    pub truncated: bool,
    pub seconds: f64,
    pub events_per_second: f64,
    pub peak_active_customers: u64,
}

#[derive(Debug, Clone, Copy)]
struct OpenCart {
    seq: u32,
    opened_ts: i64,
    idle_at: Option<i64>,
}

struct Active<'m> {
    sim: CustomerSim<'m>,
    last_ts: i64,
    cart: Option<OpenCart>,
    purchases: u32,
    revenue: i64,
    /// Cause of the first written purchase (Some(None) = baseline).
    acquisition: Option<Option<Channel>>,
    /// Counterfactual purchases: (channel index removed, ts, value in cents).
    cf: Vec<(u8, i64, i64)>,
}

#[derive(Debug, Clone, Default)]
struct ChannelAgg {
    impressions: u64,
    clicks: u64,
    email_opens: u64,
    email_clicks: u64,
    to_customers: u64,
    credited: f64,
    credited_revenue: f64,
    cf_conversions: i64,
    cf_revenue: i64,
}

#[derive(Debug, Clone, Default)]
struct AcqAgg {
    customers: u64,
    repeat: u64,
    purchases: u64,
    revenue: i64,
}

#[derive(Serialize)]
struct TouchOut {
    event_id: String,
    channel: &'static str,
    event_type: &'static str,
    ts: i64,
    true_share: f64,
    raw_contribution: f64,
}

#[derive(Serialize)]
struct ConversionOut<'a> {
    conversion_id: String,
    customer_id: String,
    conversion_ts: i64,
    decision_ts: i64,
    value: f64,
    currency: &'a str,
    purchase_index: u32,
    cause: &'static str,
    acquisition_channel: &'static str,
    total_hazard: f64,
    baseline_hazard: f64,
    baseline_share: f64,
    touchpoints: Vec<TouchOut>,
}

#[derive(Serialize)]
struct CartOut {
    customer_id: String,
    cart_add_event_id: String,
    alert_id: String,
    opened_ts: i64,
    last_activity_ts: i64,
    alert_expected: bool,
    abandoned: bool,
    purchased_ts: Option<i64>,
}

#[derive(Serialize)]
struct RunInfo {
    seed: u64,
    customers: u64,
    events: u64,
    counterfactual: bool,
    truncated: bool,
    first_ts: Option<i64>,
    last_ts: Option<i64>,
}

#[derive(Serialize)]
struct Totals {
    conversions: u64,
    revenue: f64,
    credited_incremental_conversions: f64,
    baseline_conversions: f64,
    baseline_revenue: f64,
    counterfactual_conversions: Option<u64>,
    carts: u64,
    carts_alert_expected: u64,
    abandoned_carts: u64,
    abandonment_rate: f64,
}

#[derive(Serialize)]
struct ChannelOut {
    exposures: u64,
    impressions: u64,
    clicks: u64,
    email_opens: u64,
    email_clicks: u64,
    exposures_to_customers: u64,
    credited_incremental_conversions: f64,
    credited_incremental_revenue: f64,
    share_of_credited_incremental: f64,
    counterfactual_conversions_without: Option<i64>,
    counterfactual_incremental_conversions: Option<i64>,
    counterfactual_incremental_revenue: Option<f64>,
}

#[derive(Serialize)]
struct AcqOut {
    customers: u64,
    repeat_customers: u64,
    repeat_rate: f64,
    purchases_per_customer: f64,
    revenue_per_customer: f64,
}

#[derive(Serialize)]
struct ChannelsOut {
    run: RunInfo,
    totals: Totals,
    channels: BTreeMap<&'static str, ChannelOut>,
    acquisition: BTreeMap<&'static str, AcqOut>,
}

fn cause_name(c: Option<Channel>) -> &'static str {
    c.map_or("baseline", |c| c.as_str())
}

struct Truth {
    conversions: BufWriter<File>,
    carts: BufWriter<File>,
    line: Vec<u8>,
}

struct Driver<'m, 'w> {
    m: &'m Model,
    opts: Options,
    events: Option<&'w mut dyn Write>,
    buf: Vec<u8>,
    truth: Option<Truth>,
    summary: Summary,
    channels: [ChannelAgg; 12],
    acquisition: BTreeMap<&'static str, AcqAgg>,
    revenue_cents: i64,
    credited: f64,
    baseline: f64,
    baseline_revenue: f64,
    carts_alert_expected: u64,
    inactivity_ms: i64,
    abandon_ms: i64,
}

/// Runs the world: events to `events` (if any), truth files into `truth_dir` (if any).
pub fn run(m: &Model, opts: &Options, events: Option<&mut dyn Write>, truth_dir: Option<&Path>) -> io::Result<Summary> {
    let started = Instant::now();
    let truth = match truth_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join("world.toml"), m.world.to_toml())?;
            Some(Truth {
                conversions: BufWriter::with_capacity(1 << 20, File::create(dir.join("truth_conversions.jsonl"))?),
                carts: BufWriter::with_capacity(1 << 20, File::create(dir.join("truth_carts.jsonl"))?),
                line: Vec::with_capacity(4096),
            })
        }
        None => None,
    };
    let mut d = Driver {
        m,
        opts: opts.clone(),
        events,
        buf: Vec::with_capacity(1 << 20),
        truth,
        summary: Summary::default(),
        channels: Default::default(),
        acquisition: BTreeMap::new(),
        revenue_cents: 0,
        credited: 0.0,
        baseline: 0.0,
        baseline_revenue: 0.0,
        carts_alert_expected: 0,
        inactivity_ms: (m.world.truth.inactivity_minutes * 60_000.0).round() as i64,
        abandon_ms: (m.world.truth.abandon_hours * 3_600_000.0).round() as i64,
    };
    d.main_loop()?;
    d.flush_events()?;
    if let Some(w) = d.events.as_mut() {
        w.flush()?;
    }
    if let Some(t) = d.truth.as_mut() {
        t.conversions.flush()?;
        t.carts.flush()?;
    }
    let secs = started.elapsed().as_secs_f64();
    d.summary.seconds = secs;
    d.summary.events_per_second = if secs > 0.0 { d.summary.events as f64 / secs } else { 0.0 };
    if let Some(dir) = truth_dir {
        let mut f = BufWriter::new(File::create(dir.join("truth_channels.json"))?);
        serde_json::to_writer_pretty(&mut f, &d.channels_out())?;
        f.write_all(b"\n")?;
        f.flush()?;
    }
    Ok(d.summary)
}

impl<'m, 'w> Driver<'m, 'w> {
    fn main_loop(&mut self) -> io::Result<()> {
        let m = self.m;
        let n = m.world.customers;
        let mut heap: BinaryHeap<Reverse<(i64, u64, u32)>> = BinaryHeap::new();
        let mut slots: Vec<Option<Active<'m>>> = Vec::new();
        let mut free: Vec<u32> = Vec::new();
        let mut next_idx = 0u64;
        let mut next_arrival = if n > 0 { m.arrival(0) } else { i64::MAX };
        let max_events = self.opts.max_events.unwrap_or(u64::MAX);
        loop {
            if self.summary.events >= max_events {
                self.summary.truncated = true;
                break;
            }
            let top = heap.peek().map(|r| r.0 .0);
            if next_idx < n && top.map_or(true, |ts| next_arrival <= ts) {
                let a = self.activate(next_idx);
                let slot = match free.pop() {
                    Some(s) => {
                        slots[s as usize] = Some(a);
                        s
                    }
                    None => {
                        slots.push(Some(a));
                        (slots.len() - 1) as u32
                    }
                };
                let a = slots[slot as usize].as_mut().expect("just placed");
                if a.sim.ready() {
                    heap.push(Reverse((a.sim.out[0].ts, next_idx, slot)));
                    self.summary.peak_active_customers = self.summary.peak_active_customers.max(heap.len() as u64);
                } else {
                    let a = slots[slot as usize].take().expect("just placed");
                    self.retire(a, i64::MAX)?;
                    free.push(slot);
                }
                next_idx += 1;
                next_arrival = if next_idx < n { m.arrival(next_idx) } else { i64::MAX };
                continue;
            }
            let Some(mut top) = heap.peek_mut() else { break };
            let Reverse((_, idx, slot)) = *top;
            let a = slots[slot as usize].as_mut().expect("a heap entry has a customer");
            let ev = a.sim.out.pop_front().expect("a ready customer has an event");
            self.emit(a, &ev)?;
            a.sim.advance_until_ready();
            if a.sim.ready() {
                top.0 .0 = a.sim.out[0].ts;
                drop(top);
            } else {
                std::collections::binary_heap::PeekMut::pop(top);
                let a = slots[slot as usize].take().expect("retiring a customer");
                debug_assert_eq!(a.sim.idx, idx);
                self.retire(a, i64::MAX)?;
                free.push(slot);
            }
        }
        if self.summary.truncated {
            let cutoff = self.summary.last_ts.unwrap_or(i64::MIN);
            let mut rest: Vec<Active> = slots.into_iter().flatten().collect();
            rest.sort_by_key(|a| a.sim.idx);
            for a in rest {
                self.retire(a, cutoff)?;
            }
        }
        Ok(())
    }

    fn activate(&mut self, idx: u64) -> Active<'m> {
        let m = self.m;
        let mut cf = Vec::new();
        if self.opts.counterfactual {
            for k in 0..m.channels.len() {
                let mut s = CustomerSim::new(m, idx, Some(k), false);
                s.run_to_end();
                cf.extend(s.purchase_log.iter().map(|&(ts, v)| (k as u8, ts, v)));
            }
        }
        let mut sim = CustomerSim::new(m, idx, None, true);
        sim.advance_until_ready();
        self.summary.customers += 1;
        Active { sim, last_ts: i64::MIN, cart: None, purchases: 0, revenue: 0, acquisition: None, cf }
    }

    fn flush_events(&mut self) -> io::Result<()> {
        if let Some(w) = self.events.as_mut() {
            w.write_all(&self.buf)?;
        }
        self.buf.clear();
        Ok(())
    }

    fn emit(&mut self, a: &mut Active<'m>, ev: &Event) -> io::Result<()> {
        let idx = a.sim.idx;
        if self.events.is_some() {
            write_json(&mut self.buf, &self.m.world.id_prefix, idx, ev, &self.m.world.currency);
            if self.buf.len() >= 1 << 20 {
                self.flush_events()?;
            }
        }
        let s = &mut self.summary;
        s.events += 1;
        s.first_ts.get_or_insert(ev.ts);
        s.last_ts = Some(ev.ts);
        if ev.etype.is_touchpoint() {
            let c = &mut self.channels[ev.channel.expect("a touchpoint has a channel").index()];
            match ev.etype {
                EventType::Impression => c.impressions += 1,
                EventType::Click => c.clicks += 1,
                EventType::EmailOpen => c.email_opens += 1,
                _ => c.email_clicks += 1,
            }
            if a.purchases > 0 {
                c.to_customers += 1;
            }
        }
        if let Some(cart) = &mut a.cart {
            if cart.idle_at.is_none() && ev.ts - a.last_ts >= self.inactivity_ms {
                cart.idle_at = Some(a.last_ts);
            }
        }
        match ev.etype {
            EventType::CartAdd if a.cart.is_none() => {
                a.cart = Some(OpenCart { seq: ev.seq, opened_ts: ev.ts, idle_at: None });
            }
            EventType::Purchase => {
                if let Some(cart) = a.cart.take() {
                    self.close_cart(idx, cart, Some(ev.ts))?;
                }
                let conv = a.sim.convs.pop_front().expect("a purchase has its truth");
                debug_assert_eq!(conv.purchase_seq, ev.seq);
                a.purchases += 1;
                a.revenue += conv.value_cents;
                if conv.purchase_index == 1 {
                    a.acquisition = Some(conv.cause);
                }
                self.conversion(idx, &conv)?;
            }
            _ => {}
        }
        a.last_ts = ev.ts;
        Ok(())
    }

    fn conversion(&mut self, idx: u64, c: &ConversionTruth) -> io::Result<()> {
        self.summary.conversions += 1;
        let value = c.value_cents as f64 / 100.0;
        self.revenue_cents += c.value_cents;
        self.summary.revenue = self.revenue_cents as f64 / 100.0;
        let total = c.total_hazard;
        let share = |raw: f64| if total > 0.0 { raw / total } else { 0.0 };
        let bshare = if total > 0.0 { c.baseline_hazard / total } else { 1.0 };
        self.baseline += bshare;
        self.baseline_revenue += bshare * value;
        for t in &c.touches {
            let s = share(t.raw);
            let agg = &mut self.channels[t.channel.index()];
            agg.credited += s;
            agg.credited_revenue += s * value;
            self.credited += s;
        }
        if let Some(tr) = self.truth.as_mut() {
            let out = ConversionOut {
                conversion_id: event_id(&self.m.world.id_prefix, idx, c.purchase_seq),
                customer_id: customer_id(&self.m.world.id_prefix, idx),
                conversion_ts: c.ts,
                decision_ts: c.decision_ts,
                value,
                currency: &self.m.world.currency,
                purchase_index: c.purchase_index,
                cause: cause_name(c.cause),
                acquisition_channel: cause_name(c.acquisition),
                total_hazard: total,
                baseline_hazard: c.baseline_hazard,
                baseline_share: bshare,
                touchpoints: c
                    .touches
                    .iter()
                    .map(|t| TouchOut {
                        event_id: event_id(&self.m.world.id_prefix, idx, t.seq),
                        channel: t.channel.as_str(),
                        event_type: t.etype.as_str(),
                        ts: t.ts,
                        true_share: share(t.raw),
                        raw_contribution: t.raw,
                    })
                    .collect(),
            };
            tr.line.clear();
            serde_json::to_writer(&mut tr.line, &out)?;
            tr.line.push(b'\n');
            tr.conversions.write_all(&tr.line)?;
        }
        Ok(())
    }

    fn close_cart(&mut self, idx: u64, cart: OpenCart, purchased: Option<i64>) -> io::Result<()> {
        let abandoned = match (cart.idle_at, purchased) {
            (Some(i), Some(p)) => p - i > self.abandon_ms,
            (None, Some(_)) => false,
            (_, None) => true,
        };
        self.summary.carts += 1;
        if abandoned {
            self.summary.abandoned_carts += 1;
        }
        if cart.idle_at.is_some() {
            self.carts_alert_expected += 1;
        }
        if let Some(tr) = self.truth.as_mut() {
            let cid = customer_id(&self.m.world.id_prefix, idx);
            let eid = event_id(&self.m.world.id_prefix, idx, cart.seq);
            let out = CartOut {
                alert_id: format!("{cid}:{eid}"),
                customer_id: cid,
                cart_add_event_id: eid,
                opened_ts: cart.opened_ts,
                last_activity_ts: cart.idle_at.or(purchased).unwrap_or(cart.opened_ts),
                alert_expected: cart.idle_at.is_some(),
                abandoned,
                purchased_ts: purchased,
            };
            tr.line.clear();
            serde_json::to_writer(&mut tr.line, &out)?;
            tr.line.push(b'\n');
            tr.carts.write_all(&tr.line)?;
        }
        Ok(())
    }

    /// A customer leaves: its open cart (if any) is closed unpurchased, its numbers are added up.
    /// `cutoff`: counterfactual purchases after it are not counted (truncated runs).
    fn retire(&mut self, mut a: Active<'m>, cutoff: i64) -> io::Result<()> {
        let idx = a.sim.idx;
        if let Some(mut cart) = a.cart.take() {
            if cart.idle_at.is_none() {
                cart.idle_at = Some(a.last_ts);
            }
            self.close_cart(idx, cart, None)?;
        }
        for &(k, ts, v) in &a.cf {
            if ts <= cutoff {
                let c = &mut self.channels[self.m.channels[k as usize].ch.index()];
                c.cf_conversions += 1;
                c.cf_revenue += v;
            }
        }
        if let Some(acq) = a.acquisition {
            let e = self.acquisition.entry(cause_name(acq)).or_default();
            e.customers += 1;
            e.purchases += a.purchases as u64;
            e.revenue += a.revenue;
            if a.purchases >= 2 {
                e.repeat += 1;
            }
        }
        Ok(())
    }

    fn channels_out(&self) -> ChannelsOut {
        let cf = self.opts.counterfactual;
        let s = &self.summary;
        let mut channels = BTreeMap::new();
        for &ch in Channel::ALL {
            let c = &self.channels[ch.index()];
            let exposures = c.impressions + c.clicks + c.email_opens + c.email_clicks;
            let marketing = self.m.channel_index(ch).is_some();
            if !marketing && exposures == 0 {
                continue;
            }
            let without = if cf && marketing { Some(c.cf_conversions) } else { None };
            channels.insert(
                ch.as_str(),
                ChannelOut {
                    exposures,
                    impressions: c.impressions,
                    clicks: c.clicks,
                    email_opens: c.email_opens,
                    email_clicks: c.email_clicks,
                    exposures_to_customers: c.to_customers,
                    credited_incremental_conversions: c.credited,
                    credited_incremental_revenue: c.credited_revenue,
                    share_of_credited_incremental: if self.credited > 0.0 { c.credited / self.credited } else { 0.0 },
                    counterfactual_conversions_without: without,
                    counterfactual_incremental_conversions: without.map(|w| s.conversions as i64 - w),
                    counterfactual_incremental_revenue: without.map(|_| (self.revenue_cents - c.cf_revenue) as f64 / 100.0),
                },
            );
        }
        let acquisition = self
            .acquisition
            .iter()
            .map(|(&k, a)| {
                let n = a.customers.max(1) as f64;
                (
                    k,
                    AcqOut {
                        customers: a.customers,
                        repeat_customers: a.repeat,
                        repeat_rate: a.repeat as f64 / n,
                        purchases_per_customer: a.purchases as f64 / n,
                        revenue_per_customer: a.revenue as f64 / 100.0 / n,
                    },
                )
            })
            .collect();
        ChannelsOut {
            run: RunInfo {
                seed: self.m.world.seed,
                customers: s.customers,
                events: s.events,
                counterfactual: cf,
                truncated: s.truncated,
                first_ts: s.first_ts,
                last_ts: s.last_ts,
            },
            totals: Totals {
                conversions: s.conversions,
                revenue: s.revenue,
                credited_incremental_conversions: self.credited,
                baseline_conversions: self.baseline,
                baseline_revenue: self.baseline_revenue,
                counterfactual_conversions: if cf { Some(s.conversions) } else { None },
                carts: s.carts,
                carts_alert_expected: self.carts_alert_expected,
                abandoned_carts: s.abandoned_carts,
                abandonment_rate: if s.carts > 0 { s.abandoned_carts as f64 / s.carts as f64 } else { 0.0 },
            },
            channels,
            acquisition,
        }
    }
}
