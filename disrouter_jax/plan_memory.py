"""Bytes per device of each stage of an agent, from its shapes alone (no weight is loaded).

Parameters, gradients and optimizer state come from the abstract train state: ``jax.eval_shape``
of ``pipeline.train_state_for`` (full fine-tuning or LoRA, AdamW) on the agent's config, each
array sharded by the project's logical-axis rules on the mesh (``sharding.logical_to_spec``, so a
dimension an axis does not divide stays whole, as at run time). Activations and KV caches are
formulas (upper estimates, as in launch/README.md "Memory per model"):

* training activations: what backpropagation keeps, ``activation_bytes`` (the terms and why each is
  there are in its docstring; tests/test_plan.py checks them against XLA's own memory analysis of
  the compiled SFT backward on CPU). Rows per device: the micro-batch (batch / grad_accum, and an
  RL micro-batch's replay rows likewise) over ``data·fsdp`` (a batch they do not divide is
  replicated); T: the longest length bucket; heads, MLP and vocabulary over ``tensor`` where it
  divides.
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
                     platform: str, tensor: int = 1) -> int:
    """What backpropagation keeps for ``rows`` sequences of ``length`` (T) tokens on one device.

    ``c`` is the compute dtype's itemsize; ``w`` the itemsize in which XLA keeps the values the
    decoder computes in that dtype: ``w = c`` on GPU and TPU, ``w = 4`` on CPU, where XLA runs
    16-bit dots and elementwise ops in float32 and keeps their float32 results (its memory
    analysis of a bfloat16 step lists the residual stream, the matmul inputs and the attention
    tensors as float32 buffers). Per token and layer (``models/decoder.py``, ``layers.py``,
    ``attention.py``):

    * ``(4·w + 2·c)·D``: the residual stream twice (the layer's input and its sum after
      attention) and the two RMSNorm outputs that feed the q/k/v and gate/up matmuls, ``w`` each;
      the two normalised values before the scale, ``c`` (``rms_normalize`` normalises in float32
      and casts back; XLA:CPU keeps them, the GPU recomputes them: margin there).
    * ``2·w·(N + K)·H``: the queries and keys after RoPE and the values, which the attention's
      backward reads, and the attention output, the o projection's input.
    * ``(w + 2·c)·F``, on CPU ``(w + 4·c)·F``: the MLP's gate and up outputs (``c``; SwiGLU's
      backward needs both) and ``silu(gate)·up`` (``w``), the down projection's input; XLA:CPU
      also keeps ``sigmoid(gate)`` and ``silu(gate)``.
    * ``8·(N + 1)``: the softmax's float32 statistics per head and query, and the two norms'
      float32 reciprocal RMS.
    * with ``qk_norm`` (Qwen3) ``(4 + w)·(N + K)·H``: the q and k projections before their norm
      (``w``), which its backward reads, and their float32 normalised values.
    * unless attention is fused (cuDNN on a GPU in 16-bit: no ``[T, T]`` tensor at all)
      ``(4 + w)·N·T``: the scores, computed in float32 (``preferred_element_type``), and the
      softmax's probabilities (float32, cast to the compute dtype for the value matmul: ``w``);
      on CPU ``+ 4·N·T``, the float32 broadcast of the softmax denominator that XLA:CPU
      materialises where a KV head serves more than two query heads.

    Once per token: ``(4·w + c)·D``, the embedding output and the final norm's input, output
    and output gradient (``w``) and normalised value (``c``); ``(4 + w)·V``, the gradient of the
    float32 logits the loss reads (``Decoder.logits`` upcasts) and a second ``[V]`` buffer
    (XLA:CPU scatters the target's gradient into one float32 buffer and sums into another; a GPU
    holds the 16-bit logits while it forms the gradient), plus in 16-bit ``c·V``, the gradient
    cast back for the LM head's two backward matmuls; unless attention is fused, ``8·N·T``: the
    float32 gradients of one layer's scores and probabilities while its backward runs, the
    layers below still holding theirs.

    Heads (N, K), the MLP (F) and the vocabulary (V) count over ``tensor`` where it divides them;
    D is whole on every device. Checked against ``temp_size_in_bytes`` of the compiled SFT
    backward's ``memory_analysis()`` on one device: on CPU 1.06–1.56x of it over tiny Qwen2 and
    Qwen3 shapes in float32 and bfloat16 (tests/test_plan.py checks four); once on an H200 (jax
    0.11) 1.22x for the Qwen2.5-0.5B shape at 2 rows × 2048 tokens in bfloat16 with cuDNN
    attention, 1.2x per layer of the 7B shape, 1.2–1.65x with XLA attention or in float32. Not
    counted: temporaries the size of the weights (their 16-bit copies, gradient partials and,
    under FSDP, the gathered weights: on 8 CPU devices with fsdp=8 XLA kept every layer's
    gathered float32 weights for the backward).
    """
    cpu = platform == "cpu"
    c = itemsize
    w = 4 if cpu else c
    heads, kv_heads = _split(mc.num_heads, tensor), _split(mc.num_kv_heads, tensor)
    d, h, t = mc.hidden_size, mc.head_dim, length
    per_layer = ((4 * w + 2 * c) * d + 2 * w * (heads + kv_heads) * h
                 + (w + (4 if cpu else 2) * c) * _split(mc.intermediate_size, tensor) + 8 * (heads + 1))
    if mc.qk_norm:
        per_layer += (4 + w) * (heads + kv_heads) * h
    once = (4 * w + c) * d + (4 + w + (c if c < 4 else 0)) * _split(mc.vocab_size, tensor)
    if not fused_attention:
        per_layer += (4 + w + (4 if cpu else 0)) * heads * t
        once += 8 * heads * t
    return rows * length * (mc.num_layers * per_layer + once)


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


def replay_batch_rows(config, stage: str) -> int:
    """The rows an RL step also trains on by cross-entropy (``rl.replay_rows`` when
    ``rl.replay_coef`` > 0): micro-batched like the rollouts (``rl_loss`` forwards both, so both
    micro-batches' activations are kept at once); 0 for SFT."""
    return int(config.rl.replay_rows) if stage == "rl" and config.rl.replay_coef > 0 else 0


def accumulator_bytes(grad_bytes: int, config) -> int:
    """The float32 sums gradient accumulation keeps, from the gradients' bytes (``param_dtype``)."""
    return grad_bytes * 4 // jnp.dtype(DTYPES[config.param_dtype]).itemsize


def training_activations(config, mc: ModelConfig, mesh: Mapping[str, int], platform: str, stage: str,
                         grad_accum: int) -> int:
    """Activation bytes per device of one micro-batch of ``stage`` ("sft" or "rl"), an RL
    micro-batch's replay rows included (each part split over the data shards on its own)."""
    shards = mesh["data"] * mesh["fsdp"]
    rows = rows_per_device(train_batch_rows(config, stage) // grad_accum, shards)
    replay = replay_batch_rows(config, stage) // grad_accum
    rows += rows_per_device(replay, shards) if replay else 0
    return activation_bytes(mc, rows=rows, length=max(config.sft.length_buckets), tensor=mesh["tensor"],
                            itemsize=jnp.dtype(DTYPES[config.dtype]).itemsize, platform=platform,
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
