"""The training job: the only reader of the whole config; builds everything and runs the loop."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from clu import metric_writers, parameter_overview, periodic_actions
from etils import epath

from imgcls_jax import (
    augment,
    confusion,
    convert,
    data,
    device_data,
    imbalance,
    inference,
    input_pipeline,
    optim,
    profiling,
    reporting,
    run_report,
    sharding,
    steps,
    timing,
    transfer,
    visualize,
)
from imgcls_jax import config as config_lib
from imgcls_jax.checkpoint import Checkpointer, CheckpointRestoreError
from imgcls_jax.data import fingerprint
from imgcls_jax.models import build_model
from imgcls_jax.preemption import PreemptionWatch

AUGMENTATION_GRID_FILE = "augmented_train_images.png"
TIMING_FILE = "timing.json"  # A finished run's wall-clock and compile seconds.


class Trainer:
    """Everything built from a config: model, optimizer, jitted steps, data, mesh."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        dataset: data.Dataset | None = None,
        devices: list | None = None,
    ):
        config_lib.validate(config)
        self.config = config
        self.mesh = sharding.make_mesh(devices)
        sharding.check_batch_size(config.input.batch_size, self.mesh, "input.batch_size",
                                  config.training.grad_accum_steps)  # fmt: skip
        sharding.check_batch_size(config.input.eval_batch_size, self.mesh, "input.eval_batch_size")
        self.dataset = dataset if dataset is not None else data.load_dataset(config.dataset)
        if self.dataset.validation is None and self.dataset.test is None:
            raise ValueError("The dataset has neither a validation nor a test split: nothing to "
                             "evaluate. Hold out config.dataset.validation_size > 0 examples.")  # fmt: skip
        self.channels = self.dataset.train.images.shape[-1]
        if self.dataset.num_classes < 2:
            raise ValueError(f"The dataset has {self.dataset.num_classes} class(es) "
                             f"{list(self.dataset.class_names)}; a classifier needs at least 2.")  # fmt: skip
        augment.check_shapes(config.augment.train, config.augment.eval, self.image_shape)
        self.mean, self.std = tuple(config.dataset.mean), tuple(config.dataset.std)
        self.pretrained = None  # (variables, metadata) of config.transfer.checkpoint.
        if config.transfer.checkpoint:
            self._load_pretrained(config.transfer)
        self._check_channels()
        self.model = build_model(config.model, self.dataset.num_classes)
        train_labels = self.dataset.train.labels
        self.order = (
            imbalance.BalancedOrder(train_labels, config.input.batch_size, config.seed)
            if config.input.sampling == "class_balanced"
            else input_pipeline.TrainOrder(len(train_labels), config.input.batch_size, config.seed)
        )
        self.resident = None  # The train split on device, when it is placed there.
        if device_data.use_device_resident(
            config.input.device_resident, self.dataset.train, self.mesh
        ):
            self.resident = device_data.DeviceResidentTrain(self.dataset.train, self.order,
                                                            self.mesh)  # fmt: skip
        self.class_weights = None
        if config.loss.class_weighting == "balanced":
            self.class_weights = imbalance.balanced_class_weights(
                train_labels, self.dataset.num_classes
            )
            logging.info("Class weights: %s", np.round(self.class_weights, 3).tolist())
        self.steps_per_epoch = self.order.steps_per_epoch
        self.total_steps = config.training.num_train_steps or max(
            1, int(config.training.num_epochs * self.steps_per_epoch)
        )
        self.eval_every_steps = max(
            1, int(round(config.training.eval_every_epochs * self.steps_per_epoch))
        )
        peak_lr = optim.peak_learning_rate(config.optimizer, config.input.batch_size)
        self.learning_rate_fn = optim.build_schedule(
            config.schedule, peak_lr, self.steps_per_epoch, self.total_steps
        )
        init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
        self.init_key = init_key
        params_shape = jax.eval_shape(
            lambda: self.model.init(init_key, np.zeros((1, *self.image_shape)), train=False)
        )["params"]
        self.frozen = transfer.frozen_mask(
            params_shape, config.transfer.freeze, config.transfer.linear_probe
        )
        self.any_frozen = any(jax.tree.leaves(self.frozen))
        self.tx = transfer.wrap_optimizer(
            optim.build_optimizer(config.optimizer, self.learning_rate_fn),
            params_shape, self.frozen, config.transfer.layer_decay,
        )  # fmt: skip
        self._log_frozen()
        self.train_metrics_cls = steps.metrics_collection(
            self.dataset.num_classes, train=True, smoothed=config.loss.label_smoothing > 0
        )
        self.eval_metrics_cls = steps.metrics_collection(self.dataset.num_classes, train=False)
        self._build_steps()

    @property
    def image_shape(self) -> tuple[int, ...]:
        return self.dataset.train.images.shape[1:]

    def _load_pretrained(self, transfer_config: ml_collections.ConfigDict) -> None:
        """Reads the converted checkpoint; checks its architecture; takes its normalisation."""
        variables, metadata = convert.load_pretrained(transfer_config.checkpoint)
        transfer.check_architecture(metadata, self.config.model, transfer_config.checkpoint)
        if transfer_config.pretrained_preprocessing:
            self.mean, self.std = transfer.normalisation(metadata, self.channels)
            logging.info("Normalising with the checkpoint's mean %s and std %s.", self.mean,
                         self.std)  # fmt: skip
        self.pretrained = variables, metadata

    def _check_channels(self) -> None:
        wanted = self.config.dataset.channels
        if wanted and wanted != self.channels:
            raise ValueError(
                f"config.dataset.channels={wanted} but this dataset's images have "
                f"{self.channels}; only image folders and streamed TFDS datasets convert. Set "
                f"config.dataset.channels=0."
            )
        if len(self.mean) != self.channels:
            raise ValueError(
                f"The images have {self.channels} channel(s) but config.dataset.mean/std have "
                f"{len(self.mean)} entries: give one per channel, or set "
                f"config.dataset.channels={len(self.mean)} (image folders, streamed TFDS) to "
                "convert the images."
            )

    def _log_frozen(self) -> None:
        flat = jax.tree_util.tree_leaves_with_path(self.frozen)
        frozen = [transfer.path_name(p) for p, f in flat if f]
        if frozen:
            logging.info("Frozen: %d of %d parameter tensors (%s).", len(frozen), len(flat),
                         ", ".join(frozen))  # fmt: skip

    def _build_steps(self) -> None:
        replicated = sharding.replicated(self.mesh)
        batch = sharding.batch_sharding(self.mesh)
        norm = dict(mean=self.mean, std=self.std)
        image_shape = self.image_shape
        augment_fn = augment.build_augment_fn(self.config.augment.train)
        mix_fn = augment.build_mix_fn(self.config.augment, self.dataset.num_classes)
        ema = self.config.training.ema_decay > 0
        self.init_state = jax.jit(
            functools.partial(
                steps.init_state, model=self.model, tx=self.tx, image_shape=image_shape, ema=ema
            ),
            out_shardings=replicated,
        )
        self.train_step = jax.jit(
            functools.partial(
                steps.train_step,
                model=self.model,
                tx=self.tx,
                learning_rate_fn=self.learning_rate_fn,
                augment_fn=augment_fn,
                mix_fn=mix_fn,
                label_smoothing=self.config.loss.label_smoothing,
                class_weights=self.class_weights,
                frozen=self.frozen if self.any_frozen else None,
                frozen_norms=transfer.frozen_norms(self.frozen),
                metrics_cls=self.train_metrics_cls,
                micro_batches=self.config.training.grad_accum_steps,
                ema_decay=self.config.training.ema_decay,
                ema_warmup=self.config.training.ema_warmup,
                **norm,
            ),
            in_shardings=(replicated, batch, replicated),
            out_shardings=(replicated, replicated),
            donate_argnums=0,
        )
        self.eval_step = jax.jit(
            functools.partial(
                steps.eval_step,
                model=self.model,
                preprocess_fn=augment.build_eval_fn(self.config.augment.eval),
                flip_tta=self.config.augment.eval_flip_tta,
                metrics_cls=self.eval_metrics_cls,
                **norm,
            ),
            in_shardings=(replicated, batch),
            out_shardings=replicated,
        )

        self.augment_batch = jax.jit(
            functools.partial(steps.augment_batch, augment_fn=augment_fn, mix_fn=mix_fn),
            in_shardings=(replicated, replicated, batch),
            out_shardings=replicated,
        )
        self.replace_variables = jax.jit(
            functools.partial(steps.replace_variables, tx=self.tx, ema=ema),
            out_shardings=replicated,
        )

    def augmented_images(self, step: int, count: int) -> np.ndarray:
        """The first `count` images of train step `step` exactly as the model sees them
        (augmented and mixed, before normalisation), as float32 NHWC in [0, 255]."""
        batch = input_pipeline.train_batch(self.dataset.train, self.order, step, self.mesh)
        images, _ = self.augment_batch(self.train_key, np.int32(step), batch)
        return np.asarray(images[:count])

    def create_state(self) -> steps.TrainState:
        """A fresh state, with the pretrained variables merged in for transfer learning."""
        state = self.init_state(self.init_key)
        if self.pretrained is None:
            return state
        fresh = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
        merged = transfer.merge_pretrained(
            fresh, self.pretrained[0], self.channels, stem_kernel="stem_conv/kernel"
        )
        logging.info("Loaded %s.", self.config.transfer.checkpoint)
        return self.replace_variables(merged)

    def abstract_state(self) -> Any:
        return jax.eval_shape(self.init_state, self.init_key)

    def evaluate(self, state: steps.TrainState, split: data.Split, prefix: str) -> dict[str, float]:
        """Metrics over every example of `split` exactly once, keyed `prefix/name`; with a
        weight average also its metrics, keyed `prefix_ema/name`."""
        return self.evaluate_with_confusion(state, split, prefix)[0]

    def evaluate_with_confusion(
        self, state: steps.TrainState, split: data.Split, prefix: str
    ) -> tuple[dict[str, float], np.ndarray]:
        """`evaluate`'s metrics (plus balanced accuracy) and the trained weights' [true,
        predicted] counts."""
        results, matrix = self._evaluate_weights(state, split, prefix)
        if state.ema:
            results.update(self._evaluate_weights(state.ema_state(), split, f"{prefix}_ema")[0])
        return results, matrix

    def _evaluate_weights(
        self, state: steps.TrainState, split: data.Split, prefix: str
    ) -> tuple[dict[str, float], np.ndarray]:
        total = None
        for batch in input_pipeline.eval_batches(
            split, self.config.input.eval_batch_size, self.mesh
        ):
            batch_metrics = self.eval_step(state, batch)
            total = batch_metrics if total is None else total.merge(batch_metrics)
        computed = total.compute()
        matrix = np.asarray(computed.pop("confusion_matrix"))
        results = {f"{prefix}/{k}": float(v) for k, v in computed.items()}
        results[f"{prefix}/balanced_accuracy"] = confusion.balanced_accuracy(matrix)
        results[f"{prefix}/num_examples"] = int(total.loss.count)
        return results, matrix


def _restore_or_init(
    trainer: Trainer, checkpointer: Checkpointer
) -> tuple[steps.TrainState, dict[str, Any]]:
    dataset = fingerprint.dataset_fingerprint(trainer.dataset)
    progress = {"best_metric": -math.inf, "evals_without_improvement": 0, "stopped_early": False,
                "dataset": dataset}  # fmt: skip
    if checkpointer.latest_step() is None:
        return trainer.create_state(), progress
    try:
        state, saved = checkpointer.restore(trainer.abstract_state())
    except CheckpointRestoreError as e:
        raise CheckpointRestoreError(
            f"The checkpoints do not fit this config's model/optimizer or are damaged: {e}. "
            "Use a new --workdir for a different model, or the config the checkpoints were "
            "trained with; nothing was changed in the workdir."
        ) from e
    fingerprint.check_resume(saved.get("dataset"), dataset,
                             trainer.config.training.allow_dataset_change, checkpointer.directory)  # fmt: skip
    progress.update(saved, dataset=dataset)
    logging.info("Resumed from step %d of %s.", int(state.step), checkpointer.directory)
    return state, progress


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    dataset: data.Dataset | None = None,
    devices: list | None = None,
) -> dict[str, float]:
    """Trains (resuming from `workdir` if it holds checkpoints), then evaluates; returns results.

    `dataset` and `devices` default to the configured dataset and all devices; tests pass
    their own. The run's wall-clock and compile seconds go to `workdir/timing.json`.
    """
    timer = timing.RunTimer()
    config_lib.validate(config)  # Before the workdir is made (Trainer validates Python callers).
    reporting.check_workdir(workdir)
    trainer = Trainer(config, dataset, devices)
    writer = reporting.create_writer(workdir)
    if jax.process_index() == 0:  # For `predict` (inference.Classifier.from_workdir).
        inference.write_description(workdir, inference.describe(
            config, trainer.dataset.class_names, trainer.image_shape, trainer.mean, trainer.std))  # fmt: skip
    checkpointer = Checkpointer(workdir, config.training.keep_checkpoints)
    try:
        state, progress = _restore_or_init(trainer, checkpointer)
        if int(state.step) == 0:
            writer.write_hparams(_flatten(config.to_dict()))
            parameter_overview.log_parameter_overview(state.params)
            _write_augmentation_grid(trainer, writer, workdir)
        logging.info(
            "Model %s: %s parameters. %d steps (%d per epoch), batch %d on %d devices.",
            config.model.name, f"{parameter_overview.count_parameters(state.params):,}",
            trainer.total_steps, trainer.steps_per_epoch, config.input.batch_size,
            trainer.mesh.size,
        )  # fmt: skip
        last_validation = None
        if not progress["stopped_early"] and int(state.step) < trainer.total_steps:
            state, preempted, last_validation = _train(trainer, state, progress, writer,
                                                       checkpointer)  # fmt: skip
            if preempted:
                checkpointer.wait()
                logging.warning("Saved step %d after a preemption notice; relaunch the same "
                                "command to resume.", int(state.step))  # fmt: skip
                return {"step": int(state.step), "preempted": True}
        checkpointer.save(int(state.step), state, progress)
        checkpointer.wait()
        results, matrix, split = _final_results(
            trainer, state, checkpointer, progress, last_validation
        )
        logged = last_validation is not None and last_validation[0] == int(state.step)
        writer.write_scalars(int(state.step), {k: v for k, v in results.items()
                                               if "/" in k and not (logged and k.startswith("val/"))})  # fmt: skip
        writer.flush()
        if jax.process_index() == 0:
            run_report.write_run_report(workdir, results, matrix, trainer.dataset.class_names,
                                        split, _run_details(trainer, state, timer))  # fmt: skip
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


def _run_details(trainer: Trainer, state: steps.TrainState, timer: timing.RunTimer) -> dict:
    """What the run report states besides the metrics: config, size, data and time."""
    splits = {"train": trainer.dataset.train, "validation": trainer.dataset.validation,
              "test": trainer.dataset.test}  # fmt: skip
    return {
        "config": trainer.config.to_dict(),
        "parameters": int(parameter_overview.count_parameters(state.params)),
        "devices": trainer.mesh.size,
        "image_shape": list(trainer.image_shape),
        "class_counts": {
            name: data.class_counts(split, trainer.dataset.num_classes)
            for name, split in splits.items()
            if split is not None
        },  # fmt: skip
        **timer.summary(),
    }


def _write_augmentation_grid(
    trainer: Trainer, writer: metric_writers.MetricWriter, workdir: str
) -> None:
    """Shows the first train batch as the model sees it: TensorBoard and a PNG in `workdir`."""
    count = trainer.config.augment.grid_images
    if count <= 0:
        return
    grid = visualize.image_grid(trainer.augmented_images(0, count))
    writer.write_images(0, {"augmented_train_images": grid[None]})
    if jax.process_index() == 0:
        path = os.path.join(workdir, AUGMENTATION_GRID_FILE)
        visualize.save_png(path, grid)
        logging.info("Wrote the augmented first train batch to %s.", path)


def _train(
    trainer: Trainer,
    state: steps.TrainState,
    progress: dict[str, Any],
    writer: metric_writers.MetricWriter,
    checkpointer: Checkpointer,
) -> tuple[steps.TrainState, bool]:
    """The loop: train steps, periodic logs, evaluations, early stopping and checkpoints.

    Returns the state, whether a preemption notice stopped it (after saving), and the last
    validation as (step, metrics, confusion matrix), or None."""
    cfg = trainer.config.training
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=trainer.total_steps, writer=writer, every_steps=cfg.log_every_steps
    )
    start_step = int(state.step)
    if trainer.resident is not None:
        batches = trainer.resident.batches(start_step)
    else:
        batches = input_pipeline.train_batches(
            trainer.dataset.train, trainer.order, start_step, trainer.mesh,
            trainer.config.input.prefetch,
        )  # fmt: skip
    pending: list = []
    preempted, last_validation = False, None
    profiler = profiling.StepProfiler(cfg.profile_steps, str(checkpointer.workdir / "tensorboard"))
    # Closing `batches` stops its prefetch thread, also when a step raises.
    with PreemptionWatch() as preemption, contextlib.closing(batches), contextlib.closing(profiler):
        for step in range(start_step + 1, trainer.total_steps + 1):
            with profiler.annotate(step):
                state, step_metrics = trainer.train_step(state, next(batches), trainer.train_key)
            profiler.after(step, state)
            pending.append(step_metrics)
            report_progress(step)
            preempted = preemption.reached(step)
            is_eval = step % trainer.eval_every_steps == 0 or step == trainer.total_steps
            is_save = preempted or (
                bool(cfg.checkpoint_every_steps) and step % cfg.checkpoint_every_steps == 0
            )
            if step % cfg.log_every_steps == 0 or is_eval or is_save:
                # Also before every save, so that a non-finite loss never reaches a checkpoint.
                summary = functools.reduce(lambda a, b: a.merge(b), pending).compute()
                skipped = _check_finite(summary.pop("nonfinite"), step, len(pending), cfg)
                summary["skipped_updates"] = skipped
                pending = []
                writer.write_scalars(step, {f"train/{k}": v for k, v in summary.items()})
            if is_eval and trainer.dataset.validation is not None:
                val, matrix = trainer.evaluate_with_confusion(
                    state, trainer.dataset.validation, "val"
                )
                last_validation = step, val, matrix
                writer.write_scalars(step, val)
                _update_progress(progress, val[cfg.early_stopping_metric], step, cfg)
                checkpointer.save(step, state, progress)
                if progress["stopped_early"]:
                    break
            elif is_eval or is_save:  # Without validation, evaluations only checkpoint.
                checkpointer.save(step, state, progress)
            if preempted:
                break
    return state, preempted, last_validation


def _update_progress(progress: dict, value: float, step: int, cfg) -> None:
    """Tracks the best validation value, its step and early stopping."""
    is_best = value > progress["best_metric"]
    if is_best:
        progress.update(best_metric=value, best_step=step, evals_without_improvement=0)
    else:
        progress["evals_without_improvement"] += 1
    patience = cfg.early_stopping_patience
    if patience and progress["evals_without_improvement"] >= patience:
        progress["stopped_early"] = True
        logging.info("Early stop at step %d: %s has not improved for %d evaluations.",
                     step, cfg.early_stopping_metric, patience)  # fmt: skip


def _final_results(
    trainer: Trainer,
    state,
    checkpointer: Checkpointer,
    progress: dict,
    last_validation: tuple[int, dict, np.ndarray] | None,
) -> tuple[dict, np.ndarray, str]:
    """Validation and test metrics of the final state and of the best checkpoint, and the
    final state's confusion matrix on test (validation when there is no test split). The
    loop's last validation is reused when it evaluated the final state."""
    has_validation = trainer.dataset.validation is not None
    results: dict[str, Any] = {"step": int(state.step)}
    if has_validation:  # The best metric, its step and early stopping; not the fingerprint.
        results.update({k: v for k, v in progress.items() if k != "dataset"})
        if last_validation is not None and last_validation[0] == int(state.step):
            _, val, matrix = last_validation
        else:
            val, matrix = trainer.evaluate_with_confusion(state, trainer.dataset.validation,
                                                          "val")  # fmt: skip
        results.update(val)
        split = "val"
    if trainer.dataset.test is not None:
        test, matrix = trainer.evaluate_with_confusion(state, trainer.dataset.test, "test")
        results.update(test)
        split = "test"
    best_step = progress.get("best_step")
    if best_step is None or trainer.dataset.test is None:  # No best checkpoint, or no test.
        return results, matrix, split
    if best_step == int(state.step):  # The same weights: reuse their numbers.
        results.update({f"best_{key}": value for key, value in test.items()})
        return results, matrix, split
    try:
        best_state, _ = checkpointer.restore_step(best_step, trainer.abstract_state())
    except CheckpointRestoreError as e:  # Final metrics stand without it.
        logging.error("No best_test metrics: %s", e)
        return results, matrix, split
    results.update(trainer.evaluate(best_state, trainer.dataset.test, "best_test"))
    return results, matrix, split


def _check_finite(nonfinite: tuple, step: int, window: int, cfg) -> int:
    """Stops the run at a non-finite loss, gradient or new state
    (config.training.on_nonfinite="stop"), or at a log window that skipped every update;
    returns how many updates were skipped."""
    count, first = (int(x) for x in nonfinite)
    if count == 0:
        return 0
    fix = ("Lower config.optimizer.learning_rate, set config.optimizer.grad_clip_norm, or check "
           "the data, then relaunch.")  # fmt: skip
    kept = ("Its update was not applied and no checkpoint was written after it; the last good "
            "one stays in the workdir.")  # fmt: skip
    if cfg.on_nonfinite == "stop":
        raise FloatingPointError(
            f"Non-finite loss, gradient or new state at step {first}. {kept} {fix} To skip "
            "such updates instead, set config.training.on_nonfinite=skip."
        )
    if count == window:
        raise FloatingPointError(
            f"Every update of steps {step - window + 1}-{step} had a non-finite loss, "
            f"gradient or new state and was skipped. {fix}"
        )
    logging.warning("Skipped %d update(s) with a non-finite loss, gradient or new state in "
                    "steps %d-%d (first: step %d).", count, step - window + 1, step,
                    first)  # fmt: skip
    return count


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
