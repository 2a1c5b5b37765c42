"""Learning-rate schedules and Optax optimizers (registry kinds "schedule" and "optimizer"),
built from their config sections."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from imgcls_jax import registry


def peak_learning_rate(optimizer_config: ml_collections.ConfigDict, batch_size: int) -> float:
    """The configured rate, linearly scaled by batch_size / lr_base_batch_size when set."""
    lr = optimizer_config.learning_rate
    if optimizer_config.lr_base_batch_size > 0:
        lr *= batch_size / optimizer_config.lr_base_batch_size
    return lr


# Schedules after the warm-up: (peak lr, steps per epoch, warm-up steps, steps after the
# warm-up) -> schedule counted from the end of the warm-up.


@registry.register("schedule", "cosine")
def cosine(peak_lr: float, steps_per_epoch: int, warmup: int, decay_steps: int, *,
           end_factor: float = 0.0) -> optax.Schedule:  # fmt: skip
    """Cosine decay to `end_factor` * peak."""
    del steps_per_epoch, warmup
    return optax.cosine_decay_schedule(peak_lr, decay_steps, alpha=end_factor)


@registry.register("schedule", "step")
def step(peak_lr: float, steps_per_epoch: int, warmup: int, decay_steps: int, *,
         step_epochs: Sequence[float] = (), step_factor: float = 0.1) -> optax.Schedule:  # fmt: skip
    """Multiplied by `step_factor` at each of `step_epochs`."""
    del decay_steps
    boundaries = {
        int(epoch * steps_per_epoch) - warmup: step_factor
        for epoch in step_epochs
        if int(epoch * steps_per_epoch) > warmup
    }
    return optax.piecewise_constant_schedule(peak_lr, boundaries)


@registry.register("schedule", "constant")
def constant(peak_lr: float, steps_per_epoch: int, warmup: int, decay_steps: int) -> optax.Schedule:
    del steps_per_epoch, warmup, decay_steps
    return optax.constant_schedule(peak_lr)


def build_schedule(
    schedule_config: ml_collections.ConfigDict,
    peak_lr: float,
    steps_per_epoch: int,
    total_steps: int,
) -> optax.Schedule:
    """Linear warm-up from 0, then the schedule named by `schedule_config.name`."""
    warmup = min(int(schedule_config.warmup_epochs * steps_per_epoch), total_steps)
    decay_steps = max(total_steps - warmup, 1)
    main = registry.build_from("schedule", schedule_config.name, schedule_config, peak_lr,
                               steps_per_epoch, warmup, decay_steps, key="schedule.name")  # fmt: skip
    if warmup == 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak_lr, warmup), main], [warmup])


def decay_mask(params) -> object:
    """True for weights that weight decay applies to: kernels, not biases or norm parameters."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


# Optimizers: (learning-rate schedule, hyperparameters) -> transformation; weight decay is
# masked by decay_mask.


@registry.register("optimizer", "sgd")
def sgd(schedule: optax.Schedule, *, momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:  # fmt: skip
    """SGD with L2 decay added to the gradient, as in PyTorch."""
    decay = [optax.add_decayed_weights(weight_decay, decay_mask)] if weight_decay else []
    return optax.chain(*decay, optax.sgd(schedule, momentum=momentum or None, nesterov=nesterov))


@registry.register("optimizer", "adamw")
def adamw(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          weight_decay: float = 1e-4) -> optax.GradientTransformation:  # fmt: skip
    return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                       mask=decay_mask)  # fmt: skip


@registry.register("optimizer", "lamb")
def lamb(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6,
         weight_decay: float = 0.0) -> optax.GradientTransformation:  # fmt: skip
    """Adam with decoupled decay and a per-layer trust ratio (large-batch training)."""
    return optax.lamb(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                      mask=decay_mask)  # fmt: skip


@registry.register("optimizer", "lars")
def lars(schedule: optax.Schedule, *, momentum: float = 0.9, nesterov: bool = False,
         weight_decay: float = 0.0, trust_coefficient: float = 0.001,
         ) -> optax.GradientTransformation:  # fmt: skip
    """SGD with momentum and a per-layer trust ratio; biases and norm parameters get neither
    the decay nor the trust ratio, as in the large-batch ResNet recipes."""
    return optax.lars(schedule, weight_decay=weight_decay, weight_decay_mask=decay_mask,
                      trust_coefficient=trust_coefficient, trust_ratio_mask=decay_mask,
                      momentum=momentum, nesterov=nesterov)  # fmt: skip


@registry.register("optimizer", "lion")
def lion(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.99,
         weight_decay: float = 1e-3) -> optax.GradientTransformation:  # fmt: skip
    """Sign of interpolated momentum (Chen et al. 2023); wants a 3-10x smaller learning rate
    and a 3-10x larger weight decay than AdamW, and b2 about 0.99."""
    return optax.lion(schedule, b1=b1, b2=b2, weight_decay=weight_decay, mask=decay_mask)


def muon_matrices(params) -> object:
    """Which parameters Muon orthogonalizes and how each reads as a matrix (reduction axes,
    output axes); None for the rest, which AdamW updates. As the reference implementations
    assign them (Jordan's Muon, timm): the hidden layers' kernels (dense (in, out);
    convolutions HWIO as (H x W x in, out); attention projections (width, heads, head width)
    and (heads, head width, width)); not the first layer (`stem_conv`, or a convolution of
    the image's 1-3 channels), the classifier (`head`), depthwise convolutions, embeddings,
    biases and normalisation parameters."""
    Matrix = optax.contrib.MuonDimensionNumbers

    def matrix(path, x) -> Matrix | None:
        names = [getattr(k, "key", str(k)) for k in path]
        if names[-1] != "kernel" or names[0] in ("stem_conv", "head"):
            return None
        if x.ndim == 4:
            return Matrix((0, 1, 2), (3,)) if x.shape[2] > 3 else None  # Not depthwise/first.
        if x.ndim == 3:  # Attention projections.
            return Matrix((0, 1), (2,)) if names[-2] == "out" else Matrix((0,), (1, 2))
        return Matrix((0,), (1,)) if x.ndim == 2 else None

    return jax.tree_util.tree_map_with_path(matrix, params)


def _matrix_leaf(x) -> bool:
    return x is None or isinstance(x, optax.contrib.MuonDimensionNumbers)


def scale_by_matrix_shape(rms: float) -> optax.GradientTransformation:
    """Orthogonalized updates times `rms` x sqrt(max(fan in, fan out)) of their matrix
    (`muon_matrices`): the RMS of AdamW's updates (Liu et al. 2025), so that one learning
    rate serves both."""

    def update(updates, state, params=None):
        del params

        def scale(u, matrix):
            fan_in = np.prod([u.shape[a] for a in matrix.reduction_axis])
            fan_out = np.prod([u.shape[a] for a in matrix.output_axis])
            return u * (rms * float(np.sqrt(max(fan_in, fan_out))))

        return jax.tree.map(scale, updates, muon_matrices(updates), is_leaf=_matrix_leaf), state

    return optax.GradientTransformation(optax.init_empty_state, update)


@registry.register("optimizer", "muon")
def muon(schedule: optax.Schedule, *, muon_beta: float = 0.95, muon_rms: float = 0.2,
         b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         weight_decay: float = 0.0) -> optax.GradientTransformation:  # fmt: skip
    """Muon (Jordan et al. 2024): the hidden layers' kernels (`muon_matrices`) follow the
    orthogonalized (Newton-Schulz, 5 steps) Nesterov momentum `muon_beta` of their gradient
    (optax.contrib.scale_by_muon), at AdamW's update RMS (`scale_by_matrix_shape`); the
    other parameters take AdamW (b1, b2, eps). Decoupled weight decay, times the learning
    rate, on kernels in both."""
    dims = optax.contrib.scale_by_muon(beta=muon_beta, eps=eps, nesterov=True,
                                       weight_dimension_numbers=muon_matrices)  # fmt: skip
    muon_part = optax.chain(dims, scale_by_matrix_shape(muon_rms),
                            optax.add_decayed_weights(weight_decay, decay_mask),
                            optax.scale_by_learning_rate(schedule))  # fmt: skip
    adam_part = optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
                            mask=decay_mask)  # fmt: skip

    def labels(params):
        matrices = muon_matrices(params)
        return jax.tree.map(lambda m: "adam" if m is None else "muon", matrices,
                            is_leaf=_matrix_leaf)  # fmt: skip

    return optax.partition({"muon": muon_part, "adam": adam_part}, labels)


def adaptive_normalize(eps: float = 1e-12) -> optax.GradientTransformation:
    """ASAM's perturbation direction (Kwon et al. 2021): |w|^2 g / || |w| g ||, so that the
    neighbourhood scales with each weight (plain SAM: g / ||g||)."""

    def update(updates, state, params):
        scaled = jax.tree.map(lambda g, w: jnp.abs(w) * g, updates, params)
        norm = optax.tree.norm(scaled)
        return jax.tree.map(lambda t, w: jnp.abs(w) * t / (norm + eps), scaled, params), state

    return optax.GradientTransformation(optax.init_empty_state, update)


@registry.register("optimizer", "sam")
def sam(schedule: optax.Schedule, *, sam_rho: float = 0.05, sam_adaptive: bool = False,
        momentum: float = 0.9, nesterov: bool = False,
        weight_decay: float = 0.0) -> optax.GradientTransformation:  # fmt: skip
    """Sharpness-aware minimisation (Foret et al. 2021; optax.contrib.sam): each step takes
    the gradient again at w + rho g / ||g|| (with `sam_adaptive`, ASAM's |w|^2 g /
    || |w| g ||, `sam_rho` about 10x larger), on the same batch, and updates w with it by SGD
    (`sgd`'s momentum, Nesterov and weight decay): two forward and backward passes a step."""
    direction = adaptive_normalize() if sam_adaptive else optax.contrib.normalize()
    ascent = optax.chain(direction, optax.sgd(sam_rho))
    return optax.contrib.sam(sgd(schedule, momentum=momentum, nesterov=nesterov,
                                 weight_decay=weight_decay), ascent, sync_period=2,
                             opaque_mode=True)  # fmt: skip


@registry.register("optimizer", "schedule_free")
def schedule_free(schedule: optax.Schedule, *, b1: float = 0.9, b2: float = 0.999,
                  eps: float = 1e-8, weight_decay: float = 0.0,
                  schedule_free_lr_power: float = 2.0) -> optax.GradientTransformation:  # fmt: skip
    """Schedule-free AdamW (Defazio et al. 2024; optax.contrib.schedule_free_adamw with the
    decay masked by `decay_mask`): Adam's second moment without momentum steps a sequence z;
    x is its average weighted by learning rate ^ `schedule_free_lr_power`; the gradient is
    taken, and the parameters held, at y = (1 - b1) z + b1 x. Evaluate x
    (`schedule_free_average`). Meant for a constant learning rate after a warm-up."""
    base = optax.chain(
        optax.scale_by_rms(decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True),
        optax.add_decayed_weights(weight_decay, decay_mask),
        optax.scale_by_learning_rate(schedule),
    )
    # optax counts the averaging's steps from 1, the base's from 0: both read the rate of
    # the same step (the one the run logs) this way.
    return optax.contrib.schedule_free(base, learning_rate=lambda count: schedule(count - 1),
                                       b1=b1, weight_lr_power=schedule_free_lr_power)  # fmt: skip


def _is_schedule_free_state(x) -> bool:
    return isinstance(x, optax.contrib.ScheduleFreeState)


def schedule_free_average(opt_state, params):
    """The averaged weights x of a `schedule_free` optimizer, from its state and the
    parameters y it holds: (y - (1 - b1) z) / b1."""
    (state,) = [s for s in jax.tree.leaves(opt_state, is_leaf=_is_schedule_free_state)
                if _is_schedule_free_state(s)]  # fmt: skip
    return optax.contrib.schedule_free_eval_params(state, params)


def build_optimizer(
    optimizer_config: ml_collections.ConfigDict, learning_rate_fn: optax.Schedule
) -> optax.GradientTransformation:
    """The optimizer named by `optimizer_config.name`, after global-norm clipping when set."""
    clip = optimizer_config.grad_clip_norm
    clipping = [optax.clip_by_global_norm(clip)] if clip > 0 else []
    optimizer = registry.build_from("optimizer", optimizer_config.name, optimizer_config,
                                    learning_rate_fn, key="optimizer.name")  # fmt: skip
    return optax.chain(*clipping, optimizer)
