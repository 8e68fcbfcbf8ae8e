"""The one decoder every family runs (Qwen2, Qwen3, Llama, Mistral), in Flax NNX.

Pre-norm decoder layers (RMSNorm, grouped-query attention with RoPE, SwiGLU MLP), tied or untied
LM head; what differs between families is read from the config's switches (``attention.py``).
Weights are stored in "math" layout with their dimensions in their names (``q_weight_dnh``:
embed x heads x head_dim); a family's tensor table maps them to and from Hugging Face tensors
(``hf_io.py``, which is also where checkpoints are read and written: the model knows no files).

dtype policy: parameters are stored in ``param_dtype``, matmuls run in ``dtype``; RMSNorm, the
attention softmax and the logits are computed in float32.

Two forward paths share every layer:
- ``model(input_ids, positions, attention_mask) -> logits``: the full sequence (training, scoring).
- ``model.extend(input_ids, positions, attention_mask, cache) -> (logits, cache)``: appends tokens to a
  KV cache (prefill a prompt, then one-token decode steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from disrouter_jax.models.attention import (Attention, attention, causal_slots_ts, causal_ts,
                                            resolve_attention_impl)
from disrouter_jax.models.config import ModelConfig
from disrouter_jax.models.kv_cache import KVCache
from disrouter_jax.models.layers import MLP, RMSNorm, param, rows_matmul, use
from disrouter_jax.sharding import ShardingContext, constrain


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, dtype, param_dtype, rngs, sharding, attention_impl):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, sharding=sharding)
        self.attention_impl = attention_impl
        self.window = cfg.sliding_window
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.attn = Attention(cfg, **kw)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, param_dtype=param_dtype)
        self.mlp = MLP(cfg, **kw)
        self.dtype = dtype

    def __call__(self, x_btd, positions_bt, keys_values, allowed_bts):
        """``keys_values(k, v) -> (k_all, v_all, kv_layout)`` supplies the keys the queries attend
        to (see ``attention``); ``allowed_bts=None``: causal over the same positions."""
        q, k, v = self.attn.project_qkv(self.input_norm(x_btd), positions_bt)
        k_all, v_all, kv_layout = keys_values(k, v)
        attn = attention(q, k_all, v_all, allowed_bts, self.dtype, self.attention_impl, kv_layout,
                         self.window)
        x_btd = x_btd + self.attn.output(attn, flat=kv_layout == "cache")
        return x_btd + self.mlp(self.post_attn_norm(x_btd))


class Decoder(nnx.Module):
    def __init__(
        self,
        config: ModelConfig,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        sharding: ShardingContext | None = None,
        attention_impl: str = "auto",
        float32_head: bool = False,
    ):
        if not isinstance(config, ModelConfig):
            raise TypeError(f"Decoder needs a family's ModelConfig, got {type(config).__name__}")
        self.attention_impl = resolve_attention_impl(attention_impl, dtype)
        self.float32_head = float32_head
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, sharding=sharding,
                  attention_impl=self.attention_impl)
        self.config = config
        self.dtype = dtype
        self.sharding = sharding
        self.embedding_vd = param(
            rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype
        )
        self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        if not config.tie_word_embeddings:
            self.lm_head_dv = param(
                rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), param_dtype
            )

    def _adopt(self, *arrays):
        """Eager inputs placed on the Explicit mesh the model was loaded with, moved onto the
        model's Auto twin (``sharding.auto_mesh``): JAX refuses to mix the two in one op."""
        if self.sharding is None:
            return arrays
        return tuple(self.sharding.adopt(x) for x in arrays)

    def embed(self, input_ids_bt):
        # The table stays split over vocab (each tensor shard looks up its own rows; the partitioner
        # sums them) and is whole over the batch's axes, so the rows come out batch-split.
        table_vd = use(self.embedding_vd, self.embedding_vd[...].dtype, self.sharding)
        x = jnp.take(table_vd, input_ids_bt, axis=0).astype(self.dtype)
        return constrain(x, ("batch", "length", "embed"), self.sharding)

    def tied_head_dv(self):
        """A tied model's LM head as a ``[D, V]`` matrix (a copy of the transposed embedding
        table) to pass as ``head_dv``; whether that pays is the caller's platform choice
        (``generation.engine.decode_head``). The optimisation barrier keeps XLA from folding the
        transpose back into the head's matmul."""
        if not self.config.tie_word_embeddings:
            raise ValueError("tied_head_dv: the model has an untied lm_head_dv already [D, V]")
        return jax.lax.optimization_barrier(use(self.embedding_vd, self.dtype, self.sharding).T)

    def logits(self, x_btd, head_dv=None):
        """Final norm + LM head; float32 logits. ``head_dv``: a ``[D, V]`` head (``tied_head_dv``).

        By default the head's matmul outputs ``dtype`` and is upcast afterwards, as transformers
        does. In bfloat16 training that keeps the head's two backward matmuls in bfloat16 (the LM
        head is a quarter of a 0.5B model's FLOPs): SFT-step MFU on an H200 rose from 36 % to 44 %
        (benchmarks/README.md). ``float32_head=True`` accumulates the head's output in float32.

        A tied head keeps its ``[V, D]`` einsum: as a row matmul (faster on CPU, see
        ``rows_matmul``) the embedding's gradient sums in another order, and the toy pool's
        pre-training would turn those last bits into different agents.
        """
        x_btd = self.final_norm(x_btd)
        out_dtype = jnp.float32 if self.float32_head else self.dtype
        if head_dv is not None:
            logits = jnp.einsum("btd,dv->btv", x_btd, head_dv, preferred_element_type=out_dtype)
        elif self.config.tie_word_embeddings:
            head = use(self.embedding_vd, self.dtype, self.sharding)
            logits = jnp.einsum("btd,vd->btv", x_btd, head, preferred_element_type=out_dtype)
        else:
            logits = rows_matmul(x_btd, use(self.lm_head_dv, self.dtype, self.sharding), out_dtype)
        logits = logits.astype(jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"), self.sharding)

    def hidden_states(self, input_ids_bt, positions_bt=None, attention_mask_bt=None):
        """Decoder output before the final norm, ``[B, T, D]``."""
        input_ids_bt, positions_bt, attention_mask_bt = self._adopt(input_ids_bt, positions_bt, attention_mask_bt)
        b, t = input_ids_bt.shape
        if attention_mask_bt is None:
            allowed_bts = None  # plain causal: lets the fused kernel take it
            if positions_bt is None:
                positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        else:
            attention_mask_bt = attention_mask_bt.astype(jnp.bool_)
            if positions_bt is None:
                positions_bt = default_positions(attention_mask_bt)
            allowed_bts = causal_ts(t, self.config.sliding_window)[None] & attention_mask_bt[:, None, :]
        x = self.embed(input_ids_bt)
        for layer in self.layers:
            x = layer(x, positions_bt, lambda k, v: (k, v, "bskh"), allowed_bts)
        return x

    def __call__(self, input_ids_bt, positions_bt=None, attention_mask_bt=None):
        return self.logits(self.hidden_states(input_ids_bt, positions_bt, attention_mask_bt))

    def extend(self, input_ids_bt, positions_bt, attention_mask_bt, cache: KVCache, head_dv=None):
        """Appends ``T`` tokens to the cache and returns their logits and the new cache
        (``head_dv``: see ``tied_head_dv``)."""
        input_ids_bt, positions_bt, attention_mask_bt = self._adopt(input_ids_bt, positions_bt, attention_mask_bt)
        b, t = input_ids_bt.shape
        start = cache.end
        valid_bs = jax.lax.dynamic_update_slice(
            cache.valid_bs, attention_mask_bt.astype(jnp.bool_), (0, start)
        )
        slots_s = jnp.arange(cache.max_length)
        allowed_ts = causal_slots_ts(start + jnp.arange(t), slots_s, self.config.sliding_window)
        allowed_bts = allowed_ts[None] & valid_bs[:, None, :]
        # Each layer's buffers are updated in place (the decode loop donates the cache).
        kv = {"k": list(cache.k_bkhs), "v": list(cache.v_bksh)}
        x = self.embed(input_ids_bt)
        for i, layer in enumerate(self.layers):

            def keys_values(k_btkh, v_btkh, i=i):
                new_k_bkht = jnp.transpose(k_btkh.astype(kv["k"][i].dtype), (0, 2, 3, 1))
                new_v_bkth = jnp.transpose(v_btkh.astype(kv["v"][i].dtype), (0, 2, 1, 3))
                kv["k"][i] = jax.lax.dynamic_update_slice(kv["k"][i], new_k_bkht, (0, 0, 0, start))
                kv["v"][i] = jax.lax.dynamic_update_slice(kv["v"][i], new_v_bkth, (0, 0, start, 0))
                return kv["k"][i].astype(self.dtype), kv["v"][i].astype(self.dtype), "cache"

            x = layer(x, positions_bt, keys_values, allowed_bts)
        new_cache = KVCache(tuple(kv["k"]), tuple(kv["v"]), valid_bs, start + t)
        return self.logits(x, head_dv), new_cache


def default_positions(attention_mask_bt):
    """Position ids for a left-padded batch: 0 at each row's first real token."""
    mask = attention_mask_bt.astype(jnp.int32)
    return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
