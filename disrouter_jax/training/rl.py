"""Jitted policy-gradient (PPO / GRPO-style) step for scenario-conditioned RL.

Batch layout: the SFT next-token layout (``training/sft.py``), right-padded, one row per sampled
response: the row holds prompt + response, ``loss_mask_bt`` is 1 exactly on the positions whose
target is a response token, and the per-token arrays are aligned with ``targets_bt``::

    row:            p0 p1 p2 r0 r1 r2 <pad> ...
    input_ids_bt:   p0 p1 p2 r0 r1 <pad>
    targets_bt:     p1 p2 r0 r1 r2 <pad>
    loss_mask_bt:    0  0  1  1  1  0
    old_logprobs:    0  0 l0 l1 l2  0        (l_j = log p_old(r_j | prompt, r_<j))

The generation engine returns, per sample, unpadded response ids and their log-probs; build the
rows with :func:`rl_batch_from_rollouts`. Include the stop token (and its log-prob) at the end of
a response that finished on it, so that the policy is also trained on where to stop.

``old_logprobs`` must be log-probs of the *untempered* policy (temperature 1). If rollouts are
sampled at another temperature, recompute them with ``sft.sequence_logprobs(policy_model, batch)``
before the first update on that batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from disrouter_jax.generation.sampling import token_logprobs
from disrouter_jax.selfaware import rewards
from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.sft import TokenBatch, check_same_shape, forward_logits, safe_targets
from disrouter_jax.training.state import build_train_step


@dataclasses.dataclass(frozen=True)
class RLConfig:
    """clip_eps: PPO/GRPO ratio clip half-width (None = plain REINFORCE-with-baseline ratio loss).
    kl_coef: weight of the k3 KL penalty to the frozen reference (needs ``ref_logprobs_bt``).
    replay_coef: weight of the cross-entropy on ``RLBatch.replay`` (the agent's own earlier
    answers, InstructGPT's "PPO-ptx" mix) added to the policy loss."""

    clip_eps: float | None = 0.2
    kl_coef: float = 0.0
    replay_coef: float = 0.0

    def __post_init__(self):
        if self.clip_eps is not None and not (isinstance(self.clip_eps, (int, float)) and self.clip_eps > 0):
            raise ValueError(f"RLConfig.clip_eps={self.clip_eps!r}: must be > 0 or None")
        for field in ("kl_coef", "replay_coef"):
            value = getattr(self, field)
            if isinstance(value, bool) or not (isinstance(value, (int, float)) and value >= 0):
                raise ValueError(f"RLConfig.{field}={value!r}: must be a number >= 0")


@dataclasses.dataclass(frozen=True)
class RLBatch:
    """Rollout rows in the layout of the module docstring; ``advantages_b`` is one per row.
    ``replay``: supervised rows (own rows count, any width) trained with ``RLConfig.replay_coef``."""

    input_ids_bt: jax.Array
    targets_bt: jax.Array
    loss_mask_bt: jax.Array
    old_logprobs_bt: jax.Array
    advantages_b: jax.Array
    ref_logprobs_bt: jax.Array | None = None
    attention_mask_bt: jax.Array | None = None
    replay: TokenBatch | None = None

    def validate(self) -> None:
        check_same_shape(
            self, ("input_ids_bt", "targets_bt", "loss_mask_bt", "old_logprobs_bt", "ref_logprobs_bt", "attention_mask_bt")
        )
        rows = np.shape(self.input_ids_bt)[0]
        if np.shape(self.advantages_b) != (rows,):
            raise ValueError(f"RLBatch.advantages_b must have shape ({rows},), got {np.shape(self.advantages_b)}")
        if self.replay is not None:
            self.replay.validate()

    def replace(self, **changes) -> "RLBatch":
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(
    RLBatch,
    data_fields=[
        "input_ids_bt", "targets_bt", "loss_mask_bt", "old_logprobs_bt", "advantages_b",
        "ref_logprobs_bt", "attention_mask_bt", "replay",
    ],
    meta_fields=[],
)


def rl_batch_from_rollouts(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    old_logprobs: Sequence[Sequence[float]],
    advantages: Sequence[float],
    *,
    pad_id: int,
    length_buckets: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> RLBatch:
    """Packs unpadded rollouts (one entry per sampled response) into a right-padded ``RLBatch``.

    The width is the smallest of ``length_buckets`` that fits the longest row (None: exactly the
    longest row); a longer row is an error (nothing is truncated: a cut response would be scored
    for text it never produced). ``batch_size`` pads with fully masked rows (advantage 0) so the
    last partial batch keeps its static shape. An empty response gives a row with no loss tokens.
    """
    n = len(prompts)
    if not (len(responses) == len(old_logprobs) == len(advantages) == n) or n == 0:
        raise ValueError(
            "rl_batch_from_rollouts: prompts, responses, old_logprobs and advantages need the same "
            f"non-zero length, got {n}, {len(responses)}, {len(old_logprobs)}, {len(advantages)}"
        )
    lengths = []
    for i, (prompt, response, logprobs) in enumerate(zip(prompts, responses, old_logprobs)):
        if len(prompt) == 0:
            raise ValueError(f"rl_batch_from_rollouts: prompts[{i}] is empty")
        if len(logprobs) != len(response):
            raise ValueError(
                f"rl_batch_from_rollouts: old_logprobs[{i}] has {len(logprobs)} entries for "
                f"{len(response)} response tokens"
            )
        lengths.append(len(prompt) + len(response) - 1)
    longest = max(max(lengths), 1)
    if length_buckets is None:
        width = longest
    else:
        fitting = [int(b) for b in sorted(length_buckets) if int(b) >= longest]
        if not fitting:
            raise ValueError(f"rl_batch_from_rollouts: a row of {longest} tokens exceeds every bucket {list(length_buckets)}")
        width = fitting[0]
    rows = n if batch_size is None else int(batch_size)
    if rows < n:
        raise ValueError(f"rl_batch_from_rollouts: {n} rollouts do not fit batch_size={batch_size}")

    input_ids = np.full((rows, width), pad_id, np.int32)
    targets = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), np.float32)
    old = np.zeros((rows, width), np.float32)
    adv = np.zeros((rows,), np.float32)
    for row, (prompt, response, logprobs) in enumerate(zip(prompts, responses, old_logprobs)):
        sequence = np.concatenate([np.asarray(prompt, np.int64), np.asarray(response, np.int64)]).astype(np.int32)
        length, start = sequence.size - 1, len(prompt) - 1
        input_ids[row, :length] = sequence[:-1]
        targets[row, :length] = sequence[1:]
        mask[row, start:length] = 1.0
        old[row, start:length] = np.asarray(logprobs, np.float32)
        adv[row] = float(advantages[row])
    return RLBatch(input_ids, targets, mask, old, adv)


def rl_loss(model, batch: RLBatch, cfg: RLConfig):
    """(token-mean policy-gradient loss, number of response tokens, token-mean metrics)."""
    logits_btv = forward_logits(model, batch)
    logprobs_bt = token_logprobs(logits_btv, safe_targets(batch))
    loss, metrics = rewards.policy_gradient_loss(
        logprobs_bt,
        batch.old_logprobs_bt,
        batch.advantages_b,
        batch.loss_mask_bt,
        clip_eps=cfg.clip_eps,
        ref_logprobs_bt=batch.ref_logprobs_bt,
        kl_coef=cfg.kl_coef,
    )
    metrics = dict(metrics)
    num_tokens = metrics.pop("num_tokens")
    metrics.pop("loss")
    if cfg.replay_coef > 0:
        replay_logits_btv = forward_logits(model, batch.replay)
        replay_loss, _ = rewards.masked_cross_entropy(replay_logits_btv, batch.replay.targets_bt,
                                                      batch.replay.loss_mask_bt)
        loss = loss + cfg.replay_coef * replay_loss
        metrics["replay_loss"] = replay_loss
    return loss, num_tokens, metrics


def make_rl_step(optim: OptimConfig, cfg: RLConfig = RLConfig()):
    """``step(state, batch: RLBatch) -> (state, metrics)``; metrics: loss, pg_loss, kl,
    clip_fraction, ratio_mean, approx_kl_old, advantage_mean (token-weighted), num_tokens,
    grad_norm, lr, update_applied, and replay_loss when ``cfg.replay_coef > 0``.
    ``cfg.kl_coef > 0`` requires ``batch.ref_logprobs_bt``, ``cfg.replay_coef > 0`` ``batch.replay``."""

    def validate(batch: RLBatch) -> None:
        batch.validate()
        if cfg.kl_coef > 0 and batch.ref_logprobs_bt is None:
            raise ValueError(f"RLConfig.kl_coef={cfg.kl_coef} needs RLBatch.ref_logprobs_bt (got None)")
        if cfg.replay_coef > 0 and batch.replay is None:
            raise ValueError(f"RLConfig.replay_coef={cfg.replay_coef} needs RLBatch.replay (got None)")

    return build_train_step(lambda model, batch: rl_loss(model, batch, cfg), optim, name="rl_step", validate=validate)
