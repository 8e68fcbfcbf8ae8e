"""Qwen2 / Qwen2.5: biases on q/k/v, tied or untied head, unscaled RoPE, full attention."""

from __future__ import annotations

import dataclasses

from disrouter_jax.models import tensor_table as t
from disrouter_jax.models.config import HfConfigReader, ModelConfig


@dataclasses.dataclass(frozen=True)
class Qwen2Config(ModelConfig):
    family = "qwen2"
    architecture = "Qwen2ForCausalLM"
    attention_bias = True
    tensor_table = (*t.EMBEDDINGS_AND_NORMS, t.Q_PROJ, t.Q_BIAS, t.K_PROJ, t.K_BIAS, t.V_PROJ, t.V_BIAS,
                    t.O_PROJ, *t.MLP)

    @classmethod
    def _family_fields(cls, reader: HfConfigReader) -> dict:
        sliding = reader.get("use_sliding_window", False) or "sliding_attention" in (reader.get("layer_types") or [])
        # Qwen2.5 releases ship it disabled; enabled, some layers would attend to a window only.
        reader.reject_if(sliding, "sliding-window attention (use_sliding_window / layer_types)")
        return {}

    def _family_hf_fields(self) -> dict:
        return {"use_sliding_window": False}
