"""How long a run took: wall-clock seconds in all and those spent compiling (JAX's events)."""

from __future__ import annotations

import time

import jax

# Tracing, lowering and XLA compilation of every jitted function, as JAX reports them.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


class RunTimer:
    """Counts wall-clock and compile seconds from construction until `stop()`."""

    def __init__(self):
        self.compile_s = 0.0
        self._start = time.perf_counter()
        self._end: float | None = None
        jax.monitoring.register_event_duration_secs_listener(self._on_event)

    def _on_event(self, event: str, duration: float, **kwargs) -> None:
        if event in COMPILE_EVENTS and self._end is None:
            self.compile_s += duration

    def stop(self) -> None:
        if self._end is None:
            self._end = time.perf_counter()
            jax.monitoring.unregister_event_duration_listener(self._on_event)

    def summary(self) -> dict[str, float]:
        """{"run_s": wall seconds, "compile_s": of which compiling}."""
        end = self._end if self._end is not None else time.perf_counter()
        return {"run_s": round(end - self._start, 2), "compile_s": round(self.compile_s, 2)}
