"""`model.dtype="auto"`: the compute dtype that is fast on the run's devices.

GPUs and TPUs compute bfloat16 natively. A CPU does so at speed only with AMX's tile units
(`amx_bf16`, `amx_tile`): on an AVX-512 CPU without them, the bfloat16 airbench step ran 50%
slower than float32 (docs/performance.md), and AVX2 CPUs and ARM have no fast bfloat16
convolutions in oneDNN or XLA at all. So "auto" is bfloat16 on accelerators and on CPUs with
AMX, float32 on every other CPU. The choice and its reason are logged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

AMX_FLAGS = frozenset({"amx_bf16", "amx_tile"})


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty where it cannot be read."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):  # x86, ARM.
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def amx_capped(environ: Mapping[str, str]) -> str:
    """Why this process may not use AMX although the CPU has it ("" if it may): an ISA cap
    below AMX for XLA (XLA_FLAGS --xla_cpu_max_isa) or for oneDNN (ONEDNN_MAX_CPU_ISA), as set
    e.g. to reproduce a CPU without AMX."""
    match = re.search(r"--xla_cpu_max_isa=(\S+)", environ.get("XLA_FLAGS", ""))
    if match and "AMX" not in match.group(1).upper():
        return f"XLA_FLAGS caps XLA at {match.group(1)}"
    onednn = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "ALL"
    if onednn.upper() != "ALL" and "AMX" not in onednn.upper():
        return f"ONEDNN_MAX_CPU_ISA caps oneDNN at {onednn}"
    return ""


def auto_dtype(platform: str, flags: frozenset[str], environ: Mapping[str, str]) -> tuple[str, str]:
    """(dtype, reason) for a run on `platform` devices; `flags` are the CPU's features."""
    if platform != "cpu":
        return "bfloat16", f"{platform} devices compute bfloat16 natively"
    if not AMX_FLAGS <= flags:
        missing = ", ".join(sorted(AMX_FLAGS - flags))
        return "float32", f"this CPU lacks AMX ({missing}): bfloat16 would run slower"
    if capped := amx_capped(environ):
        return "float32", f"this CPU has AMX but {capped}"
    return "bfloat16", "this CPU has AMX (amx_bf16, amx_tile) for bfloat16"


def resolve(
    dtype: str,
    devices: Sequence,
    flags: frozenset[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> str:
    """`dtype`, or for "auto" the choice for `devices` (logged with its reason)."""
    if dtype != "auto":
        return dtype
    flags = cpu_flags() if flags is None else flags
    chosen, reason = auto_dtype(
        devices[0].platform, flags, os.environ if environ is None else environ
    )
    logging.info("model.dtype=auto: %s, as %s.", chosen, reason)
    return chosen
