"""Host-side batching: a deterministic order per (seed, step), eval padding, reading with
Grain (worker processes for streamed images) and prefetch to device."""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterator

import grain
import jax
import numpy as np
from absl import flags
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
    return sharding.to_global(LocalTrainRows(split, order)(step), mesh)


class LocalTrainRows:
    """Train step -> this process's rows of its global batch as host arrays (a streamed split
    decodes them here), for Grain to map over steps, in worker processes or not.

    In the order's random order, not sorted: a batch of class-ordered data (image folders)
    is not ordered by class. Sliced from the global batch, so each row (and its augmentation
    key) is the same for every number of processes."""

    def __init__(self, split: Split, order: TrainOrder):
        self.split, self.order = split, order
        self.rows = sharding.process_slice(order.batch_size)  # Here, not in the workers.

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        local = self.order.indices(step)[self.rows]
        return {"image": np.asarray(self.split.images[local]), "label": self.split.labels[local]}


class LocalEvalRows:
    """Start of an evaluation batch -> this process's rows of it, padded past the split's end
    with example 0 and `mask` marking the real rows."""

    def __init__(self, split: Split, batch_size: int):
        self.split, self.batch_size = split, batch_size
        self.rows = sharding.process_slice(batch_size)

    def __call__(self, start: int) -> dict[str, np.ndarray]:
        index = np.arange(start, start + self.batch_size)[self.rows]
        mask = index < len(self.split)
        index = np.where(mask, index, 0)
        images = np.asarray(self.split.images[index])
        return {"image": images, "label": self.split.labels[index], "mask": mask}


def train_batches(
    split: Split, order: TrainOrder, start_step: int, mesh: Mesh, prefetch: int = 2,
    workers: int = 0,
) -> Iterator[dict[str, jax.Array]]:  # fmt: skip
    """Global train batches from `start_step` on (`host_train_batches` put on the devices in
    a thread)."""
    host = host_train_batches(split, order, start_step, prefetch, workers)
    return _on_devices(host, mesh, prefetch)


def host_train_batches(
    split: Split, order: TrainOrder, start_step: int, prefetch: int = 2, workers: int = 0
) -> grain.DatasetIterator:
    """This process's rows of each train batch from `start_step` on, as host arrays, read by
    Grain `prefetch` ahead in `workers` processes (0: a thread of this one)."""
    steps = grain.MapDataset.range(start_step, _NO_END)
    return _read(steps.map(LocalTrainRows(split, order)), prefetch, workers)


def eval_batches(
    split: Split, batch_size: int, mesh: Mesh, prefetch: int = 2, workers: int = 0
) -> Iterator[dict[str, jax.Array]]:
    """Every example exactly once, read as `train_batches` reads; the last batch is padded and
    `mask` marks real rows."""
    starts = grain.MapDataset.range(0, len(split), batch_size)
    return _on_devices(_read(starts.map(LocalEvalRows(split, batch_size)), prefetch, workers),
                       mesh, prefetch)  # fmt: skip


def worker_count(setting: int, split: Split) -> int:
    """`input.workers`: itself, or for -1 one per host core where the split is streamed
    (decoded batch by batch) and none where it is in memory."""
    if setting >= 0:
        return setting
    return 0 if isinstance(split.images, np.ndarray) else os.cpu_count() or 1


_NO_END = 2**62  # Train batches go on until the consumer stops.


def _read(batches: grain.MapDataset, prefetch: int, workers: int) -> grain.DatasetIterator:
    """An iterator over `batches` read `prefetch` ahead by a thread, or with `workers` > 0 by
    that many processes (each batch by one; Grain keeps their order)."""
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    dataset = batches.to_iter_dataset(read)
    if workers:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (their defaults here).
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        dataset = dataset.mp_prefetch(options)
    return iter(dataset)


def _on_devices(host: grain.DatasetIterator, mesh: Mesh, prefetch: int) -> Iterator[dict]:
    """`host`'s batches as global arrays, put on the devices `prefetch` ahead in a thread;
    closing the result also closes `host`."""

    def placed() -> Iterator[dict]:
        try:
            for batch in host:
                yield sharding.to_global(batch, mesh)
        finally:
            host.close()  # Stops Grain's threads and worker processes.

    return _prefetch(placed(), prefetch)


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
        finally:
            items.close()
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
