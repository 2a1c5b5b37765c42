"""The base config: every field the framework reads, with its default, plus validation."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import ml_collections

from imgcls_jax.registry import check_choice, closest


def model_config(**fields) -> ml_collections.ConfigDict:
    """The base config's `model` section with `fields` set (an unknown field raises), as a
    run's config would hold it; `models.build(name, **kwargs)` builds a model without one."""
    config = base_config().model
    config.lock()
    config.update(fields)
    return config


def base_config() -> ml_collections.ConfigDict:
    """Returns the unlocked base config; presets in `configs/` override it and lock it."""
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.dataset = ml_collections.ConfigDict()
    c.dataset.name = "fashion_mnist"  # A TFDS name, or "image_folder".
    c.dataset.source = "auto"  # auto | tfds | debian | image_folder
    c.dataset.data_dir = ""  # TFDS data_dir, or the class-folder root for image_folder.
    c.dataset.download = False  # Let TFDS download and prepare (needs network).
    # Split names: TFDS splits, or for image folders the folders ROOT/<split>/<class>/.
    c.dataset.train_split = "train"
    c.dataset.test_split = "test"  # "" when the dataset has no test split.
    # A split to validate on (e.g. "validation", "val"); "" holds validation_size out of train.
    c.dataset.validation_split = ""
    # Held out from train (unless validation_split is set); an int count or a fraction < 1.
    # 0 trains on all of train: no validation, so no best checkpoint and no early stopping.
    c.dataset.validation_size = 5000.0  # Float, so that a fraction may be given too.
    c.dataset.test_size = 0.0  # Held out from train as the test split (when test_split is "").
    c.dataset.split_seed = 0  # Fixes which train examples are held out.
    c.dataset.train_size = 0  # Train on a random subset of this many examples; 0 uses all.
    c.dataset.class_fractions = ()  # Per class: keep this fraction of its train examples.
    # On the host: shorter side resized to this, centre square kept; 0 keeps the stored size.
    c.dataset.image_size = 0
    c.dataset.strict = False  # image_folder: raise on unreadable files instead of skipping them.
    # image_folder / tfds: leave images encoded on disk (files, array_records) and decode each batch
    # when needed (parallel, prefetched) instead of all up front; for datasets too big for memory.
    c.dataset.streaming = False
    c.dataset.decode_threads = 0  # Decoding threads when streaming; 0: one per CPU core.
    # Image channels: 1 (grayscale) or 3 (RGB); 0 takes them from the data (image folders:
    # RGB if any sampled file is in colour). Image folders and streamed TFDS convert to it.
    c.dataset.channels = 0
    c.dataset.mean = (0.5,)  # Per-channel normalisation, applied on device, in [0, 1] units.
    c.dataset.std = (0.5,)

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.stem = "small"  # small (3x3 conv, 28-32 px) | imagenet (7x7/2 conv + max-pool)
    c.model.width = 64  # Channels of the first stage.
    # Compute dtype (parameters stay float32): float32, bfloat16, float16, or auto: bfloat16 on
    # GPUs, TPUs, CPUs with AMX and AMD CPUs with AVX-512-BF16, float32 on other CPUs
    # (imgcls_jax/runtime/precision.py).
    c.model.dtype = "float32"
    c.model.bn_momentum = 0.9
    # Stochastic depth (ResNets, ViT): the residual-branch drop rate rises linearly over the
    # blocks from 0 to this.
    c.model.drop_path_rate = 0.0
    # ViT (vit_ti | vit_s | vit_b | vit_l | vit_h | vit_g): patch side, cls | gap pooling, learn | sincos2d
    # position embeddings, dropout after attention, MLP and embeddings.
    c.model.patch_size = 16
    c.model.pool = "cls"
    c.model.posemb = "learn"
    c.model.dropout = 0.0
    # Convolution and batch-norm kernels: auto (oneDNN on a one-device CPU run) | xla | onednn
    c.model.kernels = "auto"

    c.augment = ml_collections.ConfigDict()
    c.augment.train = ""  # Ops applied per example on device, e.g. "random_crop(4)|flip_lr".
    c.augment.eval = ""  # Deterministic eval ops on device, e.g. "resize(256)|center_crop(224)".
    c.augment.eval_flip_tta = False  # Average the logits of each eval image and its mirror.
    c.augment.grid_images = 64  # Images of the first batch shown in TensorBoard and a PNG.
    c.augment.mixup_alpha = 0.0  # > 0 enables mixup with Beta(alpha, alpha).
    c.augment.cutmix_alpha = 0.0  # > 0 enables CutMix with Beta(alpha, alpha).
    c.augment.switch_prob = 0.5  # With both on: probability of CutMix rather than mixup.
    c.augment.mix_prob = 1.0  # Probability that a batch is mixed at all.

    c.input = ml_collections.ConfigDict()
    c.input.batch_size = 128  # Global, across all devices and hosts.
    c.input.eval_batch_size = 500  # Global.
    c.input.sampling = "uniform"  # uniform (shuffled epochs) | class_balanced (with replacement)
    # Keep the train split on the devices and gather batches there: auto (if it fits) | on | off
    c.input.device_resident = "auto"
    c.input.prefetch = 2  # Host-fed batches prepared ahead (per worker process, if any).
    # Processes reading host-fed batches (Grain workers, each a whole batch); -1: one per host
    # core for streamed splits (decoding), none for splits in memory; 0: a thread of the run.
    c.input.workers = -1

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = "sgd"  # sgd | adamw | lamb | lars | lion | muon | sam | schedule_free
    c.optimizer.learning_rate = 0.1
    c.optimizer.lr_base_batch_size = 0  # If > 0, lr *= batch_size / lr_base_batch_size.
    c.optimizer.momentum = 0.9
    c.optimizer.nesterov = True
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999
    c.optimizer.eps = 1e-8
    c.optimizer.trust_coefficient = 0.001  # LARS's trust ratio scale.
    c.optimizer.muon_beta = 0.95  # Muon's momentum (its other parameters: AdamW's b1, b2).
    c.optimizer.muon_rms = 0.2  # Muon's update RMS per sqrt(fan), matched to AdamW's.
    c.optimizer.sam_rho = 0.05  # SAM's neighbourhood radius (ASAM: about 0.5).
    c.optimizer.sam_adaptive = False  # ASAM: the radius scales with each weight.
    # Schedule-free AdamW: the weights are interpolated with momentum b1 between its SGD and
    # averaged sequences; the average is kept as the run's weight average (val_ema/...,
    # used by `predict`); warm up with schedule.warmup_epochs, schedule.name=constant.
    c.optimizer.schedule_free_lr_power = 2.0  # Averaging weight: learning rate ^ this.
    c.optimizer.weight_decay = 5e-4  # Skips biases and normalisation parameters.
    c.optimizer.grad_clip_norm = 0.0  # 0 disables clipping.

    c.schedule = ml_collections.ConfigDict()
    c.schedule.name = "cosine"  # cosine | step | constant
    c.schedule.warmup_epochs = 0.0
    c.schedule.step_epochs = (30, 60, 80)  # step: decay boundaries in epochs.
    c.schedule.step_factor = 0.1
    c.schedule.end_factor = 0.0  # cosine: final lr as a fraction of the peak.

    c.loss = ml_collections.ConfigDict()
    c.loss.label_smoothing = 0.0
    c.loss.class_weighting = "none"  # none | balanced (n / (K * n_c) per class)

    # Knowledge distillation (Hinton et al. 2015): a frozen teacher classifies each student
    # batch as augmented (mixup/cutmix included), in its own dtype and preprocessing, inside
    # the train step; loss = (1 - weight) x cross-entropy + weight x T^2 x KL(teacher || student)
    # at temperature T. Checkpoints hold only the student.
    c.distill = ml_collections.ConfigDict()
    c.distill.teacher = ""  # A training workdir or a converted checkpoint; "" disables.
    c.distill.teacher_step = "best"  # A workdir's step: best | latest | a number.
    c.distill.teacher_weights = "auto"  # auto | ema | trained (as `predict --weights`).
    c.distill.weight = 0.9  # Of the distillation term (0.9 and T = 4 as in CRD's KD baseline).
    c.distill.temperature = 4.0

    c.transfer = ml_collections.ConfigDict()
    c.transfer.checkpoint = (
        ""  # A converted checkpoint (python -m imgcls_jax.convert) to start from.
    )
    c.transfer.pretrained_preprocessing = True  # Normalise with the checkpoint's mean/std.
    c.transfer.freeze = ""  # Regex over parameter paths (e.g. "^(stem|BasicBlock_[0-3])"): frozen.
    c.transfer.linear_probe = False  # Freeze everything but the classifier (`head`).
    c.transfer.layer_decay = 1.0  # Layer-wise lr decay: lr x decay^(layers above); 1 disables.

    c.training = ml_collections.ConfigDict()
    c.training.num_epochs = 10.0
    c.training.num_train_steps = 0  # If > 0, overrides num_epochs.
    c.training.log_every_steps = 100
    c.training.eval_every_epochs = 1.0
    c.training.checkpoint_every_steps = 0  # 0: checkpoint at every evaluation only.
    c.training.keep_checkpoints = 3
    # > 0: every step that is a multiple of this is also kept for good (Orbax's keep_period),
    # so that a run that diverged later can go back to one (training.restore_step).
    c.training.keep_checkpoint_period = 0
    # Which saved step a relaunch continues from: -1 the newest intact one; N > 0 step N; 0
    # the start. Steps after it are moved to workdir/set_aside_checkpoints (kept). Applied
    # once: a later relaunch of the same command continues from its newest step.
    c.training.restore_step = -1
    # Split each batch into this many micro-batches inside the step and average their
    # gradients: the memory of a smaller batch, the update of the whole one. Batch norm
    # normalises each micro-batch by itself (see steps._loss_and_grads).
    c.training.grad_accum_steps = 1
    # Train steps per call from the host (a lax.scan over that many batches), so that small,
    # fast steps do not wait on Python; logs, evaluations, checkpoints and preemption checks
    # fall between calls (a call stops short at each). 0: on GPUs and TPUs the largest
    # divisor of 8 that divides those periods and the run's length, on CPUs 1.
    c.training.steps_per_dispatch = 0
    # An exponential moving average of the weights (and batch statistics), kept in the train
    # state and checkpoints; 0 disables it. Evaluations then also report the average as
    # val_ema/..., test_ema/... (select the best step by it with early_stopping_metric
    # "val_ema/accuracy"); `predict` uses it. ema_warmup: timm's warm-up of the decay.
    c.training.ema_decay = 0.0  # (Not with optimizer.name=schedule_free, which keeps its own.)
    c.training.ema_warmup = True
    # Progressive resizing: "EPOCH:SIZE,..." trains from EPOCH on at SIZE x SIZE (the augmented
    # images resized on device; each size one compiled program); e.g. "0:20,6:24,12:28".
    # Evaluation stays at the evaluation pipeline's size. "" trains at one size.
    c.training.progressive_sizes = ""
    c.training.early_stopping_patience = 0  # Evaluations without improvement; 0 disables.
    c.training.early_stopping_metric = "val/accuracy"  # Higher is better.
    # A non-finite loss, gradient or new state: "stop" the run naming the step, or "skip" that
    # update (the run still stops when every update between two logs was skipped).
    # "rewind": go back to the weights of the newest saved step whose loss was sane and
    # continue with step D + rewind_skip_steps + 1 after a failure at step D (the steps and
    # batches in between are skipped), at most max_rewinds times (counted in the
    # checkpoints); then stop as "stop" does.
    c.training.on_nonfinite = "stop"
    c.training.rewind_skip_steps = 100
    c.training.max_rewinds = 3
    # Resume even when the dataset differs from the one the checkpoints were trained on (its
    # fingerprint is in every checkpoint); the validation split may then hold former train
    # examples.
    c.training.allow_dataset_change = False
    # Resume with another global batch (config.input.batch_size) than the checkpoints were
    # trained with: the batches then come in another order and the schedule's epochs are
    # counted in other steps. Any process or device count resumes without it.
    c.training.allow_batch_change = False
    # "START:STOP" traces train steps START..STOP-1 with jax.profiler into workdir/tensorboard
    # (TensorBoard's profile tab); "" traces nothing.
    c.training.profile_steps = ""

    # Evaluations beyond the validation and test splits, during training (every N epochs and at
    # the end; 0: never) and by `imgcls-evaluate` (imgcls_jax/evaluation).
    c.evaluation = ml_collections.ConfigDict()
    # Corruptions of the test split (ImageNet-C's image ops, CIFAR-10-C's severities, on
    # device): "all" or names, e.g. "gaussian_noise,contrast"; "" none.
    c.evaluation.corruptions = ""
    c.evaluation.corruption_severities = (1, 2, 3, 4, 5)
    c.evaluation.corruption_examples = 0  # The first N test examples; 0: all of them.
    c.evaluation.corruptions_every_epochs = 0.0
    # Few-shot linear probe on frozen pre-logit features: ridge regression fitted on k train
    # examples per class, scored on the test split; mean and std over the seeds.
    c.evaluation.few_shot_shots = (1, 5, 10, 25)
    c.evaluation.few_shot_seeds = 3
    c.evaluation.few_shot_train_examples = 5000  # Features of a fixed draw of train; 0: all.
    c.evaluation.few_shot_l2 = 1024.0  # Ridge penalty on standardised features (big_vision's).
    c.evaluation.few_shot_every_epochs = 0.0

    c.mesh = ml_collections.ConfigDict()
    # Devices in each group that splits the train state (parameters, optimizer state, EMA)
    # between them (FSDP); 1: every device holds all of it (data parallelism). Must divide
    # the device count.
    c.mesh.fsdp = 1
    c.mesh.fsdp_min_bytes = 1 << 20  # Smaller arrays stay replicated.
    return c


def lock(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Locks a config so a misspelled key raises instead of adding a field."""
    config.lock()
    return config


def preset_config(
    presets: Mapping[str, Any], name: str | None, default: str, config_file: str
) -> ml_collections.ConfigDict:
    """The locked base config with preset `name` (or `default`) of `config_file` applied."""
    name = name or default
    if name not in presets:
        raise ValueError(f"Unknown preset {name!r} in {config_file}.{closest(name, presets)}")
    config = base_config()
    presets[name](config)
    return lock(config)


def flat_items(config: ml_collections.ConfigDict, prefix: str = "") -> dict[str, Any]:
    """Every field of `config` by dotted key, e.g. ``{"model.name": "resnet20", ...}``."""
    items = {}
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            items.update(flat_items(value, f"{prefix}{key}."))
        else:
            items[f"{prefix}{key}"] = value
    return items


def overrides_between(
    base: ml_collections.ConfigDict, target: ml_collections.ConfigDict
) -> dict[str, Any]:
    """The dotted-key overrides that make `base` into `target` (e.g. another preset)."""
    base_items = flat_items(base)
    return {key: v for key, v in flat_items(target).items() if base_items.get(key) != v}


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """Returns a copy of `config` with dotted-key overrides applied; unknown keys raise."""
    config = ml_collections.ConfigDict(config.to_dict())  # Deep copy, unlocked.
    valid = flat_items(config)
    for dotted, value in overrides.items():
        if dotted not in valid:
            raise KeyError(f"Unknown config key {dotted!r}.{closest(dotted, valid)}")
        *parents, leaf = dotted.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return lock(config)


# Inclusive (low, high) bounds of numeric fields; None: unbounded. An open bound is written
# as the nearest value the field may take (e.g. 1 for a positive count).
NUMERIC_RANGES: dict[str, tuple[float | None, float | None]] = {
    "seed": (0, None),
    "dataset.validation_size": (0, None),
    "dataset.test_size": (0, None),
    "dataset.train_size": (0, None),
    "dataset.image_size": (0, None),
    "dataset.decode_threads": (0, None),
    "model.width": (1, None),
    "model.bn_momentum": (0, 1),
    "model.drop_path_rate": (0, 0.99),
    "model.dropout": (0, 0.99),
    "model.patch_size": (1, None),
    "training.grad_accum_steps": (1, None),
    "mesh.fsdp": (1, None),
    "mesh.fsdp_min_bytes": (0, None),
    "training.steps_per_dispatch": (0, None),
    "training.ema_decay": (0, 0.999999),
    "augment.grid_images": (0, None),
    "augment.mixup_alpha": (0, None),
    "augment.cutmix_alpha": (0, None),
    "augment.switch_prob": (0, 1),
    "augment.mix_prob": (0, 1),
    "input.batch_size": (1, None),
    "input.eval_batch_size": (1, None),
    "input.prefetch": (1, None),
    "input.workers": (-1, None),
    "optimizer.learning_rate": (0, None),
    "optimizer.lr_base_batch_size": (0, None),
    "optimizer.momentum": (0, 1),
    "optimizer.b1": (0, 1),
    "optimizer.b2": (0, 1),
    "optimizer.muon_beta": (0, 1),
    "optimizer.muon_rms": (0, None),
    "optimizer.sam_rho": (0, None),
    "optimizer.eps": (0, None),
    "optimizer.schedule_free_lr_power": (0, None),
    "optimizer.weight_decay": (0, None),
    "optimizer.grad_clip_norm": (0, None),
    "schedule.warmup_epochs": (0, None),
    "schedule.step_factor": (0, None),
    "schedule.end_factor": (0, 1),
    "training.num_epochs": (0, None),
    "training.num_train_steps": (0, None),
    "training.log_every_steps": (1, None),
    "training.eval_every_epochs": (1e-9, None),
    "training.checkpoint_every_steps": (0, None),
    "training.keep_checkpoints": (1, None),
    "training.keep_checkpoint_period": (0, None),
    "training.restore_step": (-1, None),
    "training.rewind_skip_steps": (0, None),
    "training.max_rewinds": (0, None),
    "training.early_stopping_patience": (0, None),
    "distill.weight": (0, 1),
    "distill.temperature": (1e-3, None),
    "evaluation.corruptions_every_epochs": (0, None),
    "evaluation.few_shot_seeds": (1, None),
    "evaluation.corruption_examples": (0, None),
    "evaluation.few_shot_train_examples": (0, None),
    "evaluation.few_shot_l2": (1e-9, None),
    "evaluation.few_shot_every_epochs": (0, None),
}


def _check_ranges(config: ml_collections.ConfigDict) -> None:
    for key, (low, high) in NUMERIC_RANGES.items():
        section, _, field = key.rpartition(".")
        value = (config[section] if section else config)[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config.{key}={value!r} must be a number.")
        if (low is not None and value < low) or (high is not None and value > high):
            bounds = f"[{low}, {'inf' if high is None else high}]"
            raise ValueError(f"config.{key}={value!r} is out of range: it must lie in {bounds}.")
    for fraction in config.dataset.class_fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"config.dataset.class_fractions holds {fraction!r}; each must lie "
                             "in (0, 1].")  # fmt: skip


def check_rules(config: ml_collections.ConfigDict) -> None:
    """Checks the config's own rules: value ranges, plain choices and rules across fields.
    Names of registered parts (models, optimizers, ...) are checked by building them
    (`imgcls_jax.training.config_check.validate`)."""
    check_choice("input.sampling", config.input.sampling, ("uniform", "class_balanced"))
    check_choice("training.on_nonfinite", config.training.on_nonfinite, ("stop", "skip", "rewind"))
    check_choice("loss.class_weighting", config.loss.class_weighting, ("none", "balanced"))
    if len(config.dataset.mean) != len(config.dataset.std):
        raise ValueError("config.dataset.mean and config.dataset.std must have the same length.")
    if config.dataset.channels not in (0, 1, 3):
        raise ValueError(f"config.dataset.channels={config.dataset.channels!r} must be 1 "
                         "(grayscale), 3 (RGB) or 0 (from the data).")  # fmt: skip
    if min(config.dataset.std, default=1) <= 0:
        raise ValueError(f"config.dataset.std={tuple(config.dataset.std)} must be positive.")
    _check_ranges(config)
    if config.training.num_train_steps <= 0 and config.training.num_epochs <= 0:
        raise ValueError("Set config.training.num_epochs or config.training.num_train_steps > 0.")
    if config.transfer.freeze:
        try:
            re.compile(config.transfer.freeze)
        except re.error as e:
            raise ValueError(f"config.transfer.freeze is not a valid regex: {e}.") from e
    if not 0.0 < config.transfer.layer_decay <= 1.0:
        raise ValueError("config.transfer.layer_decay must lie in (0, 1]; 1 disables it.")
    if not 0.0 <= config.loss.label_smoothing < 1.0:
        raise ValueError("config.loss.label_smoothing must lie in [0, 1).")
    if config.dataset.test_size and config.dataset.test_split:
        raise ValueError(
            f"config.dataset.test_size={config.dataset.test_size} holds a test split out of "
            f"train, but config.dataset.test_split={config.dataset.test_split!r} names one: "
            "set one of them ('' or 0)."
        )
    if config.dataset.streaming and config.input.device_resident == "on":
        raise ValueError(
            "config.input.device_resident='on' loads the whole train split onto the devices, "
            "which config.dataset.streaming=True leaves on disk: set one of them ('auto' or "
            "False)."
        )
    schedule_free = config.optimizer.name == "schedule_free"
    if schedule_free and config.training.ema_decay:
        raise ValueError("optimizer.name=schedule_free keeps its own weight average (reported "
                         "as val_ema/...): set config.training.ema_decay=0.")  # fmt: skip
    metric = config.training.early_stopping_metric
    average = config.training.ema_decay or schedule_free
    prefixes = ("val/", "val_ema/") if average else ("val/",)
    if not metric.startswith(prefixes):
        raise ValueError(f"config.training.early_stopping_metric={metric!r} must be a validation "
                         f"metric: {' or '.join(p + 'NAME' for p in prefixes)}, e.g. "
                         "'val/accuracy' ('val_ema/...' needs training.ema_decay > 0 or "
                         "optimizer.name=schedule_free).")  # fmt: skip
    progressive_sizes(config.training.progressive_sizes)
    if any(not isinstance(s, int) or not 1 <= s <= 5
           for s in config.evaluation.corruption_severities):  # fmt: skip
        raise ValueError(f"config.evaluation.corruption_severities="
                         f"{tuple(config.evaluation.corruption_severities)} must hold severities "
                         "1 to 5.")  # fmt: skip
    if any(not isinstance(k, int) or k < 1 for k in config.evaluation.few_shot_shots):
        raise ValueError(f"config.evaluation.few_shot_shots={tuple(config.evaluation.few_shot_shots)}"
                         " must hold positive counts of examples per class.")  # fmt: skip
    if config.dataset.validation_size == 0 and not config.dataset.validation_split:
        if config.training.early_stopping_patience:
            raise ValueError(
                "config.training.early_stopping_patience needs a validation split: set "
                "config.dataset.validation_size > 0 or the patience to 0."
            )
        if not config.dataset.test_split and not config.dataset.test_size:
            raise ValueError(
                "config.dataset.validation_size=0 with no config.dataset.test_split leaves "
                "nothing to evaluate: hold out a validation split or name a test split."
            )


def progressive_sizes(spec: str) -> list[tuple[float, int]]:
    """config.training.progressive_sizes parsed: [(from epoch, image side), ...] by epoch,
    starting at epoch 0; [] for ""."""
    if not spec.strip():
        return []
    sizes = []
    for part in spec.split(","):
        epoch, _, size = part.partition(":")
        try:
            sizes.append((float(epoch), int(size)))
        except ValueError:
            raise ValueError(f"config.training.progressive_sizes={spec!r}: {part!r} is not "
                             "EPOCH:SIZE; write e.g. '0:20,6:24,12:28'.") from None  # fmt: skip
    epochs = [e for e, _ in sizes]
    if epochs[0] != 0 or epochs != sorted(set(epochs)) or min(s for _, s in sizes) < 1:
        raise ValueError(f"config.training.progressive_sizes={spec!r} must start at epoch 0, "
                         "with increasing epochs and positive sizes, e.g. '0:20,6:24,12:28'.")  # fmt: skip
    return sizes


def flags_parser(command: str) -> Callable[[list[str]], list[str]]:
    """absl's flag parsing for a command with a --config flag (`app.run(main, flags_parser=)`):
    a misspelled --config.KEY override, a value of the wrong type, an unknown :PRESET or a
    missing config file exits with one line that starts with `command`, not a traceback."""
    from absl import flags
    from ml_collections import config_flags

    def parse(argv: list[str]) -> list[str]:
        try:
            remaining = flags.FLAGS(argv)
        except (AttributeError, KeyError) as e:  # Raised by ml_collections for unknown keys.
            message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
            sys.exit(f"{command}: bad config override: {message}")
        except flags.Error as e:  # A value that does not parse, e.g. --config.seed=abc.
            lines = [line for line in str(e).splitlines() if line.strip()]
            # An error raised inside the config file (e.g. an unknown :PRESET) comes with its
            # traceback as text; its last line says what is wrong.
            sys.exit(f"{command}: {lines[-1] if 'Traceback' in str(e) else lines[0]}")
        config_file = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
        if not os.path.isfile(config_file):
            sys.exit(f"{command}: --config: no such file {config_file!r} (e.g. configs/resnet.py).")
        return remaining

    return parse


def show_flags_in_help(module_name: str) -> None:
    """Makes `--help` list the flags defined in `module_name` when the program's main module
    is another (`python launch.py`, an installed console script): absl's --help shows the
    main module's key flags only."""
    from absl import flags

    main = sys.argv[0]
    for flag in flags.FLAGS.get_flags_for_module(module_name):
        flags.FLAGS.register_key_flag_for_module(main, flag)
