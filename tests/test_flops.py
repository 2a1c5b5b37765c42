"""FLOPs counted from the program: against ResNet-50's published count, XLA's cost analysis
on CPU, and the backward pass's known ratio."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcls_jax import models
from imgcls_jax.reporting import flops


def _variables(model, shape):
    return jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct(shape, jnp.float32))


def test_resnet50_forward_matches_the_published_multiply_adds():
    """torchvision's ResNet-50 at 224 px: 4.089 G multiply-adds (its model card's 4.09 GFLOPS
    count multiply-adds), so 8.18 GFLOP."""
    model = models.build("resnet50", num_classes=1000, stem="imagenet")
    shape = (1, 224, 224, 3)
    count = flops.flops(
        model.apply, _variables(model, shape), jax.ShapeDtypeStruct(shape, jnp.float32)
    )
    assert count == pytest.approx(2 * 4.089e9, rel=2e-3)


def test_the_count_agrees_with_xla_on_cpu():
    """On CPU, XLA's cost analysis counts convolutions too. Without padding the two agree
    (with padding XLA leaves out the taps on padded positions; we count whole windows, as the
    published figures do)."""

    def net(x, kernel, strided_kernel, dense):
        dims = ("NHWC", "HWIO", "NHWC")
        x = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=dims)
        x = jax.lax.conv_general_dilated(x, strided_kernel, (2, 2), "VALID",
                                         dimension_numbers=dims)  # fmt: skip
        return x.reshape(x.shape[0], -1) @ dense

    args = (jnp.ones((4, 17, 17, 3)), jnp.ones((3, 3, 3, 8)), jnp.ones((3, 3, 8, 16)),
            jnp.ones((7 * 7 * 16, 10)))  # fmt: skip
    cost = jax.jit(net).lower(*args).compile().cost_analysis()
    xla = (cost[0] if isinstance(cost, list) else cost)["flops"]
    expected = 2 * 4 * (15 * 15 * 8 * 27 + 7 * 7 * 16 * 72 + 10 * 7 * 7 * 16)
    assert flops.flops(net, *args) == expected == pytest.approx(xla, rel=1e-3)


def test_a_training_step_is_about_three_forward_passes():
    """Backward = input gradients + weight gradients, each as costly as the forward pass,
    except that the first convolution needs no input gradient."""
    model = models.build("resnet20", num_classes=10, width=16, stem="small")
    shape = (8, 28, 28, 1)
    variables = _variables(model, shape)
    images = jax.ShapeDtypeStruct(shape, jnp.float32)

    def loss(params, batch_stats, images):
        logits, _ = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                train=True, mutable=["batch_stats"])  # fmt: skip
        return logits.sum()

    forward = flops.flops(model.apply, variables, images)
    step = flops.flops(jax.grad(loss), variables["params"], variables["batch_stats"], images)
    stem = 2 * 8 * 28 * 28 * 16 * 9 * 1  # The first convolution's input gradient is skipped.
    np.testing.assert_allclose(step, 3 * forward - stem, rtol=1e-6)


def test_a_scan_counts_its_body_once_per_iteration():
    matrix = jnp.ones((8, 8))

    def scanned(x):
        return jax.lax.scan(lambda c, _: (c @ matrix, None), x, None, length=5)[0]

    assert flops.flops(scanned, jnp.ones((2, 8))) == 5 * 2 * 2 * 8 * 8
