"""Optimizer: AdamW with linear warm-up, cosine / linear / constant decay and global-norm clipping.

Gradient accumulation is *not* done here (no ``optax.MultiSteps``): the jitted train steps
(``training/state.py``) split a batch into ``num_microbatches`` micro-batches, scan over them and
sum their gradients, each weighted by its share of the batch's loss tokens, then apply one update.
That gives exactly the gradient of the token-mean loss over the whole batch, which MultiSteps
(an unweighted mean of micro-batch means) does not when micro-batches hold different numbers of
response tokens, and it keeps one optimizer step per train-step call (step == update count).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax

DECAY_KINDS = ("cosine", "linear", "constant")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters and learning-rate schedule.

    Schedule (``count`` = number of updates already applied, starting at 0)::

        count <  warmup_steps: learning_rate * (count + 1) / warmup_steps
        count >= warmup_steps: decay from learning_rate to learning_rate * end_lr_ratio over the
                               remaining total_steps - warmup_steps updates, then stay there.

    The warm-up starts at ``lr / warmup_steps`` rather than 0 so that no update is wasted.

    Fields:
      learning_rate: peak learning rate (> 0).
      total_steps: number of optimizer updates of the whole run (>= 1); sets the decay length.
      warmup_steps: linear warm-up length (0 = none; < total_steps unless decay is "constant").
      decay: "cosine", "linear" or "constant".
      end_lr_ratio: final learning rate as a fraction of the peak (in [0, 1]).
      weight_decay: decoupled AdamW decay, applied to matrices only (ndim >= 2), not to biases or
        norm scales.
      b1, b2, eps: Adam moments.
      max_grad_norm: clip the global gradient norm to this value before Adam; None or 0 = no clip.
      num_microbatches: gradient accumulation factor used by the train steps (batch rows must be
        divisible by it).
    """

    learning_rate: float = 1e-5
    total_steps: int = 1000
    warmup_steps: int = 0
    decay: str = "cosine"
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    num_microbatches: int = 1

    def __post_init__(self):
        def fail(field, why):
            raise ValueError(f"OptimConfig.{field}={getattr(self, field)!r}: {why}")

        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0):
            fail("learning_rate", "must be a number > 0")
        for field in ("total_steps", "num_microbatches"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(field, "must be an int >= 1")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            fail("warmup_steps", "must be an int >= 0")
        if self.decay not in DECAY_KINDS:
            fail("decay", f"must be one of {DECAY_KINDS}")
        if self.decay != "constant" and self.warmup_steps >= self.total_steps:
            fail("warmup_steps", f"must be < total_steps={self.total_steps} for a decaying schedule")
        if not 0.0 <= self.end_lr_ratio <= 1.0:
            fail("end_lr_ratio", "must lie in [0, 1]")
        if self.weight_decay < 0:
            fail("weight_decay", "must be >= 0")
        for field in ("b1", "b2"):
            if not 0.0 <= getattr(self, field) < 1.0:
                fail(field, "must lie in [0, 1)")
        if not self.eps > 0:
            fail("eps", "must be > 0")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            fail("max_grad_norm", "must be >= 0 or None")


@functools.lru_cache(maxsize=None)
def make_schedule(cfg: OptimConfig) -> optax.Schedule:
    """The learning rate as a jittable function of the update count (see :class:`OptimConfig`)."""
    peak = float(cfg.learning_rate)
    end = peak * float(cfg.end_lr_ratio)
    warmup = int(cfg.warmup_steps)
    decay_steps = max(cfg.total_steps - warmup, 1)

    def schedule(count):
        count = jnp.asarray(count, jnp.float32)
        warm_lr = peak * (count + 1.0) / max(warmup, 1)
        progress = jnp.clip((count - warmup) / decay_steps, 0.0, 1.0)
        if cfg.decay == "cosine":
            decayed = end + (peak - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        elif cfg.decay == "linear":
            decayed = peak + (end - peak) * progress
        else:
            decayed = jnp.full_like(progress, peak)
        return jnp.where(count < warmup, warm_lr, decayed)

    return schedule


def _matrices_only(params):
    return jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)


@functools.lru_cache(maxsize=None)
def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """clip_by_global_norm -> AdamW(schedule). The learning rate of update ``count`` is
    ``make_schedule(cfg)(count)``; the train steps report it as ``metrics["lr"]``.

    Cached per (frozen, hashable) config: the transformation is part of the optimizer's static
    structure, so returning the same object lets train states built from equal configs share
    one compiled train step instead of recompiling.
    """
    parts = []
    if cfg.max_grad_norm:
        parts.append(optax.clip_by_global_norm(float(cfg.max_grad_norm)))
    parts.append(
        optax.adamw(
            learning_rate=make_schedule(cfg),
            b1=cfg.b1,
            b2=cfg.b2,
            eps=cfg.eps,
            weight_decay=cfg.weight_decay,
            mask=_matrices_only,
        )
    )
    return optax.chain(*parts)
