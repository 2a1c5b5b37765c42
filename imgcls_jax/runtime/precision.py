"""`model.dtype="auto"`: the compute dtype that is fast on the run's devices.

GPUs and TPUs compute bfloat16 natively. On CPUs it depends on the instruction sets and the
vendor (docs/performance.md): with AMX's tile units (`amx_bf16`, `amx_tile`) bfloat16 is fast;
with AVX-512-BF16 and no AMX, the bfloat16 airbench step ran 1.4x slower than float32 on an
Intel CPU but 1.4x faster on an AMD EPYC (Zen 4); AVX2 CPUs and ARM have no fast bfloat16
convolutions in oneDNN or XLA. So "auto" is bfloat16 on accelerators, on CPUs with AMX and
on AMD CPUs with AVX-512-BF16, float32 on every other CPU. The choice and its reason are
logged.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping, Sequence

AMX_FLAGS = frozenset({"amx_bf16", "amx_tile"})
AMD = "AuthenticAMD"  # /proc/cpuinfo's vendor_id of AMD's x86 CPUs.
INTEL = "GenuineIntel"  # ... and of Intel's.
# Words of instruction-set names (XLA's --xla_cpu_max_isa, oneDNN's ONEDNN_MAX_CPU_ISA) that
# keep each feature: a cap naming none of them takes the feature away.
_KEEPS_AMX = ("AMX",)
_KEEPS_BF16 = ("BF16", "FP16", "AMX")  # oneDNN orders AVX512_CORE_FP16 and AMX above BF16.


def _cpuinfo_field(names: tuple[str, ...], cpuinfo: str) -> str:
    """The first /proc/cpuinfo line's value whose key starts with one of `names` ("" if none)."""
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            for line in f:
                if line.startswith(names):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags as Linux reports them; empty where it cannot be read."""
    return frozenset(_cpuinfo_field(("flags", "Features"), cpuinfo).split())  # x86, ARM.


def cpu_vendor(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The x86 CPU's vendor_id (e.g. GenuineIntel, AuthenticAMD); "" elsewhere."""
    return _cpuinfo_field(("vendor_id",), cpuinfo)


def _capped(environ: Mapping[str, str], keeps: tuple[str, ...]) -> str:
    """Why this process may not use a feature the CPU has ("" if it may): an instruction-set
    cap for XLA (XLA_FLAGS --xla_cpu_max_isa) or oneDNN (ONEDNN_MAX_CPU_ISA) naming none of
    `keeps`, as set e.g. to reproduce a CPU without the feature."""
    match = re.search(r"--xla_cpu_max_isa=(\S+)", environ.get("XLA_FLAGS", ""))
    if match and not any(word in match.group(1).upper() for word in keeps):
        return f"XLA_FLAGS caps XLA at {match.group(1)}"
    onednn = environ.get("ONEDNN_MAX_CPU_ISA") or environ.get("DNNL_MAX_CPU_ISA") or "ALL"
    if onednn.upper() != "ALL" and not any(word in onednn.upper() for word in keeps):
        return f"ONEDNN_MAX_CPU_ISA caps oneDNN at {onednn}"
    return ""


def amx_capped(environ: Mapping[str, str]) -> str:
    """Why this process may not use AMX although the CPU has it ("" if it may)."""
    return _capped(environ, _KEEPS_AMX)


def auto_dtype(
    platform: str, flags: frozenset[str], environ: Mapping[str, str], vendor: str = ""
) -> tuple[str, str]:
    """(dtype, reason) for a run on `platform` devices; `flags` and `vendor` describe the CPU."""
    if platform != "cpu":
        return "bfloat16", f"{platform} devices compute bfloat16 natively"
    if AMX_FLAGS <= flags:
        if capped := amx_capped(environ):
            return "float32", f"this CPU has AMX but {capped}"
        return "bfloat16", "this CPU has AMX (amx_bf16, amx_tile) for bfloat16"
    if vendor == AMD and "avx512_bf16" in flags:
        if capped := _capped(environ, _KEEPS_BF16):
            return "float32", f"this AMD CPU has AVX-512-BF16 but {capped}"
        return "bfloat16", ("this AMD CPU has AVX-512-BF16, on which bfloat16 convolutions "
                            "run faster than float32 ones")  # fmt: skip
    if "avx512_bf16" in flags:
        return "float32", ("this CPU has AVX-512-BF16 but no AMX (amx_bf16, amx_tile), and is "
                           "not an AMD one: bfloat16 would run slower")  # fmt: skip
    missing = ", ".join(sorted(AMX_FLAGS - flags))
    return "float32", f"this CPU lacks AMX ({missing}) and AVX-512-BF16: bfloat16 would run slower"


def resolve(
    dtype: str,
    devices: Sequence,
    flags: frozenset[str] | None = None,
    environ: Mapping[str, str] | None = None,
    vendor: str | None = None,
) -> str:
    """`dtype`, or for "auto" the choice for `devices` (logged with its reason)."""
    if dtype != "auto":
        return dtype
    chosen, reason = auto_dtype(
        devices[0].platform,
        cpu_flags() if flags is None else flags,
        os.environ if environ is None else environ,
        cpu_vendor() if vendor is None else vendor,
    )
    logging.info("model.dtype=auto: %s, as %s.", chosen, reason)
    return chosen
