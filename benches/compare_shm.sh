#!/usr/bin/env bash
# Side-by-side float32-sum all-reduce on one host over shared memory: oxccl-perf (--transport shm)
# vs Open MPI's MPI_Allreduce (btl sm), with 2 ranks and with 4 ranks (oversubscribed on 2 cores),
# measured in the same run (this machine is noisy: compare ratios, not absolutes).
#
# Usage: benches/compare_shm.sh            (from anywhere inside the repository)
# Env:   MAXB   largest message in bytes (default 64 MiB)   REPS  repetitions (default 5)
#        ITERS  oxccl-perf timed iterations per size (default 20)   PEERS  peer directory
#        RANKS  rank counts to compare (default "2 4")   OXCCL_ARGS  extra oxccl-perf flags
#
# Sizes are 8 B x 4^k, the peers' sweep. oxccl's time is nccl-tests' (slowest rank's mean over
# ITERS calls, out-of-place), run REPS times and the median taken; Open MPI reports the median of
# REPS repetitions too.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PEERS=${PEERS:-$ROOT/../shared/peers}
MAXB=${MAXB:-67108864} REPS=${REPS:-5} ITERS=${ITERS:-20} RANKS=${RANKS:-"2 4"}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/oxccl-peers}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

[ -d "$PEERS" ] || { echo "no peers directory at $PEERS (set PEERS=...)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --bin oxccl-perf)
[ -x "$PEERS_HOME/ompi/bin/mpirun" ] || "$PEERS/install.sh"

for n in $RANKS; do
  echo "== oxccl-perf (shm, $n ranks), $REPS runs"
  : > "$TMP/ox$n.txt"
  s=8; while [ $((s * 4)) -le "$MAXB" ]; do s=$((s * 4)); done
  for rep in $(seq "$REPS"); do
    # shellcheck disable=SC2086
    "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -b 8 -e "$MAXB" -f 4 -n "$ITERS" -w 5 \
      ${OXCCL_ARGS:-} | tee -a "$TMP/ox$n.txt"
    # The peers end their sweep with MAXB itself, which 8 x 4^k may skip (64 MiB is 8 x 4^11.5).
    if [ "$s" -ne "$MAXB" ]; then
      # shellcheck disable=SC2086
      "$ROOT/target/release/oxccl-perf" -N "$n" --transport shm -b "$MAXB" -e "$MAXB" -n "$ITERS" -w 5 \
        ${OXCCL_ARGS:-} | tee -a "$TMP/ox$n.txt"
    fi
  done
  echo "== Open MPI (sm, $n ranks)"
  MAXB=$MAXB REPS=$REPS "$PEERS/run.sh" "ompi$n" | tee "$TMP/peers$n.txt"
done

python3 - "$TMP" "$RANKS" <<'PY'
import sys, os, collections
d, ranks = sys.argv[1], sys.argv[2].split()
def oxccl(n):
    rows = collections.defaultdict(list)
    for line in open(os.path.join(d, f"ox{n}.txt")):
        f = line.split()
        if line.startswith("#") or len(f) < 13:
            continue
        rows[int(f[0])].append((float(f[5]), float(f[7])))
    out = {}
    for size, v in rows.items():
        v.sort()
        out[size] = v[len(v) // 2]
    return out
def peer(n):
    out = {}
    for line in open(os.path.join(d, f"peers{n}.txt")):
        f = line.split()
        if len(f) >= 8 and f[0].isdigit():
            out[int(f[0])] = (float(f[2]), float(f[6]))
    return out
def fmt_t(us):
    return f"{us/1000:9.2f} ms" if us >= 10000 else f"{us:9.2f} us"
def cell(r):
    return f"{fmt_t(r[0])} {r[1]:6.2f}" if r else f"{'-':>12} {'-':>6}"
for n in ranks:
    ox, om = oxccl(n), peer(n)
    print()
    print(f"all-reduce float32 sum, {n} ranks, shared memory: time and busbw (GB/s)")
    print(f"{'bytes':>10} | {'oxccl shm':>19} | {'Open MPI sm':>19} | {'time ratio':>10} {'busbw ratio':>11}")
    for size in sorted(set(ox) | set(om)):
        a, m = ox.get(size), om.get(size)
        tr = f"{m[0]/a[0]:9.2f}x" if a and m and a[0] > 0 else f"{'-':>10}"
        br = f"{a[1]/m[1]:10.2f}x" if a and m and m[1] > 0 else f"{'-':>11}"
        print(f"{size:>10} | {cell(a)} | {cell(m)} | {tr} {br}")
print()
print("time ratio = Open MPI time / oxccl time; busbw ratio = oxccl busbw / Open MPI busbw (> 1: oxccl faster)")
PY
