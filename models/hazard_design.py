"""The additive-hazard model's design (hazard_mta.py fits it): from an event log, the conversions
(dated at the start of their buying visit) and case-base control points with their touch-basis rows
(`build`), the multipliers' levels (time of day, cart, time since the last purchase and since the
last site event), the post-visit windows of delivered touches, the sensors' per-customer counts and
the mirror (negative-control) design of the ablations."""
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


def touch_groups(lg: D.Log, c: int, tp: np.ndarray, pv_window: np.ndarray | None):
    """Design groups of customer c's touches `tp`: channel x event type, and for delivered touches
    (impressions, e-mail opens) within their group's post-visit window after one of the customer's
    site events, that group + NG (fitted, never credited; see `build`)."""
    grp = lg.chan[tp].astype(np.int64) * NE + lg.etype[tp].astype(np.int64)
    if pv_window is None or not len(tp):
        return grp
    s, e = int(lg.starts[c]), int(lg.ends[c])
    tts = lg.ts[tp]
    site_ts = lg.ts[s:e][~np.isin(lg.etype[s:e], D.TOUCH_TYPES)]
    j = np.searchsorted(site_ts, tts, side="left") - 1
    since = (np.where(j >= 0, tts - site_ts[np.maximum(j, 0)], np.iinfo(np.int64).max) if len(site_ts)
             else np.full(len(tts), np.iinfo(np.int64).max))
    delivered = np.isin(lg.etype[tp], DELIVERED_TYPES)
    return np.where(delivered & (since <= pv_window[grp] * D.HOUR_MS), grp + NG, grp)


def basis_entries(t: np.ndarray, tts: np.ndarray, grp: np.ndarray, after: np.ndarray | None = None):
    """Sparse entries (row, column, value) of the touch-basis rows at times t (row i at t[i]): every
    touch at tts (design group grp) before t[i] within the lookback, and after after[i] when given
    (the previous purchase), at its age in the hat basis."""
    age = t[:, None] - tts[None, :]
    ok = (age > 0) & (age <= D.LOOKBACK_MS)
    if after is not None:
        ok &= tts[None, :] > after[:, None]
    ri, ti = np.nonzero(ok)
    u = np.log1p(age[ri, ti] / D.HOUR_MS) / D.AGE_LOG_SCALE
    k, fr = basis(u)
    g = grp[ti]
    return np.concatenate([ri, ri]), np.concatenate([g * K + k, g * K + k + 1]), np.concatenate([1 - fr, fr])


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
        grp = touch_groups(lg, c, tp, pv_window if post_visit_hours > 0 else None)
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
                r, col, val = basis_entries(t, tts, grp, after=lp)
                M = mats[kind]
                M[0].append(r + nrow[kind]); M[1].append(col); M[2].append(val)
                pending[kind] += len(r)
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
        out["pv_window"] = pv_window
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


def sensor_touch_rows(lg: D.Log, data, sensor):
    """Design rows at the sensors' own touches (each touch of a sensor group before the customer's
    first purchase decision): its customer, group (position in `sensor["groups"]`), sensor state
    and the touch-basis row of the customer's earlier touches at that moment (the
    same columns as `build`'s, post-visit split included). With the control rows' this gives the
    modelled hazard at the moments a group's touches arrive against its time course in between:
    within a customer, a group whose delivery follows the customer's intent arrives more often when
    the modelled hazard is high (see `fit(sensor_timing=True)`)."""
    ncol = data["e"]["X"].shape[1]
    pv = None
    if ncol > NG * K:
        if "pv_window" not in data:
            raise ValueError("the design has post-visit columns but no `pv_window`: rebuild it with this build()")
        pv = data["pv_window"]
    gpos = np.full(NG, -1)
    gpos[sensor["groups"]] = np.arange(len(sensor["groups"]))
    first, start = sensor["first"], sensor["start"]
    tps_all, _ = D.customer_touch_index(lg)
    cust_l, g_l, t_l, R, Cc, V = [], [], [], [], [], []
    n = 0
    for c in range(len(lg.customer_ids)):
        tp = tps_all[c]
        if not len(tp):
            continue
        tts = lg.ts[tp]
        base = lg.chan[tp].astype(np.int64) * NE + lg.etype[tp].astype(np.int64)
        grp = touch_groups(lg, c, tp, pv)
        sel = np.flatnonzero((tts < first[c]) & (gpos[base] >= 0))
        if not len(sel):
            continue
        t = tts[sel]
        r, col, val = basis_entries(t, tts, grp)
        R.append(r + n); Cc.append(col); V.append(val)
        cust_l.append(np.full(len(sel), c, dtype=np.int64)); g_l.append(gpos[base[sel]]); t_l.append(t)
        n += len(sel)
    cust, t = np.concatenate(cust_l), np.concatenate(t_l)
    X = sp.csr_matrix((np.concatenate(V), (np.concatenate(R), np.concatenate(Cc))), shape=(n, ncol))
    X.sum_duplicates()
    st = sensor_state(visit_levels(lg, cust, t), (t - start[cust]) / D.DAY_MS)
    return {"cust": cust, "g": np.concatenate(g_l), "st": st, "X": X}
