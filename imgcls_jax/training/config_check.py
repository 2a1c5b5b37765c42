"""Checks a whole config before any device work: the config's own rules, then each part it
names built once (model, kernels, optimizer, schedule, data source, augmentation pipelines),
so that a typo fails with the closest valid name before data is loaded or a workdir made."""

from __future__ import annotations

import ml_collections

from imgcls_jax import augment, data, kernels, models, registry
from imgcls_jax import config as config_lib
from imgcls_jax.data import device_resident
from imgcls_jax.evaluation import suites
from imgcls_jax.models import layers
from imgcls_jax.training import optimizers, profiling


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises a ValueError saying what to fix."""
    config_lib.check_rules(config)
    kernels.check_name(config.model.kernels)
    dtype = config.model.dtype
    registry.check_choice("model.dtype", dtype, ("auto", *layers.DTYPES))
    models.build_model(config.model, num_classes=2, dtype="float32" if dtype == "auto" else dtype)
    schedule = optimizers.build_schedule(config.schedule, config.optimizer.learning_rate, 1, 1)
    optimizers.build_optimizer(config.optimizer, schedule)
    data.check_dataset_name(config.dataset)
    augment.parse_pipeline(config.augment.train)
    augment.parse_pipeline(config.augment.eval, training=False)
    registry.check_choice("input.device_resident", config.input.device_resident,
                          device_resident.MODES)  # fmt: skip
    profiling.parse_steps(config.training.profile_steps)
    suites.corruption_names(config.evaluation.corruptions)
