"""Additive-hazard attribution (survival MTA) fitted by EM on the whole observation time.

The model (Zhang, Wei & Ren, KDD 2014; Ji & Wang, AAAI 2017 "AMTA", with a customer frailty):

    lambda_i(t) = M(t) * ( b_i + sum_{touches j of i's current journey} e_{g(j)}(age_j) )

- b_i: the customer's own propensity, learned from behaviour other than the touch being credited:
  a log-linear (Poisson GLM) mean in the customer's own-visit rate (visits no click landed, without
  a purchase) times a gamma frailty; each conversion's baseline is left-one-out (from the
  customer's other conversions); with `sensors` (train.py's default) the frailty is shared with
  the customer's clicks before their first purchase decision: each click group's count is Poisson
  with a base rate plus c_k x (the customer's hazard), c_k learned, so that the clicks of groups
  whose rate follows the customer's propensity (intent-driven channels) are evidence of b_i
  instead of causes of the conversions (see `sensor_counts` and models/README.md);
- e_g(age) >= 0: the effect of a touch of group g = (channel, event_type) at age `age`, a
  non-negative combination of piecewise-linear "hat" functions of u = log1p(hours) / log1p(720)
  (the contract's `age` input), so its shape (immediate, delayed, long tail or none) is learned;
- M(t): multipliers that scale every component alike (time of day, open cart and its age, time
  since the previous purchase, time since the last site event): they carry the visit, cart and
  post-purchase dynamics, so that touches that land visits, happen while a cart is open
  (retargeting, cart reminders) or after a purchase are not credited with them;
- a purchase spends the touches before it (the processor's journey); touches between the start of
  the buying visit and the purchase are spent by it and never at risk;
- the conversion is dated at the **start of the visit in which it happens** (the customer's
  decision precedes the visit that carries it out; the visit is the purchase's session_id, or the
  events before it without a 30-minute gap, plus the click that landed it). The time between that
  start and the purchase is not at risk. This dating is what keeps navigational clicks (brand
  search, coupon clicks) from looking like causes; the kernel's value at short ages is then
  *learned* from the touches that were not followed by a purchase in their own visit.

Estimation: the log-likelihood sum_events log lambda(t_e) - integral lambda dt, with the integral
estimated by case-base sampling (controls on a stratified grid over each customer's time at
risk; Hanley & Miettinen 2009). EM over the latent cause of each conversion (baseline or one
touch basis term; the superposition of independent Poisson processes) gives closed-form updates:
    e_gk <- e_gk * sum_e X_e,gk / lambda_e  /  sum_controls w M X_c,gk
    b_i  <- (expected baseline conversions of i + alpha) / (sum_controls of i  w M + alpha / mu_i)
    mu_i = exp(Z_i theta): two Newton steps of the Poisson GLM per iteration
    m_fl <- events at level l / sum_controls at level l of w M A / m_fl
with alpha (the frailty's shape) by the method of moments.

Credit: the exported ONNX graph computes P = 1 - exp(-(mu + sum_i e_i) * 1 day). The processor's
removal effect P(all) - P(all but i) = exp(-H)(exp(e_i) - 1) is proportional to e_i (to first
order): each touch's share of the modelled incremental hazard at the conversion.
"""
from __future__ import annotations

import math
import time

import numpy as np
import scipy.sparse as sp

import tsdata as D

KNOT_HOURS = [0.0, 0.25, 1.0, 3.0, 8.0, 24.0, 48.0, 96.0, 192.0, 360.0, 720.0]
KNOTS_U = np.array([math.log1p(h) / D.AGE_LOG_SCALE for h in KNOT_HOURS])
K = len(KNOTS_U)
NE = len(D.EVENT_TYPES)
NG = len(D.CHANNELS) * NE  # group = channel * 12 + event_type
VISIT_GAP_MS = 30 * 60_000
LANDING_CLICK_MS = 10_000
DELIVERED_TYPES = (D.ET_INDEX["impression"], D.ET_INDEX["email_open"])  # touches the advertiser delivers
HOUR_BINS = 6  # time-of-day factor, 4-hour bins (UTC)
CART_AGE_H = [1.0, 4.0, 12.0, 48.0]
SINCE_PURCHASE_D = [1.0, 3.0, 7.0, 14.0, 30.0]


def basis(u: np.ndarray):
    """Hat functions at KNOTS_U: returns (k, frac): weight 1-frac on knot k, frac on knot k+1.
    u > 1 (older than 30 days) has no effect (k = -1)."""
    u = np.asarray(u, dtype=np.float64)
    k = np.clip(np.searchsorted(KNOTS_U, u, side="right") - 1, 0, K - 2)
    frac = np.clip((u - KNOTS_U[k]) / (KNOTS_U[k + 1] - KNOTS_U[k]), 0.0, 1.0)
    k = np.where(u > 1.0 + 1e-9, -1, k)
    return k, frac


def visit_starts(lg: D.Log, c: int, purchases: np.ndarray):
    """Per purchase: the start of the visit that carries it (see module doc)."""
    s = lg.starts[c]
    ts, ses = lg.ts, lg.session
    out = np.empty(len(purchases), dtype=np.int64)
    for n, p in enumerate(purchases):
        i = p
        sid = ses[p]
        while i > s:
            j = i - 1
            if sid >= 0 and ses[j] >= 0:
                if ses[j] != sid:
                    break
            elif ts[i] - ts[j] >= VISIT_GAP_MS:
                break
            i = j
        start = ts[i]
        # the click that landed the visit (its channel is the landing page_view's channel)
        j = i - 1
        while j >= s and ts[i] - ts[j] <= LANDING_CLICK_MS:
            if lg.etype[j] in (1, 3) and lg.chan[j] == lg.chan[i] and lg.chan[j] != D.CH_NONE:
                start = min(start, ts[j])
            j -= 1
        out[n] = start
    return out


def own_visits(lg: D.Log, c: int) -> int:
    """Visits the customer made on their own: a landing (first event of a session) that no click or
    email click landed (none of the same channel within 10 s before) and that holds no purchase.
    Their rate over the customer's life measures the customer's own propensity from behaviour
    other than the touches being credited (a customer-level covariate of the baseline)."""
    s, e = int(lg.starts[c]), int(lg.ends[c])
    ses = lg.session[s:e]
    et = lg.etype[s:e]
    ts = lg.ts[s:e]
    ch = lg.chan[s:e]
    has = ses >= 0
    if not has.any():
        return 0
    idx = np.flatnonzero(has)
    sv = ses[idx]
    first = np.concatenate([[True], sv[1:] != sv[:-1]])
    n = 0
    purchased = set(sv[et[idx] == D.PURCHASE].tolist())
    for i, sid in zip(idx[first], sv[first]):
        if sid in purchased:
            continue
        j = i - 1
        landed = False
        while j >= 0 and ts[i] - ts[j] <= LANDING_CLICK_MS:
            if et[j] in (1, 3) and ch[j] == ch[i]:
                landed = True
                break
            j -= 1
        n += not landed
    return n


def state_levels(lg: D.Log, sd_cart_open, sd_checkout, c: int, t: np.ndarray, last_purchase_ts: np.ndarray):
    """Multiplier levels at times t (sorted not required) of customer c: hour bin, cart level,
    since-purchase level."""
    s, e = lg.starts[c], lg.ends[c]
    ets = lg.ts[s:e]
    hour = ((t % D.DAY_MS) // (D.DAY_MS // HOUR_BINS)).astype(np.int64)
    i = np.searchsorted(ets, t, side="left") - 1  # last event strictly before t
    has = i >= 0
    ii = np.where(has, i, 0) + s
    open_ = has & sd_cart_open[ii]
    # age of the cart state: time since the last event while the cart is open
    age_h = (t - lg.ts[ii]) / D.HOUR_MS
    cart = np.where(open_, 1 + np.searchsorted(CART_AGE_H, age_h), 0)
    cart = np.where(open_ & sd_checkout[ii], cart + len(CART_AGE_H) + 1, cart)
    lp = last_purchase_ts
    since_d = (t - lp) / D.DAY_MS
    pur = np.where(lp >= 0, 1 + np.searchsorted(SINCE_PURCHASE_D, since_d), 0)
    return hour, cart, pur


VISIT_AGE_H = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 48.0, 96.0]
N_LEVELS = (HOUR_BINS, 2 * (len(CART_AGE_H) + 1) + 1, len(SINCE_PURCHASE_D) + 2, len(VISIT_AGE_H) + 2)


def visit_levels(lg: D.Log, cust: np.ndarray, t: np.ndarray):
    """Time since the customer's last site event (not a touchpoint) strictly before t, in bins (the
    last level: none yet). Every click starts a visit and a visit can open a cart: the visit's
    consequences are a multiplier here, like the cart, not a credit to the touch that landed it."""
    site = ~np.isin(lg.etype, D.TOUCH_TYPES)
    sc = lg.cust[site].astype(np.int64)
    st = lg.ts[site]
    key = sc * (1 << 42) + (st - int(lg.ts.min()))
    q = cust.astype(np.int64) * (1 << 42) + (t - int(lg.ts.min()))
    j = np.searchsorted(key, q, side="left") - 1
    ok = (j >= 0) & (sc[np.maximum(j, 0)] == cust)
    age_h = (t - st[np.maximum(j, 0)]) / D.HOUR_MS
    return np.where(ok, np.searchsorted(VISIT_AGE_H, age_h), len(VISIT_AGE_H) + 1)


def build(lg: D.Log, controls_per_day: float = 2.0, seed: int = 0, date_at_visit: bool = True, tail_hours: float = 12.0,
          post_visit_hours: float | str = 0.0):
    """Event rows (conversions) and control rows with their touch-basis design matrices.

    post_visit_hours > 0: delivered touches (impressions, e-mail opens) that reach the customer within
    that many hours after one of their site events get kernel columns of their own (groups NG..2NG-1),
    fitted but never credited. Delivery that follows a visit (retargeting, reminders) is triggered by
    the customer's current intent, which the visit reveals: its touches' kernels carry that intent's
    time course (and whatever other touch caused it) beside their own effect. The credited kernels are
    then learned from the touches whose delivery the customer's behaviour did not trigger.
    post_visit_hours = "auto": a window per delivered group, read from the log (`post_visit_windows`)."""
    t0 = time.time()
    rng = np.random.default_rng(seed + 11)
    pv_window = None
    if post_visit_hours == "auto":
        pv_window = post_visit_windows(lg, tail_hours)
        post_visit_hours = float(pv_window.max())
    elif post_visit_hours > 0:
        pv_window = np.full(NG, float(post_visit_hours))
    sd = D.step_features(lg)
    checkout = sd.x[:, len(D.EVENT_TYPES) + len(D.CHANNELS) + 1 + 12] > 0.5
    tps_all, pur_all = D.customer_touch_index(lg)
    log_end = lg.log_end
    step = D.DAY_MS / controls_per_day
    rows = {"e": ([], [], [], [], []), "c": ([], [], [], [], [])}  # cust, t, levels x3 (the design: mats)
    ncol = (2 if post_visit_hours > 0 else 1) * NG * K
    # the design is built in row blocks of at most DESIGN_BLOCK pending entries, each turned into CSR
    # as it fills (12 bytes per entry instead of the triplets' 24 and their copies): the same matrix
    mats = {"e": ([], [], []), "c": ([], [], [])}
    blocks = {"e": [], "c": []}
    block_start = {"e": 0, "c": 0}
    pending = {"e": 0, "c": 0}
    nrow = {"e": 0, "c": 0}

    def flush(kind):
        M = mats[kind]
        X = sp.csr_matrix((np.concatenate(M[2]).astype(np.float64) if M[2] else np.zeros(0),
                           (np.concatenate(M[0]) - block_start[kind] if M[0] else np.zeros(0, np.int64),
                            np.concatenate(M[1]) if M[1] else np.zeros(0, np.int64))),
                          shape=(nrow[kind] - block_start[kind], ncol))
        X.sum_duplicates()
        blocks[kind].append(X)
        mats[kind] = ([], [], [])
        block_start[kind] = nrow[kind]
        pending[kind] = 0
    wts = []
    own_rate = np.zeros(len(lg.customer_ids))
    touch_rate = np.zeros((len(lg.customer_ids), len(D.CHANNELS)))
    for c in range(len(lg.customer_ids)):
        s, e = int(lg.starts[c]), int(lg.ends[c])
        tp = tps_all[c]
        pur = pur_all[c]
        pts = lg.ts[pur]
        tau = visit_starts(lg, c, pur) if date_at_visit else pts.copy()
        t_start = int(lg.ts[s])
        t_end = min(int(lg.ts[e - 1]) + int(tail_hours * D.HOUR_MS), log_end)
        days = max((t_end - t_start) / D.DAY_MS, 1.0)
        own_rate[c] = own_visits(lg, c) / days
        if len(tps_all[c]):
            touch_rate[c] = np.bincount(lg.chan[tps_all[c]].astype(np.int64), minlength=len(D.CHANNELS) + 1)[:len(D.CHANNELS)] / days
        # controls: stratified grid over [t_start, t_end], minus the decided intervals [tau, purchase]
        off = rng.uniform(0, step)
        tc = np.arange(t_start + off, t_end, step).astype(np.int64)
        if len(pur):
            inside = np.zeros(len(tc), dtype=bool)
            for a, b in zip(tau, pts):
                inside |= (tc >= a) & (tc <= b)
            tc = tc[~inside]
        # touches spent inside a buying visit never count
        tts = lg.ts[tp]
        keep = np.ones(len(tp), dtype=bool)
        for a, b in zip(tau, pts):
            keep &= ~((tts >= a) & (tts <= b))
        tp = tp[keep]
        tts = lg.ts[tp]
        grp = lg.chan[tp].astype(np.int64) * NE + lg.etype[tp].astype(np.int64)
        if post_visit_hours > 0 and len(tp):
            et_c = lg.etype[s:e]
            site_ts = lg.ts[s:e][~np.isin(et_c, D.TOUCH_TYPES)]
            j = np.searchsorted(site_ts, tts, side="left") - 1
            since = (np.where(j >= 0, tts - site_ts[np.maximum(j, 0)], np.iinfo(np.int64).max) if len(site_ts)
                     else np.full(len(tts), np.iinfo(np.int64).max))
            delivered = np.isin(lg.etype[tp], DELIVERED_TYPES)
            grp = np.where(delivered & (since <= pv_window[grp] * D.HOUR_MS), grp + NG, grp)
        for kind, t in (("e", tau), ("c", tc)):
            if len(t) == 0:
                continue
            # last purchase strictly before t (for an event: the previous purchase)
            if kind == "e":
                lp = np.concatenate([[-1], pts[:-1]]).astype(np.int64)
            else:
                j = np.searchsorted(pts, t, side="left") - 1
                lp = np.where(j >= 0, pts[np.maximum(j, 0)], -1).astype(np.int64) if len(pts) else np.full(len(t), -1, np.int64)
            h, ca, pu = state_levels(lg, sd.cart_open, checkout, c, t, lp)
            R = rows[kind]
            R[0].append(np.full(len(t), c, dtype=np.int32)); R[1].append(t)
            R[2].append(h); R[3].append(ca); R[4].append(pu)
            if kind == "c":
                wts.append(np.full(len(t), step / D.DAY_MS))
            if len(tp):
                age = t[:, None] - tts[None, :]
                ok = (age > 0) & (age <= D.LOOKBACK_MS) & (tts[None, :] > lp[:, None])
                ri, ti = np.nonzero(ok)
                if len(ri):
                    u = np.log1p(age[ri, ti] / D.HOUR_MS) / D.AGE_LOG_SCALE
                    k, fr = basis(u)
                    g = grp[ti]
                    r_global = ri + nrow[kind]
                    M = mats[kind]
                    M[0].append(np.concatenate([r_global, r_global]))
                    M[1].append(np.concatenate([g * K + k, g * K + k + 1]))
                    M[2].append(np.concatenate([1 - fr, fr]))
                    pending[kind] += 2 * len(ri)
            nrow[kind] += len(t)
            if pending[kind] >= DESIGN_BLOCK:
                flush(kind)
    out = {}
    for kind in ("e", "c"):
        R = rows[kind]
        flush(kind)
        X = sp.vstack(blocks[kind], format="csr")
        blocks[kind] = []
        out[kind] = {"cust": np.concatenate(R[0]), "t": np.concatenate(R[1]),
                     "lv": [np.concatenate(R[2]), np.concatenate(R[3]), np.concatenate(R[4])], "X": X}
    for kind in ("e", "c"):
        out[kind]["lv"].append(visit_levels(lg, out[kind]["cust"], out[kind]["t"]))
    out["c"]["w"] = np.concatenate(wts)
    out["own_rate"] = own_rate
    out["touch_rate"] = touch_rate
    out["n_customers"] = len(lg.customer_ids)
    if pv_window is not None:
        out["post_visit_hours"] = {f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]}": float(pv_window[g])
                                   for g in np.flatnonzero(pv_window > 0) if g % NE in DELIVERED_TYPES}
    out["build_seconds"] = round(time.time() - t0, 1)
    return out


DESIGN_BLOCK = 4_000_000  # pending design entries (2 per touch and row) before a block is compressed
PV_EDGES_H = [0.0, 3.0, 6.0, 12.0, 24.0, 48.0, 96.0, 192.0]  # bins of time since the last site event
PV_RATIO = 1.5  # a bin is post-visit while the group's delivery rate is above this x its rate far from visits
PV_MIN_OUTSIDE = 0.2  # the least share of a group's touches outside its window for it to have one


def post_visit_windows(lg: D.Log, tail_hours: float = 12.0, min_touches: int = 200):
    """Per delivered group (impressions, e-mail opens of a channel): how long after a site event its
    delivery stays elevated, read from the log. Each group's delivery rate (touches per customer-day)
    is measured in bins of time since the customer's last site event (PV_EDGES_H; time at risk from
    the gaps between site events, up to each customer's end) and compared with its rate from 192 h
    on; the window ends at the first bin edge after which no bin is above PV_RATIO x that rate
    (0: never elevated; at most 192 h). Delivery that follows visits (retargeting, reminders) or the
    intent they reveal then gets uncredited columns for as long as the log shows it, whatever its
    campaign rules are. A channel whose touches outside its window would be fewer than
    PV_MIN_OUTSIDE of them (or than min_touches) keeps no window: its credited kernel could not be
    learned (a channel delivered only after visits is credited as before)."""
    edges = np.array(PV_EDGES_H + [np.inf]) * D.HOUR_MS
    nb = len(edges) - 1
    site = ~np.isin(lg.etype, D.TOUCH_TYPES)
    exposure = np.zeros(nb)
    counts = np.zeros((NG, nb))
    before_first = np.zeros(NG)  # touches before the customer's first site event
    deliv = np.isin(lg.etype, DELIVERED_TYPES) & (lg.chan != D.CH_NONE)
    for c in range(len(lg.customer_ids)):
        s, e = int(lg.starts[c]), int(lg.ends[c])
        st = lg.ts[s:e][site[s:e]]
        if len(st) == 0:
            d = np.flatnonzero(deliv[s:e]) + s
            np.add.at(before_first, lg.chan[d].astype(np.int64) * NE + lg.etype[d].astype(np.int64), 1.0)
            continue
        t_end = min(int(lg.ts[e - 1]) + int(tail_hours * D.HOUR_MS), lg.log_end)
        gaps = np.diff(np.append(st, max(t_end, int(st[-1])))).astype(np.float64)
        exposure += (np.clip(gaps[:, None], edges[None, :-1], edges[None, 1:]) - edges[None, :-1]).sum(0)
        d = np.flatnonzero(deliv[s:e]) + s
        if len(d):
            j = np.searchsorted(st, lg.ts[d], side="left") - 1
            ok = j >= 0
            g_all = lg.chan[d].astype(np.int64) * NE + lg.etype[d].astype(np.int64)
            np.add.at(before_first, g_all[~ok], 1.0)
            since = lg.ts[d][ok] - st[j[ok]]
            b = np.searchsorted(edges, since, side="right") - 1
            g = lg.chan[d][ok].astype(np.int64) * NE + lg.etype[d][ok].astype(np.int64)
            np.add.at(counts, (g, b), 1.0)
    rate = counts / np.maximum(exposure, 1.0)[None, :]
    ref = rate[:, -1]
    window = np.zeros(NG)
    for g in np.flatnonzero(counts.sum(1) >= min_touches):
        high = np.flatnonzero(rate[g, :-1] > PV_RATIO * ref[g])
        if len(high):
            k = int(high.max()) + 1
            outside = counts[g, k:].sum() + before_first[g]
            if outside >= max(min_touches, PV_MIN_OUTSIDE * (counts[g].sum() + before_first[g])):
                window[g] = PV_EDGES_H[k]
    return window


def last_purchase_before(lg: D.Log, cust: np.ndarray, t: np.ndarray):
    """The customer's last purchase strictly before t (-1: none): for a conversion row (dated at the
    start of its buying visit) that is the previous purchase."""
    pi = np.flatnonzero(lg.etype == D.PURCHASE)
    base = int(lg.ts.min())
    key = lg.cust[pi].astype(np.int64) * (1 << 42) + (lg.ts[pi] - base)
    q = cust.astype(np.int64) * (1 << 42) + (t - base)
    j = np.searchsorted(key, q, side="left") - 1
    ok = (j >= 0) & (lg.cust[pi[np.maximum(j, 0)]] == cust)
    return np.where(ok, lg.ts[pi[np.maximum(j, 0)]], -1).astype(np.int64)


def relevel(data, lg: D.Log | None = None, hour_bins: int = HOUR_BINS, since_purchase_d=SINCE_PURCHASE_D):
    """Recomputes the time-of-day and since-purchase multiplier levels of every row with other bins
    (the last purchase before each row is read from the log when the data does not hold it)."""
    for kind in ("e", "c"):
        R = data[kind]
        if "lp" not in R:
            R["lp"] = last_purchase_before(lg, R["cust"], R["t"])
        t, lp = R["t"], R["lp"]
        R["lv"][0] = ((t % D.DAY_MS) * hour_bins // D.DAY_MS).astype(np.int64)
        since_d = (t - lp) / D.DAY_MS
        R["lv"][2] = np.where(lp >= 0, 1 + np.searchsorted(np.asarray(since_purchase_d), since_d), 0)
    nl = list(data.get("n_levels", N_LEVELS))
    nl[0] = hour_bins
    nl[2] = len(since_purchase_d) + 2
    data["n_levels"] = tuple(nl)
    return data


def mirror_design(lg: D.Log, data, window_days: float = 30.0, date_at_visit: bool = True):
    """The design of the *sensor* (negative-control) term: for every event and control row at time t
    of customer i, each touchpoint of i within `window_days` of t on **either side** (earlier or
    later; the lag and the lead are the same kernel), at |t - s|, in the same hat basis, whatever
    journey it belongs to. Touches inside a buying visit (from its start to the purchase) are left
    out (they carry the decision). Returned as entries (row, column, value, since-purchase level of
    the touch), so that `fit` can weight each touch by 1 / the since-purchase multiplier at its own
    time: a touch that follows the customer's current propensity is rarer after a purchase by the
    same factor as the purchase hazard, and the weight makes the lead side of a conversion
    (always just after a purchase) comparable with that of a control.

    A touch cannot cause a purchase *before* it, so the association of a channel's later touches with
    the hazard measures how much its touches track the customer's propensity (confounding). With
    the same kernel on both sides, a channel whose touches are as predictive of earlier as of later
    purchases is explained by this term, which is never credited; the causal kernel keeps only the
    excess of the hazard after a touch over the hazard before it."""
    t0 = time.time()
    tps_all, pur_all = D.customer_touch_index(lg)
    win = int(window_days * D.DAY_MS)
    out = {}
    for kind in ("e", "c"):
        cust, t = data[kind]["cust"], data[kind]["t"]
        bounds = np.searchsorted(cust, np.arange(data["n_customers"] + 1))
        R, Cc, V, L = [], [], [], []
        for c in range(data["n_customers"]):
            r0, r1 = bounds[c], bounds[c + 1]
            if r0 == r1 or not len(tps_all[c]):
                continue
            tp = tps_all[c]
            pur = pur_all[c]
            pts = lg.ts[pur]
            tts = lg.ts[tp]
            keep = np.ones(len(tp), dtype=bool)
            if len(pur):
                tau = visit_starts(lg, c, pur) if date_at_visit else pts
                for a, b in zip(tau, pts):
                    keep &= ~((tts >= a) & (tts <= b))
            tp, tts = tp[keep], tts[keep]
            if not len(tp):
                continue
            j = np.searchsorted(pts, tts, side="left") - 1
            lp = np.where(j >= 0, pts[np.maximum(j, 0)], -1) if len(pts) else np.full(len(tts), -1)
            since_d = (tts - lp) / D.DAY_MS
            lev = np.where(lp >= 0, 1 + np.searchsorted(SINCE_PURCHASE_D, since_d), 0)
            grp = lg.chan[tp].astype(np.int64) * NE + lg.etype[tp].astype(np.int64)
            tt = t[r0:r1]
            gap = np.abs(tt[:, None] - tts[None, :])
            ok = (gap <= win) & (tt[:, None] != tts[None, :])
            ri, ti = np.nonzero(ok)
            if not len(ri):
                continue
            u = np.log1p(gap[ri, ti] / D.HOUR_MS) / D.AGE_LOG_SCALE
            k, fr = basis(u)
            k = np.maximum(k, 0)
            g = grp[ti]
            rg = ri + r0
            R.append(np.concatenate([rg, rg])); Cc.append(np.concatenate([g * K + k, g * K + k + 1]))
            V.append(np.concatenate([1 - fr, fr])); L.append(np.concatenate([lev[ti], lev[ti]]))
        out[kind] = (np.concatenate(R), np.concatenate(Cc), np.concatenate(V), np.concatenate(L).astype(np.int8))
    out["seconds"] = round(time.time() - t0, 1)
    return out


def _mirror_matrix(entries, n_rows, m_pur, cap: float):
    r, c, v, lev = entries
    w = np.minimum(1.0 / np.maximum(m_pur, 1e-9), cap * 1.0 / max(m_pur[0], 1e-9))
    X = sp.csr_matrix((v * w[lev], (r, c)), shape=(n_rows, NG * K))
    X.sum_duplicates()
    return X


SENSOR_AGE_D = [2.0, 5.0, 10.0, 20.0]  # customer-age bins of the sensors' base rates
N_SENSOR_STATES = (len(VISIT_AGE_H) + 2) * (len(SENSOR_AGE_D) + 1)


def sensor_state(visit_level: np.ndarray, age_days: np.ndarray):
    return visit_level * (len(SENSOR_AGE_D) + 1) + np.searchsorted(SENSOR_AGE_D, age_days)


def sensor_counts(lg: D.Log, data, min_touches: int = 200):
    """Per customer, touch group and *state* (time since the customer's last site event x the
    customer's age): the touches before the customer's first purchase decision (the start of the
    first buying visit; the whole log for a customer who never buys). No purchase can have caused
    them (subscriptions, post-purchase retargeting and the refractory period all come later), so
    they are pre-treatment evidence of the customer's propensity wherever a group's touch rate
    follows it (see `fit`'s `sensors`). The state lets each group's base rate depend on the visits
    (retargeting follows a visit) and on the customer's age (prospecting fades), so that neither is
    mistaken for the propensity."""
    nC = data["n_customers"]
    first = np.full(nC, np.iinfo(np.int64).max)
    np.minimum.at(first, data["e"]["cust"], data["e"]["t"])
    start = lg.ts[lg.starts].astype(np.int64)
    is_tp = np.isin(lg.etype, D.TOUCH_TYPES) & (lg.chan != D.CH_NONE)
    idx = np.flatnonzero(is_tp)
    cu = lg.cust[idx].astype(np.int64)
    pre = lg.ts[idx] < first[cu]
    idx, cu = idx[pre], cu[pre]
    grp = lg.chan[idx].astype(np.int64) * NE + lg.etype[idx].astype(np.int64)
    cnt = np.bincount(grp, minlength=NG)
    groups = np.flatnonzero(cnt >= min_touches)
    gpos = np.full(NG, -1)
    gpos[groups] = np.arange(len(groups))
    ok = gpos[grp] >= 0
    st = sensor_state(visit_levels(lg, cu, lg.ts[idx]), (lg.ts[idx] - start[cu]) / D.DAY_MS)
    N = np.zeros((nC, len(groups), N_SENSOR_STATES), dtype=np.float64)
    np.add.at(N, (cu[ok], gpos[grp[ok]], st[ok]), 1.0)
    # standalone clicks: clicks that no impression / e-mail open of the same channel preceded within
    # 30 minutes (a click-through follows the advertiser's delivery; a standalone click is the
    # customer's own seeking)
    all_tp = np.flatnonzero(is_tp)
    shown = all_tp[np.isin(lg.etype[all_tp], [D.ET_INDEX["impression"], D.ET_INDEX["email_open"]])]
    base_ts = int(lg.ts.min())
    skey = (lg.cust[shown].astype(np.int64) * 64 + lg.chan[shown]) * (1 << 40) + (lg.ts[shown] - base_ts)
    order = np.argsort(skey, kind="stable")
    skey = skey[order]
    qkey = (cu * 64 + lg.chan[idx]) * (1 << 40) + (lg.ts[idx] - base_ts)
    j = np.searchsorted(skey, qkey, side="right") - 1
    prev_ok = j >= 0
    jj = np.maximum(j, 0)
    same = prev_ok & ((skey[jj] >> 40) == (qkey >> 40)) & ((qkey - skey[jj]) <= 30 * 60_000)
    standalone = ok & np.isin(lg.etype[idx], [D.ET_INDEX["click"], D.ET_INDEX["email_click"]]) & ~same
    Ns = np.zeros((nC, len(groups), N_SENSOR_STATES), dtype=np.float64)
    np.add.at(Ns, (cu[standalone], gpos[grp[standalone]], st[standalone]), 1.0)
    return {"N": N, "Ns": Ns, "groups": groups, "first": first, "start": start}


def customer_covariates(data, covariates: str):
    nC = data["n_customers"]
    cols = [np.ones(nC)]
    if covariates in ("own", "all") and "own_rate" in data:
        cols.append(np.log(data["own_rate"] + 0.02))
    if covariates.startswith("own+") and "touch_rate" in data:
        # diagnostic only: the named channels' touch rates (e.g. "own+sms"), to measure how much a
        # customer-level sensor of the propensity could do; never a default (it names channels)
        cols.append(np.log(data["own_rate"] + 0.02))
        for name in covariates[4:].split("+"):
            cols.append(np.log(data["touch_rate"][:, D.CH_INDEX[name]] + 0.02))
    if covariates == "all" and "touch_rate" in data:
        tr = data["touch_rate"]
        for k in range(tr.shape[1]):
            if (tr[:, k] > 0).mean() > 0.01:
                x = np.log(tr[:, k] + 0.02)
                cols.append(x)
    Z = np.stack(cols, 1)
    Z[:, 1:] = (Z[:, 1:] - Z[:, 1:].mean(0)) / (Z[:, 1:].std(0) + 1e-9)
    return Z


def fit(data, iters: int = 200, use_multipliers: bool = True, frailty: bool = True, log=print, tol=1e-7,
        covariates: str = "own", mirror: bool = False, mirror_weight: bool = True, mirror_cap: float = 50.0,
        sensors: bool = False, sensor_touch_term: bool = True, sensor_states: bool = True,
        sensor_clicks_only: bool = False, sensor_standalone: bool = False, loo: bool = True, alpha_fixed: float | None = None,
        sensor_base_diurnal: bool = False):
    E, C = data["e"], data["c"]
    Xe, Xc = E["X"], C["X"]
    N_LEVELS = tuple(data.get("n_levels", globals()["N_LEVELS"]))
    use_mirror = mirror and "mirror" in data
    if use_mirror:
        # the mirror term: its own NG*K columns after the causal ones, never credited
        PUR = 2  # index of the since-purchase multiplier in N_LEVELS
        ones = np.ones(data.get("n_levels", N_LEVELS)[PUR])

        def with_mirror(m_pur):
            mp = m_pur if mirror_weight else ones
            Xne = _mirror_matrix(data["mirror"]["e"], Xe.shape[0], mp, mirror_cap)
            Xnc = _mirror_matrix(data["mirror"]["c"], Xc.shape[0], mp, mirror_cap)
            return sp.hstack([E["X"], Xne]).tocsr(), sp.hstack([C["X"], Xnc]).tocsr()
        Xe, Xc = with_mirror(ones)
        mirror_pur = ones.copy()
    XeT, XcT = Xe.T.tocsr(), Xc.T.tocsr()
    w = C["w"]
    nC = data["n_customers"]
    ce, cc = E["cust"], C["cust"]
    n_e = len(ce)
    # which basis columns are ever exposed
    exposure = XcT @ w
    active = exposure > 0
    mu = n_e / w.sum()
    b = np.full(nC, mu)
    # the customer's baseline: log mu_i = Z_i theta, Z = customer-level behaviour over the whole
    # log (own-visit rate, touch rate per channel), a Poisson GLM fitted in the M-step
    Z = customer_covariates(data, covariates)
    theta = np.zeros(Z.shape[1])
    theta[0] = math.log(mu)
    mu_i = np.exp(Z @ theta)
    n_tot = np.bincount(ce, minlength=nC).astype(np.float64)
    r0_prev = np.zeros(n_e)
    Ei_prev = np.bincount(cc, weights=w, minlength=nC)
    S = np.where(active, mu * 0.1, 0.0)
    m = [np.ones(n) for n in N_LEVELS]
    alpha = 1.0
    ll_prev = -np.inf
    # sensors: every touch group's touches before the customer's first purchase decision, modelled
    # as Poisson with rate a_k + c_k * D(t) * (b_i + T_i(t)) (a base rate plus a part that follows
    # the customer's current hazard: its baseline and the modelled effects of its touches, D the
    # time-of-day multiplier); the part c_k D b_i is evidence of b_i, added to its gamma posterior.
    # a_k, c_k are learned; a group whose touches do not follow the hazard gets c_k ~ 0.
    use_sensors = sensors and frailty and "sensor" in data
    SB = np.zeros(nC)
    SD = np.zeros(nC)
    if use_sensors:
        sen = data["sensor"]
        gk = sen["groups"]
        Nk = sen["Ns" if sensor_standalone else "N"]
        Nk = Nk if sensor_states else Nk.sum(2, keepdims=True)
        if sensor_clicks_only or sensor_standalone:
            # only the customer's own actions (clicks); impressions and opens are delivered to them
            keep = np.isin(gk % NE, [D.ET_INDEX["click"], D.ET_INDEX["email_click"]])
            gk, Nk = gk[keep], Nk[:, keep]
        NS = Nk.shape[2]
        pre_c = C["t"] < sen["first"][cc]
        st_c = (sensor_state(C["lv"][3], (C["t"] - sen["start"][cc]) / D.DAY_MS) if sensor_states
                else np.zeros(len(cc), dtype=np.int64))
        cs = cc.astype(np.int64) * NS + st_c
        Tpre = np.bincount(cs, weights=w * pre_c, minlength=nC * NS).reshape(nC, NS)
        a_k = 0.5 * Nk.sum(0) / np.maximum(Tpre.sum(0), 1e-12)  # [G, NS]
        c_k = 0.5 * Nk.sum((0, 2)) / max(float(mu * Tpre.sum()), 1e-12)  # [G]
    for it in range(iters):
        if use_mirror and mirror_weight and use_multipliers and it > 0 and it % 10 == 0 and \
                np.max(np.abs(np.log(m[PUR] / mirror_pur))) > 0.01:
            # the mirror term's weights follow the since-purchase multiplier as it is learned
            mirror_pur = m[PUR].copy()
            Xe, Xc = with_mirror(mirror_pur)
            XeT, XcT = Xe.T.tocsr(), Xc.T.tocsr()
        Mc = np.ones(len(w))
        Me = np.ones(n_e)
        if use_multipliers:
            for f in range(len(N_LEVELS)):
                Mc *= m[f][C["lv"][f]]
                Me *= m[f][E["lv"][f]]
        # leave-one-out: an event's baseline is learned from the customer's other conversions
        be = (b[ce] if not frailty or not loo else
              (np.bincount(ce, weights=r0_prev, minlength=nC)[ce] - r0_prev + SB[ce] + alpha)
              / (Ei_prev[ce] + SD[ce] + alpha / mu_i[ce]))
        Ae = be + Xe @ S
        Ac = b[cc] + Xc @ S
        ll = float(np.sum(np.log(Me * Ae + 1e-300)) - np.sum(w * Mc * Ac))
        if not np.isfinite(ll) or not np.all(np.isfinite(S)):
            # a degenerate multiplier level (e.g. every conversion in one level) can diverge: keep the
            # last finite parameters
            log(f"  EM stopped at {it}: non-finite likelihood; the last finite parameters are kept")
            S, b, m, mu, theta = last_ok
            break
        last_ok = (S.copy(), b.copy(), [x.copy() for x in m], mu, theta.copy())
        # E-step / M-step for the touch effects
        num = S * (XeT @ (1.0 / Ae))
        den = XcT @ (w * Mc)
        S = np.where(den > 0, num / np.maximum(den, 1e-300), 0.0)
        # baseline
        r0 = be / Ae
        r0_prev = r0
        n0 = np.bincount(ce, weights=r0, minlength=nC)
        Ei = np.bincount(cc, weights=w * Mc, minlength=nC)
        Ei_prev = Ei
        mu = n0.sum() / Ei.sum()
        if use_sensors:
            Dc = (m[0][C["lv"][0]] if use_multipliers else 1.0) * w * pre_c
            Dis = np.bincount(cs, weights=Dc, minlength=nC * NS).reshape(nC, NS)
            if sensor_touch_term == "others":
                # the hazard of every touch but the group's own: a group's count cannot be evidence
                # of a hazard its own touches make (heavily delivered groups would explain themselves)
                TTall = Dc * (Xc @ S)
                TTk = np.empty((nC, len(gk), NS))
                for j, g in enumerate(gk):
                    own = np.zeros_like(S)
                    cols = slice(g * K, (g + 1) * K)
                    own[cols] = S[cols]
                    TTk[:, j, :] = np.bincount(cs, weights=TTall - Dc * (Xc @ own), minlength=nC * NS).reshape(nC, NS)
            elif sensor_touch_term:
                TTk = np.bincount(cs, weights=Dc * (Xc @ S), minlength=nC * NS).reshape(nC, 1, NS)
            else:
                TTk = np.zeros((nC, 1, NS))
            # the base rate over time weighted like the hazard's time of day (delivery has its hours too)
            Tb = Dis if sensor_base_diurnal else Tpre
            base = a_k[None, :, :] * Tb[:, None, :]
            hz = c_k[None, :, None] * (b[:, None, None] * Dis[:, None, :] + TTk)
            lam_k = np.maximum(base + hz, 1e-300)
            sbase = Nk * base / lam_k
            sb = Nk * (c_k[None, :, None] * b[:, None, None] * Dis[:, None, :]) / lam_k
            a_k = sbase.sum(0) / np.maximum(Tb.sum(0), 1e-12)
            c_k = (Nk - sbase).sum((0, 2)) / np.maximum(((b[:, None] * Dis)[:, None, :] + TTk).sum((0, 2)), 1e-12)
            SB = sb.sum((1, 2))
            SD = Dis.sum(1) * c_k.sum()
        for _ in range(2):  # damped Newton steps of the Poisson GLM: n0_i ~ Poisson(E_i exp(Z_i theta))
            lam = np.exp(np.clip(Z @ theta, -50, 50)) * (Ei + SD)
            grad = Z.T @ (n0 + SB - lam) - 1e-3 * np.r_[0.0, theta[1:]]
            hess = (Z * lam[:, None]).T @ Z + 1e-3 * np.eye(len(theta))
            try:
                step_ = np.linalg.solve(hess, grad)
            except np.linalg.LinAlgError:
                step_ = np.zeros_like(theta)
            if not np.all(np.isfinite(step_)):
                step_ = np.zeros_like(theta)
            nrm = np.abs(step_).max()
            theta = theta + (step_ if nrm <= 1.0 else step_ / nrm)
        mu_i = np.exp(np.clip(Z @ theta, -50, 50))
        if frailty:
            # gamma frailty around the covariate mean; shape alpha by the method of moments on the
            # customers' conversion counts: Var n_i = m_i + (mu_i E_i)^2 / alpha
            ex = mu_i * Ei
            Ti = np.bincount(cc, weights=w * Mc * (Xc @ S), minlength=nC)
            mi = ex + Ti
            v = np.sum((n_tot - mi) ** 2 - mi)
            inv_alpha = min(max(v / max(np.sum(ex ** 2), 1e-12), 0.02), 20.0)
            alpha = 1.0 / inv_alpha if alpha_fixed is None else alpha_fixed
            b = (n0 + SB + alpha) / (Ei + SD + alpha / mu_i)
        else:
            b = mu_i.copy()
        # multipliers
        if use_multipliers:
            Ac = b[cc] + Xc @ S
            for f in range(len(N_LEVELS)):
                Mc = np.ones(len(w))
                for g in range(len(N_LEVELS)):
                    if g != f:
                        Mc *= m[g][C["lv"][g]]
                cnt = np.bincount(E["lv"][f], minlength=N_LEVELS[f])
                den = np.bincount(C["lv"][f], weights=w * Mc * Ac, minlength=N_LEVELS[f])
                mf = np.where(den > 0, (cnt + 0.5) / (den + 0.5 / np.maximum(m[f], 1e-9)), 1.0)
                # scale: time-weighted mean 1 over the controls (the baseline carries the level)
                ref = np.average(mf, weights=np.bincount(C["lv"][f], weights=w, minlength=N_LEVELS[f]) + 1e-12)
                m[f] = mf / ref
        if it % 25 == 0 or it == iters - 1:
            log(f"  EM {it}: loglik {ll:.2f}, mean baseline {mu:.5f}/day, frailty shape {alpha:.2f}")
        if abs(ll - ll_prev) < tol * abs(ll) and it > 30:
            log(f"  EM converged at {it}: loglik {ll:.2f}")
            break
        ll_prev = ll
    extra = {"x_theta": [round(float(x), 3) for x in theta], "x_alpha": round(float(alpha), 3)}
    if use_sensors:
        extra["x_sensors"] = {f"{D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]}": round(float(c), 3)
                              for g, c in zip(gk, c_k)}
    n_causal = E["X"].shape[1]
    if use_mirror:
        extra["S_mirror"] = S[n_causal:].reshape(NG, K)
        S = S[:n_causal]
    if n_causal > NG * K:
        # post-visit delivered touches' kernels (build(post_visit_hours=...)): fitted, never credited
        extra["S_post_visit"] = S[NG * K:].reshape(NG, K)
        S = S[:NG * K]
    return {**extra, "S": S.reshape(NG, K), "mu": float(mu), "alpha": float(alpha), "multipliers": [x.tolist() for x in m],
            "baseline_glm_theta": theta.tolist(),
            "iterations": it + 1, "loglik": ll, "events": int(n_e), "controls": int(len(w))}


def effects(S: np.ndarray, channel: np.ndarray, event_type: np.ndarray, age_u: np.ndarray):
    k, fr = basis(age_u)
    g = channel.astype(np.int64) * NE + event_type.astype(np.int64)
    kk = np.maximum(k, 0)
    v = S[g, kk] * (1 - fr) + S[g, np.minimum(kk + 1, K - 1)] * fr
    return np.where(k < 0, 0.0, v)


# ---------------------------------------------------------------------------------------------
# ONNX module (same contract as the classifiers)


def torch_module(S: np.ndarray, mu: float, horizon_days: float = 1.0):
    import torch
    import torch.nn as nn

    class HazardAttribution(nn.Module):
        """P(conversion) = 1 - exp(-(mu + sum_i e_{channel_i, event_type_i}(age_i)) * horizon):
        additive hazard; e is piecewise linear in the contract's age (hat functions at KNOTS_U)."""
        kind = "additive_hazard"

        def __init__(self):
            super().__init__()
            self.register_buffer("table", torch.tensor(S * horizon_days, dtype=torch.float32))  # [NG, K]
            self.register_buffer("knots", torch.tensor(KNOTS_U, dtype=torch.float32))
            left = np.concatenate([[KNOTS_U[0] - 1.0], KNOTS_U[:-1]])
            right = np.concatenate([KNOTS_U[1:], [KNOTS_U[-1] + 1e-6]])
            self.register_buffer("inv_l", torch.tensor(1.0 / (KNOTS_U - left), dtype=torch.float32))
            self.register_buffer("inv_r", torch.tensor(1.0 / (right - KNOTS_U), dtype=torch.float32))
            self.base = float(mu * horizon_days)
            # campaign_bucket and position are contract inputs this model does not use; a zero term keeps
            # them in the graph (Gather + Mul), so the input names stay those of the contract
            self.register_buffer("unused", torch.zeros(D.CAMPAIGN_BUCKETS, dtype=torch.float32))

        def forward(self, channel, event_type, campaign_bucket, age, position, mask):
            g = channel * NE + event_type  # [B, L]
            rows = self.table[g]  # [B, L, K]
            u = age.unsqueeze(-1)  # [B, L, 1]
            up = (u - self.knots) * self.inv_l + 1.0  # rising side
            dn = (self.knots - u) * self.inv_r + 1.0  # falling side
            hat = torch.relu(torch.minimum(up, dn).clamp(max=1.0))
            e = (rows * hat).sum(-1) * mask + self.unused[campaign_bucket] * position  # [B, L]
            h = e.sum(-1, keepdim=True) + self.base
            p = 1.0 - torch.exp(-h)
            att = e / (e.sum(-1, keepdim=True) + 1e-12)
            return p, att

    return HazardAttribution()
