"""Augmentation pipelines on device, and batch mixing (mixup, CutMix).

A pipeline is a string like ``"random_crop(4)|flip_lr"``: ops of `augment.ops` separated by
``|``, each with optional Python-literal arguments, applied per example (vmapped over the
batch with one key per example). Training pipelines take the random ("augment_op") and the
deterministic ("eval_op") ops; evaluation pipelines (e.g. ``"resize(256)|center_crop(224)"``)
only the deterministic ones.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp

from imgcls_jax import registry
from imgcls_jax.augment import ops
from imgcls_jax.registry import closest

Op = ops.Op


def mix_batch(
    key: jax.Array,
    images: jnp.ndarray,
    labels: jnp.ndarray,
    num_classes: int,
    mixup_alpha: float,
    cutmix_alpha: float,
    switch_prob: float,
    prob: float,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Mixup or CutMix (timm's batch mode, one weight per batch): each example is mixed with
    a partner drawn by a random permutation of the batch (from `key`), so that partners are
    random whatever order the examples come in.

    Returns the mixed images and soft labels ``lam * y + (1 - lam) * y_partner``, where for
    CutMix ``lam`` is the fraction of the image that was not pasted over.
    """
    keys = jax.random.split(key, 6)
    apply_key, switch_key, mixup_key, cutmix_key, box_key, partner_key = keys
    targets = jax.nn.one_hot(labels, num_classes) if labels.ndim == 1 else labels
    partners = jax.random.permutation(partner_key, images.shape[0])
    partner_images, partner_targets = images[partners], targets[partners]
    _, height, width, _ = images.shape
    apply = jax.random.bernoulli(apply_key, prob)
    use_cutmix = jnp.asarray(cutmix_alpha > 0)
    if mixup_alpha > 0 and cutmix_alpha > 0:
        use_cutmix = jax.random.bernoulli(switch_key, switch_prob)
    lam_mixup = jax.random.beta(mixup_key, mixup_alpha, mixup_alpha) if mixup_alpha > 0 else 1.0
    lam_cut = jax.random.beta(cutmix_key, cutmix_alpha, cutmix_alpha) if cutmix_alpha > 0 else 1.0
    # CutMix box: side fractions sqrt(1 - lam), centre uniform, clipped to the image.
    cut = jnp.sqrt(1.0 - lam_cut)
    cy, cx = jax.random.uniform(box_key, (2,)) * jnp.array([height, width])
    y0, y1 = (
        jnp.clip(jnp.round(cy - cut * height / 2), 0, height),
        jnp.clip(jnp.round(cy + cut * height / 2), 0, height),
    )
    x0, x1 = (
        jnp.clip(jnp.round(cx - cut * width / 2), 0, width),
        jnp.clip(jnp.round(cx + cut * width / 2), 0, width),
    )
    rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
    box = ((rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1))[None, :, :, None]
    lam_cut = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)
    lam = jnp.where(apply, jnp.where(use_cutmix, lam_cut, lam_mixup), 1.0)
    cutmixed = jnp.where(box, partner_images, images)
    mixed = lam * images + (1.0 - lam) * partner_images
    out = jnp.where(apply & use_cutmix, cutmixed, jnp.where(apply, mixed, images))
    return out, lam * targets + (1.0 - lam) * partner_targets


def build_mix_fn(augment_config, num_classes: int):
    """``fn(key, images, labels) -> (images, soft labels)``, or None when mixing is off."""
    if augment_config.mixup_alpha <= 0 and augment_config.cutmix_alpha <= 0:
        return None

    def mix(key, images, labels):
        return mix_batch(
            key, images, labels, num_classes, augment_config.mixup_alpha,
            augment_config.cutmix_alpha, augment_config.switch_prob, augment_config.mix_prob,
        )  # fmt: skip

    return mix


# What each op argument may be: (low, high) inclusive bounds (None: unbounded), applied to
# each element of a tuple argument (whose elements must also be in increasing order), or a
# set of allowed strings.
_PROBABILITY, _STRENGTH, _FRACTIONS, _RATIOS = (0, 1), (0, 1), (1e-6, 1), (1e-6, None)
ARGUMENT_RANGES: dict[str, dict[str, tuple | frozenset]] = {
    "random_crop": {"padding": (0, None), "mode": frozenset({"constant", "reflect"})},
    "flip_lr": {"probability": _PROBABILITY},
    "random_resized_crop": {"size": (1, None), "scale": _FRACTIONS, "ratio": _RATIOS},
    "brightness": {"strength": _STRENGTH},
    "contrast": {"strength": _STRENGTH},
    "saturation": {"strength": _STRENGTH},
    "random_grayscale": {"probability": _PROBABILITY},
    "hue": {"strength": (0, 0.5)},
    "random_erasing": {"probability": _PROBABILITY, "scale": _FRACTIONS, "ratio": _RATIOS},
    "randaugment": {"num_ops": (0, None), "magnitude": (0, 10)},
    "resize": {"size": (1, None), "method": frozenset({"linear", "cubic", "nearest", "lanczos3"})},
    "center_crop": {"size": (1, None)},
}
_INTEGER_ARGUMENTS = {"padding", "size", "num_ops"}


def _check_argument(part: str, name: str, value, allowed: tuple | frozenset) -> None:
    """Raises a ValueError naming the op, the argument and what it may be."""
    if isinstance(allowed, frozenset):
        if value not in allowed:
            raise ValueError(f"Augmentation op {part!r}: {name}={value!r} is not known."
                             f"{closest(str(value), allowed)}")  # fmt: skip
        return
    values = value if isinstance(value, tuple) else (value,)
    low, high = allowed
    integer = name in _INTEGER_ARGUMENTS
    ok = all(
        isinstance(v, int if integer else (int, float)) and not isinstance(v, bool)
        and (low is None or v >= low) and (high is None or v <= high)
        for v in values
    )  # fmt: skip
    if ok and list(values) == sorted(values):
        return
    bounds = f"[{low}, {'inf' if high is None else high}]"
    if isinstance(value, tuple):
        what = f"{'integers' if integer else 'numbers'} in {bounds}, in increasing order"
    else:
        what = f"{'an integer' if integer else 'a number'} in {bounds}"
    raise ValueError(f"Augmentation op {part!r}: {name}={value!r} must be {what}.")


def check_shapes(train_spec: str, eval_spec: str, image_shape: tuple) -> tuple[int, ...]:
    """Traces both pipelines on one image of `image_shape` (no compiling, no device work), so
    that e.g. a crop larger than the images fails before training starts; returns the shape
    of one image as the model sees it (the evaluation pipeline's output)."""
    key = jax.eval_shape(lambda: jax.random.key(0))
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8)
    pipelines = (("augment.train", train_spec, build_augment_fn, (key, images)),
                 ("augment.eval", eval_spec, build_eval_fn, (images,)))  # fmt: skip
    outputs = {}
    for name, spec, build, args in pipelines:
        try:
            outputs[name] = jax.eval_shape(build(spec), *args)
        except (ValueError, TypeError) as e:
            size = "x".join(map(str, image_shape))
            raise ValueError(f"config.{name}={spec!r} does not fit the dataset's {size} images: "
                             f"{e}") from None  # fmt: skip
    return tuple(outputs["augment.eval"].shape[1:])


def eval_output_shape(eval_spec: str, image_shape: tuple) -> tuple[int, ...]:
    """The shape of one image of `image_shape` after the evaluation pipeline: what the model
    sees."""
    images = jax.ShapeDtypeStruct((1, *image_shape), jnp.uint8)
    return tuple(jax.eval_shape(build_eval_fn(eval_spec), images).shape[1:])


def _ops(kind: str) -> dict[str, Op]:
    return {name: registry.get(kind, name) for name in registry.names(kind)}


def parse_pipeline(spec: str, training: bool = True) -> list[tuple[Op, tuple]]:
    """Parses a pipeline string into (op, args) pairs; raises on unknown ops or bad arguments.

    Training pipelines are called as ``op(key, image, *args)`` and take the random ops and the
    deterministic ones (e.g. ``resize(96)`` before a random crop); evaluation pipelines
    (`training=False`) take only the deterministic ones, called as ``op(image, *args)``.
    """
    random_ops = _ops("augment_op") if training else {}
    known = {**random_ops, **_ops("eval_op")}
    pipeline = []
    for part in filter(None, (p.strip() for p in spec.split("|"))):
        name, _, rest = part.partition("(")
        name = name.strip()
        if name not in known:
            raise ValueError(f"Unknown augmentation op {name!r} in {spec!r}.{closest(name, known)}")
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
        takes_key = name in random_ops
        try:
            bound = inspect.signature(known[name]).bind(*(None,) * (1 + takes_key), *args)
        except TypeError as e:
            raise ValueError(
                f"Augmentation op {part!r} has bad arguments: {e}. "
                f"Signature: {name}{inspect.signature(known[name])}."
            ) from e
        bound.apply_defaults()
        for argument, allowed in ARGUMENT_RANGES.get(name, {}).items():
            _check_argument(part, argument, bound.arguments[argument], allowed)
        op = known[name] if takes_key or not training else _ignore_key(known[name])
        pipeline.append((op, args))
    return pipeline


def _ignore_key(op: Op) -> Op:
    """A deterministic op in the form of a training op: ``(key, image, *args)``."""
    return lambda key, image, *args: op(image, *args)


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


def build_eval_fn(spec: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
    """Returns ``fn(images) -> float32 images`` applying a deterministic evaluation pipeline."""
    pipeline = parse_pipeline(spec, training=False)

    def preprocess_one(image: jnp.ndarray) -> jnp.ndarray:
        for op, args in pipeline:
            image = op(image, *args)
        return image

    def preprocess_batch(images: jnp.ndarray) -> jnp.ndarray:
        images = images.astype(jnp.float32)
        return jax.vmap(preprocess_one)(images) if pipeline else images

    return preprocess_batch
