"""Qwen3 (dense): RMSNorm over head_dim on queries and keys, no biases, head_dim independent of
the hidden size (transformers' default 128), tied or untied head."""

from __future__ import annotations

import dataclasses

from disrouter_jax.models import tensor_table as t
from disrouter_jax.models.config import HfConfigReader, ModelConfig


@dataclasses.dataclass(frozen=True)
class Qwen3Config(ModelConfig):
    family = "qwen3"
    architecture = "Qwen3ForCausalLM"
    qk_norm = True
    hf_defaults = {"head_dim": 128}
    tensor_table = (*t.EMBEDDINGS_AND_NORMS, t.Q_PROJ, t.K_PROJ, t.V_PROJ, t.O_PROJ, t.Q_NORM, t.K_NORM, *t.MLP)

    @classmethod
    def _family_fields(cls, reader: HfConfigReader) -> dict:
        reader.reject_if(bool(reader.get("attention_bias", False)), "attention_bias=true")
        sliding = reader.get("use_sliding_window", False) or "sliding_attention" in (reader.get("layer_types") or [])
        reader.reject_if(sliding, "sliding-window attention (use_sliding_window / layer_types)")
        return {}

    def _family_hf_fields(self) -> dict:
        return {"attention_bias": False, "use_sliding_window": False, "sliding_window": None}
