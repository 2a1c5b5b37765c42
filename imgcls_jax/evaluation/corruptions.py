"""Image corruptions of CIFAR-10-C and ImageNet-C (Hendrycks & Dietterich, 2019), on device.

`corrupt(images, indices, corruption, severity, seed)` applies one corruption of `NAMES` to
float32 [N, H, W, C] images in [0, 255] (C = 1 or 3) inside a jitted program: the corruption
is static (one program each), the severity a traced int32 in 0..5 (0 returns the images
unchanged) and each example's randomness depends only on (seed, corruption, the example's
index in its split), not on the batch. JPEG compression runs on the host (`jpeg_host`).

The parameter tables are CIFAR-10-C's, from make_cifar_c.py of github.com/hendrycks/robustness
(ImageNet-C/create_c/make_cifar_c.py, commit ca36008). As there, results are truncated to
whole numbers (np.uint8). Where this module departs from it:
- impulse_noise sets each value to 0 or 255 with probability `amount` (scikit-image's s&p);
- shot_noise inverts the Poisson CDF exactly below rate 16, above it uses a Cornish-Fisher
  corrected normal (total variation distance < 0.14%): 20x faster than jax.random.poisson;
- pixelate and elastic_transform scale their pixel sizes with the image side (32 there);
- a grayscale image is its HSV value channel: brightness adds to it, saturate leaves it alone.
"""

from __future__ import annotations

import io
import zlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy import ndimage, signal, special
from PIL import Image

from imgcls_jax.registry import closest

SEVERITIES = 5  # Severity 0 is the identity.

# Severities 1..5, from make_cifar_c.py (see the module docstring).
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)  # Standard deviation, [0, 1] units.
SHOT_NOISE = (500, 250, 100, 75, 50)  # Poisson rate at full intensity.
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)  # Fraction of values set to 0 or 255.
# Disk radius, sigma of the 3 x 3 Gaussian that anti-aliases it.
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1))
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1)  # Sigma, pixels (skimage.filters.gaussian, truncate 4).
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)  # Distance to the channel mean is scaled by c.
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)  # Added to the HSV value.
SATURATE = ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2))  # HSV saturation * a + b.
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)  # PIL box resize to int(side * c) and back.
# alpha, sigma (displacement field), affine jitter: fractions of the image side (IMSIZE = 32).
ELASTIC = ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05),
           (0.1, 0.03, 0.03))  # fmt: skip
JPEG_QUALITY = (80, 65, 58, 50, 40)  # PIL's quality.

# Below this rate shot noise inverts the Poisson CDF in _POISSON_TERMS terms (the rest of the
# mass is under 1e-8); above it, Cornish-Fisher.
_POISSON_EXACT_BELOW = 16.0
_POISSON_TERMS = 44
# Truncation keeps whole numbers that float32 rounding left just below themselves.
_SLACK = 1e-3
_HIGHEST = jax.lax.Precision.HIGHEST  # Else TPUs multiply in bfloat16, GPUs in TF32.


def _pick(table, severity: jax.Array, identity=0.0) -> jax.Array:
    """Row `severity` of a severity 1..5 table, `identity` at severity 0, as float32."""
    return jnp.asarray([identity, *table], jnp.float32)[severity]


def _draw(keys: jax.Array, shape: tuple, sampler=jax.random.uniform) -> jax.Array:
    return jax.vmap(lambda key: sampler(key, shape))(keys)


def _shifts(size: int, radius: int, mode: str) -> np.ndarray:
    """[2 radius + 1, size, size]: shifts[k] @ x is x padded by `radius` (np.pad's `mode`),
    then rows k..k + size: a filter tap's operator, borders included."""
    index = np.pad(np.arange(size), radius, mode=mode)
    return np.stack([np.eye(size, dtype=np.float32)[index[k : k + size]]
                     for k in range(2 * radius + 1)])  # fmt: skip


def _along(images: jax.Array, rows: jax.Array | None, cols: jax.Array | None) -> jax.Array:
    """rows @ image @ cols.T for every image and channel of NHWC `images` (None: identity)."""
    if cols is not None:
        images = jnp.einsum("nhwc,vw->nhvc", images, cols, precision=_HIGHEST)
    if rows is not None:
        images = jnp.einsum("nhwc,vh->nvwc", images, rows, precision=_HIGHEST)
    return images


def _gaussian_taps(sigma: jax.Array, radius: jax.Array, max_radius: int) -> jax.Array:
    """scipy's 1-D Gaussian of `radius` on a grid of `max_radius` (sigma 0: a delta)."""
    x = jnp.arange(-max_radius, max_radius + 1, dtype=jnp.float32)
    taps = jnp.where(jnp.abs(x) <= radius, jnp.exp(-0.5 * (x / jnp.maximum(sigma, 1e-3)) ** 2), 0)
    return taps / taps.sum()


def _separable(images: jax.Array, taps: jax.Array, mode: str) -> jax.Array:
    """Correlates rows and columns of NHWC `images` with `taps`, borders padded by `mode`.
    As matrix products: XLA's depthwise convolutions are 10x slower on CPU."""
    radius = (taps.shape[0] - 1) // 2
    rows, cols = (jnp.einsum("k,kvh->vh", taps, _shifts(size, radius, mode), precision=_HIGHEST)
                  for size in images.shape[1:3])  # fmt: skip
    return _along(images, rows, cols)


def _gaussian_noise(keys, images, severity):
    noise = _draw(keys, images.shape[1:], jax.random.normal)
    return images + 255 * _pick(GAUSSIAN_NOISE, severity) * noise


def _poisson(u: jax.Array, rate: jax.Array) -> jax.Array:
    """Poisson(rate) from uniforms `u`: exact CDF inversion for small rates, else Cornish-Fisher."""
    small = jnp.minimum(rate, _POISSON_EXACT_BELOW)
    term = cdf = jnp.exp(-small)
    count = (cdf < u).astype(jnp.float32)
    for k in range(1, _POISSON_TERMS):
        term = term * small * (1.0 / k)
        cdf = cdf + term
        count = count + (cdf < u)
    z = special.ndtri(jnp.maximum(u, 2.0**-24))
    large = jnp.maximum(rate, _POISSON_EXACT_BELOW)
    root = jnp.sqrt(large)
    w = z + (z**2 - 1) / (6 * root) + ((z**3 - 3 * z) / 24 - (2 * z**3 - 5 * z) / 36) / large
    approx = jnp.maximum(jnp.ceil(large + root * w - 0.5), 0)
    return jnp.where(rate < _POISSON_EXACT_BELOW, count, approx)


def _shot_noise(keys, images, severity):
    scale = _pick(SHOT_NOISE, severity, identity=1.0) / 255
    return _poisson(_draw(keys, images.shape[1:]), images * scale) / scale


def _impulse_noise(keys, images, severity):
    amount = _pick(IMPULSE_NOISE, severity)
    u = _draw(keys, images.shape[1:])
    return jnp.where(u < amount / 2, 0.0, jnp.where(u < amount, 255.0, images))


def _defocus_blur(keys, images, severity):
    """cv2.filter2D (reflect-101 border) with the reference's disk, Gaussian-blurred (3 x 3)."""
    radius, alias = _pick(DEFOCUS_BLUR, severity, identity=(0.0, 0.1))
    half = int(max(r for r, _ in DEFOCUS_BLUR))  # The disk's half side on the grid.
    x = jnp.arange(-half, half + 1, dtype=jnp.float32)
    disk = (x[:, None] ** 2 + x[None, :] ** 2 <= radius**2).astype(jnp.float32)
    alias_taps = jnp.exp(-(jnp.arange(-1.0, 2.0) ** 2) / (2 * alias**2))
    alias_taps = alias_taps / alias_taps.sum()
    kernel = signal.convolve2d(disk / disk.sum(), jnp.outer(alias_taps, alias_taps), mode="full",
                               precision=_HIGHEST)  # fmt: skip
    # sum over taps (a, b) of kernel[a, b] * shift_a @ image @ shift_b.T
    radius = kernel.shape[0] // 2
    row_shifts, col_shifts = (_shifts(size, radius, "reflect") for size in images.shape[1:3])
    cols = jnp.einsum("ab,bvw->avw", kernel, col_shifts, precision=_HIGHEST)
    return sum(_along(images, row_shifts[a], cols[a]) for a in range(kernel.shape[0]))


def _gaussian_blur(keys, images, severity):
    """skimage.filters.gaussian: truncate 4, border mode nearest."""
    radii = [int(4 * s + 0.5) for s in GAUSSIAN_BLUR]  # scipy's kernel radius.
    taps = _gaussian_taps(_pick(GAUSSIAN_BLUR, severity), _pick(radii, severity), max(radii))
    return _separable(images, taps, "edge")


def _contrast(keys, images, severity):
    means = images.mean(axis=(1, 2), keepdims=True)
    return (images - means) * _pick(CONTRAST, severity, identity=1.0) + means


def _brightness(keys, images, severity):
    """HSV value + c: scales the pixel by new value / value (hue and saturation kept)."""
    value = images.max(axis=-1, keepdims=True)
    new = jnp.minimum(value + 255 * _pick(BRIGHTNESS, severity), 255)
    return jnp.where(value > 0, images * (new / jnp.where(value > 0, value, 1)), new)


def _saturate(keys, images, severity):
    """HSV saturation * a + b; grey pixels get skimage's hue 0 (red). Identity for grayscale."""
    if images.shape[-1] == 1:
        return images
    scale, shift = _pick(SATURATE, severity, identity=(1.0, 0.0))
    value = images.max(axis=-1, keepdims=True)
    delta = value - images.min(axis=-1, keepdims=True)
    new = jnp.clip(delta / jnp.where(value > 0, value, 1) * scale + shift, 0, 1)
    # Each channel is value * (1 - saturation * f(hue)), f = (value - channel) / delta.
    grey_hue = jnp.asarray([0.0, 1.0, 1.0])
    f = jnp.where(delta > 0, (value - images) / jnp.where(delta > 0, delta, 1), grey_hue)
    return value * (1 - new * f)


def _box_weights(size_in: int, size_out: int) -> np.ndarray:
    """PIL's BOX resize from size_in to size_out, [size_out, size_in] (Pillow's Resample.c)."""
    scale = size_in / size_out
    filter_scale = max(scale, 1.0)
    support = 0.5 * filter_scale
    weights = np.zeros((size_out, size_in))
    for out in range(size_out):
        center = (out + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), size_in)
        arg = (np.arange(lo, hi) - center + 0.5) / filter_scale
        weights[out, lo:hi] = (arg > -0.5) & (arg <= 0.5)
    return weights / weights.sum(axis=1, keepdims=True)


def _pixelate_matrices(size: int) -> tuple[jax.Array, jax.Array]:
    """Per severity, [6, size, size]: down to int(size * c) (zero rows beyond) and back up."""
    down, up = np.stack([np.eye(size)] * 6), np.stack([np.eye(size)] * 6)
    for severity, factor in enumerate(PIXELATE, 1):
        small = int(size * factor)
        down[severity] = 0
        down[severity, :small] = _box_weights(size, small)
        up[severity] = 0
        up[severity, :, :small] = _box_weights(small, size)
    return jnp.asarray(down, jnp.float32), jnp.asarray(up, jnp.float32)


def _resize(images: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
    """PIL's two 8-bit passes, horizontal first, each rounded half up."""
    images = jnp.floor(_along(images, None, cols) + 0.5)
    return jnp.floor(_along(images, rows, None) + 0.5)


def _pixelate(keys, images, severity):
    down_h, up_h = _pixelate_matrices(images.shape[1])
    down_w, up_w = _pixelate_matrices(images.shape[2])
    small = _resize(images, down_h[severity], down_w[severity])
    return _resize(small, up_h[severity], up_w[severity])


def _elastic_one(key, image, field, jitter):
    """cv2.warpAffine (bilinear, reflect-101) by a jittered affine, then map_coordinates
    (bilinear, reflect) displaced by `field` [H, W, (dx, dy)]."""
    height, width, _ = image.shape
    centre, square = np.float32([height, width]) // 2, min(height, width) // 3
    # (x, y) points as in the reference (which is square, so its axis order does not matter).
    src = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    dst = src + jax.random.uniform(key, (3, 2), minval=-jitter, maxval=jitter)
    # The map from output to input points: src = inverse @ [dst, 1].
    inverse = jnp.linalg.solve(jnp.concatenate([dst, jnp.ones((3, 1))], 1), src).T
    rows, cols = jnp.meshgrid(jnp.arange(height, dtype=jnp.float32),
                              jnp.arange(width, dtype=jnp.float32), indexing="ij")  # fmt: skip
    xs = inverse[0, 0] * cols + inverse[0, 1] * rows + inverse[0, 2]
    ys = inverse[1, 0] * cols + inverse[1, 1] * rows + inverse[1, 2]

    def sample(img, ys, xs, mode):
        return jax.vmap(lambda channel: ndimage.map_coordinates(channel, [ys, xs], 1, mode=mode),
                        in_axes=2, out_axes=2)(img)  # fmt: skip

    warped = sample(image, ys, xs, "mirror")
    return sample(warped, rows + field[..., 1], cols + field[..., 0], "reflect")


def _elastic_transform(keys, images, severity):
    """Random affine, then a displacement field: uniform noise smoothed by a Gaussian
    (skimage, truncate 3, reflect) of `sigma`, times `alpha`; all scale with the side."""
    side = min(images.shape[1:3])
    alpha, sigma, jitter = side * _pick(ELASTIC, severity, identity=(0.0, 0.0, 0.0))
    radii = [int(3 * side * s + 0.5) for _, s, _ in ELASTIC]
    affine_keys, field_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
    noise = _draw(field_keys, (*images.shape[1:3], 2), jax.random.uniform) * 2 - 1
    field = alpha * _separable(noise, _gaussian_taps(sigma, _pick(radii, severity), max(radii)),
                               "symmetric")  # fmt: skip
    return jax.vmap(_elastic_one, in_axes=(0, 0, 0, None))(affine_keys, images, field, jitter)


# Each op maps (keys [N], images, severity) to images before clipping and truncation.
_OPS = {
    "gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur, "gaussian_blur": _gaussian_blur, "contrast": _contrast,
    "brightness": _brightness, "saturate": _saturate, "pixelate": _pixelate,
    "elastic_transform": _elastic_transform,
}  # fmt: skip
NAMES = tuple(_OPS)
HOST_NAMES = ("jpeg_compression",)


def example_keys(seed: int | jax.Array, corruption: str, indices: jax.Array) -> jax.Array:
    """One key per example: fold_in(fold_in(key(seed), crc32 of the name), index)."""
    corruption_key = jax.random.fold_in(jax.random.key(seed), zlib.crc32(corruption.encode()) >> 1)
    return jax.vmap(lambda index: jax.random.fold_in(corruption_key, index))(indices)


def corrupt(
    images: jax.Array,
    indices: jax.Array,
    corruption: str,
    severity: int | jax.Array,
    seed: int | jax.Array,
) -> jax.Array:
    """`images` (float32 [N, H, W, C] in [0, 255], C = 1 or 3) corrupted at `severity` (traced
    int32 in 0..5, clipped to it; 0 returns `images` itself) with whole-number values in
    [0, 255]. `indices` (int32 [N]) are the examples' indices in their split; `corruption`, one
    of NAMES, must be static under jit (e.g. jax.jit(corrupt, static_argnames="corruption"))."""
    if corruption not in _OPS:
        hint = " jpeg_compression runs on the host: jpeg_host." if corruption in HOST_NAMES else ""
        raise ValueError(f"Unknown corruption {corruption!r}.{hint}{closest(corruption, NAMES)}")
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"corrupt takes [N, H, W, C] images with C = 1 or 3, got {images.shape}.")
    if jnp.shape(indices) != images.shape[:1]:
        raise ValueError(f"indices must be [N] = {images.shape[:1]}, got {jnp.shape(indices)}.")
    severity = jnp.clip(jnp.asarray(severity, jnp.int32), 0, SEVERITIES)
    keys = example_keys(seed, corruption, jnp.asarray(indices, jnp.int32))

    def corrupted():
        out = _OPS[corruption](keys, images, severity)
        return jnp.floor(jnp.clip(out, 0.0, 255.0) + _SLACK)

    return jax.lax.cond(severity == 0, lambda: images, corrupted)


def jpeg_host(images: np.ndarray, severity: int) -> np.ndarray:
    """JPEG compression by PIL of uint8 [N, H, W, C] images (C = 1 or 3) at the quality of
    `severity` (1..5; 0 returns a copy). Deterministic."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError("jpeg_host takes uint8 [N, H, W, C] images, C = 1 or 3, got "
                         f"{images.dtype} {images.shape}: pass np.uint8(images).")  # fmt: skip
    if not 0 <= severity <= SEVERITIES:
        raise ValueError(f"severity must be in 0..{SEVERITIES}, got {severity}.")
    if severity == 0:
        return images.copy()
    out, quality = np.empty_like(images), JPEG_QUALITY[severity - 1]
    for i, image in enumerate(images[..., 0] if images.shape[-1] == 1 else images):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=quality)
        out[i] = np.asarray(Image.open(buffer)).reshape(out.shape[1:])
    return out
