"""E[b | customer features]: the baseline share computed from what the processor knows of the customer.

A lab experiment for `hazard_lab.py` (baseline share "customer"). Each conversion's features are
computed **causally at the conversion** from that customer's events before it (the processor sees
every event of the customer), never from the truth or from later events:

- `own`: log(own visits per day observed so far + 0.02): visits no click landed, in sessions that
  hold no purchase up to and including the conversion's (as `hazard_design.own_visits`, up to the
  conversion);
- `age`: log(days observed so far) (from the customer's first event, at least 1);
- `purchases`: log1p(earlier purchases);
- `clicks`: per click group (channel x click / e-mail click), log1p(its touches per day observed);
- `delivered`: the same per delivered group (impressions, e-mail opens);
- `site`: per site event type (page view, product view, search, cart add, ...; not purchases),
  log1p(its events per day observed).

Groups and site types are kept when at least `min_frac` of the training conversions have one
(nothing names a channel). The model is a log-link quasi-Poisson regression (ridge 1e-3, as
`hazard_lab.fit_journey_baseline`) of each training conversion's leave-one-out baseline posterior
`b_event` (the fit's) on the features.
"""
from __future__ import annotations

import math

import numpy as np

import tsdata as D
import hazard_mta as H
import hazard_design as HD

NE, NG = H.NE, H.NG
N_RAW = 3 + NG + NE  # days, own visits, earlier purchases, touch-group counts, site-type counts
CLICK_TYPES = (D.ET_INDEX["click"], D.ET_INDEX["email_click"])
BLOCKS = ("own", "age", "purchases", "clicks", "delivered", "site")


def customer_raw(lg: D.Log, c: int, purchases: np.ndarray) -> np.ndarray:
    """Raw counts of customer c at each of its purchases (event indices into lg, sorted): from the
    customer's events strictly before the purchase (in log order). Returns [len(purchases), N_RAW]:
    days observed (>= 1), own visits, earlier purchases, touches per group (NG), site events per
    event type (NE)."""
    s, e = int(lg.starts[c]), int(lg.ends[c])
    et = lg.etype[s:e].astype(np.int64)
    ch = lg.chan[s:e].astype(np.int64)
    ts = lg.ts[s:e]
    ses = lg.session[s:e]
    is_tp = np.isin(et, D.TOUCH_TYPES) & (ch != D.CH_NONE)
    grp = np.where(is_tp, np.minimum(ch, D.CH_OTHER) * NE + et, -1)
    site = ~np.isin(et, D.TOUCH_TYPES) & (et != D.PURCHASE)
    # session landings that no click landed (hazard_design.own_visits' rule)
    idx = np.flatnonzero(ses >= 0)
    sv = ses[idx]
    first = np.concatenate([[True], sv[1:] != sv[:-1]]) if len(idx) else np.zeros(0, dtype=bool)
    land_i, land_s = [], []
    for i, sid in zip(idx[first].tolist(), sv[first].tolist()):
        j = i - 1
        landed = False
        while j >= 0 and ts[i] - ts[j] <= HD.LANDING_CLICK_MS:
            if et[j] in CLICK_TYPES and ch[j] == ch[i]:
                landed = True
                break
            j -= 1
        if not landed:
            land_i.append(i); land_s.append(sid)
    land_i = np.asarray(land_i, dtype=np.int64)
    land_s = np.asarray(land_s, dtype=np.int64)
    is_p = et == D.PURCHASE
    out = np.zeros((len(purchases), N_RAW))
    for n, p in enumerate(np.asarray(purchases, dtype=np.int64) - s):
        out[n, 0] = max((ts[p] - ts[0]) / D.DAY_MS, 1.0)
        bought = ses[:p + 1][is_p[:p + 1]]  # sessions holding a purchase so far, this one included
        bought = bought[bought >= 0]
        li = land_i < p
        out[n, 1] = np.count_nonzero(~np.isin(land_s[li], bought))
        out[n, 2] = np.count_nonzero(is_p[:p])
        g = grp[:p]
        out[n, 3:3 + NG] = np.bincount(g[g >= 0], minlength=NG)
        out[n, 3 + NG:] = np.bincount(et[:p][site[:p]], minlength=NE)
    return out


def train_raw(lg: D.Log, data) -> dict:
    """Raw features of every training conversion (the rows of data["e"], in their order: build()
    makes one row per purchase, customers in order) and whether its journey (the processor's:
    D.journey_at) has touchpoints, like the held-out conversions scored."""
    tps_all, pur_all = D.customer_touch_index(lg)
    raws, touched, cust, pp = [], [], [], []
    for c in range(len(lg.customer_ids)):
        pur = pur_all[c]
        if not len(pur):
            continue
        raws.append(customer_raw(lg, c, pur))
        cust.append(np.full(len(pur), c))
        pp.append(pur)
        touched.append(np.array([len(D.journey_at(lg, tps_all[c], pur, int(lg.ts[p]), at_purchase=p)) > 0
                                 for p in pur.tolist()]))
    cust = np.concatenate(cust)
    if len(cust) != len(data["e"]["cust"]) or not np.array_equal(cust, data["e"]["cust"]):
        raise ValueError("training conversions do not line up with the design's event rows")
    return {"raw": np.concatenate(raws), "touched": np.concatenate(touched), "p": np.concatenate(pp)}


def feature_spec(raw: np.ndarray, min_frac: float = 0.01, blocks=BLOCKS) -> dict:
    """Which groups / site types to keep (present in >= min_frac of the given conversions)."""
    present = (raw > 0).mean(0) >= min_frac
    gp = present[3:3 + NG]
    g = np.arange(NG)
    return {"blocks": tuple(blocks),
            "clicks": np.flatnonzero(gp & np.isin(g % NE, CLICK_TYPES)),
            "delivered": np.flatnonzero(gp & np.isin(g % NE, H.DELIVERED_TYPES)),
            "site": np.flatnonzero(present[3 + NG:])}


def feature_names(spec) -> list[str]:
    names = ["1"]
    for b in spec["blocks"]:
        if b == "own":
            names.append("log(own visits/day+0.02)")
        elif b == "age":
            names.append("log(days)")
        elif b == "purchases":
            names.append("log1p(earlier purchases)")
        elif b in ("clicks", "delivered"):
            names += [f"log1p({D.CHANNELS[g // NE]}/{D.EVENT_TYPES[g % NE]}/day)" for g in spec[b]]
        elif b == "site":
            names += [f"log1p({D.EVENT_TYPES[t]}/day)" for t in spec["site"]]
    return names


def design(raw: np.ndarray, spec) -> np.ndarray:
    days = raw[:, 0:1]
    cols = [np.ones((len(raw), 1))]
    for b in spec["blocks"]:
        if b == "own":
            cols.append(np.log(raw[:, 1:2] / days + 0.02))
        elif b == "age":
            cols.append(np.log(days))
        elif b == "purchases":
            cols.append(np.log1p(raw[:, 2:3]))
        elif b in ("clicks", "delivered"):
            cols.append(np.log1p(raw[:, 3 + spec[b]] / days))
        elif b == "site":
            cols.append(np.log1p(raw[:, 3 + NG + spec["site"]] / days))
    return np.concatenate(cols, 1)


def glm(Z: np.ndarray, y: np.ndarray, ridge: float = 1e-3, iters: int = 50) -> np.ndarray:
    """Log-link quasi-Poisson regression by (damped) Newton steps, as fit_journey_baseline."""
    beta = np.zeros(Z.shape[1])
    beta[0] = math.log(max(y.mean(), 1e-12))
    for _ in range(iters):
        lam = np.exp(np.clip(Z @ beta, -50, 50))
        grad = Z.T @ (y - lam) - ridge * np.r_[0.0, beta[1:]]
        hess = (Z * lam[:, None]).T @ Z + ridge * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        nrm = np.abs(step).max()
        beta += step if nrm <= 1.0 else step / nrm
        if nrm < 1e-8:
            break
    return beta


def fit_customer_baseline(tr: dict, b_event: np.ndarray, blocks=BLOCKS, min_frac: float = 0.01,
                          touched_only: bool = True) -> dict:
    """E[b | customer features] on the training conversions (those with touchpoints by default)."""
    sel = tr["touched"] if touched_only else np.ones(len(b_event), dtype=bool)
    raw, y = tr["raw"][sel], b_event[sel]
    spec = feature_spec(raw, min_frac, blocks)
    Z = design(raw, spec)
    beta = glm(Z, y)
    pred = np.exp(Z @ beta)
    return {"spec": spec, "beta": beta, "names": feature_names(spec), "n": int(sel.sum()),
            "train_corr": float(np.corrcoef(np.log(pred), np.log(np.maximum(y, 1e-12)))[0, 1])}


def predict(cb: dict, raw: np.ndarray) -> np.ndarray:
    return np.exp(np.clip(design(raw, cb["spec"]) @ cb["beta"], -50, 50))


def implied_baseline(S, items) -> np.ndarray:
    """Per held-out item, the baseline b that gives the truth's own share with the model's E:
    (1 - exp(-b)) / (1 - exp(-(b + E))) = baseline_share (NaN where undefined)."""
    E = np.array([H.effects(S, it["ch"], it["et"], it["age"]).sum() for it in items])
    r = np.array([it["bshare"] for it in items])
    ok = (E > 0) & (r > 0) & (r < 1)
    lo, hi = np.full(len(E), -25.0), np.full(len(E), 10.0)  # log b
    Es = np.where(ok, E, 1.0)
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        b = np.exp(mid)
        f = -np.expm1(-b) / -np.expm1(-(b + Es))
        up = f < r
        lo, hi = np.where(up, mid, lo), np.where(up, hi, mid)
    return np.where(ok, np.exp(0.5 * (lo + hi)), np.nan)


def level_for_share(E: np.ndarray, b: np.ndarray, target: float) -> float:
    """The scale k of the baselines b whose mean share left, mean(min(1, P_none / P_all)), is target."""
    lo, hi = -20.0, 20.0
    for _ in range(60):
        k = math.exp(0.5 * (lo + hi))
        m = np.mean(np.minimum(1.0, -np.expm1(-k * b) / -np.expm1(-(k * b + E))))
        lo, hi = (0.5 * (lo + hi), hi) if m < target else (lo, 0.5 * (lo + hi))
    return math.exp(0.5 * (lo + hi))


def _rank(x):
    o = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[o] = np.arange(len(x))
    return r


def correlations(pred: np.ndarray, target: np.ndarray) -> tuple[float, float]:
    """(Pearson of the logs, Spearman) over the finite positive pairs."""
    ok = np.isfinite(pred) & np.isfinite(target) & (pred > 0) & (target > 0)
    if ok.sum() < 3 or np.std(pred[ok]) == 0:
        return float("nan"), float("nan")
    p, t = pred[ok], target[ok]
    return float(np.corrcoef(np.log(p), np.log(t))[0, 1]), float(np.corrcoef(_rank(p), _rank(t))[0, 1])
