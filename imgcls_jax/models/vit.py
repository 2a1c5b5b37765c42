"""Vision Transformer (Dosovitskiy et al. 2021) in the plain form of big_vision and timm:
patch embedding, pre-norm encoder blocks, a class token or global average pooling. Applied to
images of another size than it was initialised for, it resamples its learned position
embeddings to the new patch grid (fixed sine-cosine ones are computed for any grid)."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from imgcls_jax import registry
from imgcls_jax.models.layers import DropPath, compute_dtype

# name -> (width, depth, MLP width, heads), as in the ViT and DeiT papers.
VARIANTS = {
    "vit_ti": (192, 12, 768, 3),
    "vit_s": (384, 12, 1536, 6),
    "vit_b": (768, 12, 3072, 12),
    "vit_l": (1024, 24, 4096, 16),
    "vit_h": (1280, 32, 5120, 16),
    "vit_g": (1408, 40, 6144, 16),  # ViT-g/14 of "Scaling Vision Transformers": 1.0B parameters.
}
POOLS = ("cls", "gap")
POSEMBS = ("learn", "sincos2d")


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sine-cosine position embeddings [height * width, dim] (MoCo v3, big_vision)."""
    if dim % 4:
        raise ValueError(f"sincos2d position embeddings need a width divisible by 4, got {dim}.")
    y, x = np.mgrid[:height, :width]
    omega = 1.0 / temperature ** (np.arange(dim // 4) / (dim // 4 - 1))
    y, x = y.reshape(-1)[:, None] * omega, x.reshape(-1)[:, None] * omega
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def resample_posemb(posemb: jax.Array, grid: tuple[int, int], num_prefix: int) -> jax.Array:
    """A learned position embedding [1, num_prefix + g * g, dim], made for a square g x g
    patch grid, for a `grid` = (height, width) patch grid: [1, num_prefix + height * width,
    dim]. The patch positions are resized as an image, bilinearly (`jax.image.resize`,
    antialiased when shrinking), the `num_prefix` class-token positions kept, as timm's
    `resample_abs_pos_embed` and big_vision's `resample_posemb` do."""
    prefix, patches = posemb[:, :num_prefix], posemb[:, num_prefix:]
    side = math.isqrt(patches.shape[1])
    if side * side != patches.shape[1]:
        raise ValueError(f"The learned position embedding has {patches.shape[1]} patch positions, "
                         f"not a square grid, so it cannot be resampled to the {grid[0]}x"
                         f"{grid[1]} patch grid of these images: apply the model to images of "
                         "the size it was initialised for.")  # fmt: skip
    if (side, side) == tuple(grid):
        return posemb
    channels = posemb.shape[-1]
    patches = jax.image.resize(patches.reshape(side, side, channels), (*grid, channels),
                               method="bilinear")  # fmt: skip
    return jnp.concatenate([prefix, patches.reshape(1, grid[0] * grid[1], channels)], axis=1)


class EncoderBlock(nn.Module):
    """Pre-norm: x + attention(norm(x)), then x + MLP(norm(x)), each branch with dropout
    and stochastic depth."""

    mlp_dim: int
    num_heads: int
    dropout: float
    drop_path: float
    dtype: Any

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool) -> jnp.ndarray:
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
            name="attention",
        )(y, y)  # fmt: skip
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        x = x + DropPath(self.drop_path)(y, train)
        y = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="norm2")(x)
        dense = dict(dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                     bias_init=nn.initializers.normal(1e-6))  # fmt: skip
        y = nn.Dense(self.mlp_dim, name="fc1", **dense)(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(nn.gelu(y, approximate=False))
        y = nn.Dense(x.shape[-1], name="fc2", **dense)(y)
        y = nn.Dropout(self.dropout, deterministic=not train)(y)
        return x + DropPath(self.drop_path)(y, train)


class ViT(nn.Module):
    """ViT over NHWC images already normalised to float; the image side must be a multiple of
    `patch_size`. The stochastic-depth rate rises linearly from 0 to `drop_path_rate` over the
    blocks (as in timm).

    The learned position embedding keeps the shape it was initialised with (the patch grid of
    the initialising images); images with another number of patches use it resampled to their
    grid (`resample_posemb`), which needs a square stored grid."""

    num_classes: int
    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int = 16
    pool: str = "cls"
    posemb: str = "learn"
    dropout: float = 0.0
    drop_path_rate: float = 0.0
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(f"ViT with patch size {p} needs an image side that is a multiple of "
                             f"{p}, got {x.shape[1]}x{x.shape[2]}: set model.patch_size or crop.")  # fmt: skip
        # The patch embedding, named like every model's first convolution: transfer learning
        # adapts its input channels.
        x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    name="stem_conv")(x.astype(self.dtype))  # fmt: skip
        n, h, w, c = x.shape
        x = x.reshape(n, h * w, c)
        if self.posemb == "learn":
            prefix = int(self.pool == "cls")
            shape = (1, prefix + h * w, c)
            if self.has_variable("params", "pos_embedding"):  # Applied: the stored table's.
                shape = self.get_variable("params", "pos_embedding").shape
            posemb = self.param("pos_embedding", nn.initializers.normal(0.02), shape)
            if posemb.shape[1] != prefix + h * w:  # Made for another patch grid.
                posemb = resample_posemb(posemb, (h, w), prefix)
        else:
            posemb = jnp.asarray(sincos_2d(h, w, c))[None]
        if self.pool == "cls":
            cls = self.param("cls_token", nn.initializers.zeros, (1, 1, c))
            x = jnp.concatenate([jnp.broadcast_to(cls, (n, 1, c)).astype(x.dtype), x], axis=1)
            if self.posemb != "learn":  # The class token gets no fixed position.
                posemb = jnp.pad(posemb, ((0, 0), (1, 0), (0, 0)))
        x = nn.Dropout(self.dropout, deterministic=not train)(x + posemb.astype(x.dtype))
        for i in range(self.depth):
            rate = self.drop_path_rate * i / max(self.depth - 1, 1)
            x = EncoderBlock(self.mlp_dim, self.num_heads, self.dropout, rate, self.dtype,
                             name=f"block_{i}")(x, train)  # fmt: skip
        x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, name="encoder_norm")(x)
        x = x[:, 0] if self.pool == "cls" else x.mean(axis=1)
        x = nn.Dense(self.num_classes, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                     name="head")(x)  # fmt: skip
        return x.astype(jnp.float32)


def build(
    variant: str,
    *,
    num_classes: int,
    patch_size: int = 16,
    pool: str = "cls",
    posemb: str = "learn",
    dropout: float = 0.0,
    drop_path_rate: float = 0.0,
    dtype: str = "float32",
) -> ViT:
    """The ViT `variant` (a key of VARIANTS)."""
    registry.check_choice("model.pool", pool, POOLS)
    registry.check_choice("model.posemb", posemb, POSEMBS)
    width, depth, mlp_dim, heads = VARIANTS[variant]
    return ViT(num_classes=num_classes, width=width, depth=depth, mlp_dim=mlp_dim,
               num_heads=heads, patch_size=patch_size, pool=pool, posemb=posemb,
               dropout=dropout, drop_path_rate=drop_path_rate, dtype=compute_dtype(dtype))  # fmt: skip


for _name in VARIANTS:
    registry.register("model", _name, functools.partial(build, _name))
