#!/usr/bin/env bash
# Multi-host bench on one machine: H network-namespace "hosts" x R ranks each, K NICs per host
# (one bridge per rail: host i's eth<j> is 10.78.(j+1).(i+1)/24 on bridge br<j> of a switch
# namespace), every port rate-limited both ways with `tc tbf` (this kernel has tbf, not netem).
# For each placement (block: host = rank / R, as `srun --distribution=block`; cyclic: host =
# rank mod H, as `--distribution=cyclic` or `mpirun --map-by node`) and each algorithm, it
# launches the ranks with `ip netns exec` (oxccl-perf under the OXCCL_* launcher environment,
# rank 0 serving the store; OXCCL_SOCKET_SPEED=RATE tells the tuner what the shaped veths
# really carry) and prints rank 0's nccl-tests table, then the bytes each NIC
# carried, then a summary: out-of-place time and busbw per size, and cyclic / block.
#
# Usage: sudo benches/multihost.sh            (from anywhere inside the repository; needs root)
# Env:   H (4) hosts   R (2) ranks per host   K (1) NICs per host   RATE (1gbit) per port and
#        direction   COLL (allreduce)   MINB (1M) MAXB (16M) STEP (2)   ITERS (5) WARMUP (2)
#        PLACEMENTS ("block cyclic")   ALGOS ("auto ring tree rhd"; auto = the tuner's pick)
#        BIND (rail: with K > 1, OXCCL_SOCKET_BIND=rail, local rank r on eth<r mod K>;
#        stripe: every link over every NIC; none: eth0 only)   TRANSPORT (auto: shm inside a
#        host, tcp between hosts)   NOBUILD=1 skips `cargo build --release`
#        SIM=1 adds oxccl-sim's prediction for each forced algorithm and block placement beside
#        the measurement (the model below: RATE less TCP/IP framing per port, shm inside a host)
#   e.g. the 2-NIC rail setup:  K=2 BIND=rail sudo -E benches/multihost.sh
#
# Hosts share this machine's CPUs: with 1 Gbit/s ports the network, not the CPU, should be the
# bottleneck at MiB sizes (watch `top`; R x H ranks on 2 cores can become CPU-bound below it).
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
H=${H:-4} R=${R:-2} K=${K:-1} RATE=${RATE:-1gbit} COLL=${COLL:-allreduce}
MINB=${MINB:-1M} MAXB=${MAXB:-16M} STEP=${STEP:-2} ITERS=${ITERS:-5} WARMUP=${WARMUP:-2}
PLACEMENTS=${PLACEMENTS:-block cyclic} ALGOS=${ALGOS:-auto ring tree rhd}
BIND=${BIND:-rail} TRANSPORT=${TRANSPORT:-auto}
PERF=$ROOT/target/release/oxccl-perf
TAG=${TAG:-oxmh}$$  # namespace prefix: TAG=scale makes scale<pid>-h0 ...
TMP=$(mktemp -d)

[ "$(id -u)" = 0 ] || { echo "needs root (it creates network namespaces)" >&2; exit 1; }
command -v ip >/dev/null && command -v tc >/dev/null || { echo "needs ip and tc (iproute2)" >&2; exit 1; }
[ "$H" -ge 1 ] && [ "$R" -ge 1 ] && [ "$K" -ge 1 ] && [ "$K" -le 8 ] && [ "$H" -le 200 ] \
  || { echo "need H in 1..200, R >= 1, K in 1..8" >&2; exit 1; }
if [ -z "${NOBUILD:-}" ]; then (cd "$ROOT" && cargo build --release --bin oxccl-perf --bin oxccl-sim); fi
[ -x "$PERF" ] || { echo "no $PERF (build it, or unset NOBUILD)" >&2; exit 1; }

SW=$TAG-sw
host() { echo "$TAG-h$1"; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for i in $(seq 0 $((H - 1))); do ip netns del "$(host "$i")" 2>/dev/null || true; done
  ip netns del "$SW" 2>/dev/null || true
  rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

# A token-bucket filter of RATE on a device's egress; burst covers a 64 KiB GSO frame and a
# 4 ms scheduler tick at 1 Gbit/s.
shape() { ip netns exec "$1" tc qdisc add dev "$2" root tbf rate "$RATE" burst 512kb latency 50ms; }

ip netns add "$SW"
ip -n "$SW" link set lo up
for j in $(seq 0 $((K - 1))); do
  ip -n "$SW" link add "br$j" type bridge
  ip -n "$SW" link set "br$j" up
done
for i in $(seq 0 $((H - 1))); do
  h=$(host "$i")
  ip netns add "$h"
  ip -n "$h" link set lo up
  for j in $(seq 0 $((K - 1))); do
    ip -n "$SW" link add "h${i}r$j" type veth peer name "eth$j" netns "$h"
    ip -n "$SW" link set "h${i}r$j" master "br$j"
    ip -n "$SW" link set "h${i}r$j" up
    ip -n "$h" addr add "10.78.$((j + 1)).$((i + 1))/24" dev "eth$j"
    ip -n "$h" link set "eth$j" up
    shape "$h" "eth$j"          # host -> switch
    shape "$SW" "h${i}r$j"      # switch -> host
  done
done
IFNAMES=eth0
if [ "$K" -gt 1 ] && [ "$BIND" != none ]; then
  IFNAMES=$(seq -s, 0 $((K - 1)) | sed 's/\([0-9]\+\)/eth\1/g')
fi
echo "# $H hosts x $R ranks, $K NIC(s) per host at $RATE each way (tc tbf), one bridge per NIC;"
echo "# OXCCL_SOCKET_IFNAME=$IFNAMES$([ "$K" -gt 1 ] && [ "$BIND" != none ] && echo " OXCCL_SOCKET_BIND=$BIND"), transport $TRANSPORT, $COLL $MINB..$MAXB x$STEP, $ITERS iterations"

counters() {  # host nic -> tx+rx bytes
  ip netns exec "$(host "$1")" sh -c "echo \$((\$(cat /sys/class/net/eth$2/statistics/tx_bytes) + \$(cat /sys/class/net/eth$2/statistics/rx_bytes)))"
}

N=$((H * R))
SECRET=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
run=0 failed=0
for placement in $PLACEMENTS; do
  for algo in $ALGOS; do
    run=$((run + 1))
    out=$TMP/$placement-$algo
    declare -A before=()
    for i in $(seq 0 $((H - 1))); do for j in $(seq 0 $((K - 1))); do before[$i.$j]=$(counters "$i" "$j"); done; done
    # A fresh port per run: the previous run's store socket may linger in TIME_WAIT.
    port=$((29500 + run))
    pids=()
    for r in $(seq 0 $((N - 1))); do
      case $placement in
        block) hi=$((r / R)) ;;
        cyclic) hi=$((r % H)) ;;
        *) echo "unknown placement $placement (block, cyclic)" >&2; exit 1 ;;
      esac
      args=(-b "$MINB" -e "$MAXB" -f "$STEP" -n "$ITERS" -w "$WARMUP")
      [ "$algo" = auto ] || args+=(-a "$algo")
      envs=(OXCCL_RANK="$r" OXCCL_WORLD_SIZE="$N" OXCCL_ROOT="10.78.1.1:$port" OXCCL_SECRET="$SECRET"
            OXCCL_TRANSPORT="$TRANSPORT" OXCCL_SOCKET_IFNAME="$IFNAMES" OXCCL_SOCKET_SPEED="$RATE" OXCCL_TIMEOUT_MS=120000)
      if [ "$K" -gt 1 ] && [ "$BIND" = rail ]; then envs+=(OXCCL_SOCKET_BIND=rail); fi
      ip netns exec "$(host "$hi")" env -u RANK -u WORLD_SIZE -u SLURM_PROCID -u OMPI_COMM_WORLD_RANK \
        "${envs[@]}" timeout 900 "$PERF" "$COLL" "${args[@]}" >"$out.$r" 2>&1 &
      pids+=($!)
    done
    status=0
    for p in "${pids[@]}"; do wait "$p" || status=$?; done
    [ "$status" = 0 ] || failed=$((failed + 1))
    pids=()
    echo
    echo "## placement $placement, algorithm $algo$([ "$status" = 0 ] || echo " (FAILED: exit $status)")"
    cat "$out.0"
    if [ "$status" != 0 ]; then
      for r in $(seq 1 $((N - 1))); do { grep -H . "$out.$r" || true; } | tail -5; done
    fi
    printf '# bytes carried (tx+rx) per NIC:'
    for i in $(seq 0 $((H - 1))); do for j in $(seq 0 $((K - 1))); do
      printf ' h%s/eth%s %s' "$i" "$j" $(($(counters "$i" "$j") - before[$i.$j]))
    done; done
    echo
    # size -> out-of-place time (us) and busbw (GB/s), for the summary.
    awk -v key="$placement $algo" '$1 ~ /^[0-9]+$/ && NF >= 9 { print key, $1, $6, $8 }' "$out.0" >>"$TMP/summary"
  done
done

echo
echo "## summary: out-of-place time (us) and busbw (GB/s) per size; cyclic/block time ratio"
awk '
  { k = $1 " " $2; t[k, $3] = $4; b[k, $3] = $5; if (!(k in seen)) { seen[k] = 1; keys[++nk] = k }
    if (!($3 in sz)) { sz[$3] = 1; sizes[++ns] = $3 } }
  END {
    printf "%-20s", "size"; for (s = 1; s <= ns; s++) printf " %16s", sizes[s]; print ""
    for (i = 1; i <= nk; i++) {
      printf "%-20s", keys[i]
      for (s = 1; s <= ns; s++) printf " %9s/%6s", t[keys[i], sizes[s]], b[keys[i], sizes[s]]
      print ""
    }
    for (i = 1; i <= nk; i++) {
      split(keys[i], p, " "); if (p[1] != "cyclic") continue
      blk = "block " p[2]; printf "%-20s", "cyclic/block " p[2]
      for (s = 1; s <= ns; s++) {
        if ((blk, sizes[s]) in t && t[blk, sizes[s]] > 0) printf " %16.2f", t[keys[i], sizes[s]] / t[blk, sizes[s]]
        else printf " %16s", "-"
      }
      print ""
    }
  }' "$TMP/summary"
if [ -n "${SIM:-}" ]; then
  # The namespace hosts as oxccl-sim models them: each port carries RATE less Ethernet + IP + TCP
  # framing (1448 of every 1538 bytes at MTU 1500), 50 us between hosts (veth, bridge, tbf and a
  # poll wake-up), shm inside a host; rails as bound (striping: one path as wide as all NICs).
  # Calibrated against this bench (4 hosts x 2 ranks, 1 and 2 NICs at 1 Gbit/s, 1-16 MiB):
  # --duplex 1.25, a connection carrying data both ways at once (halving-doubling's exchanges,
  # the tree's reduce meeting its broadcast) goes at 1/1.25 of the port each way, its ACKs queued
  # behind data in the other direction's tbf; --chunk 256K, a tree hop forwards before a whole
  # 512 KiB chunk is in (TCP streams it over two sockets), fitted to the tree at 1 MiB.
  rate_mbit=$(echo "$RATE" | awk '{ v = $0 + 0; if ($0 ~ /[gG]/) v *= 1000; else if ($0 ~ /[kK]/) v /= 1000; print v }')
  nics=$K; bw=$(awk -v r="$rate_mbit" 'BEGIN { printf "%.0f", r * 1e6 / 8 * 1448 / 1538 }')
  if [ "$K" -gt 1 ] && [ "$BIND" != rail ]; then nics=1; [ "$BIND" = stripe ] && bw=$((bw * K)); fi
  echo
  echo "## oxccl-sim beside the measurement (block placement): measured / predicted time (us)"
  printf '%-20s' algorithm
  for sz in $(awk '{ print $3 }' "$TMP/summary" | sort -un); do printf ' %24s' "$sz"; done; echo
  for algo in $ALGOS; do
    [ "$algo" = auto ] && continue
    printf '%-20s' "$algo"
    for sz in $(awk '{ print $3 }' "$TMP/summary" | sort -un); do
      meas=$(awk -v k="block $algo" -v s="$sz" '$1 " " $2 == k && $3 == s { print $4 }' "$TMP/summary" | head -1)
      pred=$("$ROOT/target/release/oxccl-sim" --coll "$COLL" --algo "$algo" --ranks "$N" --ranks-per-host "$R" \
        --nics-per-host "$nics" --inter-bw "${bw}B/s" --inter-lat 50us --intra-bw 8GB/s --reduce-bw 6GB/s \
        --host-driven --duplex 1.25 --chunk 256K -b "$sz" -e "$sz" --tsv 2>/dev/null | awk '{ printf "%.0f", $3 }')
      if [ -n "$meas" ] && [ -n "$pred" ] && [ "$pred" != 0 ]; then
        printf ' %9s/%9s %+4.0f%%' "$meas" "$pred" "$(awk -v m="$meas" -v p="$pred" 'BEGIN { print (m / p - 1) * 100 }')"
      else
        printf ' %24s' "${meas:--}/${pred:--}"
      fi
    done
    echo
  done
fi
[ "$failed" = 0 ] || { echo "$failed run(s) failed (see above)" >&2; exit 1; }
