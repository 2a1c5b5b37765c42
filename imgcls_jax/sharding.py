"""The device mesh and how arrays are laid out on it: batches sharded, the state replicated."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(devices: list | None = None) -> Mesh:
    """A 1-D data-parallel mesh over all devices of all processes."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across the data axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, key: str, parts: int = 1) -> None:
    """Raises when a global batch does not split evenly over devices and processes (and, in
    each, into `parts` micro-batches for gradient accumulation)."""
    if batch_size % (mesh.size * parts) or batch_size % jax.process_count():
        per = f" x {parts} micro-batches (training.grad_accum_steps)" if parts > 1 else ""
        raise ValueError(
            f"config.{key}={batch_size} must be divisible by the {mesh.size} devices{per} "
            f"and {jax.process_count()} processes; use a multiple of {mesh.size * parts}."
        )


def process_slice(global_batch_size: int) -> slice:
    """The rows of a global batch that this process feeds."""
    local = global_batch_size // jax.process_count()
    start = jax.process_index() * local
    return slice(start, start + local)


def to_global(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles a global, batch-sharded array from each process's rows."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()}
