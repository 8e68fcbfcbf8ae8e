"""Qwen2 / Qwen2.5 decoder in Flax NNX.

Grouped-query attention with bias on q/k/v only, rotary embeddings, RMSNorm, SwiGLU MLP, tied or
untied LM head. Weights are stored in "math" layout with their dimensions in their names
(``q_weight_dnh``: embed x heads x head_dim); ``hf_io.py`` maps them to and from Hugging Face tensors.

dtype policy: parameters are stored in ``param_dtype``, matmuls run in ``dtype``; RMSNorm, the
attention softmax and the logits are computed in float32.

Two forward paths share every layer:
- ``model(input_ids, positions, attention_mask) -> logits``: the full sequence (training, scoring).
- ``model.extend(input_ids, positions, attention_mask, cache) -> (logits, cache)``: appends tokens to a
  KV cache (prefill a prompt, then one-token decode steps).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from disrouter_jax import runtime
from disrouter_jax.models.config import Qwen2Config
from disrouter_jax.sharding import ShardingContext, constrain

__all__ = ["Qwen2Config", "Qwen2", "KVCache", "KEY_CACHE_AXES", "VALUE_CACHE_AXES", "init_cache", "from_pretrained",
           "save_pretrained"]

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal") -> nnx.Param:
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = jnp.zeros(shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class KVCache:
    """Keys/values of every layer for ``S`` slots; ``end`` is the next slot to write.

    Per layer, keys ``[B, K, H, S]`` and values ``[B, K, S, H]``: kv heads first, so the decode
    step's attention dots read the cache where it lies with (batch, kv head) as their batch
    dimensions, and each as its dot consumes it: the scores contract ``H`` against keys ``[H, S]``,
    the output contracts ``S`` against values ``[S, H]``. (With keys ``[B, K, S, H]`` too, mid
    shape at batch 16 on CPU, alternating in one process: 1,295 vs 1,402 tokens/s with XLA's dots,
    1,462 vs 1,539 with YNNPACK's; a stacked ``[L, B, S, K, H]`` cache cost a transpose and a copy
    of every layer's keys and values per step.) All sequences of a batch share the write index (prompts are
    left-padded), so one ``dynamic_update_slice`` per layer appends a token for the whole batch.
    ``valid_bs`` marks the slots that hold real tokens; padding slots are never attended to.
    """

    k_bkhs: tuple[jax.Array, ...]
    v_bksh: tuple[jax.Array, ...]
    valid_bs: jax.Array
    end: jax.Array

    @property
    def max_length(self) -> int:
        return self.v_bksh[0].shape[2]


KEY_CACHE_AXES = ("batch", "kv_heads", "head_dim", "length")
VALUE_CACHE_AXES = ("batch", "kv_heads", "length", "head_dim")


def init_cache(
    config: Qwen2Config,
    batch_size: int,
    max_length: int,
    dtype=jnp.float32,
    sharding: ShardingContext | None = None,
) -> KVCache:
    k, h = config.num_kv_heads, config.head_dim
    zeros = lambda shape, axes: tuple(  # noqa: E731
        constrain(jnp.zeros(shape, dtype), axes, sharding) for _ in range(config.num_layers)
    )
    keys = zeros((batch_size, k, h, max_length), KEY_CACHE_AXES)
    values = zeros((batch_size, k, max_length, h), VALUE_CACHE_AXES)
    valid = constrain(jnp.zeros((batch_size, max_length), jnp.bool_), ("batch", "length"), sharding)
    return KVCache(keys, values, valid, jnp.zeros((), jnp.int32))


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.scale_d = _param(None, (dim,), ("norm",), param_dtype, init="ones")
        self.eps = eps

    def __call__(self, x):
        # Same rounding as transformers: normalise in float32, cast back, then scale.
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale_d[...].astype(x.dtype) * x32.astype(x.dtype)


def rotary_embedding(x_btnh, positions_bt, theta: float):
    """Half-split rotary embedding (``rotate_half`` convention of the HF checkpoints)."""
    head_dim = x_btnh.shape[-1]
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq
    angles_bth = jnp.concatenate([angles_bth, angles_bth], axis=-1)
    cos = jnp.cos(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
    sin = jnp.sin(angles_bth)[:, :, None, :].astype(x_btnh.dtype)
    x1, x2 = jnp.split(x_btnh, 2, axis=-1)
    rotated = jnp.concatenate([-x2, x1], axis=-1)
    return x_btnh * cos + rotated * sin


def rows_matmul(x, w_df, out_dtype=None):
    """``x [..., D] @ w_df [D, F] -> [..., F]`` as one 2-D matmul over the flattened leading axes.

    Written as ``[B, T, D] @ [D, F]``, the weight gradient contracts two axes and XLA:CPU feeds it
    a transposed copy of the activation gradient (a strided write as large as the activation, per
    matmul, per step); over flattened rows every backward dot reads its operands where they lie.
    Same sums in the same order, so the gradients are bit-identical. Mid-shape SFT step on CPU:
    668 -> 894 tokens/s for the MLP and untied LM head (benchmarks/README.md). The attention
    projections keep their head-shaped einsums: there the flat form sums in another order.
    """
    lead = x.shape[:-1]
    out = jnp.matmul(x.reshape(-1, x.shape[-1]), w_df, preferred_element_type=out_dtype)
    return out.reshape(*lead, w_df.shape[-1])


ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def resolve_attention_impl(impl: str, dtype) -> str:
    """``auto``: cuDNN flash attention on GPUs in 16-bit precision, else our XLA einsums."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


KV_LAYOUTS = ("bskh", "cache")


def attention(q_btnh, k, v, allowed_bts, dtype, impl: str = "xla", kv_layout: str = "bskh"):
    """Grouped-query attention: each of the K kv heads serves G = N/K query heads.

    ``k``/``v`` are both ``[B, S, K, H]`` (``kv_layout="bskh"``, fresh projections) or a
    ``KVCache`` layer's keys ``[B, K, H, S]`` and values ``[B, K, S, H]`` (``"cache"``).
    ``allowed_bts=None`` means plain causal attention over the same T positions (training on
    unpadded or right-padded rows); only that case can take the fused cuDNN kernel, which skips the
    masked half instead of materialising a [B, N, T, T] score tensor.
    """
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    if allowed_bts is None:
        if impl == "cudnn" and kv_layout == "bskh":
            return jax.nn.dot_product_attention(
                q_btnh, k, v, is_causal=True, implementation="cudnn"
            ).astype(dtype)
        t = q_btnh.shape[1]
        allowed_bts = jnp.tril(jnp.ones((t, t), jnp.bool_))[None]
    b, t, n, h = q_btnh.shape
    k_layout, v_layout = ("bskh", "bskh") if kv_layout == "bskh" else ("bkhs", "bksh")
    k_heads = k.shape[k_layout.index("k")]
    groups = n // k_heads
    if t == 1 and kv_layout == "cache":
        # A decode step: without the length-1 query axis the dots are plain batched [G, H] x [H, S]
        # and [G, S] x [S, H] products over (batch, kv head); with it XLA:CPU computed the scores
        # transposed and copied them back. Mid shape, eight layers at batch 16, attention alone:
        # 2.8 -> 2.2 ms per step with XLA's dots, 2.4 -> 1.3 ms with YNNPACK's.
        q_spec, scores_spec = "bkgh", "bkgs"
        q = q_btnh.reshape(b, k_heads, groups, h)
        allowed = allowed_bts[:, None, :, :]
    else:
        q_spec, scores_spec = "btkgh", "bkgts"
        q = q_btnh.reshape(b, t, k_heads, groups, h)
        allowed = allowed_bts[:, None, None, :, :]
    scores = jnp.einsum(
        f"{q_spec},{k_layout}->{scores_spec}", q, k, preferred_element_type=jnp.float32
    ) * (h**-0.5)
    scores = jnp.where(allowed, scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum(f"{scores_spec},{v_layout}->{q_spec}", probs, v)
    return out.reshape(b, t, n, h)


class Attention(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, dtype, param_dtype, rngs, sharding):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_weight_dnh = _param(rngs, (d, n, h), ("embed", "heads", "head_dim"), param_dtype)
        self.q_bias_nh = _param(rngs, (n, h), ("heads", "head_dim"), param_dtype, init="zeros")
        self.k_weight_dkh = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.k_bias_kh = _param(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        self.v_weight_dkh = _param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        self.v_bias_kh = _param(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        self.o_weight_nhd = _param(rngs, (n, h, d), ("heads", "head_dim", "embed"), param_dtype)
        self.rope_theta = cfg.rope_theta
        self.dtype = dtype
        self.sharding = sharding

    def project_qkv(self, x_btd, positions_bt):
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        q = jnp.einsum("btd,dnh->btnh", x_btd, w(self.q_weight_dnh)) + w(self.q_bias_nh)
        k = jnp.einsum("btd,dkh->btkh", x_btd, w(self.k_weight_dkh)) + w(self.k_bias_kh)
        v = jnp.einsum("btd,dkh->btkh", x_btd, w(self.v_weight_dkh)) + w(self.v_bias_kh)
        q = constrain(q, ("batch", "length", "heads", "head_dim"), self.sharding)
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"), self.sharding)
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"), self.sharding)
        q = rotary_embedding(q, positions_bt, self.rope_theta)
        k = rotary_embedding(k, positions_bt, self.rope_theta)
        return q, k, v

    def output(self, attn_btnh, flat: bool = False):
        """``flat=True`` (the cached decode path): one 2-D matmul over the flattened (heads,
        head_dim) axis. As a head-shaped einsum XLA:CPU chose to transpose the ``[N, H, D]`` weight
        on every decode step (1 MB per layer) rather than the few-row activation. The full-sequence
        path keeps the einsum: the other form sums in another order, and the toy pool's
        pre-training amplifies that rounding into different agents (toy-xl held-out 0.79 -> 0.67).
        """
        w = self.o_weight_nhd[...].astype(self.dtype)
        if flat:
            b, t = attn_btnh.shape[:2]
            out = attn_btnh.reshape(b, t, -1) @ w.reshape(-1, w.shape[-1])
        else:
            out = jnp.einsum("btnh,nhd->btd", attn_btnh, w)
        return constrain(out, ("batch", "length", "embed"), self.sharding)


class MLP(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, dtype, param_dtype, rngs, sharding):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_weight_df = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.up_weight_df = _param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.down_weight_fd = _param(rngs, (f, d), ("mlp", "embed"), param_dtype)
        self.dtype = dtype
        self.sharding = sharding

    def __call__(self, x_btd):
        w = lambda p: p[...].astype(self.dtype)  # noqa: E731
        gate = rows_matmul(x_btd, w(self.gate_weight_df))
        up = rows_matmul(x_btd, w(self.up_weight_df))
        hidden_btf = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"), self.sharding)
        out = rows_matmul(hidden_btf, w(self.down_weight_fd))
        return constrain(out, ("batch", "length", "embed"), self.sharding)


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: Qwen2Config, *, dtype, param_dtype, rngs, sharding, attention_impl):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, sharding=sharding)
        self.attention_impl = attention_impl
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
        attn = attention(q, k_all, v_all, allowed_bts, self.dtype, self.attention_impl, kv_layout)
        x_btd = x_btd + self.attn.output(attn, flat=kv_layout == "cache")
        return x_btd + self.mlp(self.post_attn_norm(x_btd))


class Qwen2(nnx.Module):
    def __init__(
        self,
        config: Qwen2Config,
        *,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        rngs: nnx.Rngs,
        sharding: ShardingContext | None = None,
        attention_impl: str = "auto",
        float32_head: bool = False,
    ):
        self.attention_impl = resolve_attention_impl(attention_impl, dtype)
        self.float32_head = float32_head
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, sharding=sharding,
                  attention_impl=self.attention_impl)
        self.config = config
        self.dtype = dtype
        self.sharding = sharding
        self.embedding_vd = _param(
            rngs, (config.vocab_size, config.hidden_size), ("vocab", "embed"), param_dtype
        )
        self.layers = nnx.List([DecoderLayer(config, **kw) for _ in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, param_dtype=param_dtype)
        if not config.tie_word_embeddings:
            self.lm_head_dv = _param(
                rngs, (config.hidden_size, config.vocab_size), ("embed", "vocab"), param_dtype
            )

    def embed(self, input_ids_bt):
        x = jnp.take(self.embedding_vd[...], input_ids_bt, axis=0).astype(self.dtype)
        return constrain(x, ("batch", "length", "embed"), self.sharding)

    def decode_head(self):
        """The LM head as a decode loop should hold it: ``None`` (the parameters as they are) except
        for a tied head on CPU, returned as a ``[D, V]`` copy of the embedding table.

        XLA:CPU's dot emitter multiplies by the transposed ``[V, D]`` table 3-4x slower than by a
        ``[D, V]`` matrix (mid shape, batch 16: 24 vs 6 ms per call), and the head is the largest
        matmul of a decode step; one copy per generated batch pays for itself within a step. The
        optimisation barrier keeps XLA from folding the transpose back into the matmul.
        """
        if not self.config.tie_word_embeddings or not runtime.on_cpu():
            return None
        return jax.lax.optimization_barrier(self.embedding_vd[...].astype(self.dtype).T)

    def logits(self, x_btd, head_dv=None):
        """Final norm + LM head; float32 logits. ``head_dv``: the head from ``decode_head``.

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
            head = self.embedding_vd[...].astype(self.dtype)
            logits = jnp.einsum("btd,vd->btv", x_btd, head, preferred_element_type=out_dtype)
        else:
            logits = rows_matmul(x_btd, self.lm_head_dv[...].astype(self.dtype), out_dtype)
        logits = logits.astype(jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"), self.sharding)

    def hidden_states(self, input_ids_bt, positions_bt=None, attention_mask_bt=None):
        """Decoder output before the final norm, ``[B, T, D]``."""
        b, t = input_ids_bt.shape
        if attention_mask_bt is None:
            allowed_bts = None  # plain causal: lets the fused kernel take it
            if positions_bt is None:
                positions_bt = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        else:
            attention_mask_bt = attention_mask_bt.astype(jnp.bool_)
            if positions_bt is None:
                positions_bt = default_positions(attention_mask_bt)
            causal_ts = jnp.tril(jnp.ones((t, t), jnp.bool_))
            allowed_bts = causal_ts[None] & attention_mask_bt[:, None, :]
        x = self.embed(input_ids_bt)
        for layer in self.layers:
            x = layer(x, positions_bt, lambda k, v: (k, v, "bskh"), allowed_bts)
        return x

    def __call__(self, input_ids_bt, positions_bt=None, attention_mask_bt=None):
        return self.logits(self.hidden_states(input_ids_bt, positions_bt, attention_mask_bt))

    def extend(self, input_ids_bt, positions_bt, attention_mask_bt, cache: KVCache, head_dv=None):
        """Appends ``T`` tokens to the cache and returns their logits and the new cache
        (``head_dv``: see ``decode_head``)."""
        b, t = input_ids_bt.shape
        start = cache.end
        valid_bs = jax.lax.dynamic_update_slice(
            cache.valid_bs, attention_mask_bt.astype(jnp.bool_), (0, start)
        )
        slots_s = jnp.arange(cache.max_length)
        causal_ts = slots_s[None, :] <= (start + jnp.arange(t))[:, None]
        allowed_bts = causal_ts[None] & valid_bs[:, None, :]
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


def from_pretrained(path, **kwargs) -> Qwen2:
    from disrouter_jax.models import hf_io

    return hf_io.from_pretrained(path, **kwargs)


def save_pretrained(model: Qwen2, out_dir, **kwargs):
    from disrouter_jax.models import hf_io

    return hf_io.save_pretrained(model, out_dir, **kwargs)
