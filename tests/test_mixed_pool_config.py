"""configs/eval_mixed_pool.py: a paper-setup pool of Qwen2.5, Llama and Qwen3 agents in cost order."""

import pytest

from disrouter_jax.agents import AgentSpec
from tests.conftest import load_config_module


def _module():
    return load_config_module("eval_mixed_pool.py")


def test_the_mixed_pool_config_lists_three_families_in_cost_order():
    config = _module().get_config()
    specs = [AgentSpec.from_dict(a) for a in config.pool.agents]
    assert [s.cost for s in specs] == sorted(s.cost for s in specs)
    assert {s.path.split("/")[1].split("-")[0] for s in specs} == {"Qwen2.5", "Qwen3", "Llama"}
    assert config.eval.alphas == (0.2, 0.5, 0.8) and config.setup == "paper"
    with pytest.raises(ValueError, match="only 'paper'"):
        _module().get_config("toy")
