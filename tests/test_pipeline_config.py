"""The Self-Awareness Training defaults of the two setups (configs/common.py): one recipe, and the
toy setup differs from the paper's only in the sizes its overlay lists."""

import pytest

from tests.conftest import load_config_module


def _common():
    return load_config_module("common.py")


def _flat(config, prefix=""):
    out = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_flat(value, path + "."))
        else:
            out[path] = value
    return out


def test_paper_setup_keeps_the_papers_training():
    c = _common().get_base_config("paper")
    assert c.label.num_samples == 8
    assert c.sft.balance == 0.5
    assert c.rl.gamma == 0.5
    assert c.sft.num_examples == 10_000
    assert c.stages == ("label", "sft", "rl")


def test_the_toy_overlay_changes_only_its_own_keys():
    common = _common()
    paper, toy = _flat(common.get_base_config("paper")), _flat(common.get_base_config("toy"))
    assert paper.keys() == toy.keys()
    changed = {k for k in paper if paper[k] != toy[k]} - {"setup"}
    assert changed <= set(common.TOY_OVERLAY)
    # The recipe itself is shared: labelling, balance, reward, regulariser, what is trained.
    for key in ("label.num_samples", "sft.balance", "sft.replay_fraction", "rl.gamma", "rl.group_size",
                "rl.normalize_advantages", "rl.kl_coef", "lora.enabled", "stages"):
        assert key not in common.TOY_OVERLAY and toy[key] == paper[key]


def test_an_overlay_key_the_config_lacks_is_named():
    common = _common()
    with pytest.raises(KeyError, match="sft.no_such_field"):
        common.apply_overlay(common.get_base_config("paper"), {"sft.no_such_field": 1})


def test_toy_rl_rows_fit_the_first_bucket():
    c = _common().get_base_config("toy")
    assert c.sft.length_buckets[0] >= 100 + c.rl.max_new_tokens
