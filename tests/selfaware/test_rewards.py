"""Tests for the scenario reward, group advantages and the SFT / policy-gradient losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from disrouter_jax.generation.sampling import token_logprobs
from disrouter_jax.selfaware import rewards as R


# ------------------------------------------------------------------ reward


def test_refusal_reward_values():
    assert R.refusal_reward(0.5) == pytest.approx(0.5**0.5)
    assert R.refusal_reward(0.2, 0.5) == pytest.approx(0.8**0.5)
    assert R.refusal_reward(0.8, gamma=1.0) == pytest.approx(0.2)
    assert R.refusal_reward(0.0) == 1.0 and R.refusal_reward(1.0) == 0.0
    np.testing.assert_allclose(R.refusal_reward(jnp.array([0.2, 0.5, 0.8])), np.array([0.8, 0.5, 0.2]) ** 0.5,
                               rtol=1e-6)


@pytest.mark.parametrize("alpha,gamma", [(-0.1, 0.5), (1.5, 0.5), (0.5, 0.0), (0.5, -1.0)])
def test_refusal_reward_rejects_bad_scalars(alpha, gamma):
    with pytest.raises(ValueError):
        R.refusal_reward(alpha, gamma)


def test_refusal_reward_falls_as_alpha_rises():
    alphas = jnp.linspace(0.0, 1.0, 11)
    assert bool(jnp.all(jnp.diff(R.refusal_reward(alphas)) < 0))


def test_scenario_reward_batch():
    correct = jnp.array([True, False, False, True])
    refused = jnp.array([False, False, True, True])
    alpha = jnp.array([0.5, 0.5, 0.2, 0.8])
    got = R.scenario_reward(correct, refused, alpha, 0.5)
    np.testing.assert_allclose(got, [1.0, 0.0, 0.8**0.5, 0.2**0.5], rtol=1e-6)
    assert got.dtype == jnp.float32
    jitted = jax.jit(R.scenario_reward)(correct, refused, alpha, 0.5)
    np.testing.assert_allclose(jitted, got, rtol=1e-6)


def test_optimum_answers_iff_p_above_threshold_brute_force():
    """Grid search over stochastic policies pi(answer) in [0, 1] for each (p, alpha, gamma): the
    reward-maximising pi is 1 exactly when p > (1 - alpha) ** gamma and 0 when p < it."""
    policies = np.linspace(0.0, 1.0, 11)
    checked_both_sides = set()
    for gamma in (0.5, 1.0, 2.0):
        for alpha in np.linspace(0.05, 0.95, 19):
            threshold = R.answer_threshold(alpha, gamma)
            # Expected reward built from the scenario reward itself, not from the closed form.
            r_correct, r_wrong, r_refuse = np.asarray(
                R.scenario_reward(jnp.array([True, False, False]), jnp.array([False, False, True]), alpha, gamma),
                np.float64)
            for p in np.linspace(0.0, 1.0, 41):
                if abs(p - threshold) < 1e-6:
                    continue  # tie (up to float32 reward precision): every policy is optimal
                value = policies * (p * r_correct + (1 - p) * r_wrong) + (1 - policies) * r_refuse
                best = policies[np.argmax(value)]
                assert best == (1.0 if p > threshold else 0.0), (p, alpha, gamma)
                assert bool(R.optimal_answer(p, alpha, gamma)) == (best == 1.0)
                np.testing.assert_allclose(value, R.expected_reward(p, policies, alpha, gamma), rtol=1e-5)
                checked_both_sides.add(best)
    assert checked_both_sides == {0.0, 1.0}


def test_rl_threshold_is_above_sft_delta_for_gamma_below_one():
    for alpha in (0.2, 0.5, 0.8):
        assert R.answer_threshold(alpha, 0.5) > 1 - alpha


# ------------------------------------------------------------------ advantages


def test_group_advantages_mean_baseline():
    rewards = jnp.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    adv = R.group_advantages(rewards, normalize=False)
    np.testing.assert_allclose(adv, [[0.5, -0.5, -0.5, 0.5], [0.25, 0.25, 0.25, -0.75]], atol=1e-7)
    np.testing.assert_allclose(adv.sum(axis=-1), 0.0, atol=1e-6)


def test_group_advantages_normalized_has_unit_std():
    rewards = jnp.array([[1.0, 0.0, 0.3, 0.7], [0.2, 0.9, 0.9, 0.0]])
    adv = R.group_advantages(rewards, normalize=True, eps=0.0)
    np.testing.assert_allclose(adv.std(axis=-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(adv.mean(axis=-1), 0.0, atol=1e-6)


def test_group_advantages_zero_variance_groups_are_zero_not_nan():
    r = float(R.refusal_reward(0.5))  # 0.7071..., whose 3-way mean is not exactly itself in float32
    rewards = jnp.array([[r, r, r], [0.0, 0.0, 0.0], [1.0, 0.0, 1.0]])
    for normalize in (False, True):
        adv = R.group_advantages(rewards, normalize=normalize)
        assert bool(jnp.all(jnp.isfinite(adv)))
        np.testing.assert_array_equal(adv[:2], 0.0)
        assert float(jnp.abs(adv[2]).sum()) > 0
    single = R.group_advantages(jnp.array([[0.3], [1.0]]), normalize=True)
    np.testing.assert_array_equal(single, 0.0)


def test_group_advantages_jittable_and_shape_check():
    rewards = jnp.array([[1.0, 0.0], [0.5, 0.5]])
    f = jax.jit(lambda r: R.group_advantages(r, normalize=True))
    np.testing.assert_allclose(f(rewards), R.group_advantages(rewards, normalize=True))
    with pytest.raises(ValueError, match=r"\[B, G\]"):
        R.group_advantages(jnp.ones(3), normalize=False)


# ------------------------------------------------------------------ greedy hits / SFT loss


def _random_logits(key, shape, dtype=jnp.float32):
    return (3.0 * jax.random.normal(key, shape)).astype(dtype)


def test_greedy_hits_agrees_with_argmax_and_counts_ties_as_hits():
    logits = _random_logits(jax.random.PRNGKey(2), (3, 5, 11))
    targets = jax.random.randint(jax.random.PRNGKey(3), (3, 5), 0, 11)
    targets = targets.at[0, :2].set(jnp.argmax(logits[0, :2], axis=-1))  # some certain hits
    got = np.asarray(R.greedy_hits(logits, targets))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(logits, axis=-1) == targets))
    assert got[0, :2].all() and not got.all()
    tied = jnp.zeros((1, 2, 4)).at[0, 0, jnp.array([1, 3])].set(2.0)
    np.testing.assert_array_equal(R.greedy_hits(tied, jnp.array([[3, 1]])), [[True, True]])
    np.testing.assert_array_equal(R.greedy_hits(tied, jnp.array([[0, 1]])), [[False, True]])


def test_masked_cross_entropy_averages_only_masked_tokens():
    logits = _random_logits(jax.random.PRNGKey(1), (2, 4, 5))
    targets = jnp.array([[1, 2, 3, 4], [0, 0, 1, 1]])
    mask = jnp.array([[0, 1, 1, 0], [0, 0, 0, 1]], jnp.float32)
    loss, num_tokens = R.masked_cross_entropy(logits, targets, mask)
    nll = -np.asarray(token_logprobs(logits, targets))
    assert float(num_tokens) == 3.0
    np.testing.assert_allclose(loss, (nll[0, 1] + nll[0, 2] + nll[1, 3]) / 3, rtol=1e-6)
    # Masked positions do not matter: change their logits and targets (even to an invalid id).
    logits2 = logits.at[0, 0].set(100.0).at[1, :3].set(-50.0)
    targets2 = targets.at[0, 3].set(-1).at[1, 0].set(999)
    loss2, _ = R.masked_cross_entropy(logits2, targets2, mask)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_masked_cross_entropy_gradient_only_on_masked_positions():
    logits = _random_logits(jax.random.PRNGKey(2), (1, 4, 5))
    targets = jnp.array([[1, 2, 3, 4]])
    mask = jnp.array([[0, 1, 0, 1]], jnp.float32)
    grad = jax.grad(lambda lg: R.masked_cross_entropy(lg, targets, mask)[0])(logits)
    norms = np.abs(np.asarray(grad)).sum(axis=-1)[0]
    assert norms[0] == 0 and norms[2] == 0 and norms[1] > 0 and norms[3] > 0


def test_masked_cross_entropy_empty_mask_is_zero_without_nan():
    logits = _random_logits(jax.random.PRNGKey(3), (2, 3, 4))
    targets = jnp.zeros((2, 3), jnp.int32)
    mask = jnp.zeros((2, 3))
    loss, num_tokens = jax.jit(R.masked_cross_entropy)(logits, targets, mask)
    assert float(loss) == 0.0 and float(num_tokens) == 0.0
    grad = jax.grad(lambda lg: R.masked_cross_entropy(lg, targets, mask)[0])(logits)
    assert bool(jnp.all(grad == 0))


# ------------------------------------------------------------------ policy gradient loss


def _pg(logprobs, old, adv, mask, **kw):
    return R.policy_gradient_loss(logprobs, old, adv, mask, **kw)


def test_pg_reduces_to_reinforce_when_unclipped_and_on_policy():
    logp = jnp.log(jnp.array([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]]))
    adv = jnp.array([1.5, -0.5])
    mask = jnp.array([[1, 1, 0], [1, 1, 1]], jnp.float32)
    loss, metrics = _pg(logp, logp, adv, mask, clip_eps=None)
    np.testing.assert_allclose(loss, -(2 * 1.5 + 3 * -0.5) / 5, rtol=1e-6)
    grad = jax.grad(lambda lp: _pg(lp, logp, adv, mask, clip_eps=None)[0])(logp)
    reinforce = jax.grad(lambda lp: -jnp.sum(adv[:, None] * lp * mask) / jnp.sum(mask))(logp)
    np.testing.assert_allclose(grad, reinforce, rtol=1e-6)
    assert float(metrics["clip_fraction"]) == 0.0 and float(metrics["num_tokens"]) == 5.0


def test_pg_gradient_step_raises_logprob_of_positive_advantage_tokens():
    """Toy policy: one softmax over 3 tokens. A gradient step on the loss must raise the
    probability of the token sampled with positive advantage and lower the negative one."""
    params = jnp.zeros(3)
    sampled = jnp.array([[0], [1]])  # two one-token "responses"
    adv = jnp.array([1.0, -1.0])
    mask = jnp.ones((2, 1))

    def logprobs_of(p):
        return jax.nn.log_softmax(p)[sampled]

    for clip_eps in (None, 0.2):
        old = logprobs_of(params)
        grad = jax.grad(lambda p: _pg(logprobs_of(p), old, adv, mask, clip_eps=clip_eps)[0])(params)
        new_probs = jax.nn.softmax(params - 0.5 * grad)
        assert float(new_probs[0]) > 1 / 3 > float(new_probs[1]), clip_eps


@pytest.mark.parametrize("advantage,log_ratio,clipped", [
    (1.0, 0.5, True),    # ratio 1.65 > 1 + eps with A > 0: no more push up
    (1.0, -0.5, False),  # ratio below the band with A > 0: still pushed up
    (-1.0, -0.5, True),  # ratio 0.61 < 1 - eps with A < 0: no more push down
    (-1.0, 0.5, False),  # ratio above the band with A < 0: still pushed down
    (1.0, 0.1, False),   # inside the trust region
])
def test_pg_clipping_stops_gradient_outside_trust_region(advantage, log_ratio, clipped):
    old = jnp.log(jnp.array([[0.3]]))
    logp = old + log_ratio
    adv = jnp.array([advantage])
    mask = jnp.ones((1, 1))
    grad = jax.grad(lambda lp: _pg(lp, old, adv, mask, clip_eps=0.2)[0])(logp)
    _, metrics = _pg(logp, old, adv, mask, clip_eps=0.2)
    if clipped:
        assert float(grad[0, 0]) == 0.0
        assert float(metrics["clip_fraction"]) == 1.0
    else:
        assert float(grad[0, 0]) != 0.0 and np.sign(float(grad[0, 0])) == -np.sign(advantage)
        assert float(metrics["clip_fraction"]) == 0.0
    unclipped_grad = jax.grad(lambda lp: _pg(lp, old, adv, mask, clip_eps=None)[0])(logp)
    assert float(unclipped_grad[0, 0]) != 0.0


def test_pg_kl_zero_at_reference_and_positive_elsewhere():
    logp = jnp.log(jnp.array([[0.5, 0.2, 0.9]]))
    adv = jnp.array([0.0])
    mask = jnp.ones((1, 3))
    loss, metrics = _pg(logp, logp, adv, mask, clip_eps=0.2, ref_logprobs_bt=logp, kl_coef=0.1)
    assert float(metrics["kl"]) == 0.0 and float(loss) == 0.0
    ref = logp + jnp.array([[0.3, -0.4, 0.1]])
    loss, metrics = _pg(logp, logp, adv, mask, clip_eps=0.2, ref_logprobs_bt=ref, kl_coef=0.1)
    d = np.array([0.3, -0.4, 0.1])
    expected_kl = np.mean(np.exp(d) - d - 1)
    np.testing.assert_allclose(metrics["kl"], expected_kl, rtol=1e-5)
    np.testing.assert_allclose(loss, 0.1 * expected_kl, rtol=1e-5)
    assert float(metrics["kl"]) > 0
    # The KL gradient pulls log-probs toward the reference.
    grad = jax.grad(lambda lp: _pg(lp, logp, adv, mask, clip_eps=None, ref_logprobs_bt=ref, kl_coef=1.0)[0])(logp)
    assert np.all(np.sign(np.asarray(grad)) == -np.sign(d))


def test_pg_kl_coef_without_reference_is_an_error():
    x = jnp.zeros((1, 2))
    with pytest.raises(ValueError, match="ref_logprobs_bt"):
        _pg(x, x, jnp.zeros(1), jnp.ones((1, 2)), clip_eps=None, kl_coef=0.1)
    with pytest.raises(ValueError, match="clip_eps"):
        _pg(x, x, jnp.zeros(1), jnp.ones((1, 2)), clip_eps=0.0)


def test_pg_masked_tokens_are_ignored_and_empty_mask_is_safe():
    logp = jnp.log(jnp.array([[0.5, 0.2, 0.9], [0.3, 0.6, 0.1]]))
    old = logp - 0.05
    ref = logp + 0.2
    adv = jnp.array([1.0, -2.0])
    mask = jnp.array([[1, 1, 0], [0, 1, 1]], jnp.float32)
    kw = dict(clip_eps=0.2, ref_logprobs_bt=ref, kl_coef=0.05)
    loss, metrics = _pg(logp, old, adv, mask, **kw)
    # Garbage (huge) values at masked positions change nothing and cannot produce inf/NaN.
    junk = jnp.array([[0, 0, 1], [1, 0, 0]], bool)
    loss2, metrics2 = _pg(jnp.where(junk, 80.0, logp), jnp.where(junk, -80.0, old), adv, mask,
                          clip_eps=0.2, ref_logprobs_bt=jnp.where(junk, 90.0, ref), kl_coef=0.05)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    for name in ("pg_loss", "kl", "clip_fraction", "ratio_mean", "approx_kl_old"):
        np.testing.assert_allclose(metrics2[name], metrics[name], rtol=1e-6, err_msg=name)
    grad = jax.grad(lambda lp: _pg(lp, old, adv, mask, **kw)[0])(logp)
    assert bool(jnp.all(jnp.where(mask > 0, True, grad == 0)))

    loss0, metrics0 = jax.jit(lambda lp: _pg(lp, old, adv, jnp.zeros_like(mask), **kw))(logp)
    assert float(loss0) == 0.0 and all(bool(jnp.isfinite(v)) for v in metrics0.values())


def test_pg_token_level_normalisation_weights_every_token_equally():
    """Sequence 0 has 1 response token, sequence 1 has 3: the loss is the mean over 4 tokens."""
    logp = jnp.zeros((2, 3))
    adv = jnp.array([1.0, 3.0])
    mask = jnp.array([[1, 0, 0], [1, 1, 1]], jnp.float32)
    loss, _ = _pg(logp, logp, adv, mask, clip_eps=None)
    np.testing.assert_allclose(loss, -(1.0 + 3 * 3.0) / 4, rtol=1e-6)


def test_pg_is_jittable_with_static_options():
    logp = jnp.log(jnp.array([[0.5, 0.2]]))
    f = jax.jit(lambda lp, old, a, m, ref: R.policy_gradient_loss(lp, old, a, m, clip_eps=0.2,
                                                                  ref_logprobs_bt=ref, kl_coef=0.1))
    loss, metrics = f(logp, logp - 0.1, jnp.array([1.0]), jnp.ones((1, 2)), logp + 0.1)
    eager, _ = R.policy_gradient_loss(logp, logp - 0.1, jnp.array([1.0]), jnp.ones((1, 2)), clip_eps=0.2,
                                      ref_logprobs_bt=logp + 0.1, kl_coef=0.1)
    np.testing.assert_allclose(loss, eager, rtol=1e-6)
    assert set(metrics) >= {"loss", "pg_loss", "kl", "clip_fraction", "num_tokens"}
