"""Layers shared by the model families: convolutions padded as in PyTorch, batch norm with its
activation (`NormAct`) on an optional native training kernel, and max pooling that XLA:CPU
runs fast."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from imgcls_jax import registry
from imgcls_jax.kernels import XLA, Kernels

DTYPES = ("float32", "bfloat16", "float16")  # What models compute in (model.dtype).


def compute_dtype(name: str) -> jnp.dtype:
    """The dtype named by `model.dtype`; raises naming the closest valid one."""
    registry.check_choice("model.dtype", name, DTYPES)
    return jnp.dtype(name)


class Conv(nn.Conv):
    """A convolution padded by (k - 1) // 2 on every side, as in PyTorch/torchvision (unlike
    "SAME", which pads strided convolutions asymmetrically), so converted weights agree."""

    def __post_init__(self):
        if self.padding == "SAME":  # The default: replace with symmetric padding.
            object.__setattr__(self, "padding", [((k - 1) // 2,) * 2 for k in self.kernel_size])
        super().__post_init__()


class NormAct(nn.BatchNorm):
    """`nn.BatchNorm`, then the activation `act` (e.g. `nn.relu`; None: none). Its
    training-mode statistics, normalisation (with a ReLU) and backward pass can run in one
    native kernel, `train_fn(x, scale, bias, epsilon, relu) -> (y, mean, biased var)` (e.g.
    oneDNN's); another activation follows the kernel. Same variables as `nn.BatchNorm` and,
    to float rounding, the same numbers; any case the kernel does not cover (evaluation, init,
    masks, cross-device statistics, not NHWC float32 or bfloat16, non-float32 parameters)
    takes the plain path."""

    train_fn: Callable | None = None
    act: Callable | None = None

    @nn.compact
    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        evaluating = nn.merge_param(
            "use_running_average", self.use_running_average, use_running_average
        )
        if (
            self.train_fn is None
            or evaluating
            or self.is_initializing()
            or mask is not None
            or self.axis_name is not None
            or x.ndim != 4
            or self.axis not in (-1, 3)
            or x.dtype not in (jnp.float32, jnp.bfloat16)
            or self.dtype not in (None, x.dtype)
            or self.param_dtype != jnp.float32
            or not (self.use_scale and self.use_bias)
        ):
            return self._activate(super().__call__(x, use_running_average, mask=mask))
        channels = x.shape[-1:]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        scale = self.param("scale", self.scale_init, channels, self.param_dtype)
        bias = self.param("bias", self.bias_init, channels, self.param_dtype)
        fused_relu = self.act is nn.relu
        y, mean, var = self.train_fn(x, scale, bias, self.epsilon, fused_relu)
        mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y if fused_relu else self._activate(y)

    def _activate(self, y):
        return y if self.act is None else self.act(y)

    def frozen(self, x):
        """This layer in inference mode whatever the mode it was built for: normalised with
        its running statistics (then its activation), as timm's FrozenBatchNorm2d, for a
        frozen layer that must compute the same function in training and evaluation."""
        stats, params = self.variables["batch_stats"], self.variables["params"]
        y = (x - stats["mean"]) * jax.lax.rsqrt(stats["var"] + self.epsilon)
        return self._activate((y * params["scale"] + params["bias"]).astype(self.dtype or x.dtype))


def conv_and_norm(
    dtype: Any, bn_momentum: float, train: bool, kernels: Kernels = XLA
) -> tuple[Callable, Callable]:
    """The unbiased convolution and the batch norm with its activation (epsilon 1e-5, as in
    PyTorch) that ResNet and airbench build on, computing in `dtype` on the given kernels."""
    conv = functools.partial(Conv, use_bias=False, dtype=dtype,
                             conv_general_dilated=kernels.conv_general_dilated)  # fmt: skip
    norm = functools.partial(NormAct, train_fn=kernels.batch_norm_train,
                             use_running_average=not train, momentum=bn_momentum, epsilon=1e-5,
                             dtype=dtype)  # fmt: skip
    return conv, norm


def _window_slices(x: jax.Array, window: tuple, strides: tuple, out_hw: tuple) -> list:
    """The k*k strided views of NHWC `x` (already padded) that one pooling window's offsets
    see, in row-major window order."""
    (sh, sw), (oh, ow) = strides, out_hw
    return [
        x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
        for i in range(window[0])
        for j in range(window[1])
    ]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _max_pool(x: jax.Array, window: tuple, strides: tuple, padding: tuple) -> jax.Array:
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
    out_hw = tuple((padded.shape[1 + a] - window[a]) // strides[a] + 1 for a in (0, 1))
    return functools.reduce(jnp.maximum, _window_slices(padded, window, strides, out_hw))


def _max_pool_forward(x, window, strides, padding):
    y = _max_pool(x, window, strides, padding)
    return y, (x, y)


def _max_pool_backward(window, strides, padding, residuals, grad):
    """Each window's gradient goes to its first maximum (row-major), as XLA's
    select-and-scatter does for `nn.max_pool`; overlapping windows add up."""
    x, y = residuals
    if window == strides and not any(any(p) for p in padding):
        return (_disjoint_windows_gradient(x, y, grad, window),)
    out_dtype, grad = grad.dtype, grad.astype(jnp.float32)  # XLA:CPU is slow on bf16 here.
    padded = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
    taken = jnp.zeros(y.shape, bool)
    grad_padded = jnp.zeros(padded.shape, grad.dtype)
    offsets = [(i, j) for i in range(window[0]) for j in range(window[1])]
    for (i, j), view in zip(offsets, _window_slices(padded, window, strides, y.shape[1:3])):
        first = (view == y) & ~taken
        taken = taken | first
        # Interior padding puts each output's share back on its input position.
        share = jnp.where(first, grad, jnp.zeros_like(grad))
        grad_padded = grad_padded + lax.pad(share, jnp.zeros((), grad.dtype), (
            (0, 0, 0),
            (i, padded.shape[1] - i - strides[0] * (y.shape[1] - 1) - 1, strides[0] - 1),
            (j, padded.shape[2] - j - strides[1] * (y.shape[2] - 1) - 1, strides[1] - 1),
            (0, 0, 0),
        ))  # fmt: skip
    (top, _), (left, _) = padding
    return (grad_padded[:, top : top + x.shape[1], left : left + x.shape[2], :].astype(out_dtype),)


def _disjoint_windows_gradient(x, y, grad, window):
    """`_max_pool_backward` where windows tile the image: the index of each window's first
    maximum, then one broadcast select that puts the gradient there (rows and columns past
    the last whole window get none). XLA:CPU fuses both into plain loops; masks chained over
    the window positions and stacked into place ran 2-9x slower."""
    n, oh, ow, c = y.shape
    kh, kw = window
    tiled = x[:, : oh * kh, : ow * kw, :].reshape(n, oh, kh, ow, kw, c)
    index_dtype = jnp.int8 if kh * kw <= 127 else jnp.int32
    first = jnp.full(y.shape, kh * kw - 1, index_dtype)
    for position in reversed(range(kh * kw - 1)):  # The earliest match is written last.
        i, j = divmod(position, kw)
        first = jnp.where(tiled[:, :, i, :, j, :] == y, index_dtype(position), first)
    positions = jnp.arange(kh * kw, dtype=index_dtype).reshape(1, 1, kh, 1, kw, 1)
    spread = jnp.where(first[:, :, None, :, None, :] == positions,
                       grad[:, :, None, :, None, :], jnp.zeros((), grad.dtype))  # fmt: skip
    spread = spread.reshape(n, oh * kh, ow * kw, c)
    return jnp.pad(spread, ((0, 0), (0, x.shape[1] - oh * kh), (0, x.shape[2] - ow * kw), (0, 0)))


_max_pool.defvjp(_max_pool_forward, _max_pool_backward)


def max_pool(x: jax.Array, window: Sequence[int], strides: Sequence[int] | None = None,
             padding: Sequence[tuple[int, int]] = ((0, 0), (0, 0))) -> jax.Array:  # fmt: skip
    """`nn.max_pool` over NHWC `x`, with the same values and gradients, written as a maximum of
    strided slices: XLA:CPU runs those (and their masked gradient) as fused elementwise loops,
    where its reduce-window and select-and-scatter took half of a small network's step."""
    window = tuple(window)
    strides = tuple(strides or window)
    return _max_pool(x, window, strides, tuple(tuple(p) for p in padding))


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch of an example with probability
    `rate` during training (scaling the kept ones by 1 / (1 - rate))."""

    rate: float

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        if not train or self.rate == 0.0:
            return x
        keep = jax.random.bernoulli(
            self.make_rng("dropout"), 1.0 - self.rate, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return jnp.where(keep, x / (1.0 - self.rate), 0).astype(x.dtype)
