"""Mistral: no biases, unscaled RoPE, sliding-window attention on every layer where config.json
sets ``sliding_window`` (absent: transformers' 4096; null: full attention)."""

from __future__ import annotations

import dataclasses

from disrouter_jax.models import tensor_table as t
from disrouter_jax.models.config import HfConfigReader, ModelConfig


@dataclasses.dataclass(frozen=True)
class MistralConfig(ModelConfig):
    family = "mistral"
    architecture = "MistralForCausalLM"
    accepts_sliding_window = True
    hf_defaults = {"max_position_embeddings": 4096 * 32, "bos_token_id": 1, "eos_token_id": 2,
                   "sliding_window": 4096}
    tensor_table = (*t.EMBEDDINGS_AND_NORMS, t.Q_PROJ, t.K_PROJ, t.V_PROJ, t.O_PROJ, *t.MLP)

    @classmethod
    def _family_fields(cls, reader: HfConfigReader) -> dict:
        # transformers' Mistral applies sliding_window to every layer and only warns about
        # layer_types; alternating layers are Ministral's, which we do not claim to compute.
        reader.reject_if(len(set(reader.get("layer_types") or [])) > 1,
                         "alternating attention layers (layer_types; Ministral)")
        window = reader.field(cls, "sliding_window")
        return {"sliding_window": None if window is None else int(window)}

    def _family_hf_fields(self) -> dict:
        return {"sliding_window": self.sliding_window}
