#!/usr/bin/env python3
"""Fits the tuner's machine model (oxccl::tune::SHM / TCP, CACHE, CACHE_SPEEDUP) to measurements.

Usage: benches/fit_tuner.py DIR TRANSPORT [alpha_us beta_GBps gamma_GBps overhead_us wake_us
                                           cache_KiB speedup]
  DIR        the output directory of benches/validate_tuner.sh (perf-N-T-ALGO-R.json files)
  TRANSPORT  shm or tcp
  The numbers are the starting point (default: the current defaults as oxccl-sim prints them).
Environment: W (weight of the prediction error against the regret, default 3), ROUNDS (4),
FIX (comma-separated parameters to keep, e.g. "cache,speedup"), SIM (the oxccl-sim binary).

For every candidate it replays every measured (ranks, size, algorithm) point in the simulator
(`oxccl-sim --machine T --algo all --tsv` with the candidate's numbers) and scores
  regret = sum over (ranks, size) of log(measured time of the predicted-fastest / measured best)
  error  = RMS over every point of log(predicted / measured)
minimising regret + W * error by a coordinate search over a grid of each parameter. The regret is
what the tuner is for; the error keeps the model physical where the regret is flat or noisy.
"""
import glob
import json
import math
import os
import re
import subprocess
import sys

DIR, T = sys.argv[1], sys.argv[2]
SIM = os.environ.get("SIM", "target/release/oxccl-sim")
ALGOS = ["ring", "tree", "rhd", "direct"]
KEYS = ["alpha", "beta", "gamma", "overhead", "wake", "cache", "speedup"]
GRID = {
    "alpha": [0.5, 0.7, 1, 1.4, 2, 3, 4, 6, 8, 12, 16, 24],
    "beta": [0.5, 0.7, 1, 1.4, 2, 3, 4, 6, 8, 12],
    "gamma": [1, 2, 3, 4, 6, 8, 12, 16],
    "overhead": [0, 0.1, 0.2, 0.4, 0.7, 1, 1.5, 2, 3, 5, 7, 10],
    "wake": [0, 1, 2, 3, 5, 7, 10, 15, 20, 30, 50],
    "cache": [1024, 2048, 4096, 8192, 16384, 32768],
    "speedup": [1, 1.5, 2, 3, 4, 6],
}

meas = {}
for f in glob.glob(f"{DIR}/perf-*-{T}-*.json"):
    m = re.match(r".*perf-(\d+)-(\w+)-(\w+)-(\d+)\.json", f)
    if not m or os.path.getsize(f) == 0:
        continue
    try:
        rows = json.load(open(f))["rows"]
    except (ValueError, KeyError):
        continue
    n, _, a, _ = m.groups()
    for row in rows:
        k = (int(n), row["size"], a)
        meas[k] = min(meas.get(k, float("inf")), row["oop"]["time_us"])
if not meas:
    sys.exit(f"no measurements for {T} in {DIR}")
RANKS = sorted({k[0] for k in meas})
MAXB = max(k[1] for k in meas)


def predict(p):
    pred = {}
    for n in RANKS:
        args = [SIM, "--machine", T, "--ranks", str(n), "--algo", "all", "-b", "8", "-e", str(MAXB),
                "-f", "4", "--tsv", "--alpha", f"{p['alpha']}us", "--beta-bw", f"{p['beta']}GB/s",
                "--gamma-bw", f"{p['gamma']}GB/s", "--overhead", f"{p['overhead']}us",
                "--wake", f"{p['wake']}us", "--cache", f"{int(p['cache'])}K",
                "--cache-speedup", str(p["speedup"])]
        out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            s, a, us = line.split()
            pred[(n, int(s), a)] = float(us)
    return pred


def score(p, show=False):
    pred = predict(p)
    regret = err = 0.0
    cnt = ok = tot = 0
    for n in RANKS:
        for s in sorted({k[1] for k in meas if k[0] == n}):
            have = {a: meas[(n, s, a)] for a in ALGOS if (n, s, a) in meas}
            pr = {a: pred[(n, s, a)] for a in have if (n, s, a) in pred}
            if not pr:
                continue
            best = min(have, key=have.get)
            pick = min(pr, key=pr.get)
            r = have[pick] / have[best]
            regret += math.log(r)
            tot += 1
            ok += r <= 1.10
            for a in pr:
                err += math.log(pr[a] / have[a]) ** 2
                cnt += 1
            if show:
                cells = " ".join(f"{a} {have[a]:.1f}/{pr[a]:.1f}" for a in pr)
                print(f"{n} {s:>9} {cells}  best {best} pick {pick} {r:.2f}")
    return regret, math.sqrt(err / max(cnt, 1)), ok, tot


def main():
    start = [1, 6, 16, 1, 1, 2048, 1.5] if T == "shm" else [1, 4, 16, 7, 2, 2048, 1.5]
    if len(sys.argv) >= 10:
        start = [float(x) for x in sys.argv[3:10]]
    p = dict(zip(KEYS, start))
    w = float(os.environ.get("W", "3"))
    fixed = set(os.environ.get("FIX", "").split(","))

    def objective(q):
        r, e, ok, tot = score(q)
        return r + w * e, r, e, ok, tot

    best = objective(p)
    print("start", p, "J %.3f regret %.3f error %.3f ok %d/%d" % best)
    for rnd in range(int(os.environ.get("ROUNDS", "4"))):
        changed = False
        for k in (k for k in KEYS if k not in fixed):
            for v in GRID[k]:
                q = dict(p, **{k: v})
                j = objective(q)
                if j[0] < best[0] - 1e-9:
                    best, p, changed = j, q, True
        print(f"round {rnd}", p, "J %.3f regret %.3f error %.3f ok %d/%d" % best, flush=True)
        if not changed:
            break
    print("final", p, "J %.3f regret %.3f error %.3f ok %d/%d" % best)
    score(p, show=True)


main()
