"""Model registry: name -> constructor taking (num_classes, model config)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from imgcls_jax.config import check_choice
from imgcls_jax.kernels import onednn
from imgcls_jax.models import efficientnet_lite, resnet, vit
from imgcls_jax.models.airbench import AirbenchNet
from imgcls_jax.models.efficientnet_lite import EfficientNetLite
from imgcls_jax.models.resnet import RESNET_ARCHS, ResNet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
KERNELS = ("auto", "xla", "onednn")


def native_kernels(kernels: str, dtype: str = "float32") -> dict:
    """The model fields that swap in native kernels: {} for XLA's own, or oneDNN's
    convolution and training-mode batch norm.

    oneDNN's kernels run on the CPU and XLA's partitioner cannot split them (with several
    devices each would get the whole batch), so "auto" takes them only for a run on one CPU
    device, only if they build here, and only for a compute `dtype` they take on this CPU.
    """
    check_choice("model.kernels", kernels, KERNELS)
    one_cpu = jax.default_backend() == "cpu" and jax.device_count() == 1
    if kernels == "xla" or (kernels == "auto" and not one_cpu):
        return {}
    if kernels == "onednn":
        if not one_cpu:
            raise ValueError(
                f"config.model.kernels='onednn' needs a run on one CPU device; this one has "
                f"{jax.device_count()} {jax.default_backend()} devices. Use 'auto' or 'xla'."
            )
        onednn.load()  # Raises OnednnUnavailable, saying what to install.
    elif not onednn.available():
        logging.warning("oneDNN kernels unavailable, using XLA's: %s", onednn.load_error())
        return {}
    supported = [jnp.dtype(d).name for d in onednn.kernel_dtypes()]
    if jnp.dtype(DTYPES[dtype]).name not in supported:
        message = (
            f"oneDNN's kernels take {' or '.join(supported)} on this CPU, not "
            f"config.model.dtype={dtype!r} (bfloat16 needs AVX-512)"
        )
        if kernels == "onednn":
            raise ValueError(f"{message}. Use model.kernels='auto' or 'xla'.")
        logging.warning("%s: using XLA's kernels.", message)
        return {}
    logging.info("Convolutions and batch norm run on oneDNN's kernels (model.kernels=%s).", kernels)
    return dict(conv_fn=onednn.conv_general_dilated, norm_train_fn=onednn.batch_norm_train)


def _resnet(arch: dict, num_classes: int, model_config: ml_collections.ConfigDict) -> nn.Module:
    return ResNet(
        **arch,
        num_classes=num_classes,
        width=model_config.width,
        stem=model_config.stem,
        dtype=DTYPES[model_config.dtype],
        bn_momentum=model_config.bn_momentum,
        drop_path_rate=model_config.drop_path_rate,
        **native_kernels(model_config.kernels, model_config.dtype),
    )


def _vit(variant: tuple, num_classes: int, model_config: ml_collections.ConfigDict) -> nn.Module:
    width, depth, mlp_dim, heads = variant
    return vit.ViT(
        num_classes=num_classes,
        width=width,
        depth=depth,
        mlp_dim=mlp_dim,
        num_heads=heads,
        patch_size=model_config.patch_size,
        pool=model_config.pool,
        posemb=model_config.posemb,
        dropout=model_config.dropout,
        drop_path_rate=model_config.drop_path_rate,
        dtype=DTYPES[model_config.dtype],
    )


def _efficientnet_lite(
    variant: tuple, num_classes: int, model_config: ml_collections.ConfigDict
) -> nn.Module:
    width, depth, _, dropout = variant
    return EfficientNetLite(
        num_classes=num_classes,
        width_coefficient=width,
        depth_coefficient=depth,
        dropout_rate=dropout,
        dtype=DTYPES[model_config.dtype],
        bn_momentum=model_config.bn_momentum,
        **native_kernels(model_config.kernels, model_config.dtype),
    )


def _airbench(num_classes: int, model_config: ml_collections.ConfigDict) -> nn.Module:
    return AirbenchNet(
        num_classes=num_classes,
        width=model_config.width,
        dtype=DTYPES[model_config.dtype],
        bn_momentum=model_config.bn_momentum,
        **native_kernels(model_config.kernels, model_config.dtype),
    )


# name -> constructor(num_classes, model config).
MODEL_REGISTRY: dict[str, Callable[[int, ml_collections.ConfigDict], nn.Module]] = {
    "airbench": _airbench,
    **{name: functools.partial(_resnet, arch) for name, arch in RESNET_ARCHS.items()},
    **{
        name: functools.partial(_efficientnet_lite, variant)
        for name, variant in efficientnet_lite.VARIANTS.items()
    },
    **{name: functools.partial(_vit, variant) for name, variant in vit.VARIANTS.items()},
}


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """How a model's PyTorch state dict is laid out: our variable -> torch key; the classifier
    weight (dim 0: classes) and the first convolution (dim 1: input channels)."""

    torch_key: Callable[[str, tuple[str, ...]], str]
    head_weight: str
    stem_weight: str
    input_size: int = 224  # The preprocessing the published weights expect.
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)


TORCH_LAYOUTS: dict[str, TorchLayout] = {
    name: TorchLayout(
        functools.partial(resnet.torch_key, stage_sizes=arch["stage_sizes"]),
        head_weight="fc.weight",
        stem_weight="conv1.weight",
    )
    for name, arch in RESNET_ARCHS.items()
} | {
    name: TorchLayout(efficientnet_lite.torch_key, head_weight="_fc.weight",
                      stem_weight="_conv_stem.weight", input_size=variant[2],
                      mean=(127 / 255,) * 3, std=(128 / 255,) * 3)  # TF-Lite's (x - 127) / 128.
    for name, variant in efficientnet_lite.VARIANTS.items()
}  # fmt: skip


def build_model(model_config: ml_collections.ConfigDict, num_classes: int) -> nn.Module:
    """Builds the registered model named by `model_config.name`."""
    check_choice("model.name", model_config.name, MODEL_REGISTRY)
    return MODEL_REGISTRY[model_config.name](num_classes, model_config)
