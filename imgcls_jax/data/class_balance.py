"""Class imbalance: class-weighted loss and class-balanced sampling (reduced-class training
sets are `data.reduce_classes`)."""

from __future__ import annotations

import numpy as np


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """n / (K * n_c) per class c (sklearn's "balanced"): every class contributes the same total
    weight and the mean weight over the training set is 1. Absent classes get 0."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = len(labels) / (present.sum() * counts[present])
    return weights.astype(np.float32)


class BalancedOrder:
    """Class-balanced sampling as a pure function of (seed, step): each epoch draws its
    examples with replacement, with probability 1 / (K * n_c) for an example of class c, so
    every class is equally likely in every batch. An epoch has as many steps as without."""

    def __init__(self, labels: np.ndarray, batch_size: int, seed: int):
        if batch_size > len(labels):
            raise ValueError(f"Batch size {batch_size} exceeds the {len(labels)} train examples.")
        self.num_examples = len(labels)
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = len(labels) // batch_size
        counts = np.bincount(labels)
        present = counts > 0
        self._probabilities = 1.0 / (present.sum() * counts[labels])
        self._cached_epoch = -1
        self._draws = np.empty(0, np.int64)

    def indices(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._cached_epoch:
            rng = np.random.default_rng([self.seed, epoch, 3])
            size = self.steps_per_epoch * self.batch_size
            self._draws = rng.choice(self.num_examples, size, p=self._probabilities)
            self._cached_epoch = epoch
        return self._draws[index * self.batch_size : (index + 1) * self.batch_size]
