#!/usr/bin/env bash
# The kill -9 drill: a small CT run is killed again and again and resumed each time, and what it
# ends with must be what a run that was never stopped ends with: the final checkpoint byte for
# byte, config.json, the sample grids, metrics.jsonl with every step once, no temporaries left.
#
# Kills come two ways:
#   - inside every kind of file operation cm makes: strace's fault injection delivers SIGKILL at the
#     N-th write, fsync, rename, openat or close of the process (N swept over the calls one
#     process makes, with a stride), so that kills land inside checkpoint, grid, config, log and
#     metrics writes;
#   - at random moments: `kill -9` after a random delay.
#
#   bash tools/kill_drill.sh CM_BINARY [--random K] [--syscalls write:60,fsync:1,rename:1,openat:3]
#                            [--work DIR] [--keep]
# --syscalls lists syscall:stride pairs (stride 1 kills at every call). Prints one line per kill
# and a summary; exits 1 on the first difference. Needs strace for the syscall kills.
set -euo pipefail

cm=$(realpath "${1:?usage: kill_drill.sh CM_BINARY [options]}")
shift
random_kills=20
syscalls="write:60,fsync:1,rename:1,openat:3,close:3"
work=$(mktemp -d /tmp/cm-kill-drill.XXXXXX)
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --random) random_kills="$2"; shift 2 ;;
    --syscalls) syscalls="$2"; shift 2 ;;
    --work) work="$2"; mkdir -p "$work"; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "kill_drill.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ $keep = 1 ] || trap 'rm -rf "$work"' EXIT
cd "$work"

cat > cfg.json <<'EOF'
{"mode": "ct", "seed": 5, "data": {"dataset": "digits"},
 "network": {"preset": "ddpmpp-digits-8", "model_channels": 8, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.1},
 "train": {"steps": 12, "batch": 8, "lr": 1e-3, "ema": [0.9, 0.99], "log_every": 1,
           "checkpoint_every": 1, "sample_every": 3, "keep_checkpoints": 2},
 "consistency": {"total_steps": 12}, "sample": {"grid": 4}}
EOF

# the random kills need a longer run (a few seconds) to land at different moments
sed -e 's/"steps": 12/"steps": 150/' -e 's/"total_steps": 12/"total_steps": 150/' \
  -e 's/"checkpoint_every": 1/"checkpoint_every": 7/' -e 's/"sample_every": 3/"sample_every": 25/' \
  cfg.json > cfg-long.json

"$cm" train cfg.json --out ref > ref.log
"$cm" train cfg-long.json --out ref-long > ref-long.log
kills=0
kills=0

# One invocation against the drill's run directory under $1 with config $2: a new run when there
# is none yet, otherwise a resume; the rest of the arguments prefix the command (strace ...).
# Returns cm's status (137 when killed).
step_once() {
  local out=$1 config=$2
  shift 2
  local run
  run=$(ls -d "$out"/*/ 2> /dev/null | head -1 || true)
  local rc=0
  if [ -z "$run" ]; then
    "$@" "$cm" train "$config" --out "$out" >> "$out.log" 2>&1 || rc=$?
  else
    "$@" "$cm" train --resume "$run" >> "$out.log" 2>&1 || rc=$?
  fi
  return $rc
}

# The drill's run under $1 must end exactly as the reference run under $3 of $4 steps.
check_same() {
  local out=$1 what=$2 ref final steps_total=$4
  ref=$(ls -d "$3"/*/ | head -1)
  final=checkpoints/checkpoint-$(printf %08d "$steps_total").safetensors
  local run
  run=$(ls -d "$out"/*/ | head -1)
  cmp -s "$ref/$final" "$run/$final" || { echo "FAIL $what: final checkpoint differs"; exit 1; }
  cmp -s "$ref/config.json" "$run/config.json" || { echo "FAIL $what: config.json differs"; exit 1; }
  for g in "$ref"/samples/*.png; do
    cmp -s "$g" "$run/samples/$(basename "$g")" || {
      echo "FAIL $what: $(basename "$g") differs or is missing"
      exit 1
    }
  done
  local steps
  steps=$(grep -o '"step":[0-9]*' "$run/metrics.jsonl" | sort | uniq -c | awk '$1 != 1' | wc -l)
  [ "$steps" = 0 ] || { echo "FAIL $what: metrics.jsonl repeats steps"; exit 1; }
  [ "$(grep -c '"step"' "$run/metrics.jsonl")" = "$steps_total" ] || {
    echo "FAIL $what: metrics.jsonl does not have steps 1..$steps_total"
    exit 1
  }
  if find "$run" -name '*.tmp.*' | grep -q .; then
    echo "FAIL $what: temporaries left: $(find "$run" -name '*.tmp.*')"
    exit 1
  fi
}

have_strace=0
if command -v strace > /dev/null && strace -f -qq -o /dev/null true 2> /dev/null; then
  have_strace=1
fi
if [ $have_strace = 1 ]; then
  IFS=, read -r -a pairs <<< "$syscalls"
  for pair in "${pairs[@]}"; do
    sc=${pair%%:*}
    stride=${pair##*:}
    out=drill-$sc
    n=1
    while :; do
      rc=0
      step_once "$out" cfg.json strace -f -qq -o /dev/null -e trace="$sc" -e inject="$sc:signal=KILL:when=$n" || rc=$?
      if [ $rc = 0 ]; then break; fi
      if [ $rc != 137 ]; then
        echo "FAIL $sc #$n: cm exited with status $rc (not killed):"
        tail -3 "$out.log"
        exit 1
      fi
      kills=$((kills + 1))
      echo "killed at $sc #$n (status $rc)"
      n=$((n + stride))
      if [ $n -gt 65535 ]; then
        echo "FAIL $sc: more than 65535 calls (strace's limit); use a larger stride"
        exit 1
      fi
    done
    check_same "$out" "$sc" ref 12
    echo "ok: $sc, kills at every ${stride} call(s) up to #$n, then the run completed identical to the reference"
  done
else
  echo "strace not found or not allowed to trace here: only random kills"
fi

out=drill-random
for ((i = 0; i < random_kills; i++)); do
  run=$(ls -d "$out"/*/ 2> /dev/null | head -1 || true)
  if [ -z "$run" ]; then
    "$cm" train cfg-long.json --out "$out" >> "$out.log" 2>&1 &
  else
    "$cm" train --resume "$run" >> "$out.log" 2>&1 &
  fi
  pid=$!
  sleep "$(awk -v s=$RANDOM 'BEGIN { srand(s); printf "%.3f", 0.1 + rand() * 1.2 }')"
  if kill -9 $pid 2> /dev/null; then
    kills=$((kills + 1))
    echo "killed at random (pass $i)"
  fi
  rc=0
  wait $pid 2> /dev/null || rc=$?
  if [ $rc != 0 ] && [ $rc != 137 ]; then
    echo "FAIL random pass $i: cm exited with status $rc (not killed):"
    tail -3 "$out.log"
    exit 1
  fi
done
step_once "$out" cfg-long.json env
check_same "$out" random ref-long 150
echo "ok: random kills, then the run completed identical to the reference"

# cm sample: killed inside its writes (PNGs, grid, npz, recipe.json), then run again, must leave
# exactly the files of an uninterrupted sampling and no temporaries.
refrun=$(ls -d ref/*/ | head -1)
"$cm" sample "$refrun" --n 24 --out sample-ref > /dev/null
if [ $have_strace = 1 ]; then
  for sc in rename write; do
    stride=1
    [ $sc = write ] && stride=5
    n=1
    while :; do
      rc=0
      strace -f -qq -o /dev/null -e trace=$sc -e inject="$sc:signal=KILL:when=$n" \
        "$cm" sample "$refrun" --n 24 --out sample-$sc >> sample-$sc.log 2>&1 || rc=$?
      [ $rc = 0 ] && break
      [ $rc = 137 ] || { echo "FAIL cm sample, $sc #$n: status $rc"; tail -3 sample-$sc.log; exit 1; }
      kills=$((kills + 1))
      n=$((n + stride))
    done
    diff -r sample-ref sample-$sc > /dev/null || { echo "FAIL cm sample ($sc): outputs differ"; exit 1; }
    echo "ok: cm sample killed at every $stride $sc call(s) up to #$n, then identical outputs"
  done
fi
echo "drill passed: $kills kills, every resume exact"
