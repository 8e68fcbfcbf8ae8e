"""Llama (3.x): no biases, RoPE unscaled or of type ``llama3``, untied head (tied in 3.2 1B/3B)."""

from __future__ import annotations

import dataclasses

from disrouter_jax.models import tensor_table as t
from disrouter_jax.models.config import HfConfigReader, ModelConfig


@dataclasses.dataclass(frozen=True)
class LlamaConfig(ModelConfig):
    family = "llama"
    architecture = "LlamaForCausalLM"
    accepts_rope_scaling = True
    hf_defaults = {"max_position_embeddings": 2048, "bos_token_id": 1, "eos_token_id": 2}
    tensor_table = (*t.EMBEDDINGS_AND_NORMS, t.Q_PROJ, t.K_PROJ, t.V_PROJ, t.O_PROJ, *t.MLP)

    @classmethod
    def _family_fields(cls, reader: HfConfigReader) -> dict:
        reader.reject_if(bool(reader.get("attention_bias", False)), "attention_bias=true")
        reader.reject_if(bool(reader.get("mlp_bias", False)), "mlp_bias=true")
        return {}

    def _family_hf_fields(self) -> dict:
        return {"attention_bias": False, "mlp_bias": False}
