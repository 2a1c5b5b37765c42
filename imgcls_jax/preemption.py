"""Preemption: SIGTERM (how TPU maintenance and schedulers announce it) → save and stop."""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Says at which step to save and stop after a SIGTERM, the same step on every process.

    One process: a SIGTERM handler sets a flag, read at the next step. Several processes: JAX's
    preemption service (started by `jax.distributed.initialize`) receives the signal on any
    process and agrees on a step all processes reach. Use as a context manager around the loop;
    `reached(step)` must be called at every step.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._previous_handler = None
        self._multi_process = jax.process_count() > 1

    def __enter__(self) -> PreemptionWatch:
        if not self._multi_process and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self._requested.set()

    def reached(self, step: int) -> bool:
        """Whether training should save at `step` and stop."""
        if self._multi_process:
            stop = multihost_utils.reached_preemption_sync_point(step)
        else:
            stop = self._requested.is_set()
        if stop:
            logging.warning("Preemption notice (SIGTERM): saving step %d and stopping.", step)
        return stop
