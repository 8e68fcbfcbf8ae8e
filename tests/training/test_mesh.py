"""Train state on an 8-device (data=2, fsdp=2, tensor=2) mesh vs one device."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from disrouter_jax import sharding
from disrouter_jax.models import qwen2
from disrouter_jax.training.checkpoint import TrainCheckpointer
from disrouter_jax.training.lora import LoRAConfig, LoRAParam, apply_lora
from disrouter_jax.training.state import create_train_state

from .conftest import SFT_OPTIM, sft_batch

NUM_STEPS = 3
# Sharded and single-device gradients agree to ~1e-7 relative (the partial sums are reduced in a
# different order). Adam's eps (1e-3 in SFT_OPTIM) bounds how much an update can amplify that:
# by lr * |dg| / eps, ~1e-7 per step here; so after a few steps the parameters agree to 1e-5.
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def mesh():
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (tests/conftest.py sets --xla_force_host_platform_device_count=8)")
    return sharding.make_mesh(sharding.MeshConfig(data=2, fsdp=2, tensor=2), devices=jax.devices()[:8])


def _flat(tree):
    return {path: var for path, var in nnx.to_flat_state(tree)}


def _moments_follow_params(state):
    params = _flat(state.params)
    checked = 0
    for path, moment in _flat(state.opt_state).items():
        if path[-1] in ("mu", "nu") or len(path) < 4:
            continue
        for moment_name in ("mu", "nu"):
            if moment_name in path:
                param_path = path[path.index(moment_name) + 1:]
                assert moment[...].sharding == params[param_path][...].sharding, (path, moment[...].sharding)
                checked += 1
    return checked


def test_optimizer_moments_have_their_parameters_sharding(gqa2_path, mesh):
    state = create_train_state(qwen2.from_pretrained(gqa2_path, mesh=mesh), SFT_OPTIM)
    assert _moments_follow_params(state) == 2 * len(_flat(state.params))
    q = state.params["layers"][0]["attn"]["q_weight_dnh"][...]
    assert q.sharding.spec == PartitionSpec("fsdp", "tensor", None)  # FSDP + tensor parallel
    assert not q.sharding.is_fully_replicated


def test_lora_adapters_live_on_the_mesh_too(gqa2_path, mesh):
    model = apply_lora(qwen2.from_pretrained(gqa2_path, mesh=mesh), LoRAConfig(rank=4))
    state = create_train_state(model, SFT_OPTIM, wrt=LoRAParam)
    assert _moments_follow_params(state) == 2 * len(_flat(state.params))
    a = state.params["adapters"][0]["gate"]["a_ir"][...]
    assert a.sharding.mesh.shape == mesh.shape and a.sharding.spec == PartitionSpec("fsdp", None)


def test_training_on_the_mesh_matches_one_device_and_restores_onto_its_shardings(gqa2_path, mesh, sft_step, tmp_path):
    batch = sft_batch(seed=3)  # 4 rows: one per (data, fsdp) shard; same shape as the other tests
    single = create_train_state(qwen2.from_pretrained(gqa2_path), SFT_OPTIM)
    sharded = create_train_state(qwen2.from_pretrained(gqa2_path, mesh=mesh), SFT_OPTIM)
    for _ in range(NUM_STEPS):
        single, single_metrics = sft_step(single, batch)
        sharded, sharded_metrics = sft_step(sharded, batch)
        assert float(sharded_metrics["loss"]) == pytest.approx(float(single_metrics["loss"]), rel=1e-5)
    for path, var in _flat(single.params).items():
        np.testing.assert_allclose(np.asarray(_flat(sharded.params)[path][...]), np.asarray(var[...]), atol=TOLERANCE)
    # The updated state kept exactly the sharding it started with, so one program served all steps.
    assert _moments_follow_params(sharded) == 2 * len(_flat(sharded.params))
    q = sharded.params["layers"][0]["attn"]["q_weight_dnh"][...]
    assert q.sharding.spec == PartitionSpec("fsdp", "tensor", None)
    # The mesh state's jitted step compiled once for all steps (an output sharding spelled
    # differently from the input's would force a second compilation).
    mesh_fn = sft_step.compiled[sharded.replace(params=None, opt_state=None, frozen=None)]
    assert mesh_fn._cache_size() == 1

    with TrainCheckpointer(tmp_path / "ckpt") as ckpt:
        ckpt.save(NUM_STEPS, sharded)
        ckpt.wait_until_finished()
        template = create_train_state(qwen2.from_pretrained(gqa2_path, mesh=mesh), SFT_OPTIM)
        restored = ckpt.restore(template).state
    for path, var in _flat(sharded.params).items():
        got = _flat(restored.params)[path][...]
        assert got.sharding == var[...].sharding
        np.testing.assert_array_equal(np.asarray(got), np.asarray(var[...]))
    assert restored.step == NUM_STEPS
