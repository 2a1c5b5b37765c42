"""The evaluation suites of config.evaluation, run by the training loop at their intervals and
by `imgcls-evaluate`: accuracy under corruptions of a split (on device, per corruption and
severity) and few-shot linear probes on frozen pre-logit features. Programs are built once,
over the run's mesh, in fixed-size padded batches."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from imgcls_jax import data
from imgcls_jax.data import input_pipeline
from imgcls_jax.evaluation import corruptions, few_shot
from imgcls_jax.registry import closest
from imgcls_jax.runtime import sharding

CORRUPTED_PREFIX = "test_c"  # Metric names: test_c/<corruption>_<severity>, test_c/mean, ...
CORRUPTION_SEED = 0  # The noise of each (image index, corruption) is fixed across runs.
FEW_SHOT_DRAW_SEED = 0  # Which train examples the probe's pool holds.


def corruption_names(spec: str) -> tuple[str, ...]:
    """config.evaluation.corruptions: "all", or names separated by commas; "" none."""
    known = (*corruptions.NAMES, *corruptions.HOST_NAMES)
    if spec.strip() == "all":
        return known
    names = tuple(n.strip() for n in spec.split(",") if n.strip())
    for name in names:
        if name not in known:
            raise ValueError(f"config.evaluation.corruptions names {name!r}, not a corruption."
                             f"{closest(name, known)}")  # fmt: skip
    return names


def _correct_count(
    variables: Any,
    batch: dict[str, jax.Array],
    first_row: jax.Array,
    severity: jax.Array,
    total: jax.Array,
    *,
    logits_fn: Callable,
    corruption: str | None,
) -> jax.Array:
    """`total` plus the batch's correctly classified real rows, its images corrupted first
    (rows numbered from `first_row`, so each image's noise is its own whatever the batch)."""
    images = batch["image"].astype(jnp.float32)
    if corruption is not None:
        rows = first_row + jnp.arange(images.shape[0], dtype=jnp.int32)
        images = corruptions.corrupt(images, rows, corruption, severity, CORRUPTION_SEED)
    predicted = jnp.argmax(logits_fn(variables, images), axis=-1)
    return total + jnp.sum((predicted == batch["label"]) & batch["mask"], dtype=jnp.int32)


class Suites:
    """The suites config.evaluation asks for, for one model: `logits_fn(variables, images)`
    and `features_fn(variables, images)` of float32 [0, 255] images (the model's evaluation
    pipeline and normalisation inside), over `mesh` in batches of `batch_size`. The
    variables stay where they are (replicated, or split by FSDP)."""

    def __init__(
        self,
        evaluation: ml_collections.ConfigDict,
        logits_fn: Callable,
        features_fn: Callable,
        mesh: jax.sharding.Mesh,
        batch_size: int,
    ):
        self.config, self.mesh, self.batch_size = evaluation, mesh, batch_size
        self.corruptions = corruption_names(evaluation.corruptions)
        replicated, batch = sharding.replicated(mesh), sharding.batch_sharding(mesh)
        device_names = [n for n in self.corruptions if n in corruptions.NAMES]
        self._count = {
            name: jax.jit(
                functools.partial(_correct_count, logits_fn=logits_fn, corruption=name),
                in_shardings=(None, batch, replicated, replicated, replicated),
                out_shardings=replicated, donate_argnums=4,
            )
            for name in (None, *device_names)
        }  # fmt: skip
        self._features = jax.jit(
            lambda variables, batch: (features_fn(variables, batch["image"]), batch["mask"]),
            in_shardings=(None, batch), out_shardings=replicated,
        )  # fmt: skip

    def accuracy(self, variables: Any, split: data.Split, corruption: str | None = None,
                 severity: int = 0) -> float:  # fmt: skip
        """Top-1 accuracy over every example of `split`, under `corruption` at `severity`
        (a host corruption, JPEG, is applied to the split on the host first)."""
        program = corruption
        if corruption in corruptions.HOST_NAMES:
            split = data.Split(corruptions.jpeg_host(np.asarray(split.images), severity),
                               split.labels)  # fmt: skip
            program = None
        count = self._count[program]
        total = jnp.zeros((), jnp.int32)
        level = jnp.int32(severity)
        for i, batch in enumerate(input_pipeline.eval_batches(split, self.batch_size, self.mesh)):
            total = count(variables, batch, jnp.int32(i * self.batch_size), level, total)
        return int(jax.device_get(total)) / len(split)

    def corruption_metrics(self, variables: Any, split: data.Split) -> dict[str, float]:
        """Accuracy on `split` under each corruption at each configured severity
        ("test_c/<name>_<severity>"), each corruption's mean over severities ("test_c/<name>")
        and the mean over all ("test_c/mean"), on the first `corruption_examples` examples
        (all when 0)."""
        count = self.config.corruption_examples
        if count and count < len(split):
            split = data.Split(split.images[:count], split.labels[:count])
        results = {}
        for name in self.corruptions:
            values = [self.accuracy(variables, split, name, s)
                      for s in self.config.corruption_severities]  # fmt: skip
            for severity, value in zip(self.config.corruption_severities, values, strict=True):
                results[f"{CORRUPTED_PREFIX}/{name}_{severity}"] = value
            results[f"{CORRUPTED_PREFIX}/{name}"] = float(np.mean(values))
        if self.corruptions:
            means = [results[f"{CORRUPTED_PREFIX}/{name}"] for name in self.corruptions]
            results[f"{CORRUPTED_PREFIX}/mean"] = float(np.mean(means))
            results[f"{CORRUPTED_PREFIX}/clean"] = self.accuracy(variables, split)
        return results

    def features(self, variables: Any, split: data.Split) -> np.ndarray:
        """Pre-logit features [N, D] of every example of `split`."""
        chunks = []
        for batch in input_pipeline.eval_batches(split, self.batch_size, self.mesh):
            features, mask = jax.device_get(self._features(variables, batch))
            chunks.append(np.asarray(features)[np.asarray(mask)])
        return np.concatenate(chunks)

    def few_shot_metrics(
        self, variables: Any, train: data.Split, test: data.Split, num_classes: int
    ) -> dict[str, float]:
        """The ridge probe (`few_shot.probe`) on features of `few_shot_train_examples` train
        examples (a fixed draw) and of every `test` example: "few_shot/<k>shot_accuracy" and
        its spread over the seeds."""
        pool = self.config.few_shot_train_examples
        if pool and pool < len(train):
            train = data.subset(train, pool, FEW_SHOT_DRAW_SEED)
        return few_shot.probe(
            self.features(variables, train), train.labels, self.features(variables, test),
            test.labels, num_classes, shots=tuple(self.config.few_shot_shots),
            seeds=tuple(range(self.config.few_shot_seeds)), l2=self.config.few_shot_l2,
        )  # fmt: skip
