"""Pieces every benchmark shares: random checkpoints, device peaks, timing, result files."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import tempfile
import time
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"

# Dense bfloat16 peak FLOP/s by substring of jax's device_kind (vendor spec sheets, no sparsity).
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H200", 989e12),
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v4", 275e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 459e12),
    ("TPU v6 lite", 918e12),
    ("TPU v6e", 918e12),
)


@dataclasses.dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    tie_word_embeddings: bool = False


TINY = ModelShape(4096, 128, 384, 2, 4, 2)
MID = ModelShape(32000, 512, 1536, 8, 8, 2)


def released_shape(hub_id: str) -> ModelShape:
    """A released checkpoint's architecture (`models.releases`; random weights: no download)."""
    from disrouter_jax.models.releases import RELEASED_CONFIGS

    hf = RELEASED_CONFIGS[hub_id]
    return ModelShape(*(hf[f.name] for f in dataclasses.fields(ModelShape)))


QWEN25_05B = released_shape("Qwen/Qwen2.5-0.5B-Instruct")
QWEN25_7B = released_shape("Qwen/Qwen2.5-7B-Instruct")
SHAPES = {"tiny": TINY, "mid": MID, "qwen2.5-0.5b": QWEN25_05B, "qwen2.5-7b": QWEN25_7B}


def random_model(shape: ModelShape, dtype: str):
    """Our model with random weights straight on the default device (no checkpoint, no PyTorch):
    for bandwidth runs on shapes too large to build through transformers in a short lease."""
    import jax.numpy as jnp
    from flax import nnx

    from disrouter_jax.models.decoder import Decoder
    from disrouter_jax.models.families import Qwen2Config

    config = Qwen2Config(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size, num_layers=shape.num_hidden_layers,
        num_heads=shape.num_attention_heads, num_kv_heads=shape.num_key_value_heads,
        head_dim=shape.hidden_size // shape.num_attention_heads,
        tie_word_embeddings=shape.tie_word_embeddings,
    )
    jdtype = getattr(jnp, dtype)
    return Decoder(config, dtype=jdtype, param_dtype=jdtype, rngs=nnx.Rngs(0))


def lookup(table, device_kind: str):
    for key, value in table:
        if key.lower() in device_kind.lower():
            return value
    return None


def build_checkpoint(shape: ModelShape, out_dir: Path, seed: int = 0) -> Path:
    """A random transformers Qwen2ForCausalLM saved as safetensors (float32)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**dataclasses.asdict(shape))).eval()
    model.save_pretrained(out_dir)
    return out_dir


@contextlib.contextmanager
def checkpoint(shape: ModelShape, name: str, cache_dir: str | None = None):
    """A random checkpoint of ``shape``: built in a temporary directory, or once under
    ``cache_dir/name`` and reused by later runs (a 0.5B-shape build takes a while)."""
    if cache_dir is None:
        with tempfile.TemporaryDirectory() as tmp:
            yield build_checkpoint(shape, Path(tmp) / "ckpt")
        return
    out = Path(cache_dir) / name
    if not (out / "config.json").is_file() or not (out / "model.safetensors").is_file():
        build_checkpoint(shape, out)
    yield out


def best_time(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def environment() -> dict:
    import jax
    import torch

    device = jax.devices()[0]
    return {
        "jax_backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "versions": {"jax": jax.__version__, "torch": torch.__version__,
                     "python": platform.python_version()},
    }


def write_result(result: dict, output: str | Path) -> Path:
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out
