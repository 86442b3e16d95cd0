#!/usr/bin/env python3
"""Writes models/fixtures/stream_parity.json: a stream-level parity fixture for the Rust processor.

    models/.venv/bin/python models/make_fixtures.py            # [--log models/data/heldout/events.jsonl]
    models/.venv/bin/python models/make_fixtures.py --verify-complete   # also scans the whole log once

Deterministic (no randomness; the customers are chosen by a fixed greedy rule). Needs the held-out
simulator run (models/data/heldout, see README.md → Usage) and the committed model.onnx files.

What it does:
  1. reads the head of the log only, up to `customer_days + 3` days after its first event (about
     330 k lines of 5.5 M; the simulator's customers live `customer_days` = 60 days, read from the
     world.toml beside the log), and keeps the customers whose first event is at least
     `customer_days + 2` days before the last ts read: all their events lie in the lines read
     (--verify-complete checks that on the whole log);
  2. picks ~12 of them greedily so that together they cover repeat purchases, carts opened /
     reduced / emptied / abandoned, checkout_start, events without session_id or channel, campaigns,
     the previous-purchase token, purchase-path touchpoints, the time-decay fallback, a conversion
     without touchpoints and the L = 64 truncation, preferring short customers (file size);
  3. computes the step features with tsdata.step_features (the exact training/evaluation code, on a
     Log of those customers' events), runs journey_step/model.onnx with ONNX Runtime event by event
     in stream order (per-customer hidden state, zeros first), and computes the deep credit of every
     purchase exactly as evaluate.py does (tsdata.journey_at → newest 64 → tsdata.journey_arrays with
     the purchase path and the previous-purchase token → one ONNX call of 1 + k rows → removal
     effects; time decay fallback with evaluate.rule_credits).
The file's top-level "description" documents every field.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import sys
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tsdata as D  # noqa: E402
import evaluate as E  # noqa: E402  (rule_credits, removal_credits, session: the evaluation's own code)
from fixture_choice import MAX_EVENTS, choose  # noqa: E402

ATTR_INPUTS = ["channel", "event_type", "campaign_bucket", "age", "position", "mask"]
HEAD_EXTRA_DAYS = 12      # read customer_days + 12 days of the log: the customers arriving in the first 10 are complete


def f32(x):
    """A float32 value written as the float64 that equals it exactly (round-trips through f64 → f32);
    integral values as JSON integers (0, 1) to keep the file small."""
    v = float(np.float32(x))
    return int(v) if v.is_integer() and abs(v) < 2 ** 24 else v


def rel(path: str) -> str:
    """A path relative to the repository root (never this machine's absolute paths)."""
    return os.path.relpath(os.path.abspath(path), os.path.dirname(HERE)).replace(os.sep, "/")


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def customer_days(log_path: str) -> float:
    world = os.path.join(os.path.dirname(log_path), "world.toml")
    if os.path.exists(world):
        import tomllib
        with open(world, "rb") as f:
            return float(tomllib.load(f).get("customer_days", 60.0))
    return 60.0


# ---------------------------------------------------------------------------------------------
# 1. The head of the log


def read_head(log_path: str, days: float, extra_days: float):
    """Raw lines (bytes) + parsed events up to first ts + days + extra_days. Returns (lines, events, t_last)."""
    lines, events = [], []
    t0 = t_last = None
    with open(log_path, "rb") as fh:
        for line in fh:
            try:
                e = json.loads(line)
                t = int(e["ts"])
            except Exception:
                continue
            if t0 is None:
                t0 = t
            if t > t0 + (days + extra_days) * D.DAY_MS:
                break
            t_last = t if t_last is None else max(t_last, t)
            lines.append(line if line.endswith(b"\n") else line + b"\n")
            events.append(e)
    return lines, events, t_last


def load_subset(lines: list[bytes]) -> D.Log:
    """tsdata.load_log over exactly these raw lines (a temporary file; its path is not recorded)."""
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "events.jsonl")
        with open(p, "wb") as f:
            f.writelines(lines)
        return D.load_log(p)


# ---------------------------------------------------------------------------------------------
# 2. Choosing the customers (fixture_choice.py), their conversions


def conversion_items(lg: D.Log, c: int, tps, purs, L: int, path_ms: int, context: bool):
    """Per purchase of customer c, as evaluate.eval_attribution: (p, journey (newest 64), prev ts,
    journey_arrays result or None when the journey is empty)."""
    out = []
    for p in purs[c]:
        p = int(p)
        j, prev = D.journey_at(lg, tps[c], purs[c], int(lg.ts[p]), at_purchase=p, with_prev=True)
        j = j[-64:]  # evaluate.py: the processor keeps at most journey.max_touchpoints = 64
        r = D.journey_arrays(lg, j, int(lg.ts[p]), L, path_ms, prev if context else None) if len(j) else None
        out.append((p, j, prev, r))
    return out


# ---------------------------------------------------------------------------------------------
# 3. Running the models


BASELINE_SHARE = False  # the attribution model's metadata `baseline_share`, set in main


def deep_credit(sess, lg: D.Log, p: int, j, prev, r):
    """One conversion, exactly as evaluate.eval_attribution + removal_credits (one call of 1 + k rows,
    + 1 with every touchpoint masked for a model with a baseline share)."""
    cols, used, positions = list(r[:6]), r[6], r[7]
    rows = [cols]
    for q in positions:
        c2 = [c.copy() for c in cols]
        c2[5][q] = 0.0
        rows.append(c2)
    if BASELINE_SHARE:
        c2 = [c.copy() for c in cols]
        c2[5][list(positions)] = 0.0
        rows.append(c2)
    feeds = {name: np.stack([row[i] for row in rows]) for i, name in enumerate(ATTR_INPUTS)}
    pr = sess.run(["p_conversion"], feeds)[0][:, 0]
    p_full, p_wo = pr[0], pr[1:1 + len(positions)]
    feeds = {k: v[:1 + len(positions)] for k, v in feeds.items()}
    d = np.maximum(0.0, p_full - p_wo.astype(np.float64))  # as removal_credits: float32 full − float64 zeros-filled
    if BASELINE_SHARE:
        base = min(1.0, max(0.0, float(pr[-1]) / float(p_full))) if p_full > 0 else 1.0
        w = d / d.sum() * (1.0 - base) if d.sum() > 0 else np.zeros(len(d))
        fallback = False
        credit = {int(i): float(x) for i, x in zip(used, w)}
    elif d.sum() > 0:
        w = d / d.sum()
        fallback = False
        credit = {int(i): float(x) for i, x in zip(used, w)}
    else:
        fallback = True
        w_all = E.rule_credits(lg.ts[j], int(lg.ts[p]))["time_decay"]
        credit = {int(i): float(x) for i, x in zip(j, w_all)}
    # cross-check with evaluate.removal_credits itself
    (w_e, full_e), = E.removal_credits(sess, [(cols, positions)], baseline_share=BASELINE_SHARE)
    assert (w_e is None) == fallback and abs(full_e - float(p_full)) < 1e-6
    if w_e is not None:
        assert np.allclose(w_e, [credit[int(i)] for i in used], atol=1e-6)
    return feeds, p_full, p_wo, d, fallback, credit

SYNTH_T0 = 1704067200000 + 3 * D.HOUR_MS + 17  # 2024-01-01T03:00:00.017Z


def synthetic_events() -> list[dict]:
    """One hand-made customer for the cart / ordering edge cases the simulator never produces (it only
    removes a line from a cart of >= 2 lines, so a cart is never emptied by cart_remove), and the exact
    boundaries of the purchase path and the lookback. All events are valid input-contract events."""
    cid = "synthetic-1"
    M, H_, D_ = 60_000, D.HOUR_MS, D.DAY_MS
    t0 = SYNTH_T0
    p1 = t0 + 3 * H_
    p2 = p1 + 40 * D_
    ev = [
        # touchpoints: one with an unknown channel (-> other, still a touchpoint)
        dict(ts=t0, event_type="impression", channel="display", campaign="display_prospecting"),
        dict(ts=t0 + 5 * M, event_type="click", channel="tv", campaign="tv_spot"),
        dict(ts=t0 + 6 * M, event_type="page_view", channel="direct", session_id="synthetic-1-s1"),
        # checkout and cart_remove without a cart: no effect; cart_add of quantity 0 without a cart: ignored
        dict(ts=t0 + 7 * M, event_type="checkout_start", session_id="synthetic-1-s1"),
        dict(ts=t0 + 8 * M, event_type="cart_remove", session_id="synthetic-1-s1", product_id="p1", quantity=1,
             value=10.5, currency="EUR"),
        dict(ts=t0 + 9 * M, event_type="cart_add", session_id="synthetic-1-s1", product_id="p1", quantity=0,
             value=10.5, currency="EUR"),
        # cart_add without quantity (-> 1); a second line of quantity 2; the first line again without value
        dict(ts=t0 + 10 * M, event_type="cart_add", session_id="synthetic-1-s1", product_id="p1", value=10.5,
             currency="EUR"),
        dict(ts=t0 + 11 * M, event_type="cart_add", session_id="synthetic-1-s1", product_id="p2", quantity=2,
             value=3.25, currency="EUR"),
        dict(ts=t0 + 12 * M, event_type="cart_add", session_id="synthetic-1-s1", product_id="p1", quantity=1),
        dict(ts=t0 + 13 * M, event_type="checkout_start", session_id="synthetic-1-s1"),
        # cart_remove without quantity removes the whole line; then p2 by 1, then by more than is left: empty
        dict(ts=t0 + 14 * M, event_type="cart_remove", session_id="synthetic-1-s1", product_id="p1"),
        dict(ts=t0 + 15 * M, event_type="cart_remove", session_id="synthetic-1-s1", product_id="p2", quantity=1),
        dict(ts=t0 + 16 * M, event_type="cart_remove", session_id="synthetic-1-s1", product_id="p2", quantity=5),
        # an unknown event type (-> other), same session
        dict(ts=t0 + 17 * M, event_type="wishlist_add", session_id="synthetic-1-s1", product_id="p9"),
        # no session ids: a gap of exactly 30 min starts a session, 29 min does not
        dict(ts=t0 + 47 * M, event_type="email_open", channel="email", campaign="newsletter"),
        dict(ts=t0 + 76 * M, event_type="email_click", channel="email", campaign="newsletter"),
        # a new cart, checkout, purchase (closes the cart); the email_click is 104 min before it
        dict(ts=p1 - 30 * M, event_type="click", channel="paid_search", campaign="brand"),  # exactly 30 min: given
        dict(ts=p1 - 29 * M, event_type="click", channel="paid_search", campaign="brand"),  # purchase path
        dict(ts=p1 - 20 * M, event_type="cart_add", session_id="synthetic-1-s2", product_id="p3", quantity=1,
             value=20.0, currency="EUR"),
        dict(ts=p1 - 10 * M, event_type="checkout_start", session_id="synthetic-1-s2"),
        dict(ts=p1, event_type="purchase", session_id="synthetic-1-s2", value=20.0, currency="EUR"),
        # after the purchase: a cart line without product_id, removed again by a cart_remove without product_id
        dict(ts=p1 + 1 * H_, event_type="cart_add", session_id="synthetic-1-s3", quantity=1, value=5.0,
             currency="EUR"),
        dict(ts=p1 + 1 * H_ + 30_000, event_type="cart_remove", session_id="synthetic-1-s3", quantity=1),
        # the lookback boundary: 30 days + 1 ms before the second purchase (out), exactly 30 days (in)
        dict(ts=p2 - 30 * D_ - 1, event_type="impression", channel="paid_social", campaign="paid_social_retargeting"),
        dict(ts=p2 - 30 * D_, event_type="impression", channel="paid_social", campaign="paid_social_retargeting"),
        dict(ts=p2 - 2 * D_, event_type="email_open", channel="email", campaign="winback"),
        dict(ts=p2 - 30 * M, event_type="click", channel="affiliate", campaign="coupon"),  # exactly 30 min: given
        # a purchase without cart, without channel, session or value
        dict(ts=p2, event_type="purchase"),
    ]
    out = []
    for n, e in enumerate(ev):
        o = {"event_id": f"{cid}-{n}", "customer_id": cid}
        o.update(e)
        out.append(o)
    return out


def synthetic_block(s_sess, a_sess, H: int, L: int, path_ms: int, context: bool) -> dict:
    events = synthetic_events()
    lg = load_subset([(json.dumps(e, separators=(",", ":")) + "\n").encode() for e in events])
    sd = D.step_features(lg)
    assert lg.event_ids == [e["event_id"] for e in events]
    tps, purs = D.customer_touch_index(lg)
    convs_of = {0: conversion_items(lg, 0, tps, purs, L, path_ms, context)}
    steps, conversions = run_models(lg, sd, events, list(range(lg.n)), convs_of, purs, s_sess, a_sess, H, path_ms)
    return {"note": "a hand-made customer (not from the log) for edge cases the simulator never produces: cart "
                    "emptied by cart_remove (closes the cart), cart_remove / checkout_start without a cart, cart_add "
                    "of quantity 0 without a cart (ignored), cart_add / cart_remove without quantity or product_id, "
                    "unknown event type and channel (-> other; a touchpoint with an unknown channel is a touchpoint "
                    "of channel other), a 30-min gap without session ids, touchpoints exactly 30 min (given to the "
                    "model) and 29 min (purchase path) before a purchase, exactly 30 days (in the journey) and "
                    "30 days + 1 ms (out) before one, a purchase without cart/value/channel. Same fields as the "
                    "top level; computed by the same code.",
            "events": events, "steps": steps, "conversions": conversions}


def run_models(lg: D.Log, sd: D.StepData, stream: list, order: list, convs_of: dict, purs, s_sess, a_sess,
               H: int, path_ms: int):
    """Steps (features + ONNX Runtime outputs per event, in stream order) and conversions (deep credit
    per purchase) for the events `stream` (raw objects) whose indices in lg are `order`."""
    # journey step model, event by event in stream order
    hidden = {}
    steps = []
    for e, i in zip(stream, order):
        cid = e["customer_id"]
        h = hidden.get(cid, np.zeros((1, H), dtype=np.float32))
        x = sd.x[i:i + 1]
        checks = "p_abandon_after" in [o.name for o in s_sess.get_outputs()]
        res = s_sess.run(["hidden_out", "p_purchase", "p_abandon", "expected_value"] + (["p_abandon_after"] if checks else []),
                         {"features": x, "hidden_in": h})
        ho, pp, pa, ev = res[:4]
        hidden[cid] = ho
        step = {"event_id": e["event_id"],
                "features": [f32(v) for v in x[0]],
                "p_purchase": f32(pp[0, 0]), "p_abandon": f32(pa[0, 0]), "expected_value": f32(ev[0, 0]),
                "hidden_out_head": [f32(v) for v in ho[0, :4]]}
        if checks:
            step["p_abandon_after"] = [f32(v) for v in res[4][0]]
        steps.append(step)

    # conversions, in stream order of the purchase events
    conversions = []
    ch_name = lambda i: D.CHANNELS[lg.chan[i]] if lg.chan[i] < len(D.CHANNELS) else None  # noqa: E731
    for e, i in zip(stream, order):
        if lg.etype[i] != D.PURCHASE:
            continue
        c = int(lg.cust[i])
        (p, j, prev, r), = [x for x in convs_of[c] if x[0] == i]
        t_p = int(lg.ts[p])
        prev_id = None
        if prev is not None:
            prev_id = lg.event_ids[[q for q in purs[c] if q < p][-1]]
        conv = {"purchase_event_id": lg.event_ids[p], "customer_id": e["customer_id"], "ts": t_p,
                "previous_purchase_event_id": prev_id, "previous_purchase_ts": prev,
                "journey": [], "skipped_no_touchpoints": len(j) == 0}
        if len(j) == 0:
            conv.update({"model_touchpoints": [], "n_tokens": 0, "inputs": None, "p_full": None,
                         "p_without": [], "removal_effects": [], "fallback_time_decay": False, "credits": [],
                         "zero_credit_touchpoints": []})
            conversions.append(conv)
            continue
        used = [int(x) for x in r[6]]
        if len(used) == 0:
            p_full, p_wo, d, fallback = None, np.zeros(0), np.zeros(0), True
            w_all = E.rule_credits(lg.ts[j], t_p)["time_decay"]
            credit = {int(q): float(x) for q, x in zip(j, w_all)}
            feeds = {name: np.stack([r[k]]) for k, name in enumerate(ATTR_INPUTS)}
            (w_e, full_e), = E.removal_credits(a_sess, [(list(r[:6]), r[7])], baseline_share=BASELINE_SHARE)
            assert w_e is None or not len(r[7])
            p_full = full_e
        else:
            feeds, p_full, p_wo, d, fallback, credit = deep_credit(a_sess, lg, p, j, prev, r)
        n_tok = int(r[5].sum())
        for q in j:
            q = int(q)
            conv["journey"].append({
                "event_id": lg.event_ids[q], "channel": ch_name(q), "event_type": D.EVENT_TYPES[lg.etype[q]],
                "ts": int(lg.ts[q]), "campaign_bucket": int(lg.camp[q]),
                "in_purchase_path": bool(lg.ts[q] > t_p - path_ms),
                "given_to_model": q in used,
                "credit": credit.get(q, 0.0)})
        conv["model_touchpoints"] = [{"event_id": lg.event_ids[q], "channel": ch_name(q), "ts": int(lg.ts[q]),
                                      "array_position": int(pos)} for q, pos in zip(used, r[7])]
        conv["n_tokens"] = n_tok
        conv["inputs"] = {name: ([int(v) for v in r[k][:n_tok]] if k < 3 else [f32(v) for v in r[k][:n_tok]])
                          for k, name in enumerate(ATTR_INPUTS)}
        conv["p_full"] = f32(p_full)
        conv["p_without"] = [f32(v) for v in p_wo]
        conv["removal_effects"] = [float(v) for v in d]
        conv["fallback_time_decay"] = bool(fallback)
        conv["credits"] = [{"event_id": lg.event_ids[q], "channel": ch_name(q), "credit": credit[q]}
                           for q in sorted(credit) if credit[q] > 0]
        conv["zero_credit_touchpoints"] = [
            {"event_id": lg.event_ids[int(q)], "reason": ("purchase_path" if lg.ts[q] > t_p - path_ms else
                                                          ("zero_removal_effect" if int(q) in used else
                                                           "truncated_to_L"))}
            for q in j if credit.get(int(q), 0.0) == 0.0]
        conversions.append(conv)

    return steps, conversions


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log", default=os.path.join(HERE, "data", "heldout", "events.jsonl"))
    ap.add_argument("--models", default=HERE)
    ap.add_argument("--out", default=os.path.join(HERE, "fixtures", "stream_parity.json"))
    ap.add_argument("--verify-complete", action="store_true",
                    help="scan the whole log to check that the chosen customers have no later events")
    args = ap.parse_args(argv)

    import onnxruntime as ort

    days = customer_days(args.log)
    lines, events, t_last = read_head(args.log, days, HEAD_EXTRA_DAYS)
    print(f"read {len(lines)} lines (up to {(t_last - int(events[0]['ts'])) / D.DAY_MS:.1f} days)", file=sys.stderr)
    lg = load_subset(lines)
    sd = D.step_features(lg)
    raw_by_id = {e.get("event_id"): e for e in events}
    assert len(raw_by_id) == len(events), "event ids are not unique"
    tps, purs = D.customer_touch_index(lg)

    a_meta = json.load(open(os.path.join(args.models, "attribution", "metadata.json")))
    global BASELINE_SHARE
    BASELINE_SHARE = bool(a_meta.get("baseline_share"))
    fe = a_meta["feature_encoding"]
    L, path_ms, context = fe["L"], fe["purchase_path_minutes"] * 60_000, fe["previous_purchase_token"]
    s_meta = json.load(open(os.path.join(args.models, "journey_step", "metadata.json")))
    H = s_meta["hidden_size"]
    a_sess = E.session(os.path.join(args.models, "attribution", "model.onnx"))

    # complete customers: first event at least customer_days + 2 days before the last ts read
    first_ts = lg.ts[lg.starts]
    complete = [c for c in range(len(lg.starts)) if first_ts[c] <= t_last - (days + 2) * D.DAY_MS]
    convs_of = {c: conversion_items(lg, c, tps, purs, L, path_ms, context) for c in complete}
    fallback_of = {}
    for c in complete:
        for p, j, prev, r in convs_of[c]:
            if r is not None and len(r[6]) and deep_credit(a_sess, lg, p, j, prev, r)[4]:
                fallback_of[c] = True
    chosen, cov = choose(lg, sd, complete, convs_of, raw_by_id, fallback_of)
    chosen_ids = {lg.customer_ids[c] for c in chosen}
    print(f"{len(complete)} complete customers; chosen {sorted(chosen_ids)}; not covered: {cov['not_covered']}",
          file=sys.stderr)

    if args.verify_complete:
        n_head = len(lines)
        with open(args.log, "rb") as fh:
            for line in itertools.islice(fh, n_head, None):
                if any(f'"customer_id":"{cid}"'.encode() in line for cid in chosen_ids):
                    e = json.loads(line)
                    assert e.get("customer_id") not in chosen_ids, f"customer {e['customer_id']} has later events"
        print("verified: the chosen customers have no events after the lines read", file=sys.stderr)

    # the stream: the chosen customers' raw events in log order
    stream = [e for e in events if e.get("customer_id") in chosen_ids]
    idx_of = {lg.event_ids[i]: i for i in range(lg.n) if lg.customer_ids[lg.cust[i]] in chosen_ids}
    order = [idx_of[e["event_id"]] for e in stream]
    # per customer, the log order must equal tsdata's (customer, ts, arrival) order
    for c in chosen:
        mine = [i for i in order if lg.cust[i] == c]
        assert mine == list(range(int(lg.starts[c]), int(lg.ends[c]))), "stream order differs from tsdata order"

    s_sess = E.session(os.path.join(args.models, "journey_step", "model.onnx"))
    steps, conversions = run_models(lg, sd, stream, order, convs_of, purs, s_sess, a_sess, H, path_ms)
    synthetic = synthetic_block(s_sess, a_sess, H, L, path_ms, context)

    # coverage summary
    et_counts = {}
    for i in order:
        n = D.EVENT_TYPES[lg.etype[i]]
        et_counts[n] = et_counts.get(n, 0) + 1
    coverage = {
        "customers": len(chosen), "events": len(stream), "event_types": et_counts,
        "events_without_session_id": sum("session_id" not in e for e in stream),
        "events_without_channel": sum("channel" not in e for e in stream),
        "events_with_campaign": sum(bool(e.get("campaign")) for e in stream),
        "purchases": len(conversions),
        "customers_with_repeat_purchases": sum("repeat_purchase" in t for t in cov["tags"].values()),
        "conversions_with_previous_purchase_token": sum(c["previous_purchase_ts"] is not None and not c["skipped_no_touchpoints"] for c in conversions),
        "conversions_without_touchpoints": sum(c["skipped_no_touchpoints"] for c in conversions),
        "conversions_time_decay_fallback": sum(c["fallback_time_decay"] for c in conversions),
        "conversions_with_purchase_path_touchpoints": sum(any(t["in_purchase_path"] for t in c["journey"]) for c in conversions),
        "carts_opened": int(sum(1 for i in order if sd.cart_open[i] and sd.cart_id[i] == i)),
        "cart_removes": et_counts.get("cart_remove", 0),
        "checkout_starts": et_counts.get("checkout_start", 0),
        "tags_per_customer": cov["tags"],
        "not_covered": cov["not_covered"],
    }

    fixture = {
        "description": DESCRIPTION,
        "generated_by": "models/make_fixtures.py",
        "source": {"log": rel(args.log), "lines_read": len(lines),
                   "selection": f"customers whose first event is >= customer_days + 2 = {days + 2:g} days before the "
                                f"last ts read (complete), chosen greedily for coverage, <= {MAX_EVENTS} events",
                   "customers": [lg.customer_ids[c] for c in chosen]},
        "models": {
            "journey_step": {"file": "models/journey_step/model.onnx", "version": s_meta["version"],
                             "sha256": sha256(os.path.join(args.models, "journey_step", "model.onnx"))},
            "attribution": {"file": "models/attribution/model.onnx", "version": a_meta["version"],
                            "architecture": a_meta.get("architecture"),
                            "sha256": sha256(os.path.join(args.models, "attribution", "model.onnx"))},
        },
        "onnxruntime_version": ort.__version__,
        "constants": {"L": L, "journey_max_touchpoints": 64, "purchase_path_minutes": path_ms // 60000,
                      "previous_purchase_token": context, "previous_purchase_age_cap": D.PREV_PURCHASE_AGE_CAP,
                      "lookback_days": D.LOOKBACK_MS // D.DAY_MS, "age_log_scale": D.AGE_LOG_SCALE,
                      "time_decay_half_life_days": E.HALF_LIFE_MS // D.DAY_MS, "hidden_size": H},
        "tolerances": TOLERANCES,
        "feature_names": D.STEP_FEATURES,
        "coverage": coverage,
        "events": stream,
        "steps": steps,
        "conversions": conversions,
        "synthetic": synthetic,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        f.write(dump(fixture))
    print(f"wrote {rel(args.out)}: {os.path.getsize(args.out)} bytes, {len(stream)} events, "
          f"{len(conversions)} conversions", file=sys.stderr)


TOLERANCES = {
    "features": {"abs": 1e-6, "note": "float32; computed in float64 and rounded once to float32 they should match "
                                      "exactly or within 1 ulp (libm log1p/sin/cos)"},
    "step_outputs": {"p_purchase_abs": 1e-4, "p_abandon_abs": 1e-4, "expected_value_rel": 1e-4,
                     "hidden_out_head_abs": 1e-4,
                     "note": "the hidden state is chained over up to ~100 events per customer; tract vs ONNX Runtime "
                             "differ by ~1e-7 per step (tract 0.23.9 on this file: max 1.0e-6)"},
    "attribution": {"p_abs": 1e-5, "credit_abs": 1e-3,
                    "note": "credits are differences of probabilities, normalised: a removal effect near 0 can flip "
                            "between 0 and a tiny positive value; compare credits with credit_abs and the fallback "
                            "flag exactly (tract 0.23.9 on this file: p max diff 1.5e-7)"},
}

DESCRIPTION = {
    "purpose": "Stream-level parity fixture: a few customers' complete event sequences from the held-out simulator "
               "log, the journey step model's features and outputs per event, and the deep credit of every purchase, "
               "all computed by the training/evaluation code (tsdata.py, evaluate.py) and ONNX Runtime.",
    "generated_by": "the script that wrote this file (deterministic)",
    "source": "log path relative to the repository, lines read from its head, how customers were chosen, their ids",
    "models": "per model: repository path, metadata.json version, sha256 of model.onnx",
    "onnxruntime_version": "ONNX Runtime that produced the outputs (one intra-op thread, CPU)",
    "constants": "encoding constants used (from tsdata.py / the metadata.json files)",
    "tolerances": "suggested comparison tolerances for a Rust/tract reimplementation",
    "feature_names": "[38] the step features in order (journey_step/metadata.json feature_encoding.order)",
    "coverage": "what the chosen customers exercise (counts; tags per customer; tags not covered)",
    "events": "[n] the raw JSON event objects of the chosen customers, in log order (interleaved across customers, "
              "exactly as a stream delivers them); feed them to the processor in this order",
    "steps": "[n] one per event, same order as events: event_id, features [38] (float32 values of "
             "tsdata.step_features), and the ONNX Runtime outputs of journey_step/model.onnx run once per event with "
             "the customer's hidden state (zeros before its first event, then the previous full hidden_out): "
             "p_purchase, p_abandon, expected_value (scalars), p_abandon_after (the re-check head's values, "
             "when the model has it) and hidden_out_head = hidden_out[0:4]",
    "conversions": "one per purchase event of the chosen customers, in stream order. Fields: purchase_event_id, "
                   "customer_id, ts; previous_purchase_event_id / previous_purchase_ts (the customer's latest purchase "
                   "before this one, null if none; its ts is what the context token's age uses); "
                   "skipped_no_touchpoints (true: the journey is empty, no credit at all, as evaluate.py skips it); "
                   "journey: [m] the journey as the processor keeps it (tsdata.journey_at: touchpoints with a channel "
                   "after the previous purchase's ts, at or before the purchase ts, within 30 days; then the newest 64), "
                   "oldest first, each with event_id, channel, event_type, ts, campaign_bucket, in_purchase_path "
                   "(ts > purchase ts - 30 min), given_to_model, credit (final credit, 0 if none); "
                   "model_touchpoints: [k] the touchpoints given to the attribution model (event_id, channel, ts, "
                   "array_position = their index in the model arrays); n_tokens: mask.sum() = k (+1 with the "
                   "previous-purchase token at position 0); inputs: the six model inputs of the full journey, only the "
                   "first n_tokens of the L = 64 positions (the rest is padding: 0 / 0.0); p_full: p_conversion of "
                   "the full journey; p_without: [k] p_conversion with touchpoint i's mask set to 0 (rows 1..k of the "
                   "same batched call, in model_touchpoints order); removal_effects: [k] max(0, p_full - p_without_i); "
                   "fallback_time_decay: all removal effects 0 (or k = 0) so the credit is time decay (7-day "
                   "half-life) over the whole journey (all m touchpoints, the purchase path included); credits: the "
                   "touchpoints with credit > 0 (event_id, channel, credit), summing to 1; zero_credit_touchpoints: "
                   "every journey touchpoint with credit 0 and why (purchase_path, zero_removal_effect, truncated_to_L)",
}


def dump(obj) -> str:
    """JSON with one line per list element at the top levels (readable diffs, compact numbers)."""
    def enc(o):
        return json.dumps(o, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    out = ["{"]
    items = list(obj.items())
    for n, (k, v) in enumerate(items):
        sep = "," if n + 1 < len(items) else ""
        if isinstance(v, list) and v and isinstance(v[0], dict):
            out.append(f" {enc(k)}: [")
            out += [f"  {enc(x)}{',' if m + 1 < len(v) else ''}" for m, x in enumerate(v)]
            out.append(f" ]{sep}")
        elif isinstance(v, dict):
            out.append(f" {enc(k)}: {{")
            sub = list(v.items())
            out += [f"  {enc(a)}: {enc(b)}{',' if m + 1 < len(sub) else ''}" for m, (a, b) in enumerate(sub)]
            out.append(f" }}{sep}")
        else:
            out.append(f" {enc(k)}: {enc(v)}{sep}")
    out.append("}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
