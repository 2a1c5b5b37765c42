"""Multi-process set-up: `jax.distributed` from explicit flags or from the job's environment."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import jax

MODES = ("auto", "on", "off")


def detect_environment(environ: Mapping[str, str]) -> str | None:
    """Names the multi-process job this process belongs to, or None for a single process.

    Recognises JAX's own variables (JAX_COORDINATOR_ADDRESS), SLURM jobs with several tasks,
    and multi-host Cloud TPU slices; `jax.distributed.initialize()` then finds the coordinator,
    the process count and this process's index by itself.
    """
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return f"JAX_COORDINATOR_ADDRESS={environ['JAX_COORDINATOR_ADDRESS']}"
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1")))
    if "SLURM_JOB_ID" in environ and tasks > 1:
        return f"SLURM job {environ['SLURM_JOB_ID']} with {tasks} tasks"
    workers = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if len(workers) > 1:
        return f"Cloud TPU slice with {len(workers)} workers"
    if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return "Cloud TPU multislice"
    return None


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """Starts `jax.distributed` when the job has several processes; returns why, or None.

    mode "auto": with explicit flags or a detected environment; "on": always (on Cloud TPU VMs
    JAX discovers every worker itself); "off": never. Must run before any other JAX call.
    """
    explicit = [coordinator_address, num_processes, process_id]
    if mode not in MODES:
        raise ValueError(f"--distributed={mode!r} is not one of {', '.join(MODES)}.")
    if mode == "off":
        if any(x is not None for x in explicit):
            raise ValueError("--distributed=off contradicts --coordinator_address/"
                             "--num_processes/--process_id.")  # fmt: skip
        return None
    if any(x is not None for x in explicit):
        if any(x is None for x in explicit):
            raise ValueError("Give all of --coordinator_address, --num_processes and "
                             "--process_id, or none of them.")  # fmt: skip
        reason = f"flags (process {process_id} of {num_processes}, {coordinator_address})"
    else:
        reason = "--distributed=on" if mode == "on" else detect_environment(environ)
    if reason is None:
        return None
    # Cross-process collectives between CPU devices (tests, CPU clusters); TPUs/GPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
    logging.info("jax.distributed from %s: process %d of %d, %d of %d devices local.", reason,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())  # fmt: skip
    return reason
