"""Runs `hazard_lab.py` over a set of simulator worlds and prints one table: what a change to the
attribution fit does on every world of the family at once (the model card's tables are made this
way). Each world's logs are simulated when missing (training: --customers, seed 101; held-out:
--heldout-customers, seed 202, with --counterfactual), and every world's results are appended to
--out as `hazard_lab.py` writes them (one JSON line per variant).

    python3 models/lab_sweep.py --worlds default,placebo,intent_display_mild \
        --variant "sensors=true,sensor_states=false,sensor_clicks_only=false,post_visit_hours=auto,sensor_timing=delivered"

Placebo channels are found from the truth (a channel whose true share is below 0.1%), never by name.
A fit of 30 000 customers takes 3-10 min and 7-9 GB; --jobs fits run beside each other."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
PLACEBO_SHARE = 0.001


def simulate(sim: str, world: str, out: str, seed: int, customers: int, counterfactual: bool):
    if os.path.isdir(out) and os.listdir(out):
        return
    cmd = [sim, "--seed", str(seed), "--customers", str(customers), "--out", out]
    if world != "default":
        cmd += ["--config", os.path.join(REPO, "load-tests/simulator/worlds", f"{world}.toml")]
    if counterfactual:
        cmd.append("--counterfactual")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{done.stderr}")


def run_world(a, world: str) -> str:
    base = os.path.join(a.data, world)
    simulate(a.sim, world, os.path.join(base, "train"), 101, a.customers, False)
    simulate(a.sim, world, os.path.join(base, "heldout"), 202, a.heldout_customers, True)
    out = os.path.join(base, "lab.jsonl")
    if os.path.exists(out):
        os.remove(out)
    cmd = [sys.executable, os.path.join(HERE, "hazard_lab.py"), "--train", os.path.join(base, "train"),
           "--heldout", os.path.join(base, "heldout"), "--out", out, "--iters", str(a.iters)]
    for v in a.variant:
        cmd += ["--variant", v]
    with open(os.path.join(base, "lab.log"), "w") as log:
        subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return out


def rows(world: str, path: str):
    """One table row per variant of a world's `hazard_lab.py` results."""
    for line in open(path):
        d = json.loads(line)
        best = d["best_rule_mae"]
        placebo = [c for c, s in d["truth"].items() if s < PLACEBO_SHARE and d["last_touch"].get(c, 0.0) > 0.0]
        pl = ", ".join(f"`{c}` {100 * d['shares_bshare'].get(c, 0.0):.2f}% / {100 * d['last_touch'][c]:.2f}%" for c in placebo)
        left = d.get("mean_share_left", {})
        yield (f"| `{world}` | {d['variant']} | {d['best_rule']} {best:.4f} | **{d['mae_bshare']:.4f} ({d['mae_bshare'] / best:.2f}x)** "
               f"| {d['mae']:.4f} ({d['mae'] / best:.2f}x) | {pl or '–'} | {left.get('mu', float('nan')):.2f} / {left.get('truth', float('nan')):.2f} "
               f"| {d['iterations']}, {d['fit_seconds']:.0f} s |")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worlds", required=True, help="comma-separated world names (load-tests/simulator/worlds/<name>.toml; default: the built-in world)")
    ap.add_argument("--variant", action="append", required=True, help="a hazard_lab.py variant (repeatable)")
    ap.add_argument("--sim", default=os.path.join(REPO, "target/release/touchstream-sim"))
    ap.add_argument("--data", default=os.path.join(HERE, "data"), help="logs and results, one directory per world")
    ap.add_argument("--customers", type=int, default=30000)
    ap.add_argument("--heldout-customers", type=int, default=10000)
    ap.add_argument("--iters", type=int, default=300)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default=None, help="append every world's JSON lines here too")
    a = ap.parse_args()
    worlds = [w.strip() for w in a.worlds.split(",") if w.strip()]
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as pool:
        paths = list(pool.map(lambda w: run_world(a, w), worlds))
    print("| world | variant | best rule | deep, baseline share | deep, credits sum to 1 | placebo: deep / last touch | share left to the baseline: model / truth | iterations, fit |")
    print("|---|---|---|---|---|---|---|---|")
    for w, p in zip(worlds, paths):
        for r in rows(w, p):
            print(r)
        if a.out:
            with open(a.out, "a") as f, open(p) as src:
                for line in src:
                    d = json.loads(line)
                    d["world"] = w
                    f.write(json.dumps(d) + "\n")


if __name__ == "__main__":
    main()
