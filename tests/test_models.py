"""Every registered model: forward shapes, gradients reach every parameter, BatchNorm modes, dtype."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcls_jax.config import base_config, model_config
from imgcls_jax.models import build_model, names
from imgcls_jax.models.layers import max_pool


def _config(name, **kw):
    return model_config(**{"name": name, "width": 4, "stem": "small", "dtype": "float32",
                           "bn_momentum": 0.9, "kernels": "auto", **kw})  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", names())
def test_every_model_maps_images_to_logits(name):
    stem = (
        "imagenet"
        if name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
        else "small"
    )
    model = build_model(_config(name, stem=stem), 7)
    x = jnp.zeros((2, 64 if stem == "imagenet" else 32, 64 if stem == "imagenet" else 32, 3))
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    logits = jax.eval_shape(lambda v: model.apply(v, x, train=False), variables)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32
    expected = {"params"} if name.startswith("vit") else {"params", "batch_stats"}
    assert set(variables) == expected


# Registered models made shallower where their depth only repeats blocks already covered: one
# block per stage, two where a stage's later blocks are the only identity shortcuts.
SHALLOWER = {
    "resnet50": dict(stage_sizes=[1, 2, 1, 1]),
    "efficientnet_lite0": dict(depth_coefficient=0.3),
}


@pytest.mark.slow
@pytest.mark.parametrize("name, stem", [("resnet8", "small"), ("resnet18", "imagenet"),
                                        ("resnet50", "imagenet"), ("efficientnet_lite0", ""),
                                        ("airbench", ""), ("vit_ti", "")])  # fmt: skip
def test_every_parameter_gets_a_gradient(name, stem):
    """One model per block type and stem. (Random numbers come from the "rbg" generator and
    NumPy: XLA:CPU compiles a threefry sampler per parameter shape, slowly, and the values do
    not matter here.)"""
    model = build_model(_config(name, stem=stem), 7).clone(**SHALLOWER.get(name, {}))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)), jnp.float32)
    init = jax.jit(lambda key: model.init(key, x, train=False))
    variables = init(jax.random.key(1, impl="rbg"))
    # Perturb the parameters: zero-initialised last BN scales block gradients at init only.
    params = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32),
                          variables["params"])  # fmt: skip

    def loss(params):
        logits, _ = model.apply(
            {"params": params, "batch_stats": variables.get("batch_stats", {})},
            x, train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(3)},
        )  # fmt: skip
        return jnp.sum(logits**2)

    grads = jax.jit(jax.grad(loss))(params)
    dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
            if not np.any(np.asarray(g))]  # fmt: skip
    assert not dead


def test_known_parameter_counts():
    def count(name, classes, stem):
        model = build_model(_config(name, width=64, stem=stem), classes)
        shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 224, 224, 3)))
        return sum(np.prod(x.shape) for x in jax.tree.leaves(shapes["params"]))

    assert count("resnet18", 1000, "imagenet") == 11_689_512  # torchvision's figure
    assert count("resnet50", 1000, "imagenet") == 25_557_032  # torchvision's figure
    assert count("efficientnet_lite0", 1000, "") == 4_652_008  # TF-Lite model card: 4.7M


def test_batchnorm_train_updates_stats_eval_uses_them():
    model = build_model(_config("resnet8"), 3)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 16, 1)) * 3 + 2, jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(1, impl="rbg"), x)
    train = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    evaluate = jax.jit(lambda v, x: model.apply(v, x, train=False))
    _, updates = train(variables, x)
    before, after = variables["batch_stats"], updates["batch_stats"]
    assert not np.allclose(before["stem_norm"]["mean"], after["stem_norm"]["mean"])
    # Eval mode: each example's output does not depend on the rest of the batch.
    new_vars = {"params": variables["params"], "batch_stats": after}
    full = evaluate(new_vars, x)
    single = evaluate(new_vars, x[:1])
    np.testing.assert_allclose(full[:1], single, rtol=1e-5, atol=1e-5)
    # Train mode normalises with batch statistics, so the batch composition matters.
    train_full, _ = train(new_vars, x)
    train_part, _ = train(new_vars, x[:2])
    assert not np.allclose(train_full[:1], train_part[:1], atol=1e-4)


def test_bfloat16_compute_keeps_float32_params():
    model = build_model(_config("resnet8", dtype="bfloat16"), 3)
    x = jnp.ones((2, 16, 16, 1))
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(variables["params"]))
    apply = jax.jit(lambda v: model.apply(v, x))
    assert "bf16" in apply.lower(variables).as_text()
    assert apply(variables).dtype == jnp.float32


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape, window, strides, padding", [
    ((3, 9, 9, 4), (3, 3), (2, 2), ((1, 1), (1, 1))),  # ResNet's stem pool; odd side
    ((3, 7, 6, 4), (2, 2), (2, 2), ((0, 0), (0, 0))),  # airbench's; an odd side drops a row
    ((2, 5, 5, 3), (5, 5), (5, 5), ((0, 0), (0, 0))),  # global
    ((2, 12, 12, 2), (12, 12), (12, 12), ((0, 0), (0, 0))),  # more positions than int8 holds
])  # fmt: skip
def test_max_pool_matches_flax_in_values_and_gradients(shape, window, strides, padding, dtype):
    """Including ties (small integers), where each window's first maximum takes the gradient,
    as in XLA's select-and-scatter; overlapping windows may add in another order (rounding)."""
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal(shape), rng.integers(0, 3, shape)):
        x = jnp.asarray(x, dtype)
        ours, vjp_ours = jax.vjp(lambda x: max_pool(x, window, strides, padding), x)
        flax_, vjp_flax = jax.vjp(lambda x: nn.max_pool(x, window, strides, padding), x)
        np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(flax_, np.float32))
        grad_out = jnp.asarray(rng.standard_normal(ours.shape), dtype)
        (grad_ours,), (grad_flax,) = vjp_ours(grad_out), vjp_flax(grad_out)
        assert grad_ours.dtype == dtype
        overlapping = window != strides
        np.testing.assert_allclose(
            np.asarray(grad_ours, np.float32), np.asarray(grad_flax, np.float32),
            rtol=0, atol=0.02 if overlapping and dtype == jnp.bfloat16 else 1e-6,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("name", "expected"),
    # timm's vit_{tiny,small,base,large}_patch16_224 and vit_{huge,giant}_patch14_224 with
    # 1,000 classes (timm 1.0.31).
    [("vit_ti", 5_717_416), ("vit_s", 22_050_664), ("vit_b", 86_567_656),
     ("vit_l", 304_326_632), ("vit_h", 632_045_800), ("vit_g", 1_012_611_432)],
)  # fmt: skip
def test_vit_sizes_match_the_published_models(name, expected):
    from imgcls_jax.config import apply_overrides

    patch = 14 if name in ("vit_h", "vit_g") else 16
    config = apply_overrides(base_config().model, {"name": name, "patch_size": patch})
    model = build_model(config, 1000)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3))))
    assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == expected


@pytest.mark.slow
def test_vit_options_small_patches_pooling_and_fixed_position_embeddings():
    from imgcls_jax.config import apply_overrides

    images = jnp.asarray(np.random.default_rng(0).normal(size=(2, 28, 28, 1)), jnp.float32)
    base = base_config().model
    for pool, posemb in (("cls", "learn"), ("gap", "sincos2d")):
        config = apply_overrides(base, {"name": "vit_ti", "patch_size": 4, "pool": pool,
                                        "posemb": posemb})  # fmt: skip
        model = build_model(config, 10)
        variables = model.init(jax.random.key(0), images)
        assert ("cls_token" in variables["params"]) == (pool == "cls")
        assert ("pos_embedding" in variables["params"]) == (posemb == "learn")
        if posemb == "learn":  # 7x7 patches of 4 px, plus the class token.
            assert variables["params"]["pos_embedding"].shape == (1, 50, 192)
        assert model.apply(variables, images).shape == (2, 10)
    with pytest.raises(ValueError, match="multiple of 4"):
        model.init(jax.random.key(0), jnp.zeros((1, 30, 30, 1)))


def test_drop_path_drops_whole_examples_and_keeps_the_mean():
    from imgcls_jax.models.layers import DropPath

    x = jnp.ones((4000, 3, 5))
    layer = DropPath(0.25)
    y = np.asarray(layer.apply({}, x, True, rngs={"dropout": jax.random.key(1)}))
    kept = y[:, 0, 0] != 0
    assert np.all(y[kept] == 1 / 0.75) and np.all(y[~kept] == 0)  # Whole examples.
    assert abs(kept.mean() - 0.75) < 0.03 and abs(y.mean() - 1.0) < 0.04
    np.testing.assert_array_equal(layer.apply({}, x, False), x)  # Evaluation: identity.


@pytest.mark.slow
def test_resnet_drop_path_changes_training_only():
    from imgcls_jax.config import apply_overrides

    images = jnp.asarray(np.random.default_rng(0).normal(size=(8, 16, 16, 3)), jnp.float32)
    config = apply_overrides(base_config().model, {"name": "resnet20", "width": 4,
                                                   "kernels": "xla"})  # fmt: skip
    plain = build_model(config, 10)
    dropping = build_model(apply_overrides(config, {"drop_path_rate": 0.5}), 10)
    variables = plain.init(jax.random.key(0), images)
    # Perturbed: the zero-initialised last BN scale of each block makes every branch 0 at init.
    rng = np.random.default_rng(1)
    variables = {**variables, "params": jax.tree.map(
        lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), variables["params"])}  # fmt: skip
    # The same parameters (stochastic depth adds none); the same function in evaluation.
    assert jax.tree.structure(dropping.init(jax.random.key(0), images)) == jax.tree.structure(
        variables
    )
    np.testing.assert_array_equal(plain.apply(variables, images), dropping.apply(variables, images))

    def train(model):
        return model.apply(variables, images, train=True, mutable=["batch_stats"],
                           rngs={"dropout": jax.random.key(2)})[0]  # fmt: skip

    assert not np.allclose(train(plain), train(dropping))
