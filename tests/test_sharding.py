import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from disrouter_jax import sharding


def mesh(**sizes):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    return sharding.make_mesh(sizes)


def test_mesh_axes_and_free_axis():
    m = mesh(data=2, fsdp=-1, tensor=2)
    assert m.axis_names == ("data", "fsdp", "tensor")
    assert dict(m.shape) == {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.mark.parametrize(
    "sizes, message",
    [(dict(data=3, fsdp=1, tensor=1), "needs 3 devices"),
     (dict(data=3, fsdp=-1, tensor=1), "does not divide"),
     (dict(data=-1, fsdp=-1, tensor=1), "at most one axis"),
     (dict(data=0, fsdp=-1, tensor=1), "invalid size")],
)
def test_bad_mesh_sizes_raise(sizes, message):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    with pytest.raises(ValueError, match=message):
        sharding.make_mesh(sizes)


def test_qwen25_05b_heads_fall_back_to_replication_on_tensor8():
    m = mesh(data=1, fsdp=1, tensor=8)
    # Qwen2.5-0.5B: 14 query heads, 2 KV heads, head_dim 64, hidden 896, mlp 4864, vocab 151936.
    assert sharding.logical_to_spec(("embed", "heads", "head_dim"), (896, 14, 64), m) == P(None, None, None)
    assert sharding.logical_to_spec(("embed", "kv_heads", "head_dim"), (896, 2, 64), m) == P(None, None, None)
    assert sharding.logical_to_spec(("embed", "mlp"), (896, 4864), m) == P(None, "tensor")
    assert sharding.logical_to_spec(("vocab", "embed"), (151936, 896), m) == P("tensor", None)


def test_batch_uses_both_data_axes_and_each_mesh_axis_once():
    m = mesh(data=2, fsdp=2, tensor=2)
    assert sharding.logical_to_spec(("batch", "length"), (8, 5), m) == P(("data", "fsdp"), None)
    # Batch 2 is divisible by data only: fsdp is then dropped rather than failing.
    assert sharding.logical_to_spec(("batch", "length"), (2, 5), m) == P("data", None)
    # embed takes fsdp; a later dim asking for fsdp again does not get it.
    assert sharding.logical_to_spec(("embed", "mlp"), (16, 32), m) == P("fsdp", "tensor")


def test_unknown_logical_axis_raises():
    m = mesh(data=2, fsdp=2, tensor=2)
    with pytest.raises(KeyError, match="no rule"):
        sharding.logical_to_spec(("nonsense",), (4,), m)


def test_weights_are_gathered_over_the_batch_axes_only_at_use():
    m = mesh(data=2, fsdp=2, tensor=2)
    ctx = sharding.ShardingContext(m)
    w = jax.device_put(jnp.zeros((16, 4, 8)), sharding.named_sharding(("embed", "heads", "head_dim"), (16, 4, 8), m))
    assert w.sharding.spec == P("fsdp", "tensor", None)
    used = jax.jit(lambda w: ctx.gather_weight(w, ("embed", "heads", "head_dim")))(w)
    assert used.sharding.is_equivalent_to(jax.sharding.NamedSharding(m, P(None, "tensor")), 3)
    # Rules that put batch on tensor too gather a weight over tensor as well.
    rules = tuple((n, ("data", "fsdp", "tensor") if n == "batch" else a) for n, a in sharding.DEFAULT_RULES)
    wide = sharding.ShardingContext(m, rules)
    assert jax.jit(lambda w: wide.gather_weight(w, ("embed", "heads", "head_dim")))(w).sharding.is_fully_replicated
    assert sharding.gather_weight(w, ("embed", "heads", "head_dim"), None) is w


def test_a_mesh_made_by_jax_with_explicit_axes_is_accepted(tiny_checkpoint):
    from disrouter_jax.models import hf_io

    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices")
    explicit = jax.make_mesh((2, 2, 2), sharding.MESH_AXES)  # jax's default axis types
    assert explicit.are_all_axes_explicit
    ckpt = tiny_checkpoint("gqa2")
    model = hf_io.from_pretrained(ckpt, mesh=explicit)
    assert model.sharding.mesh == sharding.auto_mesh(explicit) and model.sharding.mesh.are_all_axes_auto
    ids = np.random.default_rng(0).integers(0, 97, (4, 6)).astype(np.int32)
    want = np.asarray(hf_io.from_pretrained(ckpt)(jnp.asarray(ids)))
    # Eager (op by op), from host ids and from ids placed on the Explicit mesh itself.
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(ids))), want, atol=1e-5)
    placed = jax.device_put(ids, jax.sharding.NamedSharding(explicit, P(("data", "fsdp"))))
    np.testing.assert_allclose(np.asarray(model(placed)), want, atol=1e-5)
    with jax.set_mesh(explicit), pytest.raises(ValueError, match="Explicit axes"):
        model(jnp.asarray(ids))
    with pytest.raises(ValueError, match=r"lack \['fsdp', 'tensor'\].*jax.make_mesh\(shape, \('data', 'fsdp', 'tensor'\)\)"):
        hf_io.from_pretrained(ckpt, mesh=jax.make_mesh((2, 4), ("data", "model")))
