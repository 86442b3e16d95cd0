#!/usr/bin/env python3
"""Evaluates the exported ONNX models on a held-out simulator run (events + truth files).

    python models/evaluate.py --heldout models/data/heldout [--train-log models/data/train] [--models models]

Runs the shipped model.onnx files with ONNX Runtime (one thread) and compares them with baselines:
  - journey_step: P(purchase in 7 d) AUC / log-loss vs logistic regressions on per-channel touch
    counts and recency (fitted on --train-log);
  - attribution: channel shares of the credited conversions, deep credit (removal effects) vs the
    rules, against the true shares (truth_conversions.jsonl) and the counterfactual truth
    (truth_channels.json, when the run had --counterfactual);
  - abandonment: alerts from P(abandon) (the 10-minute check, and the re-check head's schedule) vs fixed
    timers, against truth_carts.jsonl; thresholds chosen on another run (--select);
  - abandonment at equal timeliness: each of the step model's `alert_policies` (1, 2, 4 h targets,
    alert_policy.py) simulated as the processor runs it, vs the fixed timer of the policy's median
    delay, and the policy's precision at the timer's recall (`--only alerts`: this section alone).
Writes <models>/evaluation.json and prints the tables (markdown).

    python models/evaluate.py --heldout RUN --alerts alerts.jsonl [--out scores.json]

scores the processor's own alerts (its alerts topic as JSON lines) against RUN's truth_carts.jsonl:
model alerts, safety-net alerts, all, and the timer of the model alerts' median delay (the
definitions: alert_policy.py's docstring).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsdata as D  # noqa: E402
import alert_policy as AP  # noqa: E402
from evaluate_report import markdown, markdown_alerts  # noqa: E402

HALF_LIFE_MS = 7 * D.DAY_MS
METHODS = ["deep", "time_decay", "last_touch", "first_touch", "linear", "position_based"]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def auc(y, s):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s))


def logloss(y, p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


# ---------------------------------------------------------------------------------------------
# Step model over a whole log (ONNX, all customers stepped in parallel)


def run_step_onnx(path, lg: D.Log, x: np.ndarray, hidden: int):
    sess = session(path)
    n_c = len(lg.starts)
    lens = lg.ends - lg.starts
    order = np.argsort(-lens, kind="stable")  # longest first: active customers are a prefix
    out = np.zeros((lg.n, 3), dtype=np.float32)
    k_checks = sess.get_outputs()[4].shape[1] if len(sess.get_outputs()) > 4 else 0
    checks = np.zeros((lg.n, k_checks), dtype=np.float32)
    h = np.zeros((n_c, hidden), dtype=np.float32)
    starts = lg.starts[order]
    for t in range(int(lens.max())):
        k = int((lens[order] > t).sum())
        idx = starts[:k] + t
        res = sess.run(None, {"features": x[idx], "hidden_in": h[:k]})
        ho, pp, pa, ev = res[:4]
        h[:k] = ho
        out[idx, 0] = pp[:, 0]; out[idx, 1] = pa[:, 0]; out[idx, 2] = ev[:, 0]
        if k_checks:
            checks[idx] = res[4]
    return out, checks


# ---------------------------------------------------------------------------------------------
# Logistic-regression baselines


def baseline_features(lg: D.Log, idx: np.ndarray, sd: D.StepData | None = None):
    """Per event: per-channel touch counts in the last 30 days (log1p) and recency (log1p hours since
    the channel's last touch in the last 30 days / log1p(720), 1 if none, + a 'none' flag);
    optionally the step model's input features of the event."""
    tps, _ = D.customer_touch_index(lg)
    cust_of = np.repeat(np.arange(len(lg.starts)), lg.ends - lg.starts)
    C = len(D.CHANNELS)
    f = np.zeros((len(idx), 3 * C), dtype=np.float32)
    f[:, C:] = 1.0
    idx = np.asarray(idx)
    cs = cust_of[idx]
    bounds = np.flatnonzero(np.diff(cs)) + 1  # idx is sorted, so events of a customer are contiguous
    for lo, hi in zip(np.concatenate([[0], bounds]), np.concatenate([bounds, [len(idx)]])):
        c = cs[lo]
        tp = tps[c]
        if len(tp) == 0:
            continue
        t = lg.ts[idx[lo:hi]]
        for ch in np.unique(lg.chan[tp]):
            tts = lg.ts[tp[lg.chan[tp] == ch]]
            r = np.searchsorted(tts, t, side="right")
            l = np.searchsorted(tts, t - D.LOOKBACK_MS, side="left")
            n = r - l
            has = n > 0
            f[lo:hi, ch] = np.log1p(n)
            last = tts[np.maximum(r - 1, 0)]
            rec = np.log1p(np.maximum(t - last, 0) / D.HOUR_MS) / np.log1p(720)
            f[lo:hi, C + ch] = np.where(has, rec, 1.0)
            f[lo:hi, 2 * C + ch] = ~has
    if sd is not None:
        f = np.concatenate([f, sd.x[idx]], axis=1)
    return f


def eval_step(models_dir, hl, sd_h, lab_h, tr, sd_t, lab_t, rng, n_eval=300_000, n_fit=300_000):
    meta = json.load(open(os.path.join(models_dir, "journey_step", "metadata.json")))
    H = meta["hidden_size"]
    t0 = time.time()
    out, checks = run_step_onnx(os.path.join(models_dir, "journey_step", "model.onnx"), hl, sd_h.x, H)
    log(f"step model over the held-out log: {time.time() - t0:.0f} s")
    y_p, m_p, y_a, m_a, y_v, m_v = lab_h
    ev_idx = np.flatnonzero(m_p)
    ev_idx = np.sort(rng.choice(ev_idx, min(n_eval, len(ev_idx)), replace=False))
    yt = lab_t[0]
    fit_idx = np.flatnonzero(lab_t[1])
    fit_idx = np.sort(rng.choice(fit_idx, min(n_fit, len(fit_idx)), replace=False))
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    res = {"events_evaluated": int(len(ev_idx)), "purchase_rate": float(y_p[ev_idx].mean())}
    res["gru_step_model"] = {"auc": auc(y_p[ev_idx], out[ev_idx, 0]), "logloss": logloss(y_p[ev_idx], out[ev_idx, 0])}
    for name, use_sd in (("lr_touch_counts_recency", False), ("lr_touch_counts_recency_plus_event_features", True)):
        t0 = time.time()
        Xf = baseline_features(tr, fit_idx, sd_t if use_sd else None)
        Xe = baseline_features(hl, ev_idx, sd_h if use_sd else None)
        sc = StandardScaler().fit(Xf)
        lr = LogisticRegression(max_iter=2000, C=1.0).fit(sc.transform(Xf), yt[fit_idx])
        p = lr.predict_proba(sc.transform(Xe))[:, 1]
        res[name] = {"auc": auc(y_p[ev_idx], p), "logloss": logloss(y_p[ev_idx], p)}
        log(f"{name}: {res[name]} ({time.time() - t0:.0f} s)")
    res["constant_rate"] = {"auc": 0.5, "logloss": logloss(y_p[ev_idx], np.full(len(ev_idx), yt[lab_t[1]].mean()))}
    # value head
    vv = np.flatnonzero(m_v)
    rev = np.expm1(y_v[vv])
    pred = out[vv, 2]
    ra, rb = np.argsort(np.argsort(pred)), np.argsort(np.argsort(rev))
    res["expected_value"] = {"events": int(len(vv)), "mean_predicted": float(pred.mean()), "mean_actual": float(rev.mean()),
                             "mae": float(np.abs(pred - rev).mean()),
                             "mae_constant_mean": float(np.abs(rev.mean() - rev).mean()),
                             "spearman": float(np.corrcoef(ra, rb)[0, 1])}
    # abandon head on its labels
    res["abandon_head"] = {"labels": int(m_a.sum()), "rate": float(y_a[m_a].mean()),
                           "auc": auc(y_a[m_a], out[m_a, 1]), "logloss": logloss(y_a[m_a], out[m_a, 1])}
    return res, (out, checks, meta.get("feature_encoding", {}).get("abandon_checks_minutes", []))


# ---------------------------------------------------------------------------------------------
# Abandonment alerts


def cart_rows(lg: D.Log, sd: D.StepData, scored, truth_carts_path):
    """Per cart of the truth file: (abandoned, customer, truth last_activity_ts, checks, gaps), where
    checks = [(alert time, p_abandon at 10 min, re-check probabilities or None)] per inactivity of
    at least 10 minutes of the open cart, and gaps = [(event time, gap to the next event)]."""
    out, checks, minutes = scored
    eid = {e: i for i, e in enumerate(lg.event_ids)}
    ts = lg.ts
    cust_end = np.repeat(lg.ends, lg.ends - lg.starts)
    BIG = np.int64(10) ** 15
    rows = []
    for line in open(truth_carts_path):
        c = json.loads(line)
        i0 = eid.get(c["cart_add_event_id"])
        if i0 is None:
            continue
        end = cust_end[i0]
        i = i0
        cks, gaps = [], []
        while i < end and sd.cart_id[i] == i0:
            gap = ts[i + 1] - ts[i] if i + 1 < end else BIG
            if gap >= D.ALERT_CHECK_MS:
                cks.append((int(ts[i]), int(gap), bool(sd.cart_quiet[i]), float(out[i, 1]),
                            checks[i] if len(minutes) else None))
            gaps.append((int(ts[i]), int(gap)))
            i += 1
        rows.append((bool(c["abandoned"]), c["customer_id"], int(c["last_activity_ts"]), cks, gaps))
    return rows


RULE_MS = 24 * D.HOUR_MS  # the rule as a safety net at the abandonment horizon (alerts.inactivity_timeout = "24h")


def policy_timer(rows, T):
    return [next((t0 + T for t0, g in r[4] if g >= T), None) for r in rows]


def policy_model(rows, theta):
    """The processor with a model that has no re-check head: one check 10 minutes into each
    inactivity (until the cart's first 30-minute inactivity, when the 30-minute rule fires)."""
    return [next((t + D.ALERT_CHECK_MS for t, g, quiet, p, _ in r[3] if not quiet and p >= theta), None) for r in rows]


def policy_rechecks(rows, minutes, hi, lo, rule_ms=None):
    """The processor with the re-check head: in every inactivity of the open cart, check at each of
    `minutes`; alert at the first check whose probability reaches `hi` (`lo` at the last check);
    with `rule_ms`, the rule alerts at the first inactivity that long (alerts.inactivity_timeout)."""
    res = []
    last = len(minutes) - 1
    for r in rows:
        a = None
        for t, g, _, _, pk in r[3]:
            for k, m in enumerate(minutes):
                if g < m * 60_000:
                    break
                if pk[k] >= (lo if k == last else hi):
                    a = t + m * 60_000
                    break
            if a is None and rule_ms is not None and g >= rule_ms:
                a = t + rule_ms
            if a is not None:
                break
        res.append(a)
    return res


def alert_metrics(rows, alerts, subset=None):
    tp = fp = fn = 0
    lead = []
    for i, (r, a) in enumerate(zip(rows, alerts)):
        if subset is not None and not subset[i]:
            continue
        if a is not None and r[0]:
            tp += 1
            lead.append((r[2] + D.ABANDON_HORIZON_MS - a) / D.HOUR_MS)
        elif a is not None:
            fp += 1
        elif r[0]:
            fn += 1
    prec = tp / max(tp + fp, 1)
    rec = tp / max(tp + fn, 1)
    return {"precision": prec, "recall": rec, "f1": 2 * prec * rec / max(prec + rec, 1e-9), "alerts": tp + fp,
            "median_lead_time_hours": float(np.median(lead)) if lead else None,
            "mean_lead_time_hours": float(np.mean(lead)) if lead else None}


def eval_abandon(rows, sel_rows, minutes, target_precision=0.9):
    """Alert policies on the held-out carts, thresholds chosen on the selection run's carts."""
    thetas = np.round(np.linspace(0.5, 0.995, 100), 4)
    chosen = next((float(th) for th in thetas
                   if alert_metrics(sel_rows, policy_model(sel_rows, th))["precision"] >= target_precision), None)
    res = {"carts": len(rows), "abandoned_rate": float(np.mean([r[0] for r in rows])),
           "target_precision": target_precision, "threshold": chosen,
           "lead_time": "hours from the alert to the end of the 24 h abandonment window (truth last_activity_ts + 24 h), "
                        "true-positive alerts"}
    table = {}
    if chosen is not None:
        table[f"p_abandon at 10 min (precision>={target_precision} on the selection run: {chosen})"] = \
            alert_metrics(rows, policy_model(rows, chosen))
    if minutes:
        grid_hi = [0.95, 0.96, 0.97, 0.975, 0.98, 0.985, 0.99, 0.995, 1.01]
        grid_lo = [0.5, 0.7, 0.8, 0.85, 0.875, 0.9, 0.925, 0.95, 0.96, 0.97]
        # on the selection run, with the rule at 24 h: the F1-best thresholds among those whose alerts
        # come no later (median lead time) than the 10-hour timer's, and the F1-best overall
        timer_lead = alert_metrics(sel_rows, policy_timer(sel_rows, 600 * 60_000))["median_lead_time_hours"]
        scored = []
        for hi in grid_hi:
            for lo in grid_lo:
                if lo <= hi:
                    m = alert_metrics(sel_rows, policy_rechecks(sel_rows, minutes, hi, lo, RULE_MS))
                    scored.append((m["f1"], m["median_lead_time_hours"] >= timer_lead, hi, lo))
        f1, _, hi, lo = max(x for x in scored if x[1])
        f1_any, _, hi_any, lo_any = max(scored)
        res["rechecks"] = {"minutes": minutes, "threshold": hi, "last_check_threshold": lo, "selection_f1": f1,
                           "rule": "F1-best on the selection run among thresholds whose median lead time is at least "
                                   "the 10-hour timer's there",
                           "f1_best_any_lead": {"threshold": hi_any, "last_check_threshold": lo_any, "selection_f1": f1_any}}
        table[f"**re-checks at {minutes[0]}..{minutes[-1]} min (>= {hi}, last check >= {lo}), the rule at 24 h**"] = \
            alert_metrics(rows, policy_rechecks(rows, minutes, hi, lo, RULE_MS))
        table["... of which the model's alerts alone"] = alert_metrics(rows, policy_rechecks(rows, minutes, hi, lo))
        table[f"re-checks, F1-best thresholds regardless of lead time (>= {hi_any}, last check >= {lo_any}), rule at 24 h"] = \
            alert_metrics(rows, policy_rechecks(rows, minutes, hi_any, lo_any, RULE_MS))
        table[f"re-checks, one threshold {hi} at every check, rule at 24 h"] = \
            alert_metrics(rows, policy_rechecks(rows, minutes, hi, hi, RULE_MS))
    for name, T in (("timer 30 min", 30), ("timer 1 h", 60), ("timer 2 h", 120), ("timer 10 h", 600)):
        table[name] = alert_metrics(rows, policy_timer(rows, T * 60_000))
    res["table"] = table
    return res


# ---------------------------------------------------------------------------------------------
# Abandonment alerts at equal timeliness (the processor's alert policies, alert_policy.py): the
# definitions (carts, precision/recall/F1, delay, upper median, lead time, the fixed timer, the
# policy at the timer's recall) are in alert_policy.py's docstring, for a Rust test to reimplement.


def eval_equal_timeliness(models_dir, hl: D.Log, sd_h: D.StepData, checks, truth_carts_path):
    """The step model's `alert_policies` on the held-out carts vs the timer of each policy's median
    delay (alert_policy.equal_timeliness)."""
    meta = json.load(open(os.path.join(models_dir, "journey_step", "metadata.json")))
    policies = meta.get("alert_policies") or []
    minutes = meta["feature_encoding"].get("abandon_checks_minutes") or []
    if not policies or not minutes:
        return None
    carts = AP.Carts(AP.episodes(hl, sd_h, checks, truth_carts=truth_carts_path), minutes)
    return {"carts": len(carts), "abandoned_rate": float(carts.y.mean()), "results": AP.equal_timeliness(carts, policies)}


def read_alerts(path, truth_carts_path):
    """The processor's alerts (JSON lines: alert_id or customer_id, alert_ts, last_activity_ts,
    reason, abandonment_probability) -> {alert_id: record}, the first alert per cart. Without
    alert_id a record belongs to the customer's truth cart opened last at or before alert_ts."""
    opened = {}
    for line in open(truth_carts_path):
        c = json.loads(line)
        opened.setdefault(c["customer_id"], []).append((int(c["opened_ts"]), c.get("alert_id") or f"{c['customer_id']}:{c['cart_add_event_id']}"))
    for v in opened.values():
        v.sort()
    out = {}
    for line in open(path):
        if not line.strip():
            continue
        a = json.loads(line)
        aid = a.get("alert_id")
        if not aid:
            cands = [i for t, i in opened.get(a["customer_id"], []) if t <= int(a["alert_ts"])]
            aid = cands[-1] if cands else f"{a['customer_id']}:?{a['alert_ts']}"
        if aid not in out or int(a["alert_ts"]) < int(out[aid]["alert_ts"]):
            out[aid] = a
    return out


def eval_alerts_file(alerts_path, hl: D.Log, sd_h: D.StepData, truth_carts_path):
    """Scores the processor's own alerts: the model's (reason "model"), the safety net's and all,
    each model-alert set against the timer of its median delay."""
    carts = AP.Carts(AP.episodes(hl, sd_h, None, truth_carts=truth_carts_path), [])
    recs = read_alerts(alerts_path, truth_carts_path)
    res = {"carts": len(carts), "abandoned_rate": float(carts.y.mean()), "alerts_read": len(recs), "table": {}}

    def arrays(reasons):
        sel = [(carts.index[i], int(a["alert_ts"]), (int(a["alert_ts"]) - int(a["last_activity_ts"])) / 60_000)
               for i, a in recs.items() if i in carts.index and (reasons is None or a.get("reason") in reasons)]
        unmatched = sum(1 for i, a in recs.items() if i not in carts.index and (reasons is None or a.get("reason") in reasons))
        c, t, d = (np.array(x) for x in zip(*sel)) if sel else (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
        return (c.astype(np.int64), t.astype(np.int64), d.astype(np.float64)), unmatched

    for name, reasons in (("model", {"model"}), ("safety_net", {"safety_net", "inactivity_timeout"}), ("all", None)):
        al, um = arrays(reasons)
        m = AP.score(carts.y, carts.ref, al, um)
        res["table"][name] = m
        if name == "model" and m["median_delay_minutes"] is not None:
            res["table"][f"timer at {m['median_delay_minutes']:g} min (the model alerts' median delay)"] = \
                AP.score(carts.y, carts.ref, carts.timer(m["median_delay_minutes"]))
    return res


# ---------------------------------------------------------------------------------------------
# Attribution: channel shares


def rule_credits(ts_tp: np.ndarray, t_conv: int):
    k = len(ts_tp)
    age = (t_conv - ts_tp).astype(float)
    w = np.power(2.0, -(age - age.min()) / HALF_LIFE_MS)
    td = w / w.sum()
    last = np.zeros(k); last[-1] = 1
    first = np.zeros(k); first[0] = 1
    lin = np.full(k, 1.0 / k)
    if k <= 2:
        pb = lin.copy()
    else:
        pb = np.full(k, 0.2 / (k - 2)); pb[0] = 0.4; pb[-1] = 0.4
    return {"time_decay": td, "last_touch": last, "first_touch": first, "linear": lin, "position_based": pb}


def removal_credits(sess, items, batch=4096, baseline_share=False):
    """items: list of (cols (6 arrays of L), positions of the touchpoints). Returns per item
    (credits over those positions normalised to 1, or None if all removal effects are 0; P(full)).
    With `baseline_share` (the model's metadata says so), as the processor: one more row with every
    touchpoint masked gives P(none), the credits are scaled to sum 1 - P(none)/P(full) (the rest is
    the customer's baseline), and no removal effect at all gives zeros, not None."""
    rows = []
    owner = []
    for n, (cols, positions) in enumerate(items):
        rows.append(cols); owner.append((n, -1))
        for i, q in enumerate(positions):
            c2 = [c.copy() for c in cols]
            c2[5][q] = 0.0
            rows.append(c2); owner.append((n, i))
        if baseline_share:
            c2 = [c.copy() for c in cols]
            c2[5][list(positions)] = 0.0
            rows.append(c2); owner.append((n, -2))
    p = np.zeros(len(rows), dtype=np.float32)
    for b in range(0, len(rows), batch):
        chunk = rows[b:b + batch]
        feeds = {name: np.stack([r[j] for r in chunk]) for j, name in enumerate(["channel", "event_type", "campaign_bucket", "age", "position", "mask"])}
        p[b:b + batch] = sess.run(["p_conversion"], feeds)[0][:, 0]
    full, none = {}, {}
    credits = [np.zeros(len(q)) for _, q in items]
    for (n, i), v in zip(owner, p):
        if i == -1:
            full[n] = v
        elif i == -2:
            none[n] = v
        else:
            credits[n][i] = v
    out = []
    for n in range(len(items)):
        d = np.maximum(0.0, full[n] - credits[n])
        if baseline_share:
            base = min(1.0, max(0.0, float(none[n]) / float(full[n]))) if full[n] > 0 else 1.0
            out.append((d / d.sum() * (1.0 - base) if d.sum() > 0 else np.zeros(len(d)), float(full[n])))
        else:
            out.append((d / d.sum() if d.sum() > 0 else None, float(full[n])))
    return out


def eval_attribution(models_dir, names, hl: D.Log, truth_dir):
    eid = {e: i for i, e in enumerate(hl.event_ids)}
    tps_all, pur_all = D.customer_touch_index(hl)
    cust_of = np.repeat(np.arange(len(hl.starts)), hl.ends - hl.starts)
    convs = []
    truth_ch = {}
    n_conv = n_empty = 0
    for line in open(os.path.join(truth_dir, "truth_conversions.jsonl")):
        c = json.loads(line)
        n_conv += 1
        p = eid.get(c["conversion_id"])
        if p is None:
            continue
        cu = cust_of[p]
        j, prev = D.journey_at(hl, tps_all[cu], pur_all[cu], int(hl.ts[p]), at_purchase=p, with_prev=True)
        j = j[-64:]
        if len(j) == 0:
            n_empty += 1
            continue
        for t in c["touchpoints"]:
            truth_ch[t["channel"]] = truth_ch.get(t["channel"], 0.0) + t["true_share"]
        convs.append((p, j, prev))
    channels = sorted({D.CHANNELS[hl.chan[i]] for _, j, _ in convs for i in j} | set(truth_ch))
    credited = {m: {ch: 0.0 for ch in channels} for m in METHODS if m != "deep"}
    # the rules again, over the journey without its purchase path (the deep model's exclusion), to
    # separate what the exclusion alone does from what the model does
    PATH_RULES = ("time_decay", "last_touch", "linear")
    for m in PATH_RULES:
        credited[f"{m}+path"] = {ch: 0.0 for ch in channels}
    path_ms_rules = 30 * 60_000
    for p, j, _ in convs:
        rc = rule_credits(hl.ts[j], int(hl.ts[p]))
        chs = [D.CHANNELS[hl.chan[i]] for i in j]
        for m, w in rc.items():
            for ch, x in zip(chs, w):
                credited[m][ch] += x
        jp = j[hl.ts[j] <= hl.ts[p] - path_ms_rules]
        if len(jp) == 0:
            jp = j
        rcp = rule_credits(hl.ts[jp], int(hl.ts[p]))
        chs = [D.CHANNELS[hl.chan[i]] for i in jp]
        for m in PATH_RULES:
            for ch, x in zip(chs, rcp[m]):
                credited[f"{m}+path"][ch] += x
    deep = {}
    fallback = {}
    for name in names:
        meta = json.load(open(os.path.join(models_dir, name, "metadata.json")))
        path_ms = meta["feature_encoding"]["purchase_path_minutes"] * 60_000
        L = meta["feature_encoding"]["L"]
        context = meta["feature_encoding"].get("previous_purchase_token", False)
        sess = session(os.path.join(models_dir, name, "model.onnx"))
        items, maps = [], []
        for p, j, prev in convs:
            r = D.journey_arrays(hl, j, int(hl.ts[p]), L, path_ms, prev if context else None)
            items.append((list(r[:6]), r[7]))
            maps.append(r[6])
        t0 = time.time()
        res = removal_credits(sess, items, baseline_share=bool(meta.get("baseline_share")))
        log(f"{name}: removal effects for {len(items)} conversions in {time.time() - t0:.0f} s")
        cr = {ch: 0.0 for ch in channels}
        fb = 0
        for (p, j, _), (w, _), used in zip(convs, res, maps):
            if w is None:
                fb += 1
                w_all = rule_credits(hl.ts[j], int(hl.ts[p]))["time_decay"]
                for i, x in zip(j, w_all):
                    cr[D.CHANNELS[hl.chan[i]]] += x
            else:
                for i, x in zip(used, w):
                    cr[D.CHANNELS[hl.chan[i]]] += x
        deep[name] = cr
        fallback[name] = fb

    def norm(d):
        s = sum(d.values())
        return {k: (v / s if s else 0.0) for k, v in d.items()}

    truth = norm({ch: truth_ch.get(ch, 0.0) for ch in channels})
    cf = None
    tc_path = os.path.join(truth_dir, "truth_channels.json")
    if os.path.exists(tc_path):
        tcj = json.load(open(tc_path))
        vals = {ch: (tcj["channels"].get(ch, {}) or {}).get("counterfactual_incremental_conversions") for ch in channels}
        if all(v is not None for v in vals.values()):
            cf = norm({k: max(0.0, v) for k, v in vals.items()})
    shares = {f"deep[{n}]": norm(deep[n]) for n in names}
    shares.update({m: norm(credited[m]) for m in credited})

    def mae(a, b):
        return float(np.mean([abs(a[ch] - b[ch]) for ch in channels]))

    res = {"conversions": n_conv, "conversions_with_touchpoints": len(convs), "without_touchpoints": n_empty,
           "channels": channels, "truth_true_shares": truth, "truth_counterfactual": cf, "shares": shares,
           "mae_vs_true_shares": {m: mae(s, truth) for m, s in shares.items()},
           "mae_vs_counterfactual": ({m: mae(s, cf) for m, s in shares.items()} if cf else None),
           "deep_time_decay_fallbacks": fallback}
    return res


# ---------------------------------------------------------------------------------------------


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--heldout", required=True, help="simulator output directory (events.jsonl + truth files)")
    ap.add_argument("--train-log", default=os.path.join(here, "data", "train"), help="log the LR baselines are fitted on")
    ap.add_argument("--models", default=here)
    ap.add_argument("--select", default=os.path.join(here, "data", "select"),
                    help="another simulator run: alert thresholds are chosen on its carts")
    ap.add_argument("--out", default=None, help="JSON results (default <models>/evaluation.json)")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--target-precision", type=float, default=0.9)
    ap.add_argument("--only", choices=["step", "attribution", "alerts"], default=None,
                    help="alerts: only the alert policies at equal timeliness (no baselines, no --train-log/--select)")
    ap.add_argument("--alerts", default=None,
                    help="the processor's alerts (JSON lines of its alerts topic): score them against --heldout's "
                         "truth_carts.jsonl and the timer of the model alerts' median delay, and nothing else")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    hl = D.load_log(os.path.join(args.heldout, "events.jsonl"))
    log(f"held-out log: {hl.n} events")
    r = {"heldout": os.path.basename(os.path.normpath(args.heldout))}
    truth_carts = os.path.join(args.heldout, "truth_carts.jsonl")
    if args.alerts or args.only == "alerts":
        sd_h = D.step_features(hl)
        if args.alerts:
            r["alerts_file"] = {"file": os.path.basename(args.alerts), **eval_alerts_file(args.alerts, hl, sd_h, truth_carts)}
        else:
            meta = json.load(open(os.path.join(args.models, "journey_step", "metadata.json")))
            checks = run_step_onnx(os.path.join(args.models, "journey_step", "model.onnx"), hl, sd_h.x, meta["hidden_size"])[1]
            r["equal_timeliness"] = eval_equal_timeliness(args.models, hl, sd_h, checks, truth_carts)
        md = markdown_alerts(r)
        if args.out:
            with open(args.out, "w") as f:
                json.dump(r, f, indent=2)
                f.write("\n")
        print(md)
        return r
    if args.only in (None, "step"):
        sd_h = D.step_features(hl)
        lab_h = D.step_labels(hl, sd_h)
        tr = D.load_log(args.train_log)
        sd_t = D.step_features(tr)
        lab_t = D.step_labels(tr, sd_t)
        r["step"], scored = eval_step(args.models, hl, sd_h, lab_h, tr, sd_t, lab_t, rng)
        rows = cart_rows(hl, sd_h, scored, os.path.join(args.heldout, "truth_carts.jsonl"))
        sl = D.load_log(os.path.join(args.select, "events.jsonl"))
        sd_s = D.step_features(sl)
        meta = json.load(open(os.path.join(args.models, "journey_step", "metadata.json")))
        scored_s = run_step_onnx(os.path.join(args.models, "journey_step", "model.onnx"), sl, sd_s.x, meta["hidden_size"])
        sel_rows = cart_rows(sl, sd_s, (*scored_s, scored[2]), os.path.join(args.select, "truth_carts.jsonl"))
        r["abandon"] = eval_abandon(rows, sel_rows, scored[2], args.target_precision)
        r["abandon"]["selection_run"] = os.path.basename(os.path.normpath(args.select))
        r["equal_timeliness"] = eval_equal_timeliness(args.models, hl, sd_h, scored[1], truth_carts)
    if args.only in (None, "attribution"):
        names = [n for n in sorted(os.listdir(args.models)) if n.startswith("attribution")
                 and os.path.exists(os.path.join(args.models, n, "model.onnx"))]
        r["attribution"] = eval_attribution(args.models, names, hl, args.heldout)
    r["seconds"] = round(time.time() - t0, 1)
    out_path = args.out or os.path.join(args.models, "evaluation.json")
    with open(out_path, "w") as f:
        json.dump(r, f, indent=2)
        f.write("\n")
    md = markdown(r) + "\n" + markdown_alerts(r)
    with open(os.path.splitext(out_path)[0] + ".md", "w") as f:
        f.write(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
