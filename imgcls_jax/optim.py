"""Learning-rate schedules and Optax optimizers built from their config sections."""

from __future__ import annotations

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


def build_optimizer(
    optimizer_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """SGD (L2 decay added to the gradient, as in PyTorch) or AdamW (decoupled decay)."""
    parts = []
    if optimizer_config.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optimizer_config.grad_clip_norm))
    if optimizer_config.name == "sgd":
        if optimizer_config.weight_decay:
            parts.append(optax.add_decayed_weights(optimizer_config.weight_decay, decay_mask))
        parts.append(
            optax.sgd(
                learning_rate_fn,
                momentum=optimizer_config.momentum or None,
                nesterov=optimizer_config.nesterov,
            )
        )
    elif optimizer_config.name == "adamw":
        parts.append(
            optax.adamw(
                learning_rate_fn,
                b1=optimizer_config.b1,
                b2=optimizer_config.b2,
                eps=optimizer_config.eps,
                weight_decay=optimizer_config.weight_decay,
                mask=decay_mask,
            )
        )
    else:
        raise ValueError(f"Unknown optimizer {optimizer_config.name!r}.")
    return optax.chain(*parts)
