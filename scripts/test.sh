#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite (GPU tests skip themselves without a GPU).
#   bash scripts/test.sh [setup.sh arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "$@"
build_dir=build
for ((i = 1; i <= $#; i++)); do
  if [ "${!i}" = "--build-dir" ]; then j=$((i + 1)); build_dir="${!j}"; fi
done
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)"
