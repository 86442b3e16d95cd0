"""Ablation bench for the additive-hazard attribution model (hazard_mta.py).

Fits variants of the model on a simulator training log and scores them on a held-out log with the
removal-effect credit computed in NumPy (the same arithmetic as the exported ONNX graph and
evaluate.py: credit_i proportional to exp(e_i) - 1, optionally scaled by the baseline share
1 - P(none) / P(all) with the model's mean baseline mu). Prints, per variant, the channel-share MAE
against the simulator's true shares, each channel's share, and the rules' shares; and the MAE with
the share left to E[b | journey composition] (`fit_journey_baseline`) and with the truth's own
share (a diagnostic: what a perfect customer-level baseline would give), and with E[b | customer
features] computed causally at each conversion from the customer's earlier events (the
`customer_baseline` module; an experiment for a `customer_features` input of the contract).

    python hazard_lab.py --train <log dir> --heldout <log dir with truth> \
        --variant default --variant "lead=1" [--cache <dir>]

A variant is `name` or `k=v,k=v` of hazard_mta.fit / build keyword arguments (see VARIANTS).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsdata as D  # noqa: E402
import hazard_mta as H  # noqa: E402
import customer_baseline as CB  # noqa: E402
from evaluate import rule_credits  # noqa: E402

BUILD_KEYS = {"controls_per_day", "date_at_visit", "tail_hours", "post_visit_hours"}
VARIANTS = {
    "default": {},
    "no-frailty": {"frailty": False},
    "shared": {"frailty": False, "covariates": "none"},
}


def parse_variant(s: str) -> dict:
    if s in VARIANTS:
        return dict(VARIANTS[s])
    out = {}
    parts, depth, cur = [], 0, ""
    for ch in s:  # commas inside [...] belong to a list value
        depth += (ch == "[") - (ch == "]")
        if ch == "," and depth == 0:
            parts.append(cur); cur = ""
        else:
            cur += ch
    parts.append(cur)
    for kv in parts:
        k, v = kv.split("=")
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def heldout_journeys(path: str):
    """Held-out conversions with touchpoints: per conversion the arrays (channel, event_type, age)
    of its journey as the processor sends them, the customer's raw features at the conversion
    (`customer_baseline.customer_raw`: from the customer's earlier events), the truth's baseline
    share and hazard, and the truth's channel shares."""
    hl = D.load_log(path)
    eid = {e: i for i, e in enumerate(hl.event_ids)}
    tps_all, pur_all = D.customer_touch_index(hl)
    cust_of = np.repeat(np.arange(len(hl.starts)), hl.ends - hl.starts)
    truth = {}
    items = []
    for line in open(os.path.join(path, "truth_conversions.jsonl")):
        c = json.loads(line)
        p = eid.get(c["conversion_id"])
        if p is None:
            continue
        cu = cust_of[p]
        j = D.journey_at(hl, tps_all[cu], pur_all[cu], int(hl.ts[p]), at_purchase=p)[-64:]
        if len(j) == 0:
            continue
        for t in c["touchpoints"]:
            truth[t["channel"]] = truth.get(t["channel"], 0.0) + t["true_share"]
        r = D.journey_arrays(hl, j, int(hl.ts[p]), 64, 0, None)
        k = len(r[6])
        items.append({"ch": r[0][:k].copy(), "et": r[1][:k].copy(), "age": r[3][:k].astype(np.float64),
                      "ts": hl.ts[r[6]].copy(), "t": int(hl.ts[p]), "bshare": c["baseline_share"],
                      "bhaz": c.get("baseline_hazard", float("nan")), "cf": CB.customer_raw(hl, cu, [p])[0],
                      "p": int(p)})
    return items, truth


def journey_features(counts: np.ndarray, keep: np.ndarray):
    """Journey-composition features of the baseline model: log1p of each kept group's touch count
    and of the journey's length. counts: [n, NG]."""
    return np.concatenate([np.ones((len(counts), 1)), np.log1p(counts[:, keep]),
                           np.log1p(counts.sum(1, keepdims=True))], 1)


def fit_journey_baseline(data, b_event: np.ndarray, min_frac: float = 0.01):
    """E[b | journey composition]: a log-link quasi-Poisson regression of each conversion's
    leave-one-out baseline posterior (the fit's, pre-treatment) on the touch-group counts of the
    journey it ends (from the design: the hat basis sums to 1 per touch)."""
    X = data["e"]["X"].tocsc()
    ng = H.NG
    cols = X.shape[1] // H.K
    counts = np.zeros((X.shape[0], ng))
    for g in range(cols):
        counts[:, g % ng] += np.asarray(X[:, g * H.K:(g + 1) * H.K].sum(1)).ravel()
    counts = np.round(counts)
    keep = (counts > 0).mean(0) >= min_frac
    Z = journey_features(counts, keep)
    y = b_event
    beta = np.zeros(Z.shape[1])
    beta[0] = math.log(max(y.mean(), 1e-12))
    for _ in range(30):
        lam = np.exp(np.clip(Z @ beta, -50, 50))
        grad = Z.T @ (y - lam) - 1e-3 * np.r_[0.0, beta[1:]]
        hess = (Z * lam[:, None]).T @ Z + 1e-3 * np.eye(len(beta))
        step = np.linalg.solve(hess, grad)
        beta += step
        if np.abs(step).max() < 1e-8:
            break
    return {"keep": keep, "beta": beta}


def item_baseline(jb, it) -> float:
    counts = np.bincount(it["ch"].astype(np.int64) * H.NE + it["et"].astype(np.int64), minlength=H.NG)[None, :]
    return float(np.exp(journey_features(counts.astype(np.float64), jb["keep"]) @ jb["beta"])[0])


def score(S, mu, items, truth, baseline_share, jb=None):
    """baseline_share: False (credits sum to 1), True (the share left to the baseline `mu`),
    "journey" (to E[b | journey composition], `jb`), "customer" (to E[b | customer features]: jb is
    then the array of each item's predicted baseline) or "truth" (the truth's own share, diagnostic)."""
    chans = sorted(set(truth) | {D.CHANNELS[c] for it in items for c in it["ch"]})
    cr = {ch: 0.0 for ch in chans}
    for n, it in enumerate(items):
        e = H.effects(S, it["ch"], it["et"], it["age"])
        E = e.sum()
        # removal effect P(all) - P(all but i) = exp(-(mu + E)) (exp(e_i) - 1)
        d = np.expm1(e)
        if d.sum() <= 0:
            if baseline_share:
                continue
            w = rule_credits(it["ts"], it["t"])["time_decay"]
        else:
            w = d / d.sum()
            if baseline_share == "truth":
                w = w * (1.0 - it["bshare"])
            elif baseline_share:
                b = (item_baseline(jb, it) if baseline_share == "journey" else
                     float(jb[n]) if baseline_share == "customer" else mu)
                p_all = -np.expm1(-(b + E))
                p_none = -np.expm1(-b)
                w = w * (1.0 - min(1.0, p_none / p_all))
        for c, x in zip(it["ch"], w):
            cr[D.CHANNELS[c]] += x
    s = sum(cr.values())
    sh = {k: v / s for k, v in cr.items()}
    ts = sum(truth.values())
    tr = {k: truth.get(k, 0.0) / ts for k in chans}
    mae = float(np.mean([abs(sh[k] - tr[k]) for k in chans]))
    return mae, sh, tr


def customer_report(S, mu, items, truth, rules, craw, b_event, jb) -> dict:
    """Scores the baseline share with E[b | customer features] (`customer_baseline`), prints it with its
    coefficients, diagnostics (correlation of the predicted baselines with the truth-implied ones,
    mean share left to the baseline) and a block ablation; returns the JSON line's fields."""
    best = min(r[0] for r in rules.values())
    hraw = np.array([it["cf"] for it in items])
    cb = CB.fit_customer_baseline(craw, b_event)
    bc = CB.predict(cb, hraw)
    m4, sh4, _ = score(S, mu, items, truth, "customer", bc)
    print(f"   customer baseline: MAE {m4:.4f} ({m4 / best:.2f}x best rule); fitted on {cb['n']} training "
          f"conversions with touchpoints, corr(log pred, log b_event) {cb['train_corr']:.3f}", flush=True)
    print("   customer: " + "  ".join(f"{k}: {100 * sh4[k]:.1f}" for k in sorted(sh4)), flush=True)
    print("   customer beta: " + "  ".join(f"{n} {x:+.3f}" for n, x in zip(cb["names"], cb["beta"])), flush=True)
    E = np.array([H.effects(S, it["ch"], it["et"], it["age"]).sum() for it in items])
    bstar = CB.implied_baseline(S, items)
    bhaz = np.array([it["bhaz"] for it in items])
    bj = np.array([item_baseline(jb, it) for it in items])
    cc = {n: (CB.correlations(b, bstar), CB.correlations(b, bhaz)) for n, b in (("customer", bc), ("journey", bj))}
    print("   corr with the truth-implied b (log Pearson / Spearman) | with the truth's baseline_hazard: "
          + "; ".join(f"{n} {a[0]:.3f} / {a[1]:.3f} | {h[0]:.3f} / {h[1]:.3f}" for n, (a, h) in cc.items()), flush=True)
    ok = E > 0

    def left(b):
        return float(np.mean(np.minimum(1.0, -np.expm1(-b[ok]) / -np.expm1(-(b[ok] + E[ok])))))
    mean_left = {"mu": left(np.full(len(E), mu)), "journey": left(bj), "customer": left(bc),
                 "truth": float(np.mean([it["bshare"] for it, o in zip(items, ok) if o]))}
    print("   mean share left to the baseline: " + "  ".join(f"{k} {x:.3f}" for k, x in mean_left.items()), flush=True)
    # diagnostic (chosen on the truth): each baseline scaled so that its mean share left matches the truth's
    lvl = {}
    for n, b in (("mu", np.full(len(E), mu)), ("journey", bj), ("customer", bc)):
        k = CB.level_for_share(E[ok], b[ok], mean_left["truth"])
        lvl[n] = (k, score(S, mu, items, truth, "customer", k * b)[0])
    print("   level matched to the truth's mean share (diagnostic): "
          + "  ".join(f"{n} x{k:.3f} MAE {m:.4f}" for n, (k, m) in lvl.items()), flush=True)
    abl = {}
    for b in CB.BLOCKS:
        for name, blocks in ((f"-{b}", [x for x in CB.BLOCKS if x != b]), (f"only {b}", [b])):
            cbx = CB.fit_customer_baseline(craw, b_event, blocks=blocks)
            abl[name] = score(S, mu, items, truth, "customer", CB.predict(cbx, hraw))[0]
    print("   customer ablation (MAE): " + "  ".join(f"{k} {x:.4f}" for k, x in abl.items()), flush=True)
    return {"mae_customer": m4, "shares_customer": sh4, "customer_beta": dict(zip(cb["names"], cb["beta"].tolist())),
            "customer_corr": {n: {"implied": a, "baseline_hazard": h} for n, (a, h) in cc.items()},
            "mean_share_left": mean_left, "customer_ablation": abl,
            "level_matched": {n: {"scale": k, "mae": m} for n, (k, m) in lvl.items()}}


def train_diagnostic(S, mu, args, key, cdir, craw, b_event, jb):
    """In-sample diagnostic on the training log's own conversions (its truth file): the baseline share
    with the fit's own per-conversion baseline posterior `b_event` (what a perfect E[b | features] of
    this fit would give), with the customer regression, `mu` and the truth's own share."""
    items, truth = cached(cdir and os.path.join(cdir, key(args.train) + ".heldout-cf.pkl"),
                          lambda: heldout_journeys(args.train))
    row = {p: r for r, p in enumerate(craw["p"].tolist())}
    rows = np.array([row[it["p"]] for it in items])
    cb = CB.fit_customer_baseline(craw, b_event)
    out = {"mu": score(S, mu, items, truth, True)[0],
           "b_event": score(S, mu, items, truth, "customer", b_event[rows])[0],
           "customer": score(S, mu, items, truth, "customer", CB.predict(cb, craw["raw"][rows]))[0],
           "journey": score(S, mu, items, truth, "journey", jb)[0],
           "truth": score(S, mu, items, truth, "truth")[0], "sum-to-1": score(S, mu, items, truth, False)[0]}
    bstar = CB.implied_baseline(S, items)
    c = CB.correlations(b_event[rows], bstar)
    print(f"   training conversions (in-sample, {len(items)}; diagnostic): MAE " + "  ".join(f"{k} {x:.4f}" for k, x in out.items())
          + f"; corr(b_event, truth-implied b) {c[0]:.3f} / {c[1]:.3f}", flush=True)
    return out


def rule_shares(items, truth):
    chans = sorted(set(truth) | {D.CHANNELS[c] for it in items for c in it["ch"]})
    acc = {}
    for it in items:
        for m, w in rule_credits(it["ts"], it["t"]).items():
            d = acc.setdefault(m, {ch: 0.0 for ch in chans})
            for c, x in zip(it["ch"], w):
                d[D.CHANNELS[c]] += x
    ts = sum(truth.values())
    tr = {k: truth.get(k, 0.0) / ts for k in chans}
    out = {}
    for m, d in acc.items():
        s = sum(d.values())
        sh = {k: v / s for k, v in d.items()}
        out[m] = (float(np.mean([abs(sh[k] - tr[k]) for k in chans])), sh)
    return out


def cached(path, fn):
    if path and os.path.exists(path):
        with open(path, "rb") as f:
            return pickle.load(f)
    v = fn()
    if path:
        with open(path, "wb") as f:
            pickle.dump(v, f, protocol=pickle.HIGHEST_PROTOCOL)
    return v


def print_kernels(S):
    """One line per touch group with an effect: its kernel's values at the knots."""
    for g in np.flatnonzero(S.sum(1) > 0):
        print(f"   {D.CHANNELS[g // H.NE] + '/' + D.EVENT_TYPES[g % H.NE]:26s} "
              + " ".join(f"{x:.4f}" for x in S[g]), flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", required=True)
    ap.add_argument("--heldout", required=True)
    ap.add_argument("--variant", action="append", default=[])
    ap.add_argument("--cache", default=None, help="directory for the built training data and held-out journeys")
    ap.add_argument("--out", default=None, help="append one JSON line per variant here")
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--train-diag", action="store_true",
                    help="also score the training log's own conversions (in-sample diagnostic; reads its truth)")
    ap.add_argument("--cache-fit", action="store_true",
                    help="also cache each variant's fit in --cache (keyed by the training log, variant and "
                         "--iters; a stale fit is reused after a change to hazard_mta.py: delete it then)")
    ap.add_argument("--verbose", action="store_true", help="print the EM's progress")
    args = ap.parse_args(argv)
    variants = args.variant or ["default"]
    key = lambda p: os.path.abspath(p).strip("/").replace("/", "_")  # noqa: E731
    cdir = args.cache
    if cdir:
        os.makedirs(cdir, exist_ok=True)
    t0 = time.time()
    items, truth = cached(cdir and os.path.join(cdir, key(args.heldout) + ".heldout-cf.pkl"),
                          lambda: heldout_journeys(args.heldout))
    print(f"held-out: {len(items)} conversions with touchpoints ({time.time() - t0:.0f} s)", flush=True)
    rules = rule_shares(items, truth)
    lg = None
    datas = {}
    for v in variants:
        kw = parse_variant(v)
        bkw = {k: kw.pop(k) for k in list(kw) if k in BUILD_KEYS}
        bkey = json.dumps(bkw, sort_keys=True)
        if bkey not in datas:
            def _build():
                nonlocal lg
                if lg is None:
                    lg = D.load_log(args.train)
                return H.build(lg, **bkw)
            suffix = "".join(f".{k}={bkw[k]}" for k in sorted(bkw))
            datas[bkey] = cached(cdir and os.path.join(cdir, key(args.train) + suffix + ".train.pkl"), _build)
        data = datas[bkey]
        hb, sd_ = kw.pop("hour_bins", None), kw.pop("since_d", None)
        if hb is not None or sd_ is not None:
            if "lp" not in data["e"]:
                if lg is None:
                    lg = D.load_log(args.train)
                for kind in ("e", "c"):
                    data[kind]["lp"] = H.last_purchase_before(lg, data[kind]["cust"], data[kind]["t"])
            data = dict(data)
            for kind in ("e", "c"):
                data[kind] = dict(data[kind])
                data[kind]["lv"] = list(data[kind]["lv"])
            H.relevel(data, None, hb or H.HOUR_BINS, sd_ or H.SINCE_PURCHASE_D)
        flat = kw.pop("flat_levels", None)
        if flat:
            # diagnostic: drop multipliers (their level index in N_LEVELS) by collapsing their levels
            data = dict(data)
            for kind in ("e", "c"):
                data[kind] = dict(data[kind])
                data[kind]["lv"] = [np.zeros_like(x) if f in flat else x for f, x in enumerate(data[kind]["lv"])]
        mdays = kw.pop("mirror_days", 30.0)
        if kw.get("mirror"):
            def _mirror():
                nonlocal lg
                if lg is None:
                    lg = D.load_log(args.train)
                return H.mirror_design(lg, data, window_days=mdays)
            suffix = "".join(f".{k}={bkw[k]}" for k in sorted(bkw)) + f".mirror{mdays:g}"
            data["mirror"] = cached(cdir and os.path.join(cdir, key(args.train) + suffix + ".pkl"), _mirror)
        else:
            data.pop("mirror", None)
        if kw.get("sensors"):
            def _sensor():
                nonlocal lg
                if lg is None:
                    lg = D.load_log(args.train)
                return H.sensor_counts(lg, data)
            suffix = "".join(f".{k}={bkw[k]}" for k in sorted(bkw)) + ".sensor"
            data["sensor"] = cached(cdir and os.path.join(cdir, key(args.train) + suffix + ".pkl"), _sensor)
            if kw.get("sensor_timing"):
                def _rows():
                    nonlocal lg
                    if lg is None:
                        lg = D.load_log(args.train)
                    return H.sensor_touch_rows(lg, data, data["sensor"])
                data["sensor_rows"] = cached(cdir and os.path.join(cdir, key(args.train) + suffix + ".rows.pkl"), _rows)
        def _fit():
            t1 = time.time()
            r = H.fit(data, iters=args.iters, log=(lambda m: print(m, flush=True)) if args.verbose else (lambda m: None), **kw)
            r["fit_seconds"] = time.time() - t1
            return r
        fkey = hashlib.sha1(f"{v}|{args.iters}".encode()).hexdigest()[:12]
        res = cached(cdir and args.cache_fit and os.path.join(cdir, key(args.train) + f".fit-{fkey}.pkl"), _fit)
        fit_s = res["fit_seconds"]
        S, mu = res["S"], res["mu"]
        m0, sh0, tr = score(S, mu, items, truth, False)
        m1, sh1, _ = score(S, mu, items, truth, True)
        jb = fit_journey_baseline(data, res["b_event"])
        m2, sh2, _ = score(S, mu, items, truth, "journey", jb)
        m3, _, _ = score(S, mu, items, truth, "truth")
        print(f"   journey baseline: MAE {m2:.4f}; truth's own share (diagnostic) {m3:.4f}; beta "
              + " ".join(f"{x:.2f}" for x in jb["beta"]), flush=True)
        print("   journey: " + "  ".join(f"{k}: {100 * sh2[k]:.1f}" for k in sorted(sh2)), flush=True)

        def _craw():
            nonlocal lg
            if lg is None:
                lg = D.load_log(args.train)
            return CB.train_raw(lg, data)
        bsuf = "".join(f".{k}={bkw[k]}" for k in sorted(bkw))
        craw = cached(cdir and os.path.join(cdir, key(args.train) + bsuf + ".custraw.pkl"), _craw)
        cust = customer_report(S, mu, items, truth, rules, craw, res["b_event"], jb)
        if args.train_diag:
            cust["train_diag"] = train_diagnostic(S, mu, args, key, cdir, craw, res["b_event"], jb)
        best = min(rules.items(), key=lambda x: x[1][0])
        lt = rules["last_touch"][1]
        line = {"variant": v, "train": args.train, "heldout": args.heldout, "mae": m0, "mae_bshare": m1, "mae_journey": m2, "mae_truthshare": m3,
                **cust,
                "best_rule": best[0], "best_rule_mae": best[1][0], "shares": sh0, "shares_bshare": sh1,
                "truth": tr, "last_touch": lt, "iterations": res["iterations"], "fit_seconds": round(fit_s, 1),
                "extra": {k: res[k] for k in res if k.startswith("x_")}}
        print(f"== {v}: MAE {m0:.4f} (bshare {m1:.4f}); best rule {best[0]} {best[1][0]:.4f} -> "
              f"{m0 / best[1][0]:.2f}x / {m1 / best[1][0]:.2f}x; it {res['iterations']}, {fit_s:.0f} s", flush=True)
        print("   " + "  ".join(f"{k}: {100 * sh0[k]:.1f}/{100 * sh1[k]:.1f} (t {100 * tr[k]:.1f}, lt {100 * lt[k]:.1f})"
                                for k in sorted(sh0)), flush=True)
        print_kernels(S)
        for part, title in (("S_post_visit", "post-visit delivered touches (fitted, uncredited)"),
                            ("S_mirror", "mirror (two-sided, uncredited) term")):
            if part in res:
                print(f"   {title}:", flush=True)
                print_kernels(res[part])
        for k, val in line["extra"].items():
            print(f"   {k}: {val}", flush=True)
        print(f"== {v}: MAE sum-to-1 {m0:.4f} / mu {m1:.4f} / journey {m2:.4f} / customer {cust['mae_customer']:.4f} / "
              f"truth's own {m3:.4f}; best rule {best[0]} {best[1][0]:.4f}; customer {cust['mae_customer'] / best[1][0]:.2f}x",
              flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(line) + "\n")


if __name__ == "__main__":
    main()
