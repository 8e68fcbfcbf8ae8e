"""Bytes per device of each stage of an agent, from its shapes alone (no weight is loaded).

Parameters, gradients and optimizer state come from the abstract train state: ``jax.eval_shape``
of ``pipeline.train_state_for`` (full fine-tuning or LoRA, AdamW) on the agent's config, each
array sharded by the project's logical-axis rules on the mesh (``sharding.logical_to_spec``, so a
dimension an axis does not divide stays whole, as at run time). Activations and KV caches are
formulas (upper estimates, as in launch/README.md "Memory per model"):

* training activations, per row and token of a micro-batch: per layer ``10·D + 4·F`` values in
  the compute dtype, plus, unless attention is fused (cuDNN on a GPU in 16-bit), the ``N·T``
  attention scores in float32 and their probabilities in the compute dtype; once per token the
  float32 logits, their softmax and its gradient, ``3·4·V`` bytes. Rows per device: the
  micro-batch (batch / grad_accum) over ``data·fsdp`` (a batch they do not divide is replicated);
  T: the longest length bucket; heads, MLP and vocabulary over ``tensor`` where it divides.
* a KV cache: ``2·L·K·H`` values in the compute dtype per row and slot, over the generation
  buckets of (longest length bucket) prompt + ``max_new_tokens`` slots.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from disrouter_jax.agents import DTYPES
from disrouter_jax.generation import BucketConfig, generate
from disrouter_jax.models.config import ModelConfig
from disrouter_jax.models.decoder import Decoder
from disrouter_jax.sharding import MESH_AXES, logical_to_spec

GIB = 2**30
# Rows per compiled decode batch when a stage does not set it (RL rollouts): generate's default.
GENERATE_MAX_BATCH = inspect.signature(generate).parameters["max_batch_size"].default


@dataclasses.dataclass(frozen=True)
class StageMemory:
    """One stage's resident bytes per device, by part."""

    stage: str
    parts: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def shard_bytes(tree, mesh: Mapping[str, int]) -> int:
    """Bytes per device of a tree of (abstract) nnx Variables placed by their logical axes."""
    abstract_mesh = jax.sharding.AbstractMesh(tuple(mesh[a] for a in MESH_AXES), MESH_AXES)
    total = 0
    for leaf in jax.tree.leaves(tree, is_leaf=lambda x: isinstance(x, nnx.Variable)):
        value = leaf.get_value() if isinstance(leaf, nnx.Variable) else leaf
        shape = tuple(value.shape)
        axes = leaf.get_metadata().get("logical_axes") if isinstance(leaf, nnx.Variable) else None
        if axes is not None and len(axes) == len(shape):
            spec = logical_to_spec(axes, shape, abstract_mesh)
            shape = tuple(dim // _ways(entry, mesh) for dim, entry in zip(shape, spec))
        total += math.prod(shape) * jnp.dtype(value.dtype).itemsize
    return total


def _ways(entry, mesh: Mapping[str, int]) -> int:
    names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    return math.prod(mesh[name] for name in names)


def _split(n: int, ways: int) -> int:
    return n // ways if n % ways == 0 else n


def rows_per_device(rows: int, shards: int) -> int:
    """A batch's rows on one device: split over the data-parallel shards when they divide it."""
    return rows // shards if rows % shards == 0 else rows


def activation_bytes(mc: ModelConfig, *, rows: int, length: int, itemsize: int, fused_attention: bool,
                     tensor: int = 1) -> int:
    """What backpropagation keeps for ``rows`` sequences of ``length`` tokens on one device."""
    scores = 0 if fused_attention else _split(mc.num_heads, tensor) * length * (4 + itemsize)
    per_layer = (10 * mc.hidden_size + 4 * _split(mc.intermediate_size, tensor)) * itemsize + scores
    per_token = mc.num_layers * per_layer + 3 * 4 * _split(mc.vocab_size, tensor)
    return rows * length * per_token


def kv_cache_bytes(mc: ModelConfig, *, rows: int, slots: int, itemsize: int, tensor: int = 1) -> int:
    return rows * slots * 2 * mc.num_layers * _split(mc.num_kv_heads, tensor) * mc.head_dim * itemsize


def generation_slots(prompt_length: int, max_new_tokens: int) -> int:
    """KV slots of the generation bucket a prompt of ``prompt_length`` tokens decodes in."""
    buckets = BucketConfig()
    return buckets.prompt_bucket(prompt_length) + buckets.new_tokens_bucket(max_new_tokens)


def fused_attention(config, mc: ModelConfig, platform: str) -> bool:
    """Whether training attention takes cuDNN's fused kernel (models/attention.py, "auto")."""
    return platform == "gpu" and config.dtype in ("bfloat16", "float16") and mc.sliding_window is None


def _decoder(config, mc: ModelConfig) -> Decoder:
    return Decoder(mc, dtype=DTYPES[config.dtype], param_dtype=DTYPES[config.param_dtype], rngs=nnx.Rngs(0))


def abstract_model(config, mc: ModelConfig):
    """The agent as loaded for generation (parameters in ``param_dtype``), shapes only."""
    return nnx.eval_shape(lambda: _decoder(config, mc))


def abstract_train_state(config, mc: ModelConfig, stage: str):
    from disrouter_jax import pipeline  # pipeline imports the training stack; only the plan needs it here

    stage_cfg = config[stage]
    optim = pipeline.optim_config(stage_cfg, max(int(stage_cfg.steps), 2))
    return jax.eval_shape(lambda: pipeline.train_state_for(config, _decoder(config, mc), optim))


def train_batch_rows(config, stage: str) -> int:
    return config.sft.batch_size if stage == "sft" else config.rl.prompts_per_step * config.rl.group_size


def accumulator_bytes(grad_bytes: int, config) -> int:
    """The float32 sums gradient accumulation keeps, from the gradients' bytes (``param_dtype``)."""
    return grad_bytes * 4 // jnp.dtype(DTYPES[config.param_dtype]).itemsize


def training_activations(config, mc: ModelConfig, mesh: Mapping[str, int], platform: str, stage: str,
                         grad_accum: int) -> int:
    """Activation bytes per device of one micro-batch of ``stage`` ("sft" or "rl")."""
    rows = rows_per_device(train_batch_rows(config, stage) // grad_accum, mesh["data"] * mesh["fsdp"])
    return activation_bytes(mc, rows=rows, length=max(config.sft.length_buckets), tensor=mesh["tensor"],
                            itemsize=jnp.dtype(DTYPES[config.dtype]).itemsize,
                            fused_attention=fused_attention(config, mc, platform))


def agent_stage_memory(config, mc: ModelConfig, mesh: Mapping[str, int], platform: str, *,
                       trained: bool) -> list[StageMemory]:
    """Every stage this agent runs in a training config (nothing for an agent that is not trained)."""
    if not trained:
        return []
    itemsize = jnp.dtype(DTYPES[config.dtype]).itemsize
    shards, tensor = mesh["data"] * mesh["fsdp"], mesh["tensor"]
    length = max(config.sft.length_buckets)
    weights = shard_bytes(nnx.state(abstract_model(config, mc)), mesh)

    def kv(rows: int, max_new_tokens: int) -> int:
        return kv_cache_bytes(mc, rows=rows_per_device(rows, shards), slots=generation_slots(length, max_new_tokens),
                              itemsize=itemsize, tensor=tensor)

    stages = []
    if "label" in config.stages or "sft" in config.stages:
        label = config.label
        stages.append(StageMemory("label", {"params": weights,
                                            "kv_cache": kv(label.batch_size * label.num_samples, label.max_new_tokens)}))
    reference = {"reference": weights} if config.rl.kl_coef > 0 else {}
    trained_stages = [stage for stage in ("sft", "rl") if stage in config.stages]
    # SFT and RL train the same variables with the same optimizer: one abstract state serves both.
    state = abstract_train_state(config, mc, trained_stages[0]) if trained_stages else None
    for stage in trained_stages:
        accum = int(config[stage].get("grad_accum", 1))
        resident = {"params": shard_bytes(state.params, mesh) + shard_bytes(state.frozen, mesh),
                    "optimizer": shard_bytes(state.opt_state, mesh)}
        grads = {"grads": shard_bytes(state.params, mesh)}
        if accum > 1:  # float32 accumulators beside the micro-batch gradient
            grads["accumulators"] = accumulator_bytes(grads["grads"], config)
        if stage == "rl":
            rollout_rows = min(train_batch_rows(config, "rl"), GENERATE_MAX_BATCH)
            stages.append(StageMemory("rl rollouts", {**resident, **reference,
                                                      "kv_cache": kv(rollout_rows, config.rl.max_new_tokens)}))
        update = {**resident, **(reference if stage == "rl" else {}), **grads,
                  "activations": training_activations(config, mc, mesh, platform, stage, accum)}
        stages.append(StageMemory("rl update" if stage == "rl" else stage, update))
    if config.assess.enabled:
        stages.append(StageMemory("assess", {"params": weights, "kv_cache": kv(config.assess.batch_size,
                                                                                config.assess.max_new_tokens)}))
    return stages


def evaluation_memory(config, configs: list[ModelConfig], mesh: Mapping[str, int], *, copies: int) -> StageMemory:
    """The cascade evaluation with every agent on the shared mesh: all their weights at once
    (``copies`` = 2 when the untrained pool is loaded too for the baselines), plus the largest
    agent's KV cache at ``eval.batch_size`` rows."""
    itemsize = jnp.dtype(DTYPES[config.dtype]).itemsize
    shards, length = mesh["data"] * mesh["fsdp"], max(config.sft.length_buckets)
    weights = sum(shard_bytes(nnx.state(abstract_model(config, mc)), mesh) for mc in configs)
    kv = max(kv_cache_bytes(mc, rows=rows_per_device(config.eval.batch_size, shards), itemsize=itemsize,
                            slots=generation_slots(length, config.eval.max_new_tokens), tensor=mesh["tensor"])
             for mc in configs)
    return StageMemory("evaluation", {"params": copies * weights, "kv_cache": kv})
