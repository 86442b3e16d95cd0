#!/usr/bin/env python3
"""Trains Touchstream's ONNX models from an event log (input contract, JSON lines).

    python models/train.py --log PATH [--out models] [--seed N]

PATH is a .jsonl file or a directory of .jsonl files (truth_*.jsonl of a simulator run are
ignored). Labels come from the log itself. Writes, under --out:
  journey_step/       GRU step model: P(purchase in 7 d), P(cart abandoned), expected 90-day revenue,
                      and P(cart abandoned) after 10 min .. 10 h of inactivity (abandon_checks.py)
  attribution/        the attribution model: by default (--attribution-method hazard) the additive-hazard
                      survival model fitted by EM (hazard_mta.py: per-touch effects that decay with the
                      touch's age, a customer-level baseline that also reads the customer's clicks
                      before their first purchase, no purchase-path exclusion); with
                      --attribution-method classifier the P(conversion) classifier of earlier versions
                      (--attribution-select: attention by default, or the lower validation log-loss)
  attribution_cnn/    classifier method: the other classifier (attribution_attention/ when the CNN ships);
                      hazard method with --with-classifiers: attribution_attention/ and attribution_cnn/
each with model.onnx, metadata.json and fixtures.json.
"""
from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsdata as D  # noqa: E402
import train_common as C  # noqa: E402
from train_common import (auc, export_onnx, log, logloss, ort_run, split_customers,  # noqa: E402
                          tract_run_all, write_json)
from train_step import export_step, train_step  # noqa: E402

# =============================================================================================
# Attribution models


class TouchEncoder(nn.Module):
    def __init__(self, d: int = 32):
        super().__init__()
        self.ch = nn.Embedding(len(D.CHANNELS), 16)
        self.et = nn.Embedding(len(D.EVENT_TYPES), 8)
        self.cb = nn.Embedding(D.CAMPAIGN_BUCKETS, 8)
        self.mlp = nn.Sequential(nn.Linear(16 + 8 + 8 + 2, d), nn.ReLU(), nn.Linear(d, d), nn.ReLU())

    def forward(self, channel, event_type, campaign_bucket, age, position):
        z = torch.cat([self.ch(channel), self.et(event_type), self.cb(campaign_bucket),
                       age.unsqueeze(-1), position.unsqueeze(-1)], dim=-1)
        return self.mlp(z)


def masked_softmax(scores, mask):
    s = scores + (mask - 1.0) * 1e4
    s = s - s.max(dim=-1, keepdim=True).values
    w = torch.exp(s) * mask
    return w / (w.sum(dim=-1, keepdim=True) + 1e-9)


class AttentionAttribution(nn.Module):
    """DNAMTA-like: touch embeddings, additive (Bahdanau) attention pooling, plus an additive
    per-touch intensity path (sum of softplus terms, like a hazard), then an MLP."""
    kind = "attention"

    def __init__(self, d: int = 32):
        super().__init__()
        self.enc = TouchEncoder(d)
        self.att_w = nn.Linear(d, d)
        self.att_v = nn.Linear(d, 1, bias=False)
        self.intensity = nn.Linear(d, 1)
        self.out = nn.Sequential(nn.Linear(d + 2, d), nn.ReLU(), nn.Linear(d, 1))

    def forward(self, channel, event_type, campaign_bucket, age, position, mask):
        e = self.enc(channel, event_type, campaign_bucket, age, position)
        a = masked_softmax(self.att_v(torch.tanh(self.att_w(e))).squeeze(-1), mask)
        ctx = (a.unsqueeze(-1) * e).sum(dim=1)
        lam = (Fn.softplus(self.intensity(e)).squeeze(-1) * mask).sum(dim=1, keepdim=True)
        n = mask.sum(dim=1, keepdim=True)
        logit = self.out(torch.cat([ctx, torch.log1p(lam), torch.log1p(n)], dim=-1))
        return torch.sigmoid(logit), a


class CnnAttribution(nn.Module):
    """1D CNN over the journey; attention output = softmax of a per-position saliency score over the mask."""
    kind = "cnn"

    def __init__(self, d: int = 32):
        super().__init__()
        self.enc = TouchEncoder(d)
        self.c1 = nn.Conv1d(d, d, 5, padding=2)
        self.c2 = nn.Conv1d(d, d, 5, padding=2)
        self.score = nn.Linear(d, 1)
        self.out = nn.Sequential(nn.Linear(2 * d + 1, d), nn.ReLU(), nn.Linear(d, 1))

    def forward(self, channel, event_type, campaign_bucket, age, position, mask):
        e = self.enc(channel, event_type, campaign_bucket, age, position) * mask.unsqueeze(-1)
        h = torch.relu(self.c1(e.transpose(1, 2)))
        h = torch.relu(self.c2(h)).transpose(1, 2) * mask.unsqueeze(-1)
        a = masked_softmax(self.score(h).squeeze(-1), mask)
        att_pool = (a.unsqueeze(-1) * h).sum(dim=1)
        max_pool = (h + (mask.unsqueeze(-1) - 1.0) * 1e4).max(dim=1).values * (mask.sum(1, keepdim=True) > 0).float()
        n = mask.sum(dim=1, keepdim=True)
        logit = self.out(torch.cat([att_pool, max_pool, torch.log1p(n)], dim=-1))
        return torch.sigmoid(logit), a


ATTR_INPUTS = ["channel", "event_type", "campaign_bucket", "age", "position", "mask"]


def build_attr_dataset(lg: D.Log, seed: int, path_ms: int, context: bool = True, neg_per_day: float = 0.05, L: int = D.ATTR_L):
    """Positives: journeys ending in a purchase. Negatives: journeys cut at random times (uniform in
    each customer's span) with no purchase in the following 7 days. Touchpoints in the last
    path_ms before the end are left out (the purchase path)."""
    rng = np.random.default_rng(seed + 7)
    tps_all, purch_all = D.customer_touch_index(lg)
    end = lg.log_end
    rows, ys, custs = [], [], []
    ts = lg.ts
    for c in range(len(lg.customer_ids)):
        tps, pur = tps_all[c], purch_all[c]
        if len(tps) == 0:
            continue
        for p in pur:
            j, prev = D.journey_at(lg, tps, pur, int(ts[p]), at_purchase=p, with_prev=True)
            r = D.journey_arrays(lg, j, int(ts[p]), L, path_ms, prev if context else None)
            if len(r[6]) > 0:
                rows.append(r[:6]); ys.append(1.0); custs.append(c)
        s, e = int(ts[lg.starts[c]]), int(ts[lg.ends[c] - 1])
        span_days = (e - s) / D.DAY_MS
        k = rng.poisson(max(span_days, 0.5) * neg_per_day)
        pts = ts[pur]
        for t in rng.uniform(s, e + 1, size=k).astype(np.int64):
            if t + D.PURCHASE_HORIZON_MS > end:
                continue
            if ((pts > t) & (pts <= t + D.PURCHASE_HORIZON_MS)).any():
                continue
            j, prev = D.journey_at(lg, tps, pur, int(t), with_prev=True)
            r = D.journey_arrays(lg, j, int(t), L, path_ms, prev if context else None)
            if len(r[6]) > 0:
                rows.append(r[:6]); ys.append(0.0); custs.append(c)
    if not rows or len(set(ys)) < 2:
        raise SystemExit("attribution: need both converting and non-converting journeys (is the log longer than 7 days, "
                         "with purchases and touchpoints?)")
    cols = [np.stack([r[i] for r in rows]) for i in range(6)]
    return cols, np.asarray(ys, dtype=np.float32), np.asarray(custs)


def to_tensors(cols, idx=None):
    if idx is not None:
        cols = [c[idx] for c in cols]
    return [torch.from_numpy(c) for c in cols]


def train_attr(kind: str, cols, y, is_val_row, args):
    torch.manual_seed(args.seed)
    model = AttentionAttribution() if kind == "attention" else CnnAttribution()
    opt = torch.optim.Adam(model.parameters(), lr=args.attr_lr, weight_decay=1e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.attr_epochs, eta_min=args.attr_lr / 10)
    tr = np.flatnonzero(~is_val_row)
    va = np.flatnonzero(is_val_row)
    rng = np.random.default_rng(args.seed)
    Xva = to_tensors(cols, va)
    best = (float("inf"), None, None)
    history = []
    for epoch in range(args.attr_epochs):
        t0 = time.time()
        model.train()
        perm = rng.permutation(tr)
        for i in range(0, len(perm), args.attr_batch):
            b = perm[i:i + args.attr_batch]
            p, _ = model(*to_tensors(cols, b))
            loss = Fn.binary_cross_entropy(p.squeeze(-1).clamp(1e-6, 1 - 1e-6), torch.from_numpy(y[b]))
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        with torch.no_grad():
            pv = model(*Xva)[0].squeeze(-1).numpy()
        m = {"epoch": epoch + 1, "val_auc": auc(y[va], pv), "val_logloss": logloss(y[va], pv),
             "seconds": round(time.time() - t0, 1)}
        history.append(m)
        log(f"attribution[{kind}] epoch {epoch + 1}: val_auc={m['val_auc']:.4f} val_logloss={m['val_logloss']:.4f} ({m['seconds']} s)")
        if m["val_logloss"] < best[0] or best[1] is None:
            best = (m["val_logloss"], {k: v.clone() for k, v in model.state_dict().items()}, m)
    model.load_state_dict(best[1])
    model.eval()
    return model, best[2], history


# =============================================================================================
# Export, metadata, fixtures



def attr_feature_doc(path_ms, context):
    return {
        "L": D.ATTR_L,
        "channel_vocabulary": {n: i for i, n in enumerate(D.CHANNELS)},
        "channel_unknown": "other (index 11)",
        "event_type_vocabulary": {n: i for i, n in enumerate(D.EVENT_TYPES)},
        "event_type_unknown": "other (index 11)",
        "campaign_bucket": f"0 = no campaign (and padding); else 1 + (FNV-1a 32-bit of the campaign's UTF-8 bytes) mod {D.CAMPAIGN_BUCKETS - 1} "
                           "(offset basis 0x811C9DC5, prime 0x01000193)",
        "age": f"log1p(hours from the touchpoint to the end of the journey (the conversion ts)) / {D.AGE_LOG_SCALE:.10f} (= log1p(720))",
        "position": "(i + 0.5) / k for the i-th (0-based, oldest first) of the k touchpoints given to the model; 0 on padding",
        "mask": "1.0 for the previous-purchase token and the k touchpoints, 0.0 for padding at the end",
        "journey": "the customer's touchpoints (impression, click, email_open, email_click with a channel) after the "
                   "previous purchase (touchpoints at or before it are spent), at or before the conversion ts, within "
                   "30 days; oldest first. " + (
                       f"Touchpoints in the last {path_ms // 60000} minutes before the conversion are the purchase path "
                       "(navigational brand clicks, coupon clicks): they are not given to the model and get no deep "
                       "credit. Of the rest the newest L are kept." if path_ms else
                       "No purchase-path exclusion: every touchpoint is given to the model (the newest L are kept)."),
        "deep_credit": "credit_i = max(0, P(full) - P(journey with touchpoint i masked)) normalised to sum 1 over the "
                       "touchpoints; if all are 0 (or no touchpoint is older than the purchase path) fall back to time "
                       "decay (7-day half-life) over the whole journey",
        "purchase_path_minutes": path_ms // 60000,
        "previous_purchase_token": context,
        "previous_purchase_token_encoding": (
            "when the customer had a purchase before the journey (the one that spent the older touchpoints, at any "
            "age), position 0 holds a context token: channel = other (11), event_type = purchase (10), "
            f"campaign_bucket = 0, age = min(log1p(hours since that purchase) / log1p(720), {D.PREV_PURCHASE_AGE_CAP}), "
            "position = 0, mask = 1; the touchpoints follow from position 1 (then at most L-1 of them). It is "
            "never masked for the removal effects and never credited." if context else "not used"),
    }


def export_attr(model, out_dir, cols, y, is_val, metrics, history, data_desc, path_ms, context, name, other_metrics,
                extra=None):
    os.makedirs(out_dir, exist_ok=True)
    L = D.ATTR_L
    path = os.path.join(out_dir, "model.onnx")
    ex_in = tuple(torch.from_numpy(c[:2]) for c in cols)
    ops, _ = export_onnx(model, ex_in, path, ATTR_INPUTS, ["p_conversion", "attention"],
                         {**{n: {0: "batch"} for n in ATTR_INPUTS}, "p_conversion": {0: "batch"}, "attention": {0: "batch"}})
    rng = np.random.default_rng(3)
    pos = rng.choice(np.flatnonzero((y == 1) & is_val), 4, replace=False)
    neg = rng.choice(np.flatnonzero((y == 0) & is_val), 4, replace=False)
    idx = np.concatenate([pos, neg])
    feeds = {n: cols[i][idx] for i, n in enumerate(ATTR_INPUTS)}
    with torch.no_grad():
        tp, ta = model(*[torch.from_numpy(feeds[n]) for n in ATTR_INPUTS])
    _, (op, oa) = ort_run(path, feeds)
    diff = max(float(np.abs(tp.numpy() - op).max()), float(np.abs(ta.numpy() - oa).max()))
    fixtures = []
    for r in range(len(idx)):
        fixtures.append({
            "label": float(y[idx[r]]),
            "inputs": {n: feeds[n][r:r + 1].tolist() for n in ATTR_INPUTS},
            "torch": {"p_conversion": tp[r:r + 1].numpy().tolist(), "attention": ta[r:r + 1].numpy().tolist()},
            "onnxruntime": {"p_conversion": op[r:r + 1].tolist(), "attention": oa[r:r + 1].tolist()},
            "max_abs_diff": max(float(np.abs(tp[r].numpy() - op[r]).max()), float(np.abs(ta[r].numpy() - oa[r]).max())),
        })
    tv, touts = tract_run_all(path, [{n: feeds[n][r:r + 1] for n in ATTR_INPUTS} for r in range(len(idx))])
    tract_diff = None
    if tv:
        tract_diff = max(max(float(np.abs(to[0] - op[r:r + 1]).max()), float(np.abs(to[1] - oa[r:r + 1]).max()))
                         for r, to in enumerate(touts))
    write_json(os.path.join(out_dir, "fixtures.json"), {
        "model": name, "version": C.VERSION, "tract_version": tv, "tract_max_abs_diff_vs_onnxruntime": tract_diff,
        "description": "4 converting and 4 non-converting validation journeys, each batch 1 (run together as batch 8 "
                       "for the max_abs_diff). Tolerance: 1e-4 absolute.",
        "max_abs_diff": diff, "fixtures": fixtures})
    extra = extra or {}
    p_note = extra.pop("p_conversion_note", "P(the journey ends in a purchase) against journeys cut at random times "
                                            "with no purchase in the next 7 days")
    att_note = extra.pop("attention_note", None)
    enc_extra = extra.pop("feature_encoding", {})
    write_json(os.path.join(out_dir, "metadata.json"), {
        "name": name, "version": C.VERSION, "architecture": model.kind, "framework": f"pytorch {torch.__version__}",
        "onnx": {"opset": C.OPSET, "exporter": "torch.onnx.export(dynamo=False)", "ops": ops, "size_bytes": os.path.getsize(path)},
        "inputs": [{"name": n, "dtype": "int64" if n in ("channel", "event_type", "campaign_bucket") else "float32",
                    "shape": ["batch", L]} for n in ATTR_INPUTS],
        "outputs": [
            {"name": "p_conversion", "dtype": "float32", "shape": ["batch", 1], "note": p_note},
            {"name": "attention", "dtype": "float32", "shape": ["batch", L],
             "note": att_note or (("additive attention weights" if model.kind == "attention" else "softmax of a per-position saliency score")
                                  + " normalised over the mask (0 on padding); diagnostic, the deep credit uses removal effects")},
        ],
        "feature_encoding": {**attr_feature_doc(path_ms, context), **enc_extra},
        "training": {**data_desc, "metrics_validation": metrics, "history": history, "compared_with": other_metrics},
        "parity": {"fixtures_max_abs_diff": diff, "tract_version": tv, "tract_max_abs_diff_vs_onnxruntime": tract_diff},
        **extra,
    })
    return ops, diff


# =============================================================================================
# Additive-hazard attribution (hazard_mta.py)


def train_hazard(lg: D.Log, args, data_desc):
    import hazard_mta as H
    t0 = time.time()
    data = H.build(lg, controls_per_day=args.hazard_controls_per_day, seed=args.seed,
                   date_at_visit=args.hazard_dating == "visit", post_visit_hours=args.hazard_post_visit_hours)
    log(f"hazard data: {len(data['e']['cust'])} conversions, {len(data['c']['cust'])} control points, "
        f"{data['e']['X'].nnz + data['c']['X'].nnz} design entries ({data['build_seconds']:.0f} s)")
    if args.hazard_sensors != "off":
        data["sensor"] = H.sensor_counts(lg, data)
        if args.hazard_sensors == "timed":
            data["sensor_rows"] = H.sensor_touch_rows(lg, data, data["sensor"])
    res = H.fit(data, iters=args.hazard_iters, use_multipliers=not args.hazard_no_multipliers,
                frailty=not args.hazard_no_frailty, covariates=args.hazard_covariates, log=log,
                sensors=args.hazard_sensors != "off", sensor_states=False,
                sensor_clicks_only=args.hazard_sensors == "clicks",
                sensor_standalone=args.hazard_sensors == "standalone",
                sensor_timing="delivered" if args.hazard_sensors == "timed" else False)
    sensors_learned = {"c_k": res.get("x_sensors"), "kappa": res.get("x_kappa")}
    if sensors_learned["c_k"]:
        log(f"sensors: c_k {sensors_learned['c_k']}" + (f", timing kappa {sensors_learned['kappa']}"
                                                         if sensors_learned["kappa"] else ""))
    res = {k: v for k, v in res.items() if not k.startswith(("x_", "S_"))}
    fit_s = time.time() - t0
    S = res.pop("S")
    model = H.torch_module(S, res["mu"])
    model.eval()
    path_ms = args.hazard_path_minutes * 60_000
    # journeys of the log (as the classifiers see them) for the fixtures and a validation AUC
    cols, y, custs = build_attr_dataset(lg, args.seed, path_ms, context=False)
    is_val = split_customers(len(lg.customer_ids), args.seed)[custs]
    with torch.no_grad():
        pv = model(*to_tensors(cols, np.flatnonzero(is_val)))[0].squeeze(-1).numpy()
    m = {"val_auc": auc(y[is_val], pv), "val_logloss": logloss(y[is_val], pv), "em": res,
         "note": "AUC / log-loss of P(conversion) on the classifiers' validation journeys, for information only: "
                 "the model is fitted for its effects, not to classify journeys (its P ignores the customer's baseline)"}
    effects_doc = {}
    for g in np.flatnonzero(S.sum(1) > 0):
        ch, et = D.CHANNELS[g // H.NE], D.EVENT_TYPES[g % H.NE]
        effects_doc[f"{ch}/{et}"] = {f"{h:g}h": float(v) for h, v in zip(H.KNOT_HOURS, S[g])}
    log("hazard effects (conversions per day at age " + ", ".join(f"{h:g}h" for h in H.KNOT_HOURS) + "):")
    for k, v in effects_doc.items():
        log(f"  {k:28s} " + " ".join(f"{x:.5f}" for x in v.values()))
    adesc = {**data_desc, "method": "additive hazard with customer frailty, EM (models/hazard_mta.py)",
             "conversions": res["events"], "control_points": res["controls"],
             "controls_per_day": args.hazard_controls_per_day, "dating": args.hazard_dating,
             "frailty": not args.hazard_no_frailty, "covariates": args.hazard_covariates,
             "multipliers": not args.hazard_no_multipliers, "sensors": args.hazard_sensors,
             "sensors_learned": sensors_learned,
             "post_visit_hours": data.get("post_visit_hours", args.hazard_post_visit_hours),
             "fit_seconds": round(fit_s, 1)}
    extra = {
        # deep credit leaves P(none)/P(all) of each conversion to the customer's baseline: a
        # conversion the touches explain little of hands little credit to them
        "baseline_share": True,
        "p_conversion_note": "1 - exp(-(mu + sum_i e_i) * 1 day): P(a purchase decision within a day) at the journey's "
                             "modelled hazard without the customer's own propensity (mu = the mean baseline)",
        "attention_note": "each touchpoint's share of the modelled incremental hazard, e_i / sum e (0 on padding); the "
                          "deep credit (removal effects) is proportional to exp(e_i) - 1, i.e. to e_i to first order",
        "feature_encoding": {
            "deep_credit": "credit_i = max(0, P(full) - P(journey with touchpoint i masked)) normalised over the "
                           "touchpoints (= (exp(e_i) - 1) / sum_j (exp(e_j) - 1) for this model), times the journey's "
                           "incremental share 1 - P(no touchpoint) / P(full) (baseline_share); the rest is the customer's "
                           "baseline (deep_baseline on the conversion)",
            "model": "additive hazard: e_i = sum_k table[channel_i * 12 + event_type_i, k] * hat_k(age_i), hat_k the "
                     "piecewise-linear hat functions at the knots below (in the age encoding); campaign_bucket and "
                     "position are not used",
            "knots_hours": H.KNOT_HOURS,
            "knots_age": [float(x) for x in H.KNOTS_U],
            "effects_per_day": effects_doc,
            "baseline_per_day": res["mu"],
        },
    }
    name = "attribution"
    ops, diff = export_attr(model, os.path.join(args.out, name), cols, y, is_val, m, [], adesc, path_ms, False, name,
                            {}, extra=extra)
    log(f"{name} (additive hazard) exported (ops {ops}, parity {diff:.2e}) in {time.time() - t0:.0f} s")
    return {name: {"architecture": "additive_hazard", "metrics": m, "ops": ops, "parity": diff,
                   "seconds": round(time.time() - t0, 1)}}


# =============================================================================================


def post_visit_hours(v: str):
    """--hazard-post-visit-hours: hours (>= 0) or "auto"."""
    if v == "auto":
        return v
    x = float(v)
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"{v!r}: hours >= 0, or auto")
    return x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True, help="event log: a .jsonl file or a directory of .jsonl files")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)), help="output directory (default: models/)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--step-epochs", type=int, default=6)
    ap.add_argument("--step-batch", type=int, default=64)
    ap.add_argument("--step-lr", type=float, default=3e-3)
    ap.add_argument("--bptt", type=int, default=64, help="truncated BPTT length (events)")
    ap.add_argument("--attr-epochs", type=int, default=10)
    ap.add_argument("--attr-batch", type=int, default=256)
    ap.add_argument("--attr-lr", type=float, default=2e-3)
    ap.add_argument("--purchase-path-minutes", type=int, default=30,
                    help="touchpoints this close before a conversion are its purchase path, not inputs (0 = off)")
    ap.add_argument("--attribution-method", choices=["hazard", "classifier"], default="hazard",
                    help="hazard (default): additive-hazard survival model with customer frailty fitted by EM over the "
                         "whole observation time (hazard_mta.py), shipped as attribution/; classifier: the P(conversion) "
                         "classifiers (attention, CNN) of earlier versions")
    ap.add_argument("--with-classifiers", action="store_true",
                    help="with --attribution-method hazard: also train the classifiers, written as attribution_attention/ "
                         "and attribution_cnn/ (for comparison)")
    ap.add_argument("--hazard-controls-per-day", type=float, default=2.0, help="case-base control points per customer-day")
    ap.add_argument("--hazard-iters", type=int, default=300, help="EM iterations (stops earlier when converged)")
    ap.add_argument("--hazard-dating", choices=["visit", "purchase"], default="visit",
                    help="date each conversion at the start of its buying visit (default) or at the purchase (ablation)")
    ap.add_argument("--hazard-no-frailty", action="store_true",
                    help="ablation: no gamma frailty (the baseline is the covariate model's mean only)")
    ap.add_argument("--hazard-covariates", choices=["own", "none", "all"], default="own",
                    help="customer-level covariates of the baseline: own = the rate of visits the customer made on "
                         "their own (default); none; all = own + the touch rate of every channel (ablation)")
    ap.add_argument("--hazard-sensors", choices=["timed", "clicks", "standalone", "all", "off"], default="timed",
                    help="timed (default): the customer's touches before their first purchase decision are evidence of "
                         "their baseline: each group's count is modelled as a base rate plus a part that follows "
                         "the customer's hazard, with a shared gamma frailty (hazard_mta.sensor_counts, "
                         "fit(sensors=True)); this keeps intent-driven channels from being credited with the "
                         "customer's propensity. Clicks' part is learned from their counts; impressions' and e-mail "
                         "opens' from their timing within each customer (hazard_mta.timing_kappa: a delivery that "
                         "follows intent arrives when the modelled hazard is high), because their counts also follow "
                         "how much was delivered. clicks: clicks only (the model before this). standalone: only clicks "
                         "that no impression / e-mail open of the same channel preceded within 30 minutes. all: "
                         "impressions and opens too, by their counts (ablation: slow channels lose credit); off: "
                         "ablation, no sensors")
    ap.add_argument("--hazard-post-visit-hours", type=post_visit_hours, default="auto",
                    help="impressions and e-mail opens delivered within this many hours after one of the customer's "
                         "site events (retargeting, reminders: delivery triggered by the intent the visit reveals) get "
                         "kernels of their own, fitted and never credited; the credited kernels come from the other "
                         "delivered touches (hazard_mta.build(post_visit_hours)). auto: a window per channel read from "
                         "the log (how long its delivery rate stays above 1.5x its rate far from visits; "
                         "hazard_mta.post_visit_windows; the default). 0 = off (ablation; see models/README.md, \"Delivery "
                         "that follows visits\")")
    ap.add_argument("--hazard-no-multipliers", action="store_true", help="ablation: no cart / time-of-day / post-purchase multipliers")
    ap.add_argument("--hazard-path-minutes", type=int, default=0,
                    help="ablation: a purchase-path exclusion for the hazard model too (0 = none, the default)")
    ap.add_argument("--attribution-select", choices=["attention", "cnn", "logloss"], default="attention",
                    help="classifiers: which one ships as attribution/ (logloss = lower validation log-loss)")
    ap.add_argument("--no-context", action="store_true", help="no previous-purchase token in the attribution input")
    ap.add_argument("--version", default=None,
                    help="the models' version (outputs' model_version); default: <UTC date>-<hash of this run>")
    ap.add_argument("--skip-step", action="store_true", help="only the attribution models")
    ap.add_argument("--skip-attr", action="store_true", help="only the step model")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    t_all = time.time()
    log(f"reading {args.log}")
    lg = D.load_log(args.log)
    log(f"{lg.n} events, {len(lg.customer_ids)} customers, {(lg.log_end - int(lg.ts.min())) / D.DAY_MS:.0f} days")
    # the log's last two path parts (e.g. "<world>/train"): descriptive, and no machine's path
    data_desc = {"log": "/".join(os.path.normpath(os.path.abspath(args.log)).split(os.sep)[-2:]), "events": int(lg.n),
                 "customers": len(lg.customer_ids), "purchases": int((lg.etype == D.PURCHASE).sum()),
                 "seed": args.seed, "trained_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    run_id = json.dumps({k: v for k, v in data_desc.items() if k != "trained_at"} | {"args": sorted(vars(args).items(), key=str)},
                        sort_keys=True, default=str)
    C.VERSION = args.version or (dt.datetime.now(dt.timezone.utc).strftime("%Y.%m.%d") + "-"
                               + hashlib.sha256(run_id.encode()).hexdigest()[:8])
    log(f"models version {C.VERSION}")
    summary = {}
    if not args.skip_step:
        t0 = time.time()
        sd = D.step_features(lg)
        labels = D.step_labels(lg, sd)
        model, metrics, history, counts = train_step(lg, sd, labels, args, args.hidden)
        desc = {**data_desc, **counts, "bptt": args.bptt, "epochs": args.step_epochs,
                "labels": "from the log: purchases within 7 d / 90 d after each event (events closer than the horizon "
                          "to the end of the log are not labelled); abandonment = no purchase within 24 h, labelled "
                          "at events after which the cart is open, the customer is inactive >= 10 min, and the cart "
                          "had no 30-min inactivity before"}
        ops, diff = export_step(model, os.path.join(args.out, "journey_step"), lg, sd, metrics, history, desc, args.hidden)
        # the inactivity re-check head, appended to the exported graph (abandon_checks.py)
        from abandon_checks import add_checks
        add_checks(os.path.join(args.out, "journey_step"), lg, sd, seed=args.seed)
        # the alert policy per target delay, chosen on the validation customers (alert_policy.py;
        # the step model and the head are fitted on the others), outcomes from the log itself (what
        # a user's exported log gives; a simulator's truth file beside it is not read)
        from alert_policy import fit_policies
        fit_policies(os.path.join(args.out, "journey_step"), lg, sd, keep=split_customers(len(lg.customer_ids), args.seed))
        # what alert reasons compare a customer's inputs with, and the features' distribution for
        # drift (log_stats.py)
        from log_stats import write_drift, write_reference
        write_reference(os.path.join(args.out, "journey_step"), sd)
        write_drift(os.path.join(args.out, "journey_step"), lg, sd)
        summary["journey_step"] = {"metrics": metrics, "ops": ops, "parity": diff, "seconds": round(time.time() - t0, 1)}
        log(f"journey_step exported (ops {ops}, parity {diff:.2e}) in {time.time() - t0:.0f} s")
    if not args.skip_attr and args.attribution_method == "hazard":
        summary.update(train_hazard(lg, args, data_desc))
    if not args.skip_attr and (args.attribution_method == "classifier" or args.with_classifiers):
        t0 = time.time()
        path_ms = args.purchase_path_minutes * 60_000
        cols, y, custs = build_attr_dataset(lg, args.seed, path_ms, context=not args.no_context)
        is_val = split_customers(len(lg.customer_ids), args.seed)[custs]
        log(f"attribution data: {int(y.sum())} converting, {int((1 - y).sum())} non-converting journeys ({time.time() - t0:.0f} s)")
        adesc = {**data_desc, "positives": int(y.sum()), "negatives": int((1 - y).sum()),
                 "validation_rows": int(is_val.sum()), "epochs": args.attr_epochs,
                 "examples": "positives: the journey of every purchase; negatives: journeys cut at random times "
                             "(Poisson, 0.05 per day of each customer's span) with no purchase in the following 7 days; "
                             f"touchpoints in the last {args.purchase_path_minutes} min before the end left out"}
        res = {}
        for kind in ("attention", "cnn"):
            res[kind] = train_attr(kind, cols, y, is_val, args)
        by_loss = min(res, key=lambda k: res[k][1]["val_logloss"])
        winner = by_loss if args.attribution_select == "logloss" else args.attribution_select
        loser = "cnn" if winner == "attention" else "attention"
        log(f"attribution: lower validation log-loss: {by_loss}; shipped as attribution/: {winner} (--attribution-select {args.attribution_select})")
        adesc["selection"] = {"rule": args.attribution_select, "lower_validation_logloss": by_loss, "shipped": winner,
                              "why": "the two are within 0.001 validation log-loss; on the truth of a separate selection run "
                                     "(simulator seed 777) the attention model's deep credit has the lower channel-share "
                                     "error (models/README.md), so attention ships by default"}
        names = ((winner, "attribution"), (loser, f"attribution_{loser}")) if args.attribution_method == "classifier" \
            else (("attention", "attribution_attention"), ("cnn", "attribution_cnn"))
        for kind, name in names:
            model, m, hist = res[kind]
            other = {"architecture": (loser if kind == winner else winner),
                     **res[loser if kind == winner else winner][1]}
            ops, diff = export_attr(model, os.path.join(args.out, name), cols, y, is_val, {**m, "selected": kind == winner},
                                    hist, adesc, path_ms, not args.no_context, name, other)
            summary[name] = {"architecture": kind, "metrics": m, "ops": ops, "parity": diff}
            log(f"{name} ({kind}) exported (ops {ops}, parity {diff:.2e})")
        stale = os.path.join(args.out, f"attribution_{winner}")
        if args.attribution_method == "classifier" and os.path.isdir(stale):
            log(f"note: {stale} is from an earlier run where {winner} lost; remove it")
        summary["attribution_seconds"] = round(time.time() - t0, 1)
    summary["total_seconds"] = round(time.time() - t_all, 1)
    log(f"done in {summary['total_seconds']:.0f} s")
    print(json.dumps(summary, indent=2, default=float))


if __name__ == "__main__":
    main()
