#!/usr/bin/env bash
# cm train across two MPI ranks, end to end: rank 0 alone writes the run (one directory, one log,
# its checkpoints), a single process resumes it; ranks started with different configurations, or
# a batch that does not split, fail on every rank with a clear message; a rank killed mid-run ends
# the job within a bounded time, and the checkpoints left behind resume.
#   bash tests/dist_train.sh CM_BINARY MPIEXEC
set -euo pipefail
cm=$(realpath "$1")
mpirun=$2
work=$(mktemp -d /tmp/cm-dist-train.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
ranks=("$mpirun" -np 2 --oversubscribe --allow-run-as-root)
fail() { echo "FAIL: $*"; exit 1; }

cat > cfg.json <<'JSON'
{"mode": "ct", "seed": 3, "data": {"dataset": "digits"},
 "network": {"preset": "ddpmpp-digits-8", "model_channels": 8, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4], "dropout": 0.1},
 "train": {"steps": 4, "batch": 4, "ema": [0.9], "checkpoint_every": 2, "sample_every": 100,
           "log_every": 1},
 "consistency": {"total_steps": 4}, "sample": {"grid": 4}}
JSON

# 1. two ranks train; rank 0 alone writes
timeout 120 "${ranks[@]}" "$cm" train cfg.json --out runs > two.log 2>&1 || { cat two.log; fail "2-rank train"; }
[ "$(ls runs | wc -l)" = 1 ] || fail "expected one run directory, got: $(ls runs)"
run=$(ls -d runs/*/)
grep -q "data-parallel: 2 ranks" "$run/log.txt" || fail "log.txt does not say data-parallel"
[ "$(grep -c '"step": *4\|"step":4' "$run/metrics.jsonl")" = 1 ] || fail "metrics.jsonl: step 4 not written once"
ls "$run/checkpoints" | grep -q 4 || fail "no checkpoint of step 4"
# ... and one process resumes the 2-rank run
timeout 120 "$cm" train --resume "$run" --set train.steps=6 > resume.log 2>&1 || { cat resume.log; fail "1-rank resume"; }
grep -q "resuming from" resume.log || fail "the resume did not start from the checkpoint"

# 2. configurations that differ between ranks, and a batch that does not split
set +e
timeout 120 "${ranks[@]}" bash -c 'exec "$0" train cfg.json --out bad --set train.lr=0.00$((OMPI_COMM_WORLD_RANK + 1))' "$cm" > mismatch.log 2>&1
rc=$?
set -e
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "mismatched configurations: exit $rc (124: hung)"
grep -q "differs from rank 0's" mismatch.log || { cat mismatch.log; fail "no message naming the mismatch"; }
[ ! -d bad ] || [ -z "$(ls bad)" ] || fail "a run directory was made for mismatched ranks"
set +e
timeout 120 "${ranks[@]}" "$cm" train cfg.json --out bad --set train.batch=5 > batch.log 2>&1
rc=$?
set -e
[ $rc -ne 0 ] && [ $rc -ne 124 ] || fail "a batch of 5 on 2 ranks: exit $rc"
grep -q "/train/batch: 5 images do not split evenly among the job's 2 ranks" batch.log || { cat batch.log; fail "no /train/batch message"; }

# 3. a rank killed mid-run: the job ends within bounded time; the checkpoints left resume
"${ranks[@]}" "$cm" train cfg.json --out long --set train.steps=100000 --set train.checkpoint_every=3 \
  --set consistency.total_steps=100000 > long.log 2>&1 &
job=$!
for _ in $(seq 1 600); do
  ls long/*/checkpoints/*.safetensors > /dev/null 2>&1 && break
  sleep 0.1
done
victim=""
for p in $(pgrep -f "$cm train cfg.json --out long" || true); do
  if tr '\0' '\n' < "/proc/$p/environ" 2>/dev/null | grep -qx "OMPI_COMM_WORLD_RANK=1"; then victim=$p; fi
done
[ -n "$victim" ] || { kill "$job" 2>/dev/null; fail "rank 1 not found"; }
kill -9 "$victim"
start=$(date +%s)
set +e
timeout 60 tail --pid="$job" -f /dev/null
waited=$?
wait "$job"
rc=$?
set -e
[ $waited -eq 0 ] || fail "the job still runs 60 s after rank 1 was killed"
[ $rc -ne 0 ] || fail "the job exited 0 after a rank was killed"
echo "rank 1 killed: the job ended (exit $rc) in $(( $(date +%s) - start )) s"
lrun=$(ls -d long/*/)
last=$(ls "$lrun/checkpoints" | sort | tail -1)
timeout 120 "$cm" train --resume "$lrun" --set train.steps=$(( 10#$(echo "$last" | tr -dc 0-9) + 1 )) > lresume.log 2>&1 || { cat lresume.log; fail "the checkpoint left by the killed job does not resume"; }
# 4. the all-reduce benchmark of the flat gradient buffer: rank 0 reports, once
timeout 120 "${ranks[@]}" "$cm" bench --network ddpmpp-digits-8 --case allreduce --repeats 2 > ar.log 2>&1 || { cat ar.log; fail "cm bench --case allreduce"; }
[ "$(grep -c '"case":"allreduce"' ar.log)" = 1 ] || { cat ar.log; fail "allreduce: expected one line"; }
grep -q '"ranks":2,"engine":"mpi"' ar.log || { cat ar.log; fail "allreduce: not 2 MPI ranks"; }
echo "2 ranks: rank 0 wrote the run, one process resumed it; mismatches refused; a killed rank ended the job"
