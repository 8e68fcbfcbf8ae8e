import jax
import jax.numpy as jnp
import numpy as np
import pytest

from disrouter_jax.training.optim import OptimConfig, make_optimizer, make_schedule


def test_schedule_warmup_then_cosine_to_end_value():
    cfg = OptimConfig(learning_rate=1.0, warmup_steps=4, total_steps=14, decay="cosine", end_lr_ratio=0.1)
    lr = make_schedule(cfg)
    np.testing.assert_allclose([float(lr(c)) for c in range(4)], [0.25, 0.5, 0.75, 1.0], rtol=1e-6)
    assert float(lr(4)) == pytest.approx(1.0)
    # Half-way through the decay the cosine is at the mean of peak and end.
    assert float(lr(9)) == pytest.approx(0.55, rel=1e-5)
    assert float(lr(14)) == pytest.approx(0.1, rel=1e-5)
    assert float(lr(1000)) == pytest.approx(0.1, rel=1e-5)


def test_schedule_linear_and_constant():
    linear = make_schedule(OptimConfig(learning_rate=2.0, total_steps=10, decay="linear", end_lr_ratio=0.0))
    np.testing.assert_allclose([float(linear(c)) for c in (0, 5, 10, 20)], [2.0, 1.0, 0.0, 0.0], atol=1e-6)
    constant = make_schedule(OptimConfig(learning_rate=3.0, warmup_steps=2, total_steps=1, decay="constant"))
    np.testing.assert_allclose([float(constant(c)) for c in (0, 1, 2, 50)], [1.5, 3.0, 3.0, 3.0], rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(learning_rate=0.0), "learning_rate"),
        (dict(total_steps=0), "total_steps"),
        (dict(warmup_steps=10, total_steps=10), "warmup_steps"),
        (dict(decay="step"), "decay"),
        (dict(end_lr_ratio=1.5), "end_lr_ratio"),
        (dict(num_microbatches=0), "num_microbatches"),
        (dict(max_grad_norm=-1.0), "max_grad_norm"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"OptimConfig.{field}"):
        OptimConfig(**kwargs)


def _first_update(cfg, grads, params):
    tx = make_optimizer(cfg)
    updates, _ = tx.update(grads, tx.init(params), params)
    return updates


def test_gradients_are_clipped_to_max_global_norm():
    # b1 = b2 = 0 and eps = 1 make Adam's first step -lr * g / (|g| + 1): not scale-invariant, so
    # it shows whether g was clipped first.
    params = {"w": jnp.zeros((1, 2))}
    grads = {"w": jnp.asarray([[3.0, 4.0]])}  # global norm 5
    base = dict(learning_rate=1.0, total_steps=10, decay="constant", b1=0.0, b2=0.0, eps=1.0)
    clipped = _first_update(OptimConfig(**base, max_grad_norm=1.0), grads, params)["w"]
    unclipped = _first_update(OptimConfig(**base, max_grad_norm=None), grads, params)["w"]
    np.testing.assert_allclose(clipped, -np.asarray([[0.6 / 1.6, 0.8 / 1.8]]), rtol=1e-6)
    np.testing.assert_allclose(unclipped, -np.asarray([[3.0 / 4.0, 4.0 / 5.0]]), rtol=1e-6)


def test_weight_decay_applies_to_matrices_only():
    params = {"matrix": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    grads = jax.tree.map(jnp.zeros_like, params)
    cfg = OptimConfig(learning_rate=0.1, total_steps=10, decay="constant", weight_decay=0.5)
    updates = _first_update(cfg, grads, params)
    np.testing.assert_allclose(updates["matrix"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
    np.testing.assert_array_equal(updates["bias"], np.zeros(2))
