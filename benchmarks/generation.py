"""Generation throughput: disrouter_jax.generation.generate vs transformers (PyTorch) generate
and google-tunix's ``Sampler``.

Builds a random Qwen2 checkpoint with transformers in a temporary directory, then runs each engine
in a process of its own (``--worker``) on that checkpoint: greedy generation of exactly
``--max-new-tokens`` tokens per row (no stop tokens) for each batch size, on the same left-padded
prompts of random lengths. Throughput counts generated tokens only, over the whole call (prefill +
decode) after a warm-up call (compilation excluded). Every engine's tokens must equal ours.

The roofline: the decode step's matmuls alone (every layer's projections and MLP, the LM head,
at the step's batch, in one jitted program on random weights of the same shapes), timed in the
same JAX process; ``roofline`` is that time over the measured step time.

The decode step time is the difference between a call generating N tokens and one generating a
single token (prefill + one step), divided by N - 1. On an accelerator it gives the
achieved memory bandwidth: bytes read per decode step (every weight except the embedding table,
of which only B rows are gathered, plus the whole KV cache, which attention reads in full) over
the step time, against the device's peak.

    python benchmarks/generation.py                 # hidden 512, 8 layers, vocab 32000
    python benchmarks/generation.py --quick         # the tiny shape, about a minute
    python benchmarks/generation.py --engines jax,tunix --batch-sizes 1,16 --max-new-tokens 64
    python benchmarks/generation.py --shape qwen2.5-0.5b --dtype bfloat16   # on an accelerator
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (benchmarks/harness.py: shapes, checkpoints, timing)
import tunix_contender  # noqa: E402

ENGINES = ("jax", "torch", "tunix")

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

    def run(self, prompts, max_new_tokens: int) -> list[list[int]]:
        out = self._generate(self.model, prompts, max_new_tokens=max_new_tokens,
                             stop_token_ids=(), max_batch_size=len(prompts), progress=False)
        return [samples[0].tokens.tolist() for samples in out]


class TorchEngine:
    def __init__(self, ckpt: Path, dtype: str, device: str):
        import torch
        from transformers import Qwen2ForCausalLM

        self.torch = torch
        self.device = device
        self.model = Qwen2ForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).eval()
        self.model.to(device)

    def run(self, prompts, max_new_tokens: int) -> list[list[int]]:
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
        return out[:, longest:].tolist()


def decode_matmuls(config, batch: int, dtype: str):
    """A jitted program of one decode step's matmuls only, on random weights of the model's shapes
    (``runtime.jit``'s dot backend choice for ``batch`` rows, as the decode loop's), and its
    FLOPs. Each layer's input is the last one's output, so nothing is hoisted out."""
    import jax
    import jax.numpy as jnp

    from disrouter_jax import runtime

    d, f, v = config.hidden_size, config.intermediate_size, config.vocab_size
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    dt = getattr(jnp, dtype)
    keys = iter(jax.random.split(jax.random.key(0), 8 * config.num_layers + 2))
    w = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, dt)  # noqa: E731
    layers = [dict(q=w(d, q), k=w(d, kv), v=w(d, kv), o=w(q, d), gate=w(d, f), up=w(d, f), down=w(f, d))
              for _ in range(config.num_layers)]
    head = w(d, v)

    def step(x, layers, head):
        for p in layers:
            keys_values = jnp.sum(x @ p["k"]) + jnp.sum(x @ p["v"])  # kept alive, tiny
            x = x + (x @ p["q"]) @ p["o"] + 1e-9 * keys_values
            x = x + ((x @ p["gate"]) * (x @ p["up"])) @ p["down"]
        return x @ head

    jitted = runtime.jit(step) if runtime.xla_dots_win(batch) else runtime.jit(step).default
    x = w(batch, d)
    flops = 2 * batch * (config.num_layers * (d * q + 2 * d * kv + q * d + 3 * d * f) + d * v)
    return (lambda: jax.block_until_ready(jitted(x, layers, head))), flops


def decode_bytes_per_step(config, batch: int, cache_length: int, dtype_bytes: int) -> int:
    """Weights read once per step (the embedding table only for B rows) + the full KV cache."""
    embed = config.vocab_size * config.hidden_size
    weights = config.num_params - (0 if config.tie_word_embeddings else embed)
    weights += batch * config.hidden_size
    kv = 2 * config.num_layers * batch * cache_length * config.num_kv_heads * config.head_dim
    return (weights + kv) * dtype_bytes


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small model and few tokens")
    parser.add_argument("--shape", choices=sorted(harness.SHAPES), default=None,
                        help="model shape (default: mid; tiny with --quick)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help="comma list of jax, torch, tunix (tunix: pip install -e '.[bench]')")
    parser.add_argument("--batch-sizes", default="1,16,64")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default 128 (quick: 32)")
    parser.add_argument("--prompt-lengths", default="32,64", help="min,max prompt length")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed JAX / tunix calls per point (best kept)")
    parser.add_argument("--torch-repeats", type=int, default=1,
                        help="timed PyTorch calls per point")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-torch", action="store_true", help="drop torch from --engines")
    parser.add_argument("--torch-device", default=None, help="default: cuda when available")
    parser.add_argument("--threads", default=None,
                        help="torch intra-op thread counts to try, e.g. '2,1' (default: the CPUs "
                             "this process may use); the fastest is the baseline")
    parser.add_argument("--checkpoint-cache", default=None,
                        help="build the random checkpoint once under this directory and reuse it")
    parser.add_argument("--random-init", action="store_true",
                        help="random weights made by JAX on the device, no checkpoint and no "
                             "other engine (bandwidth on large shapes)")
    parser.add_argument("--output", default=str(harness.RESULTS_DIR / "generation.json"))
    parser.add_argument("--worker", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.shape_name = args.shape or ("tiny" if args.quick else "mid")
    args.max_new = args.max_new_tokens or (32 if args.quick else 128)
    if args.max_new < 2:
        raise ValueError("--max-new-tokens must be >= 2 (the step time is a difference)")
    args.batch_list = [int(b) for b in args.batch_sizes.split(",")]
    args.min_len, args.max_len = (int(x) for x in args.prompt_lengths.split(","))
    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"--engines: unknown {unknown}; known: {ENGINES}")
    if args.skip_torch or args.random_init:
        engines = [e for e in engines if e != "torch"]
    if args.random_init:
        engines = ["jax"]
    if "jax" not in engines:
        engines.insert(0, "jax")  # the tokens every other engine is checked against
    args.engine_list = engines  # the order they run in
    return args


def prompts_for(args, batch: int):
    return make_prompts(batch, args.min_len, args.max_len, harness.SHAPES[args.shape_name].vocab_size, seed=batch)


def jax_worker(args, ckpt) -> dict:
    import jax

    from disrouter_jax.generation.buckets import BucketConfig

    shape = harness.SHAPES[args.shape_name]
    device = jax.devices()[0]
    peak = harness.lookup(PEAK_BANDWIDTH, device.device_kind) if device.platform != "cpu" else None
    ours = JaxEngine(harness.random_model(shape, args.dtype)) if ckpt is None else \
        JaxEngine.from_checkpoint(ckpt, args.dtype)
    dtype_bytes = 4 if args.dtype == "float32" else 2
    out = {"num_params": ours.model.config.num_params, "peak_bandwidth_bytes_per_s": peak,
           **harness.environment(), "rows": {}}
    for batch in args.batch_list:
        prompts = prompts_for(args, batch)
        ours.run(prompts, 1)  # compile both programs
        tokens = ours.run(prompts, args.max_new)
        assert sum(map(len, tokens)) == batch * args.max_new
        t_full = harness.best_time(lambda: ours.run(prompts, args.max_new), args.repeats)
        t_one = harness.best_time(lambda: ours.run(prompts, 1), args.repeats)
        step_s = max(t_full - t_one, 1e-9) / (args.max_new - 1)
        matmuls, flops = decode_matmuls(ours.model.config, batch, args.dtype)
        matmuls()  # compile
        gemm_s = harness.best_time(matmuls, 20)
        cache_length = BucketConfig().prompt_bucket(max(map(len, prompts))) + \
            BucketConfig().new_tokens_bucket(args.max_new)
        step_bytes = decode_bytes_per_step(ours.model.config, batch, cache_length, dtype_bytes)
        row = {"jax_tokens_per_s": batch * args.max_new / t_full, "jax_seconds": t_full,
               "jax_prefill_plus_one_step_seconds": t_one, "jax_decode_step_ms": step_s * 1e3,
               "decode_matmul_flops": flops, "decode_matmuls_ms": gemm_s * 1e3,
               "gemm_flops_per_s": flops / gemm_s, "roofline_fraction": gemm_s / step_s,
               "decode_bytes_per_step": step_bytes, "achieved_bandwidth_bytes_per_s": step_bytes / step_s,
               "tokens": tokens}
        if peak:
            row["bandwidth_fraction_of_peak"] = step_bytes / step_s / peak
        out["rows"][batch] = row
        print(json.dumps({k: v for k, v in row.items() if k != "tokens"}), file=sys.stderr)
    return out


def torch_worker(args, ckpt) -> dict:
    import torch

    available = len(os.sched_getaffinity(0))
    thread_counts = [int(t) for t in args.threads.split(",")] if args.threads else [available]
    device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    theirs = TorchEngine(ckpt, args.dtype, device)
    out = {"torch_device": device, "torch_thread_counts": thread_counts, "torch": torch.__version__, "rows": {}}
    for batch in args.batch_list:
        prompts = prompts_for(args, batch)
        per_threads = {}
        for n in thread_counts:
            torch.set_num_threads(n)
            tokens = theirs.run(prompts, args.max_new)  # warm-up, and the tokens checked
            per_threads[n] = harness.best_time(lambda: theirs.run(prompts, args.max_new), args.torch_repeats)
        best = min(per_threads, key=per_threads.get)
        out["rows"][batch] = {"torch_seconds_by_threads": per_threads, "torch_threads": best,
                              "torch_seconds": per_threads[best],
                              "torch_tokens_per_s": batch * args.max_new / per_threads[best], "tokens": tokens}
    return out


def tunix_worker(args, ckpt) -> dict:
    import importlib.metadata

    from disrouter_jax.generation.buckets import next_power_of_two

    # The sampler pads prompts to a power of two; one cache size serves every batch.
    theirs = tunix_contender.TunixEngine(ckpt, args.dtype, next_power_of_two(args.max_len) + args.max_new)
    out = {"tunix": importlib.metadata.version("google-tunix"), "rows": {}}
    for batch in args.batch_list:
        prompts = prompts_for(args, batch)
        tokens = theirs.run(prompts, args.max_new)  # compiles; the tokens checked
        t = harness.best_time(lambda: theirs.run(prompts, args.max_new), args.repeats)
        out["rows"][batch] = {"tunix_seconds": t, "tunix_tokens_per_s": batch * args.max_new / t,
                              "tokens": tokens}
    return out


def run_worker(args) -> None:
    ckpt = None if args.checkpoint is None else Path(args.checkpoint)
    out = {"jax": jax_worker, "torch": torch_worker, "tunix": tunix_worker}[args.worker](args, ckpt)
    Path(args.worker_output).write_text(json.dumps(out))


def spawn(engine: str, argv, ckpt, tmp: Path) -> dict:
    """One engine in a fresh process (no engine's threads, allocator or compiled code in
    another's way)."""
    out = tmp / f"{engine}.json"
    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker", engine, "--worker-output", str(out)]
    if ckpt is not None:
        cmd += ["--checkpoint", str(ckpt)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"{engine}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return json.loads(out.read_text())


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return {}
    engines = tunix_contender.runnable(args.engine_list)
    shape = harness.SHAPES[args.shape_name]
    result = {
        "shape": args.shape_name, "model": dataclasses.asdict(shape), "dtype": args.dtype,
        "max_new_tokens": args.max_new, "prompt_lengths": [args.min_len, args.max_len],
        "engines": engines, "num_devices_used": 1, "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_load_average_1min": os.getloadavg()[0], "rows": [],
    }
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    source = contextlib.nullcontext(None) if args.random_init else \
        harness.checkpoint(shape, args.shape_name, args.checkpoint_cache)
    with source as ckpt, tempfile.TemporaryDirectory() as tmp:
        runs = {engine: spawn(engine, argv, ckpt, Path(tmp)) for engine in engines}
    result["cpu_load_average_1min_after"] = os.getloadavg()[0]
    ours = runs["jax"]
    others = [e for e in engines if e != "jax"]
    result["others"] = others
    result.update({k: v for k, v in ours.items() if k != "rows"})
    for engine in others:
        result.update({k: v for k, v in runs[engine].items() if k != "rows"})
    mismatches = []
    for batch in args.batch_list:
        row = {"batch": batch}
        want = ours["rows"][str(batch)].pop("tokens")
        row.update(ours["rows"][str(batch)])
        for engine in others:
            theirs = runs[engine]["rows"][str(batch)]
            got = theirs.pop("tokens")
            row.update(theirs)
            row[f"{engine}_tokens_equal"] = got == want
            row[f"speedup_vs_{engine}"] = row[f"{engine}_seconds"] / row["jax_seconds"]
            if got != want:
                rows = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
                mismatches.append(f"batch {batch}: {engine}'s tokens differ from ours in rows {rows}")
        result["rows"].append(row)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {out}")
    if mismatches:
        raise SystemExit("tokens differ: " + "; ".join(mismatches))
    return result


def print_table(result: dict) -> None:
    engines, others = result["engines"], result["others"]
    print(f"\n{result['device_kind']} ({result['jax_backend']}), {result['dtype']}, "
          f"{result['num_params'] / 1e6:.1f}M params, {result['max_new_tokens']} new tokens, "
          f"engines {', '.join(engines)} (in this order, each in its own process), load average "
          f"{result['cpu_load_average_1min']:.1f} before, {result['cpu_load_average_1min_after']:.1f} after")
    header = f"{'batch':>5} {'jax tok/s':>10}"
    for engine in others:
        header += f" {engine + ' tok/s':>11} {'vs ' + engine:>8}"
    header += f" {'step ms':>8} {'GEMM ms':>8} {'roofline':>8} {'GFLOP/s':>8} {'GB/s':>7}"
    if result["peak_bandwidth_bytes_per_s"]:
        header += f" {'% peak':>6}"
    print(header)
    for row in result["rows"]:
        line = f"{row['batch']:>5} {row['jax_tokens_per_s']:>10.1f}"
        for engine in others:
            same = "" if row[f"{engine}_tokens_equal"] else "!"
            line += f" {row[f'{engine}_tokens_per_s']:>10.1f}{same or ' '} {row[f'speedup_vs_{engine}']:>7.2f}x"
        line += (f" {row['jax_decode_step_ms']:>8.2f} {row['decode_matmuls_ms']:>8.2f} "
                 f"{100 * row['roofline_fraction']:>7.0f}% {row['gemm_flops_per_s'] / 1e9:>8.1f} "
                 f"{row['achieved_bandwidth_bytes_per_s'] / 1e9:>7.1f}")
        if "bandwidth_fraction_of_peak" in row:
            line += f" {100 * row['bandwidth_fraction_of_peak']:>5.1f}%"
        print(line)
    print("(! after a figure: that engine's tokens differ from ours)")


if __name__ == "__main__":
    main()
