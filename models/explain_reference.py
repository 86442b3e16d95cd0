#!/usr/bin/env python3
"""Writes the reference input of the step model's alert reasons into its metadata.

    python models/explain_reference.py --log PATH [--models models]

`train.py` runs this after exporting journey_step/; run it alone to add the reference to an
existing step model (it reads only the log, not the model).

An abandonment alert names the inputs that raised P(abandon) most (the processor's
`alerts/reasons.rs`): it sets one group of the latest event's features at a time (cart value,
items, checkout, the event, its channel, time of day, session, purchase history, tenure) to this
reference, reruns the step model, and reports how far P(abandon) falls. The reference is the mean
feature vector of the log's events after which a cart is open: "a typical cart event" of the world
the model was trained on. It is written as `explain.reference` (one number per feature, in
`feature_encoding.order`).
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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", required=True, help="the training log (JSON lines, a file or a folder of them)")
    ap.add_argument("--models", default=os.path.dirname(os.path.abspath(__file__)), help="folder holding journey_step/")
    args = ap.parse_args(argv)
    lg = D.load_log(args.log)
    sd = D.step_features(lg)
    ref = write_reference(os.path.join(args.models, "journey_step"), sd)
    print(f"explain.reference ({len(ref)} features) from {int(sd.cart_open.sum())} cart events of {lg.n}")


if __name__ == "__main__":
    main()
