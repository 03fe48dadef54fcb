#!/usr/bin/env bash
# Side-by-side float32-sum all-reduce over TCP loopback, 2 ranks: oxccl-perf vs Gloo (C++, ring) and
# Open MPI (btl tcp), measured in the same run (this machine is noisy: compare ratios, not absolutes).
#
# Usage: benches/compare_tcp.sh            (from anywhere inside the repository)
# Env:   MAXB   largest message in bytes (default 64 MiB)   REPS  peer repetitions (default 5)
#        ITERS  oxccl-perf timed iterations per size (default 20)   PEERS  peer directory
#        OXCCL_ARGS  extra oxccl-perf flags (e.g. "-a ring")
#        CHART  PNG written with busbw and time against size (default benches/charts/tcp.png;
#               CHART= skips it); matplotlib is installed on first use (benches/chart.py)
#
# Sizes are 8 B x 4^k, the peers' sweep. oxccl's time is nccl-tests' (slowest rank's mean over
# ITERS calls, out-of-place), run REPS times and the median taken; the peers report the median of
# REPS repetitions too.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
PEERS=${PEERS:-$ROOT/../shared/peers}
MAXB=${MAXB:-67108864} REPS=${REPS:-5} ITERS=${ITERS:-20}
PEERS_HOME=${PEERS_HOME:-$HOME/.cache/oxccl-peers}
CHART=${CHART-$ROOT/benches/charts/tcp.png}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

[ -d "$PEERS" ] || { echo "no peers directory at $PEERS (set PEERS=...)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --bin oxccl-perf)
if ! dpkg -s libgloo-dev >/dev/null 2>&1 || [ ! -x "$PEERS_HOME/ompi/bin/mpirun" ]; then
  "$PEERS/install.sh"
fi

echo "== oxccl-perf (tcp, 2 ranks), $REPS runs: the median per size is compared, as the peers report"
s=8; while [ $((s * 4)) -le "$MAXB" ]; do s=$((s * 4)); done
: > "$TMP/oxccl.txt"
for rep in $(seq "$REPS"); do
  # shellcheck disable=SC2086
  "$ROOT/target/release/oxccl-perf" -N 2 --transport tcp -b 8 -e "$MAXB" -f 4 -n "$ITERS" -w 5 \
    ${OXCCL_ARGS:-} | tee -a "$TMP/oxccl.txt"
  # The peers end their sweep with MAXB itself, which 8 x 4^k may skip (64 MiB is 8 x 4^11.5).
  if [ "$s" -ne "$MAXB" ]; then
    # shellcheck disable=SC2086
    "$ROOT/target/release/oxccl-perf" -N 2 --transport tcp -b "$MAXB" -e "$MAXB" -n "$ITERS" -w 5 \
      ${OXCCL_ARGS:-} | tee -a "$TMP/oxccl.txt"
  fi
done
echo "== peers"
MAXB=$MAXB REPS=$REPS "$PEERS/run.sh" gloo2 ompi_tcp2 | tee "$TMP/peers.txt"

# oxccl rows: size time_us busbw (out-of-place columns of the nccl-tests table), median of the runs.
awk '!/^#/ && NF >= 13 { print $1, $6, $8 }' "$TMP/oxccl.txt" | python3 -c '
import sys, collections
rows = collections.defaultdict(list)
for line in sys.stdin:
    size, t, bw = line.split()
    rows[int(size)].append((float(t), float(bw)))
for size, v in sorted(rows.items()):
    v.sort()
    t, bw = v[len(v) // 2]
    print(size, t, bw)
' > "$TMP/ox.dat"
# Peer rows, per section: bytes time_us busbw (columns 1, 3, 7 of the peers' tables).
awk -v out="$TMP" '
  /^=== / { sec = $2; next }
  /^ *[0-9]+ / && NF >= 8 { print $1, $3, $7 > (out "/" sec ".dat") }
' "$TMP/peers.txt"

python3 - "$TMP" <<'EOF'
import sys, os
d = sys.argv[1]
def load(name):
    p = os.path.join(d, name + ".dat")
    rows = {}
    if os.path.exists(p):
        for line in open(p):
            f = line.split()
            rows[int(f[0])] = (float(f[1]), float(f[2]))
    return rows
ox, gl, om = load("ox"), load("gloo2"), load("ompi_tcp2")
def fmt_t(us):
    return f"{us/1000:9.2f} ms" if us >= 10000 else f"{us:9.1f} us"
def cell(r):
    return f"{fmt_t(r[0])} {r[1]:6.2f}" if r else f"{'-':>12} {'-':>6}"
def ratio(a, b):
    # > 1 means oxccl is faster (peer time / oxccl time).
    return f"{b[0]/a[0]:7.2f}x" if a and b and a[0] > 0 else f"{'-':>8}"
print()
print("all-reduce float32 sum, 2 ranks, TCP loopback: time and busbw (GB/s); ratio = peer time / oxccl time")
print(f"{'bytes':>10} | {'oxccl (oop)':>19} | {'gloo':>19} | {'ompi_tcp':>19} | {'vs gloo':>8} {'vs ompi':>8}")
chart = open(os.path.join(d, "chart.dat"), "w")
for size in sorted(set(ox) | set(gl) | set(om)):
    a, g, m = ox.get(size), gl.get(size), om.get(size)
    print(f"{size:>10} | {cell(a)} | {cell(g)} | {cell(m)} | {ratio(a, g)} {ratio(a, m)}")
    for lib, r in (("oxccl", a), ("Gloo", g), ("Open_MPI", m)):
        if r:
            print(lib, 2, size, r[0], r[1], file=chart)
EOF

if [ -n "$CHART" ]; then
  mkdir -p "$(dirname "$CHART")"
  python3 "$ROOT/benches/chart.py" "$TMP/chart.dat" "$CHART" \
    "all-reduce float32 sum over TCP loopback, 2 ranks: medians of $REPS runs" ||
    echo "chart not written (matplotlib unavailable?)" >&2
fi
