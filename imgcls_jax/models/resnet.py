"""ResNet family (He et al. 2016): ImageNet depths 18-152 and CIFAR-style depths 20-110."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from imgcls_jax import registry
from imgcls_jax.kernels import XLA, Kernels
from imgcls_jax.models.layers import DropPath, compute_dtype, conv_and_norm, max_pool

ModuleDef = Any


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity or projection shortcut."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    drop_path: float = 0.0  # Stochastic depth of the residual branch.
    train: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        residual = x
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(x)
        y = self.norm(act=nn.relu)(y)
        y = self.conv(self.filters, (3, 3))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(
                self.filters, (1, 1), (self.strides, self.strides), name="proj_conv"
            )(residual)
            residual = self.norm(name="proj_norm")(residual)
        return nn.relu(residual + DropPath(self.drop_path)(y, self.train))


class BottleneckBlock(nn.Module):
    """1x1 reduce, 3x3 (strided, as in torchvision's v1.5), 1x1 expand by 4."""

    filters: int
    conv: ModuleDef
    norm: ModuleDef
    strides: int = 1
    drop_path: float = 0.0  # Stochastic depth of the residual branch.
    train: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        residual = x
        y = self.norm(act=nn.relu)(self.conv(self.filters, (1, 1))(x))
        y = self.conv(self.filters, (3, 3), (self.strides, self.strides))(y)
        y = self.norm(act=nn.relu)(y)
        y = self.conv(self.filters * 4, (1, 1))(y)
        y = self.norm(scale_init=nn.initializers.zeros_init())(y)
        if residual.shape != y.shape:
            residual = self.conv(
                self.filters * 4, (1, 1), (self.strides, self.strides), name="proj_conv"
            )(residual)
            residual = self.norm(name="proj_norm")(residual)
        return nn.relu(residual + DropPath(self.drop_path)(y, self.train))


class ResNet(nn.Module):
    """ResNet over NHWC images already normalised to float.

    `stem="imagenet"` is the 7x7/2 convolution plus 3x3/2 max-pool for 224 px inputs;
    `stem="small"` is a single 3x3/1 convolution, for 28-32 px inputs.
    """

    stage_sizes: Sequence[int]
    block_cls: ModuleDef
    num_classes: int
    width: int = 64
    stem: str = "imagenet"
    dtype: Any = jnp.float32
    bn_momentum: float = 0.9
    drop_path_rate: float = 0.0  # Stochastic depth, rising linearly over the blocks to this.
    kernels: Kernels = XLA  # How convolutions and batch norms compute (imgcls_jax.kernels).

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        conv, norm = conv_and_norm(self.dtype, self.bn_momentum, train, self.kernels)
        x = x.astype(self.dtype)
        if self.stem == "imagenet":
            x = conv(self.width, (7, 7), (2, 2), name="stem_conv")(x)
            x = norm(name="stem_norm", act=nn.relu)(x)
            x = max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        else:
            x = conv(self.width, (3, 3), name="stem_conv")(x)
            x = norm(name="stem_norm", act=nn.relu)(x)
        rates = iter(np.linspace(0.0, self.drop_path_rate, sum(self.stage_sizes)).tolist())
        for i, num_blocks in enumerate(self.stage_sizes):
            for j in range(num_blocks):
                strides = 2 if i > 0 and j == 0 else 1
                x = self.block_cls(self.width * 2**i, conv=conv, norm=norm, strides=strides,
                                   drop_path=next(rates), train=train)(x)  # fmt: skip
        x = jnp.mean(x, axis=(1, 2))
        x = nn.Dense(self.num_classes, dtype=self.dtype, name="head")(x)
        return x.astype(jnp.float32)


def _cifar(depth: int) -> dict:
    if (depth - 2) % 6:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}.")
    return dict(stage_sizes=[(depth - 2) // 6] * 3, block_cls=BasicBlock)


# Architecture of each registered name; width, stem, dtype and classes come from the config.
RESNET_ARCHS = {
    "resnet18": dict(stage_sizes=[2, 2, 2, 2], block_cls=BasicBlock),
    "resnet34": dict(stage_sizes=[3, 4, 6, 3], block_cls=BasicBlock),
    "resnet50": dict(stage_sizes=[3, 4, 6, 3], block_cls=BottleneckBlock),
    "resnet101": dict(stage_sizes=[3, 4, 23, 3], block_cls=BottleneckBlock),
    "resnet152": dict(stage_sizes=[3, 8, 36, 3], block_cls=BottleneckBlock),
    **{f"resnet{d}": _cifar(d) for d in (8, 20, 32, 44, 56, 110)},
}


STEMS = ("small", "imagenet")


def build(
    arch: str,
    *,
    num_classes: int,
    width: int = 64,
    stem: str = "imagenet",
    dtype: str = "float32",
    bn_momentum: float = 0.9,
    drop_path_rate: float = 0.0,
    kernels: Kernels = XLA,
) -> ResNet:
    """The ResNet `arch` (a key of RESNET_ARCHS)."""
    registry.check_choice("model.stem", stem, STEMS)
    return ResNet(**RESNET_ARCHS[arch], num_classes=num_classes, width=width, stem=stem,
                  dtype=compute_dtype(dtype), bn_momentum=bn_momentum,
                  drop_path_rate=drop_path_rate, kernels=kernels)  # fmt: skip


for _name in RESNET_ARCHS:
    registry.register("model", _name, functools.partial(build, _name))
