#!/usr/bin/env bash
# Side-by-side float32-sum all-reduce on one host over shared memory: oxccl-perf (--transport shm)
# vs Open MPI's MPI_Allreduce (btl sm), with 2 ranks and with 4 ranks (oversubscribed on 2 cores),
# measured in the same run, interleaved: each repetition runs oxccl's sweep and then Open MPI's
# (this machine is noisy, and its speed changes from one minute to the next: compare ratios taken
# side by side, not absolutes).
#
# Usage: benches/compare_shm.sh            (from anywhere inside the repository)
# Env:   MAXB   largest message in bytes (default 64 MiB)   REPS  repetitions (default 5)
#        ITERS  oxccl-perf timed iterations per size above 32 KiB (default 50)
#        ITERS_SMALL  the same up to 32 KiB (default 20000: a few microseconds per call need many
#               calls to rise above the clock and the scheduler; the peers time ~0.2 s per size)
#        PEERS  peer directory
#        RANKS  rank counts to compare (default "2 4")   OXCCL_ARGS  extra oxccl-perf flags
#        REG    1 (default): each round also runs oxccl-perf -R 1 (buffers in registered memory,
#               which peer processes map) over the sizes above 32 KiB; 0 skips it
#        CHART  PNG written with busbw and time against size (default benches/charts/shm.png;
#               CHART= skips it); matplotlib is installed on first use (benches/chart.py)
#
# Placement: with more ranks than CPUs oxccl-perf binds rank i to CPU i mod #CPUs (its --bind
# auto), while the peers script runs Open MPI with --bind-to none; OXCCL_ARGS="--bind none"
# measures oxccl unbound too.
#
# Sizes are 8 B x 4^k, the peers' sweep. oxccl's time is nccl-tests' (slowest rank's mean over
# the iterations, out-of-place); Open MPI's is its harness's (one repetition per round here). The
# table gives each side's median over the REPS rounds and the median of the per-round ratios.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PEERS=${PEERS:-$ROOT/../shared/peers}
MAXB=${MAXB:-67108864} REPS=${REPS:-5} ITERS=${ITERS:-50} RANKS=${RANKS:-"2 4"}
ITERS_SMALL=${ITERS_SMALL:-20000} SMALL=32768 REG=${REG:-1}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/oxccl-peers}
CHART=${CHART-$ROOT/benches/charts/shm.png}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

[ -d "$PEERS" ] || { echo "no peers directory at $PEERS (set PEERS=...)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --bin oxccl-perf)
[ -x "$PEERS_HOME/ompi/bin/mpirun" ] || "$PEERS/install.sh"

for n in $RANKS; do
  s=8; while [ $((s * 4)) -le "$MAXB" ]; do s=$((s * 4)); done
  for rep in $(seq "$REPS"); do
    echo "== round $rep of $REPS, $n ranks: oxccl-perf (shm)"
    out="$TMP/ox${n}_$rep.txt"
    # shellcheck disable=SC2086
    "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -b 8 -e "$((MAXB < SMALL ? MAXB : SMALL))" \
      -f 4 -n "$ITERS_SMALL" -w 100 ${OXCCL_ARGS:-} | tee "$out"
    if [ "$MAXB" -gt "$SMALL" ]; then
      # shellcheck disable=SC2086
      "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -b $((SMALL * 4)) -e "$MAXB" -f 4 \
        -n "$ITERS" -w 5 ${OXCCL_ARGS:-} | tee -a "$out"
    fi
    # The peers end their sweep with MAXB itself, which 8 x 4^k may skip (64 MiB is 8 x 4^11.5).
    if [ "$s" -ne "$MAXB" ]; then
      # shellcheck disable=SC2086
      "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -b "$MAXB" -e "$MAXB" -n "$ITERS" -w 5 \
        ${OXCCL_ARGS:-} | tee -a "$out"
    fi
    if [ "$REG" = 1 ] && [ "$MAXB" -gt "$SMALL" ]; then
      echo "== round $rep of $REPS, $n ranks: oxccl-perf (shm, registered memory: -R 1)"
      # shellcheck disable=SC2086
      "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -R 1 -b $((SMALL * 4)) -e "$MAXB" -f 4 \
        -n "$ITERS" -w 5 ${OXCCL_ARGS:-} | tee "$TMP/reg${n}_$rep.txt"
      if [ "$s" -ne "$MAXB" ]; then
        # shellcheck disable=SC2086
        "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -R 1 -b "$MAXB" -e "$MAXB" \
          -n "$ITERS" -w 5 ${OXCCL_ARGS:-} | tee -a "$TMP/reg${n}_$rep.txt"
      fi
    fi
    echo "== round $rep of $REPS, $n ranks: Open MPI (sm)"
    MAXB=$MAXB REPS=1 "$PEERS/run.sh" "ompi$n" | tee "$TMP/peers${n}_$rep.txt"
  done
done

python3 - "$TMP" "$RANKS" "$REPS" <<'PY'
import sys, os, statistics
d, ranks, reps = sys.argv[1], sys.argv[2].split(), int(sys.argv[3])
chart = open(os.path.join(d, "chart.dat"), "w")
def oxccl(path):
    out = {}
    for line in open(path):
        f = line.split()
        if line.startswith("#") or len(f) < 13:
            continue
        out[int(f[0])] = (float(f[5]), float(f[7]))
    return out
def peer(path):
    out = {}
    for line in open(path):
        f = line.split()
        if len(f) >= 8 and f[0].isdigit():
            out[int(f[0])] = (float(f[2]), float(f[6]))
    return out
def fmt_t(us):
    return f"{us/1000:9.2f} ms" if us >= 10000 else f"{us:9.2f} us"
def med(rows):
    if not rows:
        return None
    return (statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows))
def cell(r):
    return f"{fmt_t(r[0])} {r[1]:6.2f}" if r else f"{'-':>12} {'-':>6}"
for n in ranks:
    rounds = [(oxccl(os.path.join(d, f"ox{n}_{k}.txt")), peer(os.path.join(d, f"peers{n}_{k}.txt")))
              for k in range(1, reps + 1)]
    regs = [oxccl(p) for p in (os.path.join(d, f"reg{n}_{k}.txt") for k in range(1, reps + 1))
            if os.path.exists(p)]
    sizes = sorted(set().union(*(set(a) | set(m) for a, m in rounds)))
    print()
    print(f"all-reduce float32 sum, {n} ranks, shared memory: median time and busbw (GB/s) over {reps} rounds")
    print(f"{'bytes':>10} | {'oxccl shm':>19} | {'Open MPI sm':>19} | {'ratio':>7} {'min':>6} {'max':>6}"
          + (f" | {'oxccl -R 1 (registered)':>24}" if regs else ""))
    for size in sizes:
        a = med([r[0][size] for r in rounds if size in r[0]])
        m = med([r[1][size] for r in rounds if size in r[1]])
        g = med([r[size] for r in regs if size in r])
        ratios = sorted(r[1][size][0] / r[0][size][0] for r in rounds
                        if size in r[0] and size in r[1] and r[0][size][0] > 0)
        rc = (f"{statistics.median(ratios):6.2f}x {ratios[0]:5.2f}x {ratios[-1]:5.2f}x"
              if ratios else f"{'-':>7} {'-':>6} {'-':>6}")
        print(f"{size:>10} | {cell(a)} | {cell(m)} | {rc}" + (f" | {cell(g):>24}" if regs else ""))
        for lib, r in (("oxccl", a), ("Open_MPI", m), ("oxccl_registered", g)):
            if r:
                print(lib, n, size, r[0], r[1], file=chart)
print()
print("ratio = Open MPI time / oxccl time in the same round (= oxccl busbw / Open MPI busbw; > 1: oxccl")
print("faster): the median over the rounds, and the smallest and largest")
PY

if [ -n "$CHART" ]; then
  mkdir -p "$(dirname "$CHART")"
  python3 "$ROOT/benches/chart.py" "$TMP/chart.dat" "$CHART" \
    "all-reduce float32 sum over shared memory: medians of $REPS interleaved rounds" ||
    echo "chart not written (matplotlib unavailable?)" >&2
fi
