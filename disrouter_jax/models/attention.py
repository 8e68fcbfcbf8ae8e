"""Grouped-query attention: the projections (with each family's switches) and the attention itself.

Switches read from the config: ``attention_bias`` (biases on q/k/v: Qwen2), ``qk_norm`` (RMSNorm
over head_dim on queries and keys before RoPE: Qwen3), ``rope_scaling`` (Llama 3), and
``sliding_window`` (Mistral: a query sees itself and the ``window - 1`` slots before it). The
softmax runs in float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from disrouter_jax.models.layers import param, rms_normalize, rope_inv_freq, rotary_embedding, use
from disrouter_jax.sharding import constrain

_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

ATTENTION_IMPLS = ("auto", "xla", "cudnn")


def resolve_attention_impl(impl: str, dtype) -> str:
    """``auto``: cuDNN flash attention on GPUs in 16-bit precision, else our XLA einsums."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}, got {impl!r}")
    if impl != "auto":
        return impl
    half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
    return "cudnn" if half and jax.default_backend() == "gpu" else "xla"


def causal_ts(t: int, window: int | None = None):
    """``[T, T]`` causal mask over T consecutive positions, banded to ``window`` if given."""
    allowed = jnp.tril(jnp.ones((t, t), jnp.bool_))
    if window is not None:
        allowed = allowed & jnp.triu(jnp.ones((t, t), jnp.bool_), -(window - 1))
    return allowed


def causal_slots_ts(query_slots_t, slots_s, window: int | None = None):
    """``[T, S]`` causal mask of queries at ``query_slots_t`` over cache slots ``slots_s``. Slots
    stand for positions: prompts are left-padded, so within a row they differ as positions do."""
    allowed = slots_s[None, :] <= query_slots_t[:, None]
    if window is not None:
        allowed = allowed & (slots_s[None, :] > query_slots_t[:, None] - window)
    return allowed


KV_LAYOUTS = ("bskh", "cache")


def attention(q_btnh, k, v, allowed_bts, dtype, impl: str = "xla", kv_layout: str = "bskh",
              window: int | None = None):
    """Grouped-query attention: each of the K kv heads serves G = N/K query heads.

    ``k``/``v`` are both ``[B, S, K, H]`` (``kv_layout="bskh"``, fresh projections) or a
    ``KVCache`` layer's keys ``[B, K, H, S]`` and values ``[B, K, S, H]`` (``"cache"``).
    ``allowed_bts=None`` means plain causal attention over the same T positions (training on
    unpadded or right-padded rows; ``window``: banded); only that case without a window can take
    the fused cuDNN kernel, which skips the masked half instead of materialising a [B, N, T, T]
    score tensor.
    """
    if kv_layout not in KV_LAYOUTS:
        raise ValueError(f"kv_layout must be one of {KV_LAYOUTS}, got {kv_layout!r}")
    if allowed_bts is None:
        # A window takes the einsums: cuDNN's local_window_size is not yet checked on a GPU here.
        if impl == "cudnn" and kv_layout == "bskh" and window is None:
            return jax.nn.dot_product_attention(
                q_btnh, k, v, is_causal=True, implementation="cudnn"
            ).astype(dtype)
        allowed_bts = causal_ts(q_btnh.shape[1], window)[None]
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
    if jax.default_backend() == "cpu" and q.dtype != jnp.float32:
        # XLA:CPU runs some 16-bit dots with a float32 result on its DotThunk, which has no
        # BF16 x BF16 = F32 kernel (a bfloat16 decode step of 16 rows failed to run). Upcast
        # first: bfloat16 products are exact in float32, so the scores are the same sums.
        q, k = q.astype(jnp.float32), k.astype(jnp.float32)
    scores = jnp.einsum(
        f"{q_spec},{k_layout}->{scores_spec}", q, k, preferred_element_type=jnp.float32
    ) * (h**-0.5)
    scores = jnp.where(allowed, scores, _MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum(f"{scores_spec},{v_layout}->{q_spec}", probs, v)
    return out.reshape(b, t, n, h)


class Attention(nnx.Module):
    """The q/k/v/o projections of one layer; parameters exist only where the family has them."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs, sharding):
        d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_weight_dnh = param(rngs, (d, n, h), ("embed", "heads", "head_dim"), param_dtype)
        if bias:
            self.q_bias_nh = param(rngs, (n, h), ("heads", "head_dim"), param_dtype, init="zeros")
        self.k_weight_dkh = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        if bias:
            self.k_bias_kh = param(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        self.v_weight_dkh = param(rngs, (d, k, h), ("embed", "kv_heads", "head_dim"), param_dtype)
        if bias:
            self.v_bias_kh = param(rngs, (k, h), ("kv_heads", "head_dim"), param_dtype, init="zeros")
        self.o_weight_nhd = param(rngs, (n, h, d), ("heads", "head_dim", "embed"), param_dtype)
        if cfg.qk_norm:
            self.q_norm_scale_h = param(None, (h,), ("norm",), param_dtype, init="ones")
            self.k_norm_scale_h = param(None, (h,), ("norm",), param_dtype, init="ones")
        self.attention_bias = bias
        self.qk_norm = cfg.qk_norm
        self.rms_norm_eps = cfg.rms_norm_eps
        self.head_dim = h
        self.rope_theta = cfg.rope_theta
        self.rope_scaling = cfg.rope_scaling
        self.dtype = dtype
        self.sharding = sharding

    def project_qkv(self, x_btd, positions_bt):
        w = lambda p: use(p, self.dtype, self.sharding)  # noqa: E731
        q = jnp.einsum("btd,dnh->btnh", x_btd, w(self.q_weight_dnh))
        k = jnp.einsum("btd,dkh->btkh", x_btd, w(self.k_weight_dkh))
        v = jnp.einsum("btd,dkh->btkh", x_btd, w(self.v_weight_dkh))
        if self.attention_bias:
            q, k, v = q + w(self.q_bias_nh), k + w(self.k_bias_kh), v + w(self.v_bias_kh)
        if self.qk_norm:
            q = rms_normalize(q, self.q_norm_scale_h[...], self.rms_norm_eps)
            k = rms_normalize(k, self.k_norm_scale_h[...], self.rms_norm_eps)
        q = constrain(q, ("batch", "length", "heads", "head_dim"), self.sharding)
        k = constrain(k, ("batch", "length", "kv_heads", "head_dim"), self.sharding)
        v = constrain(v, ("batch", "length", "kv_heads", "head_dim"), self.sharding)
        inv_freq_h = rope_inv_freq(self.head_dim, self.rope_theta, self.rope_scaling)
        return rotary_embedding(q, positions_bt, inv_freq_h), rotary_embedding(k, positions_bt, inv_freq_h), v

    def output(self, attn_btnh, flat: bool = False):
        """``flat=True`` (the cached decode path): one 2-D matmul over the flattened (heads,
        head_dim) axis. As a head-shaped einsum XLA:CPU chose to transpose the ``[N, H, D]`` weight
        on every decode step (1 MB per layer) rather than the few-row activation. The full-sequence
        path keeps the einsum: the other form sums in another order, and the toy pool's
        pre-training amplifies that rounding into different agents (toy-xl held-out 0.79 -> 0.67).
        """
        w = use(self.o_weight_nhd, self.dtype, self.sharding)
        if flat:
            b, t = attn_btnh.shape[:2]
            out = attn_btnh.reshape(b, t, -1) @ w.reshape(-1, w.shape[-1])
        else:
            out = jnp.einsum("btnh,nhd->btd", attn_btnh, w)
        return constrain(out, ("batch", "length", "embed"), self.sharding)
