#!/usr/bin/env bash
# The main job: sets up cm, then trains the default configuration (consistency training on the
# shipped 8×8 digits, a few minutes on two CPU cores) and prints where the sample grids are.
#   bash scripts/run_default.sh [--out DIR] [extra cm train options, e.g. --set train.steps=3000]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=runs
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out="$2"; shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
./build/runner/cm train configs/default.json --out "$out" "${args[@]+"${args[@]}"}"
run=$(ls -d "$out"/*-ct-ddpmpp-digits-8-digits | tail -1)
echo "sample grids (one-step and two-step): $(ls "$run"/samples/*.png | tail -2 | tr '\n' ' ')"
