"""The declarative map between Hugging Face tensor names and the decoder's parameters.

A family's table is a tuple of ``TensorRule`` rows, one per HF tensor name pattern; loading and
export both read it (``hf_io``), so the two directions cannot disagree. The rows are defined
here once, by name; a family's table lists the ones its checkpoints hold, in their file order
(``models/families/``). Pure data: no files, no model.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

LAYER = "model.layers.{i}."
LM_HEAD = "lm_head.weight"


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One HF tensor <-> one model parameter.

    ``linear_in_dims``: HF stores linear weights as ``[out, in]``; ours are ``[*in, *out]`` with
    the first ``linear_in_dims`` dimensions being the input. ``None`` means the tensor keeps its
    element order (embeddings, norms, biases) and is only reshaped: to 1-D in HF unless
    ``keep_shape`` (the embedding table). ``lora``: the generic LoRA target name of this weight
    (``training/lora.py``); LoRA also accepts the HF module name (``q_proj``).
    """

    hf_name: str
    model_path: tuple[str, ...]
    linear_in_dims: int | None = None
    keep_shape: bool = False
    lora: str | None = None

    @property
    def hf_module(self) -> str:
        """The HF module the tensor belongs to (``q_proj`` for ``...self_attn.q_proj.weight``)."""
        return self.hf_name.split(".")[-2]

    def hf_shape(self, model_shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.linear_in_dims is None:
            return tuple(model_shape) if self.keep_shape else (math.prod(model_shape),)
        k = self.linear_in_dims
        return (math.prod(model_shape[k:]), math.prod(model_shape[:k]))

    def to_model(self, hf_array: np.ndarray, model_shape: tuple[int, ...]) -> np.ndarray:
        if self.linear_in_dims is not None:
            hf_array = hf_array.T
        return hf_array.reshape(model_shape)

    def to_hf(self, model_array: np.ndarray) -> np.ndarray:
        hf_shape = self.hf_shape(model_array.shape)
        if self.linear_in_dims is None:
            return model_array.reshape(hf_shape)
        return model_array.reshape(hf_shape[::-1]).T


def _layer(hf_suffix: str, *model_path: str, linear_in_dims: int | None = None, lora: str | None = None):
    return TensorRule(LAYER + hf_suffix, ("layers", "{i}", *model_path), linear_in_dims, lora=lora)


# The rows a family's table is written with (``models/families/``), named by what they hold.
EMBEDDING = TensorRule("model.embed_tokens.weight", ("embedding_vd",), keep_shape=True)
FINAL_NORM = TensorRule("model.norm.weight", ("final_norm", "scale_d"))
HEAD = TensorRule(LM_HEAD, ("lm_head_dv",), linear_in_dims=1)  # left out when tied (expand_table)
INPUT_NORM = _layer("input_layernorm.weight", "input_norm", "scale_d")
POST_ATTN_NORM = _layer("post_attention_layernorm.weight", "post_attn_norm", "scale_d")
Q_PROJ = _layer("self_attn.q_proj.weight", "attn", "q_weight_dnh", linear_in_dims=1, lora="q")
K_PROJ = _layer("self_attn.k_proj.weight", "attn", "k_weight_dkh", linear_in_dims=1, lora="k")
V_PROJ = _layer("self_attn.v_proj.weight", "attn", "v_weight_dkh", linear_in_dims=1, lora="v")
O_PROJ = _layer("self_attn.o_proj.weight", "attn", "o_weight_nhd", linear_in_dims=2, lora="o")
# ``ModelConfig.attention_bias``.
Q_BIAS = _layer("self_attn.q_proj.bias", "attn", "q_bias_nh")
K_BIAS = _layer("self_attn.k_proj.bias", "attn", "k_bias_kh")
V_BIAS = _layer("self_attn.v_proj.bias", "attn", "v_bias_kh")
# ``ModelConfig.qk_norm``: one [head_dim] scale shared by all heads.
Q_NORM = _layer("self_attn.q_norm.weight", "attn", "q_norm_scale_h")
K_NORM = _layer("self_attn.k_norm.weight", "attn", "k_norm_scale_h")
MLP = (
    _layer("mlp.gate_proj.weight", "mlp", "gate_weight_df", linear_in_dims=1, lora="gate"),
    _layer("mlp.up_proj.weight", "mlp", "up_weight_df", linear_in_dims=1, lora="up"),
    _layer("mlp.down_proj.weight", "mlp", "down_weight_fd", linear_in_dims=1, lora="down"),
)
# Shared by every family: what precedes the attention projections in the file order.
EMBEDDINGS_AND_NORMS = (EMBEDDING, FINAL_NORM, HEAD, INPUT_NORM, POST_ATTN_NORM)


def expand_table(table: tuple[TensorRule, ...], config) -> dict[str, tuple[TensorRule, tuple]]:
    """HF name -> (rule, concrete model path) for every tensor this config has."""
    out = {}
    for rule in table:
        if rule.hf_name == LM_HEAD and config.tie_word_embeddings:
            continue
        layers = range(config.num_layers) if "{i}" in rule.hf_name else [None]
        for i in layers:
            name = rule.hf_name.format(i=i)
            path = tuple(i if part == "{i}" else part for part in rule.model_path)
            out[name] = (rule, path)
    return out
