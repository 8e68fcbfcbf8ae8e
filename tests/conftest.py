"""Session-wide fixtures: tiny Hugging Face checkpoints built offline, the shared data folder.

Eight host devices are requested before JAX starts so mesh tests run in the same session; tests
that do not use a mesh see device 0 only.
"""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
    ).strip()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from disrouter_jax import runtime  # noqa: E402

# Before JAX starts its threads: the suite is hundreds of small XLA:CPU programs (see runtime.py).
runtime.keep_freed_memory()

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"

# Named tiny shapes; tests ask for them by name so each checkpoint is built once per session.
TINY_SHAPES = {
    # 4 query heads over 2 KV heads, untied head.
    "gqa2": dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    # Qwen2.5-0.5B-like: tied embeddings, 7:1 GQA (14 heads over 2 KV heads in the real model).
    "tied_gqa7": dict(vocab_size=101, hidden_size=56, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=7, num_key_value_heads=1, tie_word_embeddings=True),
    # Plain multi-head attention, legacy top-level rope_theta.
    "mha": dict(vocab_size=64, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=False,
                rope_theta=50000.0),
}


def build_hf_checkpoint(out_dir: Path, seed: int = 0, **shape) -> Path:
    """A random transformers Qwen2ForCausalLM saved as real safetensors (non-zero biases/norms)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(**shape)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "bias" in name or "norm" in name:
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(name) -> Path`` of a HF checkpoint directory, built once per session."""
    built: dict[str, Path] = {}

    def get(name: str = "gqa2") -> Path:
        if name not in built:
            out = tmp_path_factory.mktemp(f"ckpt_{name}")
            built[name] = build_hf_checkpoint(out, **TINY_SHAPES[name])
        return built[name]

    return get


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real benchmark rows not found at {SHARED_DATA} (only present in CI/dev checkouts)")
    return SHARED_DATA
