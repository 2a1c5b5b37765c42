"""The confusion matrix as a CLU metric, and the per-class scores derived from it."""

from __future__ import annotations

import flax
import jax.numpy as jnp
import numpy as np
from clu import metrics


@flax.struct.dataclass
class ConfusionMatrix(metrics.Metric):
    """Counts of (true class, predicted class); padded examples (mask False) are not counted."""

    matrix: jnp.ndarray

    @classmethod
    def from_model_output(
        cls, logits: jnp.ndarray, labels: jnp.ndarray, mask: jnp.ndarray | None = None, **_
    ) -> ConfusionMatrix:
        num_classes = logits.shape[-1]
        if labels.ndim == 2:  # Soft labels: the dominant class.
            labels = jnp.argmax(labels, axis=-1)
        weights = jnp.ones(labels.shape, jnp.int32) if mask is None else mask.astype(jnp.int32)
        matrix = jnp.zeros((num_classes, num_classes), jnp.int32)
        return cls(matrix.at[labels, jnp.argmax(logits, axis=-1)].add(weights))

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        return type(self)(self.matrix + other.matrix)

    def compute(self) -> jnp.ndarray:
        return self.matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each class (diagonal over row sums); NaN for classes with no examples."""
    matrix = np.asarray(matrix, np.float64)
    support = matrix.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(matrix) / support, np.nan)


def balanced_accuracy(matrix: np.ndarray) -> float:
    """Mean per-class accuracy over the classes that occur (sklearn's balanced_accuracy)."""
    return float(np.nanmean(per_class_accuracy(matrix)))
