#!/usr/bin/env python3
"""Adds inactivity re-checks to an exported journey step model.

    python models/abandon_checks.py --log PATH [--models models]

`train.py` runs this after exporting journey_step/ (so the one training command still does
everything); run it alone to refit the re-check head of an existing step model.

The step model's `p_abandon` is read once, 10 minutes after the customer's latest event. Whether a
customer who has been gone for 10 minutes still buys within a day is hard to tell; whether one who
has been gone for 4 hours does is easier, and the answer depends on who the customer is. This head
gives, for every event, P(no purchase within 24 h after it | the cart is open and the customer stays
inactive for m minutes) for each m in CHECKS_MINUTES, so the processor can re-check an idle cart
as the inactivity grows (no extra inference at check time: the probabilities are computed with
the event and stored in the customer's state).

The head is a logistic layer on [hidden_out, features, the three pre-activations of the step
model's heads], output `p_abandon_after` [batch, len(CHECKS_MINUTES)]. It is fitted on the log with
the step model frozen, one masked binary cross-entropy per check (a row counts for check m when
the cart is open after the event and the customer's next event is at least m minutes later), and
then folded into the step model's two head layers (see `fold_head`): the graph gains one Slice and
one Sigmoid, no matrix op, and the other outputs keep their values (checked on the fixtures).
`--head-hidden N` (a ReLU layer of N units) or another `--head-input` appends a separate head
instead (Concat, Gemm, ..., Sigmoid), which costs tract more per call.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tsdata as D  # noqa: E402

CHECKS_MINUTES = [10, 20, 30, 45, 60, 90, 120, 180, 240, 360, 480, 600]
OUTPUT = "p_abandon_after"
PRE = "/head/head.2/Gemm_output_0"  # the step model's three head pre-activations
# what the head reads: "all" = [hidden_out, features, the three pre-activations]; "concat" =
# [hidden_out, features] (the step heads' own input tensor); "relu" = the step heads' hidden layer
INPUTS = {"all": ["hidden_out", "features", PRE], "concat": ["/Concat_output_0"], "relu": ["/head/head.1/Relu_output_0"]}
MIN_MS = 60_000
HIDDEN = 0  # linear; 64 hidden units scored 0.5 points of F1 better but made the step model 1.5x slower


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def _exposing_session(model_path: str, names: list[str]):
    """An ONNX Runtime session of the model with the intermediate tensors `names` as extra outputs
    (the graph inputs among them are read from the feeds instead)."""
    import onnx
    m = onnx.load(model_path)
    have = {o.name for o in m.graph.output} | {i.name for i in m.graph.input}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, None))
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "m.onnx")
        onnx.save(m, p)
        return _session(p)


def _side_by_side(sess, feeds, names):
    """The tensors `names` (outputs of `sess`, or feeds) for one feed, side by side."""
    fetch = [n for n in names if n not in feeds]
    got = dict(zip(fetch, sess.run(fetch, feeds)))
    return np.hstack([feeds[n] if n in feeds else got[n] for n in names])


def head_inputs(model_path: str, lg: D.Log, sd: D.StepData, rows: np.ndarray, names: list[str]) -> np.ndarray:
    """The tensors `names` after each event in `rows`, side by side (all customers stepped in
    parallel with ONNX Runtime, the step model exposing its intermediate tensors)."""
    sess = _exposing_session(model_path, names)
    hidden = next(int(o.shape[1]) for o in sess.get_outputs() if o.name == "hidden_out")
    out_names = [o.name for o in sess.get_outputs()]
    i_h = out_names.index("hidden_out")
    pos = np.full(lg.n, -1, dtype=np.int64)
    pos[rows] = np.arange(len(rows))
    X = None
    lens = lg.ends - lg.starts
    order = np.argsort(-lens, kind="stable")
    starts = lg.starts[order]
    h = np.zeros((len(order), hidden), dtype=np.float32)
    for t in range(int(lens.max())):
        k = int((lens[order] > t).sum())
        idx = starts[:k] + t
        out = sess.run(None, {"features": sd.x[idx], "hidden_in": h[:k]})
        h[:k] = out[i_h]
        sel = pos[idx] >= 0
        if sel.any():
            parts = [sd.x[idx[sel]] if n == "features" else out[out_names.index(n)][sel] for n in names]
            v = np.hstack(parts)
            if X is None:
                X = np.zeros((len(rows), v.shape[1]), dtype=np.float32)
            X[pos[idx[sel]]] = v
    return X


class Head(nn.Module):
    """Logits of the checks: linear (hidden = 0) or one ReLU layer."""

    def __init__(self, n_in: int, k: int, hidden: int = HIDDEN):
        super().__init__()
        self.hidden = hidden
        if hidden:
            self.l1 = nn.Linear(n_in, hidden)
            self.l2 = nn.Linear(hidden, k)
        else:
            self.l2 = nn.Linear(n_in, k)

    def forward(self, x):
        return self.l2(torch.relu(self.l1(x)) if self.hidden else x)


def fit(X, y, M, is_val, seed: int, epochs: int, hidden: int = HIDDEN):
    torch.manual_seed(seed)
    k = M.shape[1]
    net = Head(X.shape[1], k, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    tr = np.flatnonzero(~is_val)
    Xt, yt, Mt = torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(M.astype(np.float32))
    gen = torch.Generator().manual_seed(seed)
    for ep in range(epochs):
        perm = torch.from_numpy(tr)[torch.randperm(len(tr), generator=gen)]
        total = 0.0
        for i in range(0, len(perm), 4096):
            b = perm[i:i + 4096]
            w = Mt[b]
            loss = nn.functional.binary_cross_entropy_with_logits(net(Xt[b]), yt[b, None].expand(-1, k), weight=w,
                                                                  reduction="sum") / w.sum().clamp(min=1.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(b)
        log(f"  re-check head epoch {ep}: loss {total / len(tr):.5f}")
    return net


def append_head(model_path: str, net: Head, k: int, names: list[str]):
    """Appends Concat -> Gemm -> Relu -> Gemm -> Sigmoid to the graph; returns the model."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    m = onnx.load(model_path)
    g = m.graph
    if any(o.name == OUTPUT for o in g.output):
        raise SystemExit(f"{model_path} already has {OUTPUT}")
    w = {n: p.detach().numpy().astype(np.float32) for n, p in net.state_dict().items()}
    for name, arr in w.items():
        g.initializer.append(numpy_helper.from_array(arr, f"checks.{name}"))
    nodes = []
    x = names[0]
    if len(names) > 1:
        nodes.append(helper.make_node("Concat", names, ["/checks/in"], axis=1, name="/checks/Concat"))
        x = "/checks/in"
    if net.hidden:
        nodes += [helper.make_node("Gemm", [x, "checks.l1.weight", "checks.l1.bias"], ["/checks/l1"], transB=1, name="/checks/Gemm1"),
                  helper.make_node("Relu", ["/checks/l1"], ["/checks/relu"], name="/checks/Relu")]
        x = "/checks/relu"
    nodes += [helper.make_node("Gemm", [x, "checks.l2.weight", "checks.l2.bias"], ["/checks/l2"], transB=1, name="/checks/Gemm2"),
              helper.make_node("Sigmoid", ["/checks/l2"], [OUTPUT], name="/checks/Sigmoid")]
    g.node.extend(nodes)
    g.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", k]))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, model_path)
    return m


def fold_head(model_path: str, net: Head, k: int):
    """Folds the linear head on [x, z] (x = [hidden_out, features], the input of the step model's
    head layer; z = its pre-activations) into the step model's two head Gemms, so tract and ONNX
    Runtime run no extra matrix op: with A, C the head's weights on x and z, and W1, W2 the head
    layers (r = ReLU(W1 x + b1), z = W2 r + b2),
        logits = A x + C z + c = ReLU(A x) - ReLU(-A x) + (C W2) r + (C b2 + c),
    so W1 gains the rows A and -A, and W2 the rows [C W2, I, -I] over [r, ReLU(A x), ReLU(-A x)]
    (zeros under the old rows). A Slice and a Sigmoid read the logits."""
    import onnx
    from onnx import helper, numpy_helper, TensorProto
    m = onnx.load(model_path)
    g = m.graph
    if any(o.name == OUTPUT for o in g.output):
        raise SystemExit(f"{model_path} already has {OUTPUT}")
    init = {i.name: i for i in g.initializer}
    gemms = [n for n in g.node if n.op_type == "Gemm"]
    g0 = next(n for n in gemms if n.input[0] == "/Concat_output_0")
    g2 = next(n for n in gemms if n.output[0] == PRE)
    w1, b1 = (numpy_helper.to_array(init[n]) for n in g0.input[1:3])
    w2, b2 = (numpy_helper.to_array(init[n]) for n in g2.input[1:3])
    wc = net.l2.weight.detach().numpy().astype(np.float64)
    bc = net.l2.bias.detach().numpy().astype(np.float64)
    nx = w1.shape[1]
    a, c = wc[:, :nx], wc[:, nx:]
    h1 = w1.shape[0]
    w1n = np.vstack([w1, a.astype(np.float32), (-a).astype(np.float32)])
    b1n = np.concatenate([b1, np.zeros(2 * k, dtype=np.float32)])
    top = np.hstack([w2, np.zeros((w2.shape[0], 2 * k), dtype=np.float32)])
    low = np.hstack([(c @ w2.astype(np.float64)).astype(np.float32), np.eye(k, dtype=np.float32), -np.eye(k, dtype=np.float32)])
    w2n = np.vstack([top, low])
    b2n = np.concatenate([b2, (c @ b2.astype(np.float64) + bc).astype(np.float32)])
    for name, arr in zip(list(g0.input[1:3]) + list(g2.input[1:3]), (w1n, b1n, w2n, b2n)):
        init[name].CopyFrom(numpy_helper.from_array(arr.astype(np.float32), name))
    n3 = w2.shape[0]
    for name, v in (("checks.starts", [n3]), ("checks.ends", [n3 + k]), ("checks.axes", [1])):
        g.initializer.append(numpy_helper.from_array(np.asarray(v, dtype=np.int64), name))
    g.node.extend([
        helper.make_node("Slice", [PRE, "checks.starts", "checks.ends", "checks.axes"], ["/checks/logits"], name="/checks/Slice"),
        helper.make_node("Sigmoid", ["/checks/logits"], [OUTPUT], name="/checks/Sigmoid"),
    ])
    g.output.append(helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["batch", k]))
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, model_path)
    assert h1 + 2 * k == w1n.shape[0]
    return m


def auc(y, s):
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(y, s))


def add_checks(step_dir: str, lg: D.Log, sd: D.StepData, seed: int = 1, epochs: int = 6, version: str | None = None,
               head_hidden: int = HIDDEN, head_input: str = "all"):
    model_path = os.path.join(step_dir, "model.onnx")
    meta_path = os.path.join(step_dir, "metadata.json")
    fx_path = os.path.join(step_dir, "fixtures.json")
    meta = json.load(open(meta_path))
    if any(o["name"] == OUTPUT for o in meta["outputs"]):
        raise SystemExit(f"{step_dir} already has the re-check head ({OUTPUT})")
    hidden = int(meta["hidden_size"])
    t0 = time.time()
    n = lg.n
    big = np.iinfo(np.int64).max
    gap = np.full(n, big, dtype=np.int64)
    gap[:-1] = lg.ts[1:] - lg.ts[:-1]
    gap[lg.ends - 1] = big
    rows = np.flatnonzero(sd.cart_open & (gap >= CHECKS_MINUTES[0] * MIN_MS))
    names = INPUTS[head_input]
    X = head_inputs(model_path, lg, sd, rows, names + ["p_abandon"])
    X, p10 = np.ascontiguousarray(X[:, :-1]), X[:, -1]  # the 10-minute p_abandon, for comparison
    _, _, y_a, _, _, _ = D.step_labels(lg, sd)
    y = y_a[rows].astype(np.float32)
    in_log = lg.ts[rows] + D.ABANDON_HORIZON_MS <= lg.log_end
    M = np.stack([(gap[rows] >= m * MIN_MS) & in_log for m in CHECKS_MINUTES], 1)
    rng = np.random.default_rng(seed)
    val_c = rng.random(len(lg.customer_ids)) < 0.1
    is_val = val_c[lg.cust[rows]]
    log(f"re-check head: {len(rows)} rows ({int(M[:, 0].sum())} labelled at 10 min, {int(M[:, -1].sum())} at "
        f"{CHECKS_MINUTES[-1]} min), features in {time.time() - t0:.0f} s")
    net = fit(X, y, M, is_val, seed, epochs, head_hidden)
    with torch.no_grad():
        pv = torch.sigmoid(net(torch.from_numpy(X[is_val]))).numpy()
    val = {}
    for j, m in enumerate(CHECKS_MINUTES):
        sel = M[is_val, j]
        pa = p10[is_val][sel]
        val[str(m)] = {"rows": int(sel.sum()), "abandoned_rate": float(y[is_val][sel].mean()),
                       "auc": auc(y[is_val][sel], pv[sel, j]), "auc_of_p_abandon": auc(y[is_val][sel], pa)}
    log("re-check head validation AUC by minutes: " + ", ".join(f"{m}: {v['auc']:.3f}" for m, v in val.items()))
    k = len(CHECKS_MINUTES)
    # the head's inputs for each fixture, read from the model before the head is added
    fx = json.load(open(fx_path))
    exposing = _exposing_session(model_path, names)
    xins = [_side_by_side(exposing, {kk: np.asarray(v, dtype=np.float32) for kk, v in f["inputs"].items()}, names)
            for f in fx["fixtures"]]
    if not head_hidden and head_input == "all":
        onnx_model = fold_head(model_path, net, k)
    else:
        onnx_model = append_head(model_path, net, k, names)
    # fixtures: ONNX Runtime's p_abandon_after for each fixture's inputs (and the batch of 8)
    sess = _session(model_path)
    out_names = [o.name for o in sess.get_outputs()]
    j_out = out_names.index(OUTPUT)
    diff = changed = 0.0
    for f, xin in zip(fx["fixtures"], xins):
        feeds = {kk: np.asarray(v, dtype=np.float32) for kk, v in f["inputs"].items()}
        out = sess.run(None, feeds)
        with torch.no_grad():
            pt = torch.sigmoid(net(torch.from_numpy(xin))).numpy()
        f["onnxruntime"][OUTPUT] = out[j_out].tolist()
        f["torch"][OUTPUT] = pt.tolist()
        for kk in ("hidden_out", "p_purchase", "p_abandon", "expected_value"):
            before = np.asarray(f["onnxruntime"][kk], dtype=np.float32)
            moved = float(np.abs(before - out[out_names.index(kk)]).max()) / max(1.0, float(np.abs(before).max()))
            assert moved <= 1e-6, f"adding the head changed {kk} by {moved}"
            changed = max(changed, moved)
            f["onnxruntime"][kk] = out[out_names.index(kk)].tolist()
        diff = max(diff, float(np.abs(pt - out[j_out]).max()))
    b = fx["batch8"]
    ob = sess.run(None, {"features": np.asarray(b["features"], dtype=np.float32), "hidden_in": np.asarray(b["hidden_in"], dtype=np.float32)})
    fx["batch8"]["onnxruntime"] = {n: o.tolist() for n, o in zip(out_names, ob)}
    fx["checks_changed_other_outputs_by"] = changed
    fx["checks_max_abs_diff_torch_vs_onnxruntime"] = diff
    tract_diff = None
    try:
        import tract
        tm = tract.runtime_for_name("default").prepare(tract.onnx().load(model_path).into_model())
        tract_diff = 0.0
        for f in fx["fixtures"]:
            to = tm.run([np.asarray(f["inputs"]["features"], dtype=np.float32), np.asarray(f["inputs"]["hidden_in"], dtype=np.float32)])
            tract_diff = max(tract_diff, float(np.abs(to[4].to_numpy() - np.asarray(f["onnxruntime"][OUTPUT])).max()))
    except ImportError:
        pass
    fx["checks_tract_max_abs_diff_vs_onnxruntime"] = tract_diff
    if version:
        fx["version"] = version
    with open(fx_path, "w") as fh:
        json.dump(fx, fh, indent=2)
        fh.write("\n")
    meta["outputs"].append({
        "name": OUTPUT, "dtype": "float32", "shape": ["batch", k],
        "note": "column j: P(no purchase within 24 h after this event | the cart is open after it and the customer "
                "then stays inactive for feature_encoding.abandon_checks_minutes[j] minutes). The processor re-checks "
                "an idle cart at each of these inactivities and reads column j."})
    meta["horizons"]["abandon_checks_minutes"] = CHECKS_MINUTES
    meta["feature_encoding"]["abandon_checks_minutes"] = CHECKS_MINUTES
    meta["onnx"]["ops"] = sorted({nd.op_type for nd in onnx_model.graph.node})
    meta["onnx"]["size_bytes"] = os.path.getsize(model_path)
    meta["training"]["abandon_checks"] = {
        "head": (f"{names} -> {head_hidden} ReLU -> {k} sigmoid" if head_hidden else f"linear {names} -> {k} sigmoid")
                + ", appended to the graph; step model frozen", "epochs": epochs, "seed": seed,
        "labels": "no purchase within 24 h after the event; a row counts for check m when the cart is open after the "
                  "event and the customer's next event is at least m minutes later",
        "validation": val}
    meta["parity"]["checks_torch_vs_onnxruntime"] = diff
    meta["parity"]["checks_tract_vs_onnxruntime"] = tract_diff
    if version:
        meta["version"] = version
    with open(meta_path, "w") as fh:
        json.dump(meta, fh, indent=2)
        fh.write("\n")
    log(f"re-check head appended to {model_path} ({os.path.getsize(model_path)} bytes) in {time.time() - t0:.0f} s; "
        f"torch vs ORT {diff:.1e}, tract vs ORT {tract_diff}")
    return val


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--log", required=True, help="event log: a .jsonl file or a directory of .jsonl files")
    ap.add_argument("--models", default=here)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--version", default=None, help="new model version to stamp (default: keep)")
    ap.add_argument("--head-hidden", type=int, default=HIDDEN, help="units of the head's hidden layer (0 = linear)")
    ap.add_argument("--head-input", choices=sorted(INPUTS), default="all", help="what the head reads (see INPUTS)")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    lg = D.load_log(args.log)
    add_checks(os.path.join(args.models, "journey_step"), lg, D.step_features(lg), args.seed, args.epochs, args.version,
               args.head_hidden, args.head_input)


if __name__ == "__main__":
    main()
