"""Device-resident training data: the train split is placed on every device once; each step's
batch is then gathered on device, so the host does no per-step work."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from imgcls_jax.data import Split
from imgcls_jax.runtime import sharding

MODES = ("auto", "on", "off")
AUTO_MAX_FRACTION = 0.25  # "auto": the split may take this much of one device's memory...
AUTO_MAX_BYTES_WITHOUT_STATS = 1 << 30  # ...or, where devices report no memory (CPU), 1 GiB.


def fits(split: Split, device: jax.Device) -> bool:
    """Whether "auto" places `split` on the devices: never when it is streamed from disk."""
    if not isinstance(split.images, np.ndarray):
        return False
    size = split.images.nbytes + split.labels.nbytes
    stats = device.memory_stats() or {}
    limit = stats.get("bytes_limit")
    return size <= (AUTO_MAX_FRACTION * limit if limit else AUTO_MAX_BYTES_WITHOUT_STATS)


def use_device_resident(mode: str, split: Split, mesh: Mesh) -> bool:
    """Resolves input.device_resident: "on", "off", or "auto" (when the split fits)."""
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]
    return mode == "on" or (mode == "auto" and fits(split, local[0]))  # Same on every process.


class DeviceResidentTrain:
    """The train split replicated on every device, and the step -> batch gather.

    Batches are exactly the host pipeline's (`input_pipeline.train_batch`): the same (seed,
    step) order. The host computes the order once per epoch, uploads
    it as an [steps, batch] index table, and per step only dispatches the gather.
    """

    def __init__(self, split: Split, order, mesh: Mesh):
        self.order = order
        self.mesh = mesh
        replicated = sharding.replicated(mesh)
        self.images = _replicate(split.images, replicated)
        self.labels = _replicate(split.labels, replicated)
        self._gather = jax.jit(_gather, out_shardings=sharding.batch_sharding(mesh))
        logging.info("Train split on device: %s images (%.1f MB per device).",
                     f"{len(split):,}", split.images.nbytes / 2**20)  # fmt: skip

    def epoch_table(self, epoch: int) -> jax.Array:
        """[steps_per_epoch, batch] example indices of one epoch, on every device."""
        first = epoch * self.order.steps_per_epoch
        table = np.stack(
            [self.order.indices(first + i) for i in range(self.order.steps_per_epoch)]
        ).astype(np.int32)
        return _replicate(table, sharding.replicated(self.mesh))

    def batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        """Batches of steps start_step, start_step + 1, ...: gathered on device."""
        epoch, index = divmod(start_step, self.order.steps_per_epoch)
        while True:
            table = self.epoch_table(epoch)
            for i in range(index, self.order.steps_per_epoch):
                yield self._gather(self.images, self.labels, table, np.int32(i))
            epoch, index = epoch + 1, 0


def _gather(images, labels, table, index) -> dict[str, jax.Array]:
    rows = table[index]
    return {"image": jnp.take(images, rows, axis=0), "label": jnp.take(labels, rows, axis=0)}


def _replicate(array: np.ndarray, replicated) -> jax.Array:
    """A replicated global array from identical host copies (works across processes)."""
    return jax.make_array_from_callback(array.shape, replicated, lambda index: array[index])
