#!/usr/bin/env bash
# Decode bandwidth where the bytes dominate: the Qwen2.5-7B shape (random bfloat16 weights made on
# the device, ~15 GB) at batch 64; then the RL step's MFU on the 0.5B shape at batch 16.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LARGE=${LARGE:-qwen2.5-7b} SMALL=${SMALL:-qwen2.5-0.5b} LENGTH=${LENGTH:-1024}
step() { local name=$1 limit=$2; shift 2; echo "== $name"; timeout "$limit" "$@" >>"$OUT/large.log" 2>&1; echo "   rc=$? at ${SECONDS}s"; }
step generation_large 120 $PY benchmarks/generation.py --shape "$LARGE" --random-init --dtype bfloat16 \
    --batch-sizes 64 --max-new-tokens 128 --repeats 2 --output "$OUT/generation_large.json"
step train_rl 70 $PY benchmarks/train_step.py --sizes "$SMALL" --dtype bfloat16 --length "$LENGTH" \
    --steps 5 --repeats 2 --skip-torch --kinds rl --batch 16 --output "$OUT/train_rl_b16.json"
grep -h -B1 -A3 "GB/s\|MFU" "$OUT/large.log"
