"""Reusing freed host memory: XLA:CPU's per-call buffers stop being page-faulted in again."""

import subprocess
import sys

import pytest
from conftest import REPO_ROOT, why_failed

from imgcls_jax.runtime import host_memory

# Calls a jitted function whose 16 MB buffers XLA allocates and frees on every call; prints
# the page faults per call.
SCRIPT = """
import resource, sys
from imgcls_jax.runtime import host_memory
if sys.argv[1] == "reuse":
    assert host_memory.reuse_freed_memory()
import jax, jax.numpy as jnp
f = jax.jit(lambda x: jnp.sort(jnp.sin(x)) + jnp.sort(jnp.cos(x))[::-1])
x = jnp.ones(1 << 22)
f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    f(x).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def _faults_per_call(mode: str) -> float:
    run = subprocess.run([sys.executable, "-c", SCRIPT, mode], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    return float(run.stdout.split()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_reused_memory_is_not_page_faulted_in_on_every_call():
    system, reused = _faults_per_call("system"), _faults_per_call("reuse")
    assert system > 3 * 4096  # 3 x 16 MB of 4 KiB pages: the buffers fault in every call...
    assert reused < system / 4  # ...unless freed memory is kept.


def test_reuse_reports_whether_it_applied():
    assert host_memory.reuse_freed_memory() == sys.platform.startswith("linux")


def test_only_runs_on_cpus_change_the_host_memory_setting(monkeypatch, tmp_path):
    """launch.py applies it where JAX will run on CPUs only: judged from JAX_PLATFORMS, or else
    from whether a GPU/TPU plugin is installed, without starting JAX."""
    import importlib

    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert host_memory.devices_are_cpus()
    monkeypatch.setenv("JAX_PLATFORMS", "cuda,cpu")
    assert not host_memory.devices_are_cpus()
    monkeypatch.delenv("JAX_PLATFORMS")
    plugin = tmp_path / "jax_plugins" / "xla_cuda13"  # Where jax-cuda13-plugin installs.
    plugin.mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    assert not host_memory.devices_are_cpus()


def test_libtpu_without_a_tpu_chip_is_a_cpu_run(monkeypatch, tmp_path):
    """libtpu installed for compile-only TPU devices: still a CPU run, unless a Google (TPU)
    device sits on the PCI bus."""
    import importlib.util

    attached = host_memory._tpu_chips_attached
    monkeypatch.delenv("JAX_PLATFORMS", raising=False)
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name: object() if name == "libtpu" else None)  # fmt: skip
    monkeypatch.setattr(host_memory, "_tpu_chips_attached", lambda: False)
    assert host_memory.devices_are_cpus()
    monkeypatch.setattr(host_memory, "_tpu_chips_attached", lambda: True)
    assert not host_memory.devices_are_cpus()
    for address, vendor in (("0000:00:04.0", "0x1af4"), ("0000:00:05.0", "0x8086")):
        (tmp_path / address).mkdir()
        (tmp_path / address / "vendor").write_text(vendor + "\n")
    assert not attached(str(tmp_path))
    (tmp_path / "0000:00:06.0").mkdir()
    (tmp_path / "0000:00:06.0" / "vendor").write_text("0x1ae0\n")
    assert attached(str(tmp_path))
