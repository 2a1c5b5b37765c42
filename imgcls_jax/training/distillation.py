"""Knowledge distillation: the frozen teacher a run learns from (config.distill); the loss
is `steps.distillation_loss`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from imgcls_jax.training import trained_model


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A loaded teacher: `logits(images)` of float32 [0, 255] images as the student's train
    step sees them (augmented and mixed), through the teacher's own evaluation pipeline,
    normalisation and dtype, with its variables held replicated on the run's devices."""

    logits: Callable[[jnp.ndarray], jnp.ndarray]
    source: str
    model_name: str


def load_teacher(
    distill: ml_collections.ConfigDict,
    class_names: Sequence[str],
    train_images: jax.ShapeDtypeStruct,
    replicated: jax.sharding.Sharding,
) -> Teacher:
    """The teacher config.distill names, checked against the student's classes (names and
    order) and against the shape of the student's augmented train images, before training.
    Its variables are placed with `replicated` (the run's mesh)."""
    if not trained_model.is_loadable(distill.teacher):
        raise ValueError(f"config.distill.teacher={distill.teacher!r} is neither a training "
                         "workdir (with model.json) nor a converted checkpoint (with "
                         "metadata.json).")  # fmt: skip
    trained = trained_model.load(distill.teacher, distill.teacher_step, distill.teacher_weights)
    if trained.class_names != list(class_names):
        raise ValueError(
            f"The teacher {trained.source} classifies {len(trained.class_names)} classes "
            f"({_few(trained.class_names)}) but this dataset has {len(class_names)} "
            f"({_few(class_names)}): distill from a teacher trained on the same classes in "
            "the same order."
        )
    channels = trained.description["channels"]
    if channels != train_images.shape[-1]:
        raise ValueError(f"The teacher {trained.source} takes {channels}-channel images but the "
                         f"student's have {train_images.shape[-1]}; set config.dataset.channels="
                         f"{channels} or use another teacher.")  # fmt: skip
    variables = jax.device_put(jax.device_get(trained.variables), replicated)
    logits_fn = trained_model.logits_fn(trained.model, trained.description, flip_tta=False)
    teacher = Teacher(lambda images: logits_fn(variables, images), trained.source,
                      trained.description["model"]["name"])  # fmt: skip
    try:
        jax.eval_shape(teacher.logits, jax.ShapeDtypeStruct(train_images.shape, jnp.float32))
    except (ValueError, TypeError) as e:
        size = "x".join(map(str, train_images.shape[1:]))
        raise ValueError(f"The teacher {trained.source} cannot take the student's {size} train "
                         f"images (its evaluation pipeline {trained.description['eval']!r}): "
                         f"{e}") from None  # fmt: skip
    return teacher


def _few(names: Sequence[str]) -> str:
    shown = ", ".join(map(str, names[:4]))
    return shown + (", ..." if len(names) > 4 else "")
