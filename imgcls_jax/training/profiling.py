"""`training.profile_steps`: a `jax.profiler` trace of chosen train steps, which TensorBoard's
profile plugin opens from the workdir's `tensorboard/` directory."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

import jax


def parse_steps(spec: str) -> tuple[int, int] | None:
    """ "100:105" -> (100, 105): steps 100 to 104 are traced; "" -> None."""
    if not spec:
        return None
    try:
        start, stop = (int(part) for part in spec.split(":"))
    except ValueError:
        start = stop = -1
    if not 1 <= start < stop:
        raise ValueError(f"config.training.profile_steps={spec!r} must be 'START:STOP' with "
                         "1 <= START < STOP, e.g. '100:105' (steps 100 to 104).")  # fmt: skip
    return start, stop


class StepProfiler:
    """Starts a trace before step START and stops it once step STOP - 1 has finished on the
    device; every traced step is annotated, so that the profile plugin shows step times."""

    def __init__(self, spec: str, log_dir: str):
        self._steps = parse_steps(spec)
        self._log_dir = log_dir
        self._active = False

    def _traced(self, first: int, last: int) -> bool:
        return self._steps is not None and first < self._steps[1] and last >= self._steps[0]

    def annotate(self, first: int, last: int) -> contextlib.AbstractContextManager:
        """Wraps the dispatch of train steps `first` to `last` (one call): starts the trace
        at the call holding START."""
        if not self._traced(first, last):
            return contextlib.nullcontext()
        if not self._active:
            jax.profiler.start_trace(self._log_dir)
            self._active = True
        return jax.profiler.StepTraceAnnotation("train", step_num=first)

    def after(self, last: int, state: Any) -> None:
        """After the call ending at step `last`: once STOP - 1 is done, waits for `state` and
        ends the trace."""
        if self._active and last >= self._steps[1] - 1:
            self._stop(state)

    def _stop(self, result: Any) -> None:
        jax.block_until_ready(result)
        jax.profiler.stop_trace()
        self._active = False
        logging.info("Wrote a profile of steps %d-%d to %s (TensorBoard: profile tab).",
                     self._steps[0], self._steps[1] - 1,
                     os.path.join(self._log_dir, "plugins", "profile"))  # fmt: skip

    def close(self) -> None:
        """Ends a trace cut short (the run stopped inside the traced steps)."""
        if self._active:
            self._stop([])
