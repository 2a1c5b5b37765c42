"""The sweep runner: grid expansion, overrides reaching configs, resume, aggregation, outputs."""

import json
import math
import os

import numpy as np
import pytest
from conftest import tiny_config

from imgcls_jax.training import sweep


def test_expand_takes_every_combination_times_every_seed():
    runs = sweep.expand({"model.width": [4, 8], "optimizer.name": ["sgd", "adamw"]}, [0, 1])
    assert len(runs) == 8
    assert [r.variant for r in runs[::2]] == [
        "model.width=4,optimizer.name=sgd", "model.width=4,optimizer.name=adamw",
        "model.width=8,optimizer.name=sgd", "model.width=8,optimizer.name=adamw",
    ]  # fmt: skip
    assert [r.seed for r in runs[:2]] == [0, 1]
    listed = sweep.expand([{"augment.train": ""}, {"augment.train": "flip_lr"}], [3])
    assert [r.variant for r in listed] == ["augment.train=''", "augment.train=flip_lr"]
    assert listed[0].directory == os.path.join("augment.train=_", "seed_3")
    assert sweep.expand([{}], [0])[0].variant == "base"
    named = sweep.expand([("SGD cosine", {"optimizer.name": "sgd"})], [0])
    assert named[0].variant == "SGD cosine" and named[0].overrides == (("optimizer.name", "sgd"),)
    assert named[0].directory == os.path.join("SGD_cosine", "seed_0")
    with pytest.raises(ValueError, match="same name"):
        sweep.expand([{"a": 1}, {"a": 1}], [0])


def test_overrides_and_seed_reach_each_config_and_bad_keys_fail_first(tmp_path):
    seen = []

    def fake_train(config, workdir, dataset):
        seen.append((config.model.width, config.seed, workdir))
        os.makedirs(workdir)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({"test/accuracy": config.model.width / 100 + config.seed / 1000}, f)

    runs = sweep.expand({"model.width": [4, 8]}, [0, 1])
    rows = sweep.run_sweep(tiny_config(), runs, str(tmp_path), train_fn=fake_train)
    assert [(w, s) for w, s, _ in seen] == [(4, 0), (4, 1), (8, 0), (8, 1)]
    assert seen[3][2] == str(tmp_path / "model.width=8" / "seed_1")
    assert rows[3] == {"variant": "model.width=8", "seed": 1, "model.width": 8,
                       "test/accuracy": 0.081}  # fmt: skip
    with pytest.raises(KeyError, match="model.width"):
        sweep.run_sweep(tiny_config(), sweep.expand({"model.widht": [4]}, [0]), str(tmp_path),
                        train_fn=fake_train)  # fmt: skip
    assert len(seen) == 4  # Nothing trained for the misspelled sweep.


def record_process(config, workdir, dataset):
    """A stand-in for training, importable by the sweep's worker processes."""
    os.makedirs(workdir)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump({"pid": os.getpid(), "width": config.model.width}, f)


def test_parallel_runs_train_in_worker_processes(tmp_path):
    runs = sweep.expand({"model.width": [4, 8, 16]}, [0])
    rows = sweep.run_sweep(tiny_config(), runs, str(tmp_path), parallel=2,
                           train_fn=record_process)  # fmt: skip
    assert [r["width"] for r in rows] == [4, 8, 16]
    assert all(r["pid"] != os.getpid() for r in rows)


def test_aggregate_gives_mean_and_sample_std():
    rows = [{"variant": "a", "accuracy": 0.5}, {"variant": "b", "accuracy": 0.9},
            {"variant": "a", "accuracy": 0.7}, {"variant": "a", "accuracy": 0.9}]  # fmt: skip
    a, b = sweep.aggregate(rows, ["accuracy"])
    assert (a["variant"], a["n"], b["n"]) == ("a", 3, 1)
    assert a["accuracy/mean"] == pytest.approx(0.7)
    assert a["accuracy/std"] == pytest.approx(0.2)  # Sample std (ddof 1) of 0.5, 0.7, 0.9.
    assert b["accuracy/mean"] == 0.9 and math.isnan(b["accuracy/std"])
    table = sweep.summary_table([a, b], ["accuracy"])  # Accuracies in percent.
    assert "| a | 3 | 70.00 ± 20.00 |" in table and "| b | 1 | 90.00 |" in table
    assert "| a | 3 | 0.7000 ± 0.2000 |" in sweep.summary_table(
        sweep.aggregate([{**r, "loss": r["accuracy"]} for r in rows], ["loss"]), ["loss"]
    )


def test_parse_assignments_reads_literals_and_strings():
    parsed = sweep.parse_assignments(["a.b=3", "c=0.5", "d=random_crop(2)|flip_lr", "e=(1, 2)"])
    assert parsed == {"a.b": 3, "c": 0.5, "d": "random_crop(2)|flip_lr", "e": (1, 2)}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        sweep.parse_assignments(["novalue"])


@pytest.mark.slow
def test_real_sweep_resumes_without_rerunning_finished_runs(tmp_path, dataset):
    from imgcls_jax.training.loop import train_and_evaluate

    calls = []

    def counting_train(config, workdir, dataset):
        calls.append(workdir)
        return train_and_evaluate(config, workdir, dataset)

    base = tiny_config(**{"training.num_train_steps": 2, "input.batch_size": 32})
    runs = sweep.expand({"optimizer.learning_rate": [0.0, 0.05]}, [0, 1])
    # A sweep interrupted after its first run: only that run is finished.
    sweep.run_sweep(base, runs[:1], str(tmp_path), dataset, train_fn=counting_train)
    rows = sweep.run_sweep(base, runs, str(tmp_path), dataset, train_fn=counting_train)
    assert len(calls) == 4 and calls.count(calls[0]) == 1
    again = sweep.run_sweep(base, runs, str(tmp_path), dataset, train_fn=counting_train)
    assert len(calls) == 4 and again == rows
    summary = sweep.write_outputs(str(tmp_path), rows, runs, ["test/accuracy"])
    accuracies = [r["test/accuracy"] for r in rows[:2]]
    assert summary[0]["test/accuracy/mean"] == pytest.approx(np.mean(accuracies))
    for name in ("runs.csv", "summary.json", "summary.md", "learning_curves.png",
                 "final_metrics.png"):  # fmt: skip
        assert os.path.getsize(tmp_path / name) > 0
    with open(tmp_path / "runs.csv") as f:
        assert len(f.read().splitlines()) == 1 + 4


def test_vit_data_size_ablation_runs_each_preset_for_its_steps_at_every_size():
    import importlib

    from configs import resnet, vit

    ablation = importlib.import_module("experiments.ablations.vit_data_size")
    base = resnet.get_config("tiny")
    variants = ablation.grid(base, ["input.workers=0"], budget_fraction=0.5)
    assert len(variants) == 9
    runs = sweep.expand(variants, [0])
    configs = {run.variant: sweep.run_config(base, run) for run in runs}
    for size, epochs_factor in ((1000, 27.5), (5000, 5.5), (0, 0.5)):
        for arm, preset in (("ResNet-20", resnet.get_config()),
                            ("ViT-Ti/4 + EMA + stochastic depth", vit.get_config("fashion_mnist"))):  # fmt: skip
            config = configs[f"{size or 55000} images, {arm}"]
            assert config.model.name == preset.model.name
            assert config.optimizer.to_dict() == preset.optimizer.to_dict()
            assert config.augment.to_dict() == preset.augment.to_dict()
            assert config.dataset.train_size == size and config.input.workers == 0
            assert config.training.num_epochs == pytest.approx(
                preset.training.num_epochs * epochs_factor
            )
            steps = config.training.num_epochs * (size or 55000) / config.input.batch_size
            assert steps == pytest.approx(
                0.5 * preset.training.num_epochs * 55000 / preset.input.batch_size
            )
    plain = configs["1000 images, ViT-Ti/4"]
    assert plain.model.drop_path_rate == 0.0 and plain.training.ema_decay == 0.0
    assert configs["1000 images, ViT-Ti/4 + EMA + stochastic depth"].training.ema_decay > 0


def test_sweep_command_refuses_a_misspelled_key_in_one_line(tmp_path):
    import subprocess
    import sys

    from conftest import REPO_ROOT

    run = subprocess.run([sys.executable, "-m", "experiments.run_sweep", f"--root={tmp_path}",
                          '--grid={"model.widht": [4]}'], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert "Unknown config key 'model.widht'. Did you mean 'model.width'?" in run.stderr
    assert not os.listdir(tmp_path)  # Nothing trained.
