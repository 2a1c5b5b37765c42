"""XLA options for programs that run once per run (the state's initialisation), where
compiling costs far more than running."""

from __future__ import annotations

# LLVM's level-1 optimisation instead of XLA:CPU's default: the CNN presets' initialisation
# compiles 1.3-3.8x faster (docs/performance.md#compile-time) to the same state: integers
# bitwise, floats within a few ulps with XLA 0.12, bitwise with 0.10
# (tests/test_compile_options.py).
_RARELY_RUN_ON_CPU = {"xla_backend_optimization_level": 1}


def rarely_run(platform: str) -> dict[str, int]:
    """Compiler options for a program run once on `platform`'s devices; platforms other than
    the CPU keep their defaults (not measured there)."""
    return dict(_RARELY_RUN_ON_CPU) if platform == "cpu" else {}
