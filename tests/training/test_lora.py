import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from disrouter_jax.models import qwen2
from disrouter_jax.training.lora import LoRAConfig, LoRAParam, apply_lora, merge_lora
from disrouter_jax.training.state import create_train_state

from .conftest import SFT_OPTIM, sft_batch

IDS = jnp.asarray(np.random.default_rng(1).integers(0, 97, (2, 7)), jnp.int32)


def _randomize_b(lora_model, seed=0):
    """B starts at zero; give it values so the adapters actually change the model."""
    key = jax.random.key(seed)
    for layer in lora_model.adapters:
        for adapter in layer.values():
            key, sub = jax.random.split(key)
            adapter.b_ro[...] = 0.05 * jax.random.normal(sub, adapter.b_ro[...].shape)


@pytest.fixture(scope="module")
def base_logits(gqa2_path):
    return np.asarray(qwen2.from_pretrained(gqa2_path)(IDS))


def test_fresh_adapters_leave_the_model_unchanged(gqa2_path, base_logits):
    lora_model = apply_lora(qwen2.from_pretrained(gqa2_path), LoRAConfig(rank=4))
    np.testing.assert_array_equal(np.asarray(lora_model(IDS)), base_logits)
    assert all(np.all(np.asarray(a.b_ro[...]) == 0) for layer in lora_model.adapters for a in layer.values())


def test_lora_forward_equals_the_merged_and_exported_model(gqa2_path, base_logits, tmp_path):
    base = qwen2.from_pretrained(gqa2_path)
    lora_model = apply_lora(base, LoRAConfig(rank=4, alpha=8.0))
    _randomize_b(lora_model)
    lora_logits = np.asarray(lora_model(IDS))
    assert np.abs(lora_logits - base_logits).max() > 1e-3  # the adapters do something
    merged = merge_lora(lora_model)
    assert isinstance(merged, qwen2.Qwen2)
    np.testing.assert_allclose(np.asarray(merged(IDS)), lora_logits, atol=1e-6)
    # Merging built new weights: the wrapped base model is untouched.
    np.testing.assert_array_equal(np.asarray(base(IDS)), base_logits)
    # The exported checkpoint (what save_pretrained writes) reloads to the same function.
    qwen2.save_pretrained(merged, tmp_path / "agent")
    reloaded = qwen2.from_pretrained(tmp_path / "agent")
    np.testing.assert_allclose(np.asarray(reloaded(IDS)), lora_logits, atol=1e-5)


def test_merged_weight_is_base_plus_scaled_low_rank_product(gqa2_path):
    lora_model = apply_lora(qwen2.from_pretrained(gqa2_path), LoRAConfig(rank=2, alpha=6.0, targets=("o",)))
    _randomize_b(lora_model)
    adapter = lora_model.adapters[1]["o"]
    w = np.asarray(lora_model.base.layers[1].attn.o_weight_nhd[...])  # [N, H, D]
    expected = w + 3.0 * (np.asarray(adapter.a_ir[...]) @ np.asarray(adapter.b_ro[...])).reshape(w.shape)
    got = np.asarray(merge_lora(lora_model).layers[1].attn.o_weight_nhd[...])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    # Untargeted weights are the base weights.
    np.testing.assert_array_equal(
        np.asarray(merge_lora(lora_model).layers[1].attn.q_weight_dnh[...]),
        np.asarray(lora_model.base.layers[1].attn.q_weight_dnh[...]),
    )


def test_only_adapters_are_trained_and_kept_in_the_optimizer(gqa2_path, sft_step):
    lora_model = apply_lora(qwen2.from_pretrained(gqa2_path), LoRAConfig(rank=4))
    state = create_train_state(lora_model, SFT_OPTIM, wrt=LoRAParam)
    num_adapters = 2 * 7 * 2  # (A, B) x 7 targets x 2 layers
    assert len(jax.tree.leaves(state.params)) == num_adapters
    adapter_shapes = sorted(x.shape for x in jax.tree.leaves(state.params))
    moment_shapes = sorted(x.shape for x in jax.tree.leaves(state.opt_state) if x.ndim == 2)
    assert moment_shapes == sorted(adapter_shapes * 2)  # Adam mu and nu, nothing for the base
    frozen_before = [np.asarray(x) for x in jax.tree.leaves(state.frozen)]
    params_before = [np.asarray(x) for x in jax.tree.leaves(state.params)]

    state, metrics = sft_step(state, sft_batch())
    assert float(metrics["update_applied"]) == 1.0
    for before, after in zip(frozen_before, jax.tree.leaves(state.frozen)):
        np.testing.assert_array_equal(before, np.asarray(after))
    # With B = 0 the gradient of A is zero on the first step (dL/dA = scale * dL/dW_eff @ B^T):
    # exactly the B matrices move.
    names = [path[-1] for path, _ in nnx.to_flat_state(state.params)]
    for name, before, after in zip(names, params_before, jax.tree.leaves(state.params)):
        assert np.array_equal(before, np.asarray(after)) == (name == "a_ir"), name
    assert isinstance(state.model(), nnx.Module) and isinstance(merge_lora(state.model()), qwen2.Qwen2)


@pytest.mark.parametrize(
    "kwargs, field", [(dict(rank=0), "rank"), (dict(alpha=0), "alpha"), (dict(targets=("qkv",)), "targets")]
)
def test_config_validation(kwargs, field):
    with pytest.raises(ValueError, match=f"LoRAConfig.{field}"):
        LoRAConfig(**kwargs)


def test_targets_are_named_per_family_by_its_tensor_table():
    from disrouter_jax.models import families
    from disrouter_jax.training.lora import resolve_targets

    for cls in families.FAMILIES.values():
        assert [t.name for t in resolve_targets(cls, ("q_proj", "o", "down_proj"))] == ["q", "o", "down"]
    assert LoRAConfig(targets=("gate_proj", "up")).targets == ("gate_proj", "up")
    with pytest.raises(ValueError, match=r"name the weight\(s\) \['q'\] twice"):
        resolve_targets(families.LlamaConfig, ("q", "q_proj"))
    with pytest.raises(ValueError, match=r"not weights of family 'qwen3'; its targets: q \(q_proj\), k \(k_proj\)"):
        resolve_targets(families.Qwen3Config, ("q_norm",))
