"""config.json fields of released checkpoints the project plans for without downloading them.

The plan (``disrouter_jax/plan.py``) needs each agent's shapes. A local checkpoint gives them
itself; a Hub id normally gives its config.json over the network. These are the values of the
paper pool's released config.json files (Qwen/Qwen2.5-*-Instruct on the Hugging Face Hub), so an
offline machine can still size a run of the real pool. Only fields that shape the model are kept.
"""

from __future__ import annotations

from disrouter_jax.models import families
from disrouter_jax.models.config import ModelConfig

_QWEN25_COMMON = dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2", hidden_act="silu",
                      bos_token_id=151643, eos_token_id=151645, max_position_embeddings=32768,
                      rms_norm_eps=1e-06, rope_theta=1000000.0, use_sliding_window=False,
                      torch_dtype="bfloat16")

# Hub id -> (hidden, intermediate, layers, query heads, KV heads, vocabulary, tied embeddings).
_QWEN25_SHAPES = {
    "Qwen/Qwen2.5-0.5B-Instruct": (896, 4864, 24, 14, 2, 151936, True),
    "Qwen/Qwen2.5-1.5B-Instruct": (1536, 8960, 28, 12, 2, 151936, True),
    "Qwen/Qwen2.5-3B-Instruct": (2048, 11008, 36, 16, 2, 151936, True),
    "Qwen/Qwen2.5-7B-Instruct": (3584, 18944, 28, 28, 4, 152064, False),
    "Qwen/Qwen2.5-14B-Instruct": (5120, 13824, 48, 40, 8, 152064, False),
}

RELEASED_CONFIGS: dict[str, dict] = {
    hub_id: dict(_QWEN25_COMMON, hidden_size=d, intermediate_size=f, num_hidden_layers=layers,
                 num_attention_heads=heads, num_key_value_heads=kv, vocab_size=vocab, tie_word_embeddings=tied)
    for hub_id, (d, f, layers, heads, kv, vocab, tied) in _QWEN25_SHAPES.items()
}


def released_config(hub_id: str) -> ModelConfig | None:
    """The model config of a known release, or None."""
    hf = RELEASED_CONFIGS.get(hub_id)
    return None if hf is None else families.config_from_hf_dict(hf, source=f"{hub_id} (released config.json)")
