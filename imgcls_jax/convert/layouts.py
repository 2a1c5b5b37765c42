"""How each model's PyTorch state dict is laid out: the key of each of our variables, the
classifier and first convolution, and the preprocessing the published weights expect."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import numpy as np

from imgcls_jax.models import efficientnet_lite, resnet

_TORCH_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
               "var": "running_var"}  # fmt: skip
_RESNET_STEM_AND_HEAD = {"stem_conv": "conv1", "stem_norm": "bn1", "head": "fc"}
_EFFICIENTNET_MODULE = {
    "stem_conv": "_conv_stem", "stem_norm": "_bn0", "head_conv": "_conv_head",
    "head_norm": "_bn1", "head": "_fc", "expand_conv": "_expand_conv", "expand_norm": "_bn0",
    "depthwise_conv": "_depthwise_conv", "depthwise_norm": "_bn1",
    "project_conv": "_project_conv", "project_norm": "_bn2",
}  # fmt: skip


def resnet_key(collection: str, names: tuple[str, ...], stage_sizes: Sequence[int]) -> str:
    """The torchvision/timm state-dict key of one of our ResNet variables, e.g.
    ("BasicBlock_2", "Conv_1", "kernel") -> "layer2.0.conv2.weight" for ResNet-18."""
    del collection  # Params and batch stats share torch's module names.
    module, leaf = names[0], _TORCH_LEAF[names[-1]]
    if module in _RESNET_STEM_AND_HEAD:
        return f"{_RESNET_STEM_AND_HEAD[module]}.{leaf}"
    index = int(module.rsplit("_", 1)[1])
    starts = np.cumsum([0, *stage_sizes])
    stage = int(np.searchsorted(starts, index, side="right")) - 1
    layer, number = names[1].rsplit("_", 1) if names[1][-1].isdigit() else (names[1], "")
    torch_layer = {
        "Conv": f"conv{int(number or 0) + 1}",
        "BatchNorm": f"bn{int(number or 0) + 1}",
        "proj_conv": "downsample.0",
        "proj_norm": "downsample.1",
    }[layer]
    return f"layer{stage + 1}.{index - starts[stage]}.{torch_layer}.{leaf}"


def efficientnet_key(collection: str, names: tuple[str, ...]) -> str:
    """The `efficientnet-lite-pytorch` state-dict key of one of our variables, e.g.
    ("blocks_3", "depthwise_conv", "kernel") -> "_blocks.3._depthwise_conv.weight"."""
    del collection
    leaf = _TORCH_LEAF[names[-1]]
    if names[0].startswith("blocks_"):
        return f"_blocks.{names[0].split('_')[1]}.{_EFFICIENTNET_MODULE[names[1]]}.{leaf}"
    return f"{_EFFICIENTNET_MODULE[names[0]]}.{leaf}"


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
        functools.partial(resnet_key, stage_sizes=arch["stage_sizes"]),
        head_weight="fc.weight",
        stem_weight="conv1.weight",
    )
    for name, arch in resnet.RESNET_ARCHS.items()
} | {
    name: TorchLayout(efficientnet_key, head_weight="_fc.weight",
                      stem_weight="_conv_stem.weight", input_size=variant[2],
                      mean=(127 / 255,) * 3, std=(128 / 255,) * 3)  # TF-Lite's (x - 127) / 128.
    for name, variant in efficientnet_lite.VARIANTS.items()
}  # fmt: skip
