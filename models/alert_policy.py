#!/usr/bin/env python3
"""Chooses the step model's abandonment-alert policies, one per target delay, and writes them into
its metadata (`alert_policies`), where the processor reads them (`alerts.target_delay`).

    python models/alert_policy.py --log SIMULATOR_RUN [--models models] [--targets 60,120,240]
                                  [--evaluate HELD_OUT_RUN ...] [--no-write]

`train.py` runs this after the re-check head is added, on the training log's validation customers
(the 10% that `split_customers(n, seed)` holds out; the step model and the re-check head are fitted
on the other 90%, so the probabilities the policy is chosen on are out-of-sample).

A policy is what the processor does with an idle open cart: at each of its checks (minutes of
inactivity, a subset of the head's schedule), read P(abandon | still idle m minutes) from the
re-check head and alert at the first check at or above that check's threshold; after its last
check only the safety net (24 h) is left. Thresholds follow one rule for every check:
threshold(m) = clip(level + slope * ln(m / 60), 0, 1) at the checks up to a last one L, with a single
level and slope (slope = 0: one threshold at every check; slope > 0: stricter at later checks;
slope < 0: laxer at later checks, i.e. `a - b * ln(m)`), optionally with threshold 0 at L (a
catch-all: the model alerts early the carts it is sure of, every cart still idle at L alerts then).
Four numbers per target, chosen on data, so the policy follows the user's world, not ours: per
target T, L <= 4 T; among the policies whose alert delays have their 55th percentile and their mean
at or before T (margins over "median <= T": on another world the median does not slip to the next
check, and a policy cannot meet the median with half its alerts at 10 minutes and the rest hours
later), the best F1 among those whose recall is at least the fixed timer's at their median delay
(the policy's operating point dominates the timer of the same timeliness), or the best F1 among all
of them if none does.

Outcomes: with a simulator run, `truth_carts.jsonl` beside the events (abandoned = no purchase
within 24 h of the cart's last activity); without one (a user's exported log), the log itself:
abandoned = no purchase within 24 h after the cart's first inactivity of 30 minutes.

Scoring (the definitions `evaluate.py` uses and a Rust test can reimplement; `score`, `Carts.timer`,
`at_recall`):
  - carts: the lines of truth_carts.jsonl, named by `alert_id` (= "<customer_id>:<cart_add_event_id>",
    the processor's alert_id); a cart is open from the cart_add that opened it (no cart open before)
    until a purchase or the cart_remove that empties it (the processor's Cart).
  - an alert policy's output: at most one alert per cart (the first), with alert_ts and the cart's
    last activity (the customer's latest event) at alert time; alerts of carts not in the truth
    file are not scored (counted as `unmatched`).
  - precision = TP / max(TP + FP, 1); recall = TP / max(abandoned carts, 1) (every abandoned cart of
    the truth file, alerted or not); F1 = 2PR / max(P + R, 1e-9).
  - delay of an alert = (alert_ts - last_activity_ts) / 60 000 (minutes); median = the element at
    index floor(n / 2) of the sorted delays of all scored alerts (the upper median).
  - lead time of a true positive = (truth last_activity_ts + 24 h - alert_ts) / 3 600 000 (hours);
    its median has the same definition.
  - the fixed timer at D: every cart alerts at its first inactivity of at least D while open
    (inactivity = the time from an event of the customer to their next event, the last one
    open-ended), at that event's ts + D; its delay is D.
  - the policy at equal timeliness is compared with the timer at D = its median delay; "precision at
    the timer's recall": the policy's precision if its recall is at least the timer's, else the
    precision once every threshold of the policy is lowered by the same offset (0.005 steps, clipped
    at 0) until its recall is.

Fixed timers are scored the same way, at the policy's median delay, and written beside each policy
(`selection`, numbers only), so the metadata says what the policy gains over the timer of the same
timeliness on the data it was chosen on.

Metadata written (journey_step/metadata.json, key `alert_policies`, one per target found):
  {"target_delay_minutes": 60, "checks": [{"minutes": 10, "threshold": 0.9}, ...],
   "selection": {"level": .., "slope": .., "last_check_minutes": .., "catch_all": 0|1,
                 "dominates_timer": 0|1, "carts": .., "abandoned": .., "precision": .., "recall": ..,
                 "f1": .., "alerts": .., "median_delay_minutes": .., "mean_delay_minutes": ..,
                 "p55_delay_minutes": .., "median_lead_time_hours": .., "timer_minutes": ..,
                 "timer_precision": .., "timer_recall": .., "timer_f1": .., "timer_alerts": ..}}
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsdata as D  # noqa: E402

TARGETS = (60, 120, 240)
PURCHASE = D.ET_INDEX["purchase"]
IDLE_MS = 30 * 60_000  # a cart counts as left when its customer is inactive this long
SAFETY_NET_MS = 24 * D.HOUR_MS  # the processor's alerts.safety_net: the cart's alert, if the model gave none
LEVELS = np.round(np.arange(0.50, 0.995, 0.01), 3)
SLOPES = (-0.05, -0.02, 0.0, 0.02, 0.05, 0.1)
LAST_FACTOR = 4  # a policy's last check is at most this many times its target delay
MARGIN_PCT = 55  # the search's timeliness margin: this percentile of the delays at or before the target
MIN = 60_000
BIG = np.int64(10) ** 15  # the gap after a customer's last event in the log: open-ended


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Carts:
    """The carts a policy is scored on, flattened for fast simulation.

    Per cart: `y` (abandoned), `ref` (its last activity per the truth: lead time is measured to ref
    + 24 h), `ids` (alert_id). Per inactivity episode of an open cart of at least the first check
    (`ep_*`: cart, start ts, gap). Per (episode, check reached in it) in processing order
    (`cart`, `k`, `p`, `at`): what the processor reads at each check while the cart has not
    alerted; episodes after the first inactivity of 24 h are dropped (the safety net alerted)."""

    def __init__(self, rows, minutes):
        self.minutes = [int(m) for m in minutes]
        self.y = np.array([r[0] for r in rows], dtype=bool)
        self.ref = np.array([r[2] for r in rows], dtype=np.int64)
        self.ids = [r[3] for r in rows]
        self.index = {a: i for i, a in enumerate(self.ids)}
        ec, et, eg = [], [], []
        cart, k, p, at = [], [], [], []
        for ci, r in enumerate(rows):
            for t, g, pk in r[1]:
                ec.append(ci); et.append(t); eg.append(g)
                if pk is not None:
                    for kk, m in enumerate(self.minutes):
                        if g < m * MIN:
                            break
                        cart.append(ci); k.append(kk); p.append(pk[kk]); at.append(t + m * MIN)
        self.ep_cart = np.array(ec, dtype=np.int64)
        self.ep_t = np.array(et, dtype=np.int64)
        self.ep_g = np.array(eg, dtype=np.int64)
        cart = np.array(cart, dtype=np.int64)
        at = np.array(at, dtype=np.int64)
        # drop the checks after each cart's first 24-hour inactivity (its safety-net alert)
        net = np.full(len(rows), np.iinfo(np.int64).max)
        sn = self.ep_g >= SAFETY_NET_MS
        np.minimum.at(net, self.ep_cart[sn], self.ep_t[sn] + SAFETY_NET_MS)
        keep = at < net[cart] if len(cart) else np.zeros(0, dtype=bool)
        self.cart = cart[keep]
        self.k = np.array(k, dtype=np.int64)[keep]
        # float32 probabilities compared as f64, as the processor does
        self.p = np.array(p, dtype=np.float32).astype(np.float64)[keep]
        self.at = at[keep]

    def __len__(self):
        return len(self.y)

    def policy(self, thresholds):
        """Alerts of a policy, thresholds per check of the head (None: not a check of the policy):
        (cart index, alert_ts, delay minutes), the first check at or above its threshold per cart."""
        th = np.array([np.inf if t is None else float(t) for t in thresholds])
        hit = np.flatnonzero(self.p >= th[self.k])
        c = self.cart[hit]
        first = hit[np.r_[True, c[1:] != c[:-1]]] if len(hit) else hit
        return self.cart[first], self.at[first], np.array(self.minutes, dtype=np.int64)[self.k[first]]

    def safety_net(self, alerted):
        """The safety net's alerts beside a policy's (cart indices `alerted`): each other cart at
        its first inactivity of 24 h (reason "safety_net"; not part of the policy's score)."""
        hit = np.flatnonzero((self.ep_g >= SAFETY_NET_MS) & ~np.isin(self.ep_cart, alerted))
        c = self.ep_cart[hit]
        first = hit[np.r_[True, c[1:] != c[:-1]]] if len(hit) else hit
        return self.ep_cart[first], self.ep_t[first] + SAFETY_NET_MS, np.full(len(first), SAFETY_NET_MS / MIN)

    def timer(self, minutes_t):
        """The fixed timer at `minutes_t`: each cart at its first inactivity at least that long."""
        d = int(round(minutes_t * MIN))
        hit = np.flatnonzero(self.ep_g >= d)
        c = self.ep_cart[hit]
        first = hit[np.r_[True, c[1:] != c[:-1]]] if len(hit) else hit
        return self.ep_cart[first], self.ep_t[first] + d, np.full(len(first), minutes_t, dtype=np.float64)


def upper_median(v):
    v = np.sort(np.asarray(v, dtype=np.float64))
    return float(v[len(v) // 2]) if len(v) else None


def score(y, ref, alerts, unmatched: int = 0):
    """Precision, recall, F1, median delay and lead time of `alerts` = (cart index, alert_ts, delay
    minutes) against the carts' outcomes `y` (lead time to ref + 24 h); the module docstring has the
    definitions."""
    cart, at, delay = alerts
    hit = y[cart]
    tp = int(hit.sum())
    fp = len(cart) - tp
    p = tp / max(tp + fp, 1)
    r = tp / max(int(y.sum()), 1)
    lead = (ref[cart[hit]] + D.ABANDON_HORIZON_MS - at[hit]) / D.HOUR_MS
    return {"precision": p, "recall": r, "f1": 2 * p * r / max(p + r, 1e-9), "alerts": tp + fp,
            "median_delay_minutes": upper_median(delay), "mean_delay_minutes": float(np.mean(delay)) if len(delay) else None,
            "p55_delay_minutes": float(np.sort(delay)[int(len(delay) * MARGIN_PCT / 100)]) if len(delay) else None,
            "median_lead_time_hours": upper_median(lead), "unmatched": unmatched}


def episodes(lg: D.Log, sd: D.StepData, checks: np.ndarray | None, keep: np.ndarray | None = None,
             truth_carts: str | None = None):
    """Per cart: (abandoned, [(episode start ts, gap to the customer's next event, re-check
    probabilities or None)] for its inactivities of at least the first check while open, its last
    activity (truth; else the log's), alert_id). With `truth_carts` the carts and outcomes are the
    truth file's; otherwise the log's own (see the module docstring). `keep`: a mask per customer."""
    ts = lg.ts
    cust_end = np.repeat(lg.ends, lg.ends - lg.starts)
    nxt_gap = np.full(lg.n, BIG, dtype=np.int64)
    nxt_gap[:-1] = ts[1:] - ts[:-1]
    nxt_gap[lg.ends - 1] = BIG
    first_ms = D.ALERT_CHECK_MS

    def eps_of(i0):
        out, i, end = [], i0, cust_end[i0]
        while i < end and sd.cart_id[i] == i0:
            g = int(nxt_gap[i])
            if g >= first_ms:
                out.append((int(ts[i]), g, None if checks is None else checks[i].tolist()))
            i += 1
        return out, i - 1

    rows = []
    if truth_carts:
        eid = {e: i for i, e in enumerate(lg.event_ids)}
        for line in open(truth_carts):
            c = json.loads(line)
            i0 = eid.get(c["cart_add_event_id"])
            if keep is not None and (i0 is None or not keep[lg.cust[i0]]):
                continue
            eps = eps_of(i0)[0] if i0 is not None and sd.cart_id[i0] == i0 else []
            rows.append((bool(c["abandoned"]), eps, int(c["last_activity_ts"]), c.get("alert_id") or f"{c['customer_id']}:{c['cart_add_event_id']}"))
        return rows
    log_end = lg.log_end
    for i0 in np.flatnonzero(sd.cart_id == np.arange(lg.n)):
        if keep is not None and not keep[lg.cust[i0]]:
            continue
        eps, last_i = eps_of(int(i0))
        # abandoned: no purchase within 24 h after the cart's first inactivity of 30 minutes (a cart
        # bought without such a pause is not abandoned); unknown (dropped) when the log ends less
        # than 24 h after that inactivity began
        idle = next((t for t, g, _ in eps if g >= IDLE_MS), None)
        if idle is None:
            abandoned = False
        else:
            nxt = last_i + 1
            bought = nxt < cust_end[last_i] and lg.etype[nxt] == PURCHASE
            if not bought and nxt_gap[last_i] >= BIG and idle + D.ABANDON_HORIZON_MS > log_end:
                continue
            abandoned = not (bought and ts[nxt] - idle <= D.ABANDON_HORIZON_MS)
        rows.append((abandoned, eps, int(ts[last_i]), f"{lg.customer_ids[lg.cust[i0]]}:{lg.event_ids[i0]}"))
    return rows


def thresholds_for(minutes, last, level, slope, catch_all=False):
    """threshold(m) = clip(level + slope * ln(m / 60), 0, 1) at the checks up to `last` minutes,
    rounded to 4 decimals (what the metadata carries); with `catch_all`, 0 at the last check (every
    cart still idle then alerts: the model alerts the carts it is sure of early, the rest at `last`)."""
    th = [round(float(min(1.0, max(0.0, level + slope * math.log(m / 60.0)))), 4) if m <= last else None for m in minutes]
    th = [None if t is not None and t >= 1.0 else t for t in th]  # a check at 1.0 would decide nothing: left out
    if catch_all:
        th[max(i for i, m in enumerate(minutes) if m <= last)] = 0.0
    return th


def shifted(thresholds, delta):
    return [None if t is None else round(float(min(1.0, max(0.0, t + delta))), 4) for t in thresholds]


def at_recall(carts: Carts, thresholds, recall):
    """The policy at (at least) `recall`: itself if its recall is that high, else every threshold
    lowered by the same offset (0.005 steps) until it is; (offset, score), (None, None) if even
    all-zero thresholds miss it."""
    for delta in np.round(np.arange(0.0, -1.0001, -0.005), 3):
        th = shifted(thresholds, float(delta))
        m = score(carts.y, carts.ref, carts.policy(th))
        if m["recall"] >= recall - 1e-12:
            return float(delta), m
    return None, None


def choose(carts: Carts, targets=TARGETS):
    """Per target T: among the policies (level, slope, last check L <= LAST_FACTOR * T, with or
    without a catch-all at L) whose delays have their MARGIN_PCT-th percentile and their mean at or
    before T (the mean keeps a policy from meeting the median with half its alerts at 10 minutes
    and the other half hours later), the best F1 among those whose recall is at least the timer's at their median delay (so the policy's
    operating point dominates the timer of the same timeliness: as many carts found, more
    precisely); if none does, the best F1 among all of them."""
    minutes = carts.minutes
    timers = {}
    cands = []
    top = max(targets) * LAST_FACTOR
    for last in (m for m in minutes if m <= top):
        for catch_all in (False, True):
            for slope in SLOPES:
                for level in LEVELS:
                    th = thresholds_for(minutes, last, float(level), slope, catch_all)
                    m = score(carts.y, carts.ref, carts.policy(th))
                    if m["median_delay_minutes"] is None:
                        continue
                    d = m["median_delay_minutes"]
                    if d not in timers:
                        timers[d] = score(carts.y, carts.ref, carts.timer(d))
                    cands.append((m, th, float(level), slope, last, catch_all, timers[d]))
    policies = []
    for target in targets:
        ok = [c for c in cands if c[4] <= LAST_FACTOR * target and c[0]["p55_delay_minutes"] <= target
              and c[0]["mean_delay_minutes"] <= target]
        dom = [c for c in ok if c[0]["recall"] >= c[6]["recall"] - 1e-12]
        pool = dom or ok
        if not pool:
            log(f"target {target} min: no policy alerts within it")
            continue
        best = pool[0]
        for c in pool[1:]:
            if c[0]["f1"] > best[0]["f1"] + 1e-12:
                best = c
        m, th, level, slope, last, catch_all, same = best
        checks = [{"minutes": mm, "threshold": t} for mm, t in zip(minutes, th) if t is not None]
        sel = {"level": level, "slope": slope, "last_check_minutes": last, "catch_all": int(catch_all),
               "dominates_timer": int(bool(dom)), "carts": len(carts), "abandoned": int(carts.y.sum())}
        sel.update({k: v for k, v in m.items() if k != "unmatched" and v is not None})
        sel.update({"timer_minutes": m["median_delay_minutes"], "timer_precision": same["precision"], "timer_recall": same["recall"],
                    "timer_f1": same["f1"], "timer_alerts": same["alerts"]})
        policies.append({"target_delay_minutes": target, "checks": checks, "selection": sel})
        log(f"target {target} min: level {level} slope {slope} last {last} catch-all {catch_all}: P {m['precision']:.3f} R {m['recall']:.4f} "
            f"F1 {m['f1']:.3f} median {m['median_delay_minutes']} min; timer at that delay: P {same['precision']:.3f} R {same['recall']:.4f} F1 {same['f1']:.3f}")
    return policies


def run_checks(model_path: str, lg: D.Log, sd: D.StepData, hidden: int):
    """The re-check head's probabilities for every event of the log (the exported ONNX model,
    every customer's events in order, as the processor runs it)."""
    from evaluate import run_step_onnx
    return run_step_onnx(model_path, lg, sd.x, hidden)[1]


def load_carts(step_dir: str, lg: D.Log, sd: D.StepData, truth_carts: str | None = None, keep: np.ndarray | None = None) -> Carts:
    meta = json.load(open(os.path.join(step_dir, "metadata.json")))
    minutes = meta["feature_encoding"].get("abandon_checks_minutes") or []
    checks = run_checks(os.path.join(step_dir, "model.onnx"), lg, sd, meta["hidden_size"]) if minutes else None
    return Carts(episodes(lg, sd, checks, keep, truth_carts), minutes)


def truth_of(log_path: str) -> str | None:
    """The simulator's truth_carts.jsonl of a run (its directory, or beside its events file)."""
    d = log_path if os.path.isdir(log_path) else os.path.dirname(os.path.abspath(log_path))
    p = os.path.join(d, "truth_carts.jsonl")
    return p if os.path.exists(p) else None


def fit_policies(step_dir: str, lg: D.Log, sd: D.StepData, targets=TARGETS, keep: np.ndarray | None = None,
                 truth_carts: str | None = None, write: bool = True) -> list:
    """Chooses the policies on the carts of (lg, sd) (of the customers in `keep`, a mask per
    customer index, when given; outcomes from `truth_carts` when given, else from the log) and
    writes them into step_dir/metadata.json."""
    meta_path = os.path.join(step_dir, "metadata.json")
    meta = json.load(open(meta_path))
    if not meta["feature_encoding"].get("abandon_checks_minutes"):
        log("the step model has no re-check head: no alert policies")
        return []
    carts = load_carts(step_dir, lg, sd, truth_carts, keep)
    log(f"{len(carts)} carts ({'truth_carts.jsonl' if truth_carts else 'outcomes from the log'}), {carts.y.mean():.3f} abandoned")
    policies = choose(carts, targets)
    if write:
        meta["alert_policies"] = policies
        with open(meta_path, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")
    return policies


def policy_thresholds(minutes, policy) -> list:
    th = [None] * len(minutes)
    for c in policy["checks"]:
        th[minutes.index(int(c["minutes"]))] = float(c["threshold"])
    return th


def equal_timeliness(carts: Carts, policies: list) -> list:
    """Per policy on `carts`: the policy, the timer at its median delay, and the policy moved to the
    timer's recall (see the module docstring)."""
    out = []
    for p in policies:
        th = policy_thresholds(carts.minutes, p)
        al = carts.policy(th)
        m = score(carts.y, carts.ref, al)
        net = score(carts.y, carts.ref, carts.safety_net(al[0]))
        same = score(carts.y, carts.ref, carts.timer(m["median_delay_minutes"])) if m["alerts"] else None
        delta, q = at_recall(carts, th, same["recall"]) if same else (None, None)
        out.append({"target_delay_minutes": p["target_delay_minutes"], "policy": m, "timer": same,
                    "safety_net": {"alerts": net["alerts"], "precision": net["precision"]},
                    "at_timer_recall": None if q is None else {"offset": delta, **q}})
    return out


def table(results: list, title: str = "") -> str:
    out = [title, ""] if title else []
    out += ["| target | policy P | R | F1 | alerts | median delay (min) | median lead (h) | timer at that delay P | R | F1 | alerts | "
            "median lead (h) | policy P at the timer's recall (R, offset) | safety-net alerts (P) |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, d=3: "-" if v is None else f"{v:.{d}f}"  # noqa: E731
    for r in results:
        m, t, q = r["policy"], r["timer"] or {}, r["at_timer_recall"]
        out.append(f"| {r['target_delay_minutes']} min | {f(m['precision'])} | {f(m['recall'])} | {f(m['f1'])} | {m['alerts']} | "
                   f"{f(m['median_delay_minutes'], 0)} | {f(m['median_lead_time_hours'], 1)} | {f(t.get('precision'))} | "
                   f"{f(t.get('recall'))} | {f(t.get('f1'))} | {t.get('alerts', '-')} | {f(t.get('median_lead_time_hours'), 1)} | "
                   + ("-" if q is None else f"{q['precision']:.3f} ({q['recall']:.3f}, {q['offset']:+.3f})")
                   + (f" | {r['safety_net']['alerts']} ({r['safety_net']['precision']:.3f}) |" if "safety_net" in r else " | - |"))
    return "\n".join(out)


def evaluate(step_dir: str, log_path: str, policies: list) -> tuple[str, list]:
    """Policies and timers of the same median delay on another log: a markdown table."""
    lg = D.load_log(log_path)
    sd = D.step_features(lg)
    carts = load_carts(step_dir, lg, sd, truth_of(log_path))
    res = equal_timeliness(carts, policies)
    return table(res, f"`{log_path}`: {len(carts)} carts, {carts.y.mean():.3f} abandoned"), res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--log", help="selection events (a simulator output directory: its truth_carts.jsonl gives the outcomes)")
    ap.add_argument("--models", default=here)
    ap.add_argument("--targets", default=",".join(map(str, TARGETS)))
    ap.add_argument("--no-write", action="store_true", help="choose, but do not write the metadata")
    ap.add_argument("--evaluate", nargs="*", default=[], help="held-out logs to score the policies on (those of the metadata without --log)")
    ap.add_argument("--json", help="write the --evaluate results here")
    ap.add_argument("--log-labels", action="store_true", help="choose on outcomes from the log even when a truth file is there (what a user's log gives)")
    args = ap.parse_args(argv)
    step_dir = os.path.join(args.models, "journey_step")
    if args.log:
        lg = D.load_log(args.log)
        sd = D.step_features(lg)
        policies = fit_policies(step_dir, lg, sd, [int(t) for t in args.targets.split(",")], truth_carts=None if args.log_labels else truth_of(args.log),
                                write=not args.no_write)
    else:
        policies = json.load(open(os.path.join(step_dir, "metadata.json"))).get("alert_policies", [])
    results = {}
    for path in args.evaluate:
        md, res = evaluate(step_dir, path, policies)
        results[path] = res
        print(md, flush=True)
    if args.json:
        json.dump({"policies": policies, "evaluations": results}, open(args.json, "w"), indent=2)


if __name__ == "__main__":
    main()
