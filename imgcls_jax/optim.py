"""Learning-rate schedules and Optax optimizers built from their config sections."""

from __future__ import annotations

from collections.abc import Callable

import jax
import ml_collections
import optax


def peak_learning_rate(optimizer_config: ml_collections.ConfigDict, batch_size: int) -> float:
    """The configured rate, linearly scaled by batch_size / lr_base_batch_size when set."""
    lr = optimizer_config.learning_rate
    if optimizer_config.lr_base_batch_size > 0:
        lr *= batch_size / optimizer_config.lr_base_batch_size
    return lr


def build_schedule(
    schedule_config: ml_collections.ConfigDict,
    peak_lr: float,
    steps_per_epoch: int,
    total_steps: int,
) -> optax.Schedule:
    """Linear warm-up from 0, then cosine, step or constant."""
    warmup = min(int(schedule_config.warmup_epochs * steps_per_epoch), total_steps)
    decay_steps = max(total_steps - warmup, 1)
    if schedule_config.name == "cosine":
        main = optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=schedule_config.end_factor)
    elif schedule_config.name == "step":
        boundaries = {
            int(epoch * steps_per_epoch) - warmup: schedule_config.step_factor
            for epoch in schedule_config.step_epochs
            if int(epoch * steps_per_epoch) > warmup
        }
        main = optax.piecewise_constant_schedule(peak_lr, boundaries)
    elif schedule_config.name == "constant":
        main = optax.constant_schedule(peak_lr)
    else:
        raise ValueError(f"Unknown schedule {schedule_config.name!r}.")
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), main], [warmup])


def decay_mask(params) -> object:
    """True for weights that weight decay applies to: kernels, not biases or norm parameters."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def _sgd(c: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """SGD with L2 decay added to the gradient, as in PyTorch."""
    decay = [optax.add_decayed_weights(c.weight_decay, decay_mask)] if c.weight_decay else []
    return optax.chain(*decay, optax.sgd(lr, momentum=c.momentum or None, nesterov=c.nesterov))


def _adamw(c: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                       mask=decay_mask)  # fmt: skip


def _lamb(c: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """Adam with decoupled decay and a per-layer trust ratio (large-batch training)."""
    return optax.lamb(lr, b1=c.b1, b2=c.b2, eps=c.eps, weight_decay=c.weight_decay,
                      mask=decay_mask)  # fmt: skip


def _lars(c: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """SGD with momentum and a per-layer trust ratio; biases and norm parameters get neither
    the decay nor the trust ratio, as in the large-batch ResNet recipes."""
    return optax.lars(lr, weight_decay=c.weight_decay, weight_decay_mask=decay_mask,
                      trust_coefficient=c.trust_coefficient, trust_ratio_mask=decay_mask,
                      momentum=c.momentum, nesterov=c.nesterov)  # fmt: skip


def _lion(c: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    """Sign of interpolated momentum (Chen et al. 2023); wants a 3-10x smaller learning rate
    and a 3-10x larger weight decay than AdamW, and b2 about 0.99."""
    return optax.lion(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay, mask=decay_mask)


# name -> builder(optimizer config, learning-rate schedule), weight decay masked by decay_mask.
OPTIMIZERS: dict[str, Callable[[ml_collections.ConfigDict, optax.Schedule],
                               optax.GradientTransformation]] = {
    "sgd": _sgd, "adamw": _adamw, "lamb": _lamb, "lars": _lars, "lion": _lion,
}  # fmt: skip


def build_optimizer(
    optimizer_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """The configured optimizer (`OPTIMIZERS`), after global-norm clipping when set."""
    from imgcls_jax.config import check_choice

    check_choice("optimizer.name", optimizer_config.name, OPTIMIZERS)
    clip = optimizer_config.grad_clip_norm
    clipping = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    return optax.chain(*clipping, OPTIMIZERS[optimizer_config.name](optimizer_config,
                                                                    learning_rate_fn))  # fmt: skip
