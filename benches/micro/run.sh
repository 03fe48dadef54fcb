#!/usr/bin/env bash
# Builds and runs the micro-measurements behind the limits quoted in the README and the closing
# notes: cross-core reads of just-written lines (xcore.c) and the cost of a CPU hand-off
# (yield.c). Needs gcc and 2 CPUs.
set -euo pipefail
DIR=$(cd "$(dirname "$0")" && pwd)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
gcc -O2 -mavx2 -pthread "$DIR/xcore.c" -o "$TMP/xcore"
gcc -O2 "$DIR/yield.c" -o "$TMP/yield"
for kib in 64 256 1024; do
  for mode in 0 1 2 3; do
    "$TMP/xcore" "$kib" "$mode"
  done
done
"$TMP/yield" 0
"$TMP/yield" 1
