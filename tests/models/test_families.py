"""Qwen3, Llama and Mistral through the one decoder, against transformers PyTorch (float32).

Each tiny checkpoint of ``conftest.FAMILY_SHAPES`` is built by transformers from its own config
class; loading, logits, the KV-cache path, export and an 8-device mesh are checked per family.
(Qwen2 has the same checks in test_qwen2.py / test_hf_io.py.)
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from transformers import AutoModelForCausalLM

from disrouter_jax import sharding
from disrouter_jax.models import families, hf_io
from disrouter_jax.models.decoder import Decoder
from disrouter_jax.models.kv_cache import init_cache
from tests.conftest import FAMILY_SHAPES, HF_CLASSES
from tests.models.conftest import INPUT_IDS, MASK, POSITIONS, torch_logits
from tests.models.conftest import extend as _extend
from tests.models.conftest import forward as _forward

REAL = MASK.astype(bool)
NAMES = list(FAMILY_SHAPES)


def jax_logits(model, ids=INPUT_IDS, mask=MASK) -> np.ndarray:
    positions = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return np.asarray(_forward(model, jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(mask)))


def with_config(model: Decoder, **changes) -> Decoder:
    """The same weights under a config with ``changes`` (to show that a switch matters)."""
    other = nnx.eval_shape(lambda: Decoder(dataclasses.replace(model.config, **changes), rngs=nnx.Rngs(0)))
    nnx.update(other, nnx.state(model))
    return other


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(loaded, name):
    _, model, reference = loaded(name)
    assert model.config.family == FAMILY_SHAPES[name]["model_type"]
    ours = jax_logits(model)
    diff = np.abs(ours - reference)[REAL].max()
    assert diff <= 1e-4, f"{name}: max |logit diff| {diff:.3e}"
    # Padding never leaks into real positions.
    shifted = np.where(MASK == 0, 13, INPUT_IDS)
    np.testing.assert_allclose(jax_logits(model, shifted)[REAL], ours[REAL], atol=1e-6)


# Each family's own switch: q/k norms and head_dim 12 of 32 / 4 heads, llama3 RoPE, a window.
@pytest.mark.parametrize("name", ["qwen3_hd12", "llama3_gqa4", "mistral_window3"])
def test_kv_cache_decoding_matches_the_full_forward(loaded, name):
    _, model, _ = loaded(name)
    full = jax_logits(model)
    # Prefill 4 tokens, then one token at a time (the window slides past the prefill).
    cache = init_cache(model.config, INPUT_IDS.shape[0], max_length=12)
    step = lambda lo, hi, c: _extend(model, *(jnp.asarray(a[:, lo:hi]) for a in (INPUT_IDS, POSITIONS, MASK)), c)  # noqa: E731
    logits, cache = step(0, 4, cache)
    np.testing.assert_allclose(np.asarray(logits)[REAL[:, :4]], full[:, :4][REAL[:, :4]], atol=1e-5)
    for t in range(4, INPUT_IDS.shape[1]):
        logits, cache = step(t, t + 1, cache)
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-5)


def test_llama3_rope_scaling_and_mistral_window_are_what_makes_the_match(loaded):
    """Without its switch the same weights are far from transformers: the checks above can fail."""
    _, llama, llama_ref = loaded("llama3_gqa4")
    assert llama.config.rope_scaling is not None
    assert np.abs(jax_logits(with_config(llama, rope_scaling=None)) - llama_ref)[REAL].max() > 1e-2
    _, mistral, mistral_ref = loaded("mistral_window3")
    assert mistral.config.sliding_window == 3
    assert np.abs(jax_logits(with_config(mistral, sliding_window=None)) - mistral_ref)[REAL].max() > 1e-2
    # Without a mask (the training path) the window is the same band.
    unmasked = _forward
    np.testing.assert_allclose(np.asarray(unmasked(mistral, jnp.asarray(INPUT_IDS))),
                               jax_logits(mistral, mask=np.ones_like(MASK)), atol=1e-5)
    # Two layers of window 3 see 5 tokens back: the last token's logits ignore the tokens before.
    changed = INPUT_IDS.copy()
    changed[:, :3] = [50, 51, 52]
    np.testing.assert_allclose(np.asarray(unmasked(mistral, jnp.asarray(changed)))[:, -1],
                               np.asarray(unmasked(mistral, jnp.asarray(INPUT_IDS)))[:, -1], atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_export_loads_back_in_transformers_as_the_family(loaded, tmp_path, name):
    src, model, reference = loaded(name)
    out = hf_io.save_pretrained(model, tmp_path / "export")
    exported = json.loads((out / "config.json").read_text())
    assert exported["architectures"] == [HF_CLASSES[FAMILY_SHAPES[name]["model_type"]][1]]
    hf_model = AutoModelForCausalLM.from_pretrained(out)
    assert type(hf_model).__name__ == exported["architectures"][0]
    assert hf_model.config.head_dim == model.config.head_dim
    assert getattr(hf_model.config, "sliding_window", None) == model.config.sliding_window
    assert hf_model.config.rope_parameters["rope_type"] == ("llama3" if model.config.rope_scaling else "default")
    np.testing.assert_allclose(torch_logits(out)[REAL], reference[REAL], atol=1e-6)
    again = hf_io.from_pretrained(out)
    assert again.config == model.config


@pytest.mark.parametrize("name", ["qwen3_hd12", "mistral_window3"])
def test_on_an_eight_device_mesh(loaded, tmp_path, name):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    ckpt, single, reference = loaded(name)
    mesh = sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    model = hf_io.from_pretrained(ckpt, mesh=mesh)
    assert len(model.layers[0].attn.q_weight_dnh[...].sharding.device_set) == 8
    batch = sharding.named_sharding(("batch", "length"), (4, 8), mesh)
    rows = lambda a: jax.device_put(jnp.asarray(np.concatenate([a, a[2:]])), batch)  # noqa: E731
    ids, pos, mask = rows(INPUT_IDS), rows(POSITIONS), rows(MASK)
    sharded = np.asarray(_forward(model, ids, pos, mask))[:3]
    assert np.abs(sharded - reference)[REAL].max() <= 1e-4
    cache = init_cache(model.config, 4, max_length=10, sharding=model.sharding)
    _, cache = _extend(model, ids[:, :7], pos[:, :7], mask[:, :7], cache)
    last, _ = _extend(model, ids[:, 7:], pos[:, 7:], mask[:, 7:], cache)
    np.testing.assert_allclose(np.asarray(last)[:3, 0], jax_logits(single)[:, 7], atol=1e-5)
    out = hf_io.save_pretrained(model, tmp_path / "from_mesh")
    np.testing.assert_allclose(torch_logits(out)[REAL], reference[REAL], atol=1e-6)


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_num_params_counts_every_parameter(family):
    config = families.make_config(family, vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=2,
                                  num_heads=4, num_kv_heads=2, head_dim=6, tie_word_embeddings=family == "qwen3")
    model = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
    assert config.num_params == sum(v.get_value().size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param)))
