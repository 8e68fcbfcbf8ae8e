"""The Self-Awareness Training defaults of the two setups (configs/common.py)."""

import pytest

from tests.conftest import load_config_module


def _common():
    return load_config_module("common.py")


def test_paper_setup_keeps_the_papers_training():
    c = _common().get_base_config("paper")
    assert c.sft.refusal_weight_gamma == 0.0  # unweighted SFT targets, balanced 50/50
    assert c.sft.balance == 0.5
    assert c.rl.normalize_advantages is True
    assert c.rl.gamma == 0.5


@pytest.mark.parametrize("alpha", [0.2, 0.5, 0.8])
def test_toy_setup_weights_refusals_by_scenario_and_keeps_raw_advantages(alpha):
    from disrouter_jax.selfaware.data import sft_refusal_weight

    c = _common().get_base_config("toy")
    assert c.rl.normalize_advantages is False
    assert 0.0 < sft_refusal_weight(alpha, c.sft.refusal_weight_gamma) < 1.0
    # RL sequences (prompt + generated tokens) fit the first bucket with room for the prompts.
    assert c.sft.length_buckets[0] >= 125 + c.rl.max_new_tokens
