"""Train-step throughput: our jitted SFT and RL steps vs a PyTorch reference step and
google-tunix's Qwen2 under an NNX train step.

The references do the same work: forward, masked cross-entropy (SFT) or the clipped
policy-gradient loss (RL), backward, global-norm clipping, AdamW update: transformers'
Qwen2ForCausalLM + torch.optim.AdamW, and tunix's Qwen2 + ``nnx.Optimizer`` (optax AdamW) under
one ``nnx.jit`` (``tunix_contender.TunixTrainer``; tunix: ``pip install -e '.[bench]'``). Every
engine runs in a process of its own on the same random checkpoint and batch; their first steps'
losses are checked equal to ours. tokens/s counts every position of the [B, T] batch.
Compilation / warm-up steps are excluded.

On an accelerator it also reports model FLOPs utilisation (MFU):

    FLOPs per step = 6 * N_matmul * B * T  +  12 * L * B * T^2 * (H * Dh) / 2

N_matmul counts the parameters of every matmul (attention, MLP, LM head; not the embedding
gather); the second term is causal attention (QK^T and PV, forward + backward, half the square).
MFU = FLOPs per step / step time / the device's dense bf16 peak.

    python benchmarks/train_step.py --sizes tiny,mid              # CPU
    python benchmarks/train_step.py --sizes qwen2.5-0.5b --dtype bfloat16 --skip-torch  # GPU/TPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import tunix_contender  # noqa: E402

ENGINES = ("jax", "torch", "tunix")


def flops_per_step(config, batch: int, length: int) -> float:
    d, f, v, layers = config.hidden_size, config.intermediate_size, config.vocab_size, config.num_layers
    q, kv = config.num_heads * config.head_dim, config.num_kv_heads * config.head_dim
    matmul_params = layers * (d * q + 2 * d * kv + q * d + 3 * d * f) + d * v
    dense = 6 * matmul_params * batch * length
    attention = 12 * layers * batch * length * length * q / 2
    return float(dense + attention)


def make_batch(batch: int, length: int, vocab: int, seed: int = 0):
    """Token rows with a quarter prompt (masked) and three quarters response (trained)."""
    rng = np.random.default_rng(seed)
    seq = rng.integers(1, vocab, (batch, length + 1)).astype(np.int32)
    mask = np.zeros((batch, length), np.float32)
    mask[:, length // 4:] = 1.0
    advantages = rng.standard_normal(batch).astype(np.float32)
    old_logprobs = (-rng.random((batch, length)) * 5).astype(np.float32) * mask
    return seq[:, :-1], seq[:, 1:], mask, advantages, old_logprobs


class JaxTrainer:
    def __init__(self, ckpt, dtype: str, kind: str, batch_arrays, attention: str = "auto",
                 float32_head: bool = False):
        import jax
        import jax.numpy as jnp
        from flax import nnx

        from disrouter_jax.models import hf_io
        from disrouter_jax.training.optim import OptimConfig
        from disrouter_jax.training.rl import RLBatch, RLConfig, make_rl_step
        from disrouter_jax.training.sft import TokenBatch, make_sft_step
        from disrouter_jax.training.state import create_train_state

        self.jax = jax
        model = hf_io.from_pretrained(ckpt, dtype=getattr(jnp, dtype), param_dtype=jnp.float32,
                                      attention_impl=attention, float32_head=float32_head)
        self.config = model.config
        self.attention_impl = model.attention_impl
        optim = OptimConfig(learning_rate=1e-5, total_steps=10_000, decay="constant")
        self.state = create_train_state(model, optim, wrt=nnx.Param)
        ids, targets, mask, adv, old = batch_arrays
        if kind == "sft":
            self.step = make_sft_step(optim)
            self.batch = TokenBatch(ids, targets, mask)
        else:
            self.step = make_rl_step(optim, RLConfig(clip_eps=0.2))
            self.batch = RLBatch(ids, targets, mask, old, adv)

    def run(self, steps: int) -> float:
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        return float(self.jax.block_until_ready(metrics["loss"]))


class TorchTrainer:
    def __init__(self, ckpt, dtype: str, kind: str, batch_arrays, device: str):
        import torch
        from transformers import Qwen2ForCausalLM

        self.torch, self.kind, self.device = torch, kind, device
        self.model = Qwen2ForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype)).to(device)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-5, weight_decay=0.0)
        ids, targets, mask, adv, old = batch_arrays
        t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)  # noqa: E731
        self.ids, self.targets, self.mask = t(ids).long(), t(targets).long(), t(mask)
        self.adv, self.old = t(adv), t(old)

    def loss(self):
        torch = self.torch
        logits = self.model(input_ids=self.ids).logits.float()
        logp = torch.log_softmax(logits, -1).gather(-1, self.targets[..., None])[..., 0]
        tokens = self.mask.sum()
        if self.kind == "sft":
            return -(logp * self.mask).sum() / tokens
        ratio = torch.exp(logp - self.old)
        unclipped = ratio * self.adv[:, None]
        clipped = torch.clamp(ratio, 0.8, 1.2) * self.adv[:, None]
        return -(torch.minimum(unclipped, clipped) * self.mask).sum() / tokens

    def run(self, steps: int) -> float:
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss()
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        if self.device != "cpu":
            self.torch.cuda.synchronize()
        return float(loss.detach())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,mid", help=f"comma list of {sorted(harness.SHAPES)}")
    parser.add_argument("--kinds", default="sft,rl")
    parser.add_argument("--engines", default=",".join(ENGINES), help="comma list of jax, torch, tunix")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-torch", action="store_true", help="drop torch from --engines")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"],
                        help="auto: cuDNN flash attention on GPUs in bfloat16, else XLA einsums")
    parser.add_argument("--float32-head", action="store_true",
                        help="LM head matmul accumulates into float32 logits (default: --dtype, "
                             "upcast after, as transformers does)")
    parser.add_argument("--checkpoint-cache", default=None,
                        help="build each random checkpoint once under this directory and reuse it")
    parser.add_argument("--output", default=str(harness.RESULTS_DIR / "train_step.json"))
    parser.add_argument("--worker", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--size", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-output", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    engines = [e for e in args.engines.split(",") if e and not (e == "torch" and args.skip_torch)]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        raise ValueError(f"--engines: unknown {unknown}; known: {ENGINES}")
    if "jax" not in engines:
        engines.insert(0, "jax")  # the losses every other engine is checked against
    args.engine_list = engines
    return args


def run_worker(args) -> None:
    """One engine, one size, every kind: {kind: {seconds per step, first step's loss}}."""
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arrays = make_batch(args.batch, args.length, harness.SHAPES[args.size].vocab_size)
    ckpt = Path(args.checkpoint)
    out = {"torch_device": device, "torch_threads": threads}
    for kind in args.kinds.split(","):
        if args.worker == "jax":
            trainer = JaxTrainer(ckpt, args.dtype, kind, arrays, args.attention, float32_head=args.float32_head)
            out.update(params=trainer.config.num_params, attention=trainer.attention_impl)
            out.setdefault("flops_per_step", flops_per_step(trainer.config, args.batch, args.length))
        elif args.worker == "torch":
            trainer = TorchTrainer(ckpt, args.dtype, kind, arrays, device)
        else:
            trainer = tunix_contender.TunixTrainer(ckpt, args.dtype, kind, arrays)
        first_loss = trainer.run(1)  # compile / warm up; the loss of the untouched model
        trainer.run(1)
        seconds = harness.best_time(lambda: trainer.run(args.steps), args.repeats) / args.steps
        out[kind] = {"step_s": seconds, "first_loss": first_loss}
        del trainer
    Path(args.worker_output).write_text(json.dumps(out))


def spawn(engine: str, argv, size: str, ckpt, tmp: Path) -> dict:
    out = tmp / f"{engine}_{size}.json"
    subprocess.run([sys.executable, os.path.abspath(__file__), *argv, "--worker", engine, "--size", size,
                    "--checkpoint", str(ckpt), "--worker-output", str(out)], check=True)
    return json.loads(out.read_text())


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return {}
    engines = tunix_contender.runnable(args.engine_list)
    env = harness.environment()
    peak = harness.lookup(harness.PEAK_BF16_FLOPS, env["device_kind"]) if env["jax_backend"] != "cpu" else None
    tokens = args.batch * args.length
    others = [e for e in engines if e != "jax"]  # engines run in the order given
    rows, mismatches = [], []
    load_before = os.getloadavg()[0]
    for size in args.sizes.split(","):
        shape = harness.SHAPES[size]
        with harness.checkpoint(shape, size, args.checkpoint_cache) as ckpt, tempfile.TemporaryDirectory() as tmp:
            runs = {engine: spawn(engine, argv, size, ckpt, Path(tmp)) for engine in engines}
        ours = runs["jax"]
        for kind in args.kinds.split(","):
            t_jax = ours[kind]["step_s"]
            flops = ours["flops_per_step"]
            row = {"size": size, "kind": kind, "params": ours["params"], "attention": ours["attention"],
                   "float32_head": args.float32_head, "jax_step_s": t_jax, "jax_tokens_per_s": tokens / t_jax,
                   "jax_first_loss": ours[kind]["first_loss"],
                   "flops_per_step": flops, "jax_tflops_per_s": flops / t_jax / 1e12}
            if peak:
                row["mfu"] = flops / t_jax / peak
            for engine in others:
                theirs = runs[engine][kind]
                row.update({f"{engine}_step_s": theirs["step_s"], f"{engine}_tokens_per_s": tokens / theirs["step_s"],
                            f"{engine}_first_loss": theirs["first_loss"],
                            f"speedup_vs_{engine}": theirs["step_s"] / t_jax})
                rel = abs(theirs["first_loss"] - row["jax_first_loss"]) / abs(row["jax_first_loss"])
                row[f"{engine}_loss_rel_diff"] = rel
                if rel > 1e-4:
                    mismatches.append(f"{size} {kind}: {engine}'s first loss {theirs['first_loss']:.6f} "
                                      f"vs ours {row['jax_first_loss']:.6f}")
            rows.append(row)
            print(row, file=sys.stderr)
    result = {**env, "dtype": args.dtype, "batch": args.batch, "length": args.length, "engines": engines, "others": others,
              "torch_device": runs.get("torch", {}).get("torch_device"),
              "torch_threads": runs.get("torch", {}).get("torch_threads"),
              "cpu_load_average_1min": load_before, "cpu_load_average_1min_after": os.getloadavg()[0],
              "peak_bf16_flops": peak, "rows": rows}
    print_table(result)
    harness.write_result(result, args.output)
    if mismatches:
        raise SystemExit("first-step losses differ: " + "; ".join(mismatches))
    return result


def print_table(result: dict) -> None:
    engines, others = result["engines"], result["others"]
    print(f"\n{result['device_kind']} ({result['jax_backend']}), {result['dtype']}, batch "
          f"{result['batch']} x {result['length']} tokens, engines {', '.join(engines)} (in this order, each in its own "
          f"process; torch on {result['torch_device']}, {result['torch_threads']} threads), load average "
          f"{result['cpu_load_average_1min']:.1f} before, {result['cpu_load_average_1min_after']:.1f} after")
    header = f"{'size':>13} {'kind':>4} {'attn':>5} {'params':>8} {'jax tok/s':>10}"
    for engine in others:
        header += f" {engine + ' tok/s':>11} {'vs ' + engine:>8}"
    print(header + f" {'TFLOP/s':>8} {'MFU':>6}")
    for r in result["rows"]:
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "   n/a"
        line = f"{r['size']:>13} {r['kind']:>4} {r.get('attention', '?'):>5} {r['params'] / 1e6:>7.1f}M {r['jax_tokens_per_s']:>10.0f}"
        for engine in others:
            line += f" {r[f'{engine}_tokens_per_s']:>11.0f} {r[f'speedup_vs_{engine}']:>7.2f}x"
        print(line + f" {r['jax_tflops_per_s']:>8.3f} {mfu}")


if __name__ == "__main__":
    main()
