#!/usr/bin/env bash
# Validates the tuner against measurements on this machine (not a test: it takes minutes).
#
# For each rank count (2 4 8) and transport (shm tcp) it measures every all-reduce algorithm at
# each size of a sweep with oxccl-perf (-a forces the algorithm), REPEATS times, keeping the
# fastest out-of-place time per size (the machine is shared, so the minimum is the least noisy
# estimate). It then asks the tuner for its choice at each size (oxccl-sim --pick --machine T,
# which calls the same oxccl::tune code the library runs) and prints, per size, the best
# measured algorithm, the tuner's choice and whether the choice is within 10% of the best. It
# also prints the simulator's prediction for each algorithm beside the measurement.
#
# To refit the model's defaults to the measurements in DIR: benches/fit_tuner.py DIR shm|tcp.
#
# Usage: benches/validate_tuner.sh [-r REPEATS] [-o DIR] [-n "2 4 8"] [-t "shm tcp"]
#                                  [-e MAXBYTES] [--reuse] [--iters N] [--iters-small N]
#                                  [--warmup N]
#   --iters        timed iterations per size above 32 KiB (default 5)
#   --iters-small  timed iterations per size up to 32 KiB (default 200: their times are
#                  microseconds, and a handful of iterations measures the noise)
#   --reuse    skip the measurements whose JSON is already in DIR (re-run the comparison only)
#   --baseline DIR2   also score hindsight: pick, at each point, the algorithm that measured
#              fastest in DIR2 (an earlier run) and judge it on this run's measurements. What
#              that oracle scores is the run-to-run noise floor the tuner cannot beat.
# Environment: PERF, SIM (binaries; default target/release/...), NOBUILD=1 (skip cargo build).
set -euo pipefail
cd "$(dirname "$0")/.."

REPEATS=2
DIR=target/validate_tuner
RANKS="2 4 8"
TRANSPORTS="shm tcp"
MAXB=64M
ITERS=5
ITERS_SMALL=200
SMALL_MAX=32768
WARMUP=2
REUSE=0
BASELINE=
ALGOS="ring tree rhd direct"
while [ $# -gt 0 ]; do
    case "$1" in
        -r) REPEATS=$2; shift 2 ;;
        -o) DIR=$2; shift 2 ;;
        -n) RANKS=$2; shift 2 ;;
        -t) TRANSPORTS=$2; shift 2 ;;
        -e) MAXB=$2; shift 2 ;;
        --iters) ITERS=$2; shift 2 ;;
        --iters-small) ITERS_SMALL=$2; shift 2 ;;
        --warmup) WARMUP=$2; shift 2 ;;
        --reuse) REUSE=1; shift ;;
        --baseline) BASELINE=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set /p' "$0" | grep '^#'; exit 0 ;;
        *) echo "unknown argument $1" >&2; exit 1 ;;
    esac
done

PERF=${PERF:-target/release/oxccl-perf}
SIM=${SIM:-target/release/oxccl-sim}
if [ "${NOBUILD:-0}" != 1 ]; then
    cargo build --release --bin oxccl-perf --bin oxccl-sim >&2
fi
mkdir -p "$DIR"

for n in $RANKS; do
    for t in $TRANSPORTS; do
        for a in $ALGOS; do
            for r in $(seq 1 "$REPEATS"); do
                f="$DIR/perf-$n-$t-$a-$r.json"
                if [ "$REUSE" = 1 ] && [ -s "$f" ]; then continue; fi
                echo "measuring $n ranks, $t, $a (run $r of $REPEATS)" >&2
                # Small sizes take microseconds: many iterations, or the noise is the result.
                "$PERF" -N "$n" --transport "$t" -a "$a" -b 8 -e "$SMALL_MAX" -f 4 -c 0 \
                    -n "$ITERS_SMALL" -w "$WARMUP" --json "$f.small" > /dev/null \
                    || echo "  failed: $n $t $a (small sizes)" >&2
                "$PERF" -N "$n" --transport "$t" -a "$a" -b "$((SMALL_MAX * 4))" -e "$MAXB" -f 4 \
                    -c 0 -n "$ITERS" -w "$WARMUP" --json "$f.big" > /dev/null \
                    || echo "  failed: $n $t $a" >&2
                python3 - "$f" <<'MERGE'
import json, os, sys
f = sys.argv[1]
parts = [json.load(open(p)) for p in (f + ".small", f + ".big") if os.path.exists(p) and os.path.getsize(p)]
if parts:
    out = parts[0]
    out["rows"] = [r for p in parts for r in p["rows"]]
    json.dump(out, open(f, "w"))
for p in (f + ".small", f + ".big"):
    if os.path.exists(p):
        os.remove(p)
MERGE
            done
        done
        f="$DIR/pick-$n-$t.txt"
        "$SIM" --pick --machine "$t" --ranks "$n" -b 8 -e "$MAXB" -f 4 > "$f"
        f="$DIR/pred-$n-$t.txt"
        "$SIM" --machine "$t" --ranks "$n" --algo all -b 8 -e "$MAXB" -f 4 --tsv > "$f"
    done
done

python3 - "$DIR" "$RANKS" "$TRANSPORTS" "$ALGOS" "$REPEATS" <<'EOF'
import json, sys, os
d, ranks, transports, algos, repeats = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), sys.argv[4].split(), int(sys.argv[5])

def human(b):
    for u, s in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if b >= s and b % s == 0:
            return f"{b // s}{u}"
    return str(b)

total = ok = 0
misses = []
for n in ranks:
    for t in transports:
        meas = {}  # algo -> size -> best time (us)
        for a in algos:
            for r in range(1, repeats + 1):
                f = f"{d}/perf-{n}-{t}-{a}-{r}.json"
                if not os.path.exists(f) or os.path.getsize(f) == 0:
                    continue
                for row in json.load(open(f))["rows"]:
                    tm = row["oop"]["time_us"]
                    m = meas.setdefault(a, {})
                    m[row["size"]] = min(m.get(row["size"], float("inf")), tm)
        picks = {}
        for line in open(f"{d}/pick-{n}-{t}.txt"):
            if line.startswith("#") or not line.strip():
                continue
            size, algo = line.split()[:2]
            picks[int(size)] = algo
        pred = {}
        for line in open(f"{d}/pred-{n}-{t}.txt"):
            if line.startswith("#") or not line.strip():
                continue
            size, algo, us = line.split()[:3]
            pred.setdefault(algo, {})[int(size)] = float(us)
        sizes = sorted({s for m in meas.values() for s in m})
        print(f"\n## {n} ranks, {t}: all-reduce, best of {repeats} runs (-n ITERS), times in us")
        hdr = "| size | " + " | ".join(f"{a} meas / sim" for a in algos) + " | best | tuner | tuner/best | ok |"
        print(hdr)
        print("|" + "---|" * (hdr.count("|") - 1))
        for s in sizes:
            row = {a: meas.get(a, {}).get(s) for a in algos}
            have = {a: v for a, v in row.items() if v is not None}
            if not have:
                continue
            best = min(have, key=have.get)
            pick = picks.get(s, "?")
            ratio = have.get(pick, float("nan")) / have[best]
            good = ratio <= 1.10
            total += 1
            ok += good
            if not good:
                misses.append(f"{n} {t} {human(s)}: picked {pick} ({have.get(pick, 0):.1f} us), best {best} ({have[best]:.1f} us)")
            cells = []
            for a in algos:
                m = row[a]
                p = pred.get(a, {}).get(s)
                cells.append(("-" if m is None else f"{m:.1f}") + " / " + ("-" if p is None else f"{p:.1f}"))
            print(f"| {human(s)} | " + " | ".join(cells) + f" | {best} | {pick} | {ratio:.2f} | {'yes' if good else 'NO'} |")
print(f"\nwithin 10% of the best: {ok} of {total}")
for m in misses:
    print("  miss:", m)
EOF

if [ -n "$BASELINE" ]; then
python3 - "$BASELINE" "$DIR" <<'EOF'
import collections, glob, json, os, sys

def load(d):
    meas = collections.defaultdict(dict)  # (n, t, size) -> algo -> best time
    for f in glob.glob(f"{d}/perf-*.json"):
        n, t, a, _ = os.path.basename(f)[5:-5].split("-")
        for row in json.load(open(f))["rows"]:
            k = (int(n), t, row["size"])
            meas[k][a] = min(meas[k].get(a, float("inf")), row["oop"]["time_us"])
    return meas

before, now = load(sys.argv[1]), load(sys.argv[2])
ok = total = 0
for k in sorted(before):
    if k not in now or not before[k]:
        continue
    pick = min(before[k], key=before[k].get)
    if pick not in now[k]:
        continue
    ratio = now[k][pick] / min(now[k].values())
    total += 1
    ok += ratio <= 1.10
    if ratio > 1.10:
        print(f"  hindsight miss: {k[0]} {k[1]} {k[2]}: {pick} was best before, {ratio:.2f}x the best now")
print(f"hindsight (the fastest of {sys.argv[1]} at each point) within 10% of this run's best: {ok} of {total}")
EOF
fi
