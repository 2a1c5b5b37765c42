"""Benchmark scripts run end to end at a tiny size (their numbers are not checked, only sane)."""

import json
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

pytest.importorskip("torch")


def _run(script: str, *flags: str) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, f"experiments/{script}", *flags], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_gpu_benchmark_script_times_both_steps_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    run = _run("bench_gpu.py", "--model=resnet8", "--image_size=32", "--batch_size=8",
               "--steps=2", "--warmup=1", "--num_classes=10", "--peak_tflops=1", f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    for row in result["rows"].values():
        assert row["images_per_sec"] > 0
        expected_mfu = result["train_flops_per_image"] * row["images_per_sec"] / result["devices"]
        assert row["mfu"] == pytest.approx(expected_mfu / 1e12)
    # ResNet-8 (width 64, ImageNet stem) at 32 px: the 7x7 stem conv alone is 16*16 outputs x
    # 64 channels x 7*7*3 multiply-adds = 4.8 MFLOP forward; the whole net is more, < 1 GFLOP.
    assert 3 * 4.8e6 < result["train_flops_per_image"] < 3e9
    assert "ours / PyTorch" in run.stdout


def test_input_benchmark_streams_real_jpegs_at_tiny_size(tmp_path):
    out = tmp_path / "bench.json"
    run = _run("bench_input.py", "--images=60", "--image_size=32", "--model=resnet8",
               "--width=4", "--batch_size=8", "--steps=2", "--threads=2", f"--out={out}")  # fmt: skip
    result = json.loads(out.read_text())
    assert set(result["decode_img_per_s"]) == {"folder/1", "folder/2", "tfds/1", "tfds/2"}
    assert all(rate > 0 for rate in result["decode_img_per_s"].values())
    assert (
        result["tfrecord_index_records_per_s"] > 0 < result["tfrecord_index_cached_records_per_s"]
    )
    fed = {loop["input"]: loop for loop in result["loops"]}
    assert set(fed) == {"one batch on device", "JPEGs streamed from an image folder",
                        "JPEGs streamed from TFDS TFRecords"}  # fmt: skip
    for loop in fed.values():
        assert 0 <= loop["waited_fraction"] <= 1 and loop["img_per_s"] > 0
    assert "share of step waiting" in run.stdout
