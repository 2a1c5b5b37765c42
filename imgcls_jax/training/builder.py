"""The Trainer: everything built from a config (mesh, data, model, optimizer, jitted steps),
and evaluation over a split."""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imgcls_jax import augment, convert, data
from imgcls_jax.data import batch_rows, class_balance, device_resident, input_pipeline
from imgcls_jax.evaluation import suites
from imgcls_jax.models import build_for_devices
from imgcls_jax.reporting import confusion
from imgcls_jax.runtime import compile_options, sharding
from imgcls_jax.training import (
    cadence,
    distillation,
    metrics,
    optimizers,
    steps,
    train_state,
    transfer,
)
from imgcls_jax.training.progress import Evaluation


def _check_normalisation(channels: int, mean: tuple) -> None:
    """One mean (and std) per image channel."""
    if len(mean) != channels:
        raise ValueError(
            f"The images have {channels} channel(s) but config.dataset.mean/std have "
            f"{len(mean)} entries: give one per channel, or set "
            f"config.dataset.channels={len(mean)} (image folders, streamed TFDS) to "
            "convert the images."
        )


class Trainer:
    """Everything built from a config: mesh, data and its iterators, the cadence, model,
    optimizer, jitted steps. The config is checked by the caller (`config_check.validate`,
    at the entry points), before any data is read."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        dataset: data.Dataset | None = None,
        devices: list | None = None,
    ):
        self.config = config
        self.mesh = sharding.make_mesh(devices, config.mesh.fsdp)
        sharding.check_batch_size(config.input.batch_size, self.mesh, "input.batch_size",
                                  config.training.grad_accum_steps)  # fmt: skip
        sharding.check_batch_size(config.input.eval_batch_size, self.mesh, "input.eval_batch_size")
        self._build_data(dataset)
        self._build_task()
        self._eval_compile: threading.Thread | None = None  # See compile_eval_step_in_background.

    def _build_data(self, dataset: data.Dataset | None) -> None:
        """The dataset and its normalisation (a pretrained checkpoint's, when asked), the train
        order (and the train split on device), class weights and the run's step counts."""
        config = self.config
        if dataset is None:  # Decoding a large folder takes long: check its channels first.
            channels = data.image_folder_channels(config.dataset)
            if channels is not None and not (
                config.transfer.checkpoint and config.transfer.pretrained_preprocessing
            ):  # (A checkpoint's normalisation adapts to any channels.)
                _check_normalisation(channels, config.dataset.mean)
        self.dataset = dataset if dataset is not None else data.load_dataset(config.dataset)
        if self.dataset.validation is None and self.dataset.test is None:
            raise ValueError("The dataset has neither a validation nor a test split: nothing to "
                             "evaluate. Hold out config.dataset.validation_size > 0 examples.")  # fmt: skip
        self.channels = self.dataset.train.images.shape[-1]
        if self.dataset.num_classes < 2:
            raise ValueError(f"The dataset has {self.dataset.num_classes} class(es) "
                             f"{list(self.dataset.class_names)}; a classifier needs at least 2.")  # fmt: skip
        # What the model sees: the stored images after the evaluation pipeline (a ViT's
        # learned position embeddings are made for it).
        self.model_input_shape = augment.check_shapes(
            config.augment.train, config.augment.eval, self.image_shape
        )
        self.mean, self.std = tuple(config.dataset.mean), tuple(config.dataset.std)
        self.pretrained = None  # (variables, metadata) of config.transfer.checkpoint.
        if config.transfer.checkpoint:
            self._load_pretrained(config.transfer)
        self._check_channels()
        train_labels = self.dataset.train.labels
        self.order = (
            class_balance.BalancedOrder(train_labels, config.input.batch_size, config.seed)
            if config.input.sampling == "class_balanced"
            else batch_rows.TrainOrder(len(train_labels), config.input.batch_size, config.seed)
        )
        self.resident = None  # The train split on device, when it is placed there.
        if device_resident.use_device_resident(
            config.input.device_resident, self.dataset.train, self.mesh
        ):
            self.resident = device_resident.DeviceResidentTrain(self.dataset.train, self.order,
                                                            self.mesh)  # fmt: skip
        self.class_weights = None
        if config.loss.class_weighting == "balanced":
            self.class_weights = class_balance.balanced_class_weights(
                train_labels, self.dataset.num_classes
            )
            logging.info("Class weights: %s", np.round(self.class_weights, 3).tolist())
        self.cadence = cadence.build_cadence(
            config.training, self.order.steps_per_epoch, self.mesh.devices.flat[0].platform,
            config.evaluation,
        )  # fmt: skip

    def _build_task(self) -> None:
        """What a train step needs: kernels, model, schedule, optimizer, frozen parameters,
        metrics, and the jitted steps."""
        config = self.config
        self.model, self.dtype, self.kernels = build_for_devices(
            config.model, self.dataset.num_classes, list(self.mesh.devices.flat)
        )
        peak_lr = optimizers.peak_learning_rate(config.optimizer, config.input.batch_size)
        self.learning_rate_fn = optimizers.build_schedule(
            config.schedule, peak_lr, self.cadence.steps_per_epoch, self.cadence.total_steps
        )
        init_key, self.train_key = jax.random.split(jax.random.key(config.seed))
        self.init_key = init_key
        params_shape = jax.eval_shape(
            lambda: self.model.init(init_key, np.zeros((1, *self.model_input_shape)), train=False)
        )["params"]
        self.frozen = transfer.frozen_mask(
            params_shape, config.transfer.freeze, config.transfer.linear_probe
        )
        self.any_frozen = any(jax.tree.leaves(self.frozen))
        if self.any_frozen and config.optimizer.name == "sam":
            raise ValueError("optimizer.name=sam takes its second gradient for every parameter: "
                             "it does not combine with transfer.freeze or transfer.linear_probe; "
                             "use sgd there.")  # fmt: skip
        if config.optimizer.name == "schedule_free" and (
            self.any_frozen or config.transfer.layer_decay < 1
        ):
            raise ValueError("optimizer.name=schedule_free averages every parameter's own "
                             "sequence: it does not combine with transfer.freeze, "
                             "transfer.linear_probe or transfer.layer_decay; use adamw there.")  # fmt: skip
        self.tx = transfer.wrap_optimizer(
            optimizers.build_optimizer(config.optimizer, self.learning_rate_fn),
            params_shape, self.frozen, config.transfer.layer_decay,
        )  # fmt: skip
        self._log_frozen()
        self.train_metrics_cls = metrics.collection(
            self.dataset.num_classes, train=True, smoothed=config.loss.label_smoothing > 0,
            distilled=bool(config.distill.teacher),
        )  # fmt: skip
        self.eval_metrics_cls = metrics.collection(self.dataset.num_classes, train=False)
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
        _check_normalisation(self.channels, self.mean)

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
        augment_fn = augment.build_augment_fn(self.config.augment.train)
        mix_fn = augment.build_mix_fn(self.config.augment, self.dataset.num_classes)
        self.teacher = self._load_teacher(augment_fn) if self.config.distill.teacher else None
        schedule_free = self.config.optimizer.name == "schedule_free"
        ema = self.config.training.ema_decay > 0 or schedule_free
        init_state = functools.partial(
            train_state.init_state,
            model=self.model,
            tx=self.tx,
            image_shape=self.model_input_shape,
            ema=ema,
        )
        # Where each array of the train state lives (sharding.state_shardings).
        self.state_sharding = state = sharding.state_shardings(
            jax.eval_shape(init_state, self.init_key), self.mesh, self.config.mesh.fsdp_min_bytes
        )
        self.init_state = jax.jit(
            init_state,
            out_shardings=state,
            compiler_options=compile_options.rarely_run(self.mesh.devices.flat[0].platform),
        )
        parts = steps.TrainStepParts(
            model=self.model,
            tx=self.tx,
            learning_rate_fn=self.learning_rate_fn,
            augment_fn=augment_fn,
            mix_fn=mix_fn,
            mean=self.mean,
            std=self.std,
            metrics_cls=self.train_metrics_cls,
            label_smoothing=self.config.loss.label_smoothing,
            class_weights=self.class_weights,
            frozen=self.frozen if self.any_frozen else None,
            frozen_norms=transfer.frozen_norms(self.frozen),
            micro_batches=self.config.training.grad_accum_steps,
            ema_decay=self.config.training.ema_decay,
            ema_warmup=self.config.training.ema_warmup,
            average_fn=optimizers.schedule_free_average if schedule_free else None,
            teacher_fn=self.teacher.logits if self.teacher else None,
            distill_weight=self.config.distill.weight,
            distill_temperature=self.config.distill.temperature,
        )
        self.train_step = jax.jit(
            functools.partial(steps.train_step, parts=parts),
            in_shardings=(state, batch, replicated),
            out_shardings=(state, replicated),
            donate_argnums=0,
        )

        # Several steps per call: a tuple of batches (its length fixes the program), metrics
        # merged on device into the ones passed in (`empty_train_metrics` to start); one
        # program per image size of progressive resizing.
        def jit_train_steps(size: int):
            return jax.jit(
                functools.partial(steps.train_steps,
                                  parts=dataclasses.replace(parts, image_size=size)),
                in_shardings=(state, replicated, batch, replicated),
                out_shardings=(state, replicated),
                donate_argnums=(0, 1),
            )  # fmt: skip

        self.train_steps = jit_train_steps(0)
        self._train_steps_at = {size: jit_train_steps(size) for _, size in
                                self.cadence.train_sizes}  # fmt: skip
        logits_fn = functools.partial(
            steps.eval_logits,
            model=self.model,
            preprocess_fn=augment.build_eval_fn(self.config.augment.eval),
            flip_tta=self.config.augment.eval_flip_tta,
            **norm,
        )
        features_fn = functools.partial(
            steps.eval_features, model=self.model,
            preprocess_fn=augment.build_eval_fn(self.config.augment.eval), **norm,
        )  # fmt: skip
        self.suites = suites.Suites(self.config.evaluation, logits_fn, features_fn, self.mesh,
                                    self.config.input.eval_batch_size)  # fmt: skip
        self.eval_step = jax.jit(
            functools.partial(
                steps.eval_step, logits_fn=logits_fn, metrics_cls=self.eval_metrics_cls
            ),
            in_shardings=(state, batch, replicated),
            out_shardings=replicated,
            donate_argnums=2,
        )
        self._empty_train_metrics = jax.jit(self.train_metrics_cls.empty,
                                            out_shardings=replicated)  # fmt: skip
        self._empty_eval_metrics = jax.jit(
            functools.partial(
                metrics.empty_eval_metrics, self.eval_metrics_cls, self.dataset.num_classes
            ),
            out_shardings=replicated,
        )

        self.augment_batch = jax.jit(
            functools.partial(steps.augment_batch, augment_fn=augment_fn, mix_fn=mix_fn),
            in_shardings=(replicated, replicated, batch),
            out_shardings=replicated,
        )
        self.jump_to_step = jax.jit(train_state.jump_to_step, out_shardings=state, donate_argnums=0)
        self.replace_variables = jax.jit(
            functools.partial(train_state.replace_variables, tx=self.tx, ema=ema),
            out_shardings=state,
        )

    def evaluate_suites(self, state: train_state.TrainState, step: int) -> dict[str, float]:
        """The evaluation suites due at `step` (config.evaluation; all of them at the last
        step) on the weights `predict` serves (the average, when the run keeps one): the
        corruptions of the test split (validation without one), the few-shot probe."""
        weights = state.ema_state() if state.ema else state
        variables = {"params": weights.params, "batch_stats": weights.batch_stats}
        test = self.dataset.test if self.dataset.test is not None else self.dataset.validation
        results = {}
        if self.cadence.is_due(step, self.cadence.corruptions_every):
            results.update(self.suites.corruption_metrics(variables, test))
        if self.cadence.is_due(step, self.cadence.few_shot_every):
            results.update(self.suites.few_shot_metrics(variables, self.dataset.train, test,
                                                        self.dataset.num_classes))  # fmt: skip
        return results

    def train_steps_after(self, step: int) -> Any:
        """The jitted `train_steps` for the steps after `step`: `train_steps`, or under
        progressive resizing the program of that step's image size."""
        size = self.cadence.train_size_after(step)
        return self._train_steps_at[size] if size else self.train_steps

    def _load_teacher(self, augment_fn) -> distillation.Teacher:
        """config.distill's teacher, checked against the student's augmented train images."""
        key = jax.eval_shape(lambda: jax.random.key(0))
        images = jax.ShapeDtypeStruct((1, *self.image_shape), jnp.uint8)
        teacher = distillation.load_teacher(
            self.config.distill, self.dataset.class_names, jax.eval_shape(augment_fn, key, images),
            sharding.replicated(self.mesh),
        )  # fmt: skip
        logging.info("Distilling from %s (%s).", teacher.source, teacher.model_name)
        return teacher

    def compile_eval_step_in_background(self) -> None:
        """Compiles the evaluation step ahead of time on a daemon thread, while training runs;
        its first call reuses the program (the first evaluation waits for the thread rather
        than compiling again). Done by the loop where the devices are not CPUs, whose cores
        the training steps already use."""
        batch = self.abstract_batch(self.config.input.eval_batch_size, mask=True)
        state = self.abstract_state()

        def compile_eval_step() -> None:
            try:
                self.eval_step.lower(state, batch, self.empty_eval_metrics()).compile()
            except Exception as error:  # The first evaluation compiles it then.
                logging.warning("Compiling the evaluation step ahead failed: %s", error)

        self._eval_compile = threading.Thread(target=compile_eval_step, daemon=True,
                                              name="compile_eval_step")  # fmt: skip
        self._eval_compile.start()

    def empty_train_metrics(self) -> Any:
        """Merged train metrics of no step yet (fresh arrays: `train_steps` consumes them),
        placed as its results are, so that every call runs one program. CLU's and our empty
        metrics have the dtypes a step's metrics have, as a scan's carry needs."""
        return self._empty_train_metrics()

    def empty_eval_metrics(self) -> Any:
        """Evaluation metrics of no example, to merge batches into (fresh arrays: `eval_step`
        consumes them), placed as its results are, so that every call runs one program."""
        return self._empty_eval_metrics()

    def augmented_images(self, step: int, count: int) -> np.ndarray:
        """The first `count` images of train step `step` exactly as the model sees them
        (augmented and mixed, before normalisation), as float32 NHWC in [0, 255]."""
        batch = input_pipeline.train_batch(self.dataset.train, self.order, step, self.mesh)
        images, _ = self.augment_batch(self.train_key, np.int32(step), batch)
        return np.asarray(images[:count])

    def create_state(self) -> train_state.TrainState:
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

    def abstract_batch(self, rows: int, mask: bool) -> dict[str, jax.ShapeDtypeStruct]:
        """The shapes, dtypes and shardings of a batch of `rows` images as the steps take it
        (evaluation batches carry a padding `mask`)."""
        placed = sharding.batch_sharding(self.mesh)
        batch = {"image": jax.ShapeDtypeStruct((rows, *self.image_shape), jnp.uint8, sharding=placed),
                 "label": jax.ShapeDtypeStruct((rows,), jnp.int32, sharding=placed)}  # fmt: skip
        if mask:
            batch["mask"] = jax.ShapeDtypeStruct((rows,), jnp.bool_, sharding=placed)
        return batch

    def abstract_state(self) -> Any:
        """The train state's shapes, dtypes and shardings: restore and compile targets."""
        return jax.tree.map(
            lambda x, place: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=place),
            jax.eval_shape(self.init_state, self.init_key), self.state_sharding,
        )  # fmt: skip

    def train_batches(self, start_step: int) -> Iterator[dict[str, jax.Array]]:
        """The train batches of steps `start_step` + 1, ... placed on the mesh: from the split
        on device when it is kept there, else from the host pipeline (prefetching; close it
        to stop its thread)."""
        if self.resident is not None:
            return self.resident.batches(start_step)
        split, cfg = self.dataset.train, self.config.input
        return input_pipeline.train_batches(split, self.order, start_step, self.mesh,
                                            cfg.prefetch, input_pipeline.worker_count(cfg.workers, split))  # fmt: skip

    def evaluate_split(self, state: train_state.TrainState, step: int, name: str) -> Evaluation:
        """The evaluation of split `name` ("val" or "test") at `step` (metrics keyed
        `name/...`)."""
        split = {"val": self.dataset.validation, "test": self.dataset.test}[name]
        return Evaluation(step, *self.evaluate_with_confusion(state, split, name))

    def evaluate(
        self, state: train_state.TrainState, split: data.Split, prefix: str
    ) -> dict[str, float]:
        """Metrics over every example of `split` exactly once, keyed `prefix/name`; with a
        weight average also its metrics, keyed `prefix_ema/name`."""
        return self.evaluate_with_confusion(state, split, prefix)[0]

    def evaluate_with_confusion(
        self, state: train_state.TrainState, split: data.Split, prefix: str
    ) -> tuple[dict[str, float], np.ndarray]:
        """`evaluate`'s metrics (plus balanced accuracy) and the trained weights' [true,
        predicted] counts."""
        results, matrix = self._evaluate_weights(state, split, prefix)
        if state.ema:
            results.update(self._evaluate_weights(state.ema_state(), split, f"{prefix}_ema")[0])
        return results, matrix

    def _evaluate_weights(
        self, state: train_state.TrainState, split: data.Split, prefix: str
    ) -> tuple[dict[str, float], np.ndarray]:
        if self._eval_compile is not None:
            self._eval_compile.join()  # Not compiling the same program twice at once.
            self._eval_compile = None
        total = self.empty_eval_metrics()
        workers = input_pipeline.worker_count(self.config.input.workers, split)
        for batch in input_pipeline.eval_batches(
            split, self.config.input.eval_batch_size, self.mesh, workers=workers
        ):
            total = self.eval_step(state, batch, total)
        total = jax.device_get(total)  # Computed on the host: see steps.eval_step.
        computed = total.compute()
        matrix = np.asarray(computed.pop("confusion_matrix"))
        results = {f"{prefix}/{k}": float(v) for k, v in computed.items()}
        results[f"{prefix}/balanced_accuracy"] = confusion.balanced_accuracy(matrix)
        results[f"{prefix}/num_examples"] = int(total.loss.count)
        return results, matrix
