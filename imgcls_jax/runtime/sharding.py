"""The device mesh and how arrays are laid out on it.

The mesh has three axes: `slice` (TPU slices of a multislice job, joined over the data-centre
network; 1 elsewhere), `data` and `fsdp` (config.mesh.fsdp devices in each group, within a
slice). Batches are split over all three; the state's gathers stay inside a slice. Arrays of the train state (parameters, optimizer state, EMA, batch
statistics) of at least config.mesh.fsdp_min_bytes are split over `fsdp` along their largest
dimension that it divides (big_vision's "fsdp" rule); the rest is replicated. With fsdp=1 the
run is plain data parallelism.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

SLICE_AXIS = "slice"
DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
# Every data-like axis: the batch is split over all.
BATCH_AXES = (SLICE_AXIS, DATA_AXIS, FSDP_AXIS)


def make_mesh(devices: list | None = None, fsdp: int = 1) -> Mesh:
    """A (slice, data, fsdp) mesh over all devices of all processes: one row of `slice` per
    TPU slice (devices' `slice_index`), each fsdp group consecutive devices of one slice (on
    one host where a host has that many)."""
    devices = jax.devices() if devices is None else devices
    devices = sorted(devices, key=lambda d: getattr(d, "slice_index", 0))  # Stable.
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    per_slice = len(devices) // num_slices
    if num_slices * per_slice != len(devices):
        raise ValueError(f"The {len(devices)} devices are not {num_slices} equal slices.")
    if fsdp < 1 or per_slice % fsdp:
        raise ValueError(f"config.mesh.fsdp={fsdp} must divide the {per_slice} devices of a "
                         f"slice; use one of {[d for d in range(1, per_slice + 1) if per_slice % d == 0]}.")  # fmt: skip
    # In jax.devices() order within a slice (a process's devices lie in one slice), so that
    # each process's devices hold consecutive batch rows (`process_slice`).
    grid = np.asarray(devices).reshape(num_slices, -1, fsdp)
    return Mesh(grid, (SLICE_AXIS, DATA_AXIS, FSDP_AXIS))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split across every device."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    """The same full copy on every device."""
    return NamedSharding(mesh, PartitionSpec())


def array_spec(shape: tuple[int, ...], nbytes: int, fsdp: int, min_bytes: int) -> PartitionSpec:
    """Where one state array lives: its largest dimension divisible by `fsdp` split over the
    fsdp axis when the array has at least `min_bytes`; else replicated."""
    if fsdp == 1 or nbytes < min_bytes:
        return PartitionSpec()
    for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
        if shape[dim] % fsdp == 0:
            return PartitionSpec(*(FSDP_AXIS if d == dim else None for d in range(len(shape))))
    return PartitionSpec()


def state_shardings(abstract_state: Any, mesh: Mesh, min_bytes: int) -> Any:
    """The sharding of every array of a train state (a pytree of shapes), by `array_spec`."""
    fsdp = mesh.shape[FSDP_AXIS]

    def place(leaf: Any) -> NamedSharding:
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return replicated(mesh)
        nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
        return NamedSharding(mesh, array_spec(leaf.shape, nbytes, fsdp, min_bytes))

    return jax.tree.map(place, abstract_state)


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
