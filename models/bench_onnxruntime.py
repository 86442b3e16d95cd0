#!/usr/bin/env python3
"""Times ONNX Runtime on the committed models, single-threaded, as a reference for the processor's tract numbers.

    models/.venv/bin/python models/bench_onnxruntime.py            # [--repeats 300] [--out models/bench_onnxruntime.json]

Run it on a quiet machine (timings made while other work runs, e.g. a cargo build, are noisy).
Session: CPU provider, intra_op_num_threads = 1, inter_op_num_threads = 1, sequential execution,
ORT_ENABLE_ALL graph optimisations. Each case: warm-up runs, then the median (and p10/p90) of many
timed `session.run` calls on the same realistic random input (fixed seed):
  - journey_step/model.onnx at batch 1, 8, 16, 32, 64, 128, 256 (features one-hot + continuous in
    their real ranges, hidden state in [-1, 1]);
  - attribution/model.onnx (attention) and attribution_cnn/model.onnx at batch = k + 1 for
    k = 8, 32, 64 touchpoints (the deep-credit call: the full journey plus k rows each with one
    touchpoint masked; k = 8, 32 with a previous-purchase token, k = 64 fills L = 64 with touchpoints),
    and at batch 1 and 64 (journeys of random length).
Prints a markdown table and writes models/bench_onnxruntime.json (numbers, onnxruntime version, CPU
model name).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tsdata as D  # noqa: E402

L = D.ATTR_L


def session(path):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def step_inputs(rng, b: int):
    x = np.zeros((b, D.N_STEP_FEATURES), dtype=np.float32)
    x[np.arange(b), rng.integers(0, len(D.EVENT_TYPES), b)] = 1
    x[np.arange(b), len(D.EVENT_TYPES) + rng.integers(0, len(D.CHANNELS) + 1, b)] = 1
    o = len(D.EVENT_TYPES) + len(D.CHANNELS) + 1
    x[:, o] = rng.uniform(0, 1, b) * (rng.random(b) < 0.1)
    x[:, o + 1] = rng.uniform(0, 1, b)
    x[:, o + 2] = rng.random(b) < 0.02
    x[:, o + 3] = rng.random(b) < 0.3
    cart = rng.random(b) < 0.2
    x[:, o + 4] = cart
    x[:, o + 5] = cart * rng.uniform(0.5, 1.2, b)
    x[:, o + 6] = cart * rng.uniform(0.3, 1.0, b)
    hour = rng.uniform(0, 24, b)
    x[:, o + 7] = np.sin(2 * np.pi * hour / 24)
    x[:, o + 8] = np.cos(2 * np.pi * hour / 24)
    hp = rng.random(b) < 0.3
    x[:, o + 9] = hp
    x[:, o + 10] = hp * rng.uniform(0, 0.8, b)
    x[:, o + 11] = rng.uniform(0, 0.85, b)
    x[:, o + 12] = cart * (rng.random(b) < 0.3)
    h = rng.uniform(-1, 1, (b, 64)).astype(np.float32)
    return {"features": x, "hidden_in": h}


def journey(rng, k: int, prev: bool):
    """One journey's six arrays: optional previous-purchase token + k touchpoints (k <= L - prev)."""
    off = 1 if prev else 0
    ch = np.zeros(L, np.int64); et = np.zeros(L, np.int64); cb = np.zeros(L, np.int64)
    age = np.zeros(L, np.float32); pos = np.zeros(L, np.float32); m = np.zeros(L, np.float32)
    if prev:
        ch[0], et[0], age[0], m[0] = D.CH_OTHER, D.PURCHASE, rng.uniform(0.5, 1.2), 1
    sl = slice(off, off + k)
    ch[sl] = rng.choice([0, 2, 4, 5, 6], k)
    et[sl] = rng.choice(list(D.TOUCH_TYPES), k, p=[0.75, 0.1, 0.12, 0.03])
    cb[sl] = rng.integers(1, D.CAMPAIGN_BUCKETS, k)
    hours = np.sort(rng.uniform(0.5, 720, k))[::-1]
    age[sl] = np.log1p(hours) / D.AGE_LOG_SCALE
    pos[sl] = (np.arange(k) + 0.5) / k
    m[sl] = 1
    return [ch, et, cb, age, pos, m]


NAMES = ["channel", "event_type", "campaign_bucket", "age", "position", "mask"]


def deep_credit_inputs(rng, k: int):
    """1 + k rows: the full journey, then each touchpoint masked. With k < L the journey also holds the
    previous-purchase token (never masked); k = L = 64 fills all positions with touchpoints."""
    prev = k < L
    cols = journey(rng, k, prev)
    off = 1 if prev else 0
    rows = [cols]
    for i in range(k):
        c2 = [c.copy() for c in cols]
        c2[5][off + i] = 0
        rows.append(c2)
    return {n: np.stack([r[j] for r in rows]) for j, n in enumerate(NAMES)}


def batch_inputs(rng, b: int):
    rows = [journey(rng, int(rng.integers(1, 40)), bool(rng.random() < 0.3)) for _ in range(b)]
    return {n: np.stack([r[j] for r in rows]) for j, n in enumerate(NAMES)}


def timeit(sess, feeds, repeats: int, min_seconds: float):
    for _ in range(max(10, repeats // 10)):
        sess.run(None, feeds)
    ts = []
    t_start = time.perf_counter()
    while len(ts) < repeats or (time.perf_counter() - t_start < min_seconds and len(ts) < 20 * repeats):
        t0 = time.perf_counter_ns()
        sess.run(None, feeds)
        ts.append((time.perf_counter_ns() - t0) / 1000.0)
    a = np.asarray(ts)
    return {"runs": len(ts), "median_us": float(np.median(a)), "p10_us": float(np.percentile(a, 10)),
            "p90_us": float(np.percentile(a, 90))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=HERE)
    ap.add_argument("--repeats", type=int, default=300, help="timed runs per case (at least)")
    ap.add_argument("--min-seconds", type=float, default=0.5, help="keep timing a case at least this long")
    ap.add_argument("--out", default=os.path.join(HERE, "bench_onnxruntime.json"))
    args = ap.parse_args(argv)
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    results = []

    def case(model, what, batch, feeds, sess):
        r = timeit(sess, feeds, args.repeats, args.min_seconds)
        r.update({"model": model, "case": what, "batch": batch, "median_us_per_row": r["median_us"] / batch})
        results.append(r)
        print(f"  {model:16s} {what:28s} batch {batch:4d}: {r['median_us']:9.1f} µs", file=sys.stderr, flush=True)

    s = session(os.path.join(args.models, "journey_step", "model.onnx"))
    for b in (1, 8, 16, 32, 64, 128, 256):
        case("journey_step", "step", b, step_inputs(rng, b), s)
    for name in ("attribution", "attribution_cnn"):
        p = os.path.join(args.models, name, "model.onnx")
        if not os.path.exists(p):
            continue
        s = session(p)
        for k in (8, 32, 64):
            feeds = deep_credit_inputs(rng, k)
            case(name, f"deep credit, k={k}", int(feeds["mask"].shape[0]), feeds, s)
        for b in (1, 64):
            case(name, "journeys", b, batch_inputs(rng, b), s)

    meta = {"onnxruntime_version": ort.__version__, "numpy_version": np.__version__, "cpu": cpu_name(),
            "python": platform.python_version(),
            "session": {"intra_op_num_threads": 1, "inter_op_num_threads": 1, "execution_mode": "sequential",
                        "graph_optimization_level": "ORT_ENABLE_ALL", "provider": "CPUExecutionProvider"},
            "method": f"median of >= {args.repeats} timed session.run calls (>= {args.min_seconds} s) after warm-up, "
                      "same input each call; deep credit k: 1 + k rows (the full journey + k masked)",
            "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
            "results": results}
    with open(args.out, "w") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    print(f"ONNX Runtime {ort.__version__}, {meta['cpu']}, 1 thread "
          f"(load average {meta['load_average_1min']:.2f} while measuring)\n")
    print("| model | case | batch | median µs / call | µs / row | p10–p90 µs |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['case']} | {r['batch']} | {r['median_us']:.1f} | {r['median_us_per_row']:.2f} | "
              f"{r['p10_us']:.1f}–{r['p90_us']:.1f} |")


if __name__ == "__main__":
    main()
