"""Per-query router features: mean-pooled hidden states, independent of padding and batching."""

import numpy as np
import pytest
from flax import nnx

from disrouter_jax.cascade import features
from disrouter_jax.cascade.engine import answer_features
from disrouter_jax.models import qwen2


def test_mean_pooled_hidden_states_match_the_unpadded_forward(tiny_checkpoint):
    model = qwen2.from_pretrained(tiny_checkpoint("gqa2"))
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, model.config.vocab_size, size=n).tolist() for n in (3, 17, 9)]
    pooled = features.mean_pooled_hidden_states(model, prompts, batch_size=2)
    assert pooled.shape == (3, model.config.hidden_size) and pooled.dtype == np.float32
    reference = nnx.jit(lambda m, ids: m.hidden_states(ids))  # one unpadded prompt at a time
    for prompt, row in zip(prompts, pooled):
        want = np.asarray(reference(model, np.asarray([prompt], np.int32)))[0].mean(axis=0)
        np.testing.assert_allclose(row, want, rtol=1e-4, atol=1e-5)
    # Another batch size (other padding and grouping) gives the same features.
    np.testing.assert_allclose(features.mean_pooled_hidden_states(model, prompts, batch_size=4), pooled,
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="non-empty"):
        features.mean_pooled_hidden_states(model, [[]])


def test_answer_features_summarise_confidence_and_length():
    mean, low, log_len, truncated = answer_features(np.array([-0.1, -2.0, -0.3]), 4, "stop")
    assert mean == pytest.approx(-0.8) and low == pytest.approx(-2.0)
    assert log_len == pytest.approx(np.log1p(4)) and truncated == 0.0
    assert answer_features(np.array([]), 0, "length") == (0.0, 0.0, 0.0, 1.0)
