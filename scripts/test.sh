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
# The browser test of cm report (tests/report_browser.sh) needs Chromium: installed here, a test
# dependency only (CM_NO_BROWSER=1 skips the install; the test then skips itself).
if [ "${CM_NO_BROWSER:-0}" != 1 ] && ! command -v chromium > /dev/null 2>&1 && command -v apt-get > /dev/null; then
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  echo "test.sh: installing chromium (the browser test of cm report)"
  if ! { $sudo_cmd apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq chromium > /dev/null; }; then
    echo "test.sh: chromium could not be installed; the browser test will skip"
  fi
fi
ctest --test-dir "$build_dir" --output-on-failure -j "$(nproc)"
