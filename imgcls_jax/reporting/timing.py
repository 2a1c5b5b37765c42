"""How long a run took: wall-clock seconds in all, those spent compiling, and per jitted
function its compile seconds and whether XLA's program came from the persistent compilation
cache (JAX's monitoring events)."""

from __future__ import annotations

import threading
import time

import jax

# Tracing, lowering and XLA compilation of every jitted function, as JAX reports them.
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"
# The persistent cache's answer, reported just before the same thread's backend compile event.
CACHE_OUTCOMES = {"/jax/compilation_cache/cache_hits": "hit",
                  "/jax/compilation_cache/cache_misses": "miss"}  # fmt: skip
MIN_LISTED_S = 0.05  # Functions that took less to compile are only counted in compile_s.


class RunTimer:
    """Counts wall-clock and compile seconds from construction until `stop()`."""

    def __init__(self):
        self.compile_s = 0.0
        self.functions: dict[str, dict] = {}  # name -> {"compile_s", "compiles", "cache"}
        self._cache_outcome: dict[int, str] = {}  # Thread -> the cache's last answer.
        self._lock = threading.Lock()
        self._start = time.perf_counter()
        self._end: float | None = None
        jax.monitoring.register_event_duration_secs_listener(self._on_duration)
        jax.monitoring.register_event_listener(self._on_event)

    def _on_event(self, event: str, **kwargs) -> None:
        if event in CACHE_OUTCOMES:
            self._cache_outcome[threading.get_ident()] = CACHE_OUTCOMES[event]

    def _on_duration(self, event: str, duration: float, **kwargs) -> None:
        if event not in COMPILE_EVENTS or self._end is not None:
            return
        name = kwargs.get("fun_name", "?")
        name = name[4:-1] if name.startswith("jit(") else name
        with self._lock:
            self.compile_s += duration
            entry = self.functions.setdefault(name, {"compile_s": 0.0, "compiles": 0,
                                                     "cache": "not used"})  # fmt: skip
            entry["compile_s"] += duration
            if event == BACKEND_COMPILE:
                entry["compiles"] += 1
                entry["cache"] = self._cache_outcome.pop(threading.get_ident(), "not used")

    def stop(self) -> None:
        if self._end is None:
            self._end = time.perf_counter()
            jax.monitoring.unregister_event_duration_listener(self._on_duration)
            jax.monitoring.unregister_event_listener(self._on_event)

    def summary(self) -> dict:
        """{"run_s": wall seconds, "compile_s": of which compiling, "compiled": {function:
        {"compile_s", "compiles", "cache": "hit" | "miss" | "not used"}} for the functions
        that took at least MIN_LISTED_S, costliest first}."""
        end = self._end if self._end is not None else time.perf_counter()
        with self._lock:
            listed = sorted(((n, e) for n, e in self.functions.items()
                             if e["compile_s"] >= MIN_LISTED_S), key=lambda item: -item[1]["compile_s"])  # fmt: skip
            compiled = {n: {**e, "compile_s": round(e["compile_s"], 2)} for n, e in listed}
        return {"run_s": round(end - self._start, 2), "compile_s": round(self.compile_s, 2),
                "compiled": compiled}  # fmt: skip
