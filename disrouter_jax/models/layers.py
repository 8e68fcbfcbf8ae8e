"""The decoder's building blocks that are not attention: parameters, RMSNorm, RoPE, the MLP.

dtype policy: parameters are stored in ``param_dtype``, matmuls run in ``dtype``; RMSNorm is
computed in float32.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from disrouter_jax.models.config import Llama3RopeScaling
from disrouter_jax.sharding import ShardingContext, constrain, gather_weight


def param(rngs: nnx.Rngs | None, shape, axes, dtype, init: str = "normal") -> nnx.Param:
    """Only ``"normal"`` draws from ``rngs``, so adding a ones/zeros parameter to a family leaves
    every other family's random initialisation as it was."""
    if init == "normal":
        value = 0.02 * jax.random.normal(rngs.params(), shape, dtype)
    elif init == "ones":
        value = jnp.ones(shape, dtype)
    else:
        value = jnp.zeros(shape, dtype)
    return nnx.Param(value, logical_axes=tuple(axes))


def use(p: nnx.Variable, dtype, sharding: ShardingContext | None):
    """A parameter's value in ``dtype``, gathered over the batch's mesh axes for its matmul
    (``ShardingContext.gather_weight``); cast first, so a bfloat16 model moves bfloat16."""
    return gather_weight(p[...].astype(dtype), p.get_metadata()["logical_axes"], sharding)


def rms_normalize(x, scale, eps: float):
    # Same rounding as transformers: normalise in float32, cast back, then scale.
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return scale.astype(x.dtype) * x32.astype(x.dtype)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, param_dtype):
        self.scale_d = param(None, (dim,), ("norm",), param_dtype, init="ones")
        self.eps = eps

    def __call__(self, x):
        return rms_normalize(x, self.scale_d[...], self.eps)


def rope_inv_freq(head_dim: int, theta: float, scaling: Llama3RopeScaling | None = None):
    """RoPE's inverse frequencies ``[head_dim / 2]`` in float32, as transformers computes them."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    if scaling is None:
        return inv_freq
    # transformers' _compute_llama3_parameters, term for term.
    context = scaling.original_max_position_embeddings
    low_freq_wavelen = context / scaling.low_freq_factor
    high_freq_wavelen = context / scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = jnp.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
    smooth = (context / wavelen - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < high_freq_wavelen) & ~(wavelen > low_freq_wavelen)
    return jnp.where(medium, smoothed, scaled)


def rotary_embedding(x_btnh, positions_bt, inv_freq_h):
    """Half-split rotary embedding (``rotate_half`` convention of the HF checkpoints)."""
    angles_bth = positions_bt.astype(jnp.float32)[..., None] * inv_freq_h
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


class MLP(nnx.Module):
    """SwiGLU: ``down(silu(gate(x)) * up(x))``, no biases (every supported family)."""

    def __init__(self, cfg, *, dtype, param_dtype, rngs, sharding: ShardingContext | None):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.gate_weight_df = param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.up_weight_df = param(rngs, (d, f), ("embed", "mlp"), param_dtype)
        self.down_weight_fd = param(rngs, (f, d), ("mlp", "embed"), param_dtype)
        self.dtype = dtype
        self.sharding = sharding

    def __call__(self, x_btd):
        w = lambda p: use(p, self.dtype, self.sharding)  # noqa: E731
        gate = rows_matmul(x_btd, w(self.gate_weight_df))
        up = rows_matmul(x_btd, w(self.up_weight_df))
        hidden_btf = constrain(jax.nn.silu(gate) * up, ("batch", "length", "mlp"), self.sharding)
        out = rows_matmul(hidden_btf, w(self.down_weight_fd))
        return constrain(out, ("batch", "length", "embed"), self.sharding)
