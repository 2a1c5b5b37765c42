"""Metric writers and progress reports: a run without TensorFlow installed writes its
TensorBoard events, metrics and report."""

import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO_ROOT, why_failed

from imgcls_jax.reporting import writers

# A short run on synthetic data in a process where TensorFlow and TFDS cannot be imported
# (as on a GPU machine without them).
NO_TENSORFLOW_RUN = """
import sys
if sys.argv[2] == "blocked":
    sys.modules["tensorflow"] = None
    sys.modules["tensorflow_datasets"] = None
sys.path.insert(0, "tests")
from conftest import synthetic_dataset, tiny_config
from imgcls_jax.training.loop import train_and_evaluate

config = tiny_config(**{"training.num_train_steps": 6, "training.log_every_steps": 2,
                        "training.eval_every_epochs": 1.0, "augment.grid_images": 4})
results = train_and_evaluate(config, sys.argv[1], synthetic_dataset())
assert "tensorflow" not in [m.split(".")[0] for m in sys.modules if sys.modules[m] is not None]
print("RESULTS", results["test/accuracy"])
"""


@pytest.mark.slow
def test_a_run_without_tensorflow_writes_tensorboard_metrics_and_report(tmp_path):
    from tensorboard.backend.event_processing import event_accumulator

    run = subprocess.run([sys.executable, "-c", NO_TENSORFLOW_RUN, str(tmp_path), "blocked"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    assert "RESULTS" in run.stdout
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"), {"tensors": 0})
    events.Reload()
    tags = events.Tags()["tensors"]
    losses = [(e.step, e.tensor_proto.float_val[0]) for e in events.Tensors("train/loss")]
    assert [step for step, _ in losses] == [2, 4, 6] and all(np.isfinite(v) for _, v in losses)
    records = writers.read_metrics(str(tmp_path / "metrics.jsonl"))
    logged = {r["step"]: r["train/loss"] for r in records if "train/loss" in r}
    np.testing.assert_allclose([v for _, v in losses], [logged[s] for s, _ in losses], rtol=1e-6)
    assert "val/accuracy" in tags and "augmented_train_images" in tags
    assert [r["step"] for r in records if "steps_per_sec" in r] == [2, 4, 6]
    hparams = [e for e in events.summary_metadata if "hparams" in e or "_hparams_" in e]
    assert hparams, events.summary_metadata.keys()
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["compute"] == {"dtype": "float32", "kernels": "xla"}


def test_a_run_into_a_local_workdir_does_not_import_installed_tensorflow(tmp_path):
    """TensorBoard's writer would import TensorFlow for its file API (seconds per run); the
    run's writers and checkpoints get by without it."""
    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip("TensorFlow is not installed (the tfds extra installs it)")
    run = subprocess.run([sys.executable, "-c", NO_TENSORFLOW_RUN, str(tmp_path), "installed"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


class _Recorder(writers.MetricWriter):
    def __init__(self):
        self.scalars = []

    def write_scalars(self, step, scalars):
        self.scalars.append((step, dict(scalars)))


def test_progress_is_reported_every_n_steps_from_the_first_step_on(monkeypatch):
    # The time at each of steps 1-9.
    clock = iter([100.0, 101.0, 103.0, 107.0, 108.0, 109.0, 110.0, 111.0, 112.0])
    monkeypatch.setattr(writers.time, "monotonic", lambda: next(clock))
    recorder = _Recorder()
    report = writers.ProgressReporter(total_steps=9, every_steps=3, writer=recorder)
    for step in range(1, 10):
        report(step)
    # Step 1 at t=100 starts the clock (its time holds the compile): steps 2-3 took 3 s,
    # steps 4-6 6 s, steps 7-9 3 s.
    assert recorder.scalars == [(3, {"steps_per_sec": 2 / 3}), (6, {"steps_per_sec": 3 / 6}),
                                (9, {"steps_per_sec": 3 / 3})]  # fmt: skip


def test_writes_reach_every_writer_in_order_and_errors_surface():
    first, second = _Recorder(), _Recorder()
    writer = writers.AsyncMultiWriter([first, second])
    for step in range(5):
        writer.write_scalars(step, {"x": np.float32(step)})
    writer.flush()
    assert [s for s, _ in first.scalars] == list(range(5)) == [s for s, _ in second.scalars]

    class Broken(writers.MetricWriter):
        def write_scalars(self, step, scalars):
            raise OSError("disk full")

    broken = writers.AsyncMultiWriter([Broken()])
    broken.write_scalars(0, {"x": 1.0})
    try:
        broken.close()
    except OSError as e:
        assert "disk full" in str(e)
    else:
        raise AssertionError("the writer's error was lost")


def test_timing_lists_compiles_per_function_with_the_cache_outcome(tmp_path):
    """A function compiled twice in fresh processes: a miss, then a hit."""
    script = """
import sys, json, jax, jax.numpy as jnp
jax.config.update("jax_compilation_cache_dir", sys.argv[1])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
from imgcls_jax.reporting import timing
timing.MIN_LISTED_S = 0
timer = timing.RunTimer()
def costly_function(x):
    for i in range(30):
        x = jnp.sin(x) @ x + i
    return x
jax.jit(costly_function)(jnp.ones((8, 8))).block_until_ready()
timer.stop()
print(json.dumps(timer.summary()["compiled"]["costly_function"]))
"""
    outcomes = []
    for _ in range(2):
        run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=300)  # fmt: skip
        assert run.returncode == 0, why_failed(run)
        outcomes.append(json.loads(run.stdout.strip().splitlines()[-1]))
    assert [o["cache"] for o in outcomes] == ["miss", "hit"]
    assert all(o["compiles"] == 1 and o["compile_s"] > 0 for o in outcomes)


def test_the_evaluation_step_compiled_ahead_is_not_compiled_again():
    from conftest import synthetic_dataset, tiny_config

    from imgcls_jax.reporting import timing
    from imgcls_jax.training.builder import Trainer

    dataset = synthetic_dataset()
    trainer = Trainer(tiny_config(**{"input.eval_batch_size": 24}), dataset)
    state = trainer.create_state()
    timer = timing.RunTimer()
    trainer.compile_eval_step_in_background()
    ahead = trainer.evaluate(state, dataset.test, "test")
    timer.stop()
    compiles = {name: e["compiles"] for name, e in timer.functions.items() if "eval_step" in name}
    assert compiles == {"eval_step": 1}, timer.functions.keys()
    # The same numbers as an evaluation without it.
    plain = Trainer(tiny_config(**{"input.eval_batch_size": 24}), dataset)
    assert plain.evaluate(state, dataset.test, "test") == ahead
