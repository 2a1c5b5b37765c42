"""Benchmark scripts run end to end at a tiny size (their numbers are not checked, only sane)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytest.importorskip("torch")


def test_gpu_benchmark_script_times_both_steps_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "experiments/bench_gpu.py", "--model=resnet8", "--image_size=32",
         "--batch_size=8", "--steps=2", "--warmup=1", "--num_classes=10", "--peak_tflops=1",
         f"--out={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(out.read_text())
    ours, torch_row = (
        result["rows"]["imgcls_jax (jit, bf16)"],
        result["rows"]["PyTorch eager AMP bf16"],
    )
    for row in (ours, torch_row):
        assert row["images_per_sec"] > 0
        assert row["mfu"] == pytest.approx(
            result["train_flops_per_image"] * row["images_per_sec"] / (1e12 * ours["devices"])
        )
    # ResNet-8 (width 64, ImageNet stem) at 32 px: the 7x7 stem conv alone is
    # 16*16 outputs x 64 channels x 7*7*3 MACs = 2.4 MFLOP; the whole net is more, far below 1 GFLOP.
    assert 2.4e6 < ours["forward_flops_per_image"] < 1e9
    assert "ours / PyTorch" in run.stdout
