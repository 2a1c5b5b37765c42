"""Multi-process set-up: `jax.distributed` from explicit flags or from the job's environment."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Mapping

import jax

MODES = ("auto", "on", "off")
# After PEER_TIMEOUT_S without a sign of life from another process, this one exits with one
# line (PeerWatch); JAX's own heartbeat check, which aborts with a stack dump, comes later.
PEER_TIMEOUT_S = 20.0
HEARTBEAT_TIMEOUT_S = 60
DONE = "done"


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
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )  # fmt: skip
    PeerWatch(PEER_TIMEOUT_S).start()  # Stopped by `finished()`.
    logging.info("jax.distributed from %s: process %d of %d, %d of %d devices local.", reason,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())  # fmt: skip
    return reason


def finished() -> None:
    """Marks this process's work as done, so that its exit is not taken for a crash."""
    if PeerWatch.current is not None:
        PeerWatch.current.finish()


class PeerWatch:
    """Ends this process, with one line and exit status 1, when another process of the job
    has shown no sign of life for `timeout_s` (killed, crashed, or its host lost).

    Each process counts up a key of its own in the coordination service's key-value store
    every second and watches the others' keys; a process that finished its work writes
    "done" there (`finish`), so a slower peer is not taken for dead. Without it, a survivor
    blocks in its next collective (or, on CPUs, in JAX's shutdown after a failed one) until
    JAX's heartbeat check aborts it with a C++ stack dump.
    """

    current: PeerWatch | None = None  # The running watch, for `finish`.

    def __init__(self, timeout_s: float, poll_s: float = 1.0):
        from jax._src import distributed  # The client JAX's own services use (Orbax does too).

        self._client = distributed.global_state.client
        self._me, self._count = jax.process_index(), jax.process_count()
        self._timeout_s, self._poll_s = timeout_s, poll_s
        self._stop = threading.Event()
        self._writing = threading.Lock()  # So that no beat overwrites "done".

    def start(self) -> None:
        threading.Thread(target=self._run, name="imgcls_jax-peer-watch", daemon=True).start()
        PeerWatch.current = self

    def finish(self) -> None:
        """Tells the other processes that this one is done (not dead), and stops watching."""
        with self._writing:
            self._stop.set()
            self._client.key_value_set(f"imgcls_jax/alive/{self._me}", DONE, True)

    def _run(self) -> None:
        last_value = dict.fromkeys(range(self._count))
        last_change = dict.fromkeys(range(self._count), time.monotonic())
        beat = 0
        while not self._stop.wait(self._poll_s):
            beat += 1
            now = time.monotonic()
            try:
                with self._writing:
                    if self._stop.is_set():
                        return
                    self._client.key_value_set(f"imgcls_jax/alive/{self._me}", str(beat), True)
                for peer in range(self._count):
                    if peer == self._me:
                        continue
                    try:
                        value = self._client.key_value_try_get(f"imgcls_jax/alive/{peer}")
                    except jax.errors.JaxRuntimeError:  # Not written yet.
                        value = None
                    if value == DONE:
                        continue
                    if value != last_value[peer]:
                        last_value[peer], last_change[peer] = value, now
                    elif now - last_change[peer] > self._timeout_s and not self._stop.is_set():
                        self._exit(f"process {peer} of {self._count} has shown no sign "
                                   f"of life for {self._timeout_s:.0f} s (killed or crashed?)")  # fmt: skip
                last_change[self._me] = now
            except jax.errors.JaxRuntimeError as e:  # The coordinator (process 0) is gone.
                if now - last_change[self._me] > self._timeout_s and not self._stop.is_set():
                    self._exit(f"lost the coordination service on process 0 ({e})")

    @staticmethod
    def _exit(why: str) -> None:
        logging.error("Stopping: %s. The last complete checkpoint stays; relaunch every "
                      "process with the same command to resume.", why)  # fmt: skip
        sys.stderr.flush()
        os._exit(1)
