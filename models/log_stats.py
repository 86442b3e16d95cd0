#!/usr/bin/env python3
"""Writes statistics of the training log into the step model's metadata: the reference input of
alert reasons (`explain`) and the distribution of every feature (`drift`).

    python models/log_stats.py --log PATH [--models models]

`train.py` runs this after exporting journey_step/; run it alone to add them to an existing step
model (it reads only the log, not the model).

An abandonment alert names the inputs that raised P(abandon) most (the processor's
`alerts/reasons.rs`): it sets one group of the latest event's features at a time (cart value,
items, checkout, the event, its channel, time of day, session, purchase history, tenure) to this
reference, reruns the step model, and reports how far P(abandon) falls. The reference is the mean
feature vector of the log's events after which a cart is open: "a typical cart event" of the world
the model was trained on. It is written as `explain.reference` (one number per feature, in
`feature_encoding.order`).

Drift: for each feature, bin edges (one bin per value for features with at most 10 distinct
values, else the deciles) and the share of the training events in each bin. The processor bins a
sample of live events the same way and reports a population-stability index per feature
(`touchstream_model_drift_psi`; `processor/src/inference/drift.rs`). The same for the model's
outputs (`scores`: deciles of P(purchase) after every event and of P(abandon) after events that
leave a cart open, from the exported model run over the log with ONNX Runtime).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsdata as D  # noqa: E402


def reference(sd: "D.StepData") -> list[float]:
    rows = sd.x[sd.cart_open]
    if len(rows) == 0:
        rows = sd.x
    return [round(float(v), 6) for v in rows.astype(np.float64).mean(axis=0)]


def write_reference(model_dir: str, sd: "D.StepData") -> list[float]:
    path = os.path.join(model_dir, "metadata.json")
    with open(path) as f:
        meta = json.load(f)
    ref = reference(sd)
    meta["explain"] = {
        "reference": ref,
        "rows": int(sd.cart_open.sum()),
        "note": "mean features of the training log's events after which a cart is open; alert reasons set one "
                "group of the latest event's features to these values and report how far P(abandon) falls",
    }
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    return ref


def feature_bins(col: np.ndarray) -> tuple[list[float], list[float]]:
    """Edges (bin i holds edges[i-1] <= x < edges[i]) and training shares of one feature."""
    values = np.unique(col[: min(len(col), 2_000_000)])
    if len(values) == 1:
        edges = values + 0.5  # a constant (a channel the log never saw): anything above it is new
    elif len(values) <= 10:
        edges = (values[:-1] + values[1:]) / 2.0
    else:
        qs = np.unique(np.quantile(col, np.linspace(0.1, 0.9, 9)))
        vmin = col.min()
        edges = qs[qs > vmin]
        if (col == vmin).mean() >= 0.05:  # a point mass at the minimum (0 = no value, no cart) is a bin of its own
            edges = np.concatenate([[vmin + 1e-6], edges])
    bins = np.searchsorted(edges, col, side="right")
    shares = np.bincount(bins, minlength=len(edges) + 1) / max(len(col), 1)
    # edges exactly as float32 sees them (an edge on a point mass, e.g. log1p(1)/2, must not move)
    return [float(np.float32(e)) for e in edges], [round(float(s), 6) for s in shares]


def score_bins(col: np.ndarray) -> tuple[list[float], list[float]]:
    """Deciles of a probability."""
    edges = np.unique(np.quantile(col, np.linspace(0.1, 0.9, 9)).astype(np.float32))
    bins = np.searchsorted(edges.astype(np.float64), col.astype(np.float32).astype(np.float64), side="right")
    shares = np.bincount(bins, minlength=len(edges) + 1) / max(len(col), 1)
    return [float(e) for e in edges], [round(float(s), 6) for s in shares]


def write_drift(model_dir: str, lg: "D.Log", sd: "D.StepData") -> None:
    path = os.path.join(model_dir, "metadata.json")
    with open(path) as f:
        meta = json.load(f)
    names = meta["feature_encoding"]["order"]
    features = []
    for j, name in enumerate(names):
        edges, shares = feature_bins(sd.x[:, j].astype(np.float64))
        features.append({"name": name, "edges": edges, "shares": shares})
    # the model's own outputs on the log (every customer's events in order, as the processor runs
    # it): P(purchase) after every event, P(abandon) after events that leave a cart open
    from evaluate import run_step_onnx
    out, _ = run_step_onnx(os.path.join(model_dir, "model.onnx"), lg, sd.x, meta["hidden_size"])
    scores = []
    for name, col in (("purchase_probability", out[:, 0]), ("abandonment_probability", out[sd.cart_open, 1])):
        edges, shares = score_bins(col)
        scores.append({"name": name, "edges": edges, "shares": shares})
    meta["drift"] = {
        "rows": int(sd.x.shape[0]),
        "features": features,
        "scores": scores,
        "psi_threshold": 0.2,
        "note": "per feature: bin edges (x < edges[0] is bin 0, edges[i-1] <= x < edges[i] bin i) and the share of the "
                "training log's events in each bin; a population-stability index above psi_threshold means retrain",
    }
    with open(path, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True, help="the training log (JSON lines, a file or a folder of them)")
    ap.add_argument("--models", default=os.path.dirname(os.path.abspath(__file__)), help="folder holding journey_step/")
    args = ap.parse_args(argv)
    lg = D.load_log(args.log)
    sd = D.step_features(lg)
    ref = write_reference(os.path.join(args.models, "journey_step"), sd)
    write_drift(os.path.join(args.models, "journey_step"), lg, sd)
    print(f"explain.reference ({len(ref)} features) from {int(sd.cart_open.sum())} cart events of {lg.n}")


if __name__ == "__main__":
    main()
