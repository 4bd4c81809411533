#!/usr/bin/env bash
# cm's CT step beside the peer's (EDM's SongUNet in PyTorch, ../shared/bench/peer_ct_step.py), run
# alternately in one call so that both see the same machine and the same load. Prints one table:
# ms/step and images/s of every run, peak memory where the program reports it, and the ratio of the
# medians (peer ms / cm ms: above 1 means cm is faster), with the machine's state beside it.
#
#   bash bench/side_by_side.sh CM EDM_DIR PYTHON [options]
#     CM        the cm binary (build/runner/cm)
#     EDM_DIR   a plain directory holding NVlabs/edm's python files (training/networks.py)
#     PYTHON    a python with torch, numpy and requests (EDM's dnnlib imports them)
#   options:
#     --network NAME   (default ddpmpp-small-28)     --batch B    (default 64)
#     --repeats R      timed steps per run (cm --repeats, peer --steps; default 5)
#     --rounds K       alternations cm, peer, [peer channels_last] (default 3)
#     --threads T      threads of both programs (OMP_NUM_THREADS for cm, --threads for the peer;
#                      default: all cores)
#     --no-channels-last   skip the peer's channels_last runs
#     --winograd       also run cm with CM_CONV=winograd (opt-in Winograd 3×3 kernels) each round
#     --peer PATH      the peer script (default: ../shared/bench/peer_ct_step.py beside this
#                      checkout, else /work/shared/bench/peer_ct_step.py)
#   smoke test:  bash bench/side_by_side.sh build/runner/cm EDM python3 --batch 4 --repeats 1 --rounds 1
#
# Both programs warm up for 2 steps before timing and report the median of the timed steps.
# cm reports its peak resident memory; the peer reports peak memory only on a GPU (null on the CPU).
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[[ $# -ge 3 ]] || usage
CM=$1 EDM=$2 PY=$3
shift 3
NETWORK=ddpmpp-small-28 BATCH=64 REPEATS=5 ROUNDS=3 THREADS=$(nproc) CL=1 PEER="" WINO=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --network) NETWORK=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --repeats) REPEATS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --no-channels-last) CL=0; shift ;;
    --winograd) WINO=1; shift ;;
    --peer) PEER=$2; shift 2 ;;
    -h|--help) usage ;;
    *) echo "side_by_side.sh: unknown option '$1'" >&2; exit 2 ;;
  esac
done
HERE=$(cd "$(dirname "$0")/.." && pwd)
if [[ -z $PEER ]]; then
  for p in "$HERE/../shared/bench/peer_ct_step.py" /work/shared/bench/peer_ct_step.py; do
    [[ -f $p ]] && { PEER=$p; break; }
  done
fi
[[ -x $CM ]] || { echo "side_by_side.sh: '$CM' is not an executable cm" >&2; exit 2; }
[[ -f $EDM/training/networks.py ]] || { echo "side_by_side.sh: no training/networks.py under '$EDM'" >&2; exit 2; }
[[ -f ${PEER:-} ]] || { echo "side_by_side.sh: the peer script was not found (--peer PATH)" >&2; exit 2; }
"$PY" -c 'import torch, numpy, requests' 2>/dev/null \
  || { echo "side_by_side.sh: '$PY' lacks torch, numpy or requests" >&2; exit 2; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
RES=$TMP/results.tsv   # program  variant  round  ms  img/s  peak_bytes  uptime-load

load() { uptime | sed 's/.*load average: //'; }
json() { "$PY" -c 'import json,sys; d=json.loads(sys.argv[1]); print(*[("" if d.get(k) is None else d[k]) for k in sys.argv[2:]], sep="\t")' "$@"; }

run_cm() {
  local r=$1 variant=${2:-f32} l out
  l=$(load)
  out=$(OMP_NUM_THREADS=$THREADS CM_CONV=$([[ $variant == winograd ]] && echo winograd) \
          "$CM" bench --network "$NETWORK" --case ct --batch "$BATCH" \
          --repeats "$REPEATS" | grep '^{' | tail -1)
  printf 'cm\t%s\t%s\t%s\t%s\n' "$variant" "$r" "$(json "$out" ms_per_step images_per_s peak_memory_bytes)" "$l" >>"$RES"
  [[ $variant == winograd ]] || json "$out" memory_format conv blas >"$TMP/cm_kernels"
}
run_peer() {
  local r=$1 variant=$2 l out
  l=$(load)
  out=$("$PY" "$PEER" --edm "$EDM" --device cpu --network "$NETWORK" --batch "$BATCH" \
          --steps "$REPEATS" --threads "$THREADS" $([[ $variant == channels_last ]] && echo --channels-last) \
          2>"$TMP/peer.err" | grep '^{' | tail -1) || { cat "$TMP/peer.err" >&2; exit 1; }
  printf 'pytorch\t%s\t%s\t%s\t%s\n' "$variant" "$r" "$(json "$out" ms_per_step images_per_s peak_memory_bytes)" "$l" >>"$RES"
  [[ -f $TMP/torch_version ]] || json "$out" torch >"$TMP/torch_version"
}

for ((r = 1; r <= ROUNDS; r++)); do
  run_cm "$r"
  [[ $WINO == 1 ]] && run_cm "$r" winograd
  run_peer "$r" eager
  [[ $CL == 1 ]] && run_peer "$r" channels_last
done

echo "== ${NETWORK} CT step, f32, CPU, batch ${BATCH}, ${REPEATS} timed steps per run (median), ${ROUNDS} alternating rounds"
echo "machine:   $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'), $(nproc) cores;" \
     "$(grep -m1 -o 'avx512f' /proc/cpuinfo >/dev/null && echo AVX-512 || echo 'no AVX-512')"
echo "threads:   $THREADS (cm: OMP_NUM_THREADS, OpenBLAS held to 1 inside conv items; peer: torch.set_num_threads)"
echo "OpenBLAS:  OPENBLAS_CORETYPE=${OPENBLAS_CORETYPE:-<unset> (cm then picks SkylakeX with AVX-512, Haswell with AVX2)}"
echo "PyTorch:   $(cat "$TMP/torch_version" 2>/dev/null) ($PY)"
echo "cm:        $CM ($(git -C "$(dirname "$CM")" rev-parse --short HEAD 2>/dev/null || echo '?'));" \
     "memory format, conv, blas: $(cat "$TMP/cm_kernels" 2>/dev/null)"
echo "load now:  $(uptime)"
"$PY" - "$RES" <<'EOF'
import sys, statistics as st
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
print(f"{'program':8} {'variant':14} {'round':>5} {'ms/step':>10} {'img/s':>7} {'peak MiB':>9}  load (1/5/15 min) before the run")
for p, v, r, ms, ips, peak, ld in rows:
    pk = f"{int(peak) / 2**20:.0f}" if peak else "n/a"
    print(f"{p:8} {v:14} {r:>5} {float(ms):10.1f} {float(ips):7.2f} {pk:>9}  {ld}")
med = {}
for p, v, *_ in rows:
    med.setdefault((p, v), st.median(float(x[3]) for x in rows if (x[0], x[1]) == (p, v)))
cm = med[("cm", "f32")]
print("\nmedian over rounds:")
for (p, v), ms in med.items():
    extra = "" if p == "cm" else f"   peer/cm = {ms / cm:.3f} (cm is {ms / cm:.2f}x the peer's speed; goal >= 1.3)"
    print(f"  {p:8} {v:14} {ms:10.1f} ms{extra}")
EOF
