"""Class imbalance: reduced-class training sets, class-weighted loss, class-balanced sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from imgcls_jax.data import Split


def reduce_classes(split: Split, fractions: Sequence[float], seed: int) -> Split:
    """Keeps a random `fractions[c]` of each class c (at least one example of a kept class)."""
    num_classes = int(split.labels.max()) + 1 if len(split) else 0
    if len(fractions) < num_classes:
        raise ValueError(
            f"config.dataset.class_fractions has {len(fractions)} entries but the data has "
            f"{num_classes} classes; give one fraction per class."
        )
    rng = np.random.default_rng([seed, 2])
    keep = []
    for label, fraction in enumerate(fractions):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"config.dataset.class_fractions[{label}]={fraction} is not in [0, 1]."
            )
        members = np.flatnonzero(split.labels == label)
        count = max(1, round(fraction * len(members))) if fraction > 0 and len(members) else 0
        keep.append(rng.permutation(members)[:count])
    keep = np.sort(np.concatenate(keep))
    return Split(split.images[keep], split.labels[keep])


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
