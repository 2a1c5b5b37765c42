"""Recovery: a non-finite update stops or is skipped, a diverged run goes back through the
command it prints (or rewinds by itself), a changed batch or optimizer on resume."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config, trainer_restore

from imgcls_jax.config import apply_overrides
from imgcls_jax.reporting import writers
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.loop import train_and_evaluate


@pytest.mark.slow
def test_nan_loss_raises_and_keeps_good_checkpoint(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 2, "input.batch_size": 32})
    train_and_evaluate(config, str(tmp_path), dataset)
    poisoned = tiny_config(**{"training.num_train_steps": 6, "input.batch_size": 32,
                              "optimizer.learning_rate": 1e30})  # fmt: skip
    with pytest.raises(
        FloatingPointError, match=r"Non-finite loss, gradient or new state at step [3-6];"
    ):
        train_and_evaluate(poisoned, str(tmp_path), dataset)
    skipping = apply_overrides(poisoned, {"training.on_nonfinite": "skip"})
    with pytest.raises(
        FloatingPointError, match="Every update of steps [3-6]-[3-6] had a non-finite"
    ):
        train_and_evaluate(skipping, str(tmp_path), dataset)
    state, _ = trainer_restore(Trainer(config, dataset), tmp_path)
    assert int(state.step) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state.params))


@pytest.mark.slow
def test_nonfinite_update_is_skipped_and_recorded(dataset):
    trainer = Trainer(tiny_config(**{"input.batch_size": 32}), dataset)
    state = trainer.create_state()
    good = {"image": dataset.train.images[:32], "label": dataset.train.labels[:32]}
    poisoned = {**good, "image": good["image"].astype(np.float32)}
    poisoned["image"][5, 2, 3] = np.nan
    before = jax.device_get(state)  # The step donates (deletes) its input state.
    after, metrics = trainer.train_step(state, poisoned, trainer.train_key)
    assert int(after.step) == 1
    jax.tree.map(np.testing.assert_array_equal, after.params, before.params)
    jax.tree.map(np.testing.assert_array_equal, after.opt_state, before.opt_state)
    jax.tree.map(np.testing.assert_array_equal, after.batch_stats, before.batch_stats)
    skipped = metrics.compute()
    assert [int(x) for x in skipped["nonfinite"]] == [1, 1]
    # Its examples are masked out of the per-example metrics; the learning rate still shows.
    assert np.isnan(float(skipped["loss"])) and np.isnan(float(skipped["accuracy"]))
    assert float(skipped["learning_rate"]) == pytest.approx(trainer.learning_rate_fn(0))
    after, good_metrics = trainer.train_step(after, good, trainer.train_key)
    assert not np.array_equal(after.params["head"]["kernel"], before.params["head"]["kernel"])
    summary = metrics.merge(good_metrics).compute()
    assert [int(x) for x in summary["nonfinite"]] == [1, 1]
    good_summary = good_metrics.compute()
    for name in ("loss", "accuracy", "learning_rate"):
        assert float(summary[name]) == pytest.approx(float(good_summary[name])), name


@pytest.mark.slow
def test_skip_mode_trains_through_a_poisoned_batch(tmp_path, dataset, monkeypatch):
    from imgcls_jax.data import batch_rows

    clean = batch_rows.LocalTrainRows.__call__

    def poison_step_3(self, step):
        batch = clean(self, step)
        if step == 2:  # The batch of step 3 (steps count from 1).
            batch["image"] = batch["image"].astype(np.float32) * np.nan
        return batch

    monkeypatch.setattr(batch_rows.LocalTrainRows, "__call__", poison_step_3)
    config = tiny_config(**{"training.num_train_steps": 6, "input.batch_size": 32,
                            "training.log_every_steps": 2, "training.on_nonfinite": "skip",
                            "input.device_resident": "off"})  # The host pipeline is patched.  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), dataset)
    assert results["step"] == 6 and np.isfinite(results["val/loss"])
    records = writers.read_metrics(str(tmp_path / "metrics.jsonl"))
    skipped = {r["step"]: r["train/skipped_updates"] for r in records if "train/loss" in r}
    assert skipped == {2: 0, 4: 1, 6: 0}


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 1, "input.batch_size": 32})
    train_and_evaluate(config, str(tmp_path), dataset)
    wider = tiny_config(**{"training.num_train_steps": 2, "input.batch_size": 32, "model.width": 8})
    with pytest.raises(ValueError, match="do not fit this config"):
        train_and_evaluate(wider, str(tmp_path), dataset)
    assert os.path.isdir(tmp_path / "checkpoints" / "1")  # The old checkpoint is untouched.


@pytest.mark.slow
def test_a_changed_global_batch_stops_the_resume_unless_allowed(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 4, "input.batch_size": 32})
    train_and_evaluate(config, str(tmp_path), dataset)
    longer = apply_overrides(config, {"training.num_train_steps": 6, "input.batch_size": 16})
    with pytest.raises(ValueError, match=r"trained with global batch 32 \(config.input.batch_size"
                       r"\), this run has 16: relaunch with --config.input.batch_size=32"):  # fmt: skip
        train_and_evaluate(longer, str(tmp_path), dataset)
    assert json.loads((tmp_path / "results.json").read_text())["step"] == 4  # Untouched.
    allowed = apply_overrides(longer, {"training.allow_batch_change": True})
    assert train_and_evaluate(allowed, str(tmp_path), dataset)["step"] == 6


@pytest.mark.slow
def test_a_run_diverging_late_goes_back_to_its_best_step_and_finishes(tmp_path, dataset):
    """A sane run evaluated every 4 steps, then lr=1e4 with a checkpoint every step: the
    newest saved steps hold diverging weights and the good ones rotated out, except the best
    one. The error names it; relaunched with its overrides, the run finishes."""
    from imgcls_jax.training.recovery import DivergedError

    common = {"input.batch_size": 32, "training.log_every_steps": 1,
              "training.eval_every_epochs": 0.5, "training.keep_checkpoints": 2}  # fmt: skip
    train_and_evaluate(tiny_config(**common, **{"training.num_train_steps": 8}), str(tmp_path),
                       dataset)  # fmt: skip
    spiked = tiny_config(**common, **{"training.num_train_steps": 40, "optimizer.learning_rate": 1e4,
                                      "training.checkpoint_every_steps": 1})  # fmt: skip
    with pytest.raises(DivergedError) as stopped:
        train_and_evaluate(spiked, str(tmp_path), dataset)
    best = json.loads((tmp_path / "results.json").read_text())["best_step"]
    assert stopped.value.overrides == {"training.restore_step": best,
                                       "optimizer.learning_rate": 1e3}  # fmt: skip
    assert f"go back to step {best} (the best by validation)" in str(stopped.value)
    saved_before = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints"))
    relaunch = apply_overrides(spiked, stopped.value.overrides)
    for _ in range(8):  # Each stop prints the next relaunch, 10x lower again.
        try:
            results = train_and_evaluate(relaunch, str(tmp_path), dataset)
            break
        except DivergedError as e:
            assert e.overrides["training.restore_step"] == best
            relaunch = apply_overrides(relaunch, e.overrides)
    assert results["step"] == 40 and np.isfinite(results["test/loss"])
    first_aside = sorted(os.listdir(tmp_path / "set_aside_checkpoints"))[0]
    assert sorted(int(n) for n in os.listdir(tmp_path / "set_aside_checkpoints" / first_aside)) == [
        s for s in saved_before if s > best
    ]
    asides = len(os.listdir(tmp_path / "set_aside_checkpoints"))
    # Relaunching the same command again continues from the newest step; it does not go back.
    again = apply_overrides(relaunch, {"training.num_train_steps": 44})
    assert train_and_evaluate(again, str(tmp_path), dataset)["step"] == 44
    assert len(os.listdir(tmp_path / "set_aside_checkpoints")) == asides


@pytest.mark.slow
def test_changed_optimizer_settings_keep_the_trained_weights(tmp_path, dataset, caplog):
    """Gradient clipping added on resume changes the optimizer state's structure: the
    parameters, batch statistics and weight average are restored, the optimizer state starts
    afresh, and training continues."""
    config = tiny_config(**{"training.num_train_steps": 4, "input.batch_size": 32,
                            "training.ema_decay": 0.9})  # fmt: skip
    train_and_evaluate(config, str(tmp_path), dataset)
    saved, _ = trainer_restore(Trainer(config, dataset), tmp_path)
    clipped = apply_overrides(config, {"optimizer.grad_clip_norm": 1.0,
                                       "training.num_train_steps": 6})  # fmt: skip
    trainer = Trainer(clipped, dataset)
    from imgcls_jax.checkpoint import Checkpointer

    checkpointer = Checkpointer(str(tmp_path), 10)
    model, _ = checkpointer.restore_model(trainer.abstract_state())
    checkpointer.close()
    for name in ("params", "batch_stats", "ema"):
        for a, b in zip(jax.tree.leaves(model[name]), jax.tree.leaves(getattr(saved, name)),
                        strict=True):  # fmt: skip
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(model["step"]) == 4
    with caplog.at_level("WARNING"):
        results = train_and_evaluate(clipped, str(tmp_path), dataset)
    assert results["step"] == 6
    assert "saved optimizer state does not fit this config's optimizer" in caplog.text


@pytest.mark.slow
def test_rewind_skips_a_learning_rate_spike_and_finishes_like_the_uninterrupted_run(
    tmp_path, dataset, monkeypatch
):
    """on_nonfinite=rewind: a learning rate of 1e30 at steps 21-25 breaks the run there; it
    goes back to step 20 (saved, sane), skips past the spike and finishes within 1 point of
    the accuracy of the same run without the spike."""
    from imgcls_jax.training import optimizers

    overrides = {"training.num_train_steps": 60, "input.batch_size": 32, "model.width": 8,
                 "optimizer.learning_rate": 0.05, "training.checkpoint_every_steps": 5,
                 "training.keep_checkpoints": 2, "training.on_nonfinite": "rewind",
                 "training.rewind_skip_steps": 10}  # fmt: skip
    calm = train_and_evaluate(tiny_config(**overrides), str(tmp_path / "calm"), dataset)
    build_schedule = optimizers.build_schedule

    def spiked(*args, **kwargs):
        schedule = build_schedule(*args, **kwargs)
        return lambda step: jnp.where((step >= 20) & (step < 25), 1e30, schedule(step))

    monkeypatch.setattr(optimizers, "build_schedule", spiked)
    results = train_and_evaluate(tiny_config(**overrides), str(tmp_path / "spiked"), dataset)
    assert results["step"] == 60 and results["rewinds"] == 1
    assert results["test/accuracy"] == pytest.approx(calm["test/accuracy"], abs=0.01)
    logged = [r["step"] for r in writers.read_metrics(str(tmp_path / "spiked" / "metrics.jsonl"))
              if "train/loss" in r]  # fmt: skip
    failed = next(s for s in range(1, 61) if s not in logged)  # Not logged: it raised.
    assert 21 <= failed <= 25  # The first spiked step, or one after it.
    # Its update and the next 10 steps were skipped; the weights of step 20 went on.
    assert logged == [*range(1, failed), *range(failed + 11, 61)]
