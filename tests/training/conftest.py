"""Shared pieces for the training tests: one tiny model, fixed batches, and step functions built
once per session (each jitted step compiles once per state structure and batch shape)."""

import numpy as np
import pytest

from disrouter_jax.training.optim import OptimConfig
from disrouter_jax.training.sft import TokenBatch, make_sft_step

# A constant learning rate large enough that a few steps visibly move a tiny random model.
# eps = 1e-3 keeps Adam well conditioned: it divides by sqrt(v) + eps, which would otherwise turn
# the float rounding of a near-zero gradient entry into an O(lr) parameter difference, and the
# mesh-vs-one-device and micro-batch comparisons compare parameters after Adam steps.
SFT_OPTIM = OptimConfig(learning_rate=1e-2, total_steps=100, decay="constant", max_grad_norm=1.0, eps=1e-3)


def sft_batch(rows: int = 4, width: int = 8, prompt_len: int = 4, vocab: int = 97, seed: int = 0) -> TokenBatch:
    """Random token rows; the first ``prompt_len - 1`` positions predict prompt tokens (mask 0),
    row r has ``r`` right-padding positions (mask 0) so rows hold different token counts."""
    rng = np.random.default_rng(seed)
    seq = rng.integers(0, vocab, (rows, width + 1)).astype(np.int32)
    mask = np.zeros((rows, width), np.float32)
    for r in range(rows):
        mask[r, prompt_len - 1: width - (r % (width - prompt_len))] = 1.0
    return TokenBatch(seq[:, :-1], seq[:, 1:], mask)


@pytest.fixture(scope="session")
def gqa2_path(tiny_checkpoint):
    return tiny_checkpoint("gqa2")


@pytest.fixture(scope="session")
def sft_step():
    """The SFT step for ``SFT_OPTIM`` (shared so that tests reuse its compiled program)."""
    return make_sft_step(SFT_OPTIM)
