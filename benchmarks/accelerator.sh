#!/usr/bin/env bash
# The accelerator checks of the benchmark suite in one go (MFU of the train steps on the
# Qwen2.5-0.5B shape in bfloat16, decode bandwidth at batch 1/16/64), PyTorch on the same device
# for the mid checkpoint. Results go to ${OUT:-benchmarks/results}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
$PY benchmarks/train_step.py --sizes qwen2.5-0.5b --kinds sft,rl --dtype bfloat16 --batch 8 \
    --length 1024 --steps 5 --repeats 2 --skip-torch --output "$OUT/train_step_0.5b.json"
$PY benchmarks/generation.py --shape qwen2.5-0.5b --dtype bfloat16 --batch-sizes 1,16,64 \
    --max-new-tokens 128 --skip-torch --output "$OUT/generation_0.5b.json"
$PY benchmarks/train_step.py --sizes mid --kinds sft --dtype bfloat16 --batch 16 --length 512 \
    --steps 5 --repeats 2 --output "$OUT/train_step_mid.json"
$PY benchmarks/generation.py --dtype bfloat16 --batch-sizes 16,64 --max-new-tokens 128 \
    --output "$OUT/generation_mid.json"
