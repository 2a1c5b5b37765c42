"""Model registry: name -> constructor taking (num_classes, model config)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from imgcls_jax.config import check_choice
from imgcls_jax.models import resnet
from imgcls_jax.models.resnet import RESNET_ARCHS, ResNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}

MODEL_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    name: functools.partial(ResNet, **arch) for name, arch in RESNET_ARCHS.items()
}


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """How a model's PyTorch state dict is laid out: our variable -> torch key; the classifier
    weight (dim 0: classes) and the first convolution (dim 1: input channels)."""

    torch_key: Callable[[str, tuple[str, ...]], str]
    head_weight: str
    stem_weight: str


TORCH_LAYOUTS: dict[str, TorchLayout] = {
    name: TorchLayout(
        functools.partial(resnet.torch_key, stage_sizes=arch["stage_sizes"]),
        head_weight="fc.weight",
        stem_weight="conv1.weight",
    )
    for name, arch in RESNET_ARCHS.items()
}


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the registered model named by `model_config.name`."""
    check_choice("model.name", model_config.name, MODEL_REGISTRY)
    return MODEL_REGISTRY[model_config.name](
        num_classes=num_classes,
        width=model_config.width,
        stem=model_config.stem,
        dtype=DTYPES[model_config.dtype],
        bn_momentum=model_config.bn_momentum,
    )
