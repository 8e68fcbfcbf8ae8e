"""Train-step throughput: our jitted SFT and RL steps vs a PyTorch reference step.

The reference is transformers' Qwen2ForCausalLM + torch.optim.AdamW doing the same work: forward,
masked cross-entropy (SFT) or the clipped policy-gradient loss (RL), backward, global-norm
clipping, AdamW update. Both sides train the same random checkpoint on the same batch; tokens/s
counts every position of the [B, T] batch. Compilation / warm-up steps are excluded.

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
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402


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

    def run(self, steps: int):
        for _ in range(steps):
            self.state, metrics = self.step(self.state, self.batch)
        self.jax.block_until_ready(metrics["loss"])


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

    def run(self, steps: int):
        for _ in range(steps):
            self.opt.zero_grad(set_to_none=True)
            loss = self.loss()
            loss.backward()
            self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
        if self.device != "cpu":
            self.torch.cuda.synchronize()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="tiny,mid", help=f"comma list of {sorted(harness.SHAPES)}")
    parser.add_argument("--kinds", default="sft,rl")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--skip-torch", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--attention", default="auto", choices=["auto", "xla", "cudnn"],
                        help="auto: cuDNN flash attention on GPUs in bfloat16, else XLA einsums")
    parser.add_argument("--float32-head", action="store_true",
                        help="LM head matmul accumulates into float32 logits (default: --dtype, "
                             "upcast after, as transformers does)")
    parser.add_argument("--checkpoint-cache", default=None,
                        help="build each random checkpoint once under this directory and reuse it")
    parser.add_argument("--output", default=str(harness.RESULTS_DIR / "train_step.json"))
    args = parser.parse_args(argv)

    import jax
    import torch

    threads = args.threads or len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    torch_device = "cuda" if torch.cuda.is_available() else "cpu"
    env = harness.environment()
    peak = harness.lookup(harness.PEAK_BF16_FLOPS, env["device_kind"]) if env["jax_backend"] != "cpu" else None
    tokens = args.batch * args.length
    rows = []
    for size in args.sizes.split(","):
        shape = harness.SHAPES[size]
        with harness.checkpoint(shape, size, args.checkpoint_cache) as ckpt:
            arrays = make_batch(args.batch, args.length, shape.vocab_size)
            for kind in args.kinds.split(","):
                ours = JaxTrainer(ckpt, args.dtype, kind, arrays, args.attention,
                                  float32_head=args.float32_head)
                ours.run(2)  # compile + one warm step
                t_jax = harness.best_time(lambda: ours.run(args.steps), args.repeats) / args.steps
                flops = flops_per_step(ours.config, args.batch, args.length)
                row = {"size": size, "kind": kind, "params": ours.config.num_params,
                       "attention": ours.attention_impl, "float32_head": args.float32_head,
                       "jax_step_s": t_jax, "jax_tokens_per_s": tokens / t_jax,
                       "flops_per_step": flops, "jax_tflops_per_s": flops / t_jax / 1e12}
                if peak:
                    row["mfu"] = flops / t_jax / peak
                del ours
                if not args.skip_torch:
                    theirs = TorchTrainer(ckpt, args.dtype, kind, arrays, torch_device)
                    theirs.run(1)
                    t_torch = harness.best_time(lambda: theirs.run(args.steps), args.repeats) / args.steps
                    row.update(torch_step_s=t_torch, torch_tokens_per_s=tokens / t_torch,
                               speedup_vs_torch=t_torch / t_jax)
                    del theirs
                rows.append(row)
                print(row, file=sys.stderr)
    result = {**env, "dtype": args.dtype, "batch": args.batch, "length": args.length,
              "torch_device": None if args.skip_torch else torch_device, "torch_threads": threads,
              "peak_bf16_flops": peak, "rows": rows}
    print_table(result)
    harness.write_result(result, args.output)
    return result


def print_table(result: dict) -> None:
    print(f"\n{result['device_kind']} ({result['jax_backend']}), {result['dtype']}, batch "
          f"{result['batch']} x {result['length']} tokens, torch on {result['torch_device']} "
          f"({result['torch_threads']} threads)")
    print(f"{'size':>13} {'kind':>4} {'attn':>5} {'params':>8} {'jax tok/s':>10} {'torch tok/s':>11} "
          f"{'speedup':>7} {'TFLOP/s':>8} {'MFU':>6}")
    for r in result["rows"]:
        mfu = f"{100 * r['mfu']:5.1f}%" if "mfu" in r else "   n/a"
        print(f"{r['size']:>13} {r['kind']:>4} {r.get('attention', '?'):>5} {r['params'] / 1e6:>7.1f}M {r['jax_tokens_per_s']:>10.0f} "
              f"{r.get('torch_tokens_per_s', float('nan')):>11.0f} "
              f"{r.get('speedup_vs_torch', float('nan')):>6.2f}x {r['jax_tflops_per_s']:>8.3f} {mfu}")


if __name__ == "__main__":
    main()
