"""Generation throughput: disrouter_jax.generation.generate vs transformers (PyTorch) generate.

Builds a random Qwen2 checkpoint with transformers in a temporary directory, loads it into both
engines and measures greedy generation of exactly ``--max-new-tokens`` tokens per row (no stop
tokens) for each batch size, on the same left-padded prompts of random lengths. Throughput counts
generated tokens only, over the whole call (prefill + decode) after a warm-up call (compilation
excluded).

The decode step time is the difference between a call generating N tokens and one generating a
single token (prefill + one step), divided by N - 1. On an accelerator it gives the
achieved memory bandwidth: bytes read per decode step (every weight except the embedding table,
of which only B rows are gathered, plus the whole KV cache, which attention reads in full) over
the step time, against the device's peak.

    python benchmarks/generation.py                 # hidden 512, 8 layers, vocab 32000
    python benchmarks/generation.py --quick         # the tiny shape, about a minute
    python benchmarks/generation.py --shape qwen2.5-0.5b --dtype bfloat16   # on an accelerator
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (benchmarks/harness.py: shapes, checkpoints, timing)

# Peak memory bandwidth (bytes/s) by substring of jax's device_kind, most specific first.
PEAK_BANDWIDTH = (
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM, HBM3
    ("GH200", 4.0e12),
    ("H200", 4.8e12),
    ("A100-SXM4-80GB", 2.039e12),
    ("A100", 1.555e12),
    ("L4", 3.0e11),
    ("TPU v4", 1.2e12),
    ("TPU v5 lite", 8.19e11),  # v5e
    ("TPU v5e", 8.19e11),
    ("TPU v5p", 2.765e12),
    ("TPU v5", 2.765e12),
    ("TPU v6 lite", 1.64e12),  # Trillium
    ("TPU v6e", 1.64e12),
)


def make_prompts(batch: int, min_len: int, max_len: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len + 1, size=batch)
    return [rng.integers(1, vocab, size=n).tolist() for n in lengths]


class JaxEngine:
    def __init__(self, model):
        from disrouter_jax.generation import generate

        self.model = model
        self._generate = generate

    @classmethod
    def from_checkpoint(cls, ckpt: Path, dtype: str) -> "JaxEngine":
        import jax.numpy as jnp

        from disrouter_jax.models import hf_io

        return cls(hf_io.from_pretrained(ckpt, dtype=getattr(jnp, dtype)))

    def run(self, prompts, max_new_tokens: int) -> int:
        out = self._generate(self.model, prompts, max_new_tokens=max_new_tokens,
                             stop_token_ids=(), max_batch_size=len(prompts), progress=False)
        return sum(len(samples[0].tokens) for samples in out)


class TorchEngine:
    def __init__(self, ckpt: Path, dtype: str, device: str):
        import torch
        from transformers import Qwen2ForCausalLM

        self.torch = torch
        self.device = device
        self.model = Qwen2ForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).eval()
        self.model.to(device)

    def run(self, prompts, max_new_tokens: int) -> int:
        torch = self.torch
        longest = max(map(len, prompts))
        ids = torch.tensor([[0] * (longest - len(p)) + p for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts],
                            device=self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens,
                min_new_tokens=max_new_tokens, eos_token_id=None, pad_token_id=0,
            )
        if self.device != "cpu":
            torch.cuda.synchronize()
        return int((out.shape[1] - longest) * out.shape[0])


def decode_bytes_per_step(config, batch: int, cache_length: int, dtype_bytes: int) -> int:
    """Weights read once per step (the embedding table only for B rows) + the full KV cache."""
    embed = config.vocab_size * config.hidden_size
    weights = config.num_params - (0 if config.tie_word_embeddings else embed)
    weights += batch * config.hidden_size
    kv = 2 * config.num_layers * batch * cache_length * config.num_kv_heads * config.head_dim
    return (weights + kv) * dtype_bytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and few tokens")
    parser.add_argument("--shape", choices=sorted(harness.SHAPES), default=None,
                        help="model shape (default: mid; tiny with --quick)")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (quick: 32)")
    parser.add_argument("--prompt-lengths", default="32,64", help="min,max prompt length")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed JAX calls per point (best kept)")
    parser.add_argument("--torch-repeats", type=int, default=1,
                        help="timed PyTorch calls per point")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--torch-device", default=None, help="default: cuda when available")
    parser.add_argument("--threads", default=None,
                        help="torch intra-op thread counts to try, e.g. '2,1' (default: the CPUs "
                             "this process may use); the fastest is the baseline")
    parser.add_argument("--checkpoint-cache", default=None,
                        help="build the random checkpoint once under this directory and reuse it")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights made by JAX on the device, no checkpoint and no "
                             "PyTorch run (bandwidth on large shapes)")
    parser.add_argument("--output", default=str(harness.RESULTS_DIR / "generation.json"))
    args = parser.parse_args(argv)
    args.skip_torch = args.skip_torch or args.random_init

    import jax
    import torch

    from disrouter_jax.generation.buckets import BucketConfig

    shape_name = args.shape or ("tiny" if args.quick else "mid")
    shape = harness.SHAPES[shape_name]
    max_new = args.max_new_tokens or (32 if args.quick else 128)
    if max_new < 2:
        raise ValueError("--max-new-tokens must be >= 2 (the step time is a difference)")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    min_len, max_len = (int(x) for x in args.prompt_lengths.split(","))
    available = len(os.sched_getaffinity(0))
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [available]
    torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = jax.devices()[0]
    peak = harness.lookup(PEAK_BANDWIDTH, device.device_kind) if device.platform != "cpu" else None
    dtype_bytes = 4 if args.dtype == "float32" else 2

    result = {
        "shape": shape_name,
        "model": dataclasses.asdict(shape),
        "dtype": args.dtype,
        "max_new_tokens": max_new,
        "prompt_lengths": [min_len, max_len],
        **harness.environment(),
        "num_devices_used": 1,
        "peak_bandwidth_bytes_per_s": peak,
        "torch_device": None if args.skip_torch else torch_device,
        "torch_thread_counts": thread_counts,
        "cpus_available": available,
        "cpu_load_average_1min": os.getloadavg()[0],
        "rows": [],
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"JAX on {device.device_kind}, PyTorch on {result['torch_device']} "
          f"(threads {thread_counts}), load average {result['cpu_load_average_1min']:.1f}",
          file=sys.stderr)

    if args.random_init:
        source = contextlib.nullcontext(None)
    else:
        source = harness.checkpoint(shape, shape_name, args.checkpoint_cache)
    with source as ckpt:
        if ckpt is None:
            ours = JaxEngine(harness.random_model(shape, args.dtype))
        else:
            ours = JaxEngine.from_checkpoint(ckpt, args.dtype)
        result["num_params"] = ours.model.config.num_params
        theirs = None if args.skip_torch else TorchEngine(ckpt, args.dtype, torch_device)
        for batch in batch_sizes:
            prompts = make_prompts(batch, min_len, max_len, shape.vocab_size, seed=batch)
            ours.run(prompts, 1)  # compile both programs
            tokens = ours.run(prompts, max_new)
            assert tokens == batch * max_new, (tokens, batch * max_new)
            t_full = harness.best_time(lambda: ours.run(prompts, max_new), args.repeats)
            t_one = harness.best_time(lambda: ours.run(prompts, 1), args.repeats)
            step_s = max(t_full - t_one, 1e-9) / (max_new - 1)
            row = {
                "batch": batch,
                "jax_tokens_per_s": batch * max_new / t_full,
                "jax_seconds": t_full,
                "jax_prefill_plus_one_step_seconds": t_one,
                "jax_decode_step_ms": step_s * 1e3,
            }
            cache_length = BucketConfig().prompt_bucket(max(map(len, prompts))) + \
                BucketConfig().new_tokens_bucket(max_new)
            step_bytes = decode_bytes_per_step(ours.model.config, batch, cache_length, dtype_bytes)
            row["decode_bytes_per_step"] = step_bytes
            row["achieved_bandwidth_bytes_per_s"] = step_bytes / step_s
            if peak:
                row["bandwidth_fraction_of_peak"] = step_bytes / step_s / peak
            if theirs is not None:
                per_threads = {}
                for n in thread_counts:
                    torch.set_num_threads(n)
                    theirs.run(prompts, 4)  # warm-up
                    per_threads[n] = harness.best_time(lambda: theirs.run(prompts, max_new),
                                                       args.torch_repeats)
                best = min(per_threads, key=per_threads.get)
                t_torch = per_threads[best]
                row["torch_seconds_by_threads"] = per_threads
                row["torch_threads"] = best
                row["torch_tokens_per_s"] = batch * max_new / t_torch
                row["torch_seconds"] = t_torch
                row["speedup_vs_torch"] = t_torch / t_full
            result["rows"].append(row)
            print(json.dumps(row), file=sys.stderr)
            # Written after every row, so a run cut short keeps what it measured.
            out.write_text(json.dumps(result, indent=2) + "\n")

    print_table(result)
    print(f"wrote {out}")
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['device_kind']} ({result['jax_backend']}), {result['dtype']}, "
          f"{result['num_params'] / 1e6:.1f}M params, {result['max_new_tokens']} new tokens, "
          f"torch on {result['torch_device']} (best of threads {result['torch_thread_counts']}), "
          f"load average {result['cpu_load_average_1min']:.1f}")
    header = (f"{'batch':>5} {'jax tok/s':>10} {'torch tok/s':>11} {'thr':>3} {'speedup':>7} "
              f"{'step ms':>8} {'GB/s':>7}")
    if result["peak_bandwidth_bytes_per_s"]:
        header += f" {'% peak':>6}"
    print(header)
    for row in result["rows"]:
        line = (f"{row['batch']:>5} {row['jax_tokens_per_s']:>10.1f} "
                f"{row.get('torch_tokens_per_s', float('nan')):>11.1f} "
                f"{row.get('torch_threads', '-'):>3} "
                f"{row.get('speedup_vs_torch', float('nan')):>6.2f}x "
                f"{row['jax_decode_step_ms']:>8.2f} "
                f"{row['achieved_bandwidth_bytes_per_s'] / 1e9:>7.1f}")
        if "bandwidth_fraction_of_peak" in row:
            line += f" {100 * row['bandwidth_fraction_of_peak']:>5.1f}%"
        print(line)


if __name__ == "__main__":
    main()
