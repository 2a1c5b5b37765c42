"""The evaluation suites in a run and in `imgcls-evaluate`: corruption accuracy that does not
depend on the batch layout, the probe on the model's own features, the clean path equal to the
run's test accuracy, the command against the run."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from conftest import REPO_ROOT, synthetic_dataset, tiny_config, trainer_restore

from imgcls_jax.evaluation import few_shot, suites
from imgcls_jax.inference import evaluate
from imgcls_jax.models import features
from imgcls_jax.training import steps, trained_model
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.loop import train_and_evaluate

SUITE_CONFIG = {
    "evaluation.corruptions": "gaussian_noise,contrast,jpeg_compression",
    "evaluation.corruption_severities": (1, 5),
    "evaluation.few_shot_shots": (1, 5),
    "evaluation.few_shot_seeds": 2,
    "evaluation.few_shot_train_examples": 200,
}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run with both suites every half of its 16 steps."""
    workdir = tmp_path_factory.mktemp("suites")
    config = tiny_config(**{"training.num_train_steps": 16, "input.batch_size": 32,
                            "input.eval_batch_size": 40, "model.width": 8,
                            "evaluation.corruptions_every_epochs": 1.0,
                            "evaluation.few_shot_every_epochs": 1.0, **SUITE_CONFIG})  # fmt: skip
    dataset = synthetic_dataset()
    results = train_and_evaluate(config, str(workdir), dataset)
    return config, dataset, str(workdir), results


@pytest.mark.slow
def test_a_run_reports_its_suites_at_their_interval_and_at_the_end(run):
    config, dataset, workdir, results = run
    logged = [json.loads(line) for line in open(f"{workdir}/metrics.jsonl", encoding="utf-8")]
    at_eight = [r for r in logged if r.get("step") == 8 and "test_c/mean" in r]
    assert at_eight and "few_shot/5shot_accuracy" in at_eight[0]  # 8 steps per epoch.
    names = ("gaussian_noise", "contrast", "jpeg_compression")
    for name in names:
        values = [results[f"test_c/{name}_{s}"] for s in (1, 5)]
        assert results[f"test_c/{name}"] == pytest.approx(np.mean(values))
    assert results["test_c/mean"] == pytest.approx(np.mean([results[f"test_c/{n}"] for n in names]))
    # The clean pass of the suite is the run's own test evaluation (same weights, examples).
    assert results["test_c/clean"] == pytest.approx(results["test/accuracy"], abs=1e-9)
    assert results["test_c/gaussian_noise_5"] < results["test_c/clean"]
    assert 0 <= results["few_shot/1shot_accuracy_std"] and results["few_shot/5shot_accuracy"] > 0.25


@pytest.mark.slow
def test_corrupted_accuracy_does_not_depend_on_the_batches_devices_or_fsdp(run):
    config, dataset, workdir, results = run
    state = trainer_restore(Trainer(config, dataset), workdir)[0]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    eight_devices = Trainer(config, dataset)  # 8 devices, batches of 40.
    one_device = Trainer(tiny_config(**{"input.eval_batch_size": 7, "input.batch_size": 32,
                                        "model.width": 8, **SUITE_CONFIG}),
                         dataset, jax.devices()[:1])  # fmt: skip
    fsdp = Trainer(tiny_config(**{"training.num_train_steps": 16, "input.batch_size": 32,
                                  "input.eval_batch_size": 40, "model.width": 8,
                                  "mesh.fsdp": 2, "mesh.fsdp_min_bytes": 0, **SUITE_CONFIG}),
                   dataset)  # fmt: skip
    split = trainer_restore(fsdp, workdir)[0]  # The weights split over pairs of devices.
    split_variables = {"params": split.params, "batch_stats": split.batch_stats}
    for name in ("gaussian_noise", "contrast"):
        a = eight_devices.suites.accuracy(jax.device_get(variables), dataset.test, name, 3)
        b = one_device.suites.accuracy(jax.device_get(variables), dataset.test, name, 3)
        c = fsdp.suites.accuracy(split_variables, dataset.test, name, 3)
        assert a == b == c, name


@pytest.mark.slow
def test_the_probe_runs_on_the_models_own_prelogit_features(run):
    config, dataset, workdir, results = run
    trainer = Trainer(config, dataset)
    state = trainer_restore(trainer, workdir)[0]
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    train = trainer.suites.features(variables, dataset.train)
    direct = features.prelogit_features(
        trainer.model, jax.device_get(variables),
        steps.normalize(dataset.train.images.astype(np.float32), trainer.mean, trainer.std),
    )  # fmt: skip
    np.testing.assert_allclose(train, direct, rtol=1e-4, atol=1e-5)
    pool = suites.data.subset(dataset.train, 200, suites.FEW_SHOT_DRAW_SEED)
    expected = few_shot.probe(trainer.suites.features(variables, pool), pool.labels,
                              trainer.suites.features(variables, dataset.test), dataset.test.labels,
                              4, shots=(1, 5), seeds=(0, 1), l2=1024.0)  # fmt: skip
    for key, value in expected.items():
        assert results[key] == pytest.approx(value, abs=1e-6), key


@pytest.mark.slow
def test_the_evaluate_function_reproduces_the_runs_numbers(run):
    config, dataset, workdir, results = run
    trained = trained_model.load_workdir(workdir, "latest")
    evaluation = evaluate.evaluation_config(trained.description)
    assert evaluation.corruptions == SUITE_CONFIG["evaluation.corruptions"]
    ours = evaluate.evaluate(trained, dataset, evaluate.SUITES, evaluation, 40,
                             extra_splits={"val": dataset.validation})  # fmt: skip
    assert ours["test/accuracy"] == pytest.approx(results["test/accuracy"], abs=1e-9)
    assert ours["val/accuracy"] == pytest.approx(results["val/accuracy"], abs=1e-9)
    for key in results:
        if key.startswith(("test_c/", "few_shot/")):
            assert ours[key] == pytest.approx(results[key], abs=1e-6), key
    with pytest.raises(ValueError, match="Unknown suite"):
        evaluate.evaluate(trained, dataset, ["corruption"], evaluation, 40)


def test_an_unknown_corruption_is_refused_with_the_closest_name():
    from imgcls_jax.training import config_check

    with pytest.raises(ValueError, match="'gausian_noise', not a corruption. Did you mean"):
        config_check.validate(tiny_config(**{"evaluation.corruptions": "gausian_noise"}))


@pytest.mark.slow
def test_the_command_evaluates_a_fashion_mnist_workdir(tmp_path):
    from imgcls_jax.data import fashion_mnist_files

    if not fashion_mnist_files.available():
        pytest.skip("Debian's Fashion-MNIST files are not installed.")
    config = tiny_config(**{"training.num_train_steps": 4, "dataset.validation_size": 500,
                            "evaluation.corruptions": "contrast"})  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path))
    out = tmp_path / "eval.json"
    command = [sys.executable, "-m", "imgcls_jax.inference.evaluate", f"--workdir={tmp_path}",
               "--suites=test,corruptions", "--severities=2", "--corruption_examples=300",
               f"--out={out}"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads(out.read_text())["results"]
    assert written["test/accuracy"] == pytest.approx(results["best_test/accuracy"]
                                                     if "best_test/accuracy" in results
                                                     else results["test/accuracy"], abs=1e-9)  # fmt: skip
    assert set(written) >= {"test_c/contrast_2", "test_c/mean", "test_c/clean"}
    assert "| test_c/contrast_2 |" in done.stdout
    bad = subprocess.run([*command[:3], f"--workdir={tmp_path}", "--corruptions=fog"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert bad.returncode == 1 and bad.stderr.strip().splitlines()[-1].startswith("evaluate: ")


@pytest.mark.slow
def test_a_vit_evaluates_at_another_resolution_through_resampled_position_embeddings(tmp_path):
    import jax.numpy as jnp

    from imgcls_jax import augment

    dataset = synthetic_dataset()
    config = tiny_config(**{"model.name": "vit_ti", "model.patch_size": 4, "augment.train": "",
                            "training.num_train_steps": 2, "input.batch_size": 32,
                            "optimizer.name": "adamw", "optimizer.learning_rate": 1e-3})  # fmt: skip
    train_and_evaluate(config, str(tmp_path), dataset)
    trained = trained_model.load_workdir(str(tmp_path), "latest")
    table = trained.variables["params"]["pos_embedding"]
    assert table.shape[1] == 1 + 2 * 2  # Made for 8 px / patch 4, with the class token.
    evaluation = evaluate.evaluation_config(trained.description)
    ours = evaluate.evaluate(trained, dataset, ["test"], evaluation, 40,
                             eval_pipeline="resize(12)")  # fmt: skip
    images = augment.build_eval_fn("resize(12)")(jnp.asarray(dataset.test.images))
    logits = trained.model.apply(trained.variables, steps.normalize(images, (0.2860,), (0.3530,)),
                                 train=False)  # fmt: skip
    expected = float(np.mean(np.asarray(np.argmax(logits, -1)) == dataset.test.labels))
    assert ours["test/accuracy"] == pytest.approx(expected, abs=1e-9)
    with pytest.raises(ValueError, match="does not fit the model's 8 px images"):
        evaluate.evaluate(trained, dataset, ["test"], evaluation, 40,
                          eval_pipeline="center_crop(20)")  # fmt: skip


def test_an_extra_tfds_split_is_read_as_the_runs_images_and_its_classes_checked(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
    description = {"dataset": {"data_dir": "", "download": False}, "image_size": 28,
                   "channels": 1, "class_names": [str(i) for i in range(10)]}  # fmt: skip
    with tfds.testing.mock_data(num_examples=12):
        split = evaluate.load_extra_split("mnist:test", description)
        assert split.images.shape == (12, 28, 28, 1) and split.images.dtype == np.uint8
        assert split.labels.max() < 10
        with pytest.raises(ValueError, match="evaluate on a split of the same classes"):
            evaluate.load_extra_split(
                "mnist:test", {**description, "class_names": list("abcdefghij")}
            )
        with pytest.raises(ValueError, match="the model takes 3"):
            evaluate.load_extra_split("mnist:test", {**description, "channels": 3})
    with pytest.raises(ValueError, match="must be a TFDS NAME:SPLIT"):
        evaluate.load_extra_split("mnist", description)
