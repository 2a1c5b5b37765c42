"""Host memory: let glibc keep freed memory for reuse, so XLA:CPU's step buffers stop
page-faulting.

Each XLA:CPU execution allocates its temporary buffers in one block (about 230 MB for a
ResNet-20 step at batch 128) and frees it at the end. glibc serves a block that large with
fresh mmap pages (a worker thread's arena cannot do otherwise), so every step faults all of it
in again: 57,000 page faults, about a quarter of the step on our 2-core machine
(experiments/results/benchmarks/cpu_perf_notes.md). One arena, no mmap and no trimming keep those pages
in the process instead; the price is that the process keeps its peak heap until it exits.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import pkgutil
import sys

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_SETTINGS = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
_GOOGLE_PCI_VENDOR_ID = "0x1ae0"  # TPU chips.


def reuse_freed_memory() -> bool:
    """Makes glibc's malloc serve every thread from one heap that is never given back; returns
    whether it could (Linux with glibc only). Call it before threads other than the main one
    allocate, i.e. before JAX starts its backend: a thread keeps the arena it first used."""
    if not sys.platform.startswith("linux"):
        return False
    libc = ctypes.CDLL(None)
    if not hasattr(libc, "gnu_get_libc_version"):  # Not glibc (e.g. musl): nothing to tune.
        return False
    return all(libc.mallopt(option, value) == 1 for option, value in _SETTINGS)


def devices_are_cpus() -> bool:
    """Whether JAX will run on CPUs only, judged without starting it (the setting above must
    come first): JAX_PLATFORMS names only cpu, or no GPU plugin (a `jax_plugins` module such
    as CUDA's) is installed and no TPU chip is attached (libtpu alone also serves the
    compile-only devices of `imgcls_jax.training.fit_check`). Accelerator runs keep glibc's defaults: their
    step buffers live on the device, and the host serves the input pipeline."""
    platforms = [p for p in os.environ.get("JAX_PLATFORMS", "").lower().split(",") if p]
    if platforms:
        return platforms == ["cpu"]
    if importlib.util.find_spec("libtpu") is not None and _tpu_chips_attached():
        return False
    spec = importlib.util.find_spec("jax_plugins")
    return spec is None or not any(pkgutil.iter_modules(spec.submodule_search_locations))


def _tpu_chips_attached(pci_devices: str = "/sys/bus/pci/devices") -> bool:
    """Whether a Google TPU chip is on the PCI bus (as `jax._src.hardware_utils` finds them)."""
    for vendor in glob.glob(os.path.join(pci_devices, "*", "vendor")):
        with open(vendor, encoding="ascii") as f:
            if f.read().strip() == _GOOGLE_PCI_VENDOR_ID:
                return True
    return False
