#!/usr/bin/env bash
# The accelerator checks of the benchmark suite in one go, sized for a short device lease:
#   1. SFT and RL train-step MFU on the Qwen2.5-0.5B shape in bfloat16 at batch 16 x 1024 (cuDNN
#      flash attention, LM head in bfloat16), then SFT with a float32 head and with our XLA
#      attention for comparison;
#   2. decode bandwidth on the same shape at batch 16/64, then batch 64 again with XLA's
#      while-loop command buffers (CUDA graphs with conditional nodes) switched on.
# Every step runs under its own time limit, so one failure or hang does not lose the others.
# Results (JSON per step + one log) go to ${OUT:-benchmarks/results}.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results}
mkdir -p "$OUT"
LOG="$OUT/accelerator.log"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
CKPT=${CHECKPOINT_CACHE:-/tmp/disrouter_bench_checkpoints}
START=$SECONDS

run_step() {  # name, time limit (s), command...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s)" | tee -a "$LOG"
    timeout "$limit" "$@" >>"$LOG" 2>&1
    local rc=$?
    echo "   $name: rc=$rc in $((SECONDS - t0))s (total $((SECONDS - START))s)" | tee -a "$LOG"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv \
    2>&1 | tee -a "$LOG"
$PY -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())" \
    2>&1 | tee -a "$LOG"

SIZE=${SIZE:-qwen2.5-0.5b} LENGTH=${LENGTH:-1024}  # SIZE=tiny LENGTH=64: a dry run on a CPU
TRAIN=(benchmarks/train_step.py --sizes "$SIZE" --dtype bfloat16 --length "$LENGTH" --steps 5
       --repeats 2 --skip-torch --checkpoint-cache "$CKPT")
GEN=(benchmarks/generation.py --shape "$SIZE" --dtype bfloat16 --max-new-tokens 128
     --repeats 2 --skip-torch --checkpoint-cache "$CKPT")

run_step train 150 $PY "${TRAIN[@]}" --kinds sft,rl --batch 16 \
    --output "$OUT/train_0.5b_b16.json"
run_step generation 120 $PY "${GEN[@]}" --batch-sizes 16,64 --output "$OUT/generation_0.5b.json"
run_step generation_cmdbuf 75 env \
    XLA_FLAGS="--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,CONDITIONAL,WHILE" \
    $PY "${GEN[@]}" --batch-sizes 64 --output "$OUT/generation_0.5b_cmdbuf.json"
run_step train_float32_head 75 $PY "${TRAIN[@]}" --kinds sft --batch 16 --float32-head \
    --output "$OUT/train_0.5b_b16_f32head.json"
run_step train_xla_attention 75 $PY "${TRAIN[@]}" --kinds sft --batch 16 --attention xla \
    --output "$OUT/train_0.5b_b16_xla.json"

echo "== summary" | tee -a "$LOG"
$PY - "$OUT" <<'PY' 2>&1 | tee -a "$LOG"
import json, pathlib, sys
for path in sorted(pathlib.Path(sys.argv[1]).glob("*.json")):
    result = json.loads(path.read_text())
    flags = result.get("xla_flags") or "-"
    for row in result["rows"]:
        if "mfu" in row or "jax_tflops_per_s" in row:
            print(f"{path.stem:28} {row['kind']:3} attn={row.get('attention')} "
                  f"f32head={row.get('float32_head')} "
                  f"batch={result['batch']}x{result['length']} step={row['jax_step_s'] * 1e3:.1f} ms "
                  f"{row['jax_tflops_per_s']:.0f} TFLOP/s MFU={100 * row.get('mfu', 0):.1f}%")
        else:
            frac = row.get("bandwidth_fraction_of_peak", 0)
            print(f"{path.stem:28} batch={row['batch']:3} tok/s={row['jax_tokens_per_s']:.0f} "
                  f"step={row['jax_decode_step_ms']:.3f} ms "
                  f"{row['achieved_bandwidth_bytes_per_s'] / 1e9:.0f} GB/s = {100 * frac:.1f}% "
                  f"xla_flags={flags[:40]}")
PY
