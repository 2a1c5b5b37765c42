"""The training loop: 1 vs 8 devices, exact resume, overfitting, compile-once, evaluation."""

import dataclasses
import io
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config, train_steps, trainer_restore

from imgcls_jax import data
from imgcls_jax.config import apply_overrides
from imgcls_jax.reporting import writers
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.loop import train_and_evaluate


def _params(workdir, config, dataset):
    trainer = Trainer(config, dataset)
    state, _ = trainer_restore(trainer, workdir)
    return state.params


def _train_losses(workdir):
    return [
        r["train/loss"]
        for r in writers.read_metrics(str(workdir / "metrics.jsonl"))
        if "train/loss" in r
    ]


@pytest.mark.slow
def test_one_device_matches_eight(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 4, "input.batch_size": 32})
    assert len(jax.devices()) == 8
    one = train_and_evaluate(config, str(tmp_path / "one"), dataset, devices=jax.devices()[:1])
    eight = train_and_evaluate(config, str(tmp_path / "eight"), dataset)
    np.testing.assert_allclose(
        _train_losses(tmp_path / "one"), _train_losses(tmp_path / "eight"), rtol=1e-5
    )
    params_one = _params(tmp_path / "one", config, dataset)
    params_eight = _params(tmp_path / "eight", config, dataset)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        params_one,
        params_eight,
    )
    assert one["val/accuracy"] == pytest.approx(eight["val/accuracy"])


@pytest.mark.slow
def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, dataset):
    k = 5  # Not an epoch boundary: 256 examples / batch 32 = 8 steps per epoch.
    config = tiny_config(**{"training.num_train_steps": 2 * k, "input.batch_size": 32,
                            "training.checkpoint_every_steps": k, "training.eval_every_epochs": 10.0,
                            "augment.train": "random_crop(2)|flip_lr"})  # fmt: skip
    train_and_evaluate(config, str(tmp_path / "full"), dataset)
    # The workdir of a run killed right after its step-k save: only checkpoint k exists.
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(2 * k))
    assert trainer_restore(Trainer(config, dataset), tmp_path / "resumed")[0].step == k
    train_and_evaluate(config, str(tmp_path / "resumed"), dataset)
    a = trainer_restore(Trainer(config, dataset), tmp_path / "full")[0]
    b = trainer_restore(Trainer(config, dataset), tmp_path / "resumed")[0]
    assert int(a.step) == int(b.step) == 2 * k
    jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
    jax.tree.map(np.testing.assert_array_equal, a.opt_state, b.opt_state)
    jax.tree.map(np.testing.assert_array_equal, a.batch_stats, b.batch_stats)


@pytest.mark.slow
def test_device_resident_and_host_fed_training_end_identical(tmp_path, dataset):
    runs = {}
    for mode in ("on", "off"):
        config = tiny_config(**{"training.num_train_steps": 9, "input.batch_size": 32,
                                "input.device_resident": mode,
                                "augment.train": "random_crop(2)|flip_lr"})  # fmt: skip
        trainer = Trainer(config, dataset)
        assert (trainer.resident is not None) == (mode == "on")
        train_and_evaluate(config, str(tmp_path / mode), dataset)
        runs[mode] = trainer_restore(trainer, tmp_path / mode)[0]
    jax.tree.map(np.testing.assert_array_equal, runs["on"], runs["off"])


@pytest.mark.slow
def test_overfits_one_batch_and_compiles_once():
    dataset = synthetic_dataset(num_train=16, num_classes=4)
    config = tiny_config(**{"input.batch_size": 16, "optimizer.name": "adamw",
                            "optimizer.learning_rate": 0.01, "optimizer.weight_decay": 0.0,
                            "model.width": 8, "augment.train": "", "loss.label_smoothing": 0.0,
                            "schedule.name": "constant"})  # fmt: skip
    trainer = Trainer(config, dataset)
    state = trainer.create_state()
    batch = {"image": jnp.asarray(dataset.train.images), "label": jnp.asarray(dataset.train.labels)}
    for _ in range(100):
        state, metrics = trainer.train_step(state, batch, trainer.train_key)
    final = metrics.compute()
    assert final["loss"] < 0.05
    assert final["accuracy"] == 1.0
    assert trainer.train_step._cache_size() == 1


def test_eval_counts_every_example_once(dataset):
    config = tiny_config(**{"input.eval_batch_size": 24})  # 70 test examples: 24 + 24 + 22 padded.
    trainer = Trainer(config, dataset)
    state = trainer.create_state()
    metrics = trainer.evaluate(state, dataset.test, "test")
    assert metrics["test/num_examples"] == len(dataset.test) == 70
    # Accuracy equals a plain numpy computation over the unpadded logits.
    logits = np.asarray(
        trainer.model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            (dataset.test.images.astype(np.float32) / 255 - 0.2860) / 0.3530,
        )
    )
    predicted, labels = np.argmax(logits, -1), dataset.test.labels
    assert metrics["test/accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-6)
    log_probs = jax.nn.log_softmax(np.asarray(logits, np.float64))
    loss = -np.mean(np.take_along_axis(np.asarray(log_probs), labels[:, None], axis=1))
    assert metrics["test/loss"] == pytest.approx(loss, rel=1e-5)
    # The batches' metrics are merged into the empty ones in the step: the same counts.
    _, matrix = trainer.evaluate_with_confusion(state, dataset.test, "test")
    expected = np.zeros((4, 4), np.int64)
    np.add.at(expected, (labels, predicted), 1)
    np.testing.assert_array_equal(matrix, expected)
    assert trainer.eval_step._cache_size() == 1  # The empty metrics are placed as results.


@pytest.mark.slow
def test_end_to_end_learns_synthetic_task(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 40, "input.batch_size": 32,
                            "optimizer.learning_rate": 0.05, "model.width": 8,
                            "training.log_every_steps": 4})  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), dataset)
    assert results["val/accuracy"] > 0.9 and results["test/accuracy"] > 0.9
    assert results["test/num_examples"] == 70
    # The train and evaluation steps compile once each, for the first step after a log (fresh
    # metrics) as for the others, and for each evaluation's first batch as for the others.
    compiled = json.loads((tmp_path / "timing.json").read_text())["compiled"]
    assert compiled["train_steps"]["compiles"] == compiled["eval_step"]["compiles"] == 1


@pytest.mark.slow
def test_without_validation_training_is_the_same_and_only_test_is_evaluated(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 16, "input.batch_size": 32,
                            "training.eval_every_epochs": 1.0})  # fmt: skip
    held_out = train_and_evaluate(config, str(tmp_path / "held_out"), dataset)
    no_validation = apply_overrides(config, {"dataset.validation_size": 0})
    unvalidated = dataclasses.replace(dataset, validation=None)
    results = train_and_evaluate(no_validation, str(tmp_path / "none"), unvalidated)
    assert not [key for key in results if key.startswith(("val/", "best"))]
    assert results["test/accuracy"] == pytest.approx(held_out["test/accuracy"])
    assert results["test/loss"] == pytest.approx(held_out["test/loss"], rel=1e-5)
    np.testing.assert_allclose(
        _train_losses(tmp_path / "none"), _train_losses(tmp_path / "held_out"), rtol=1e-6
    )
    assert sorted(os.listdir(tmp_path / "none" / "checkpoints")) == ["16", "8"]
    assert not os.path.exists(tmp_path / "none" / "best")
    report = (tmp_path / "none" / "report.md").read_text()
    assert "\n| test/accuracy |" in report and "\n| val/" not in report  # No val metric rows.
    with pytest.raises(ValueError, match="neither a validation nor a test split"):
        Trainer(no_validation, dataclasses.replace(unvalidated, test=None))


@pytest.mark.slow
def test_early_stopping_stops_and_stays_stopped(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 200, "input.batch_size": 32,
                            "optimizer.learning_rate": 0.0, "training.eval_every_epochs": 0.125,
                            "training.early_stopping_patience": 2})  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), dataset)
    # lr 0: validation accuracy never improves after the first evaluation (step 1).
    assert results["stopped_early"] and results["step"] == 3
    again = train_and_evaluate(config, str(tmp_path), dataset)
    assert again["step"] == 3


@pytest.mark.slow
def test_mixup_cutmix_train_and_compose_with_label_smoothing(dataset):
    from imgcls_jax.training import steps

    logits = jnp.array([[2.0, 0.0, -1.0, 0.5]])
    soft = jnp.array([[0.7, 0.3, 0.0, 0.0]])
    smoothed = soft * 0.9 + 0.1 / 4
    expected = -jnp.sum(smoothed * jax.nn.log_softmax(logits), -1)
    np.testing.assert_allclose(steps.cross_entropy(logits, soft, 0.1), expected, rtol=1e-6)

    config = tiny_config(**{"input.batch_size": 32, "augment.mixup_alpha": 0.2,
                            "augment.cutmix_alpha": 1.0})  # fmt: skip
    trainer = Trainer(config, dataset)
    state = trainer.create_state()
    batch = {
        "image": jnp.asarray(dataset.train.images[:32]),
        "label": jnp.asarray(dataset.train.labels[:32]),
    }
    for _ in range(3):
        state, metrics = trainer.train_step(state, batch, trainer.train_key)
    assert np.isfinite(float(metrics.compute()["loss"]))
    assert trainer.train_step._cache_size() == 1


def test_flip_tta_makes_evaluation_mirror_invariant(dataset):
    mirrored = data.Split(dataset.test.images[:, :, ::-1].copy(), dataset.test.labels)
    for tta in (False, True):
        trainer = Trainer(tiny_config(**{"augment.eval_flip_tta": tta}), dataset)
        state = trainer.create_state()
        plain = trainer.evaluate(state, dataset.test, "test")
        flipped = trainer.evaluate(state, mirrored, "test")
        if tta:  # The mean of f(x) and f(mirror x) is the same for x and its mirror.
            assert flipped["test/loss"] == pytest.approx(plain["test/loss"], rel=1e-6)
            assert flipped["test/accuracy"] == plain["test/accuracy"]
        else:  # A random-init network is not mirror invariant, so the check above can fail.
            assert flipped["test/loss"] != pytest.approx(plain["test/loss"], rel=1e-6)


def test_eval_preprocessing_runs_on_device_and_validates(dataset):
    from imgcls_jax.training import config_check

    resized = tiny_config(**{"augment.eval": "resize(16)|center_crop(12)"})
    trainer = Trainer(resized, dataset)
    batch = {"image": jnp.asarray(dataset.test.images[:8])}
    assert trainer.eval_step.lower(
        trainer.create_state(), {**batch, "label": jnp.zeros(8, jnp.int32),
                                 "mask": jnp.ones(8, bool)}, trainer.empty_eval_metrics(),
    ).compile() is not None  # fmt: skip
    assert trainer.evaluate(trainer.create_state(), dataset.test, "test")["test/num_examples"] == 70
    with pytest.raises(ValueError, match="Did you mean 'center_crop'"):
        config_check.validate(tiny_config(**{"augment.eval": "centre_crop(8)"}))


def test_augmentation_grid_shows_what_the_first_step_sees(tmp_path, dataset):
    from PIL import Image
    from tensorboard.backend.event_processing import event_accumulator

    from imgcls_jax.reporting import plots
    from imgcls_jax.training import loop

    config = tiny_config(**{"training.num_train_steps": 1, "input.batch_size": 32,
                            "augment.train": "flip_lr", "augment.grid_images": 12})  # fmt: skip
    train_and_evaluate(config, str(tmp_path), dataset)
    trainer = Trainer(config, dataset)
    shown = trainer.augmented_images(0, 12)
    # Each shown image is the step-0 batch's image or its mirror (flip_lr), in batch order.
    raw = dataset.train.images[trainer.order.indices(0)][:12].astype(np.float32)
    assert all(np.array_equal(s, r) or np.array_equal(s, r[:, ::-1]) for s, r in zip(shown, raw))
    assert any(not np.array_equal(s, r) for s, r in zip(shown, raw))
    png = np.asarray(Image.open(tmp_path / loop.AUGMENTATION_GRID_FILE))
    np.testing.assert_array_equal(png, plots.image_grid(shown)[..., 0])
    assert png.shape == (3 * 9 + 1, 4 * 9 + 1)  # 12 images of 8x8: 4 columns, 1 px borders.
    events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard"), {"tensors": 0})
    events.Reload()
    (event,) = events.Tensors("augmented_train_images")
    width, height, encoded = event.tensor_proto.string_val  # TensorBoard's image summary.
    assert (int(height), int(width)) == png.shape
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(encoded))), png)


def test_image_grid_places_images_row_by_row():
    from imgcls_jax.reporting import plots

    images = np.stack([np.full((2, 3, 1), i * 10, np.uint8) for i in range(5)])
    grid = plots.image_grid(images, columns=2)
    assert grid.shape == (3 * 3 + 1, 2 * 4 + 1, 1)
    assert grid[1, 1, 0] == 0 and grid[1, 5, 0] == 10 and grid[4, 1, 0] == 20
    assert grid[7, 5, 0] == 255  # The empty sixth cell stays white, like the borders.
    assert grid[0].min() == 255 and grid[:, 0].min() == 255


@pytest.mark.slow
@pytest.mark.parametrize("spec", ["2:4", "3:9"])  # The second runs past the last step (4).
def test_profile_steps_write_a_trace_for_tensorboard(tmp_path, dataset, spec):
    config = tiny_config(**{"training.num_train_steps": 4, "input.batch_size": 32,
                            "training.profile_steps": spec, "augment.grid_images": 0})  # fmt: skip
    train_and_evaluate(config, str(tmp_path), dataset)
    traces = list((tmp_path / "tensorboard" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 0, traces
    assert b"train" in traces[0].read_bytes()  # The step annotations.


@pytest.mark.parametrize("spec", ["5", "0:3", "4:2", "a:b"])
def test_bad_profile_steps_are_refused_with_the_format(spec):
    from imgcls_jax.training import config_check

    with pytest.raises(ValueError, match="must be 'START:STOP'"):
        config_check.validate(tiny_config(**{"training.profile_steps": spec}))


@pytest.mark.slow
def test_gradient_accumulation_equals_the_whole_batch_without_batch_norm(dataset, monkeypatch):
    """A ViT has no batch statistics: 4 micro-batches of 8 give the update of 32 at once."""
    from imgcls_jax.models import vit

    # A 2-block ViT of width 32 (built as vit_ti in this test): compiles in seconds.
    monkeypatch.setitem(vit.VARIANTS, "vit_ti", (32, 2, 64, 2))
    overrides = {"model.name": "vit_ti", "model.patch_size": 4, "input.batch_size": 32,
                 "optimizer.weight_decay": 1e-4, "augment.train": "random_crop(1)|flip_lr"}  # fmt: skip
    whole, whole_losses = train_steps(Trainer(tiny_config(**overrides), dataset), 3)
    parts, parts_losses = train_steps(
        Trainer(tiny_config(**overrides, **{"training.grad_accum_steps": 4}), dataset), 3
    )
    np.testing.assert_allclose(parts_losses, whole_losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6),
                 jax.device_get(parts.params), jax.device_get(whole.params))  # fmt: skip
    assert not np.allclose(jax.device_get(whole.params["head"]["kernel"]), 0)  # It trained.


@pytest.mark.slow
def test_gradient_accumulation_with_batch_norm_updates_the_statistics_per_micro_batch(dataset):
    overrides = {"input.batch_size": 32, "training.grad_accum_steps": 2}
    trainer = Trainer(tiny_config(**overrides), dataset)
    state, losses = train_steps(trainer, 2)
    whole, _ = train_steps(Trainer(tiny_config(**{"input.batch_size": 32}), dataset), 2)
    assert np.all(np.isfinite(losses))
    stats = jax.device_get(state.batch_stats["stem_norm"]["mean"])
    assert not np.allclose(stats, jax.device_get(whole.batch_stats["stem_norm"]["mean"]))
    with pytest.raises(ValueError, match=r"8 devices x 3 micro-batches .* multiple of 24"):
        Trainer(tiny_config(**{"input.batch_size": 32, "training.grad_accum_steps": 3}), dataset)


def test_ema_decay_warms_up_as_timm_does():
    from imgcls_jax.training import train_state

    decays = [float(train_state.ema_decay_at(jnp.int32(t), 0.99, True)) for t in (1, 2, 9, 10_000)]
    # timm ModelEmaV3 (gamma 1, power 2/3): 1 - (1 + t)^(-2/3) with t = update - 1, capped.
    np.testing.assert_allclose(decays, [0.0, 1 - 2 ** (-2 / 3), 1 - 9 ** (-2 / 3), 0.99], rtol=1e-6)
    assert float(train_state.ema_decay_at(jnp.int32(1), 0.99, False)) == pytest.approx(0.99)


@pytest.mark.slow
def test_the_weight_average_follows_its_recurrence_and_is_evaluated(tmp_path, dataset):
    from imgcls_jax.data import input_pipeline
    from imgcls_jax.training import train_state

    config = tiny_config(**{"input.batch_size": 32, "training.ema_decay": 0.9,
                            "training.num_train_steps": 4, "augment.grid_images": 0})  # fmt: skip
    trainer = Trainer(config, dataset)
    state = trainer.create_state()
    expected = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
    for step in range(4):
        batch = input_pipeline.train_batch(trainer.dataset.train, trainer.order, step, trainer.mesh)
        state, _ = trainer.train_step(state, batch, trainer.train_key)
        decay = float(train_state.ema_decay_at(jnp.int32(step + 1), 0.9, True))
        new = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        expected = jax.tree.map(lambda e, w, d=decay: d * e + (1 - d) * w, expected, new)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 jax.device_get(state.ema), expected)  # fmt: skip
    assert not np.allclose(expected["params"]["head"]["kernel"],
                           jax.device_get(state.params["head"]["kernel"]))  # fmt: skip

    results = train_and_evaluate(config, str(tmp_path), dataset)
    for prefix in ("val", "val_ema", "test", "test_ema", "best_test", "best_test_ema"):
        assert 0 <= results[f"{prefix}/accuracy"] <= 1, prefix
    assert results["test_ema/loss"] != pytest.approx(results["test/loss"])
    with pytest.raises(ValueError, match="'val_ema/...' needs training.ema_decay > 0"):
        bad = tiny_config(**{"training.early_stopping_metric": "val_ema/accuracy"})
        train_and_evaluate(bad, str(tmp_path / "no_average"), dataset)
    assert not (tmp_path / "no_average").exists()  # Refused before the workdir is made.


def _final_checksums(workdir):
    with open(os.path.join(workdir, "checkpoints", "16", "integrity", "metadata")) as f:
        import json

        return json.load(f)["checksums"]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [8, 1])  # 1: oneDNN's kernels inside the scan.
def test_several_steps_per_dispatch_equal_one_step_per_dispatch(tmp_path, dataset, devices):
    overrides = {"training.num_train_steps": 16, "input.batch_size": 32,
                 "training.log_every_steps": 8, "training.eval_every_epochs": 100.0,
                 "augment.train": "random_crop(1)|flip_lr", "augment.grid_images": 0}  # fmt: skip
    results = {}
    for k in (1, 3):  # 3: calls of 3, 3 and 2 steps up to each log at 8 and 16.
        config = tiny_config(**overrides, **{"training.steps_per_dispatch": k})
        workdir = tmp_path / str(k)
        results[k] = train_and_evaluate(config, str(workdir), dataset, jax.devices()[:devices])
    assert _final_checksums(tmp_path / "3") == _final_checksums(tmp_path / "1")  # Bit-identical.
    assert _train_losses(tmp_path / "3") == _train_losses(tmp_path / "1")
    assert results[3] == results[1]


@pytest.mark.slow
def test_a_preempted_run_with_several_steps_per_dispatch_resumes_exactly(
    tmp_path, dataset, monkeypatch
):
    from imgcls_jax.runtime import preemption

    overrides = {"training.num_train_steps": 16, "input.batch_size": 32,
                 "training.log_every_steps": 4, "training.eval_every_epochs": 100.0,
                 "training.steps_per_dispatch": 3, "augment.grid_images": 0}  # fmt: skip
    config = tiny_config(**overrides)
    reference = train_and_evaluate(config, str(tmp_path / "reference"), dataset)
    monkeypatch.setattr(preemption.PreemptionWatch, "reached", lambda self, step: step == 7)
    stopped = train_and_evaluate(config, str(tmp_path / "run"), dataset)
    assert stopped == {"step": 7, "preempted": True}  # Calls of 3, 1 (log at 4), 3.
    monkeypatch.undo()
    assert train_and_evaluate(config, str(tmp_path / "run"), dataset) == reference
    assert _final_checksums(tmp_path / "run") == _final_checksums(tmp_path / "reference")


@pytest.mark.parametrize(
    ("backend", "log", "eval_every", "checkpoint", "total", "expected"),
    [("gpu", 100, 390, 0, 3900, 2), ("gpu", 100, 400, 1000, 4000, 4), ("tpu", 8, 64, 0, 640, 8),
     ("gpu", 7, 21, 0, 70, 1), ("cpu", 100, 400, 0, 4000, 1)],
)  # fmt: skip
def test_automatic_steps_per_dispatch_keep_every_call_the_same_length(
    backend, log, eval_every, checkpoint, total, expected
):
    from imgcls_jax.training.cadence import build_cadence

    config = tiny_config(**{"training.log_every_steps": log, "training.num_train_steps": total,
                            "training.eval_every_epochs": 1.0,
                            "training.checkpoint_every_steps": checkpoint})  # fmt: skip
    cadence = build_cadence(config.training, steps_per_epoch=eval_every, platform=backend)
    assert (cadence.eval_every, cadence.total_steps) == (eval_every, total)
    assert cadence.steps_per_dispatch == expected
    calls = _calls(cadence)
    assert set(calls) == {expected}  # One program.


def _calls(cadence) -> list[int]:
    calls, step = [], 0
    while step < cadence.total_steps:
        calls.append(cadence.steps_in_next_call(step))
        step += calls[-1]
    return calls


def test_calls_end_at_every_log_evaluation_checkpoint_and_the_end():
    from imgcls_jax.training.cadence import build_cadence

    config = tiny_config(**{"training.log_every_steps": 4, "training.num_train_steps": 10,
                            "training.eval_every_epochs": 1.0, "training.steps_per_dispatch": 3,
                            "training.checkpoint_every_steps": 5})  # fmt: skip
    cadence = build_cadence(config.training, steps_per_epoch=6, platform="cpu")
    calls = _calls(cadence)
    ends = set(np.cumsum(calls).tolist())
    assert sum(calls) == 10 and max(calls) == 3
    assert {4, 8, 6, 5, 10} <= ends  # Logs, the evaluation, the checkpoint and the end.
    assert calls == [3, 1, 1, 1, 2, 2]
    assert [s for s in range(1, 11) if cadence.is_eval(s)] == [6, 10]
    assert [s for s in range(1, 11) if cadence.is_checkpoint(s)] == [5, 10]


@pytest.mark.slow
def test_fit_check_before_training_is_reported_and_refuses_what_does_not_fit(tmp_path, dataset):
    """launch.py --fit_check: the run's own programs are compiled for its devices first; the
    report shows their peaks; a device smaller than the train step's peak stops the run."""
    from imgcls_jax.runtime.aot import programs

    config = tiny_config(**{"training.num_train_steps": 4, "input.batch_size": 32})
    train_and_evaluate(config, str(tmp_path), dataset, fit_check=True)
    fit = json.loads((tmp_path / "report.json").read_text())["fit_check"]
    assert fit == json.loads((tmp_path / "fit_check.json").read_text())
    init, train, evaluate = fit["programs"]
    assert (init["name"], train["name"], evaluate["name"]) == (
        "init_state",
        "train_step",
        "eval_step",
    )
    # The train step takes the whole (replicated) state, which the initialisation returns
    # (XLA's buffers add a little alignment).
    trainer = Trainer(config, dataset)
    state_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state()))
    assert state_bytes <= init["output_bytes"] < 1.05 * state_bytes
    assert state_bytes <= train["argument_bytes"]
    assert (fit["devices"], fit["device_kind"], fit["memory_bytes"]) == (8, "cpu", None)
    assert (
        "| fit check (before training) | peak GiB per device: init_state"
        in (tmp_path / "report.md").read_text()
    )
    with pytest.raises(programs.DoesNotFit, match=r"^train_step does not fit: it needs 0\.\d+ GiB "
                       r"per device, a cpu has 0\.\d+ GiB\. Lower the per-chip batch \(4;"):  # fmt: skip
        programs.check_devices(trainer, memory_bytes=train["peak_bytes"] - 1)


@pytest.mark.slow
def test_a_vit_is_built_for_the_images_it_sees_after_the_pipeline(tmp_path, monkeypatch):
    """Stored 8 px images resized to 16 on device: the learned position embeddings are made
    for 16 px (2 x 2 patches of 8, plus the class token), in training and in `predict`."""
    from imgcls_jax.inference.classifier import Classifier
    from imgcls_jax.models import vit

    monkeypatch.setitem(vit.VARIANTS, "vit_ti", (32, 2, 64, 2))  # Compiles in seconds.
    config = tiny_config(**{"model.name": "vit_ti", "model.patch_size": 8,
                            "augment.train": "resize(16)|flip_lr", "augment.eval": "resize(16)",
                            "optimizer.name": "adamw", "training.num_train_steps": 2,
                            "input.batch_size": 32})  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), synthetic_dataset(size=8))
    assert results["step"] == 2
    classifier = Classifier.from_workdir(str(tmp_path), "latest")
    assert classifier.variables["params"]["pos_embedding"].shape == (1, 2 * 2 + 1, 32)
