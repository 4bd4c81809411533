#!/usr/bin/env bash
# Installs the Debian packages cm needs (when missing), then configures and builds.
#   bash scripts/setup.sh [--build-dir DIR] [--cuda on|off|auto] [--debug] [--sanitize]
# Environment: CM_JOBS (parallel build jobs, default: number of cores).
set -euo pipefail
cd "$(dirname "$0")/.."

build_dir=build
cuda=auto
build_type=Release
sanitize=OFF
while [ $# -gt 0 ]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --cuda) cuda="$2"; shift 2 ;;
    --debug) build_type=Debug; shift ;;
    --sanitize) sanitize=ON; build_type=Debug; shift ;;
    *) echo "setup.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

packages=(cmake g++ make pkg-config doctest-dev nlohmann-json3-dev libopenblas-dev libpng-dev libjpeg-dev zlib1g-dev libcli11-dev libssl-dev openmpi-bin libopenmpi-dev libdnnl-dev ocl-icd-opencl-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type" -DCM_CUDA="${cuda^^}" -DCM_SANITIZE="$sanitize"
cmake --build "$build_dir" -j "${CM_JOBS:-$(nproc)}"
