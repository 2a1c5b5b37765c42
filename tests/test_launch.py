"""launch.py end to end on real Fashion-MNIST: train, write everything, relaunch and resume."""

import json
import os
import shlex
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, why_failed

from imgcls_jax.data import fashion_mnist_files
from imgcls_jax.reporting import writers

pytestmark = pytest.mark.skipif(
    not fashion_mnist_files.available(), reason="needs Debian's dataset-fashion-mnist"
)


def _launch(workdir, *overrides, devices=2):
    """launch.py as a user's shell starts it: JAX_PLATFORMS unset (launch.py picks the CPU
    itself where no accelerator is attached, even with libtpu installed)."""
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return subprocess.run(
        [sys.executable, "launch.py", "--config=configs/resnet.py:tiny", f"--workdir={workdir}",
         *overrides],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


@pytest.mark.slow
def test_launch_trains_checkpoints_and_resumes(tmp_path):
    run = _launch(tmp_path)
    assert run.returncode == 0, why_failed(run)
    assert "backend 'tpu'" not in run.stderr  # libtpu (if installed) was not started.
    results = json.loads((tmp_path / "results.json").read_text())
    assert os.path.isdir(tmp_path / "checkpoints" / "6")
    assert os.path.isdir(tmp_path / "checkpoints" / str(results["best_step"]))
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
    records = writers.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in records if "train/loss" in r][:3] == [2, 3, 4]
    assert any("val/accuracy" in r for r in records)
    assert results["step"] == 6
    assert results["test/num_examples"] == 10000 and results["val/num_examples"] == 5000
    assert 0.0 <= results["test/accuracy"] <= 1.0 and "test/top5_accuracy" in results
    assert "parameters" in run.stderr and "steps_per_sec" in run.stderr
    assert "freed memory is kept for reuse" in run.stderr

    resumed = _launch(tmp_path, "--config.training.num_train_steps=8")
    assert resumed.returncode == 0, why_failed(resumed)
    assert "Resumed from step 6" in resumed.stderr
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 8


def test_launch_rejects_misspelled_override(tmp_path):
    run = _launch(tmp_path, "--config.optimizer.learnin_rate=0.1")
    assert run.returncode != 0
    assert 'Did you mean "learning_rate"' in run.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


@pytest.mark.parametrize(
    "config, flag, message",
    [
        ("tiny", "--config.input.batch_size=abc", "launch.py: flag --config.input.batch_size=abc: invalid literal"),
        ("tny", "", "launch.py: ValueError: Unknown preset 'tny' in configs/resnet.py. Did you mean 'tiny'?"),
        ("tiny", "--config.training.keep_checkpoints=0", "launch.py: ValueError: config.training.keep_checkpoints=0 is out of range"),
        ("tiny", "--config.augment.train=flip_lr(2.5)", "probability=2.5 must be a number in [0, 1]"),
        ("tiny", "WORKDIR_IS_A_FILE", "is not a writable directory (File exists): choose another --workdir"),
    ],
)  # fmt: skip
def test_user_mistakes_end_in_one_line_without_a_traceback(tmp_path, config, flag, message):
    workdir = tmp_path / "run"
    if flag == "WORKDIR_IS_A_FILE":
        workdir.write_text("not a directory")
        flag = ""
    run = subprocess.run(
        [sys.executable, "launch.py", f"--config=configs/resnet.py:{config}",
         f"--workdir={workdir}", *filter(None, [flag])],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode != 0
    assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert message in run.stderr.strip().splitlines()[-1]
    assert workdir.is_file() or not workdir.exists()  # Nothing made for a bad config.
    if "workdir" not in message:  # The config is logged once it is valid.
        assert "Config:" not in run.stderr


def test_render_augmentations_script_writes_the_grid(tmp_path):
    from PIL import Image

    out = tmp_path / "grid.png"
    run = subprocess.run(
        [sys.executable, "-m", "experiments.render_augmentations", "--config=configs/resnet.py:tiny",
         "--config.augment.train=randaugment(2,9)", f"--out={out}", "--count=9"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    grid = np.asarray(Image.open(out))
    assert grid.shape == (3 * 29 + 1, 3 * 29 + 1)  # 9 Fashion-MNIST images, 28 px + borders.
    assert grid[1:29, 1:29].std() > 0  # A real image, not blank.


@pytest.mark.slow
def test_a_diverged_run_recovers_through_the_command_it_prints(tmp_path):
    """lr=1e6 from the start: every saved step already holds diverging weights, so the
    printed relaunch starts over in the same workdir (the saved steps set aside, not deleted)
    with a 10x lower learning rate (1e5 still diverges: so does that, printing the next),
    until a run finishes. Nothing it trains on or saves is inf or NaN."""
    # One CPU device: the oneDNN batch norm, whose statistics overflow here (step 3) while
    # that step's loss and gradient are still finite.
    flags = ["--config.training.checkpoint_every_steps=1", "--config.augment.grid_images=0"]
    run = _launch(tmp_path, "--config.optimizer.learning_rate=1e6", *flags, devices=1)
    for _ in range(8):
        if run.returncode == 0:
            break
        last = run.stderr.strip().splitlines()[-1]
        assert "Non-finite loss, gradient or new state at step" in last, why_failed(run)
        assert "--config.training.restore_step=0 " in last  # Back to the start: all diverged.
        command = shlex.split(last.split(" Relaunch: ")[1])
        assert command[:2] == ["python", "launch.py"]
        env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
        env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
        run = subprocess.run([sys.executable, *command[1:]], cwd=REPO_ROOT, env=env,
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["step"] == 6 and np.isfinite(results["test/loss"])
    steps = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints"))
    _assert_every_checkpoint_is_finite(tmp_path, steps)
    assert os.listdir(tmp_path / "set_aside_checkpoints")  # The diverged steps, kept.


def _assert_every_checkpoint_is_finite(workdir, steps):
    import jax
    from conftest import tiny_config

    from imgcls_jax.checkpoint import Checkpointer
    from imgcls_jax.training.builder import Trainer

    abstract = Trainer(tiny_config(**{"model.kernels": "xla"})).abstract_state()
    checkpointer = Checkpointer(str(workdir), 10)
    try:
        assert checkpointer.manager.all_steps() == steps
        for step in steps:
            state, _ = checkpointer.restore_step(step, abstract)  # Refuses inf or NaN too.
            assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state)))
    finally:
        checkpointer.close()


@pytest.mark.slow
def test_a_relaunch_loads_its_programs_from_the_compilation_cache(tmp_path, monkeypatch):
    """--compilation_cache (on by default): the first run writes every program it compiles,
    a second run of the same config (another workdir) finds them all and writes none."""
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)  # The tests' shared cache.
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # Cache everything.
    cache = tmp_path / "cache"
    overrides = (f"--compilation_cache={cache}", "--config.training.num_train_steps=2")
    first = _launch(tmp_path / "first", *overrides)
    assert first.returncode == 0, why_failed(first)

    def entries():  # Compiled programs (not JAX's access-time files) and when written.
        return {p.name: p.stat().st_mtime_ns for p in cache.iterdir() if "atime" not in p.name}

    written = entries()
    assert len(written) >= 3, written  # At least the init, train and eval programs.
    second = _launch(tmp_path / "second", *overrides)
    assert second.returncode == 0, why_failed(second)
    assert entries() == written  # Every program found; none compiled and written again.
