"""LoRA for the decoder of any family without touching the model code.

Every targeted weight ``W`` (an einsum weight such as ``q_weight_dnh [D, N, H]`` or
``o_weight_nhd [N, H, D]``) gets an adapter pair ``A: [in, r]``, ``B: [r, out]`` where ``in`` is the
product of the input dimensions and ``out`` the product of the output dimensions. The forward runs
the unchanged ``Decoder`` code on a transient copy of the base model whose targeted weights are

    W_eff = W + (alpha / r) * reshape(A @ B, W.shape)

so ``LoRAModel`` computes exactly what the merged model computes, and :func:`merge_lora` returns that
merged ``Decoder`` for export with ``hf_io.save_pretrained``.

Targets are named per family by its tensor table (``TensorRule.lora``): each adaptable weight by
its HF module name (``q_proj``, as PEFT's ``target_modules``) or its generic name (``q``); every
supported family today has the same seven (q, k, v, o, gate, up, down). Adapters are ``LoRAParam`` variables: build the
optimizer with ``wrt=LoRAParam`` so that only they are trained and kept in the optimizer state; the
base weights stay ``nnx.Param`` and are never differentiated.

Cost: materialising ``W_eff`` costs one transient weight-sized buffer per targeted matrix in the
forward (and one gradient-sized buffer in the backward) instead of the ``x @ A @ B`` side path; XLA
frees them layer by layer. For generation, merge once (:func:`merge_lora`) instead of calling the
LoRA model at every decode step.

``B`` starts at zero, so a fresh LoRA model computes exactly the base model. ``A`` follows PEFT's
default (Kaiming-uniform with a = sqrt(5), i.e. U(-1/sqrt(in), 1/sqrt(in))).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from disrouter_jax.models import families
from disrouter_jax.models.decoder import Decoder


class LoRAParam(nnx.Param):
    """A LoRA adapter matrix: the only variable type trained under LoRA (``wrt=LoRAParam``)."""


@dataclasses.dataclass(frozen=True)
class TargetWeight:
    name: str  # generic target name, also the adapter's key ("q")
    hf_module: str  # the family's HF module name ("q_proj")
    module: str  # attribute of a decoder layer: "attn" or "mlp"
    weight: str  # attribute of that module
    in_ndim: int  # how many leading weight dimensions are inputs (contracted with x)


def lora_targets(config) -> dict[str, TargetWeight]:
    """The family's adaptable weights by generic name, read off its tensor table. Biases and
    norms are never adapted."""
    out = {}
    for rule in config.tensor_table:
        if rule.lora is not None:
            _, _, module, weight = rule.model_path
            out[rule.lora] = TargetWeight(rule.lora, rule.hf_module, module, weight, rule.linear_in_dims)
    return out


def _target_names() -> set[str]:
    """Every target name some family accepts (generic and HF module names)."""
    return {n for cls in families.FAMILIES.values() for t in lora_targets(cls).values() for n in (t.name, t.hf_module)}


def resolve_targets(config, names) -> tuple[TargetWeight, ...]:
    """``names`` (generic or HF module names) as the family of ``config`` names its weights."""
    targets = lora_targets(config)
    by_name = {n: t for t in targets.values() for n in (t.name, t.hf_module)}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        offered = ", ".join(f"{t.name} ({t.hf_module})" for t in targets.values())
        raise ValueError(f"LoRA targets {unknown} are not weights of family {config.family!r}; its targets: {offered}")
    resolved = tuple(by_name[n] for n in names)
    twice = sorted({t.name for t in resolved if sum(r is t for r in resolved) > 1})
    if twice:
        raise ValueError(f"LoRA targets {list(names)} name the weight(s) {twice} twice")
    return resolved


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank r, scale alpha (the update is scaled by alpha / r), which projections to adapt."""

    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")
    param_dtype: str = "float32"
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRAConfig.rank={self.rank!r}: must be an int >= 1")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            raise ValueError(f"LoRAConfig.alpha={self.alpha!r}: must be a number > 0")
        targets = tuple(self.targets)
        known = _target_names()
        unknown = [t for t in targets if t not in known]
        if not targets or unknown or len(set(targets)) != len(targets):
            raise ValueError(
                f"LoRAConfig.targets={self.targets!r}: must be distinct names from {sorted(known)}"
            )
        object.__setattr__(self, "targets", targets)
        jnp.dtype(self.param_dtype)  # raises on an unknown dtype name

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank


class LoRAAdapter(nnx.Module):
    """``A [in, r]``, ``B [r, out]`` for one weight of shape ``in_shape + out_shape``."""

    def __init__(self, weight_shape, weight_axes, in_ndim: int, cfg: LoRAConfig, rngs: nnx.Rngs):
        self.weight_shape = tuple(weight_shape)
        fan_in = math.prod(weight_shape[:in_ndim])
        fan_out = math.prod(weight_shape[in_ndim:])
        dtype = jnp.dtype(cfg.param_dtype)
        bound = 1.0 / math.sqrt(fan_in)
        a = jax.random.uniform(rngs.params(), (fan_in, cfg.rank), dtype, -bound, bound)
        # Logical axes of the first input / output dimension, so adapters shard like their weight
        # where the flattened size allows it; the rank dimension is tiny and replicated.
        self.a_ir = LoRAParam(a, logical_axes=(weight_axes[0], None))
        self.b_ro = LoRAParam(jnp.zeros((cfg.rank, fan_out), dtype), logical_axes=(None, weight_axes[in_ndim]))
        self.scale = cfg.scale

    def delta(self):
        """``scale * reshape(A @ B)`` in the weight's shape, in float32."""
        a = self.a_ir[...].astype(jnp.float32)
        b = self.b_ro[...].astype(jnp.float32)
        return (self.scale * (a @ b)).reshape(self.weight_shape)


class LoRAModel(nnx.Module):
    """A frozen ``Decoder`` plus adapters; same call signatures as ``Decoder``. Adapters are keyed
    by generic target name (``adapters[layer]["q"]``) whatever name the config used."""

    def __init__(self, base: Decoder, cfg: LoRAConfig):
        if not isinstance(base, Decoder):
            raise TypeError(f"apply_lora expects a decoder.Decoder, got {type(base).__name__}")
        self.base = base
        self.lora_config = cfg
        self.targets = resolve_targets(base.config, cfg.targets)
        rngs = nnx.Rngs(cfg.seed)
        layers = []
        for layer in base.layers:
            adapters = {}
            for target in self.targets:
                weight = getattr(getattr(layer, target.module), target.weight)
                axes = weight.get_metadata().get("logical_axes", (None,) * weight[...].ndim)
                adapters[target.name] = LoRAAdapter(weight[...].shape, axes, target.in_ndim, cfg, rngs)
            layers.append(nnx.Dict(adapters))
        self.adapters = nnx.List(layers)

    @property
    def config(self):
        return self.base.config

    @property
    def sharding(self):
        return self.base.sharding

    @property
    def dtype(self):
        return self.base.dtype

    def merged(self) -> Decoder:
        """A new ``Decoder`` whose targeted weights are ``W + delta``; the base is left untouched."""
        graphdef, state = nnx.split(self.base)
        flat = dict(nnx.to_flat_state(state))
        targets = {t.name: t for t in self.targets}
        for i, adapters in enumerate(self.adapters):
            for name, adapter in adapters.items():
                target = targets[name]
                path = ("layers", i, target.module, target.weight)
                weight = flat[path]
                # Sum in float32 and round once to the weight's dtype. ``replace`` builds a new
                # Variable: the base module's variables are never mutated.
                merged = weight[...].astype(jnp.float32) + adapter.delta()
                flat[path] = weight.replace(merged.astype(weight[...].dtype))
        return nnx.merge(graphdef, nnx.from_flat_state(flat))

    def __call__(self, input_ids_bt, positions_bt=None, attention_mask_bt=None):
        return self.merged()(input_ids_bt, positions_bt, attention_mask_bt)

    def hidden_states(self, input_ids_bt, positions_bt=None, attention_mask_bt=None):
        return self.merged().hidden_states(input_ids_bt, positions_bt, attention_mask_bt)

    def extend(self, input_ids_bt, positions_bt, attention_mask_bt, cache):
        return self.merged().extend(input_ids_bt, positions_bt, attention_mask_bt, cache)


def apply_lora(model: Decoder, cfg: LoRAConfig | None = None) -> "LoRAModel":
    """Wraps ``model`` (kept by reference, not copied) with zero-initialised adapters.

    With a mesh-sharded base, the adapters are placed on the same mesh by ``create_train_state``.
    """
    return LoRAModel(model, cfg or LoRAConfig())


def merge_lora(model: "LoRAModel | Decoder") -> Decoder:
    """The export model: a plain ``Decoder`` with the adapters folded into the weights (a
    ``Decoder`` is returned unchanged). Pass the result to ``hf_io.save_pretrained``."""
    if isinstance(model, Decoder):
        return model
    if not isinstance(model, LoRAModel):
        raise TypeError(f"merge_lora expects a LoRAModel or Decoder, got {type(model).__name__}")
    return model.merged()
