"""A trained model read back with everything that runs it: the model, its variables and its
description (model config, class names, input size, evaluation preprocessing), from a
training workdir or a converted checkpoint. Prediction, evaluation and distillation
teachers all load models this way."""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from imgcls_jax import augment, checkpoint, convert, models
from imgcls_jax.checkpoint.model_description import MODEL_FILE
from imgcls_jax.training import steps

CONVERTED_FILE = "metadata.json"  # In a converted checkpoint (imgcls_jax.convert).
CROP_FRACTION = 0.875  # Converted ImageNet weights: resize to size / 0.875, centre-crop size.
STEPS = ("best", "latest")
WEIGHTS = ("auto", "ema", "trained")  # auto: the average when the run kept one.


@dataclasses.dataclass
class TrainedModel:
    """A model with its variables; `description` as `checkpoint.model_description` writes it
    (a converted checkpoint gets one in the same form); `source` says where it came from."""

    model: nn.Module
    variables: dict[str, Any]
    description: dict[str, Any]
    source: str
    step: int | None = None  # A workdir's saved step; None for a converted checkpoint.

    @property
    def class_names(self) -> list[str]:
        return list(self.description["class_names"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The images it takes (before its evaluation pipeline): height, width, channels."""
        size = self.description["image_size"]
        return (size, size, self.description["channels"])


def logits_fn(
    model: nn.Module,
    description: dict[str, Any],
    eval_pipeline: str | None = None,
    flip_tta: bool | None = None,
):
    """(variables, [0, 255] images) -> logits of the model `description` describes: its
    evaluation pipeline (or `eval_pipeline`), flip test-time augmentation (or `flip_tta`)
    and normalisation, as in its run's evaluation (`steps.eval_logits`)."""
    pipeline = description["eval"] if eval_pipeline is None else eval_pipeline
    flip = description["eval_flip_tta"] if flip_tta is None else flip_tta
    return functools.partial(steps.eval_logits, model=model, flip_tta=flip,
                             preprocess_fn=augment.build_eval_fn(pipeline),
                             mean=tuple(description["mean"]), std=tuple(description["std"]))  # fmt: skip


def features_fn(model: nn.Module, description: dict[str, Any], eval_pipeline: str | None = None):
    """(variables, [0, 255] images) -> pre-logit features, preprocessed as `logits_fn`."""
    pipeline = description["eval"] if eval_pipeline is None else eval_pipeline
    return functools.partial(steps.eval_features, model=model,
                             preprocess_fn=augment.build_eval_fn(pipeline),
                             mean=tuple(description["mean"]), std=tuple(description["std"]))  # fmt: skip


def build_model(fields: dict[str, Any], num_classes: int, devices: list | None = None) -> nn.Module:
    """The model `fields` (a run's model config) describe, for `devices` (default: this
    process's first device), with dtype and kernels resolved for them."""
    return models.build_for_devices(fields, num_classes, devices or jax.local_devices()[:1])[0]


def is_loadable(path: str) -> bool:
    """Whether `path` is a training workdir or a converted checkpoint."""
    return any(os.path.exists(os.path.join(path, f)) for f in (MODEL_FILE, CONVERTED_FILE))


def load(
    path: str, step: str = "best", weights: str = "auto", devices: list | None = None
) -> TrainedModel:
    """The model of a training workdir (`load_workdir`) or a converted checkpoint
    (`load_converted`)."""
    if os.path.exists(os.path.join(path, MODEL_FILE)):
        return load_workdir(path, step, weights, devices)
    if os.path.exists(os.path.join(path, CONVERTED_FILE)):
        return load_converted(path, devices)
    raise ValueError(f"{path} holds neither {MODEL_FILE} (a workdir of launch.py) nor "
                     f"{CONVERTED_FILE} (a checkpoint of imgcls_jax.convert).")  # fmt: skip


def load_workdir(
    workdir: str, step: str = "best", weights: str = "auto", devices: list | None = None
) -> TrainedModel:
    """The model trained in `workdir` at `step`: "best" (by validation; the latest when the
    run has no validation), "latest", or a step number; `weights` "ema" (the average, "auto"
    when the run kept one) or "trained". Its variables are replicated over `devices`
    (default: this process's first device)."""
    if not os.path.exists(os.path.join(workdir, MODEL_FILE)):
        raise ValueError(f"{workdir} is not a workdir of launch.py (it has no {MODEL_FILE}).")
    with open(os.path.join(workdir, MODEL_FILE), encoding="utf-8") as f:
        description = json.load(f)
    if weights not in WEIGHTS:
        raise ValueError(f"weights={weights!r} must be one of {', '.join(WEIGHTS)}.")
    if weights == "ema" and not description.get("ema"):
        raise ValueError(f"{workdir} kept no weight average (training.ema_decay was 0); "
                         "use the trained weights.")  # fmt: skip
    use_ema = weights != "trained" and description.get("ema", False)
    chosen = choose_step(workdir, step)
    devices = devices or jax.local_devices()[:1]
    model = build_model(description["model"], len(description["class_names"]), devices)
    stored = (description["image_size"], description["image_size"], description["channels"])
    shape = (1, *augment.eval_output_shape(description["eval"], stored))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), train=False))
    mesh = jax.sharding.Mesh(devices, ("devices",))
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        {"params": shapes["params"], "batch_stats": shapes.get("batch_stats", {})},
    )  # A ViT has no batch statistics: {}.
    if use_ema:
        variables = checkpoint.restore_variables(workdir, chosen, {"ema": abstract})["ema"]
    else:
        variables = checkpoint.restore_variables(workdir, chosen, abstract)
    source = f"{workdir} step {chosen} ({step}, {'average' if use_ema else 'trained'} weights)"
    return TrainedModel(model, variables, description, source, chosen)


def load_converted(directory: str, devices: list | None = None) -> TrainedModel:
    """A checkpoint of imgcls_jax.convert, preprocessed as in ImageNet evaluation: shorter
    side to input_size / 0.875, centre crop of input_size."""
    variables, metadata = convert.load_pretrained(directory)
    size = metadata["input_size"]
    description = {
        "class_names": metadata["class_names"] or [str(i) for i in range(metadata["num_classes"])],
        "image_size": round(size / CROP_FRACTION),
        "channels": variables["params"]["stem_conv"]["kernel"].shape[2],
        "eval": f"center_crop({size})",
        "eval_flip_tta": False,
        "mean": metadata["mean"],
        "std": metadata["std"],
    }
    description["model"] = {
        "name": metadata["architecture"], "width": metadata["width"],
        "stem": metadata["stem"], "dtype": "float32", "kernels": "auto",
        **{k: metadata[k] for k in ("patch_size", "pool", "posemb") if k in metadata},
    }  # fmt: skip
    devices = devices or jax.local_devices()[:1]
    model = build_model(description["model"], len(description["class_names"]), devices)
    mesh = jax.sharding.Mesh(devices, ("devices",))
    variables = jax.device_put(
        variables, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    )
    return TrainedModel(model, variables, description, directory)


def choose_step(workdir: str, step: str) -> int:
    """The saved step `step` ("best", "latest" or a number) names in `workdir`."""
    saved = checkpoint.saved_steps(workdir)
    if not saved:
        raise ValueError(f"{workdir} has no checkpoint yet; train first (launch.py).")
    if step.isdigit():
        if int(step) not in saved:
            raise ValueError(f"Step {step} is not saved in {workdir}; saved: {saved}.")
        return int(step)
    if step not in STEPS:
        raise ValueError(f"step={step!r} must be 'best', 'latest' or a saved step {saved}.")
    if step == "best":
        for newest in reversed(saved):  # The newest step whose progress record is intact.
            try:
                best = checkpoint.read_progress(workdir, newest).get("best_step")
                break
            except checkpoint.CheckpointRestoreError as e:
                logging.error("%s", e)
        else:
            raise ValueError(f"No intact progress record in {workdir}; use step 'latest'.")
        if best in saved:
            return best
        logging.info("%s has no best step (no validation split); using the latest.", workdir)
    return saved[-1]
