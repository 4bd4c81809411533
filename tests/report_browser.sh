#!/usr/bin/env bash
# cm report's page in a real browser: two tiny CT runs are trained, `cm report` overlays them, and
# headless Chromium opens the page. The page's own script counts each plot's series and points
# into data attributes; the DOM after load must show no script error, every plot counted, and the
# counts of the runs' metrics.jsonl (one point per logged step and run; the loss plot a raw and a
# smoothed series per run). A screenshot must come out as a PNG.
#
#   bash tests/report_browser.sh CM_BINARY
# Exits 77 (skipped) when no Chromium is installed (CM_CHROMIUM names one; else chromium,
# chromium-browser or google-chrome on PATH). .ci/run installs Debian's chromium.
set -euo pipefail

cm=$(realpath "${1:?usage: report_browser.sh CM_BINARY}")
browser=""
for b in ${CM_CHROMIUM:-} chromium chromium-browser google-chrome; do
  if command -v "$b" > /dev/null 2>&1; then
    browser=$b
    break
  fi
done
if [ -z "$browser" ]; then
  echo "no Chromium installed (apt-get install chromium): skipped"
  exit 77
fi
work=$(mktemp -d /tmp/cm-report-browser.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() {
  echo "FAIL: $*"
  exit 1
}

cat > cfg.json << 'JSON'
{"mode": "ct", "seed": 3, "data": {"dataset": "digits"},
 "network": {"preset": "ddpmpp-digits-8", "model_channels": 8, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4]},
 "train": {"steps": 6, "batch": 4, "lr": 1e-3, "ema": [0.9], "log_every": 1,
           "checkpoint_every": 100, "sample_every": 3, "layer_stats_every": 2},
 "consistency": {"total_steps": 6}, "sample": {"grid": 4}}
JSON
"$cm" train cfg.json --out runs > train1.log 2>&1 || { cat train1.log; fail "cm train"; }
"$cm" train cfg.json --set seed=4 --set train.log_every=2 --out runs > train2.log 2>&1 ||
  { cat train2.log; fail "cm train (second run)"; }
run1=$(ls -d runs/00000-*)
run2=$(ls -d runs/00001-*)
"$cm" report "$run1" "$run2" --out report.html > report.log 2>&1 || { cat report.log; fail "cm report"; }

flags=(--headless --no-sandbox --disable-gpu --no-first-run --no-default-browser-check
       --user-data-dir="$work/profile" --window-size=1280,2400)
timeout 120 "$browser" "${flags[@]}" --dump-dom "file://$work/report.html" > dom.html 2> browser.log ||
  { tail -20 browser.log; fail "$browser --dump-dom"; }
grep -q 'data-report-ready=' dom.html || { tail -20 browser.log; fail "the page's script did not finish"; }
if grep -q 'data-script-errors=' dom.html; then
  grep -o '<pre id="errors">[^<]*' dom.html
  fail "script errors on the page"
fi
plots=$(grep -c '<svg class="plot"' report.html)
ready=$(grep -o 'data-report-ready="[0-9]*"' dom.html | grep -o '[0-9]*')
[ "$ready" = "$plots" ] || fail "the script counted $ready plots, the page has $plots"

# data-series-count and data-point-count of the plot with id $1, as the browser computed them
counted() {
  local tag
  tag=$(grep -o "<svg class=\"plot\" id=\"$1\"[^>]*>" dom.html) || fail "no plot $1 in the DOM"
  echo "$(grep -o 'data-series-count="[0-9]*"' <<< "$tag" | grep -o '[0-9]*') $(grep -o 'data-point-count="[0-9]*"' <<< "$tag" | grep -o '[0-9]*')"
}
n1=$(grep -c '"loss"' "$run1/metrics.jsonl")
n2=$(grep -c '"loss"' "$run2/metrics.jsonl")
[ "$n1" = 6 ] && [ "$n2" = 3 ] || fail "expected 6 and 3 logged steps, got $n1 and $n2"
check() {
  local got
  got=$(counted "$1")
  [ "$got" = "$2 $3" ] || fail "plot $1: series and points '$got', expected '$2 $3'"
  echo "ok: plot $1 has $2 series, $3 points"
}
check loss 4 $((2 * (n1 + n2)))
check loss-wall 2 $((n1 + n2))
for id in grad-norm lr mu n images-per-s memory; do check "$id" 2 $((n1 + n2)); done
# the layer heatmaps: one cell per parameter and logged layer step (3 of each run)
cells=$(grep -o '<rect class="cell"' dom.html | wc -l)
[ "$cells" -gt 0 ] || fail "no heatmap cells"
grep -q '<img alt="step 6" src="data:image/png;base64,' dom.html || fail "no sample grid of step 6"

timeout 120 "$browser" "${flags[@]}" --screenshot="$work/shot.png" "file://$work/report.html" \
  > /dev/null 2>> browser.log || { tail -20 browser.log; fail "$browser --screenshot"; }
[ "$(head -c 8 shot.png | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "the screenshot is not a PNG"
[ "$(stat -c %s shot.png)" -gt 20000 ] || fail "the screenshot is nearly empty ($(stat -c %s shot.png) bytes)"
echo "ok: $browser loaded the report of 2 runs ($plots plots, $cells heatmap cells) without a script error"
