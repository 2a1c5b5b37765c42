"""Layers shared by the model families: BatchNorm with an optional native training kernel."""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


class BatchNorm(nn.BatchNorm):
    """`nn.BatchNorm` whose training-mode statistics, normalisation and backward pass can run
    in one native kernel, `train_fn(x, scale, bias, epsilon) -> (y, mean, biased var)` (e.g.
    oneDNN's). Same variables and, to float rounding, the same numbers; any case the kernel
    does not cover (evaluation, init, masks, cross-device statistics, not NHWC float32 or
    bfloat16, non-float32 parameters) takes the plain path."""

    train_fn: Callable | None = None

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
            return super().__call__(x, use_running_average, mask=mask)
        channels = x.shape[-1:]
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, channels, jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, channels, jnp.float32)
        scale = self.param("scale", self.scale_init, channels, self.param_dtype)
        bias = self.param("bias", self.bias_init, channels, self.param_dtype)
        y, mean, var = self.train_fn(x, scale, bias, self.epsilon)
        mean, var = jax.lax.stop_gradient(mean), jax.lax.stop_gradient(var)
        ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
        ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
