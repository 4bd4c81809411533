#!/usr/bin/env bash
# Packs what tools/gpu_device_run.sh needs on a GPU machine into one small folder (default .gpu/):
# the CUDA build's cm, cm_bench_ops and GPU test binaries (stripped, one xz archive: they share
# most of their bytes, so 70 MB of binaries pack into about 3 MB) and Fashion-MNIST's test split,
# which the device script turns into a CIFAR-10-format stand-in (tools/fashion_as_cifar10.py).
#   bash tools/gpu_bundle.sh [--build-dir build-cuda] [--out .gpu] [--adm-ref DIR]
# --adm-ref: a copy of openai/consistency_models; its cm/ network files go into the bundle (never
# into the repository) for the ADM peer of the device script's adm stage (bench/peer_adm_step.py).
# Build first: cmake -S . -B build-cuda -DCM_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 &&
#   cmake --build build-cuda --target cm cm_bench_ops cm_test_cuda cm_test_cuda_conv cm_test_cuda_nn \
#     cm_test_autograd cm_test_inplace cm_test_recompute cm_test_attention cm_test_dist
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=build-cuda
out=.gpu
adm_ref=""
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --adm-ref) adm_ref="$2"; shift 2 ;;
    *) echo "gpu_bundle.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
bins=("$build_dir/runner/cm" "$build_dir/bench/cm_bench_ops" "$build_dir/tests/cm_test_cuda"
      "$build_dir/tests/cm_test_cuda_conv" "$build_dir/tests/cm_test_cuda_nn"
      "$build_dir/tests/cm_test_autograd" "$build_dir/tests/cm_test_inplace"
      "$build_dir/tests/cm_test_recompute" "$build_dir/tests/cm_test_attention"
      "$build_dir/tests/cm_test_dist")
for b in "${bins[@]}"; do
  [ -x "$b" ] || { echo "gpu_bundle.sh: '$b' is missing; build it first (see the header)" >&2; exit 1; }
done
fashion=/usr/share/datasets/fashion-mnist
for f in t10k-images-idx3-ubyte.gz t10k-labels-idx1-ubyte.gz; do
  [ -f "$fashion/$f" ] || { echo "gpu_bundle.sh: '$fashion/$f' is missing (apt-get install dataset-fashion-mnist)" >&2; exit 1; }
done
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$out"
cp "${bins[@]}" "$stage/bin/"
strip "$stage"/bin/*
# The Debian libraries the binaries link (OpenBLAS, libpng, oneDNN, OpenMPI and what they need),
# which the GPU machine's image may lack; not glibc, the C++ runtime or CUDA's (the machine has
# its own). gpu_device_run.sh puts them on LD_LIBRARY_PATH.
mkdir -p "$stage/lib"
ldd "${bins[@]}" 2>/dev/null | awk '/=> \//{print $3}' | sort -u |
  grep -vE '/(libc|libm|libdl|librt|libpthread|libstdc\+\+|libgcc_s|ld-linux[^/]*)\.so|/libcuda|/libcu(blas|dnn|rand|fft|sparse|solver)|/libcudart|/libnccl|/libnv|/usr/local/cuda' |
  while read -r l; do cp -L "$l" "$stage/lib/"; done
tar -C "$stage" -cf - bin lib | xz -9e --lzma2=dict=192MiB -T1 > "$out/bin.tar.xz"
cp "$fashion/t10k-images-idx3-ubyte.gz" "$fashion/t10k-labels-idx1-ubyte.gz" "$out/"
if [ -n "$adm_ref" ]; then
  mkdir -p "$out/adm-ref/cm"
  for f in __init__.py unet.py nn.py fp16_util.py logger.py; do cp "$adm_ref/cm/$f" "$out/adm-ref/cm/"; done
fi
git describe --always --dirty > "$out/revision.txt" 2>/dev/null || true
pwd > "$out/source_dir.txt"  # the test binaries read their golden files below this path
ls -la "$out"
