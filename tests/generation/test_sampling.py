"""The sampler on logits we choose: greedy, temperature, top-k and nucleus support, log-probs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from disrouter_jax.generation import sampling
from disrouter_jax.generation.sampling import SamplingMode

PROBS = np.array([0.35, 0.25, 0.15, 0.1, 0.05, 0.04, 0.03, 0.02, 0.01])
LOGITS = np.log(PROBS).astype(np.float32) + 3.0  # a shift changes nothing
DRAWS = 4000


@functools.partial(jax.jit, static_argnames=("mode",))
def _draw(seed, temperature, top_p, mode):
    logits_bv = jnp.tile(jnp.asarray(LOGITS), (DRAWS, 1))
    keys = jax.random.split(jax.random.key(seed), DRAWS)
    return sampling.sample_tokens(logits_bv, keys, temperature, top_p, mode)


def draw(temperature, top_k, top_p, seed=0):
    """DRAWS independent tokens from LOGITS."""
    mode = SamplingMode.from_params(temperature, top_k, top_p)
    return np.asarray(_draw(seed, np.float32(temperature or 1.0), np.float32(top_p), mode))


def frequencies(tokens):
    return np.bincount(tokens, minlength=len(PROBS)) / len(tokens)


def test_plain_sampling_follows_the_distribution():
    freq = frequencies(draw(1.0, 0, 1.0))
    np.testing.assert_allclose(freq, PROBS, atol=0.03)
    assert freq[-1] > 0  # the tail is reachable


@pytest.mark.parametrize("top_k, top_p, support", [
    (3, 1.0, [0, 1, 2]),
    (0, 0.7, [0, 1, 2]),   # mass before token 2 is 0.60 < 0.7, before token 3 it is 0.75
    (0, 0.55, [0, 1]),
    (3, 0.55, [0, 1]),
    (0, 0.01, [0]),        # the most likely token is always kept
])
def test_top_k_and_top_p_restrict_the_support(top_k, top_p, support):
    freq = frequencies(draw(1.0, top_k, top_p))
    assert set(np.flatnonzero(freq)) == set(support)
    expected = PROBS[support] / PROBS[support].sum()
    np.testing.assert_allclose(freq[support], expected, atol=0.03)


def test_temperature_sharpens_and_tends_to_greedy():
    cold = frequencies(draw(0.5, 0, 1.0))
    tempered = PROBS**2 / (PROBS**2).sum()
    np.testing.assert_allclose(cold, tempered, atol=0.03)
    assert set(draw(1e-6, 0, 1.0)) == {0}
    assert set(draw(0.0, 5, 0.3)) == {0}  # greedy ignores top-k/top-p


def test_same_keys_same_tokens_other_keys_other_tokens():
    np.testing.assert_array_equal(draw(1.0, 0, 0.9, seed=1), draw(1.0, 0, 0.9, seed=1))
    assert (draw(1.0, 0, 0.9, seed=1) != draw(1.0, 0, 0.9, seed=2)).any()


def test_token_logprobs_are_log_softmax():
    logits = jnp.asarray(np.stack([LOGITS, LOGITS[::-1]]))
    got = sampling.token_logprobs(logits, jnp.array([0, 0]))
    np.testing.assert_allclose(got, np.log([PROBS[0], PROBS[-1]]), rtol=1e-5)


def test_token_logprobs_of_training_positions_match_log_softmax_in_float32():
    # The train step's [B, T, V] bfloat16 logits: the other side of the RL ratio, same function.
    logits = (3.0 * jax.random.normal(jax.random.PRNGKey(0), (2, 3, 7))).astype(jnp.bfloat16)
    targets = jnp.array([[0, 6, 3], [2, 2, 5]])
    got = sampling.token_logprobs(logits, targets)
    assert got.dtype == jnp.float32 and got.shape == (2, 3)
    ref = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float32), axis=-1))
    expected = np.take_along_axis(ref, np.asarray(targets)[..., None], axis=-1)[..., 0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # Its gradient is log-softmax's, one-hot(target) - softmax: the max it subtracts is constant.
    x = np.asarray(logits, np.float32)
    grad = jax.grad(lambda v: sampling.token_logprobs(v, targets).sum())(jnp.asarray(x))
    want = np.eye(7)[np.asarray(targets)] - np.asarray(jax.nn.softmax(x, axis=-1))
    np.testing.assert_allclose(grad, want, rtol=1e-5, atol=1e-6)


def test_row_keys_depend_only_on_seed_prompt_and_sample():
    a = sampling.row_keys(3, jnp.array([0, 1, 1]), jnp.array([0, 0, 1]))
    b = sampling.row_keys(3, jnp.array([1, 0]), jnp.array([1, 0]))
    data = jax.random.key_data
    np.testing.assert_array_equal(data(a[2]), data(b[0]))
    np.testing.assert_array_equal(data(a[0]), data(b[1]))
    assert len({tuple(np.asarray(data(k))) for k in a}) == 3


@pytest.mark.parametrize("kw, match", [(dict(temperature=-1.0), "temperature"),
                                        (dict(top_k=-2), "top_k"), (dict(top_k=1.5), "top_k"),
                                        (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p")])
def test_invalid_parameters_are_rejected(kw, match):
    args = dict(temperature=1.0, top_k=0, top_p=1.0) | kw
    with pytest.raises(ValueError, match=match):
        SamplingMode.from_params(**args)


def test_first_max_index_is_argmax_with_its_tie_and_nan_rules():
    x = jax.random.normal(jax.random.key(0), (64, 1000))
    x = x.at[3, 7].set(9.0).at[3, 900].set(9.0)  # tie: the first index wins
    x = x.at[5, 20].set(jnp.nan).at[5, 30].set(jnp.nan)  # NaN: the first NaN wins
    got = sampling.first_max_index(x)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, jnp.argmax(x, axis=-1))
    assert int(got[3]) == 7 and int(got[5]) == 20


@pytest.mark.parametrize("top_k", [0, 3])
def test_samples_are_jax_random_categorical_draws(top_k):
    """The sampler's Gumbel-max draw reproduces jax.random.categorical bit for bit, so a seed
    samples what it sampled before the faster argmax."""
    logits_bv = jax.random.normal(jax.random.key(1), (256, 50)) * 3.0
    keys = jax.random.split(jax.random.key(2), 256)
    mode = SamplingMode(greedy=False, top_k=top_k, use_top_p=False)
    got = sampling.sample_tokens(logits_bv, keys, 1.0, 1.0, mode)
    candidates, ids = sampling.truncate_logits(logits_bv, 1.0, 1.0, mode)
    expected = jax.vmap(jax.random.categorical)(keys, candidates)
    if ids is not None:
        expected = jnp.take_along_axis(ids, expected[:, None], axis=-1)[:, 0]
    np.testing.assert_array_equal(got, expected)
    assert len(np.unique(np.asarray(got))) > 1


def test_greedy_pick_and_its_logprob_are_argmax_and_log_softmax():
    logits = jax.random.normal(jax.random.key(0), (6, 1000)) * 4
    logits = logits.at[1, 7].set(logits[1].max()).at[1, 9].set(logits[1].max())  # a tie: first index
    tokens, logprobs = jax.jit(sampling.greedy_tokens)(logits)
    np.testing.assert_array_equal(tokens, jnp.argmax(logits, axis=-1))
    want = jnp.take_along_axis(jax.nn.log_softmax(logits, axis=-1), tokens[:, None], axis=-1)[:, 0]
    np.testing.assert_allclose(logprobs, want, rtol=1e-6, atol=1e-6)
    # Any token, not only the greedy one.
    other = jnp.array([0, 5, 999, 3, 3, 1])
    np.testing.assert_allclose(sampling.token_logprobs(logits, other),
                               jnp.take_along_axis(jax.nn.log_softmax(logits, -1), other[:, None], -1)[:, 0],
                               rtol=1e-6, atol=1e-6)
