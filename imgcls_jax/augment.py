"""On-device, per-example augmentation ops and the pipeline string that composes them.

A pipeline is a string like ``"random_crop(4)|flip_lr"``: ops separated by ``|``, each with
optional Python-literal arguments. Every op maps ``(key, image) -> image`` for one float32
HWC image in [0, 255]; the pipeline is vmapped over the batch with one key per example.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from imgcls_jax.config import closest

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


OPS: dict[str, Op] = {"random_crop": random_crop, "flip_lr": flip_lr}


def parse_pipeline(spec: str) -> list[tuple[Op, tuple]]:
    """Parses a pipeline string into (op, args) pairs; raises on unknown ops or bad arguments."""
    pipeline = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        name, _, rest = part.partition("(")
        name = name.strip()
        if name not in OPS:
            raise ValueError(f"Unknown augmentation op {name!r} in {spec!r}.{closest(name, OPS)}")
        args: tuple = ()
        if rest:
            if not rest.endswith(")"):
                raise ValueError(f"Augmentation op {part!r} is missing its closing ')'.")
            try:
                args = ast.literal_eval(f"({rest[:-1]},)") if rest[:-1].strip() else ()
            except (ValueError, SyntaxError) as e:
                raise ValueError(
                    f"Augmentation op {part!r}: arguments must be literals ({e})."
                ) from e
        try:
            inspect.signature(OPS[name]).bind(None, None, *args)
        except TypeError as e:
            raise ValueError(
                f"Augmentation op {part!r} has bad arguments: {e}. "
                f"Signature: {name}{inspect.signature(OPS[name])}."
            ) from e
        pipeline.append((OPS[name], args))
    return pipeline


def build_augment_fn(spec: str) -> Callable[[jax.Array, jnp.ndarray], jnp.ndarray]:
    """Returns ``fn(key, images) -> images`` applying the pipeline per example (float32 out)."""
    pipeline = parse_pipeline(spec)

    def augment_one(key: jax.Array, image: jnp.ndarray) -> jnp.ndarray:
        keys = jax.random.split(key, max(len(pipeline), 1))
        for op_key, (op, args) in zip(keys, pipeline):
            image = op(op_key, image, *args)
        return image

    def augment_batch(key: jax.Array, images: jnp.ndarray) -> jnp.ndarray:
        images = images.astype(jnp.float32)
        if not pipeline:
            return images
        return jax.vmap(augment_one)(jax.random.split(key, images.shape[0]), images)

    return augment_batch
