"""Train state on the mesh and the jitted update shared by the SFT and RL steps.

``TrainState`` is a pytree of three ``nnx.State``s plus static structure:

- ``params``: the trained variables (those matching ``wrt``: every ``nnx.Param`` for full
  fine-tuning, only ``LoRAParam`` adapters under LoRA);
- ``frozen``: the rest of the model (the base weights under LoRA; empty for full fine-tuning);
- ``opt_state``: the ``nnx.Optimizer`` state (its update counter ``step`` and the optax state).

Sharding: every variable carries ``logical_axes`` metadata; ``state_shardings`` resolves it on the
mesh with the project's rules (``sharding.py``: FSDP over ``fsdp``, tensor parallel over
``tensor``). ``nnx.Optimizer`` copies a parameter's metadata onto its Adam moments, so ``mu``/``nu``
get exactly their parameter's sharding; scalars (counters) are replicated.

Ownership: ``create_train_state`` takes the model's arrays as they are (no copy). A train step
donates ``params`` and ``opt_state``, so after the first step the model object that was passed in
holds deleted arrays; use ``state.model()`` for the current model. ``frozen`` is never donated, so
a LoRA base model stays usable.

The update (``build_train_step``): the batch's rows are split into ``num_microbatches`` strided
micro-batches (micro-batch m = rows m, m + M, m + 2M, ..., so each one stays spread over the data
shards), gradients of ``loss * num_tokens`` are summed over a ``lax.scan`` and divided by the
batch's total token count, which is exactly the gradient of the token-mean loss over the whole
batch. A step whose loss or gradient norm is not finite leaves params and optimizer state
unchanged (``metrics["update_applied"] == 0``) so the state in memory is always the last good one;
the loop then stops with ``checkpoint.check_finite``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from disrouter_jax.sharding import ShardingContext, named_sharding
from disrouter_jax.training.optim import OptimConfig, make_optimizer, make_schedule


@dataclasses.dataclass(frozen=True)
class TrainState:
    params: nnx.State
    frozen: nnx.State
    opt_state: nnx.State
    model_def: Any = dataclasses.field(metadata=dict(static=True))
    opt_def: Any = dataclasses.field(metadata=dict(static=True))
    wrt: Any = dataclasses.field(metadata=dict(static=True))
    sharding: ShardingContext | None = dataclasses.field(metadata=dict(static=True))

    def model(self) -> nnx.Module:
        """The current model (a ``Decoder`` or ``LoRAModel``); new Variable objects, shared arrays."""
        return nnx.merge(self.model_def, self.params, self.frozen, copy=True)

    def optimizer(self) -> nnx.Optimizer:
        return nnx.merge(self.opt_def, self.opt_state, copy=True)

    @property
    def step(self) -> int:
        """Number of optimizer updates applied so far (a host sync)."""
        return int(jax.device_get(self.opt_state["step"][...]))

    def replace(self, **changes) -> "TrainState":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    TrainState,
    data_fields=["params", "frozen", "opt_state"],
    meta_fields=["model_def", "opt_def", "wrt", "sharding"],
)


def _is_variable(x) -> bool:
    return isinstance(x, nnx.Variable)


def variable_sharding(variable: nnx.Variable, ctx: ShardingContext) -> NamedSharding:
    """The sharding of one variable from its ``logical_axes`` (replicated when it has none)."""
    value = variable[...]
    axes = variable.get_metadata().get("logical_axes")
    if axes is None or len(axes) != jnp.ndim(value):
        return NamedSharding(ctx.mesh, PartitionSpec())
    return named_sharding(axes, jnp.shape(value), ctx.mesh, ctx.rules)


def state_shardings(tree, ctx: ShardingContext):
    """Shardings for a pytree of nnx Variables (a ``TrainState`` or any ``nnx.State``): a prefix
    tree usable by ``jax.device_put`` / ``jit``. Plain array leaves are replicated."""

    def one(x):
        if _is_variable(x):
            return variable_sharding(x, ctx)
        return NamedSharding(ctx.mesh, PartitionSpec())

    return jax.tree.map(one, tree, is_leaf=_is_variable)


def batch_sharding(x, ctx: ShardingContext) -> NamedSharding:
    """Leading dimension over the data-parallel axes (logical ``batch``), the rest replicated."""
    return named_sharding(("batch",) + (None,) * (jnp.ndim(x) - 1), jnp.shape(x), ctx.mesh, ctx.rules)


def shard_batch(batch, ctx: ShardingContext | None):
    """Places every array of a batch pytree (numpy or jax) with its rows over the data axes."""
    if ctx is None:
        return jax.tree.map(jnp.asarray, batch)
    return jax.tree.map(lambda x: jax.device_put(x, batch_sharding(x, ctx)), batch)


def create_train_state(
    model: nnx.Module,
    tx: optax.GradientTransformation | OptimConfig,
    *,
    wrt: Any = nnx.Param,
    sharding: ShardingContext | None = None,
) -> TrainState:
    """Builds ``nnx.Optimizer(model, tx, wrt=wrt)`` and the sharded ``TrainState``.

    Args:
      model: a ``Decoder`` (full fine-tuning, ``wrt=nnx.Param``) or ``LoRAModel`` (``wrt=LoRAParam``).
      tx: an optax transformation or an ``OptimConfig`` (then ``make_optimizer(tx)``).
      wrt: filter of the trained variables; only they get optimizer state.
      sharding: mesh + rules; defaults to the model's own ``ShardingContext`` (None = one device).
    """
    if isinstance(tx, OptimConfig):
        tx = make_optimizer(tx)
    if sharding is None:
        sharding = getattr(model, "sharding", None)
    if sharding is not None:
        # Put every model variable (e.g. freshly created LoRA adapters) on its sharding first so
        # the optimizer's zeros_like moments are created sharded, never on one device.
        graphdef, model_state = nnx.split(model)
        model = nnx.merge(graphdef, jax.device_put(model_state, state_shardings(model_state, sharding)))
    optimizer = nnx.Optimizer(model, tx, wrt=wrt)
    model_def, params, frozen = nnx.split(model, wrt, ...)
    opt_def, opt_state = nnx.split(optimizer)
    if not jax.tree.leaves(params):
        raise ValueError(f"create_train_state: no variable of the model matches wrt={wrt!r}")
    state = TrainState(params, frozen, opt_state, model_def, opt_def, wrt, sharding)
    if sharding is not None:
        state = jax.device_put(state, state_shardings(state, sharding))
    return state


# loss_fn(model, micro_batch) -> (loss, num_tokens, metrics): ``loss`` is the mean over the
# micro-batch's tokens, every entry of ``metrics`` a token-mean too (combined token-weighted).
LossFn = Callable[[nnx.Module, Any], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]


def _microbatches(batch, num_microbatches: int):
    """[B, ...] -> [M, B/M, ...] with micro-batch m = rows m, m + M, ... (strided)."""

    def split(x):
        rows = x.shape[0]
        if rows % num_microbatches:
            raise ValueError(
                f"batch has {rows} rows, not divisible by num_microbatches={num_microbatches}"
            )
        x = x.reshape((rows // num_microbatches, num_microbatches) + x.shape[1:])
        return jnp.swapaxes(x, 0, 1)

    return jax.tree.map(split, batch)


def _accumulate_gradients(loss_fn: LossFn, state: TrainState, batch, num_microbatches: int):
    def token_sum_loss(params, micro_batch):
        model = nnx.merge(state.model_def, params, state.frozen)
        loss, num_tokens, metrics = loss_fn(model, micro_batch)
        num_tokens = num_tokens.astype(jnp.float32)
        return loss * num_tokens, (loss, num_tokens, metrics)

    grad_fn = jax.grad(token_sum_loss, has_aux=True)

    def weighted(loss, num_tokens, metrics):
        sums = {name: value * num_tokens for name, value in metrics.items()}
        sums["loss"] = loss * num_tokens
        return sums

    if num_microbatches == 1:
        grads, (loss, num_tokens, metrics) = grad_fn(state.params, batch)
        grad_sum, metric_sums, total_tokens = grads, weighted(loss, num_tokens, metrics), num_tokens
    else:
        micro = _microbatches(batch, num_microbatches)

        def body(carry, micro_batch):
            if state.sharding is not None:
                micro_batch = jax.tree.map(
                    lambda x: jax.lax.with_sharding_constraint(x, batch_sharding(x, state.sharding)),
                    micro_batch,
                )
            grads, (loss, num_tokens, metrics) = grad_fn(state.params, micro_batch)
            grad_acc, sums_acc, tokens_acc = carry
            sums = weighted(loss, num_tokens, metrics)
            carry = (
                jax.tree.map(lambda acc, g: acc + g.astype(acc.dtype), grad_acc, grads),
                {k: sums_acc[k] + sums[k] for k in sums},
                tokens_acc + num_tokens,
            )
            return carry, None

        first = jax.tree.map(lambda x: x[0], micro)
        _, (_, _, shape_metrics) = jax.eval_shape(token_sum_loss, state.params, first)
        zero_sums = {k: jnp.zeros((), jnp.float32) for k in list(shape_metrics) + ["loss"]}
        # Accumulate in float32 whatever the parameter dtype; cast back once at the end.
        zero_grads = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        init = (zero_grads, zero_sums, jnp.zeros((), jnp.float32))
        (grad_sum, metric_sums, total_tokens), _ = jax.lax.scan(body, init, micro)

    denominator = jnp.maximum(total_tokens, 1.0)
    grads = jax.tree.map(lambda g, p: (g / denominator).astype(p.dtype), grad_sum, state.params)
    metrics = {k: v / denominator for k, v in metric_sums.items()}
    metrics["num_tokens"] = total_tokens
    return grads, metrics


def _apply_update(state: TrainState, grads, schedule) -> tuple[TrainState, dict[str, jax.Array]]:
    model = nnx.merge(state.model_def, state.params, state.frozen, copy=True)
    optimizer = nnx.merge(state.opt_def, state.opt_state, copy=True)
    lr = schedule(optimizer.step[...])
    optimizer.update(model, grads)
    _, new_params, _ = nnx.split(model, state.wrt, ...)
    _, new_opt_state = nnx.split(optimizer)
    return state.replace(params=new_params, opt_state=new_opt_state), {"lr": lr}


def build_train_step(
    loss_fn: LossFn, optim: OptimConfig, *, name: str = "train_step", validate: Callable[[Any], None] | None = None
):
    """Returns ``step(state, batch) -> (state, metrics)``: one jitted optimizer update.

    ``batch`` is any pytree of arrays whose leading dimension is the batch (numpy is fine); it is
    placed with its rows over the data axes. ``metrics`` (device scalars): everything ``loss_fn``
    reports (token-weighted over the batch), ``loss``, ``num_tokens``, ``grad_norm`` (global norm
    before clipping), ``lr`` (the learning rate of this update) and ``update_applied`` (0.0 when
    the update was skipped because the loss or gradient norm was not finite).
    """
    schedule = make_schedule(optim)
    num_microbatches = optim.num_microbatches

    def core(params, opt_state, frozen, batch, static_state: TrainState):
        state = static_state.replace(params=params, opt_state=opt_state, frozen=frozen)
        grads, metrics = _accumulate_gradients(loss_fn, state, batch, num_microbatches)
        grad_norm = optax.global_norm(grads)
        new_state, update_metrics = _apply_update(state, grads, schedule)
        ok = jnp.isfinite(metrics["loss"]) & jnp.isfinite(grad_norm)
        keep = lambda new, old: jnp.where(ok, new, old)  # noqa: E731
        new_params = jax.tree.map(keep, new_state.params, params)
        new_opt_state = jax.tree.map(keep, new_state.opt_state, opt_state)
        metrics.update(update_metrics, grad_norm=grad_norm, update_applied=ok.astype(jnp.float32))
        return new_params, new_opt_state, metrics

    # One jitted function per state structure (model / optimizer / mesh). Its outputs are pinned
    # to exactly the input shardings: otherwise XLA may return an equivalent but differently
    # spelled sharding and the next call would compile again.
    compiled: dict[TrainState, Callable] = {}

    def jitted_for(state: TrainState):
        static_state = state.replace(params=None, opt_state=None, frozen=None)
        fn = compiled.get(static_state)
        if fn is None:
            out_shardings = None
            if state.sharding is not None:
                replicated = NamedSharding(state.sharding.mesh, PartitionSpec())
                out_shardings = (
                    state_shardings(state.params, state.sharding),
                    state_shardings(state.opt_state, state.sharding),
                    replicated,
                )
            fn = jax.jit(
                functools.partial(core, static_state=static_state), donate_argnums=(0, 1), out_shardings=out_shardings
            )
            compiled[static_state] = fn
        return fn

    def step(state: TrainState, batch) -> tuple[TrainState, dict[str, jax.Array]]:
        if validate is not None:
            validate(batch)
        batch = shard_batch(batch, state.sharding)
        params, opt_state, metrics = jitted_for(state)(state.params, state.opt_state, state.frozen, batch)
        return state.replace(params=params, opt_state=opt_state), metrics

    def lower(state: TrainState, batch):
        """The step's program for ``state`` and ``batch``'s shapes, lowered, not run
        (``.compile().as_text()``: the HLO a step runs, collectives included)."""
        batch = shard_batch(batch, state.sharding)
        return jitted_for(state).lower(state.params, state.opt_state, state.frozen, batch)

    step.__name__ = name
    step.compiled = compiled
    step.lower = lower
    return step
