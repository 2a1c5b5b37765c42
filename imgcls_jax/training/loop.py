"""The training job: checks the config, builds the Trainer, restores or starts the state, runs
the loop (train steps, logs, evaluations, checkpoints at the Trainer's cadence), evaluates
the final and the best weights, and writes the run report."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import parameter_overview
from etils import epath

from imgcls_jax import data
from imgcls_jax.checkpoint import Checkpointer, CheckpointRestoreError, model_description
from imgcls_jax.config import flat_items
from imgcls_jax.data import fingerprint
from imgcls_jax.reporting import plots, run_report, timing, writers
from imgcls_jax.runtime.preemption import PreemptionWatch
from imgcls_jax.training import config_check, profiling, recovery, train_state
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.progress import Evaluation, Progress

AUGMENTATION_GRID_FILE = "augmented_train_images.png"
TIMING_FILE = "timing.json"  # A finished run's wall-clock and compile seconds.


def _restore_or_init(
    trainer: Trainer, checkpointer: Checkpointer
) -> tuple[train_state.TrainState, Progress]:
    dataset = fingerprint.dataset_fingerprint(trainer.dataset)
    batch = trainer.config.input.batch_size
    # sent_back_to is saved with every later step: a relaunch does not send it back again.
    newest = recovery.send_back(trainer.config.training.restore_step, checkpointer)
    progress = Progress(dataset=dataset, global_batch=batch, sent_back_to=newest)
    if checkpointer.latest_step() is None:
        return trainer.create_state(), progress
    abstract = trainer.abstract_state()
    try:
        state, saved = checkpointer.restore(abstract, newest)
    except CheckpointRestoreError as e:
        state, saved = recovery.restore_model_only(trainer, checkpointer, abstract, newest, e)
    fingerprint.check_resume(saved.get("dataset"), dataset,
                             trainer.config.training.allow_dataset_change, checkpointer.directory)  # fmt: skip
    recovery.check_global_batch(saved.get("global_batch"), batch, trainer.config, int(state.step),
                        checkpointer.directory)  # fmt: skip
    progress = Progress.from_record(saved)
    progress.dataset, progress.global_batch = dataset, batch
    if newest is not None:
        progress.sent_back_to = newest
    logging.info("Resumed from step %d of %s.", int(state.step), checkpointer.directory)
    return state, progress


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: data.Dataset | None = None,
    devices: list | None = None,
    fit_check: bool = False,
) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds checkpoints), then evaluates; returns results.

    `dataset` and `devices` default to the configured dataset and all devices; tests pass
    their own. The run's wall-clock and compile seconds go to `workdir/timing.json`. With
    `fit_check`, the run's programs are compiled and checked against the devices' memory
    first (`aot.programs.check_devices`; the report shows the result), and a run that would not
    fit stops before its state is made.
    """
    timer = timing.RunTimer()
    config_check.validate(config)  # Before the workdir is made and any data is read.
    logging.info("Config:\n%s", config)  # Once valid: an error is the log's last line.
    writers.check_workdir(workdir)
    trainer = Trainer(config, dataset, devices)
    fit = _check_fit(trainer, workdir) if fit_check else None
    writer = writers.create_writer(workdir)
    if jax.process_index() == 0:  # For `predict` (inference.classifier.Classifier.from_workdir).
        model_description.write_description(workdir, model_description.describe(
            config, trainer.dataset.class_names, trainer.image_shape, trainer.mean, trainer.std))  # fmt: skip
    checkpointer = Checkpointer(workdir, config.training.keep_checkpoints,
                                config.training.keep_checkpoint_period)  # fmt: skip
    try:
        state, progress = _restore_or_init(trainer, checkpointer)
        if int(state.step) == 0:
            writer.write_hparams(flat_items(config))
            parameter_overview.log_parameter_overview(state.params)
            _write_augmentation_grid(trainer, writer, workdir)
        logging.info(
            "Model %s: %s parameters. %d steps (%d per epoch), batch %d on %d devices.",
            config.model.name, f"{parameter_overview.count_parameters(state.params):,}",
            trainer.cadence.total_steps, trainer.cadence.steps_per_epoch, config.input.batch_size,
            trainer.mesh.size,
        )  # fmt: skip
        last_validation = None
        if not progress.stopped_early and int(state.step) < trainer.cadence.total_steps:
            if trainer.mesh.devices.flat[0].platform != "cpu":
                trainer.compile_eval_step_in_background()
            try:
                state, preempted, last_validation = _train(trainer, state, progress, writer,
                                                           checkpointer)  # fmt: skip
            except recovery.DivergedError as e:
                writer.flush()
                checkpointer.wait()
                recovery.mark_diverged(workdir, e.step)
                raise recovery.with_recovery(e, trainer, checkpointer, progress) from None
            if preempted:
                checkpointer.wait()
                logging.warning("Saved step %d after a preemption notice; relaunch the same "
                                "command to resume.", int(state.step))  # fmt: skip
                return {"step": int(state.step), "preempted": True}
        checkpointer.save(int(state.step), state, progress.to_record())
        checkpointer.wait()
        results, matrix, split = _final_results(
            trainer, state, checkpointer, progress, last_validation
        )
        results.update(trainer.evaluate_suites(state, trainer.cadence.total_steps))
        logged = last_validation is not None and last_validation.step == int(state.step)
        writer.write_scalars(int(state.step), {k: v for k, v in results.items()
                                               if "/" in k and not (logged and k.startswith("val/"))})  # fmt: skip
        writer.flush()
        if jax.process_index() == 0:
            run_report.write_run_report(workdir, results, matrix, trainer.dataset.class_names,
                                        split, _run_details(trainer, state, timer, fit))  # fmt: skip
            timer.stop()
            with epath.Path(workdir, TIMING_FILE).open("w") as f:
                json.dump(timer.summary(), f, indent=2)
            # Last: its presence marks a finished run (sweeps skip those).
            with epath.Path(workdir, "results.json").open("w") as f:
                json.dump(results, f, indent=2)
        logging.info("Run took %(run_s).1f s, of which compiling %(compile_s).1f s.",
                     timer.summary())  # fmt: skip
        return results
    finally:
        timer.stop()
        checkpointer.close()
        writer.close()


def _check_fit(trainer: Trainer, workdir: str) -> dict:
    """The fit check on this run's devices; its report goes to `workdir/fit_check.json`."""
    from imgcls_jax.runtime.aot import programs

    fit = programs.check_devices(trainer)
    peak = max(p["peak_bytes"] for p in fit["programs"]) / 2**30
    memory = f"{fit['memory_bytes'] / 2**30:.2f} GiB" if fit["memory_bytes"] else "unknown memory"
    logging.info("Fit check: at most %.3f GiB per device (%s, %s).", peak, fit["device_kind"],
                 memory)  # fmt: skip
    if jax.process_index() == 0:
        epath.Path(workdir).mkdir(parents=True, exist_ok=True)
        with epath.Path(workdir, "fit_check.json").open("w") as f:
            json.dump(fit, f, indent=2)
    return fit


def _run_details(
    trainer: Trainer, state: train_state.TrainState, timer: timing.RunTimer, fit: dict | None = None
) -> dict:
    """What the run report states besides the metrics: config, size, data, time and the fit
    check (when one was made)."""
    splits = {"train": trainer.dataset.train, "validation": trainer.dataset.validation,
              "test": trainer.dataset.test}  # fmt: skip
    return {
        "config": trainer.config.to_dict(),
        "parameters": int(parameter_overview.count_parameters(state.params)),
        "devices": trainer.mesh.size,
        "compute": {"dtype": trainer.dtype, "kernels": trainer.kernels.name},
        "image_shape": list(trainer.image_shape),
        "class_counts": {
            name: data.class_counts(split, trainer.dataset.num_classes)
            for name, split in splits.items()
            if split is not None
        },  # fmt: skip
        **timer.summary(),
        **({"fit_check": fit} if fit else {}),
        **(
            {
                "distillation": {
                    "teacher": trainer.teacher.source,
                    "teacher_model": trainer.teacher.model_name,
                    "weight": trainer.config.distill.weight,
                    "temperature": trainer.config.distill.temperature,
                }
            }
            if trainer.teacher
            else {}
        ),
    }


def _write_augmentation_grid(trainer: Trainer, writer: writers.MetricWriter, workdir: str) -> None:
    """Shows the first train batch as the model sees it: TensorBoard and a PNG in `workdir`."""
    count = trainer.config.augment.grid_images
    if count <= 0:
        return
    grid = plots.image_grid(trainer.augmented_images(0, count))
    writer.write_images(0, {"augmented_train_images": grid[None]})
    if jax.process_index() == 0:
        path = os.path.join(workdir, AUGMENTATION_GRID_FILE)
        plots.save_png(path, grid)
        logging.info("Wrote the augmented first train batch to %s.", path)


def _train(
    trainer: Trainer,
    state: train_state.TrainState,
    progress: Progress,
    writer: writers.MetricWriter,
    checkpointer: Checkpointer,
) -> tuple[train_state.TrainState, bool, Evaluation | None]:
    """The loop (`_train_from`), started again after each rewind
    (config.training.on_nonfinite="rewind")."""
    while True:
        try:
            return _train_from(trainer, state, progress, writer, checkpointer)
        except recovery.DivergedError as error:
            if trainer.config.training.on_nonfinite != "rewind":
                raise
            state = recovery.rewind(error, trainer, progress, writer, checkpointer)


def _train_from(
    trainer: Trainer,
    state: train_state.TrainState,
    progress: Progress,
    writer: writers.MetricWriter,
    checkpointer: Checkpointer,
) -> tuple[train_state.TrainState, bool, Evaluation | None]:
    """The loop: train steps, periodic logs, evaluations, early stopping and checkpoints.

    Returns the state, whether a preemption notice stopped it (after saving), and the last
    validation, or None."""
    cfg, cadence = trainer.config.training, trainer.cadence
    report_progress = writers.ProgressReporter(cadence.total_steps, cadence.log_every, writer)
    batches = trainer.train_batches(int(state.step))
    # Train metrics of the steps since the last log, merged on device, and how many steps.
    pending, pending_steps = trainer.empty_train_metrics(), 0
    preempted, last_validation = False, None
    profiler = profiling.StepProfiler(cfg.profile_steps, str(checkpointer.workdir / "tensorboard"))
    # Closing `batches` stops its prefetch thread, also when a step raises.
    with PreemptionWatch() as preemption, contextlib.closing(batches), contextlib.closing(profiler):
        step = int(state.step)
        while step < cadence.total_steps:
            count = cadence.steps_in_next_call(step)
            chunk = tuple(next(batches) for _ in range(count))
            with profiler.annotate(step + 1, step + count):
                # Always the scanned program, also for one step: a loop body compiles to other
                # float rounding than a lone step, and this way any steps_per_dispatch trains
                # bit-identically.
                train_steps = trainer.train_steps_after(step)
                state, pending = train_steps(state, pending, chunk, trainer.train_key)
            step += count
            profiler.after(step, state)
            pending_steps += count
            for reached in range(step - count + 1, step + 1):
                report_progress(reached)
            preempted = preemption.reached(step)
            is_eval = cadence.is_eval(step)
            is_save = preempted or cadence.is_checkpoint(step)
            if cadence.is_log(step) or is_eval or is_save:
                # Also before every save, so that a non-finite loss never reaches a checkpoint.
                summary = jax.device_get(pending).compute()  # On the host: see steps.eval_step.
                skipped = _check_finite(summary.pop("nonfinite"), step, pending_steps, cfg)
                summary["skipped_updates"] = skipped
                pending, pending_steps = trainer.empty_train_metrics(), 0
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
            if is_eval and trainer.dataset.validation is not None:
                last_validation = trainer.evaluate_split(state, step, "val")
                writer.write_scalars(step, last_validation.metrics)
                progress.record_validation(last_validation.metrics[cfg.early_stopping_metric],
                                           step, cfg.early_stopping_metric,
                                           cfg.early_stopping_patience)  # fmt: skip
                checkpointer.save(step, state, progress.to_record())
                if progress.stopped_early:
                    break
            elif is_eval or is_save:  # Without validation, evaluations only checkpoint.
                checkpointer.save(step, state, progress.to_record())
            if step < cadence.total_steps:  # The last step's suites join the final results.
                suite_metrics = trainer.evaluate_suites(state, step)
                if suite_metrics:
                    writer.write_scalars(step, suite_metrics)
            if preempted:
                break
    return state, preempted, last_validation


def _final_results(
    trainer: Trainer,
    state: train_state.TrainState,
    checkpointer: Checkpointer,
    progress: Progress,
    last_validation: Evaluation | None,
) -> tuple[dict, np.ndarray, str]:
    """Validation and test metrics of the final state and of the best checkpoint, and the
    final state's confusion matrix on test (validation when there is no test split). The
    loop's last validation is reused when it evaluated the final state."""
    step = int(state.step)
    results: dict[str, Any] = {"step": step}
    final, split = None, "val"
    if trainer.dataset.validation is not None:  # The best metric, its step, early stopping.
        results.update(progress.results())
        final = last_validation
        if final is None or final.step != step:
            final = trainer.evaluate_split(state, step, "val")
        results.update(final.metrics)
    if trainer.dataset.test is not None:
        final, split = trainer.evaluate_split(state, step, "test"), "test"
        results.update(final.metrics)
    best_step = progress.best_step
    if best_step is None or trainer.dataset.test is None:  # No best checkpoint, or no test.
        return results, final.confusion, split
    if best_step == step:  # The same weights: reuse their numbers.
        results.update({f"best_{key}": value for key, value in final.metrics.items()})
        return results, final.confusion, split
    try:
        best_state, _ = checkpointer.restore_step(best_step, trainer.abstract_state())
    except CheckpointRestoreError as e:  # Final metrics stand without it.
        logging.error("No best_test metrics: %s", e)
        return results, final.confusion, split
    results.update(trainer.evaluate(best_state, trainer.dataset.test, "best_test"))
    return results, final.confusion, split


def _check_finite(nonfinite: tuple, step: int, window: int, cfg) -> int:
    """Stops the run at a non-finite loss, gradient or new state
    (config.training.on_nonfinite="stop"), or at a log window that skipped every update;
    returns how many updates were skipped."""
    count, first = (int(x) for x in nonfinite)
    if count == 0:
        return 0
    if cfg.on_nonfinite in ("stop", "rewind"):
        raise recovery.DivergedError(
            f"Non-finite loss, gradient or new state at step {first}; its update was not "
            "applied and no checkpoint was written after it (to skip such updates instead, "
            "set config.training.on_nonfinite=skip).", first,
        )  # fmt: skip
    if count == window:
        raise recovery.DivergedError(
            f"Every update of steps {step - window + 1}-{step} had a non-finite loss, "
            "gradient or new state and was skipped.", step - window + 1,
        )  # fmt: skip
    logging.warning("Skipped %d update(s) with a non-finite loss, gradient or new state in "
                    "steps %d-%d (first: step %d).", count, step - window + 1, step,
                    first)  # fmt: skip
    return count
