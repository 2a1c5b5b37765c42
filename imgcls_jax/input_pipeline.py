"""Host-side batching: a deterministic order per (seed, step), eval padding, prefetch to device."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Iterator

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
    # In the order's random order, not sorted: a batch of class-ordered data (image folders)
    # is not ordered by class. Sliced from the global batch, so each row (and its
    # augmentation key) is the same for every number of processes.
    local = order.indices(step)[sharding.process_slice(order.batch_size)]
    images = np.asarray(split.images[local])  # Decodes here when the split is streamed.
    return sharding.to_global({"image": images, "label": split.labels[local]}, mesh)


def train_batches(
    split: Split, order: TrainOrder, start_step: int, mesh: Mesh, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Global train batches from `start_step` on, gathered and put on device in a thread."""
    steps = itertools.count(start_step)
    return _prefetch((train_batch(split, order, step, mesh) for step in steps), prefetch)


def eval_batches(
    split: Split, batch_size: int, mesh: Mesh, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Every example exactly once, prepared in a thread; the last batch is padded and `mask`
    marks real rows."""
    return _prefetch(_eval_batches(split, batch_size, mesh), prefetch)


def _eval_batches(split: Split, batch_size: int, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
    rows = sharding.process_slice(batch_size)
    for start in range(0, len(split), batch_size):
        index = np.arange(start, start + batch_size)[rows]
        mask = index < len(split)
        index = np.where(mask, index, 0)
        images = np.asarray(split.images[index])  # Decodes here when the split is streamed.
        yield sharding.to_global(
            {"image": images, "label": split.labels[index], "mask": mask}, mesh
        )


_END = object()  # Marks the end of a finite iterator in the prefetch queue.


def _prefetch(items: Iterator[dict], depth: int) -> Iterator[dict]:
    """Runs `items` up to `depth` ahead of the consumer in a daemon thread, which closing the
    iterator stops and joins (a thread still decoding or copying to the device when the
    interpreter exits aborts the process)."""
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item) -> None:
        while not stop.is_set():
            try:
                results.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def worker() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                put(item)
        except BaseException as e:  # Re-raised in the consumer, with its traceback.
            put(e)
            return
        put(_END)

    thread = threading.Thread(target=worker, name="prefetch", daemon=True)
    thread.start()
    try:
        while (item := results.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()
