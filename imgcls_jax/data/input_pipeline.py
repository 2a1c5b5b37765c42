"""Host-fed batches: this process's rows of each batch (`data.batch_rows`) read by Grain (in
worker processes for streamed images), placed on the devices ahead of the step."""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from multiprocessing import shared_memory

import grain
import jax
import numpy as np
from absl import flags
from jax.sharding import Mesh

from imgcls_jax.data import Split
from imgcls_jax.data.batch_rows import LocalEvalRows, LocalTrainRows, TrainOrder
from imgcls_jax.runtime import sharding


def train_batch(split: Split, order: TrainOrder, step: int, mesh: Mesh) -> dict[str, jax.Array]:
    """The global batch of train step `step`, assembled from this process's rows."""
    rows = LocalTrainRows(split, order, sharding.process_slice(order.batch_size))
    return sharding.to_global(rows(step), mesh)


def train_batches(
    split: Split, order: TrainOrder, start_step: int, mesh: Mesh, prefetch: int = 2,
    workers: int = 0,
) -> Iterator[dict[str, jax.Array]]:  # fmt: skip
    """Global train batches from `start_step` on: `host_train_batches`, put on the devices
    `prefetch` ahead by a thread."""
    return _on_devices(_train_rows(split, order, start_step, prefetch, workers), mesh, prefetch)


def host_train_batches(
    split: Split, order: TrainOrder, start_step: int, prefetch: int = 2, workers: int = 0
) -> grain.DatasetIterator:
    """This process's rows of each train batch from `start_step` on, as host arrays, read by
    Grain `prefetch` ahead in `workers` processes (0: a thread of this one)."""
    return iter(_train_rows(split, order, start_step, prefetch, workers))


def _train_rows(
    split: Split, order: TrainOrder, start_step: int, prefetch: int, workers: int
) -> grain.IterDataset:
    """This process's rows of each train batch from `start_step` on, as Grain reads them."""
    steps = grain.MapDataset.range(start_step, _NO_END)
    rows = LocalTrainRows(split, order, sharding.process_slice(order.batch_size))
    return _read(steps.map(rows), prefetch, workers)


def eval_batches(
    split: Split, batch_size: int, mesh: Mesh, prefetch: int = 2, workers: int = 0
) -> Iterator[dict[str, jax.Array]]:
    """Every example exactly once, read as `train_batches` reads; the last batch is padded and
    `mask` marks real rows."""
    starts = grain.MapDataset.range(0, len(split), batch_size)
    rows = LocalEvalRows(split, batch_size, sharding.process_slice(batch_size))
    return _on_devices(_read(starts.map(rows), prefetch, workers), mesh, prefetch)


def worker_count(setting: int, split: Split) -> int:
    """`input.workers`: itself, or for -1 one per host core where the split is streamed
    (decoded batch by batch) and none where it is in memory."""
    if setting >= 0:
        return setting
    return 0 if isinstance(split.images, np.ndarray) else os.cpu_count() or 1


_NO_END = 2**62  # Train batches go on until the consumer stops.


# Reentrant: a collection started inside `close` may finalise another block in the same thread.
_SHARED_MEMORY_CLOSING = threading.RLock()


def close_shared_memory_once() -> None:
    """Makes closing a block of shared memory safe from two threads at once (this process).

    Grain's batches from worker processes live in shared memory; freeing one hands its block to
    a Grain thread to close. When the cycle collector frees a batch (one left in a reference
    cycle, e.g. in a closed iterator's buffer), it also runs the block's own finaliser, so two
    threads enter `SharedMemory.close` at once and both close its file descriptor; the second
    close can hit a file another thread has just opened (Orbax's checkpoint writer failed with
    EBADF that way). One close at a time makes the second a no-op, as `close` is meant to be."""
    close = shared_memory.SharedMemory.close
    if getattr(close, "one_at_a_time", False):
        return

    @functools.wraps(close)
    def close_one_at_a_time(memory: shared_memory.SharedMemory) -> None:
        with _SHARED_MEMORY_CLOSING:
            close(memory)

    close_one_at_a_time.one_at_a_time = True
    shared_memory.SharedMemory.close = close_one_at_a_time


def _read(batches: grain.MapDataset, prefetch: int, workers: int) -> grain.IterDataset:
    """`batches` read `prefetch` ahead by a thread, or with `workers` > 0 by that many
    processes (each batch by one; Grain keeps their order)."""
    read = grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch)
    dataset = batches.to_iter_dataset(read)
    if workers:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (their defaults here).
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        close_shared_memory_once()
        dataset = dataset.mp_prefetch(options)
    return dataset


def _on_devices(host: grain.IterDataset, mesh: Mesh, prefetch: int) -> Iterator[dict]:
    """`host`'s batches as global arrays, put on the devices `prefetch` ahead by a thread.
    Closing the result stops and joins that thread and closes the readers under it, then
    lets go of them (Grain's iterators left to the interpreter's exit report errors there)."""
    placed = host.map(lambda batch: sharding.to_global(batch, mesh))
    prefetched = grain.experimental.ThreadPrefetchIterDataset(placed, prefetch_buffer_size=prefetch)
    iterator = iter(prefetched)
    try:
        yield from iterator
    finally:
        iterator.close()
