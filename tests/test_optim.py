"""Schedules, learning-rate scaling, weight-decay masks and optimizers."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from imgcls_jax import registry
from imgcls_jax.config import base_config
from imgcls_jax.training import optimizers


def _schedule(**kw):
    c = base_config().schedule
    c.update(kw)
    return c


def test_warmup_then_cosine():
    fn = optimizers.build_schedule(_schedule(name="cosine", warmup_epochs=2), 0.4, 10, 120)
    assert float(fn(0)) == 0.0
    assert float(fn(10)) == pytest.approx(0.2)
    assert float(fn(20)) == pytest.approx(0.4)
    assert float(fn(70)) == pytest.approx(0.2, rel=1e-5)  # Half-way through the cosine.
    assert float(fn(120)) == pytest.approx(0.0, abs=1e-7)


def test_step_schedule_decays_at_epoch_boundaries():
    fn = optimizers.build_schedule(
        _schedule(name="step", step_epochs=(3, 6), step_factor=0.1), 1.0, 10, 100
    )
    values = [float(fn(s)) for s in (0, 29, 30, 59, 60, 99)]
    np.testing.assert_allclose(values, [1, 1, 0.1, 0.1, 0.01, 0.01], rtol=1e-6)


def test_lr_scales_with_batch():
    c = base_config().optimizer
    c.update(learning_rate=0.1, lr_base_batch_size=256)
    assert optimizers.peak_learning_rate(c, 1024) == pytest.approx(0.4)
    c.lr_base_batch_size = 0
    assert optimizers.peak_learning_rate(c, 1024) == pytest.approx(0.1)


PARAMS = {
    "conv": {"kernel": jnp.ones((3, 3, 2, 2))},
    "norm": {"scale": jnp.ones(2), "bias": jnp.ones(2)},
}


@pytest.mark.parametrize("name", registry.names("optimizer"))
def test_weight_decay_skips_biases_and_norm_params(name):
    c = base_config().optimizer
    c.update(name=name, weight_decay=0.1, momentum=0.0)
    tx = optimizers.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(1.0))
    zero_grads = jax.tree.map(jnp.zeros_like, PARAMS)
    # grad_fn: SAM's second gradient (the other optimizers take no such argument).
    updates, _ = tx.update(zero_grads, tx.init(PARAMS), PARAMS, grad_fn=lambda p, _: zero_grads)
    assert np.all(np.asarray(updates["conv"]["kernel"]) < 0)  # Decayed.
    assert not np.any(np.asarray(updates["norm"]["scale"]))
    assert not np.any(np.asarray(updates["norm"]["bias"]))


def test_gradient_clipping():
    c = base_config().optimizer
    c.update(name="sgd", weight_decay=0.0, momentum=0.0, grad_clip_norm=1.0)
    tx = optimizers.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(1.0))
    grads = jax.tree.map(lambda p: 100 * jnp.ones_like(p), PARAMS)
    updates, _ = tx.update(grads, tx.init(PARAMS), PARAMS)
    norm = optax.tree.norm(updates)
    assert float(norm) == pytest.approx(1.0, rel=1e-5)


def test_sgd_nesterov_matches_the_formula():
    c = base_config().optimizer
    c.update(name="sgd", weight_decay=0.0, momentum=0.9, nesterov=True)
    tx = optimizers.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(0.1))
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


def _first_update(name, grads, params, **overrides):
    c = base_config().optimizer
    c.update(name=name, **overrides)
    tx = optimizers.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(0.5))
    updates, _ = tx.update(grads, tx.init(params), params)
    return jax.tree.map(np.asarray, updates)


def test_lars_lamb_and_lion_first_steps_match_their_formulas():
    rng = np.random.default_rng(0)
    params = {"conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)},
              "norm": {"bias": jnp.asarray(rng.normal(size=4), jnp.float32)}}  # fmt: skip
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    p, g = np.asarray(params["conv"]["kernel"]), np.asarray(grads["conv"]["kernel"])
    pb, gb = np.asarray(params["norm"]["bias"]), np.asarray(grads["norm"]["bias"])
    lr, wd = 0.5, 0.01

    # LARS (You et al. 2017): trust = tc * |p| / |g + wd p| on kernels; biases: plain SGD.
    lars = _first_update("lars", grads, params, weight_decay=wd, momentum=0.9, nesterov=False,
                         trust_coefficient=0.001)  # fmt: skip
    d = g + wd * p
    trust = 0.001 * np.linalg.norm(p) / np.linalg.norm(d)
    np.testing.assert_allclose(lars["conv"]["kernel"], -lr * trust * d, rtol=1e-5)
    np.testing.assert_allclose(lars["norm"]["bias"], -lr * gb, rtol=1e-5)

    # LAMB (You et al. 2019): Adam's first step is g / (|g| + eps) = sign(g) (bias-corrected).
    lamb = _first_update("lamb", grads, params, weight_decay=wd, eps=1e-6)
    r = g / (np.abs(g) + 1e-6) + wd * p
    np.testing.assert_allclose(lamb["conv"]["kernel"],
                               -lr * np.linalg.norm(p) / np.linalg.norm(r) * r, rtol=1e-4)  # fmt: skip
    rb = gb / (np.abs(gb) + 1e-6)
    np.testing.assert_allclose(lamb["norm"]["bias"],
                               -lr * np.linalg.norm(pb) / np.linalg.norm(rb) * rb, rtol=1e-4)  # fmt: skip

    # Lion (Chen et al. 2023): sign((1 - b1) g) plus decoupled decay, kernels only.
    lion = _first_update("lion", grads, params, weight_decay=wd, b1=0.9, b2=0.99)
    np.testing.assert_allclose(lion["conv"]["kernel"], -lr * (np.sign(g) + wd * p), rtol=1e-5)
    np.testing.assert_allclose(lion["norm"]["bias"], -lr * np.sign(gb), rtol=1e-5)


def _newton_schulz(x):
    """Jordan's reference orthogonalization (modded-nanogpt `zeropower_via_newtonschulz5`)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    transposed = x.shape[0] > x.shape[1]
    x = (x.T if transposed else x) / (np.linalg.norm(x) + 1e-8)
    for _ in range(5):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transposed else x


def test_muon_first_step_matches_the_reference_and_adamw_takes_the_rest():
    rng = np.random.default_rng(1)
    shapes = {"block": {"kernel": (3, 3, 8, 16)}, "fc": {"kernel": (24, 16)},
              "query": {"kernel": (8, 2, 4)}, "out": {"kernel": (2, 4, 8)},
              "stem_conv": {"kernel": (3, 3, 3, 8)}, "head": {"kernel": (16, 3), "bias": (3,)}}  # fmt: skip
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes,
                          is_leaf=lambda s: isinstance(s, tuple))  # fmt: skip
    grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
    lr, wd = 0.5, 0.01
    update = _first_update("muon", grads, params, weight_decay=wd, muon_rms=0.2, eps=1e-8)
    as_matrix = {"block": (72, 16), "fc": (24, 16), "query": (8, 8), "out": (8, 8)}
    for name, (fan_in, fan_out) in as_matrix.items():
        g, p = np.asarray(grads[name]["kernel"], np.float64), np.asarray(params[name]["kernel"])
        direction = _newton_schulz(g.reshape(fan_in, fan_out)).reshape(g.shape)
        expected = -lr * (0.2 * np.sqrt(max(fan_in, fan_out)) * direction + wd * p)
        np.testing.assert_allclose(update[name]["kernel"], expected, rtol=2e-3, atol=2e-5)
    for name, leaf in (("stem_conv", "kernel"), ("head", "kernel"), ("head", "bias")):
        g, p = np.asarray(grads[name][leaf]), np.asarray(params[name][leaf])
        decay = wd * p if leaf == "kernel" else 0.0  # AdamW's first step: sign(g) + decay.
        np.testing.assert_allclose(update[name][leaf], -lr * (g / (np.abs(g) + 1e-8) + decay),
                                   rtol=1e-5)  # fmt: skip


@pytest.mark.parametrize(
    "name, fields, size, channels, muon_kernels",
    [("resnet20", {"width": 16, "stem": "small"}, 28, 1, 20),  # 9 blocks x 2, 2 projections.
     ("efficientnet_lite0", {}, 32, 3, 32),  # 15 expand, 16 project, 1 head conv; no depthwise.
     ("vit_ti", {"patch_size": 8}, 16, 3, 72)],  # 4 attention + 2 MLP per block, 12 blocks.
)  # fmt: skip
def test_muon_takes_the_hidden_kernels_of_every_family(name, fields, size, channels,
                                                        muon_kernels):  # fmt: skip
    from imgcls_jax import models

    model = models.build_model({"name": name, "dtype": "float32", **fields}, 10)
    params = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, channels)), train=False)
    )["params"]
    matrices = jax.tree.leaves(optimizers.muon_matrices(params),
                               is_leaf=lambda x: x is None or isinstance(x, tuple))  # fmt: skip
    assert sum(m is not None for m in matrices) == muon_kernels


@pytest.mark.slow
def test_muon_trains_a_resnet_on_eight_devices():
    from conftest import synthetic_dataset, tiny_config, train_steps

    from imgcls_jax.training.builder import Trainer

    config = tiny_config(**{"optimizer.name": "muon", "optimizer.learning_rate": 0.02,
                            "optimizer.weight_decay": 0.01, "input.batch_size": 32,
                            "model.width": 8, "augment.train": ""})  # fmt: skip
    trainer = Trainer(config, synthetic_dataset())
    _, losses = train_steps(trainer, 12)
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize("adaptive", [False, True])
def test_sam_first_step_takes_the_gradient_at_the_ascent_point(adaptive):
    """On f(w) = sum(a w^2 / 2 + b w): SAM's update is SGD's with the gradient at
    w + rho g / ||g|| (ASAM: w + rho |w|^2 g / || |w| g ||)."""
    rng = np.random.default_rng(2)
    a, b = rng.uniform(0.5, 2, size=6), rng.normal(size=6)
    w = rng.normal(size=6)
    grad = lambda x: a * x + b  # noqa: E731
    c = base_config().optimizer
    c.update(name="sam", sam_rho=0.3, sam_adaptive=adaptive, momentum=0.9, nesterov=False,
             weight_decay=0.0)  # fmt: skip
    tx = optimizers.build_optimizer(ml_collections.ConfigDict(c), optax.constant_schedule(0.1))
    params = {"w": jnp.asarray(w, jnp.float32)}
    grad_fn = lambda p, _: {"w": grad(p["w"])}  # noqa: E731
    update, _ = tx.update(grad_fn(params, 0), tx.init(params), params, grad_fn=grad_fn)
    g = grad(w)
    step = np.abs(w) ** 2 * g / np.linalg.norm(np.abs(w) * g) if adaptive else g / np.linalg.norm(g)
    np.testing.assert_allclose(update["w"], -0.1 * grad(w + 0.3 * step), rtol=1e-5)


@pytest.mark.slow
def test_sam_trains_and_refuses_frozen_parameters():
    from conftest import synthetic_dataset, tiny_config, train_steps

    from imgcls_jax.training.builder import Trainer

    overrides = {"optimizer.name": "sam", "optimizer.learning_rate": 0.1, "input.batch_size": 32,
                 "model.width": 8, "augment.train": ""}  # fmt: skip
    trainer = Trainer(tiny_config(**overrides), synthetic_dataset())
    _, losses = train_steps(trainer, 12)
    assert np.isfinite(losses).all() and np.mean(losses[-3:]) < 0.7 * losses[0], losses
    with pytest.raises(ValueError, match="^optimizer.name=sam takes its second gradient"):
        Trainer(tiny_config(**overrides, **{"transfer.freeze": "^stem"}), synthetic_dataset())


def test_schedule_free_matches_the_paper_and_keeps_its_average_as_the_weight_average():
    """Schedule-free AdamW (Defazio et al. 2024, Algorithm 1 with Adam's preconditioner and
    weights lr^2 by the largest rate so far) on f(w) = sum(a w^2 / 2 + b w), in NumPy, against
    the registry's optimizer: the held parameters y and the average x agree for 6 steps of a
    warm-up schedule."""
    rng = np.random.default_rng(3)
    a, b, w0 = rng.uniform(0.5, 2, size=5), rng.normal(size=5), rng.normal(size=(1, 5))
    b1, b2, eps, decay, power = 0.9, 0.99, 1e-8, 0.01, 2.0
    schedule = optax.linear_schedule(0.0, 0.1, 3)  # 0, 0.033, 0.067, 0.1, 0.1, ...
    c = base_config().optimizer
    c.update(name="schedule_free", b1=b1, b2=b2, eps=eps, weight_decay=decay,
             schedule_free_lr_power=power)  # fmt: skip
    tx = optimizers.build_optimizer(ml_collections.ConfigDict(c), schedule)
    params = {"w": jnp.asarray(w0, jnp.float32)}  # 2-D: weight decay applies.
    state = tx.init(params)
    y = z = x = w0.astype(np.float64)
    v, weight_sum, max_lr = np.zeros_like(w0), 0.0, 0.0
    for t in range(1, 7):
        g = a * y + b
        grads = {"w": jnp.asarray(g, jnp.float32)}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        lr = float(schedule(t - 1))
        v = b2 * v + (1 - b2) * g**2
        z = z - lr * (g / (np.sqrt(v / (1 - b2**t)) + eps) + decay * y)
        max_lr = max(max_lr, lr)
        weight_sum += max_lr**power
        c_t = max_lr**power / weight_sum if weight_sum else 0.0
        x = (1 - c_t) * x + c_t * z
        y = (1 - b1) * z + b1 * x
        np.testing.assert_allclose(params["w"], y, rtol=2e-5, atol=1e-6)
        average = optimizers.schedule_free_average(state, params)
        np.testing.assert_allclose(average["w"], x, rtol=2e-5, atol=1e-5)


@pytest.mark.slow
def test_schedule_free_trains_and_evaluates_its_average(tmp_path):
    from conftest import synthetic_dataset, tiny_config

    from imgcls_jax.training.builder import Trainer
    from imgcls_jax.training.loop import train_and_evaluate
    from imgcls_jax.training.trained_model import load_workdir

    overrides = {"optimizer.name": "schedule_free", "optimizer.learning_rate": 0.01,
                 "optimizer.weight_decay": 0.01, "schedule.name": "constant",
                 "training.num_train_steps": 16, "input.batch_size": 32, "model.width": 8,
                 "augment.train": "", "training.early_stopping_metric": "val_ema/accuracy"}  # fmt: skip
    results = train_and_evaluate(tiny_config(**overrides), str(tmp_path), synthetic_dataset())
    assert results["test_ema/accuracy"] > 0.6, results  # The average x is what `predict` serves.
    trainer = Trainer(tiny_config(**overrides), synthetic_dataset())
    from conftest import trainer_restore

    state = trainer_restore(trainer, tmp_path)[0]
    average = optimizers.schedule_free_average(state.opt_state, state.params)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)  # noqa: E731
    jax.tree.map(close, state.ema["params"], average)  # (Rounding of the fused step aside.)
    served = load_workdir(str(tmp_path), "latest").variables["params"]
    jax.tree.map(np.testing.assert_array_equal, served, state.ema["params"])
    with pytest.raises(ValueError, match="keeps its own weight average"):
        from imgcls_jax.training import config_check

        config_check.validate(tiny_config(**overrides, **{"training.ema_decay": 0.99}))
