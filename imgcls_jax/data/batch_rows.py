"""Which examples make each batch, and this process's rows of them as host arrays.

Numpy only: Grain's worker processes unpickle these and so import this module, not JAX.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from imgcls_jax.data import Split


class TrainOrder:
    """Global batch indices as a pure function of (seed, step): epoch-wise reshuffles.

    Each epoch draws a fresh permutation from (seed, epoch) and drops the remainder, so a
    run resumed at any step sees exactly the batches the uninterrupted run would.
    """

    def __init__(self, num_examples: int, batch_size: int, seed: int):
        if batch_size > num_examples:
            raise ValueError(f"Batch size {batch_size} exceeds the {num_examples} train examples.")
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = num_examples // batch_size
        self._cached_epoch = -1
        self._permutation = np.empty(0, np.int64)

    def indices(self, step: int) -> np.ndarray:
        epoch, index = divmod(step, self.steps_per_epoch)
        if epoch != self._cached_epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._permutation = rng.permutation(self.num_examples)
            self._cached_epoch = epoch
        return self._permutation[index * self.batch_size : (index + 1) * self.batch_size]


class LocalTrainRows:
    """Train step -> this process's `rows` of its global batch (a streamed split decodes them
    here), for Grain to map over steps, in worker processes or not.

    In the order's random order, not sorted: a batch of class-ordered data (image folders)
    is not ordered by class. Sliced from the global batch, so each row (and its augmentation
    key) is the same for every number of processes."""

    def __init__(self, split: Split, order, rows: slice):
        self.split, self.order, self.rows = split, order, rows

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        local = self.order.indices(step)[self.rows]
        return {"image": np.asarray(self.split.images[local]), "label": self.split.labels[local]}


class LocalEvalRows:
    """Start of an evaluation batch -> this process's `rows` of it, padded past the split's
    end with example 0 and `mask` marking the real rows."""

    def __init__(self, split: Split, batch_size: int, rows: slice):
        self.split, self.batch_size, self.rows = split, batch_size, rows

    def __call__(self, start: int) -> dict[str, np.ndarray]:
        index = np.arange(start, start + self.batch_size)[self.rows]
        mask = index < len(self.split)
        index = np.where(mask, index, 0)
        images = np.asarray(self.split.images[index])
        return {"image": images, "label": self.split.labels[index], "mask": mask}
