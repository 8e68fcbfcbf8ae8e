"""Rewards, advantages and losses for self-awareness training: pure, jittable functions.

Everything here is model-independent: the jitted SFT/RL train steps compute logits with the model
and hand them to these functions. Nothing branches in Python on a traced value; the only Python
branches are on static arguments (``normalize``, ``clip_eps``, whether a reference is given).

The scenario reward (the one definition in the project)::

    correct answer  -> 1
    wrong answer    -> 0
    refusal         -> (1 - alpha) ** gamma        (gamma = 0.5 by default)

An agent whose probability of answering a query correctly is ``p`` expects ``p`` from answering and
``(1 - alpha) ** gamma`` from refusing, so the reward-optimal policy answers iff
``p > (1 - alpha) ** gamma`` (:func:`answer_threshold`, :func:`optimal_answer`). Note this RL
threshold is not the SFT labelling threshold ``delta = 1 - alpha`` (see ``selfaware/data.py``):
with gamma < 1 the RL threshold is higher, i.e. RL pushes towards refusing more than SFT labels do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from disrouter_jax.generation.sampling import token_logprobs

DEFAULT_GAMMA = 0.5

# Reward of a correct / wrong answer; the refusal reward depends on the scenario (refusal_reward).
CORRECT_REWARD = 1.0
WRONG_REWARD = 0.0


def _check_concrete_unit_interval(name: str, value: Any) -> None:
    """Validate Python scalars eagerly; traced / array values are the caller's responsibility."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value!r}")


def _check_gamma(gamma: Any) -> None:
    if isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and not gamma > 0:
        raise ValueError(f"gamma must be > 0, got {gamma!r}")


def refusal_reward(alpha, gamma=DEFAULT_GAMMA):
    """Reward for replying with the refusal in scenario ``alpha``: ``(1 - alpha) ** gamma``.

    Works on Python floats (returns a float), numpy and JAX arrays (elementwise).
    """
    _check_concrete_unit_interval("alpha", alpha)
    _check_gamma(gamma)
    return (1.0 - alpha) ** gamma


def answer_threshold(alpha, gamma=DEFAULT_GAMMA):
    """Correctness probability above which answering beats refusing in expectation.

    E[reward | answer] = p * 1 + (1 - p) * 0 = p and E[reward | refuse] = (1 - alpha) ** gamma, so
    the threshold equals the refusal reward. At ``p == threshold`` both choices are optimal.
    """
    return refusal_reward(alpha, gamma)


def expected_reward(p_correct, answer_probability, alpha, gamma=DEFAULT_GAMMA):
    """Expected scenario reward of a (possibly stochastic) policy that answers with
    ``answer_probability`` and is right with probability ``p_correct`` when it answers."""
    return answer_probability * p_correct + (1.0 - answer_probability) * refusal_reward(alpha, gamma)


def optimal_answer(p_correct, alpha, gamma=DEFAULT_GAMMA):
    """Whether the reward-optimal policy answers: ``p_correct > (1 - alpha) ** gamma``.

    Ties (equal expected reward) resolve to refusing.
    """
    return p_correct > answer_threshold(alpha, gamma)


def scenario_reward(correct_b, refused_b, alpha_b, gamma=DEFAULT_GAMMA):
    """Per-response reward, vectorised over a batch (any matching / broadcastable shapes).

    Args:
      correct_b: bool (or 0/1) — the task checker judged the response correct.
      refused_b: bool (or 0/1) — the response is the refusal. A refusal always gets the refusal
        reward, whatever ``correct_b`` says (a refusal is not an answer).
      alpha_b: scenario alpha of each response's prompt.
      gamma: refusal-reward exponent (static or array).

    Returns:
      float32 rewards with the broadcast shape.
    """
    correct = jnp.asarray(correct_b).astype(bool)
    refused = jnp.asarray(refused_b).astype(bool)
    alpha = jnp.asarray(alpha_b, dtype=jnp.float32)
    answer_reward = jnp.where(correct, CORRECT_REWARD, WRONG_REWARD).astype(jnp.float32)
    return jnp.where(refused, refusal_reward(alpha, gamma), answer_reward).astype(jnp.float32)


def group_advantages(rewards_bg, *, normalize: bool, eps: float = 1e-6):
    """GRPO-style advantages: reward minus the mean of its group of G samples of one prompt.

    Args:
      rewards_bg: [B, G] rewards of G sampled responses for each of B prompts.
      normalize: additionally divide by the group's standard deviation (population std, ddof=0, so
        G = 1 is defined) plus ``eps``.
      eps: added to the std before dividing.

    Returns:
      float32 [B, G] advantages. A group whose rewards are all equal carries no learning signal and
      gets exactly zero advantage (never NaN, and no ``rounding error / eps`` blow-up).
    """
    rewards = jnp.asarray(rewards_bg, dtype=jnp.float32)
    if rewards.ndim != 2:
        raise ValueError(f"rewards_bg must be [B, G], got shape {rewards.shape}")
    centered = rewards - jnp.mean(rewards, axis=-1, keepdims=True)
    if normalize:
        centered = centered / (jnp.std(rewards, axis=-1, keepdims=True) + eps)
    # Compare exactly instead of thresholding the std: the mean of G equal floats can be off by an
    # ulp, which `/ (0 + eps)` would amplify into a large spurious advantage.
    constant_group = jnp.all(rewards == rewards[:, :1], axis=-1, keepdims=True)
    return jnp.where(constant_group, 0.0, centered)


def greedy_hits(logits_btv, targets_bt):
    """[B, T] bool: the target's logit is the largest of its position (greedy decoding picks it).

    Compares against the row maximum rather than taking an argmax: XLA:CPU computes an argmax as a
    reduce carrying (value, index) pairs, 71 ms of a 1.5 s mid-shape SFT step, and a maximum as a
    plain vectorised reduction. A tie for the maximum counts as a hit for every tied id.
    """
    logits = jnp.asarray(logits_btv)
    targets = jnp.asarray(targets_bt).astype(jnp.int32)
    target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return target_logits >= jnp.max(logits, axis=-1)


def _masked_mean(values_bt, mask_bt):
    """Sum of masked values / number of masked tokens (0 when the mask is empty)."""
    num_tokens = jnp.sum(mask_bt)
    return jnp.sum(values_bt * mask_bt) / jnp.maximum(num_tokens, 1.0), num_tokens


def masked_cross_entropy(logits_btv, targets_bt, loss_mask_bt):
    """Mean next-token cross-entropy over the positions where ``loss_mask_bt`` is set.

    Args:
      logits_btv: [B, T, V] logits (any float dtype; softmax is done in float32).
      targets_bt: [B, T] next-token ids; ids at masked-out positions are ignored entirely.
      loss_mask_bt: [B, T] 1 on response tokens (and the end-of-turn token), 0 on prompt/padding;
        other non-negative values weigh their token (the loss is then the weighted mean).

    Returns:
      (loss, num_tokens): float32 scalars. ``loss`` is the mean over masked tokens (0.0 for an
      all-zero mask, no NaN); ``num_tokens`` lets gradient accumulation re-weight micro-batches by
      ``loss * num_tokens / total_tokens``.
    """
    mask = jnp.asarray(loss_mask_bt).astype(jnp.float32)
    # Masked-out targets may be anything (e.g. -1); point them at id 0 so the gather stays in range.
    safe_targets = jnp.where(mask > 0, jnp.asarray(targets_bt), 0)
    nll_bt = -token_logprobs(logits_btv, safe_targets)
    return _masked_mean(nll_bt, mask)


def k3_kl(logprobs_bt, ref_logprobs_bt):
    """Per-token low-variance KL(policy || ref) estimate ("k3"): exp(d) - d - 1, d = ref - logp.

    Non-negative, zero iff the two log-probs agree; unbiased for KL when tokens are sampled from
    the policy.
    """
    return _k3_from_log_ratio(ref_logprobs_bt - logprobs_bt)


def _k3_from_log_ratio(log_ratio):
    return jnp.exp(log_ratio) - log_ratio - 1.0


def policy_gradient_loss(
    logprobs_bt,
    old_logprobs_bt,
    advantages_b,
    mask_bt,
    *,
    clip_eps: float | None,
    ref_logprobs_bt=None,
    kl_coef: float = 0.0,
):
    """Token-level policy-gradient loss with optional PPO/GRPO ratio clipping and k3 KL penalty.

    Per response token t of sequence b (ratio = exp(logp - old_logp), old_logp held constant):

        clip_eps is None:  term = -A_b * ratio
        clip_eps = e:      term = -min(A_b * ratio, A_b * clip(ratio, 1 - e, 1 + e))

    With old_logp == logp (one update per rollout batch) ratio == 1 and the gradient is exactly
    that of ``-A_b * logp`` (REINFORCE with a baseline); the value is ``-A_b`` per token.

    Normalisation: every term is summed over all response tokens of the whole batch and divided
    by the total number of response tokens (``sum(mask)``), i.e. every token weighs the same
    (not a per-sequence mean, which would up-weight the tokens of short responses such as the
    refusal). An all-zero mask gives loss 0 without NaN. Micro-batches can be combined exactly by
    weighting with ``metrics["num_tokens"]``.

    KL: ``kl_coef * mean_tokens(k3_kl(logp, ref_logp))`` against a frozen reference (e.g. the SFT
    model), added to the loss when ``ref_logprobs_bt`` is given.

    Args:
      logprobs_bt: [B, T] log-probs of the sampled tokens under the current policy (differentiated).
      old_logprobs_bt: [B, T] log-probs under the policy that sampled them (gradient stopped).
      advantages_b: [B] one advantage per sequence, broadcast over its tokens.
      mask_bt: [B, T] 1 on response tokens, 0 on prompt and padding.
      clip_eps: trust-region half-width, or None for no clipping.
      ref_logprobs_bt: [B, T] reference-model log-probs (gradient stopped) or None.
      kl_coef: weight of the KL term.

    Returns:
      (loss, metrics) with float32 scalars: pg_loss, kl, clip_fraction (fraction of response
      tokens where the clipped term is active, i.e. that receive no gradient), ratio_mean,
      approx_kl_old (k3 KL between the sampling policy and the current one), advantage_mean
      (per token), num_tokens, loss.
    """
    if clip_eps is not None and not clip_eps > 0:
        raise ValueError(f"clip_eps must be > 0 or None, got {clip_eps!r}")
    if isinstance(kl_coef, (int, float)) and kl_coef != 0 and ref_logprobs_bt is None:
        raise ValueError(f"kl_coef={kl_coef!r} needs ref_logprobs_bt (got None)")

    logprobs = jnp.asarray(logprobs_bt, dtype=jnp.float32)
    old_logprobs = jax.lax.stop_gradient(jnp.asarray(old_logprobs_bt, dtype=jnp.float32))
    mask = jnp.asarray(mask_bt).astype(jnp.float32)
    advantages_bt = jax.lax.stop_gradient(jnp.asarray(advantages_b, dtype=jnp.float32))[:, None]
    if logprobs.shape != old_logprobs.shape or logprobs.shape != mask.shape:
        raise ValueError(
            f"logprobs {logprobs.shape}, old_logprobs {old_logprobs.shape} and mask {mask.shape} "
            "must have the same [B, T] shape"
        )
    if advantages_bt.shape[0] != logprobs.shape[0]:
        raise ValueError(f"advantages_b has {advantages_bt.shape[0]} rows, logprobs has {logprobs.shape[0]}")

    # Padding positions may hold arbitrary log-probs; zero their log-ratio so exp() cannot overflow.
    log_ratio = jnp.where(mask > 0, logprobs - old_logprobs, 0.0)
    ratio = jnp.exp(log_ratio)
    unclipped = advantages_bt * ratio
    if clip_eps is None:
        surrogate = unclipped
        clipped_active = jnp.zeros_like(ratio, dtype=bool)
    else:
        clipped = advantages_bt * jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
        surrogate = jnp.minimum(unclipped, clipped)
        clipped_active = ((advantages_bt > 0) & (ratio > 1.0 + clip_eps)) | (
            (advantages_bt < 0) & (ratio < 1.0 - clip_eps)
        )
    pg_loss, num_tokens = _masked_mean(-surrogate, mask)

    if ref_logprobs_bt is None:
        kl = jnp.zeros((), jnp.float32)
    else:
        ref_logprobs = jax.lax.stop_gradient(jnp.asarray(ref_logprobs_bt, dtype=jnp.float32))
        # Masked so that arbitrary values at padding cannot overflow exp() into inf * 0 = NaN.
        ref_log_ratio = jnp.where(mask > 0, ref_logprobs - logprobs, 0.0)
        kl, _ = _masked_mean(_k3_from_log_ratio(ref_log_ratio), mask)
    loss = pg_loss + kl_coef * kl

    stop = jax.lax.stop_gradient
    metrics = {
        "loss": stop(loss),
        "pg_loss": stop(pg_loss),
        "kl": stop(kl),
        "clip_fraction": stop(_masked_mean(clipped_active.astype(jnp.float32), mask)[0]),
        "ratio_mean": stop(_masked_mean(ratio, mask)[0]),
        "approx_kl_old": stop(_masked_mean(_k3_from_log_ratio(-log_ratio), mask)[0]),
        "advantage_mean": _masked_mean(jnp.broadcast_to(advantages_bt, mask.shape), mask)[0],
        "num_tokens": num_tokens,
    }
    return loss, metrics
