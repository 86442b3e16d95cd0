"""Reading an event log of Touchstream's input contract and turning it into model inputs.

Shared by train.py and evaluate.py. Everything here derives from the event log alone (the
simulator's truth files are read by evaluate.py only). The encodings are the model contract: the
Rust processor must compute the same features (see the metadata.json of each model).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass

import numpy as np

# ---------------------------------------------------------------------------------------------
# Vocabularies: the same order as the processor's enums (processor/src/event.rs).
EVENT_TYPES = [
    "impression", "click", "email_open", "email_click", "page_view", "product_view", "search",
    "cart_add", "cart_remove", "checkout_start", "purchase", "other",
]
CHANNELS = [
    "paid_search", "organic_search", "paid_social", "organic_social", "email", "display",
    "affiliate", "referral", "direct", "sms", "push", "other",
]
ET_INDEX = {n: i for i, n in enumerate(EVENT_TYPES)}
CH_INDEX = {n: i for i, n in enumerate(CHANNELS)}
ET_OTHER = ET_INDEX["other"]
CH_OTHER = CH_INDEX["other"]
CH_NONE = len(CHANNELS)  # event without a channel (step model only)
TOUCH_TYPES = (ET_INDEX["impression"], ET_INDEX["click"], ET_INDEX["email_open"], ET_INDEX["email_click"])
CART_ADD, CART_REMOVE = ET_INDEX["cart_add"], ET_INDEX["cart_remove"]
CHECKOUT, PURCHASE = ET_INDEX["checkout_start"], ET_INDEX["purchase"]

# Campaign hash buckets: 0 = no campaign (and padding); otherwise 1 + fnv1a32(utf8) % (B - 1).
CAMPAIGN_BUCKETS = 64

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def fnv1a32(s: str) -> int:
    h = 0x811C9DC5
    for b in s.encode("utf-8"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def campaign_bucket(campaign: str | None) -> int:
    if not campaign:
        return 0
    return 1 + fnv1a32(campaign) % (CAMPAIGN_BUCKETS - 1)


# ---------------------------------------------------------------------------------------------
# Loading


@dataclass
class Log:
    """Events sorted by (customer, ts, position in the log); columns as numpy arrays."""
    customer_ids: list          # index -> customer id string
    cust: np.ndarray            # int32 customer index per event
    ts: np.ndarray              # int64 ms
    etype: np.ndarray           # int8
    chan: np.ndarray            # int8 (CH_NONE when absent)
    camp: np.ndarray            # int16 campaign bucket
    value: np.ndarray           # float64 (0 when absent)
    has_value: np.ndarray       # bool
    quantity: np.ndarray        # int64 (-1 when absent)
    session: np.ndarray         # int64 session code (-1 when absent)
    product: np.ndarray         # int64 product code (-1 when absent)
    event_ids: list             # event id string per event (sorted order)
    starts: np.ndarray          # start offset of each customer's events
    ends: np.ndarray

    @property
    def n(self) -> int:
        return len(self.ts)

    @property
    def log_end(self) -> int:
        return int(self.ts.max())


def log_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(os.path.join(path, f) for f in os.listdir(path) if f.endswith(".jsonl"))
        # a simulator output directory also holds truth_*.jsonl: those are not events
        files = [f for f in files if not os.path.basename(f).startswith("truth_")]
        if not files:
            raise SystemExit(f"no .jsonl event files in {path}")
        return files
    return [path]


def load_log(path: str, max_events: int | None = None) -> Log:
    cust_idx: dict[str, int] = {}
    sess_idx: dict[str, int] = {}
    prod_idx: dict[str, int] = {}
    camp_cache: dict[str, int] = {}
    cust, ts, et, ch, cp, val, hasv, qty, ses, prod, eids = ([] for _ in range(11))
    skipped = 0
    for f in log_files(path):
        with open(f, "rb") as fh:
            for line in fh:
                if max_events is not None and len(ts) >= max_events:
                    break
                try:
                    e = json.loads(line)
                    cid = e["customer_id"]
                    t = int(e["ts"])
                    etn = e["event_type"]
                    if not isinstance(cid, str) or not cid:
                        raise ValueError
                except Exception:  # invalid records are skipped, as the processor dead-letters them
                    skipped += 1
                    continue
                cust.append(cust_idx.setdefault(cid, len(cust_idx)))
                ts.append(t)
                et.append(ET_INDEX.get(etn, ET_OTHER))
                c = e.get("channel")
                ch.append(CH_NONE if c is None else CH_INDEX.get(c, CH_OTHER))
                cam = e.get("campaign")
                if cam:
                    b = camp_cache.get(cam)
                    if b is None:
                        b = camp_cache[cam] = campaign_bucket(cam)
                    cp.append(b)
                else:
                    cp.append(0)
                v = e.get("value")
                if isinstance(v, (int, float)) and math.isfinite(v):
                    val.append(float(v)); hasv.append(True)
                else:
                    val.append(0.0); hasv.append(False)
                q = e.get("quantity")
                qty.append(int(q) if isinstance(q, int) else -1)
                s = e.get("session_id")
                ses.append(sess_idx.setdefault(s, len(sess_idx)) if s else -1)
                p = e.get("product_id")
                prod.append(prod_idx.setdefault(p, len(prod_idx)) if p else -1)
                eids.append(e.get("event_id", ""))
    if skipped:
        print(f"  skipped {skipped} invalid records")
    cust_a = np.asarray(cust, dtype=np.int32)
    ts_a = np.asarray(ts, dtype=np.int64)
    order = np.lexsort((np.arange(len(ts_a)), ts_a, cust_a))
    cust_a = cust_a[order]
    bounds = np.flatnonzero(np.diff(cust_a)) + 1
    starts = np.concatenate([[0], bounds]).astype(np.int64)
    ends = np.concatenate([bounds, [len(cust_a)]]).astype(np.int64)
    return Log(
        customer_ids=list(cust_idx.keys()),
        cust=cust_a, ts=ts_a[order],
        etype=np.asarray(et, dtype=np.int8)[order], chan=np.asarray(ch, dtype=np.int8)[order],
        camp=np.asarray(cp, dtype=np.int16)[order], value=np.asarray(val)[order],
        has_value=np.asarray(hasv)[order], quantity=np.asarray(qty, dtype=np.int64)[order],
        session=np.asarray(ses, dtype=np.int64)[order], product=np.asarray(prod, dtype=np.int64)[order],
        event_ids=[eids[i] for i in order], starts=starts, ends=ends,
    )


# ---------------------------------------------------------------------------------------------
# Journey step model: per-event features

# Normalisation constants (part of the contract, written to metadata.json).
NORM = {
    "value_log_scale": 5.0,          # log1p(value) / 5
    "gap_log_scale": 15.0,           # log1p(seconds since the previous event) / 15
    "cart_value_log_scale": 5.0,     # log1p(cart value) / 5
    "cart_qty_log_scale": 2.0,       # log1p(cart quantity) / 2
    "since_purchase_log_scale": 5.0,  # log1p(days since the previous purchase) / 5
    "age_log_scale": 5.0,            # log1p(days since the customer's first event) / 5
    "new_session_gap_minutes": 30.0,  # without session ids, a gap this long starts a session
}

STEP_FEATURES = (
    [f"event_type={n}" for n in EVENT_TYPES]
    + [f"channel={n}" for n in CHANNELS] + ["channel=none"]
    + [
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
    ]
)
N_STEP_FEATURES = len(STEP_FEATURES)


@dataclass
class StepData:
    x: np.ndarray           # float32 [n, F]
    cart_open: np.ndarray   # bool: cart open after the event
    cart_value: np.ndarray  # float64
    cart_id: np.ndarray     # int64: index of the event that opened the open cart (-1)
    cart_quiet: np.ndarray  # bool: the open cart already had a gap >= QUIET_MS before this event


def step_features(log: Log) -> StepData:
    n = log.n
    F = N_STEP_FEATURES
    x = np.zeros((n, F), dtype=np.float32)
    x[np.arange(n), log.etype.astype(np.int64)] = 1.0
    x[np.arange(n), len(EVENT_TYPES) + log.chan.astype(np.int64)] = 1.0
    o = len(EVENT_TYPES) + len(CHANNELS) + 1
    x[:, o] = np.log1p(np.maximum(log.value, 0.0)) / NORM["value_log_scale"]
    first = np.zeros(n, dtype=bool)
    first[log.starts] = True
    gap_s = np.zeros(n)
    gap_s[1:] = (log.ts[1:] - log.ts[:-1]) / 1000.0
    gap_s[first] = 0.0
    gap_s = np.maximum(gap_s, 0.0)
    x[:, o + 1] = np.log1p(gap_s) / NORM["gap_log_scale"]
    x[:, o + 2] = first
    prev_sess = np.full(n, -2, dtype=np.int64)
    prev_sess[1:] = log.session[:-1]
    new_sess = np.where(
        log.session >= 0, log.session != prev_sess, gap_s >= NORM["new_session_gap_minutes"] * 60
    ) | first
    x[:, o + 3] = new_sess
    hour = (log.ts % DAY_MS) / HOUR_MS
    x[:, o + 7] = np.sin(2 * np.pi * hour / 24)
    x[:, o + 8] = np.cos(2 * np.pi * hour / 24)

    cart_open = np.zeros(n, dtype=bool)
    cart_value = np.zeros(n)
    cart_qty = np.zeros(n)
    cart_id = np.full(n, -1, dtype=np.int64)
    has_p = np.zeros(n, dtype=bool)
    since_p = np.zeros(n)
    age_d = np.zeros(n)
    checkout = np.zeros(n, dtype=bool)
    quiet = np.zeros(n, dtype=bool)
    et = log.etype.tolist(); ts = log.ts.tolist(); prod = log.product.tolist()
    qty = log.quantity.tolist(); val = log.value.tolist(); hv = log.has_value.tolist()
    for s, e in zip(log.starts.tolist(), log.ends.tolist()):
        cart: dict[int, list] | None = None
        opened = -1
        co = False
        last_p = None
        t0 = ts[s]
        qu = False
        for i in range(s, e):
            t = et[i]
            if cart is not None and i > s and ts[i] - ts[i - 1] >= QUIET_MS:
                qu = True
            if t == CART_ADD:
                q = qty[i] if qty[i] >= 0 else 1
                if not (q == 0 and cart is None):
                    if cart is None:
                        cart = {}; opened = i; co = False; qu = False
                    line = cart.get(prod[i])
                    if line is None:
                        cart[prod[i]] = [q, val[i] if hv[i] else 0.0]
                    else:
                        line[0] += q
                        if hv[i]:
                            line[1] = val[i]
            elif t == CART_REMOVE:
                if cart is not None and prod[i] in cart:
                    left = cart[prod[i]][0] - qty[i] if qty[i] >= 0 else 0
                    if left > 0:
                        cart[prod[i]][0] = left
                    else:
                        del cart[prod[i]]
                    if not cart:
                        cart = None; opened = -1; co = False
            elif t == CHECKOUT:
                if cart is not None:
                    co = True
            elif t == PURCHASE:
                cart = None; opened = -1; co = False
                last_p = ts[i]
            if cart is not None:
                cart_open[i] = True
                cart_value[i] = sum(q * p for q, p in cart.values())
                cart_qty[i] = sum(q for q, _ in cart.values())
                cart_id[i] = opened
                checkout[i] = co
                quiet[i] = qu
            if last_p is not None:
                has_p[i] = True
                since_p[i] = (ts[i] - last_p) / DAY_MS
            age_d[i] = (ts[i] - t0) / DAY_MS
    x[:, o + 4] = cart_open
    x[:, o + 5] = np.log1p(np.maximum(cart_value, 0)) / NORM["cart_value_log_scale"]
    x[:, o + 6] = np.log1p(np.maximum(cart_qty, 0)) / NORM["cart_qty_log_scale"]
    x[:, o + 9] = has_p
    x[:, o + 10] = np.log1p(np.maximum(since_p, 0)) / NORM["since_purchase_log_scale"]
    x[:, o + 11] = np.log1p(np.maximum(age_d, 0)) / NORM["age_log_scale"]
    x[:, o + 12] = checkout
    return StepData(x=x, cart_open=cart_open, cart_value=cart_value, cart_id=cart_id, cart_quiet=quiet)


# Horizons of the step model's labels.
PURCHASE_HORIZON_MS = 7 * DAY_MS
ABANDON_HORIZON_MS = 24 * HOUR_MS
VALUE_HORIZON_MS = 90 * DAY_MS
ALERT_CHECK_MS = 10 * 60_000  # the inactivity check at which P(abandon) is read
QUIET_MS = 30 * 60_000        # the processor's inactivity timeout (its alert fires after this gap)


def step_labels(log: Log, sd: StepData):
    """Labels from the log itself: future purchases and cart outcomes. Returns arrays + masks."""
    n = log.n
    end = log.log_end
    y_p = np.zeros(n, dtype=np.float32)
    y_a = np.zeros(n, dtype=np.float32)
    y_v = np.zeros(n, dtype=np.float32)
    is_p = log.etype == PURCHASE
    ts = log.ts
    for s, e in zip(log.starts.tolist(), log.ends.tolist()):
        pidx = np.flatnonzero(is_p[s:e]) + s
        if len(pidx) == 0:
            continue
        pts = ts[pidx]
        cum = np.concatenate([[0.0], np.cumsum(log.value[pidx])])
        t = ts[s:e]
        lo = np.searchsorted(pts, t, side="right")  # first purchase strictly after t
        hi7 = np.searchsorted(pts, t + PURCHASE_HORIZON_MS, side="right")
        hi24 = np.searchsorted(pts, t + ABANDON_HORIZON_MS, side="right")
        hi90 = np.searchsorted(pts, t + VALUE_HORIZON_MS, side="right")
        y_p[s:e] = hi7 > lo
        y_a[s:e] = ~(hi24 > lo)
        y_v[s:e] = np.log1p(cum[hi90] - cum[lo])
    # customers without purchases: y_p = 0, y_v = 0, and every open cart is abandoned
    no_p = np.ones(n, dtype=bool)
    for s, e in zip(log.starts.tolist(), log.ends.tolist()):
        if is_p[s:e].any():
            no_p[s:e] = False
    y_a[no_p] = 1.0
    # censoring by the end of the log
    m_p = ts + PURCHASE_HORIZON_MS <= end
    m_v = ts + VALUE_HORIZON_MS <= end
    # P(abandon) is trained where it is used: the cart is open after the event, the customer then
    # stays quiet for at least ALERT_CHECK_MS (the inactivity check), and the cart has not yet gone
    # quiet for QUIET_MS before (after that the processor's timeout alert has fired anyway)
    nxt_gap = np.full(n, np.iinfo(np.int64).max)
    nxt_gap[:-1] = ts[1:] - ts[:-1]
    nxt_gap[log.ends - 1] = np.iinfo(np.int64).max
    m_a = sd.cart_open & ~sd.cart_quiet & (nxt_gap >= ALERT_CHECK_MS) & (ts + ABANDON_HORIZON_MS <= end)
    return y_p, m_p, y_a, m_a, y_v, m_v


# ---------------------------------------------------------------------------------------------
# Attribution model: journeys of touchpoints

ATTR_L = 64                    # touchpoints per journey (the processor keeps at most 64)
LOOKBACK_MS = 30 * DAY_MS      # the processor's journey.lookback
AGE_LOG_SCALE = math.log1p(30 * 24)  # age = log1p(hours before the end) / log1p(720)
ATTR_NORM = {"age_log_scale": AGE_LOG_SCALE}


PREV_PURCHASE_AGE_CAP = 2.0    # the previous-purchase context token's age is clipped to this


def journey_arrays(log: Log, tp_idx: np.ndarray, end_ts: int, L: int = ATTR_L,
                   exclude_recent_ms: int = 0, prev_purchase_ts: int | None = None):
    """Encodes one journey (indices of touchpoint events, oldest first) ending at end_ts.

    Touchpoints newer than end_ts - exclude_recent_ms are left out (the purchase path). When the
    customer bought before, position 0 holds a context token for that purchase (event_type
    purchase, channel other, campaign 0, age = time since it, position 0): it informs the model
    (refractory period, repeat customer) but is never credited. Returns the six input arrays,
    the touchpoint event indices given to the model and their positions in the arrays."""
    if exclude_recent_ms:
        tp_idx = tp_idx[log.ts[tp_idx] <= end_ts - exclude_recent_ms]
    off = 1 if prev_purchase_ts is not None else 0
    tp_idx = tp_idx[len(tp_idx) - min(len(tp_idx), L - off):]
    k = len(tp_idx)
    ch = np.zeros(L, dtype=np.int64); et = np.zeros(L, dtype=np.int64); cb = np.zeros(L, dtype=np.int64)
    age = np.zeros(L, dtype=np.float32); pos = np.zeros(L, dtype=np.float32); m = np.zeros(L, dtype=np.float32)
    if off:
        ch[0] = CH_OTHER
        et[0] = PURCHASE
        age[0] = min(np.log1p(max(end_ts - prev_purchase_ts, 0) / HOUR_MS) / AGE_LOG_SCALE, PREV_PURCHASE_AGE_CAP)
        m[0] = 1.0
    if k:
        sl = slice(off, off + k)
        ch[sl] = np.minimum(log.chan[tp_idx], CH_OTHER)
        et[sl] = log.etype[tp_idx]
        cb[sl] = log.camp[tp_idx]
        hours = np.maximum(end_ts - log.ts[tp_idx], 0) / HOUR_MS
        age[sl] = np.log1p(hours) / AGE_LOG_SCALE
        pos[sl] = (np.arange(k) + 0.5) / k
        m[sl] = 1.0
    return ch, et, cb, age, pos, m, tp_idx, np.arange(off, off + k)


def customer_touch_index(log: Log):
    """Per customer: indices of touchpoint events and of purchases (sorted by time)."""
    is_tp = np.isin(log.etype, TOUCH_TYPES) & (log.chan != CH_NONE)
    tps, purchases = [], []
    for s, e in zip(log.starts.tolist(), log.ends.tolist()):
        tps.append(np.flatnonzero(is_tp[s:e]) + s)
        purchases.append(np.flatnonzero(log.etype[s:e] == PURCHASE) + s)
    return tps, purchases


def journey_at(log: Log, tps: np.ndarray, purchases: np.ndarray, t: int, at_purchase: int | None = None,
               with_prev: bool = False):
    """Touchpoints of the journey at time t: after the previous purchase, at or before t, within
    the lookback. at_purchase = index of the purchase event ending the journey (its own ts = t).
    with_prev: also return the previous purchase's ts (or None)."""
    ts = log.ts
    prev = purchases[purchases < at_purchase] if at_purchase is not None else purchases[ts[purchases] <= t]
    lo_ts = ts[prev[-1]] if len(prev) else -1
    sel = tps[(ts[tps] <= t) & (ts[tps] >= t - LOOKBACK_MS)]
    if len(prev):
        # touchpoints at or before the previous purchase were spent by it
        sel = sel[ts[sel] > lo_ts]
    if with_prev:
        return sel, (int(lo_ts) if len(prev) else None)
    return sel
