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
    # The model card's "7.61B", counted by hand: embeddings and the untied head 2 x 152064 x 3584;
    # per layer q 3584^2 + 3584, k and v 3584 x 512 + 512 each, o 3584^2, MLP 3 x 3584 x 18944,
    # two norms 2 x 3584 (= 233,057,792), times 28; the final norm 3584.
    assert config.num_params == 2 * 152064 * 3584 + 28 * 233_057_792 + 3584 == 7_615_616_512


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


# ----------------------------------------------------------------------------- families

from disrouter_jax.models import families  # noqa: E402
from disrouter_jax.models.config import ConfigError, Llama3RopeScaling  # noqa: E402


def test_released_configs_select_their_family():
    # Field values of the released config.json files (legacy top-level rope fields where they had them).
    llama31 = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256, hidden_size=4096,
                   intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                   max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
                   rope_scaling=dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                     original_max_position_embeddings=8192, rope_type="llama3"),
                   tie_word_embeddings=False, attention_bias=False, mlp_bias=False, bos_token_id=128000,
                   eos_token_id=[128001, 128008, 128009], pretraining_tp=1, head_dim=128)
    config = families.config_from_hf_dict(llama31)
    assert type(config) is families.LlamaConfig and config.rope_theta == 500000.0
    assert config.rope_scaling == Llama3RopeScaling(8.0, 1.0, 4.0, 8192)
    assert config.eos_token_id == (128001, 128008, 128009) and 7.9e9 < config.num_params < 8.1e9

    qwen3_8b = dict(architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=151936, hidden_size=4096,
                    intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
                    head_dim=128, rope_theta=1000000, sliding_window=None, use_sliding_window=False,
                    max_window_layers=36, tie_word_embeddings=False, attention_bias=False)
    config = families.config_from_hf_dict(qwen3_8b)
    assert type(config) is families.Qwen3Config and config.qk_norm and not config.attention_bias
    assert 8.0e9 < config.num_params < 8.4e9
    # Qwen3 without head_dim: transformers' 128, not hidden / heads.
    no_head_dim = {k: v for k, v in qwen3_8b.items() if k != "head_dim"}
    assert families.config_from_hf_dict({**no_head_dim, "hidden_size": 1024}).head_dim == 128

    mistral = dict(architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
                   intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                   rope_theta=10000.0, sliding_window=4096)
    assert families.config_from_hf_dict(mistral).sliding_window == 4096  # Mistral-7B-v0.1
    assert families.config_from_hf_dict({**mistral, "sliding_window": None}).sliding_window is None  # v0.3
    del mistral["sliding_window"]
    assert families.config_from_hf_dict(mistral).sliding_window == 4096  # transformers' default
    # Only architectures: the family follows from it.
    assert families.config_from_hf_dict({**BASE, "model_type": None, "architectures": ["Qwen2ForCausalLM"]}).family == "qwen2"


@pytest.mark.parametrize(
    "hf, message",
    [
        ({**BASE, "model_type": "qwen3_moe"}, r"model_type='qwen3_moe'.*supported: qwen2 \(Qwen2ForCausalLM\), qwen3"),
        ({**BASE, "model_type": None, "architectures": ["GemmaForCausalLM"]}, "GemmaForCausalLM.*supported: qwen2"),
        ({**BASE, "architectures": ["Qwen2ForSequenceClassification"]}, "only Qwen2ForCausalLM"),
        ({**BASE, "model_type": "qwen3", "attention_bias": True}, "attention_bias=true is not supported"),
        ({**BASE, "model_type": "qwen3", "use_sliding_window": True}, "sliding-window"),
        ({**BASE, "model_type": "llama", "mlp_bias": True}, "mlp_bias=true"),
        ({**BASE, "model_type": "llama", "rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "'yarn'.*'llama'"),
        ({**BASE, "model_type": "llama", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "low_freq_factor"),
        ({**BASE, "model_type": "qwen2", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "'llama3'.*'qwen2'"),
        ({**BASE, "model_type": "mistral", "layer_types": ["sliding_attention", "full_attention"]}, "layer_types"),
        ({**BASE, "model_type": "llama", "partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_unsupported_families_and_features_are_named(hf, message):
    with pytest.raises(ConfigError, match=message):
        families.config_from_hf_dict(hf, source="ckpt/config.json")


@pytest.mark.parametrize("family, extra", [
    ("qwen2", {}), ("qwen3", {"head_dim": 24, "tie_word_embeddings": True}),
    ("llama", {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                "high_freq_factor": 4.0, "original_max_position_embeddings": 64}}),
    ("mistral", {"sliding_window": 5}), ("mistral", {"sliding_window": None}),
])
def test_every_family_round_trips_through_its_hf_dict_and_transformers(family, extra):
    from transformers import AutoConfig

    config = families.config_from_hf_dict({**BASE, "model_type": family, "eos_token_id": [3, 4], **extra})
    hf = config.to_hf_dict()
    assert families.config_from_hf_dict(hf) == config
    theirs = AutoConfig.for_model(**hf)
    assert type(theirs).__name__ == hf["architectures"][0].replace("ForCausalLM", "Config")
    assert (theirs.head_dim, theirs.num_key_value_heads) == (config.head_dim, config.num_kv_heads)
    assert getattr(theirs, "sliding_window", None) == config.sliding_window
    assert theirs.rope_parameters["rope_type"] == ("llama3" if config.rope_scaling else "default")


def test_make_config_names_the_family_and_the_bad_field():
    assert families.make_config("llama", **dict(vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                                                num_heads=2, num_kv_heads=1, head_dim=4)).family == "llama"
    with pytest.raises(ConfigError, match=r"family 'gemma' is not supported; supported: qwen2"):
        families.make_config("gemma")
    with pytest.raises(ConfigError, match=r"Qwen2Config: .*sliding"):
        families.make_config("qwen2", vocab_size=10, hidden_size=8, intermediate_size=8, num_layers=1,
                             num_heads=2, num_kv_heads=1, head_dim=4, sliding_window=4)
    with pytest.raises(ConfigError, match="MistralConfig: .*num_hidden_layers"):
        families.make_config("mistral", num_hidden_layers=2)
