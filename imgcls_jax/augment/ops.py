"""On-device, per-example augmentation ops (registry kinds "augment_op" and "eval_op").

Every training op maps ``(key, image, *args) -> image`` for one float32 HWC image in
[0, 255]; evaluation ops are deterministic and map ``(image, *args) -> image``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from imgcls_jax import registry

Op = Callable[..., jnp.ndarray]


def random_crop(key: jax.Array, image: jnp.ndarray, padding: int, mode: str = "constant"):
    """Pads by `padding` pixels on each side (zeros, or "reflect") and crops back at random."""
    if mode not in ("constant", "reflect"):
        raise ValueError(f"random_crop mode must be 'constant' or 'reflect', got {mode!r}.")
    height, width, channels = image.shape
    padded = jnp.pad(image, ((padding, padding), (padding, padding), (0, 0)), mode=mode)
    offsets = jax.random.randint(key, (2,), 0, 2 * padding + 1)
    return jax.lax.dynamic_slice(padded, (offsets[0], offsets[1], 0), (height, width, channels))


def flip_lr(key: jax.Array, image: jnp.ndarray, probability: float = 0.5):
    """Mirrors the image left-right with the given probability."""
    return jnp.where(jax.random.bernoulli(key, probability), image[:, ::-1], image)


def _sample_box(
    key: jax.Array, height: int, width: int, scale: tuple, ratio: tuple, max_h: int, max_w: int
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """(box_h, box_w, fits): the first of ten draws of area fraction in `scale` and aspect
    ratio (w/h, log-uniform) in `ratio` whose box fits in max_h x max_w."""
    area_key, ratio_key = jax.random.split(key)
    area = jax.random.uniform(area_key, (10,), minval=scale[0], maxval=scale[1]) * height * width
    log_ratio = jax.random.uniform(
        ratio_key, (10,), minval=jnp.log(ratio[0]), maxval=jnp.log(ratio[1])
    )
    box_w = jnp.round(jnp.sqrt(area * jnp.exp(log_ratio)))
    box_h = jnp.round(jnp.sqrt(area / jnp.exp(log_ratio)))
    fits = (box_w >= 1) & (box_w <= max_w) & (box_h >= 1) & (box_h <= max_h)
    first = jnp.argmax(fits)
    return box_h[first], box_w[first], fits[first]


def random_resized_crop(
    key: jax.Array,
    image: jnp.ndarray,
    size: int,
    scale: tuple = (0.08, 1.0),
    ratio: tuple = (3 / 4, 4 / 3),
):
    """Inception-style crop: a random area fraction and aspect ratio, resized to size x size.

    Ten candidate boxes are drawn; the first that fits is used, else the whole image.
    """
    height, width, _ = image.shape
    box_key, y_key, x_key = jax.random.split(key, 3)
    crop_h, crop_w, fits = _sample_box(box_key, height, width, scale, ratio, height, width)
    crop_h = jnp.where(fits, crop_h, height)
    crop_w = jnp.where(fits, crop_w, width)
    y0 = jnp.floor(jax.random.uniform(y_key) * (height - crop_h + 1))
    x0 = jnp.floor(jax.random.uniform(x_key) * (width - crop_w + 1))
    scale_yx = jnp.stack([size / crop_h, size / crop_w])
    return jax.image.scale_and_translate(
        image, (size, size, image.shape[-1]), (0, 1), scale_yx, -jnp.stack([y0, x0]) * scale_yx,
        method="linear", antialias=True,
    )  # fmt: skip


def _factor(key: jax.Array, strength: float) -> jnp.ndarray:
    return jax.random.uniform(key, minval=1.0 - strength, maxval=1.0 + strength)


def _grayscale(image: jnp.ndarray) -> jnp.ndarray:
    if image.shape[-1] == 1:
        return image
    return (image @ jnp.array([0.299, 0.587, 0.114], image.dtype))[..., None]


def brightness(key: jax.Array, image: jnp.ndarray, strength: float):
    """Scales pixel values by a factor drawn from [1 - strength, 1 + strength]."""
    return jnp.clip(image * _factor(key, strength), 0.0, 255.0)


def contrast(key: jax.Array, image: jnp.ndarray, strength: float):
    """Blends with the mean grey level by a factor drawn from [1 - strength, 1 + strength]."""
    mean = jnp.mean(_grayscale(image))
    return jnp.clip(mean + (image - mean) * _factor(key, strength), 0.0, 255.0)


def saturation(key: jax.Array, image: jnp.ndarray, strength: float):
    """Blends with the image's greyscale version; a no-op on 1-channel images."""
    gray = _grayscale(image)
    return jnp.clip(gray + (image - gray) * _factor(key, strength), 0.0, 255.0)


def random_grayscale(key: jax.Array, image: jnp.ndarray, probability: float = 0.1):
    """Replaces the image by its greyscale version (kept at C channels) with a probability."""
    gray = jnp.broadcast_to(_grayscale(image), image.shape)
    return jnp.where(jax.random.bernoulli(key, probability), gray, image)


def _rgb_to_hsv(rgb: jnp.ndarray) -> jnp.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    value = jnp.max(rgb, axis=-1)
    chroma = value - jnp.min(rgb, axis=-1)
    safe = jnp.where(chroma > 0, chroma, 1.0)
    hue = jnp.where(
        value == r,
        (g - b) / safe % 6,
        jnp.where(value == g, (b - r) / safe + 2, (r - g) / safe + 4),
    )
    hue = jnp.where(chroma > 0, hue / 6.0, 0.0)
    saturation = jnp.where(value > 0, chroma / jnp.where(value > 0, value, 1.0), 0.0)
    return jnp.stack([hue, saturation, value], axis=-1)


def _hsv_to_rgb(hsv: jnp.ndarray) -> jnp.ndarray:
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    k = (jnp.array([5.0, 3.0, 1.0]) + hue[..., None] * 6.0) % 6.0
    return value[..., None] - value[..., None] * saturation[..., None] * jnp.clip(
        jnp.minimum(k, 4.0 - k), 0.0, 1.0
    )


def hue(key: jax.Array, image: jnp.ndarray, strength: float):
    """Rotates the hue by a fraction of the colour wheel drawn from [-strength, strength]."""
    if image.shape[-1] == 1:
        return image
    shift = jax.random.uniform(key, minval=-strength, maxval=strength)
    hsv = _rgb_to_hsv(image / 255.0)
    hsv = hsv.at[..., 0].set((hsv[..., 0] + shift) % 1.0)
    return jnp.clip(_hsv_to_rgb(hsv) * 255.0, 0.0, 255.0)


def random_erasing(
    key: jax.Array,
    image: jnp.ndarray,
    probability: float = 0.25,
    scale: tuple = (0.02, 1 / 3),
    ratio: tuple = (0.3, 3.3),
):
    """With a probability, fills a random rectangle with uniform noise (Zhong et al. 2020)."""
    height, width, channels = image.shape
    apply_key, box_key, y_key, x_key, noise_key = jax.random.split(key, 5)
    box_h, box_w, fits = _sample_box(box_key, height, width, scale, ratio, height - 1, width - 1)
    y0 = jnp.floor(jax.random.uniform(y_key) * (height - box_h + 1))
    x0 = jnp.floor(jax.random.uniform(x_key) * (width - box_w + 1))
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = (rows >= y0) & (rows < y0 + box_h) & (cols >= x0) & (cols < x0 + box_w)
    erase = box[..., None] & fits & jax.random.bernoulli(apply_key, probability)
    noise = jax.random.uniform(noise_key, (height, width, channels), maxval=255.0)
    return jnp.where(erase, noise, image)


def _affine(image: jnp.ndarray, matrix: jnp.ndarray, fill: float = 128.0) -> jnp.ndarray:
    """Samples image at matrix @ (row, col, 1) (about the centre), bilinear, `fill` outside."""
    height, width, channels = image.shape
    rows, cols = jnp.meshgrid(jnp.arange(height), jnp.arange(width), indexing="ij")
    centre = jnp.array([(height - 1) / 2, (width - 1) / 2])
    coords = jnp.stack([rows - centre[0], cols - centre[1]])
    src = jnp.einsum("ij,jhw->ihw", matrix[:, :2], coords) + matrix[:, 2, None, None]
    src = src + centre[:, None, None]
    eps = 1e-3  # Rotations by multiples of 90 degrees land within rounding of the border.
    inside = (src[0] >= -eps) & (src[0] <= height - 1 + eps)
    inside &= (src[1] >= -eps) & (src[1] <= width - 1 + eps)
    src = jnp.stack([jnp.clip(src[0], 0, height - 1), jnp.clip(src[1], 0, width - 1)])
    sample = jax.vmap(
        lambda c: jax.scipy.ndimage.map_coordinates(c, [src[0], src[1]], order=1),
        in_axes=2,
        out_axes=2,
    )
    return jnp.where(inside[..., None], sample(image), fill)


def _blend(image: jnp.ndarray, other: jnp.ndarray, factor) -> jnp.ndarray:
    return jnp.clip(other + (image - other) * factor, 0.0, 255.0)


def _auto_contrast(image, magnitude, sign):
    low = image.min(axis=(0, 1), keepdims=True)
    high = image.max(axis=(0, 1), keepdims=True)
    scale = jnp.where(high > low, 255.0 / jnp.where(high > low, high - low, 1.0), 1.0)
    return jnp.where(high > low, (image - low) * scale, image)


def _equalize(image, magnitude, sign):
    def channel(c):
        values = jnp.clip(jnp.round(c), 0, 255).astype(jnp.int32)
        cdf = jnp.cumsum(jnp.bincount(values.ravel(), length=256))
        cdf_min = jnp.min(jnp.where(cdf > 0, cdf, cdf[-1]))
        lut = jnp.clip(jnp.round((cdf - cdf_min) / jnp.maximum(cdf[-1] - cdf_min, 1) * 255), 0, 255)
        return lut[values].astype(image.dtype)

    return jax.vmap(channel, in_axes=2, out_axes=2)(image)


def _sharpness(image, factor):
    kernel = jnp.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], image.dtype) / 13
    padded = jnp.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    smooth = sum(
        kernel[i, j] * padded[i : i + image.shape[0], j : j + image.shape[1]]
        for i in range(3)
        for j in range(3)
    )
    return _blend(image, smooth, factor)


def _enhance(level, sign):
    return 1.0 + 0.9 * level * sign


# RandAugment's op set (Cubuk et al. 2020, timm's ranges); level = magnitude / 10 in [0, 1].
_RANDAUGMENT_OPS: tuple[Callable, ...] = (
    lambda x, level, sign: x,  # identity
    _auto_contrast,
    _equalize,
    lambda x, level, sign: _affine(x, _rotation(30.0 * level * sign)),
    lambda x, level, sign: jnp.where(x >= 256.0 * (1 - level), 255.0 - x, x),  # solarize
    lambda x, level, sign: _blend(x, _grayscale(x), _enhance(level, sign)),  # colour
    lambda x, level, sign: jnp.floor(x / 2 ** jnp.round(4 * level)) * 2 ** jnp.round(4 * level),
    lambda x, level, sign: _blend(x, jnp.mean(_grayscale(x)), _enhance(level, sign)),  # contrast
    lambda x, level, sign: _blend(x, jnp.zeros_like(x), _enhance(level, sign)),  # brightness
    lambda x, level, sign: _sharpness(x, _enhance(level, sign)),
    lambda x, level, sign: _affine(x, jnp.array([[1.0, 0, 0], [0.3 * level * sign, 1, 0]])),
    lambda x, level, sign: _affine(x, jnp.array([[1.0, 0.3 * level * sign, 0], [0, 1, 0]])),
    lambda x, level, sign: _affine(
        x, jnp.array([[1.0, 0, 0], [0, 1, 0.45 * level * sign * x.shape[1]]])
    ),
    lambda x, level, sign: _affine(
        x, jnp.array([[1.0, 0, 0.45 * level * sign * x.shape[0]], [0, 1, 0]])
    ),
)
RANDAUGMENT_OP_NAMES = (
    "identity", "auto_contrast", "equalize", "rotate", "solarize", "color", "posterize",
    "contrast", "brightness", "sharpness", "shear_x", "shear_y", "translate_x", "translate_y",
)  # fmt: skip


def _rotation(degrees) -> jnp.ndarray:
    theta = jnp.deg2rad(degrees)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    return jnp.array([[cos, -sin, 0.0], [sin, cos, 0.0]])


def randaugment(key: jax.Array, image: jnp.ndarray, num_ops: int = 2, magnitude: float = 9.0):
    """RandAugment: `num_ops` ops drawn uniformly from the standard 14, each at `magnitude`/10."""
    level = magnitude / 10.0
    for op_key in jax.random.split(key, num_ops):
        choice_key, sign_key = jax.random.split(op_key)
        index = jax.random.randint(choice_key, (), 0, len(_RANDAUGMENT_OPS))
        sign = jnp.where(jax.random.bernoulli(sign_key), 1.0, -1.0)
        image = jax.lax.switch(index, _RANDAUGMENT_OPS, image, level, sign)
    return image


def resize(image: jnp.ndarray, size: int, method: str = "linear"):
    """Resizes (antialiased) so that the shorter side is `size`, keeping the aspect ratio."""
    height, width, channels = image.shape
    scale = size / min(height, width)
    shape = (max(size, round(height * scale)), max(size, round(width * scale)), channels)
    return jax.image.resize(image, shape, method=method, antialias=True)


def center_crop(image: jnp.ndarray, size: int):
    """The central size x size window (the image must be at least that large)."""
    height, width, _ = image.shape
    if height < size or width < size:
        raise ValueError(
            f"center_crop({size}) needs an image at least that large, got {height}x{width}."
        )
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


for _op in (
    random_crop,
    flip_lr,
    random_resized_crop,
    brightness,
    contrast,
    saturation,
    random_grayscale,
    hue,
    random_erasing,
    randaugment,
):
    registry.register("augment_op", _op.__name__, _op)
for _op in (resize, center_crop):
    registry.register("eval_op", _op.__name__, _op)
