"""Shared by the training scripts (train.py, train_step.py): logging, metrics, ONNX export and its
checks against onnxruntime and tract, strict JSON. `VERSION` is set once per run by train.py's main
and stamped on every output."""
from __future__ import annotations

import json
import math
import time

import numpy as np
import torch

# Stamped on every output the models touch (`model_version`); set per run in train.py's main():
# --version, or the training date and a hash of the run (log, its size, seed, arguments), so a model
# trained on a user's stream never carries the shipped models' version.
VERSION = "unset"
OPSET = 17


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def split_customers(n_customers: int, seed: int, val_frac: float = 0.1):
    rng = np.random.default_rng(seed)
    is_val = rng.random(n_customers) < val_frac
    return is_val


def auc(y, s):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def logloss(y, p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean())


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def spearman(a, b):
    ra = np.argsort(np.argsort(a)).astype(float)
    rb = np.argsort(np.argsort(b)).astype(float)
    return float(np.corrcoef(ra, rb)[0, 1])


def export_onnx(module, args_t, path, input_names, output_names, dynamic_axes):
    torch.onnx.export(module, args_t, path, input_names=input_names, output_names=output_names,
                      dynamic_axes=dynamic_axes, opset_version=OPSET, dynamo=False, do_constant_folding=True)
    import onnx
    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    return sorted({n.op_type for n in m.graph.node}), m


def ort_run(path, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return [o.name for o in sess.get_outputs()], sess.run(None, feeds)


def tract_run_all(path, feeds_list):
    """Runs each feed dict (in input order) with tract's default runtime (optimised, symbolic batch).
    Returns (tract version, outputs per feed), or (None, None) if the tract package is missing."""
    try:
        import tract
    except ImportError:
        return None, None
    model = tract.onnx().load(path).into_model()
    run = tract.runtime_for_name("default").prepare(model)
    return tract.version(), [[o.to_numpy() for o in run.run(list(f.values()))] for f in feeds_list]


def _finite(o):
    """NaN / inf -> null, so the files are strict JSON (serde_json rejects NaN)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def write_json(path, obj):
    with open(path, "w") as f:
        json.dump(_finite(obj), f, indent=2, allow_nan=False)
        f.write("\n")
