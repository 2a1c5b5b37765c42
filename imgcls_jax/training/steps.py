"""Pure train and eval steps over a TrainState pytree (`train_state`): augmentation, loss,
gradients, the update and the steps' metrics (`metrics`); no config access."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from clu import metrics

from imgcls_jax.models import features, layers
from imgcls_jax.training.train_state import TrainState, ema_decay_at


def distillation_loss(
    student_logits: jnp.ndarray, teacher_logits: jnp.ndarray, temperature: float
) -> jnp.ndarray:
    """Per example, T^2 x KL(softmax(teacher / T) || softmax(student / T)) (Hinton et al.
    2015: the T^2 keeps the gradient's scale independent of T), in float32."""
    t = jnp.float32(temperature)
    student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / t)
    teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / t)
    return t**2 * optax.kl_divergence(student, jnp.exp(teacher))


def normalize(images: jnp.ndarray, mean: tuple, std: tuple) -> jnp.ndarray:
    """Maps [0, 255] pixels to (x / 255 - mean) / std per channel."""
    mean = jnp.asarray(mean, jnp.float32) * 255.0
    std = jnp.asarray(std, jnp.float32) * 255.0
    return (images.astype(jnp.float32) - mean) / std


def cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: float) -> jnp.ndarray:
    """Per-example cross-entropy against int labels or soft labels, with label smoothing."""
    num_classes = logits.shape[-1]
    targets = labels if labels.ndim == 2 else jax.nn.one_hot(labels, num_classes)
    targets = optax.smooth_labels(targets, label_smoothing) if label_smoothing else targets
    return optax.softmax_cross_entropy(logits, targets)


def example_weights(labels: jnp.ndarray, class_weights: jnp.ndarray) -> jnp.ndarray:
    """Each example's loss weight: its class's weight (soft labels: the label-weighted mean)."""
    class_weights = jnp.asarray(class_weights, jnp.float32)
    return class_weights[labels] if labels.ndim == 1 else labels @ class_weights


def all_finite(tree: Any) -> jax.Array:
    """Whether every floating-point value in `tree` is finite (a scalar bool)."""
    leaves = [x for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves])) if leaves else True


def computed_once(flag: jax.Array) -> jax.Array:
    """`flag` (a scalar bool), computed once however many arrays it gates.

    A flag over every array of the state reaches XLA as a chain of scalar `and`s, one per
    array, and XLA copies such cheap chains into each consumer it fuses them with: gating
    each of N arrays on the flag then compiles O(N^2) instructions (the ViT-Ti/4 preset's
    803 arrays: 226 s on XLA:CPU instead of 21; docs/performance.md). XLA does not copy a
    square root (an op it counts as expensive), so the chain ends there and is computed once.
    """
    return jnp.sqrt(flag.astype(jnp.float32)) > 0.5


def augment_batch(
    key: jax.Array,
    step: jax.Array,
    batch: dict[str, jnp.ndarray],
    augment_fn: Callable[[jax.Array, jnp.ndarray], jnp.ndarray],
    mix_fn: Callable | None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The images (float32, [0, 255]) and labels that training step `step` sees."""
    augment_key, mix_key = jax.random.split(jax.random.fold_in(key, step))
    images = augment_fn(augment_key, batch["image"])
    labels = batch["label"]
    if mix_fn is not None:
        images, labels = mix_fn(mix_key, images, labels)
    return images, labels


def frozen_norm_interceptor(frozen_norms: frozenset[str]) -> Callable:
    """A Flax method interceptor that runs the BatchNorm layers at the given module paths
    (e.g. "blocks_3/depthwise_norm") in inference mode (`layers.NormAct.frozen`), so that a
    frozen layer computes the same function in training and evaluation."""

    def intercept(next_fun, args, kwargs, context):
        module = context.module
        if (
            isinstance(module, layers.NormAct)
            and context.method_name == "__call__"
            and "/".join(module.path) in frozen_norms
        ):
            return module.frozen(args[0])
        return next_fun(*args, **kwargs)

    return intercept


@dataclasses.dataclass(frozen=True)
class TrainStepParts:
    """What a train step needs besides (state, batch, key), built once by the Trainer."""

    model: nn.Module
    tx: optax.GradientTransformation
    learning_rate_fn: optax.Schedule  # Only logged: `tx` holds the schedule it follows.
    augment_fn: Callable[[jax.Array, jnp.ndarray], jnp.ndarray]
    mix_fn: Callable | None  # Mixup/CutMix, or None.
    mean: tuple  # Normalisation, per channel, in [0, 1] units.
    std: tuple
    metrics_cls: type[metrics.Collection]
    label_smoothing: float = 0.0
    # Per-class loss weights: the optimised loss is the mean of weight x cross-entropy; the
    # reported loss stays the plain mean cross-entropy.
    class_weights: jnp.ndarray | None = None
    # A pytree of Python bools (or None): True parameters get no gradient (the optimizer leaves
    # them too); the BatchNorm layers in `frozen_norms` run in inference mode.
    frozen: Any | None = None
    frozen_norms: frozenset[str] = frozenset()
    micro_batches: int = 1  # Gradient accumulation over that many parts (`_loss_and_grads`).
    ema_decay: float = 0.0  # > 0: the state's weight average follows (`ema_decay_at`).
    ema_warmup: bool = True
    # The weight average an optimizer keeps itself, (opt_state, params) -> params (e.g.
    # schedule-free's x); held in the state's `ema` slot. Not with ema_decay.
    average_fn: Callable[[Any, Any], Any] | None = None
    # Distillation: (augmented float images in [0, 255]) -> the teacher's logits (see
    # `distillation.Teacher`); the loss mixes in `distill_weight` x its soft targets.
    teacher_fn: Callable[[jnp.ndarray], jnp.ndarray] | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    image_size: int = 0  # > 0: augmented images resized to this side (progressive resizing).


def resize_images(images: jnp.ndarray, size: int) -> jnp.ndarray:
    """[N, H, W, C] float images resized to [N, size, size, C] (bilinear, antialiased when
    shrinking)."""
    return jax.image.resize(images, (images.shape[0], size, size, images.shape[-1]), "bilinear")


def _loss_and_grads(
    state: TrainState,
    images: jnp.ndarray,
    labels: jnp.ndarray,
    weights: jnp.ndarray,
    teacher_logits: jnp.ndarray | None,
    dropout_key: jax.Array,
    parts: TrainStepParts,
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray, Any, Any]:
    """(objective, logits, per-example loss, new batch statistics, gradients) of the batch.

    The objective is the mean of weight x cross-entropy, with `teacher_logits` mixed with
    the distillation loss: (1 - w) x that + w x `distillation_loss`.

    With `parts.micro_batches` k > 1 the batch is split into k equal micro-batches (micro-batch
    i holds rows i, i + k, ..., so that every device feeds each equally), run one after
    another in a `lax.scan` with their gradients averaged: the memory of a k times smaller
    batch, the gradient of the whole one. Batch norm normalises each micro-batch with its own
    statistics and updates the running ones k times.
    """
    model, frozen, k = parts.model, parts.frozen, parts.micro_batches

    def loss_fn(params, batch_stats, images, labels, weights, teacher_logits, key):
        if frozen is not None:  # No gradient work below the lowest trainable layer.
            params = jax.tree.map(lambda p, f: jax.lax.stop_gradient(p) if f else p, params, frozen)
        with nn.intercept_methods(frozen_norm_interceptor(parts.frozen_norms)):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats}, images, train=True,
                mutable=["batch_stats"], rngs={"dropout": key},
            )  # fmt: skip
        loss = cross_entropy(logits, labels, parts.label_smoothing)
        objective = weights * loss
        if teacher_logits is not None:
            soft = distillation_loss(logits, teacher_logits, parts.distill_temperature)
            objective = (1.0 - parts.distill_weight) * objective + parts.distill_weight * soft
        return objective.mean(), (logits, loss, updates.get("batch_stats", {}))

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if k == 1:
        (objective, (logits, loss, batch_stats)), grads = grad_fn(
            state.params, state.batch_stats, images, labels, weights, teacher_logits, dropout_key
        )
        return objective, logits, loss, batch_stats, grads

    def split(x):  # [B, ...] -> [k, B / k, ...], micro-batch i holding rows i, i + k, ...
        return x.reshape(x.shape[0] // k, k, *x.shape[1:]).swapaxes(0, 1)

    def join(x):  # The inverse of split.
        return x.swapaxes(0, 1).reshape(-1, *x.shape[2:])

    def micro_batch(carry, inputs):
        batch_stats, grad_sum, objective_sum = carry
        index, *batch = inputs
        key = jax.random.fold_in(dropout_key, index)
        (objective, (logits, loss, batch_stats)), grads = grad_fn(
            state.params, batch_stats, *batch, key
        )
        grad_sum = jax.tree.map(jnp.add, grad_sum, grads)
        return (batch_stats, grad_sum, objective_sum + objective), (logits, loss)

    carry = (state.batch_stats, jax.tree.map(jnp.zeros_like, state.params), jnp.float32(0))
    micro = (jnp.arange(k), *jax.tree.map(split, (images, labels, weights, teacher_logits)))
    (batch_stats, grad_sum, objective_sum), (logits, loss) = jax.lax.scan(micro_batch, carry, micro)
    grads = jax.tree.map(lambda g: g / k, grad_sum)
    return objective_sum / k, join(logits), join(loss), batch_stats, grads


def train_step(
    state: TrainState, batch: dict[str, jnp.ndarray], key: jax.Array, parts: TrainStepParts
) -> tuple[TrainState, metrics.Collection]:
    """One optimisation step; the step's randomness is `key` folded with the step number.

    What each of `parts` does is said where it is declared (`TrainStepParts`).

    When the loss, the gradient or any array of the new state is not finite, the update is
    not applied (only the step advances) and the `nonfinite` metric records the step; the
    other metrics skip it.
    """
    images, labels = augment_batch(key, state.step, batch, parts.augment_fn, parts.mix_fn)
    teacher_logits = None  # Computed once per step, whatever the micro-batches or SAM do.
    if parts.teacher_fn is not None:
        teacher_logits = jax.lax.stop_gradient(parts.teacher_fn(images).astype(jnp.float32))
    if parts.image_size:
        images = resize_images(images, parts.image_size)
    images = normalize(images, parts.mean, parts.std)
    dropout_key = jax.random.fold_in(jax.random.fold_in(key, state.step), 1)  # Dropout, drop path.
    weights = (
        jnp.ones(labels.shape[0], jnp.float32)
        if parts.class_weights is None
        else example_weights(labels, parts.class_weights)
    )
    objective, logits, loss, batch_stats, grads = _loss_and_grads(
        state, images, labels, weights, teacher_logits, dropout_key, parts
    )

    def grad_fn(params: Any, _: int) -> Any:  # The batch's gradient elsewhere (SAM).
        return _loss_and_grads(state.replace(params=params), images, labels, weights,
                               teacher_logits, dropout_key, parts)[4]  # fmt: skip

    updates, opt_state = parts.tx.update(grads, state.opt_state, state.params, grad_fn=grad_fn)
    params = optax.apply_updates(state.params, updates)
    updated = state.replace(params=params, batch_stats=batch_stats, opt_state=opt_state)
    if parts.ema_decay:
        decay = ema_decay_at(state.step + 1, parts.ema_decay, parts.ema_warmup)
        new = {"params": params, "batch_stats": batch_stats}
        updated = updated.replace(
            ema=jax.tree.map(lambda e, w: e * decay + (1.0 - decay) * w, state.ema, new)
        )
    if parts.average_fn is not None:
        average = parts.average_fn(opt_state, params)
        updated = updated.replace(ema={"params": average, "batch_stats": batch_stats})
    # The whole new state, not only the loss and gradient: a huge but finite step can still
    # overflow the batch statistics or the optimizer's moments.
    finite = computed_once(
        jnp.isfinite(objective) & jnp.isfinite(optax.tree.norm(grads)) & all_finite(updated)
    )
    updated = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    smoothed = parts.label_smoothing > 0
    distilled = teacher_logits is not None
    step_metrics = parts.metrics_cls.single_from_model_output(
        loss=loss, logits=logits, labels=labels, learning_rate=parts.learning_rate_fn(state.step),
        finite=finite, step=state.step + 1, mask=jnp.broadcast_to(finite, loss.shape),
        loss_no_smoothing=cross_entropy(logits, labels, 0.0) if smoothed else loss,
        distill_loss=distillation_loss(logits, teacher_logits, parts.distill_temperature)
        if distilled else loss,
    )  # fmt: skip  # A skipped step's examples are masked out, as padding in `eval_step`.
    return updated.replace(step=state.step + 1), step_metrics


def train_steps(
    state: TrainState,
    merged: metrics.Collection,
    batches: tuple[dict[str, jnp.ndarray], ...],
    key: jax.Array,
    parts: TrainStepParts,
) -> tuple[TrainState, metrics.Collection]:
    """`len(batches)` consecutive `train_step`s in one program (a `lax.scan`), each step's
    metrics merged into `merged` in step order, on device. Any split of the same steps into
    calls gives bit-identical states and metrics."""
    step = functools.partial(train_step, key=key, parts=parts)

    def body(carry, batch):
        state, merged = carry
        state, step_metrics = step(state, batch)
        return (state, merged.merge(step_metrics)), None

    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *batches)
    (state, merged), _ = jax.lax.scan(body, (state, merged), stacked)
    return state, merged


def eval_logits(
    variables: dict[str, Any],
    images: jnp.ndarray,
    *,
    model: nn.Module,
    preprocess_fn: Callable[[jnp.ndarray], jnp.ndarray],
    flip_tta: bool,
    mean: tuple,
    std: tuple,
) -> jnp.ndarray:
    """The evaluation logits of [0, 255] images: `preprocess_fn` (resize/crop on device),
    normalisation, the model in inference mode; with `flip_tta` the mean of the image's and
    its mirror image's logits. Evaluation and `predict` (inference.py) share it."""
    images = normalize(preprocess_fn(images), mean, std)
    logits = model.apply(variables, images, train=False)
    if flip_tta:
        logits = (logits + model.apply(variables, images[:, :, ::-1], train=False)) / 2
    return logits


def eval_features(
    variables: dict[str, Any],
    images: jnp.ndarray,
    *,
    model: nn.Module,
    preprocess_fn: Callable[[jnp.ndarray], jnp.ndarray],
    mean: tuple,
    std: tuple,
) -> jnp.ndarray:
    """The pre-logit features [N, D] of [0, 255] images, through `eval_logits`'s preprocessing
    and normalisation (`models.features.prelogit_features`): what linear probes read."""
    images = normalize(preprocess_fn(images), mean, std)
    return features.prelogit_features(model, variables, images)


def eval_step(
    state: TrainState,
    batch: dict[str, jnp.ndarray],
    total: metrics.Collection,
    *,
    logits_fn: Callable[[dict[str, Any], jnp.ndarray], jnp.ndarray],
    metrics_cls: type[metrics.Collection],
) -> metrics.Collection:
    """`total` merged with the metrics of one (possibly padded) batch, whose `batch["mask"]`
    marks the real examples; start from `empty_eval_metrics`. `logits_fn` is `eval_logits`
    bound to the model and preprocessing.

    Merging inside the step makes an evaluation one program per batch, each waiting for the
    last, and callers read merged metrics with `jax.device_get` before computing on them
    (so do the train loop's): with several CPU devices, XLA:CPU runs small programs inline
    on its few launch threads, and those queued right behind a program with collectives
    can hold every launch thread while that program still waits to start on another
    device; its collective then times out and XLA aborts the process."""
    logits = logits_fn({"params": state.params, "batch_stats": state.batch_stats}, batch["image"])
    loss = cross_entropy(logits, batch["label"], 0.0)
    return total.merge(
        metrics_cls.single_from_model_output(
            loss=loss, logits=logits, labels=batch["label"], mask=batch["mask"]
        )
    )
