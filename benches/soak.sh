#!/usr/bin/env bash
# The issue's soak at full size, through tests/soak.rs (release build):
#   - 10,000 mixed collectives (all-reduce, broadcast, all-gather, reduce-scatter, barrier) on
#     4 threads-as-ranks, a new communicator every 1,000 calls, over shm (auto) and over TCP;
#   - 100,000 mixed collectives on one communicator (the resource check);
#   - 4 process ranks rebuilding their communicator (split) every 50 calls, 8 rounds.
# Prints the open-descriptor, thread and VmRSS series after every round / every 10% of the
# calls; each test fails if they are not flat. Override the sizes with the variables below.
set -euo pipefail
cd "$(dirname "$0")/.."
export OXCCL_SOAK_COLLECTIVES="${OXCCL_SOAK_COLLECTIVES:-10000}"
export OXCCL_SOAK_EVERY="${OXCCL_SOAK_EVERY:-1000}"
export OXCCL_SOAK_LONG="${OXCCL_SOAK_LONG:-100000}"
export OXCCL_SOAK_RANKS="${OXCCL_SOAK_RANKS:-4}"
echo "# soak: $OXCCL_SOAK_COLLECTIVES collectives, new communicator every $OXCCL_SOAK_EVERY;" \
     "$OXCCL_SOAK_LONG on one communicator; $OXCCL_SOAK_RANKS ranks"
start=$(date +%s)
cargo test --release --test soak -- --nocapture --test-threads=1 2>&1 \
  | grep -v -E '^\S+:[0-9]+:[0-9]+ WARN' 
echo "# soak took $(( $(date +%s) - start )) s"
