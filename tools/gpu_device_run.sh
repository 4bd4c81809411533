#!/usr/bin/env bash
# Runs cm's GPU checks on a GPU machine from prebuilt binaries (tools/gpu_bundle.sh makes the bundle),
# for machines without cm's build dependencies. Every stage is boxed in time so that the whole fits
# in --budget seconds; logs go to $OUT (or ./gpu-out) and a summary ends the output.
#   bash tools/gpu_device_run.sh BUNDLE_DIR [--budget S] [--stages LIST] [--ct-steps N] [--ct-batch B]
#                                [--ct-precision f32|tf32|bf16]
# Stages (comma-separated, run in this order): tests (the GPU suites, and the autograd suites with
# CM_TEST_DEVICE=cuda), smoke (a few steps of every
# training mode on a CIFAR-10-sized network, bf16 and resume included), bench (cm bench and
# cm_bench_ops on the GPU), dist (the MPI engine, NCCL and the gradient reducer with world size
# 1), profile (Nsight Compute's time of every kernel of about one CT step,
# profile.csv; tools/kernel_times.py sums it by kernel), ct (configs/cifar10-ct.json for
# --ct-steps steps) with memcheck (compute-sanitizer on the GPU suites) beside it, and adm (on
# request: cm bench of the ImageNet-64 ADM U-Net in bf16 and f16 beside the reference UNetModel's
# step in PyTorch where the bundle has it (gpu_bundle.sh --adm-ref), and 200 CT steps of a small
# ADM network in f16, with the dynamic loss scaler, beside the same in bf16).
# The training data is Fashion-MNIST's test split in CIFAR-10's binary layout
# (tools/fashion_as_cifar10.py): the machine cannot download CIFAR-10.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bundle=${1:?usage: gpu_device_run.sh BUNDLE_DIR [options]}
shift
budget=540
stages=tests,dist,smoke,bench,ct,memcheck  # profile on request
ct_steps=300
ct_batch=128
ct_precision=tf32
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) budget="$2"; shift 2 ;;
    --stages) stages="$2"; shift 2 ;;
    --ct-steps) ct_steps="$2"; shift 2 ;;
    --ct-batch) ct_batch="$2"; shift 2 ;;
    --ct-precision) ct_precision="$2"; shift 2 ;;
    *) echo "gpu_device_run.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
start=$(date +%s)
deadline=$((start + budget))
summary="$out/summary.log"
: > "$summary"
say() { echo "[$(($(date +%s) - start))s] $*" | tee -a "$summary"; }
has() { [[ ",$stages," == *",$1,"* ]]; }
# box CAP CMD...: runs CMD with at most CAP seconds, and never past the deadline.
box() {
  local cap=$1 left=$((deadline - $(date +%s)))
  shift
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -le 5 ]; then
    echo "SKIPPED (out of time): $*"
    return 124
  fi
  echo "+ $*"
  timeout --signal=INT --kill-after=15 "$cap" "$@"
}

# ---- setup
work=/tmp/cm-gpu
rm -rf "$work"
mkdir -p "$work"
tar -xJf "$bundle/bin.tar.xz" -C "$work" || { say "cannot unpack $bundle/bin.tar.xz"; exit 1; }
bin=$work/bin
# The test binaries find their golden files under the source path they were built in.
src_dir=$(cat "$bundle/source_dir.txt" 2>/dev/null)
if [ -n "$src_dir" ] && [ ! -e "$src_dir" ]; then
  mkdir -p "$(dirname "$src_dir")" && ln -s "$root" "$src_dir"
fi
# Shared libraries: the Debian ones the bundle carries (work/lib), the toolkit's, else the ones
# PyTorch's wheels carry.
[ -d "$work/lib" ] && export LD_LIBRARY_PATH=$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
if ldd "$bin/cm" | grep -q 'not found'; then
  extra=/usr/local/cuda/lib64:/usr/local/cuda/targets/x86_64-linux/lib
  site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
  for d in "$site"/nvidia/*/lib; do [ -d "$d" ] && extra=$extra:$d; done
  export LD_LIBRARY_PATH=$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi
{
  echo "revision $(cat "$bundle/revision.txt" 2>/dev/null)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  uname -r
  nproc
  ldd "$bin/cm" | grep -E 'cud|cublas|not found'
} 2>&1 | tee -a "$summary"
data=$work/fashion-as-cifar10
python3 tools/fashion_as_cifar10.py "$bundle/t10k-images-idx3-ubyte.gz" \
  "$bundle/t10k-labels-idx1-ubyte.gz" "$data" | tee -a "$summary"
runs=$work/runs
mkdir -p "$runs"
data_set=(--set "data.dataset=cifar10:$data:train")

# ---- the GPU test suites
# suite LABEL BINARY: runs one doctest binary into tests.log and says its counts.
suite() {
  box 200 "$2" --duration=true >>"$out/tests.log" 2>&1
  local rc=$?
  say "$1: rc $rc; $(grep -E '^\[doctest\] (test cases|assertions)' "$out/tests.log" | tail -2 | tr '\n' ' ')"
}
if has tests; then
  say "== GPU test suites"
  for t in cm_test_cuda cm_test_cuda_conv cm_test_cuda_nn; do suite "$t" "$bin/$t"; done
  for t in cm_test_autograd cm_test_inplace cm_test_recompute cm_test_attention; do
    [ -x "$bin/$t" ] && CM_TEST_DEVICE=cuda suite "CM_TEST_DEVICE=cuda $t" "$bin/$t"
  done
fi

# ---- the MPI engine and NCCL in a job of one (CM_DIST_ENGINE=mpi; one GPU: NCCL's all-reduce is
# a copy). OpenMPI's runtime (its plugins, and orted for a singleton) may be missing on the
# machine: then the first probe fails and says so, and the rest is skipped.
if has dist; then
  say "== dist: the MPI engine and NCCL with world size 1"
  if CM_DIST_ENGINE=mpi box 60 "$bin/cm" bench --device cuda --network ddpmpp-digits-8 \
      --case allreduce --repeats 3 >>"$out/dist.log" 2>&1; then
    for nccl in 1 0; do
      CM_NCCL=$nccl CM_DIST_ENGINE=mpi box 120 "$bin/cm_test_dist" --test-suite=dist \
        >>"$out/dist.log" 2>&1
      say "cm_test_dist CM_NCCL=$nccl: rc $?; $(grep -E '^\[doctest\] (test cases|assertions)' "$out/dist.log" | tail -2 | tr '\n' ' ')"
    done
    for mb in 25 0; do
      CM_DIST_ENGINE=mpi box 120 "$bin/cm" bench --device cuda --network ddpmpp-cifar10 \
        --precision bf16 --batch 128 --case ct --bucket-mb $mb --repeats 10 >>"$out/dist.log" 2>&1
      say "ct step, bucket-mb $mb: $(grep '"case":"ct"' "$out/dist.log" | tail -1)"
    done
    CM_DIST_ENGINE=mpi box 60 "$bin/cm" bench --device cuda --network ddpmpp-cifar10 \
      --case allreduce --repeats 10 >>"$out/dist.log" 2>&1
    say "allreduce: $(grep '"case":"allreduce"' "$out/dist.log" | tail -1)"
  else
    say "dist: the MPI engine did not start here (see dist.log): OpenMPI's runtime is missing"
  fi
fi

# ---- every training mode for a few steps
if has smoke; then
  say "== smoke: every mode on ncsnpp-cifar10 (20 steps, batch 64)"
  short=(--set train.steps=20 --set train.batch=64 --set train.log_every=5 --set train.checkpoint_every=10
         --set train.sample_every=20)
  (
    box 120 "$bin/cm" train configs/cifar10-edm.json "${data_set[@]}" "${short[@]}" --set train.warmup_steps=10 \
      --out "$runs/smoke"
    teacher=$(ls -d "$runs"/smoke/*-edm-* | head -1)
    [ -n "$teacher" ] && box 120 "$bin/cm" train configs/cifar10-cd.json "${data_set[@]}" "${short[@]}" \
      --set "consistency.teacher=$teacher" --out "$runs/smoke"
    box 120 "$bin/cm" train configs/cifar10-ct.json "${data_set[@]}" "${short[@]}" --set precision=bf16 \
      --out "$runs/smoke"
    box 120 "$bin/cm" train configs/cifar10-ict.json "${data_set[@]}" "${short[@]}" --out "$runs/smoke"
    ct=$(ls -d "$runs"/smoke/*-ct-*-cifar10-ct | head -1)
    box 120 "$bin/cm" train --resume "$ct" --set train.steps=30
    box 60 "$bin/cm" sample "$ct" --n 16 --steps 2 --out "$runs/smoke/samples-ct"
    [ -n "$teacher" ] && box 60 "$bin/cm" sample "$teacher" --n 16 --out "$runs/smoke/samples-edm"
  ) >>"$out/smoke.log" 2>&1
  say "smoke: rc $?; $(grep -c '^done:' "$out/smoke.log") runs done; errors: $(grep -ciE 'error|what\(\)' "$out/smoke.log")"
fi

# ---- benchmarks
if has bench; then
  say "== bench"
  {
    for p in tf32 bf16; do
      box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 128 --precision $p --case ct --repeats 10
    done
    box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 512 --precision bf16 --case ct --repeats 5
    # channels-last activations (cuDNN in NHWC, GroupNorm's NHWC kernels): opt-in until measured
    for b in 128 512; do
      box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch $b --precision bf16 --case ct \
        --memory-format channels_last --repeats 5
    done
    # activation recomputation (on by default on CUDA): what it saves and what it costs
    box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 512 --precision bf16 --case ct \
      --recompute off --repeats 5
    for p in tf32 bf16; do
      box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 1024 --precision $p --case sample --repeats 5
    done
    # the fused attention kernel (opt-in on CUDA until these and the attention test cases pass)
    box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 512 --precision bf16 --case ct \
      --attention fused --repeats 5
    box 60 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 1024 --precision bf16 --case sample \
      --attention fused --repeats 5
    box 90 "$bin/cm_bench_ops" --device cuda
  } >>"$out/bench.log" 2>&1
  grep -E '"case"|"bench"' "$out/bench.log" | head -40 | tee -a "$summary"
fi

# ---- ADM: the ImageNet-64 network's step beside the reference's, and f16 training end to end
if has adm; then
  say "== adm"
  {
    for p in bf16 f16; do
      for c in ct sample; do
        for a in composite fused; do
          box 90 "$bin/cm" bench --network adm-imagenet64 --device cuda --batch 64 --precision $p --case $c \
            --attention $a --repeats 5
        done
      done
    done
    if [ -f "$bundle/adm-ref/cm/unet.py" ]; then
      for p in bf16 f16; do
        for c in ct sample; do
          box 120 python3 bench/peer_adm_step.py --ref "$bundle/adm-ref" --device cuda \
            --network adm-imagenet64 --batch 64 --precision $p --case $c --steps 5
        done
      done
    fi
  } >>"$out/adm.log" 2>&1
  grep -E '"bench"' "$out/adm.log" | tee -a "$summary"
  for p in f16 bf16; do
    box 150 "$bin/cm" train configs/cifar10-ct.json "${data_set[@]}" --set network.preset=adm-tiny-16 \
      --set network.img_resolution=32 --set network.model_channels=64 --set data.labels=true \
      --set precision=$p \
      --set train.steps=200 --set train.batch=128 --set train.log_every=10 \
      --set train.checkpoint_every=200 --set train.sample_every=200 --out "$runs/adm-$p" >"$out/adm-$p.log" 2>&1
    say "adm $p: rc $?"
    grep -E '^step' "$out/adm-$p.log" | awk 'NR==1 || NR%4==0' | tee -a "$summary"
  done
fi

# ---- kernel times of about one CT step (the third: two warm-up steps come first)
if has profile; then
  say "== profile: ncu, gpu__time_duration of the kernels of one ddpmpp-cifar10 CT step (tf32, batch 128)"
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
  box 100 "${ncu:-ncu}" --clock-control none --metrics gpu__time_duration.sum --csv --page raw --launch-skip 10000 \
    --launch-count 6000 "$bin/cm" bench --network ddpmpp-cifar10 --device cuda --batch 128 \
    --precision tf32 --case ct --repeats 1 >"$out/profile.csv" 2>&1
  say "profile: rc $?; $(grep -c '^"' "$out/profile.csv") csv lines"
fi

# ---- a few hundred CT steps of the CIFAR-10 config, with memcheck beside it
if has memcheck; then
  san=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
  (
    for t in cm_test_cuda cm_test_cuda_nn cm_test_cuda_conv; do
      echo "== memcheck $t"
      box 400 "$san" --tool memcheck --error-exitcode 3 "$bin/$t"
      echo "== rc $t: $?"
    done
    # the fused attention kernels share tiles between warps: shared-memory races and barriers
    for tool in racecheck synccheck; do
      echo "== $tool fused attention"
      box 200 "$san" --tool $tool --error-exitcode 3 "$bin/cm_test_cuda_nn" -tc="*fused attention*"
      echo "== rc $tool fused attention: $?"
    done
  ) >"$out/memcheck.log" 2>&1 &
  memcheck_pid=$!
fi
if has ct; then
  say "== ct: configs/cifar10-ct.json, $ct_steps steps at batch $ct_batch, $ct_precision"
  box 600 "$bin/cm" train configs/cifar10-ct.json "${data_set[@]}" --set train.steps="$ct_steps" \
    --set precision="$ct_precision" \
    --set train.batch="$ct_batch" --set train.log_every=10 --set train.checkpoint_every="$ct_steps" \
    --set train.sample_every="$ct_steps" --out "$runs/ct" >"$out/ct.log" 2>&1
  say "ct: rc $?"
  grep -E '^step' "$out/ct.log" | awk 'NR==1 || NR%5==0' | tee -a "$summary"
  tail -2 "$out/ct.log" | tee -a "$summary"
  grid=$(ls "$runs"/ct/*/samples/*-1step.png 2>/dev/null | tail -1)
  [ -n "$grid" ] && cp "$grid" "$out/ct-grid-1step.png"
fi
if has memcheck; then
  wait "$memcheck_pid"
  say "memcheck: $(grep -E '^== rc|ERROR SUMMARY' "$out/memcheck.log" | tr '\n' ' ')"
fi

# ---- what comes back: logs, metrics and grids of every run
tar -C "$runs" -czf "$out/runs.tar.gz" --exclude='*.safetensors' . 2>/dev/null
say "done in $(($(date +%s) - start)) s"
