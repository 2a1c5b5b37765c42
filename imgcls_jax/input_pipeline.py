"""Host-side batching: a deterministic order per (seed, step), eval padding, prefetch to device."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from imgcls_jax import sharding
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


def train_batch(split: Split, order: TrainOrder, step: int, mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch of train step `step`, assembled from this process's rows."""
    # Sorted: a faster gather of the same set. Sorted globally before slicing, so each row
    # (and its augmentation key) is the same for every number of processes.
    local = np.sort(order.indices(step))[sharding.process_slice(order.batch_size)]
    return sharding.to_global({"image": split.images[local], "label": split.labels[local]}, mesh)


def train_batches(
    split: Split, order: TrainOrder, start_step: int, mesh: Mesh, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Global train batches from `start_step` on, gathered and put on device in a thread."""
    return _prefetch(lambda step: train_batch(split, order, step, mesh), start_step, prefetch)


def eval_batches(split: Split, batch_size: int, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
    """Every example exactly once; the last batch is padded and `mask` marks real rows."""
    rows = sharding.process_slice(batch_size)
    for start in range(0, len(split), batch_size):
        index = np.arange(start, start + batch_size)[rows]
        mask = index < len(split)
        index = np.where(mask, index, 0)
        yield sharding.to_global(
            {"image": split.images[index], "label": split.labels[index], "mask": mask}, mesh
        )


def _prefetch(make: Callable[[int], dict], start: int, depth: int) -> Iterator[dict]:
    """Runs make(start), make(start+1), ... `depth` batches ahead in a daemon thread."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def worker() -> None:
        step = start
        while not stop.is_set():
            try:
                item = make(step)
            except BaseException as e:  # Re-raised in the consumer, with its traceback.
                results.put(e)
                return
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            step += 1

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = results.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
