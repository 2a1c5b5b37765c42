"""Schedules, learning-rate scaling, weight-decay masks and optimizers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from imgcls_jax import optim
from imgcls_jax.config import base_config


def _schedule(**kw):
    c = base_config().schedule
    c.update(kw)
    return c


def test_warmup_then_cosine():
    fn = optim.build_schedule(_schedule(name="cosine", warmup_epochs=2), 0.4, 10, 120)
    assert float(fn(0)) == 0.0
    assert float(fn(10)) == pytest.approx(0.2)
    assert float(fn(20)) == pytest.approx(0.4)
    assert float(fn(70)) == pytest.approx(0.2, rel=1e-5)  # Half-way through the cosine.
    assert float(fn(120)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_at_epoch_boundaries():
    fn = optim.build_schedule(
        _schedule(name="step", step_epochs=(3, 6), step_factor=0.1), 1.0, 10, 100
    )
    values = [float(fn(s)) for s in (0, 29, 30, 59, 60, 99)]
    np.testing.assert_allclose(values, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_lr_scales_with_batch():
    c = base_config().optimizer
    c.update(learning_rate=0.1, lr_base_batch_size=256)
    assert optim.peak_learning_rate(c, 1024) == pytest.approx(0.4)
    c.lr_base_batch_size = 0
    assert optim.peak_learning_rate(c, 1024) == pytest.approx(0.1)


PARAMS = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 2))},
    "norm": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
}


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_weight_decay_skips_biases_and_norm_params(name):
    c = base_config().optimizer
    c.update(name=name, weight_decay=0.1, momentum=0.0)
    tx = optim.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(1.0))
    zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
    updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS)
    assert np.all(np.asarray(updates["conv"]["kernel"]) < 0)  # Decayed.
    assert not np.any(np.asarray(updates["norm"]["scale"]))
    assert not np.any(np.asarray(updates["norm"]["bias"]))


def test_gradient_clipping():
    c = base_config().optimizer
    c.update(name="sgd", weight_decay=0.0, momentum=0.0, grad_clip_norm=1.0)
    tx = optim.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(1.0))
    grads = jax.tree.map(lambda p: 100 * jnp.ones_like(p), PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    norm = optax.global_norm(updates)
    assert float(norm) == pytest.approx(1.0, rel=1e-5)


def test_sgd_nesterov_matches_the_formula():
    c = base_config().optimizer
    c.update(name="sgd", weight_decay=0.0, momentum=0.9, nesterov=True)
    tx = optim.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(0.1))
    p = {"w": jnp.array([1.0])}
    state = tx.init(p)
    g1, g2 = {"w": jnp.array([1.0])}, {"w": jnp.array([2.0])}
    u1, state = tx.update(g1, state, p)
    u2, state = tx.update(g2, state, p)
    # PyTorch's Nesterov: buf = m*buf + g; update = -lr * (g + m*buf).
    buf1 = 1.0
    buf2 = 0.9 * buf1 + 2.0
    assert float(u1["w"][0]) == pytest.approx(-0.1 * (1.0 + 0.9 * buf1))
    assert float(u2["w"][0]) == pytest.approx(-0.1 * (2.0 + 0.9 * buf2))
