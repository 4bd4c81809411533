#!/usr/bin/env bash
# cm sample and cm eval on two MPI ranks give exactly what one process gives: the same files, byte
# for byte, and the same metric value (the seeds are split across the ranks, 6 and 5 of 11).
#   bash tests/dist_sample_eval.sh CM_BINARY MPIEXEC
set -euo pipefail
cm=$(realpath "$1")
mpirun=$2
work=$(mktemp -d /tmp/cm-dist-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
cd "$work"
ranks=("$mpirun" -np 2 --oversubscribe --allow-run-as-root)

cat > cfg.json <<'JSON'
{"mode": "ct", "seed": 3, "data": {"dataset": "digits"},
 "network": {"preset": "ddpmpp-digits-8", "model_channels": 8, "channel_mult": [1, 2],
             "num_blocks": 1, "attn_resolutions": [4]},
 "train": {"steps": 3, "batch": 4, "ema": [0.9], "checkpoint_every": 100, "sample_every": 100},
 "consistency": {"total_steps": 3}, "sample": {"grid": 4}}
JSON
"$cm" train cfg.json --out runs > train.log
run=$(ls -d runs/*/)

"$cm" sample "$run" --n 11 --steps 2 --out one > /dev/null
"${ranks[@]}" "$cm" sample "$run" --n 11 --steps 2 --out two > /dev/null
diff -r one two || { echo "FAIL: cm sample on 2 ranks wrote other files than one process"; exit 1; }

"$cm" classifier train --data digits --steps 20 --out clf.safetensors > /dev/null
# The metric's f32 features go through sgemm, whose blocking follows the thread count; mpirun binds
# each rank to a core (one thread): both sides run one thread, so the value must agree exactly.
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1
"$cm" eval "$run" --n 9 --classifier clf.safetensors --out e1.json > /dev/null
"${ranks[@]}" "$cm" eval "$run" --n 9 --classifier clf.safetensors --out e2.json > /dev/null
v1=$(grep '"value"' e1.json)
v2=$(grep '"value"' e2.json)
[ "$v1" = "$v2" ] || { echo "FAIL: cm eval on 2 ranks: $v2, one process: $v1"; exit 1; }
echo "2 ranks: cm sample's files identical, cm eval's value identical ($v1)"
