"""The model families; each registers its names (registry kind "model") with a constructor
taking plain keyword arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax

from imgcls_jax import registry
from imgcls_jax.kernels import XLA, Kernels, backend

# Imported for their registrations.
from imgcls_jax.models import airbench, efficientnet_lite, resnet, vit  # noqa: F401
from imgcls_jax.runtime import precision


def names() -> tuple[str, ...]:
    return registry.names("model")


def build(name: str, **kwargs) -> nn.Module:
    """The model registered as `name`, e.g. build("resnet20", num_classes=10, width=16)."""
    return registry.build("model", name, key="model.name", **kwargs)


def build_model(
    model_config: Mapping[str, Any], num_classes: int, kernels: Kernels = XLA, **overrides
) -> nn.Module:
    """The model named by `model_config["name"]` (a config's model section), with the fields
    it takes (`overrides` win, e.g. a resolved dtype), computing on `kernels` (see
    `imgcls_jax.kernels.backend`)."""
    fields = {**model_config, **overrides, "kernels": kernels}
    return registry.build_from("model", fields["name"], fields, num_classes=num_classes,
                               key="model.name")  # fmt: skip


def build_for_devices(
    model_config: Mapping[str, Any], num_classes: int, devices: Sequence[jax.Device]
) -> tuple[nn.Module, str, Kernels]:
    """`build_model` for a run on `devices`: (model, its dtype, its kernels), with
    `dtype="auto"` and `kernels="auto"` resolved for those devices."""
    dtype = precision.resolve(model_config["dtype"], devices)
    kernels = backend(model_config["kernels"], devices, dtype)
    return build_model(model_config, num_classes, kernels, dtype=dtype), dtype, kernels
