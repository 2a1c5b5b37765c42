"""The metrics a train and an eval step report (CLU collections): loss, top-1/top-5, the
learning rate and non-finite steps in training, the confusion matrix in evaluation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
from clu import metrics

from imgcls_jax.reporting.confusion import ConfusionMatrix

NEVER = jnp.iinfo(jnp.int32).max  # first_step of a window without non-finite steps.


@flax.struct.dataclass
class NonfiniteSteps(metrics.Metric):
    """How many steps had a non-finite loss, gradient or new state (their update was not
    applied), and the first of them; computes (count, first step), the step 0 when there was
    none."""

    count: jnp.ndarray
    first_step: jnp.ndarray

    @classmethod
    def from_model_output(cls, finite: jnp.ndarray, step: jnp.ndarray, **_) -> NonfiniteSteps:
        return cls(count=(~finite).astype(jnp.int32), first_step=jnp.where(finite, NEVER, step))

    def merge(self, other: NonfiniteSteps) -> NonfiniteSteps:
        return type(self)(self.count + other.count, jnp.minimum(self.first_step, other.first_step))

    def compute(self) -> tuple[jnp.ndarray, jnp.ndarray]:
        return self.count, jnp.where(self.count > 0, self.first_step, 0)

    @classmethod
    def empty(cls) -> NonfiniteSteps:
        return cls(count=jnp.zeros((), jnp.int32), first_step=jnp.int32(NEVER))


def collection(
    num_classes: int, train: bool, smoothed: bool = False, distilled: bool = False
) -> type[metrics.Collection]:
    """CLU metrics: loss, top-1, top-5 when there are more than 5 classes; the learning rate
    and non-finite steps when training, the confusion matrix when evaluating. With `smoothed`
    (label smoothing in the train loss) also `loss_no_smoothing`, comparable with the
    validation loss; with `distilled` the distillation loss `distill_loss`."""
    fields: dict[str, Any] = {
        "loss": metrics.Average.from_output("loss"),
        "accuracy": metrics.Average.from_fun(_top_k_correct(1)),
    }
    if smoothed:
        fields["loss_no_smoothing"] = metrics.Average.from_output("loss_no_smoothing")
    if distilled:
        fields["distill_loss"] = metrics.Average.from_output("distill_loss")
    if num_classes > 5:
        fields["top5_accuracy"] = metrics.Average.from_fun(_top_k_correct(5))
    if train:
        fields["learning_rate"] = metrics.LastValue.from_fun(_unmasked("learning_rate"))
        fields["nonfinite"] = NonfiniteSteps
    else:
        fields["confusion_matrix"] = ConfusionMatrix
    return metrics.Collection.create(**fields)


def _unmasked(name: str) -> Callable[..., dict[str, Any]]:
    """The model output `name`, counted whatever the examples' mask (a per-step value)."""

    def value(**model_output) -> dict[str, Any]:
        return {"value": jnp.asarray(model_output[name]), "mask": None}

    return value


def _top_k_correct(k: int) -> Callable[..., jnp.ndarray]:
    def correct(logits: jnp.ndarray, labels: jnp.ndarray, **_) -> jnp.ndarray:
        if labels.ndim == 2:  # Soft labels (mixup/cutmix): score against the dominant class.
            labels = jnp.argmax(labels, axis=-1)
        top_k = jax.lax.top_k(logits, k)[1]
        return jnp.any(top_k == labels[:, None], axis=-1).astype(jnp.float32)

    return correct


def empty_eval_metrics(metrics_cls: type[metrics.Collection], num_classes: int) -> Any:
    """`metrics_cls` (from `collection(..., train=False)`) over no example: zeros in
    the structure of one batch's metrics, which merging leaves unchanged (its metrics are
    sums of totals, counts and confusion counts)."""
    shapes = jax.eval_shape(
        lambda: metrics_cls.single_from_model_output(
            loss=jnp.zeros(1), logits=jnp.zeros((1, num_classes)),
            labels=jnp.zeros(1, jnp.int32), mask=jnp.ones(1, bool),
        )
    )  # fmt: skip
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
