"""The journey step model: a GRU over the customer's events with three heads (P(purchase in 7 d),
P(cart abandoned), expected 90-day revenue), its training, and its export (journey_step/).
Run through train.py."""
from __future__ import annotations

import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as Fn

import tsdata as D
import train_common as C
from train_common import (auc, export_onnx, log, logloss, ort_run, sigmoid, spearman, split_customers,
                          tract_run_all, write_json)

VALUE_SCALE = 100.0  # the revenue head predicts log(E[revenue] / VALUE_SCALE)


class StepModel(nn.Module):
    def __init__(self, n_features: int, hidden: int):
        super().__init__()
        self.gru = nn.GRU(n_features, hidden, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden + n_features, 64), nn.ReLU(), nn.Linear(64, 3))

    def forward_seq(self, x, h0):
        out, h = self.gru(x, h0)
        return self.head(torch.cat([out, x], dim=-1)), h


class StepExport(nn.Module):
    """One event: (features [B,F], hidden_in [B,H]) -> hidden_out, p_purchase, p_abandon, expected_value."""

    def __init__(self, m: StepModel):
        super().__init__()
        self.m = m

    def forward(self, features, hidden_in):
        out, h = self.m.gru(features.unsqueeze(1), hidden_in.unsqueeze(0))
        hidden_out = h.squeeze(0)
        y = self.m.head(torch.cat([hidden_out, features], dim=-1))
        p_purchase = torch.sigmoid(y[:, 0:1])
        p_abandon = torch.sigmoid(y[:, 1:2])
        expected_value = torch.exp(torch.clamp(y[:, 2:3], max=20.0)) * VALUE_SCALE
        return hidden_out, p_purchase, p_abandon, expected_value


def make_batches(lg: D.Log, custs: np.ndarray, batch: int, rng):
    """Customers sorted by length into batches of similar length (less padding)."""
    lens = (lg.ends - lg.starts)[custs]
    order = custs[np.argsort(lens + rng.random(len(lens)), kind="stable")]
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def pad_batch(lg, arrays, cb):
    lens = (lg.ends - lg.starts)[cb]
    T = int(lens.max())
    out = []
    for a in arrays:
        shape = (len(cb), T) + a.shape[1:]
        p = np.zeros(shape, dtype=a.dtype)
        for j, c in enumerate(cb):
            s, e = lg.starts[c], lg.ends[c]
            p[j, : e - s] = a[s:e]
        out.append(torch.from_numpy(p))
    valid = np.zeros((len(cb), T), dtype=bool)
    for j, n in enumerate(lens):
        valid[j, :n] = True
    return out, torch.from_numpy(valid), T


def step_losses(y, yp, mp, ya, ma, yv, mv, w_abandon=3.0, w_value=0.5):
    lp = Fn.binary_cross_entropy_with_logits(y[..., 0], yp, reduction="none")
    la = Fn.binary_cross_entropy_with_logits(y[..., 1], ya, reduction="none")
    r = yv / VALUE_SCALE
    lv = torch.exp(torch.clamp(y[..., 2], max=20.0)) - r * y[..., 2]  # Poisson deviance (up to a constant)
    mp, ma, mv = mp.float(), ma.float(), mv.float()
    loss = (lp * mp).sum() / mp.sum().clamp(min=1) + w_abandon * (la * ma).sum() / ma.sum().clamp(min=1) \
        + w_value * (lv * mv).sum() / mv.sum().clamp(min=1)
    return loss


def run_step_model(model: StepModel, lg: D.Log, x: np.ndarray, custs: np.ndarray, batch: int = 256):
    """Runs the model over whole customer sequences; returns per-event logits [n, 3] (for custs)."""
    out = np.zeros((lg.n, 3), dtype=np.float32)
    H = model.gru.hidden_size
    rng = np.random.default_rng(0)
    with torch.no_grad():
        for cb in make_batches(lg, custs, batch, rng):
            (xb,), valid, T = pad_batch(lg, [x], cb)
            y, _ = model.forward_seq(xb, torch.zeros(1, len(cb), H))
            y = y.numpy()
            for j, c in enumerate(cb):
                s, e = lg.starts[c], lg.ends[c]
                out[s:e] = y[j, : e - s]
    return out


def scores_on(model: StepModel, lg: D.Log, sd: D.StepData, custs: np.ndarray):
    """The model's outputs on every event of the customers `custs`, and which events are theirs."""
    yl = run_step_model(model, lg, sd.x, custs)
    sel = np.zeros(lg.n, dtype=bool)
    for c in custs:
        sel[lg.starts[c]:lg.ends[c]] = True
    return yl, sel


def train_step(lg: D.Log, sd: D.StepData, labels, args, hidden: int):
    y_p, m_p, y_a, m_a, y_v, m_v = labels
    yv_rev = np.expm1(y_v).astype(np.float32)  # revenue in the next 90 days
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    is_val = split_customers(len(lg.customer_ids), args.seed)
    tr = np.flatnonzero(~is_val)
    va = np.flatnonzero(is_val)
    model = StepModel(D.N_STEP_FEATURES, hidden)
    opt = torch.optim.Adam(model.parameters(), lr=args.step_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.step_epochs, eta_min=args.step_lr / 10)
    K = args.bptt
    arrays = [sd.x, y_p, m_p, y_a, m_a, yv_rev, m_v]
    n_steps = 0
    best = (float("inf"), None)
    history = []
    for epoch in range(args.step_epochs):
        t0 = time.time()
        model.train()
        batches = make_batches(lg, tr, args.step_batch, rng)
        rng.shuffle(batches)
        tot, cnt = 0.0, 0
        for cb in batches:
            (xb, ypb, mpb, yab, mab, yvb, mvb), valid, T = pad_batch(lg, arrays, cb)
            h = torch.zeros(1, len(cb), hidden)
            for k0 in range(0, T, K):
                sl = slice(k0, k0 + K)
                v = valid[:, sl]
                y, h = model.forward_seq(xb[:, sl], h)
                loss = step_losses(y, ypb[:, sl], mpb[:, sl] & v, yab[:, sl], mab[:, sl] & v, yvb[:, sl], mvb[:, sl] & v)
                opt.zero_grad()
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                h = h.detach()
                tot += float(loss); cnt += 1; n_steps += 1
        sched.step()
        model.eval()
        yl, sel = scores_on(model, lg, sd, va)
        vp = sel & m_p
        va_ = sel & m_a
        vv = sel & m_v
        r = yv_rev[vv] / VALUE_SCALE
        z = yl[vv, 2]
        m = {
            "epoch": epoch + 1,
            "train_loss": tot / max(cnt, 1),
            "val_purchase_auc": auc(y_p[vp], yl[vp, 0]),
            "val_purchase_logloss": logloss(y_p[vp], sigmoid(yl[vp, 0])),
            "val_abandon_auc": auc(y_a[va_], yl[va_, 1]),
            "val_abandon_logloss": logloss(y_a[va_], sigmoid(yl[va_, 1])),
            "val_value_poisson_deviance": float(np.mean(np.exp(z) - r * z)) if vv.any() else float("nan"),
            "seconds": round(time.time() - t0, 1),
        }
        # heads without validation labels (a log shorter than the horizon) do not count
        val_obj = float(np.nansum([m["val_purchase_logloss"], 3.0 * m["val_abandon_logloss"], 0.5 * m["val_value_poisson_deviance"]]))
        m["val_objective"] = val_obj
        history.append(m)
        log(f"step epoch {epoch + 1}: " + ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in m.items() if k != "epoch"))
        if val_obj < best[0] or best[1] is None:
            best = (val_obj, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[1])
    model.eval()
    # calibration of the value head on validation
    yl, sel = scores_on(model, lg, sd, va)
    vv = sel & m_v
    pred_rev = np.exp(np.minimum(yl[vv, 2], 20)) * VALUE_SCALE
    best_m = dict(min(history, key=lambda h: h["val_objective"]))
    if vv.any():
        best_m["val_value_mean_predicted"] = float(pred_rev.mean())
        best_m["val_value_mean_actual"] = float(yv_rev[vv].mean())
        best_m["val_value_mae"] = float(np.abs(pred_rev - yv_rev[vv]).mean())
        best_m["val_value_spearman"] = spearman(pred_rev, yv_rev[vv])
    for name, mask in (("purchase (7 d)", m_p), ("abandonment", m_a), ("value (90 d)", m_v)):
        if not mask.any():
            log(f"WARNING: no {name} labels (the log is shorter than the horizon or has no such events): that head is untrained")
    return model, best_m, history, {"train_customers": int(len(tr)), "val_customers": int(len(va)),
                                    "purchase_labels": int(m_p.sum()), "abandon_labels": int(m_a.sum()),
                                    "value_labels": int(m_v.sum()), "purchase_rate": float(y_p[m_p].mean()),
                                    "abandon_rate": float(y_a[m_a].mean())}


def export_step(model: StepModel, out_dir: str, lg: D.Log, sd: D.StepData, metrics, history, data_desc, hidden):
    os.makedirs(out_dir, exist_ok=True)
    ex = StepExport(model).eval()
    F = D.N_STEP_FEATURES
    path = os.path.join(out_dir, "model.onnx")
    ops, m = export_onnx(ex, (torch.zeros(2, F), torch.zeros(2, hidden)), path, ["features", "hidden_in"],
                         ["hidden_out", "p_purchase", "p_abandon", "expected_value"],
                         {"features": {0: "batch"}, "hidden_in": {0: "batch"}, "hidden_out": {0: "batch"},
                          "p_purchase": {0: "batch"}, "p_abandon": {0: "batch"}, "expected_value": {0: "batch"}})
    gru = [n for n in m.graph.node if n.op_type == "GRU"]
    lbr = [a.i for n in gru for a in n.attribute if a.name == "linear_before_reset"]
    assert gru and lbr == [1], f"expected one GRU with linear_before_reset=1, got {lbr}"
    # fixtures: 8 consecutive events of one customer with a cart (hidden state carried), batch 1 each
    c = int(np.argmax([(sd.cart_open[s:e].any() and (lg.etype[s:e] == D.PURCHASE).any()) for s, e in zip(lg.starts, lg.ends)]))
    s = int(lg.starts[c])
    opened = np.flatnonzero(sd.cart_open[s:lg.ends[c]])
    i0 = s + max(int(opened[0]) - 4, 0)
    fixtures = []
    h_t = torch.zeros(1, hidden)
    h_o = np.zeros((1, hidden), dtype=np.float32)
    max_diff = 0.0
    for i in range(i0, min(i0 + 8, int(lg.ends[c]))):
        f = torch.from_numpy(sd.x[i:i + 1])
        with torch.no_grad():
            ht, pp, pa, ev = ex(f, h_t)
        _, (ho, op, oa, oe) = ort_run(path, {"features": sd.x[i:i + 1], "hidden_in": h_o})
        d = max(float(np.abs(ht.numpy() - ho).max()), float(np.abs(pp.numpy() - op).max()),
                float(np.abs(pa.numpy() - oa).max()), float(np.abs(ev.numpy() - oe).max()) / max(1.0, float(abs(oe).max())))
        max_diff = max(max_diff, d)
        fixtures.append({
            "event": {"event_id": lg.event_ids[i], "event_type": D.EVENT_TYPES[lg.etype[i]],
                      "channel": None if lg.chan[i] == D.CH_NONE else D.CHANNELS[lg.chan[i]], "ts": int(lg.ts[i])},
            "inputs": {"features": sd.x[i:i + 1].tolist(), "hidden_in": h_o.tolist()},
            "torch": {"hidden_out": ht.numpy().tolist(), "p_purchase": pp.numpy().tolist(),
                      "p_abandon": pa.numpy().tolist(), "expected_value": ev.numpy().tolist()},
            "onnxruntime": {"hidden_out": ho.tolist(), "p_purchase": op.tolist(),
                            "p_abandon": oa.tolist(), "expected_value": oe.tolist()},
            "max_abs_diff": d,
        })
        h_t, h_o = ht, ho  # carry the state as the processor would (ONNX state into ONNX)
    # batch > 1 parity (dynamic batch)
    xb = sd.x[i0:i0 + 8]
    hb = np.random.default_rng(1).normal(0, 0.5, (len(xb), hidden)).astype(np.float32)
    with torch.no_grad():
        tb = ex(torch.from_numpy(xb), torch.from_numpy(hb))
    _, ob = ort_run(path, {"features": xb, "hidden_in": hb})
    batch_diff = max(float(np.abs(a.numpy() - b).max() / (1.0 if k < 3 else max(1.0, float(np.abs(b).max()))))
                     for k, (a, b) in enumerate(zip(tb, ob)))
    tv, touts = tract_run_all(path, [{k: np.asarray(v, dtype=np.float32) for k, v in f["inputs"].items()} for f in fixtures])
    tract_diff = None
    if tv:
        tract_diff = 0.0
        for f, to in zip(fixtures, touts):
            ref = [np.asarray(f["onnxruntime"][k], dtype=np.float32) for k in ("hidden_out", "p_purchase", "p_abandon", "expected_value")]
            tract_diff = max(tract_diff, max(float(np.abs(a - b).max()) / (max(1.0, float(np.abs(b).max())) if k == 3 else 1.0)
                                             for k, (a, b) in enumerate(zip(to, ref))))
    write_json(os.path.join(out_dir, "fixtures.json"), {
        "model": "journey_step", "version": C.VERSION, "tract_version": tv, "tract_max_abs_diff_vs_onnxruntime": tract_diff,
        "description": "8 consecutive events of one customer (batch 1), hidden state carried from the previous "
                       "fixture's ONNX Runtime hidden_out; the first hidden_in is zeros. Tolerance: 1e-4 absolute "
                       "(expected_value relative).",
        "max_abs_diff": max_diff, "batch8_max_abs_diff": batch_diff,
        "batch8": {"features": xb.tolist(), "hidden_in": hb.tolist(),
                   "onnxruntime": {n: o.tolist() for n, o in zip(["hidden_out", "p_purchase", "p_abandon", "expected_value"], ob)}},
        "fixtures": fixtures,
    })
    feat_desc = step_feature_doc()
    write_json(os.path.join(out_dir, "metadata.json"), {
        "name": "journey_step", "version": C.VERSION, "framework": f"pytorch {torch.__version__}",
        "onnx": {"opset": C.OPSET, "exporter": "torch.onnx.export(dynamo=False)", "ops": ops,
                 "gru_linear_before_reset": 1, "size_bytes": os.path.getsize(path)},
        "inputs": [
            {"name": "features", "dtype": "float32", "shape": ["batch", D.N_STEP_FEATURES]},
            {"name": "hidden_in", "dtype": "float32", "shape": ["batch", hidden],
             "note": "the customer's hidden state after its previous event; zeros for a new customer"},
        ],
        "outputs": [
            {"name": "hidden_out", "dtype": "float32", "shape": ["batch", hidden], "note": "store per customer"},
            {"name": "p_purchase", "dtype": "float32", "shape": ["batch", 1],
             "note": "P(a purchase strictly after this event within 7 days)"},
            {"name": "p_abandon", "dtype": "float32", "shape": ["batch", 1],
             "note": "P(no purchase within 24 h after this event | the cart is open after it and the customer "
                     "then stays inactive for 10 min). Read it at the 10-minute inactivity check of an open cart."},
            {"name": "expected_value", "dtype": "float32", "shape": ["batch", 1],
             "note": "expected revenue (currency units of the log) of the purchases in the 90 days after this "
                     "event; head = exp(z) * 100, trained with a Poisson loss, so it estimates the mean"},
        ],
        "hidden_size": hidden,
        "horizons": {"purchase_days": 7, "abandon_hours": 24, "abandon_check_minutes": 10, "value_days": 90},
        "feature_encoding": feat_desc,
        "training": {**data_desc, "metrics_validation": metrics, "history": history},
        "parity": {"fixtures_max_abs_diff": max_diff, "batch8_max_abs_diff": batch_diff,
                   "tract_version": tv, "tract_max_abs_diff_vs_onnxruntime": tract_diff},
    })
    return ops, max_diff


def step_feature_doc():
    return {
        "count": D.N_STEP_FEATURES,
        "order": D.STEP_FEATURES,
        "event_type_vocabulary": {n: i for i, n in enumerate(D.EVENT_TYPES)},
        "event_type_unknown": "other (index 11)",
        "channel_vocabulary": {**{n: i for i, n in enumerate(D.CHANNELS)}, "none": D.CH_NONE},
        "channel_unknown": "other (index 11); an event without channel sets channel=none (index 12)",
        "one_hot_offsets": {"event_type": 0, "channel": len(D.EVENT_TYPES)},
        "normalisation": D.NORM,
        "definitions": {
            "value": "the event's value (purchase revenue, unit price on cart events), 0 when absent or negative",
            "seconds since previous event": "ts minus the customer's previous event's ts in seconds (>= 0); 0 for the first event",
            "first_event": "1 for the customer's first event (the one that starts the hidden state from zeros)",
            "new_session": "1 when session_id is present and differs from the previous event's session_id (absent "
                           "previous counts as different), or when session_id is absent and the gap is >= 30 min, "
                           "or on the first event",
            "cart state": "after applying the event, as processor/src/journey (cart_add opens/adds, quantity "
                          "default 1, unit price = value; cart_remove removes quantity or the whole line, an empty "
                          "cart closes; purchase closes the cart). cart_value = sum(quantity * unit_price), "
                          "cart_quantity = sum(quantity); 0 when no cart is open",
            "hour_utc": "(ts mod 86 400 000) / 3 600 000, fractional",
            "has_purchased": "1 if the customer had a purchase at or before this event",
            "days since previous purchase": "(ts - ts of the latest purchase at or before this event) / 86 400 000; 0 if none",
            "days since first event": "(ts - the customer's first event's ts) / 86 400 000",
            "checkout_started": "1 if a checkout_start happened since the open cart was opened (0 without cart)",
        },
        "event_order": "per customer by (ts, arrival order)",
    }
