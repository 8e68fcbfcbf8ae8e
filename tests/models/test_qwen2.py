"""Qwen2 in NNX against the transformers PyTorch reference (the standard of truth)."""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from disrouter_jax import runtime, sharding
from disrouter_jax.generation.engine import decode_head
from disrouter_jax.models import qwen2
from tests.models.conftest import INPUT_IDS, MASK, POSITIONS, extend, forward


def jax_logits(model) -> np.ndarray:
    return np.asarray(forward(model, jnp.asarray(INPUT_IDS), jnp.asarray(POSITIONS), jnp.asarray(MASK)))


@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7", "mha"])
def test_logits_match_transformers(loaded, name):
    _, model, reference = loaded(name)
    ours = jax_logits(model)
    real = MASK.astype(bool)
    diff = np.abs(ours - reference)[real].max()
    assert diff <= 1e-4, f"{name}: max |logit diff| {diff:.3e}"
    # Padding must not leak into real positions: shifting the pad token ids changes nothing.
    shifted = np.where(MASK == 0, 13, INPUT_IDS)
    again = np.asarray(model(jnp.asarray(shifted), jnp.asarray(POSITIONS), jnp.asarray(MASK)))
    np.testing.assert_allclose(again[real], ours[real], atol=1e-6)


def test_default_positions_follow_mask(loaded):
    _, model, _ = loaded("gqa2")
    with_defaults = np.asarray(model(jnp.asarray(INPUT_IDS), attention_mask_bt=jnp.asarray(MASK)))
    np.testing.assert_allclose(with_defaults, jax_logits(model), atol=1e-6)


@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7"])
def test_kv_cache_decoding_matches_full_forward(loaded, name):
    _, model, _ = loaded(name)
    full = jax_logits(model)
    prefill = 4
    cache = qwen2.init_cache(model.config, INPUT_IDS.shape[0], max_length=12)
    graph_extend = lambda *a: extend(model, *a)  # noqa: E731
    logits, cache = graph_extend(
        jnp.asarray(INPUT_IDS[:, :prefill]), jnp.asarray(POSITIONS[:, :prefill]),
        jnp.asarray(MASK[:, :prefill]), cache,
    )
    real = MASK[:, :prefill].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[real], full[:, :prefill][real], atol=1e-5)
    for t in range(prefill, INPUT_IDS.shape[1]):
        logits, cache = graph_extend(
            jnp.asarray(INPUT_IDS[:, t : t + 1]), jnp.asarray(POSITIONS[:, t : t + 1]),
            jnp.asarray(MASK[:, t : t + 1]), cache,
        )
        np.testing.assert_allclose(np.asarray(logits)[:, 0], full[:, t], atol=1e-5)
    assert int(cache.end) == INPUT_IDS.shape[1]


def test_cache_holds_heads_major_keys_and_values_per_layer(loaded):
    _, model, _ = loaded("gqa2")
    cfg = model.config
    cache = qwen2.init_cache(cfg, 3, max_length=24)
    assert len(cache.k_bkhs) == len(cache.v_bksh) == cfg.num_layers
    assert {x.shape for x in cache.k_bkhs} == {(3, cfg.num_kv_heads, cfg.head_dim, 24)}
    assert {x.shape for x in cache.v_bksh} == {(3, cfg.num_kv_heads, 24, cfg.head_dim)}
    assert cache.max_length == 24


_attention = jax.jit(qwen2.attention, static_argnums=(4,), static_argnames=("kv_layout",))


def test_one_query_attention_on_the_cache_matches_the_general_path():
    """A decode step (one query per row, the cache layout) drops the query axis from the einsums;
    it must give what the general path gives on the same keys and values laid out [B, S, K, H]."""
    b, n, k, h, s = 3, 4, 2, 8, 11
    keys = jax.random.split(jax.random.key(0), 3)
    q_b1nh = jax.random.normal(keys[0], (b, 1, n, h))
    k_bskh = jax.random.normal(keys[1], (b, s, k, h))
    v_bskh = jax.random.normal(keys[2], (b, s, k, h))
    allowed_b1s = jnp.arange(s)[None, None, :] < jnp.array([4, 11, 7])[:, None, None]
    general = _attention(q_b1nh, k_bskh, v_bskh, allowed_b1s, jnp.float32)
    cached = _attention(q_b1nh, jnp.transpose(k_bskh, (0, 2, 3, 1)), jnp.transpose(v_bskh, (0, 2, 1, 3)),
                             allowed_b1s, jnp.float32, kv_layout="cache")
    np.testing.assert_allclose(np.asarray(cached), np.asarray(general), rtol=1e-5, atol=1e-6)
    # Masked slots are never attended to: changing them changes nothing.
    v_changed = v_bskh.at[0, 5:].set(100.0)
    changed = _attention(q_b1nh, jnp.transpose(k_bskh, (0, 2, 3, 1)), jnp.transpose(v_changed, (0, 2, 1, 3)),
                              allowed_b1s, jnp.float32, kv_layout="cache")
    np.testing.assert_array_equal(np.asarray(changed), np.asarray(cached))


@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7"])
def test_decode_head_is_the_transposed_table_on_cpu_and_gives_the_same_logits(loaded, name):
    _, model, _ = loaded(name)
    head = decode_head(model)
    if not model.config.tie_word_embeddings:
        assert head is None  # the untied head is already [D, V]
        return
    np.testing.assert_array_equal(np.asarray(head), np.asarray(model.embedding_vd[...]).T)
    cache = qwen2.init_cache(model.config, INPUT_IDS.shape[0], max_length=12)
    args = tuple(jnp.asarray(a[:, :5]) for a in (INPUT_IDS, POSITIONS, MASK))
    plain, _ = extend(model, *args, cache)
    with_head, _ = extend(model, *args, cache, head_dv=head)
    np.testing.assert_allclose(np.asarray(with_head), np.asarray(plain), atol=1e-6)


def _weight_shaped_copies(model, hlo_text: str) -> list[str]:
    """Lines of optimised HLO that produce (copy, transpose or fuse into) an array holding as many
    elements as one of the model's weight matrices, with one of its dimensions: a weight moved."""
    sizes = set()
    for _, param in nnx.state(model, nnx.Param).flat_state():
        shape = param.get_value().shape if hasattr(param, "get_value") else param.value.shape
        if len(shape) >= 2:
            sizes.add(int(np.prod(shape)))
    moved = []
    for line in hlo_text.splitlines():
        match = re.match(r"\s*(?:ROOT )?%\S+ = f32\[([0-9,]+)\]\{[0-9,]*\} (fusion|copy|transpose)\(", line)
        if match and int(np.prod([int(d) for d in match.group(1).split(",")])) in sizes:
            moved.append(line.strip()[:160])
    return moved


@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7"])
def test_a_decode_step_moves_no_weight(loaded, name):
    """The optimised one-token step reads every weight where it lies: no per-step transpose of
    the output projection (XLA:CPU made one when the projections were head-shaped einsums)."""
    _, model, _ = loaded(name)
    graphdef, state = nnx.split(model)
    cache = qwen2.init_cache(model.config, 3, max_length=24)

    def step(state, cache, ids, pos):
        m = nnx.merge(graphdef, state)
        return m.extend(ids, pos, jnp.ones_like(ids, jnp.bool_), cache, head_dv=decode_head(m))

    ids = jnp.ones((3, 1), jnp.int32)
    compiled = runtime.jit(step, donate_argnums=(1,)).lower(state, cache, ids, ids).compile()
    entry = compiled.as_text().split("\nENTRY ")[-1]
    moved = _weight_shaped_copies(model, entry)
    # A tied head's one [D, V] copy (engine.decode_head) is the only weight-sized array made.
    assert len(moved) == int(model.config.tie_word_embeddings), moved


@pytest.mark.parametrize(
    "mesh_shape",
    [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=1, tensor=8), dict(data=1, fsdp=8, tensor=1)],
    ids=["2x2x2", "tensor8", "fsdp8"],
)
@pytest.mark.parametrize("name", ["gqa2", "tied_gqa7"])
def test_sharded_forward_matches_single_device(loaded, name, mesh_shape):
    if len(jax.devices()) < 8:
        pytest.skip("needs 8 devices (XLA_FLAGS=--xla_force_host_platform_device_count=8)")
    ckpt, single, reference = loaded(name)
    mesh = sharding.make_mesh(mesh_shape)
    model = qwen2.from_pretrained(ckpt, mesh=mesh)
    # Every parameter lives on all 8 devices, split where its dimensions allow.
    q = model.layers[0].attn.q_weight_dnh[...]
    assert len(q.sharding.device_set) == 8
    batch_sharding = sharding.named_sharding(("batch", "length"), INPUT_IDS.shape, mesh)
    ids, pos, mask = (jax.device_put(jnp.asarray(a), batch_sharding) for a in (INPUT_IDS, POSITIONS, MASK))
    sharded = np.asarray(forward(model, ids, pos, mask))
    real = MASK.astype(bool)
    np.testing.assert_allclose(sharded[real], jax_logits(single)[real], atol=1e-5)
    assert np.abs(sharded - reference)[real].max() <= 1e-4


def test_bfloat16_compute_tracks_float32(loaded, tiny_checkpoint):
    _, model32, reference = loaded("gqa2")
    model16 = qwen2.from_pretrained(tiny_checkpoint("gqa2"), dtype=jnp.bfloat16)
    assert model16.layers[0].mlp.up_weight_df[...].dtype == jnp.bfloat16
    logits16 = model16(jnp.asarray(INPUT_IDS), jnp.asarray(POSITIONS), jnp.asarray(MASK))
    assert logits16.dtype == jnp.float32  # logits always come out in float32
    real = MASK.astype(bool)
    diff = np.abs(np.asarray(logits16) - reference)[real]
    assert np.isfinite(diff).all()
    assert diff.max() < 2e-2, f"bf16 drifted {diff.max():.3e} from float32"
    # Mixed policy: float32 master weights, bfloat16 matmuls.
    mixed = qwen2.from_pretrained(tiny_checkpoint("gqa2"), dtype=jnp.bfloat16, param_dtype=jnp.float32)
    assert mixed.layers[0].mlp.up_weight_df[...].dtype == jnp.float32
    assert np.abs(jax_logits(mixed) - jax_logits(model32))[real].max() < 5e-2


def test_random_init_model_runs():
    config = qwen2.Qwen2Config(vocab_size=50, hidden_size=16, intermediate_size=24, num_layers=1,
                               num_heads=2, num_kv_heads=1, head_dim=8)
    from flax import nnx

    model = nnx.jit(lambda: qwen2.Qwen2(config, rngs=nnx.Rngs(0)))()  # one program, not one per op
    logits = forward(model, jnp.zeros((2, 5), jnp.int32))
    assert logits.shape == (2, 5, 50)
    assert config.num_params == sum(
        v.get_value().size for _, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    )


def test_unmasked_forward_takes_the_causal_path_with_the_same_logits(loaded):
    """No attention mask = plain causal attention (the path the fused GPU kernel serves)."""
    _, model, _ = loaded("gqa2")
    ids = jnp.asarray(INPUT_IDS)
    unmasked = np.asarray(model(ids))
    explicit = np.asarray(model(ids, attention_mask_bt=jnp.ones_like(ids)))
    np.testing.assert_allclose(unmasked, explicit, atol=1e-6)


def test_attention_impl_resolution():
    assert qwen2.resolve_attention_impl("xla", jnp.bfloat16) == "xla"
    expected = "cudnn" if jax.default_backend() == "gpu" else "xla"
    assert qwen2.resolve_attention_impl("auto", jnp.bfloat16) == expected
    assert qwen2.resolve_attention_impl("auto", jnp.float32) == "xla"
    with pytest.raises(ValueError, match="attention_impl"):
        qwen2.resolve_attention_impl("flash", jnp.float32)


def test_rows_matmul_gradients_are_bit_identical_to_the_batched_matmul():
    """The MLP and untied head multiply over flattened rows for speed on CPU; the toy pool's
    agents depend on that giving exactly the gradients of ``[B, T, D] @ [D, F]``."""
    keys = jax.random.split(jax.random.key(0), 3)
    x_btd = jax.random.normal(keys[0], (4, 24, 32))
    w_df = 0.1 * jax.random.normal(keys[1], (32, 96))
    w_fd = 0.1 * jax.random.normal(keys[2], (96, 32))

    def loss(matmul, x, w1, w2):
        return jnp.sum(jnp.sin(matmul(jax.nn.silu(matmul(x, w1)), w2)))

    batched = jax.jit(jax.grad(functools.partial(loss, jnp.matmul), argnums=(0, 1, 2)))(x_btd, w_df, w_fd)
    rows = jax.jit(jax.grad(functools.partial(loss, qwen2.rows_matmul), argnums=(0, 1, 2)))(x_btd, w_df, w_fd)
    for a, b in zip(batched, rows):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert qwen2.rows_matmul(x_btd, w_df).shape == (4, 24, 96)
