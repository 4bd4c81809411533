#!/usr/bin/env bash
# Builds cm for sm_90 (H100/H200) and runs, in one go, the GPU test suites, compute-sanitizer
# memcheck on them, and the GPU benchmarks; everything goes to a log whose summary ends the output.
#   bash tools/gpu_check.sh [--build-dir DIR] [--no-build] [--log FILE]
# With --no-build the build directory (e.g. one built elsewhere and carried over) is used as is.
set -uo pipefail
cd "$(dirname "$0")/.."
build_dir=build-gpu
do_build=1
log=gpu_check.log
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --log) log="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
: > "$log"
say() { echo "$*" | tee -a "$log"; }
summary=()

if [ "$do_build" = 1 ]; then
  cmake -S . -B "$build_dir" -DCM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release >>"$log" 2>&1 &&
    cmake --build "$build_dir" -j "$(nproc)" >>"$log" 2>&1 || { say "BUILD FAILED (see $log)"; exit 1; }
fi
say "== device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$log"

say "== GPU test suites (ctest -L gpu)"
if (cd "$build_dir" && ctest -L gpu --output-on-failure) >>"$log" 2>&1; then r=PASS; else r=FAIL; fi
summary+=("gpu tests: $r ($(grep -E 'tests passed|tests failed' "$log" | tail -1))")

say "== the autograd suites on the GPU (CM_TEST_DEVICE=cuda ctest -L autograd)"
if (cd "$build_dir" && CM_TEST_DEVICE=cuda ctest -L autograd --output-on-failure) >>"$log" 2>&1; then r=PASS; else r=FAIL; fi
summary+=("autograd suites on the GPU: $r ($(grep -E 'tests passed|tests failed' "$log" | tail -1))")

say "== all CPU suites on this machine (ctest -LE gpu)"
if (cd "$build_dir" && ctest -LE gpu -j 8) >>"$log" 2>&1; then r=PASS; else r=FAIL; fi
summary+=("cpu tests: $r ($(grep -E 'tests passed|tests failed' "$log" | tail -1))")

say "== compute-sanitizer memcheck"
san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for t in "$build_dir"/tests/cm_test_cuda; do
  if "$san" --tool memcheck --error-exitcode 3 "$t" >>"$log" 2>&1; then r=PASS; else r="FAIL (rc $?)"; fi
  summary+=("memcheck $(basename "$t"): $r ($(grep -E 'ERROR SUMMARY' "$log" | tail -1))")
done

say "== benchmarks"
if [ -x "$build_dir/bench/cm_bench_ops" ]; then
  "$build_dir/bench/cm_bench_ops" --device cuda 2>&1 | tee -a "$log" | grep -c '"bench"' >/dev/null
  summary+=("bench: $(grep -c '"device":"cuda' "$log") GPU cases in $log")
fi

say "== summary"
for s in "${summary[@]}"; do say "$s"; done
