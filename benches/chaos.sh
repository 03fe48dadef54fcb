#!/usr/bin/env bash
# Chaos soak (issue 13; not CI): 8 ranks on 4 network-namespace hosts x 2 train for 10 minutes
# while faults are injected at random, and the job must heal back to full size each time.
#
# Usage: benches/chaos.sh [--seconds 600] [--hosts 4] [--per-host 2] [--seed 1] [--timeout-ms 3000]
#        (as root, from anywhere inside the repository)
#
# Hosts chaos-h0..h3 each have eth0 = 10.79.0.(i+1), joined by veth pairs to a kernel bridge in
# namespace chaos-sw (10.79.0.254), where the driver runs and serves the rendezvous store; ranks
# of one host use shared memory, hosts talk TCP. Every 4-9 s, when the job is at full size, the
# driver (examples/chaos.rs --driver) injects one fault: SIGKILL a rank; SIGSTOP one for a
# quarter of the timeout (must be ridden through) or for timeout + 3 s (declared lost, then
# killed); or take a host's link down for a quarter of the timeout or for timeout + 3 s (its
# ranks are cut off: the majority shrinks and goes on, the minority exits). After each shrink
# the survivors' rank 0 publishes a join id, the driver starts replacements where hosts have
# room, and the job grows back. Every step's all-reduce result is checked by every rank that
# took part. The summary gives the faults injected, the healing seen, the steps completed,
# hangs (no progress anywhere for 30 s), wrong results, and descriptors, threads and RSS of the
# workers that lived from 20 s to the end. Exit status non-zero on a hang or a wrong result.
set -euo pipefail
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
HOSTS=4
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--hosts" ]; then j=$((i + 1)); HOSTS=${!j}; fi
done
[ "$(id -u)" = 0 ] || { echo "chaos.sh needs root (network namespaces)" >&2; exit 1; }
command -v ip >/dev/null || { echo "chaos.sh needs iproute2 (ip)" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --example chaos)

NS=chaos
cleanup() {
  for ((h = 0; h < HOSTS; h++)); do ip netns del "$NS-h$h" 2>/dev/null || true; done
  ip netns del "$NS-sw" 2>/dev/null || true
}
trap cleanup EXIT
cleanup
ip netns add "$NS-sw"
ip -n "$NS-sw" link set lo up
ip -n "$NS-sw" link add br0 type bridge
ip -n "$NS-sw" addr add 10.79.0.254/24 dev br0
ip -n "$NS-sw" link set br0 up
for ((h = 0; h < HOSTS; h++)); do
  ip netns add "$NS-h$h"
  ip -n "$NS-h$h" link set lo up
  ip link add "chx$h" type veth peer name eth0 netns "$NS-h$h"
  ip link set "chx$h" netns "$NS-sw"
  ip -n "$NS-sw" link set "chx$h" master br0 up
  ip -n "$NS-h$h" addr add "10.79.0.$((h + 1))/24" dev eth0
  ip -n "$NS-h$h" link set eth0 up
done
ip netns exec "$NS-sw" "$ROOT/target/release/examples/chaos" --driver --ns "$NS" \
  --store-ip 10.79.0.254 "$@"
