"""Preemption: SIGTERM (how TPU maintenance and schedulers announce it) or SIGHUP (the
terminal or SSH session went away) → save and stop."""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils


class PreemptionWatch:
    """Says at which step to save and stop after a SIGTERM or SIGHUP, the same step on every
    process.

    One process: a handler sets a flag, read at the next step. Several processes: JAX's
    preemption service (started by `jax.distributed.initialize`) receives SIGTERM on any
    process and agrees on a step all processes reach; a SIGHUP is passed on to it as SIGTERM.
    Use as a context manager around the loop; `reached(step)` must be called at every step.
    """

    def __init__(self):
        self._requested = threading.Event()
        self._previous_handlers: dict[int, object] = {}
        self._multi_process = jax.process_count() > 1
        self._calls = 0

    def __enter__(self) -> PreemptionWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python sets signal handlers from the main thread only.
        signals = [signal.SIGHUP] if self._multi_process else [signal.SIGTERM, signal.SIGHUP]
        for number in signals:
            self._previous_handlers[number] = signal.signal(number, self._on_signal)
        return self

    def __exit__(self, *exc) -> None:
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}

    def _on_signal(self, signum, frame) -> None:
        del signum, frame
        if self._multi_process:  # JAX's preemption service listens for SIGTERM.
            os.kill(os.getpid(), signal.SIGTERM)
        else:
            self._requested.set()

    def reached(self, step: int) -> bool:
        """Whether training should save at `step` and stop; call it after every call of
        train steps, with the step reached."""
        if self._multi_process:
            # JAX agrees on a sync point one call ahead, counted in calls, so the count must
            # go up by one per call even when a call runs several steps.
            self._calls += 1
            stop = multihost_utils.reached_preemption_sync_point(self._calls)
        else:
            stop = self._requested.is_set()
        if stop:
            logging.warning("Preemption notice (SIGTERM/SIGHUP): saving step %d and stopping.",
                            step)  # fmt: skip
        return stop
