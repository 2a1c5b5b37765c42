"""oneDNN kernels compute the same function as XLA's: convolutions and batch norm, values and
gradients, alone and inside a whole ResNet training step; and when they are chosen."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import REPO_ROOT, why_failed
from jax import lax

from imgcls_jax import kernels, models
from imgcls_jax.data import fashion_mnist_files
from imgcls_jax.kernels import onednn
from imgcls_jax.models.efficientnet_lite import relu6
from imgcls_jax.models.layers import NormAct

# CI installs oneDNN (.ci/run) and sets this, so there a missing kernel fails rather than skips.
if not onednn.available():
    if os.environ.get("IMGCLS_REQUIRE_ONEDNN"):
        raise RuntimeError(onednn.load_error())
    pytest.skip(f"oneDNN kernels unavailable: {onednn.load_error()}", allow_module_level=True)

NHWC = ("NHWC", "HWIO", "NHWC")


def _normal(seed, shape, scale=1.0, shift=0.0):
    """NumPy's normal numbers: XLA:CPU compiles a threefry sampler per shape, slowly."""
    values = np.random.default_rng(seed).standard_normal(shape, np.float32) * scale + shift
    return jnp.asarray(values, jnp.float32)


@pytest.mark.parametrize(
    "kernel_size, strides, padding, channels",
    [
        (3, (1, 1), ((1, 1), (1, 1)), (3, 5)),
        (3, (2, 2), ((1, 1), (1, 1)), (4, 6)),  # ResNet downsampling.
        (1, (2, 2), ((0, 0), (0, 0)), (3, 4)),  # Projection shortcut.
        (7, (2, 2), ((3, 3), (3, 3)), (3, 8)),  # ImageNet stem.
        (3, (1, 2), ((0, 1), (2, 0)), (2, 3)),  # Asymmetric strides and padding.
        (3, (2, 2), "SAME", (2, 3)),  # EfficientNet's string padding.
    ],
)
@pytest.mark.parametrize("image", [(7, 6), (21, 18)])
def test_convolution_matches_xla_in_value_and_gradients(
    kernel_size, strides, padding, channels, image
):
    """On 7x6 images the outputs strided by 2 have at most 16 pixels, where the kernel
    gradient is an im2col copy and a matmul; elsewhere it is oneDNN's direct convolution."""
    x = _normal(0, (3, *image, channels[0]))
    kernel = _normal(1, (kernel_size, kernel_size, *channels), 0.3)

    def xla(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)

    def ours(x, k):
        return onednn.conv_general_dilated(x, k, strides, padding, dimension_numbers=NHWC)

    expected = xla(x, kernel)
    cotangent = _normal(2, expected.shape)
    np.testing.assert_allclose(jax.jit(ours)(x, kernel), expected, rtol=1e-5, atol=1e-5)
    expected_grads = jax.grad(lambda *a: jnp.sum(xla(*a) * cotangent), (0, 1))(x, kernel)
    grads = jax.jit(jax.grad(lambda *a: jnp.sum(ours(*a) * cotangent), (0, 1)))(x, kernel)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert "imgcls_onednn_conv" in str(
        jax.make_jaxpr(jax.grad(lambda *a: ours(*a).sum()))(x, kernel)
    )


@pytest.mark.parametrize("path", ["direct", "matmul", "rule"])
@pytest.mark.parametrize(("side", "strides", "kernel_size"), [(3, 1, 3), (8, 2, 3), (4, 1, 1)])
def test_both_kernel_gradient_paths_match_xla(path, side, strides, kernel_size):
    """Each way the kernel gradient can be computed, forced (as the benchmark forces it) or
    chosen by the CPU kind's rule, gives XLA's gradient."""
    x = _normal(0, (4, side, side, 5))
    pad = (kernel_size - 1) // 2
    geometry = ((strides, strides), ((pad, pad), (pad, pad)))
    kernel_shape = (kernel_size, kernel_size, 5, 6)

    def xla(k):
        return lax.conv_general_dilated(x, k, (strides, strides), geometry[1],
                                        dimension_numbers=NHWC)  # fmt: skip

    kernel = _normal(1, kernel_shape)
    out, vjp = jax.vjp(xla, kernel)
    cotangent = _normal(2, out.shape)
    got = jax.jit(lambda x, g: onednn.kernel_grad(x, g, kernel_shape, geometry, path))(x, cotangent)
    np.testing.assert_allclose(got, vjp(cotangent)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("channels", [8, 16])
def test_strided_pointwise_kernel_gradients_match_xla(channels):
    """1x1/2 convolutions at 56 px (a ResNet's projection at 224 px): oneDNN 2.6's direct
    kernel gradient crashed the process for 8 input channels, so the rule takes the matmul
    for channel counts that are not multiples of 16."""
    x = _normal(0, (8, 56, 56, channels))
    geometry = ((2, 2), ((0, 0), (0, 0)))
    kernel_shape = (1, 1, channels, 16)
    out, vjp = jax.vjp(lambda k: lax.conv_general_dilated(x, k, (2, 2), geometry[1],
                                                          dimension_numbers=NHWC),
                       _normal(1, kernel_shape))  # fmt: skip
    cotangent = _normal(2, out.shape)
    for _ in range(3):  # The crash did not come at every call.
        got = jax.jit(lambda x, g: onednn.kernel_grad(x, g, kernel_shape, geometry))(x, cotangent)
        np.testing.assert_allclose(got, vjp(cotangent)[0], rtol=1e-4, atol=1e-3)


def _passes(x, kernel, cotangent, geometry, path):
    """Forward, input gradient and kernel gradient of oneDNN's convolution on `path`."""

    def passes(x, k, g):
        y, vjp = jax.vjp(lambda x, k: onednn.conv2d(x, k, geometry, path), x, k)
        return (y, *vjp(g))

    return jax.jit(passes)(x, kernel, cotangent)


@pytest.mark.parametrize(
    ("shape", "padding", "rule_takes_winograd"),
    [
        ((2, 7, 7, 64, 64), ((1, 1), (1, 1)), True),  # 7x7 outputs, 64 channels.
        ((2, 4, 4, 256, 256), ((1, 1), (1, 1)), True),  # 4x4 outputs, 256 channels.
        ((2, 9, 9, 64, 80), ((0, 0), (0, 0)), True),  # Unpadded.
        ((2, 7, 7, 32, 64), ((1, 1), (1, 1)), False),  # Too few channels.
        ((2, 5, 5, 64, 64), ((1, 1), (1, 1)), False),  # Too few pixels.
        ((2, 8, 8, 64, 64), ((0, 1), (1, 0)), False),  # Unequal padding.
    ],
)
def test_winograd_matches_xla_and_the_rule_takes_it_for_wide_layers(
    shape, padding, rule_takes_winograd
):
    """oneDNN's Winograd F(4x4, 3x3) convolution (float32, AVX-512) computes XLA's values and
    gradients; the rule takes it, bit for bit, for wide layers with enough output pixels and
    equal paddings, and the direct convolution, bit for bit, elsewhere."""
    n, h, w, cin, cout = shape
    x = _normal(0, (n, h, w, cin))
    kernel = _normal(1, (3, 3, cin, cout), (9 * cin) ** -0.5)
    geometry = ((1, 1), padding)

    def xla(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), padding, dimension_numbers=NHWC)

    y, vjp = jax.vjp(xla, x, kernel)
    cotangent = _normal(2, y.shape)
    want = (y, *vjp(cotangent))
    rule = _passes(x, kernel, cotangent, geometry, "rule")
    direct = _passes(x, kernel, cotangent, geometry, "direct")
    for got_rule, got_direct, expected in zip(rule, direct, want):
        np.testing.assert_allclose(got_direct, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got_rule, expected, rtol=1e-4, atol=1e-4)
    if not onednn.avx512():  # No Winograd kernels: everything is direct.
        assert all(np.array_equal(a, b) for a, b in zip(rule, direct))
        return
    if padding[0][0] != padding[0][1]:
        with pytest.raises(Exception, match="equal paddings of 0 or 1"):
            _passes(x, kernel, cotangent, geometry, "winograd")
        assert all(np.array_equal(a, b) for a, b in zip(rule, direct))
        return
    winograd = _passes(x, kernel, cotangent, geometry, "winograd")
    for got, expected in zip(winograd, want):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert not any(np.array_equal(a, b) for a, b in zip(winograd, direct))  # Other roundings.
    taken = winograd if rule_takes_winograd else direct
    assert all(np.array_equal(a, b) for a, b in zip(rule, taken))


_WORKER_THREADS_SCRIPT = """
import jax, jax.numpy as jnp, numpy as np
from jax import lax
from imgcls_jax.kernels import onednn

onednn.load()
rng = np.random.default_rng(0)
x = jnp.asarray(rng.standard_normal((64, 7, 7, 64), np.float32))
kernel = jnp.asarray(rng.standard_normal((3, 3, 64, 64), np.float32) * 0.05)
pads = ((1, 1), (1, 1))

@jax.jit
def grads(x, k):
    y, vjp = jax.vjp(lambda x, k: onednn.conv2d(x, k, ((1, 1), pads)), x, k)
    return vjp(jnp.ones_like(y))

def xla(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))

y, vjp = jax.vjp(xla, x, kernel)
want = vjp(jnp.ones_like(y))
for _ in range(10):
    got = jax.block_until_ready(grads(x, kernel))
print(max(float(jnp.abs(a - b).max() / jnp.abs(b).max()) for a, b in zip(got, want)))
"""


def test_winograd_gradients_run_on_xla_worker_threads():
    """Both gradients in one program, with a constant cotangent, on one CPU device: XLA runs
    the calls on its worker threads, where oneDNN 2.6's own scratch memory had Winograd's
    gradients (at this batch size, not at 32; not with 8 devices) write through a null
    pointer, and the process crashed within three steps. The kernels now bring their own.
    (Without AVX-512 the rule runs the direct convolution, and this checks only its values.)"""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    run = subprocess.run([sys.executable, "-c", _WORKER_THREADS_SCRIPT], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    assert float(run.stdout.split()[-1]) < 1e-5


def _assert_close_to_bfloat16(got, want):
    """`got`, computed in bfloat16, is `want` (float32) up to a few bfloat16 roundings."""
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


@pytest.mark.parametrize("strides", [(1, 1), (2, 2)])
def test_bfloat16_convolution_matches_a_float32_reference(strides):
    """bfloat16 in and out (on AMX where the CPU has it), accumulating in float32: values and
    gradients equal a float32 convolution of the same bfloat16 numbers, to bfloat16 rounding.
    Unstrided (100-pixel outputs) the kernel gradient is oneDNN's direct convolution; strided
    (25 pixels), the im2col + matmul one."""
    x = _normal(0, (4, 10, 10, 16)).astype(jnp.bfloat16)
    kernel = _normal(1, (3, 3, 16, 8), 0.2).astype(jnp.bfloat16)

    def conv(fn, x, k, **kwargs):
        return fn(x, k, strides, ((1, 1), (1, 1)), dimension_numbers=NHWC, **kwargs)

    def reference(x, k):
        f32 = (x.astype(jnp.float32), k.astype(jnp.float32))
        return conv(lax.conv_general_dilated, *f32, precision=lax.Precision.HIGHEST)

    expected = reference(x, kernel)
    cotangent = _normal(2, expected.shape).astype(jnp.bfloat16)
    got = jax.jit(lambda x, k: conv(onednn.conv_general_dilated, x, k))(x, kernel)
    assert got.dtype == jnp.bfloat16
    _assert_close_to_bfloat16(got, expected)
    grads = jax.jit(jax.grad(
        lambda x, k: jnp.sum(conv(onednn.conv_general_dilated, x, k) * cotangent, dtype=jnp.float32),
        (0, 1),
    ))(x, kernel)  # fmt: skip
    want_grads = jax.grad(lambda *a: jnp.sum(reference(*a) * cotangent), (0, 1))(x, kernel)
    for got, want in zip(grads, want_grads):
        assert got.dtype == jnp.bfloat16
        _assert_close_to_bfloat16(got, want)


def test_unsupported_convolutions_fall_back_to_xla():
    x, kernel = _normal(0, (2, 8, 8, 4)), _normal(1, (3, 3, 1, 4))
    grouped = jax.make_jaxpr(
        lambda x, k: onednn.conv_general_dilated(
            x, k, (1, 1), "SAME", dimension_numbers=NHWC, feature_group_count=4
        )
    )(x, kernel)
    half = jax.make_jaxpr(
        lambda x, k: onednn.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=NHWC)
    )(x.astype(jnp.float16), _normal(1, (3, 3, 4, 4)).astype(jnp.float16))
    cropped = jax.make_jaxpr(
        lambda x, k: onednn.conv_general_dilated(
            x, k, (1, 1), ((-1, 0), (1, 1)), dimension_numbers=NHWC
        )
    )(x, _normal(1, (3, 3, 4, 4)))
    for jaxpr in (grouped, half, cropped):
        assert "ffi_call" not in str(jaxpr) and "conv_general_dilated" in str(jaxpr)


def test_bfloat16_kernels_are_taken_where_the_cpu_has_avx512(monkeypatch):
    """oneDNN's own ISA report agrees with /proc/cpuinfo; without AVX-512 (faked), bfloat16
    convolutions and models go to XLA, and asking for oneDNN says why."""
    flags = set(pathlib.Path("/proc/cpuinfo").read_text().split())
    avx512 = {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags
    assert (jnp.bfloat16 in onednn.kernel_dtypes()) == avx512
    monkeypatch.setattr(onednn, "_cpu_isa", lambda: 0x7)  # dnnl_cpu_isa_avx2
    assert onednn.kernel_dtypes() == (jnp.float32,)
    x, kernel = _normal(0, (2, 8, 8, 4)), _normal(1, (3, 3, 4, 4))

    def conv(x, kernel):
        return onednn.conv_general_dilated(x, kernel, (1, 1), "SAME", dimension_numbers=NHWC)

    bf16 = jax.make_jaxpr(conv)(x.astype(jnp.bfloat16), kernel.astype(jnp.bfloat16))
    assert "ffi_call" not in str(bf16) and "ffi_call" in str(jax.make_jaxpr(conv)(x, kernel))
    one_cpu = jax.devices()[:1]  # As on a one-device CPU run.
    assert kernels.backend("auto", one_cpu, "bfloat16") == kernels.XLA
    assert kernels.backend("auto", one_cpu, "float32").name == "onednn"
    with pytest.raises(ValueError, match="take float32 on this CPU.*bfloat16 needs AVX-512"):
        kernels.backend("onednn", one_cpu, "bfloat16")


def test_a_kernel_given_mixed_dtypes_raises_instead_of_misreading_memory():
    x, kernel = _normal(0, (1, 4, 4, 2)), _normal(1, (1, 1, 2, 2)).astype(jnp.bfloat16)
    with pytest.raises(Exception, match="float32 or bfloat16 buffers, all of one type"):
        onednn._call("forward", x.shape, x, kernel, ((1, 1), ((0, 0), (0, 0))))


@pytest.mark.parametrize("act", [None, jax.nn.relu, relu6], ids=["none", "relu", "relu6"])
def test_batch_norm_matches_flax_in_outputs_statistics_and_gradients(act):
    """Alone, with the ReLU that follows it fused into the kernel, and followed by another
    activation."""
    x = _normal(0, (6, 5, 4, 3), 2.0, 1.0)
    params = {"scale": _normal(1, (3,), 0.5, 1.0), "bias": _normal(2, (3,))}
    stats = {"mean": _normal(3, (3,)), "var": _normal(4, (3,), 0.1, 1.0)}
    cotangent = _normal(5, x.shape)

    def run(module, params, x):
        y, updated = module.apply({"params": params, "batch_stats": stats}, x,
                                  mutable=["batch_stats"])  # fmt: skip
        return jnp.sum(y * cotangent), (y, updated["batch_stats"])

    plain = NormAct(use_running_average=False, momentum=0.8, epsilon=1e-3, act=act)
    native = plain.clone(train_fn=onednn.batch_norm_train)
    assert plain.train_fn is None  # The plain path: flax's BatchNorm, then `act`.
    (_, (want_y, want_stats)), want_grads = jax.value_and_grad(run, (1, 2), has_aux=True)(
        plain, params, x
    )
    (_, (y, new_stats)), grads = jax.jit(
        jax.value_and_grad(run, (1, 2), has_aux=True), static_argnums=0
    )(native, params, x)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    assert (act is not None) == bool(np.any(np.asarray(y) == 0))  # Zeros, where `act` cut.
    for got, want in zip(
        jax.tree.leaves((new_stats, grads)), jax.tree.leaves((want_stats, want_grads))
    ):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # Evaluation uses the running statistics, through the plain path.
    variables = {"params": params, "batch_stats": stats}
    evaluated = native.clone(use_running_average=True).apply(variables, x)
    expected = plain.clone(use_running_average=True).apply(variables, x)
    np.testing.assert_allclose(evaluated, expected, rtol=1e-6)


@pytest.mark.parametrize("act", [None, jax.nn.relu], ids=["none", "relu"])
def test_bfloat16_batch_norm_matches_flax(act):
    """bfloat16 activations, float32 parameters and statistics, as flax computes them."""
    x = _normal(0, (6, 5, 4, 8), 2.0, 1.0).astype(jnp.bfloat16)
    params = {"scale": _normal(1, (8,), 0.5, 1.0), "bias": _normal(2, (8,))}
    stats = {"mean": jnp.zeros(8), "var": jnp.ones(8)}
    cotangent = _normal(5, x.shape).astype(jnp.bfloat16)

    def run(module, params, x):
        y, updated = module.apply({"params": params, "batch_stats": stats}, x,
                                  mutable=["batch_stats"])  # fmt: skip
        return jnp.sum(y * cotangent, dtype=jnp.float32), (y, updated["batch_stats"])

    kwargs = dict(use_running_average=False, momentum=0.8, dtype=jnp.bfloat16, act=act)
    step = jax.jit(jax.grad(run, (1, 2), has_aux=True), static_argnums=0)
    want_grads, (want_y, want_stats) = step(NormAct(**kwargs), params, x)
    grads, (y, new_stats) = step(NormAct(**kwargs, train_fn=onednn.batch_norm_train), params, x)
    assert y.dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
    assert "imgcls_onednn_norm" in str(jax.make_jaxpr(
        lambda p: run(NormAct(**kwargs, train_fn=onednn.batch_norm_train), p, x)
    )(params))  # fmt: skip
    for got, want in zip(jax.tree.leaves(new_stats), jax.tree.leaves(want_stats)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # float32 of the same data
    for got, want in zip(jax.tree.leaves((y, grads)), jax.tree.leaves((want_y, want_grads))):
        _assert_close_to_bfloat16(got, want)


@pytest.mark.slow
def test_resnet_training_step_matches_xla():
    """A whole ResNet-8 step (forward in train mode, loss, gradients, new BN statistics) with
    oneDNN's convolutions and batch norm equals the same step with XLA's; in bfloat16, it is
    as accurate as XLA's."""
    from imgcls_jax.config import model_config

    config = model_config(name="resnet8", width=4, stem="small", dtype="float32", kernels="xla")
    plain = models.build_model(config, 5)
    native = plain.clone(kernels=kernels.backend("onednn", jax.devices()[:1], "float32"))
    x = _normal(0, (8, 12, 12, 3))
    labels = jnp.arange(8) % 5
    variables = jax.jit(plain.init)(jax.random.key(1, impl="rbg"), x)
    params = jax.tree.map(lambda p: p + 0.1 * _normal(2, p.shape), variables["params"])

    def loss(model, params):
        logits, updated = model.apply({"params": params, "batch_stats": variables["batch_stats"]},
                                      x, train=True, mutable=["batch_stats"])  # fmt: skip
        return jnp.mean(-jax.nn.log_softmax(logits)[jnp.arange(8), labels]), updated

    def step(model):
        return jax.jit(jax.value_and_grad(lambda p: loss(model, p), has_aux=True))(params)

    want, got = step(plain), step(native)
    assert "imgcls_onednn" in str(jax.make_jaxpr(lambda p: loss(native, p))(params))
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    # In bfloat16 the two round differently: oneDNN's step must be as close to the float32
    # step as XLA's bfloat16 step is.
    (loss_f32, _), grads_f32 = want

    def error(grads):
        leaves = [np.ravel(leaf) for leaf in jax.tree.leaves((grads, grads_f32))]
        got, reference = np.split(np.concatenate(leaves), 2)
        return np.linalg.norm(got - reference) / np.linalg.norm(reference)

    (loss_native, _), grads_native = step(native.clone(dtype=jnp.bfloat16))
    (loss_xla, _), grads_xla = step(plain.clone(dtype=jnp.bfloat16))
    assert {leaf.dtype for leaf in jax.tree.leaves(grads_native)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(loss_native, loss_f32, rtol=2 * abs(loss_xla / loss_f32 - 1) + 1e-3)
    assert error(grads_native) <= 1.5 * error(grads_xla)


def test_the_build_cache_is_keyed_by_the_onednn_version(monkeypatch):
    """An upgraded libdnnl gets its own build instead of loading one made for the old one."""
    version = onednn.onednn_version()
    assert version.split("+")[0].count(".") == 2  # E.g. 2.6.3+HASH: read from the library.
    built = onednn.library_path()
    assert onednn._build() == built and built.exists()  # The build loaded is this version's.
    monkeypatch.setattr(onednn, "onednn_version", lambda: "9.9.9+abc")
    assert onednn.library_path() != built and onednn.library_path().parent == built.parent


def test_auto_takes_onednn_only_on_one_cpu_device():
    devices = jax.devices()
    assert len(devices) == 8  # The test set-up's fake devices.
    assert kernels.backend("auto", devices, "float32") == kernels.XLA
    assert kernels.backend("xla", devices[:1], "float32") == kernels.XLA
    assert kernels.backend("auto", devices[:1], "float32").name == "onednn"
    with pytest.raises(ValueError, match="needs a run on one CPU device.*'auto' or 'xla'"):
        kernels.backend("onednn", devices, "float32")
    with pytest.raises(ValueError, match="Did you mean 'onednn'"):
        kernels.backend("onedn", devices, "float32")
    with pytest.raises(ValueError, match="Did you mean 'onednn'"):
        kernels.check_name("onedn")


@pytest.mark.slow
@pytest.mark.skipif(not fashion_mnist_files.available(), reason="needs dataset-fashion-mnist")
def test_one_cpu_device_launch_trains_on_onednn_and_resumes_exactly(tmp_path):
    """The default on a one-device CPU machine: launch.py picks the oneDNN kernels, and a run
    that lost its last checkpoint resumes from the one before and ends exactly as before."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}

    def launch(workdir):
        run = subprocess.run(
            [sys.executable, "launch.py", "--config=configs/resnet.py:tiny",
             f"--workdir={workdir}"],
            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert run.returncode == 0, why_failed(run)
        return run.stderr, json.loads((workdir / "results.json").read_text())

    log, straight = launch(tmp_path / "run")
    assert "run on oneDNN's kernels (model.kernels=auto)" in log
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["3", "6"]
    shutil.rmtree(tmp_path / "run" / "checkpoints" / "6")
    os.remove(tmp_path / "run" / "results.json")
    log, resumed = launch(tmp_path / "run")
    assert "Resumed from step 3" in log
    assert resumed == straight
