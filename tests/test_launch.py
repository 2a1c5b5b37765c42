"""launch.py end to end on real Fashion-MNIST: train, write everything, relaunch and resume."""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from imgcls_jax import reporting
from imgcls_jax.data import fashion_mnist_files

pytestmark = pytest.mark.skipif(
    not fashion_mnist_files.available(), reason="needs Debian's dataset-fashion-mnist"
)


def _launch(workdir, *overrides):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    return subprocess.run(
        [sys.executable, "launch.py", "--config=configs/resnet.py:tiny", f"--workdir={workdir}",
         *overrides],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_launch_trains_checkpoints_and_resumes(tmp_path):
    run = _launch(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    assert os.path.isdir(tmp_path / "checkpoints" / "6")
    assert len(os.listdir(tmp_path / "best")) == 1
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    records = reporting.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records if "train/loss" in r][:3] == [2, 3, 4]
    assert any("val/accuracy" in r for r in records)
    results = json.load(open(tmp_path / "results.json"))
    assert results["step"] == 6
    assert results["test/num_examples"] == 10000 and results["val/num_examples"] == 5000
    assert 0.0 <= results["test/accuracy"] <= 1.0 and "test/top5_accuracy" in results
    assert "parameters" in run.stderr and "steps_per_sec" in run.stderr
    assert "freed memory is kept for reuse" in run.stderr

    resumed = _launch(tmp_path, "--config.training.num_train_steps=8")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resumed from step 6" in resumed.stderr
    assert json.load(open(tmp_path / "results.json"))["step"] == 8


def test_launch_rejects_misspelled_override(tmp_path):
    run = _launch(tmp_path, "--config.optimizer.learnin_rate=0.1")
    assert run.returncode != 0
    assert 'Did you mean "learning_rate"' in run.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


def test_render_augmentations_script_writes_the_grid(tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "grid.png"
    run = subprocess.run(
        [sys.executable, "experiments/render_augmentations.py", "--config=configs/resnet.py:tiny",
         "--config.augment.train=randaugment(2,9)", f"--out={out}", "--count=9"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 29 + 1, 3 * 29 + 1)  # 9 Fashion-MNIST images, 28 px + borders.
    assert grid[1:29, 1:29].std() > 0  # A real image, not blank.
