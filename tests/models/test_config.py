import json

import pytest

from disrouter_jax.models.families import Qwen2Config

BASE = dict(model_type="qwen2", vocab_size=100, hidden_size=64, intermediate_size=128,
            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def test_rope_parameters_and_legacy_rope_theta_are_both_read():
    new = Qwen2Config.from_hf_dict({**BASE, "rope_parameters": {"rope_type": "default", "rope_theta": 1e6}})
    legacy = Qwen2Config.from_hf_dict({**BASE, "rope_theta": 12345.0})
    assert new.rope_theta == 1e6
    assert legacy.rope_theta == 12345.0
    assert new.head_dim == 16 and new.num_kv_heads == 2


def test_qwen25_7b_config_as_released():
    # Field values of Qwen/Qwen2.5-7B-Instruct's config.json (legacy form with rope_theta).
    hf = dict(architectures=["Qwen2ForCausalLM"], attention_dropout=0.0, bos_token_id=151643,
              eos_token_id=151645, hidden_act="silu", hidden_size=3584, initializer_range=0.02,
              intermediate_size=18944, max_position_embeddings=32768, max_window_layers=28,
              model_type="qwen2", num_attention_heads=28, num_hidden_layers=28,
              num_key_value_heads=4, rms_norm_eps=1e-06, rope_theta=1000000.0, sliding_window=131072,
              tie_word_embeddings=False, torch_dtype="bfloat16", transformers_version="4.43.1",
              use_cache=True, use_sliding_window=False, vocab_size=152064)
    config = Qwen2Config.from_hf_dict(hf)
    assert (config.head_dim, config.num_heads, config.num_kv_heads) == (128, 28, 4)
    assert 7.0e9 < config.num_params < 7.8e9


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"use_sliding_window": True, "sliding_window": 4096}, "sliding-window"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding-window"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}}, "yarn"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "dynamic"),
        ({"hidden_act": "gelu"}, "gelu"),
        ({"model_type": "llama"}, "llama"),
    ],
)
def test_unsupported_settings_raise(extra, message):
    with pytest.raises(ValueError, match=message):
        Qwen2Config.from_hf_dict({**BASE, **extra})


def test_missing_field_and_bad_json_name_the_file(tmp_path):
    broken = dict(BASE)
    del broken["hidden_size"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"config\.json.*hidden_size"):
        Qwen2Config.from_json(path)
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        Qwen2Config.from_json(path)


def test_round_trip_through_hf_dict():
    config = Qwen2Config.from_hf_dict({**BASE, "rope_theta": 5e5, "tie_word_embeddings": True,
                                       "eos_token_id": [3, 4]})
    assert Qwen2Config.from_hf_dict(config.to_hf_dict()) == config
