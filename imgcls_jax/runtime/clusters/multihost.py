"""Multi-process set-up: `jax.distributed` from explicit flags or from the job's environment."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping

import jax

MODES = ("auto", "on", "off")
# After PEER_TIMEOUT_S without a sign of life from another process, this one exits with one
# line (PeerWatch); JAX's own heartbeat check, which aborts with a stack dump, comes later.
PEER_TIMEOUT_S = 20.0
HEARTBEAT_TIMEOUT_S = 60
DONE = "done"


@dataclasses.dataclass(frozen=True)
class Job:
    """A multi-process job this process belongs to: what it is, how `jax.distributed` joins
    it (`method`: a JAX cluster-detection method, None for JAX's automatic choice), or why it
    cannot (`problem`, one line that says what to do)."""

    description: str
    method: str | None = None
    problem: str | None = None


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def detect_environment(
    environ: Mapping[str, str], installed: Callable[[str], bool] = _installed
) -> Job | None:
    """The multi-process job this process belongs to, from its environment; None for a single
    process. `jax.distributed.initialize()` then finds the coordinator, the process count and
    this process's index itself (JAX's cluster detection: jax/_src/clusters); this function
    only decides that there is a job, and whether JAX can join it, mirroring the variables
    JAX's detectors read.
    """
    if environ.get("JAX_COORDINATOR_ADDRESS"):
        return Job(f"JAX_COORDINATOR_ADDRESS={environ['JAX_COORDINATOR_ADDRESS']}")
    workers = [h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]
    if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return Job("Cloud TPU multislice")
    if len(workers) > 1:  # TPU VMs, and GKE's TPU pods (its webhook sets the variable).
        return Job(f"Cloud TPU slice with {len(workers)} workers")
    tasks = int(environ.get("SLURM_STEP_NUM_TASKS", environ.get("SLURM_NTASKS", "1")))
    if "SLURM_JOB_ID" in environ and tasks > 1:
        job = f"SLURM job {environ['SLURM_JOB_ID']} with {tasks} tasks"
        if all(v in environ for v in ("SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")):
            return Job(job, "slurm")
        return Job(job, problem=f"{job}, but this process was not started by srun (no "
                   "SLURM_PROCID/SLURM_STEP_NODELIST): run `srun python launch.py ...` in the "
                   "batch script, or pass --distributed=off for one process.")  # fmt: skip
    ompi_size = int(environ.get("OMPI_COMM_WORLD_SIZE", "1"))
    if ompi_size > 1:
        job = f"Open MPI mpirun with {ompi_size} processes"
        # Open MPI 4 and older: JAX reads the launcher's address; 5: JAX asks mpi4py.
        if "OMPI_MCA_orte_hnp_uri" in environ or installed("mpi4py"):
            return Job(job, "ompi")
        return Job(job, problem=f"{job} (Open MPI 5), which JAX joins through mpi4py: "
                   "pip install mpi4py, or pass --coordinator_address, --num_processes and "
                   "--process_id.")  # fmt: skip
    pmi_size = int(environ.get("PMI_SIZE", "1"))
    if pmi_size > 1:  # MPICH, Intel MPI and other PMI launchers.
        job = f"MPI job (PMI) with {pmi_size} processes"
        if installed("mpi4py"):
            return Job(job, "mpi4py")
        return Job(job, problem=f"{job}, which JAX joins through mpi4py: pip install mpi4py, "
                   "or pass --coordinator_address, --num_processes and --process_id.")  # fmt: skip
    if "JOB_COMPLETION_INDEX" in environ and "KUBERNETES_SERVICE_HOST" in environ:
        job = f"Kubernetes Indexed Job (pod {environ['JOB_COMPLETION_INDEX']})"
        if installed("kubernetes"):  # JAX reads the job's parallelism from the API server.
            return Job(job)
        return Job(job, problem=f"{job}: its process count and coordinator are unknown here. "
                   "Pass --coordinator_address, --num_processes and --process_id (the "
                   "manifests of `launch.py --k8s` do), or pip install "
                   "kubernetes so JAX asks the API server (the pod's service account must read "
                   "pods and jobs), or pass --distributed=off for one process.")  # fmt: skip
    return None


def initialize(
    mode: str = "auto",
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    environ: Mapping[str, str] = os.environ,
    installed: Callable[[str], bool] = _installed,
) -> str | None:
    """Starts `jax.distributed` when the job has several processes; returns why, or None.

    mode "auto": with explicit flags or a detected environment (`detect_environment`; a job
    JAX cannot join raises ValueError with what to do); "on": always (on Cloud TPU VMs JAX
    discovers every worker itself); "off": never. Must run before any other JAX call.
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
        method = None
    elif mode == "on":
        reason, method = "--distributed=on", None
    else:
        job = detect_environment(environ, installed)
        if job is None:
            return None
        if job.problem:
            raise ValueError(job.problem)
        reason, method = job.description, job.method
    # Cross-process collectives between CPU devices (tests, CPU clusters); TPUs/GPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address, num_processes=num_processes,
        process_id=process_id, cluster_detection_method=method,
        heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
    )  # fmt: skip
    PeerWatch(PEER_TIMEOUT_S).start()  # Stopped by `finished()`.
    logging.info("jax.distributed from %s: process %d of %d, %d of %d devices local.", reason,
                 jax.process_index(), jax.process_count(), jax.local_device_count(),
                 jax.device_count())  # fmt: skip
    return reason


def explain_collective_failure() -> None:
    """Called when a cross-process operation failed: waits for the peer watch to name the
    dead peer (it ends the process with its one line), so that the line comes without the
    collective's traceback; returns when no peer was found dead (the error is another)."""
    if PeerWatch.current is not None:
        PeerWatch.current.wait_for_verdict()


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
        # When (monotonic) the watch last finished a round of checks, for `wait_for_verdict`.
        self._checked = threading.Condition()
        self._checked_at = float("-inf")

    def start(self) -> None:
        threading.Thread(target=self._run, name="imgcls_jax-peer-watch", daemon=True).start()
        PeerWatch.current = self

    def wait_for_verdict(self) -> None:
        """Waits until the watch has checked the peers `timeout_s` (and two polls) after now:
        a peer that died before now is then found dead (the watch ends the process), so that
        returning means no peer died. Waits on the watch's own rounds, not a fixed time, so a
        watch slowed down (a loaded host, a slow coordination service) cannot lose the race
        and let the collective's traceback out first; gives up after 3 x `timeout_s`."""
        due = time.monotonic() + self._timeout_s + 2 * self._poll_s
        with self._checked:
            self._checked.wait_for(lambda: self._stop.is_set() or self._checked_at >= due,
                                   timeout=3 * self._timeout_s)  # fmt: skip

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
            with self._checked:  # A round checked at `now` found no peer dead.
                self._checked_at = now
                self._checked.notify_all()

    @staticmethod
    def _exit(why: str) -> None:
        logging.error("Stopping: %s. The last complete checkpoint stays; relaunch every "
                      "process with the same command to resume.", why)  # fmt: skip
        sys.stderr.flush()
        os._exit(1)
