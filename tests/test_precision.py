"""model.dtype=auto: bfloat16 on accelerators, CPUs with AMX and AMD CPUs with AVX-512-BF16,
float32 on other CPUs."""

import jax
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config

from imgcls_jax.runtime import precision
from imgcls_jax.training.builder import Trainer

SAPPHIRE_RAPIDS = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8"})
ICE_LAKE = frozenset({"avx2", "avx512f", "avx512bw"})  # AVX-512, no BF16, no AMX.
COOPER_LAKE = ICE_LAKE | {"avx512_bf16"}  # AVX-512-BF16 without AMX.
GENOA = ICE_LAKE | {"avx512_bf16"}  # AMD Zen 4: AVX-512-BF16 without AMX.
LAPTOP = frozenset({"avx2", "fma"})
INTEL, AMD = "GenuineIntel", "AuthenticAMD"
GRAVITON = frozenset({"fp", "asimd", "bf16", "sve"})  # ARM.


@pytest.mark.parametrize(
    ("platform", "flags", "vendor", "environ", "expected"),
    [
        ("gpu", LAPTOP, INTEL, {}, "bfloat16"),
        ("tpu", frozenset(), "", {}, "bfloat16"),
        ("cpu", SAPPHIRE_RAPIDS, INTEL, {}, "bfloat16"),
        ("cpu", COOPER_LAKE, INTEL, {}, "float32"),
        ("cpu", GENOA, AMD, {}, "bfloat16"),
        ("cpu", ICE_LAKE, INTEL, {}, "float32"),
        ("cpu", ICE_LAKE, AMD, {}, "float32"),  # AVX-512 without BF16 (AMD Zen 3 has none).
        ("cpu", LAPTOP, AMD, {}, "float32"),
        ("cpu", GRAVITON, "", {}, "float32"),
        ("cpu", frozenset(), "", {}, "float32"),  # Flags unreadable.
        ("cpu", SAPPHIRE_RAPIDS, INTEL, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "float32"),
        ("cpu", SAPPHIRE_RAPIDS, INTEL, {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2 --foo"}, "float32"),
        ("cpu", SAPPHIRE_RAPIDS, INTEL, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"}, "bfloat16"),
        ("cpu", SAPPHIRE_RAPIDS, INTEL, {"ONEDNN_MAX_CPU_ISA": "ALL"}, "bfloat16"),
        ("cpu", GENOA, AMD, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, "bfloat16"),
        ("cpu", GENOA, AMD, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "float32"),
        ("cpu", GENOA, AMD, {"XLA_FLAGS": "--xla_cpu_max_isa=AVX512"}, "float32"),
        ("cpu", GENOA, AMD, {"XLA_FLAGS": "--xla_cpu_max_isa=AVX512_BF16"}, "bfloat16"),
    ],
)  # fmt: skip
def test_auto_dtype_for_each_kind_of_device(platform, flags, vendor, environ, expected):
    dtype, reason = precision.auto_dtype(platform, flags, environ, vendor)
    assert dtype == expected and reason
    if platform == "cpu" and expected == "float32" and environ:
        assert "caps" in reason  # Says which setting took the feature away.


def test_explicit_dtypes_win():
    devices = jax.devices()[:1]
    for dtype in ("float32", "bfloat16", "float16"):
        assert precision.resolve(dtype, devices, flags=LAPTOP) == dtype


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nflags\t\t: fpu avx2 amx_bf16 amx_tile\n\nprocessor\t: 1\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert precision.cpu_flags(str(x86)) == {"fpu", "avx2", "amx_bf16", "amx_tile"}
    assert precision.cpu_flags(str(arm)) == {"fp", "asimd", "bf16"}
    assert precision.cpu_flags(str(tmp_path / "missing")) == frozenset()


def test_cpu_vendor_is_read_from_cpuinfo(tmp_path):
    x86 = tmp_path / "x86"
    x86.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    arm = tmp_path / "arm"
    arm.write_text("processor\t: 0\nFeatures\t: fp asimd bf16\n")
    assert precision.cpu_vendor(str(x86)) == "AuthenticAMD"
    assert precision.cpu_vendor(str(arm)) == precision.cpu_vendor(str(tmp_path / "no")) == ""


def _train(flags, monkeypatch, dataset):
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    monkeypatch.setattr(precision, "cpu_vendor", lambda: INTEL)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    config = tiny_config(**{"model.name": "airbench", "model.width": 8, "model.dtype": "auto",
                            "training.num_train_steps": 30, "optimizer.learning_rate": 0.05})  # fmt: skip
    trainer = Trainer(config, dataset)
    state = trainer.create_state()
    from imgcls_jax.data import input_pipeline

    for step in range(config.training.num_train_steps):
        batch = input_pipeline.train_batch(dataset.train, trainer.order, step, trainer.mesh)
        state, _ = trainer.train_step(state, batch, trainer.train_key)
    return trainer, trainer.evaluate(state, dataset.test, "test")


@pytest.mark.slow
def test_auto_trains_the_same_function_in_either_dtype(monkeypatch):
    """The same run with "auto" resolved on a CPU with AMX (bfloat16) and without (float32):
    the model is built in the chosen dtype and both learn the task to the same tolerance."""
    dataset = synthetic_dataset(num_train=512, num_test=200)
    amx, amx_results = _train(SAPPHIRE_RAPIDS, monkeypatch, dataset)
    plain, plain_results = _train(COOPER_LAKE, monkeypatch, dataset)
    assert (amx.dtype, plain.dtype) == ("bfloat16", "float32")
    assert amx.model.dtype == np.dtype("bfloat16") and plain.model.dtype == np.dtype("float32")
    for results in (amx_results, plain_results):
        assert results["test/accuracy"] > 0.9  # Chance is 0.25.
    assert abs(amx_results["test/accuracy"] - plain_results["test/accuracy"]) <= 0.05
    np.testing.assert_allclose(amx_results["test/loss"], plain_results["test/loss"], rtol=0.1)
