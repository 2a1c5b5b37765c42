"""How each model's PyTorch state dict is laid out: the key of each of our variables, the
classifier and first convolution, and the preprocessing the published weights expect."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from imgcls_jax.models import efficientnet_lite, resnet, vit

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
        "NormAct": f"bn{int(number or 0) + 1}",
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


_VIT_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias"}
_VIT_TOP = {"stem_conv": "patch_embed.proj", "encoder_norm": "norm", "head": "head"}
_VIT_BLOCK = {"norm1": "norm1", "norm2": "norm2", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}


def vit_key(collection: str, names: tuple[str, ...]) -> str:
    """The timm ViT state-dict key of one of our variables (after `split_timm_attention`),
    e.g. ("block_3", "attention", "query", "kernel") -> "blocks.3.attn.query.weight"."""
    del collection
    if names[0] in ("cls_token", "pos_embedding"):
        return {"cls_token": "cls_token", "pos_embedding": "pos_embed"}[names[0]]
    leaf = _VIT_LEAF[names[-1]]
    if names[0] in _VIT_TOP:
        return f"{_VIT_TOP[names[0]]}.{leaf}"
    block = names[0].split("_")[1]
    if names[1] == "attention":
        return f"blocks.{block}.attn.{names[2]}.{leaf}"
    return f"blocks.{block}.{_VIT_BLOCK[names[1]]}.{leaf}"


def resample_position_embedding(posemb: np.ndarray, grid: int, prefix_tokens: int) -> np.ndarray:
    """A (1, prefix + g * g, width) position embedding for a grid x grid patch grid, resized
    as timm does it (`resample_abs_pos_embed`: bicubic, antialiased, with PyTorch)."""
    old = int(round((posemb.shape[1] - prefix_tokens) ** 0.5))
    if old == grid:
        return posemb
    try:
        import torch
    except ImportError as e:
        raise ImportError(f"Resizing the position embeddings from a {old}x{old} to a {grid}x"
                          f"{grid} patch grid needs PyTorch: pip install torch==2.13.0 (CPU), "
                          "or convert at the weights' own input size.") from e  # fmt: skip
    prefix, patches = posemb[:, :prefix_tokens], posemb[:, prefix_tokens:]
    patches = torch.from_numpy(np.ascontiguousarray(patches, np.float32))
    patches = patches.reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = torch.nn.functional.interpolate(patches, size=(grid, grid), mode="bicubic",
                                              antialias=True)  # fmt: skip
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, -1).numpy()
    return np.concatenate([prefix, patches], axis=1)


def prepare_timm_vit(tensors: dict[str, np.ndarray], image_size: int, num_heads: int) -> dict:
    """timm's ViT tensors in our model's terms: the fused `attn.qkv` and `attn.proj` as
    Flax's per-head query, key, value and out projections, already in our layout (kernels
    (width, heads, head width) and (heads, head width, width), biases (heads, head width));
    the position embedding resized to `image_size`'s patch grid."""
    tensors = dict(tensors)
    if "pos_embed" in tensors and "patch_embed.proj.weight" in tensors:
        patch = tensors["patch_embed.proj.weight"].shape[-1]
        prefix = 1 if "cls_token" in tensors else 0
        tensors["pos_embed"] = resample_position_embedding(tensors["pos_embed"],
                                                           image_size // patch, prefix)  # fmt: skip
    for key in [k for k in tensors if k.endswith(".attn.qkv.weight")]:
        prefix = key[: -len("qkv.weight")]
        weight, bias = tensors.pop(key), tensors.pop(f"{prefix}qkv.bias")
        width = weight.shape[1]
        head = width // num_heads
        for name, w, b in zip(("query", "key", "value"), np.split(weight, 3), np.split(bias, 3)):
            tensors[f"{prefix}{name}.weight"] = w.T.reshape(width, num_heads, head)
            tensors[f"{prefix}{name}.bias"] = b.reshape(num_heads, head)
        projection = tensors.pop(f"{prefix}proj.weight")
        tensors[f"{prefix}out.weight"] = projection.T.reshape(num_heads, head, width)
        tensors[f"{prefix}out.bias"] = tensors.pop(f"{prefix}proj.bias")
    return tensors


def unprepare_timm_vit(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inverse of `prepare_timm_vit` (at the same image size): per-head query, key, value
    and out projections back into timm's fused `attn.qkv` and `attn.proj`."""
    tensors = dict(tensors)
    for key in [k for k in tensors if k.endswith(".attn.query.weight")]:
        prefix = key[: -len("query.weight")]
        weights, biases = [], []
        for name in ("query", "key", "value"):
            kernel = tensors.pop(f"{prefix}{name}.weight")  # (width, heads, head width)
            weights.append(kernel.reshape(kernel.shape[0], -1).T)
            biases.append(tensors.pop(f"{prefix}{name}.bias").reshape(-1))
        tensors[f"{prefix}qkv.weight"] = np.concatenate(weights)
        tensors[f"{prefix}qkv.bias"] = np.concatenate(biases)
        out = tensors.pop(f"{prefix}out.weight")  # (heads, head width, width)
        tensors[f"{prefix}proj.weight"] = out.reshape(-1, out.shape[-1]).T
        tensors[f"{prefix}proj.bias"] = tensors.pop(f"{prefix}out.bias")
    return tensors


# timm's ViT models (timm 1.0.31) by (our variant, patch size): sizes they are registered at.
_TIMM_VIT = {
    ("vit_ti", 16): ("tiny", (224, 384)), ("vit_s", 16): ("small", (224, 384)),
    ("vit_s", 32): ("small", (224, 384)), ("vit_s", 8): ("small", (224,)),
    ("vit_b", 16): ("base", (224, 384)), ("vit_b", 32): ("base", (224, 384)),
    ("vit_b", 8): ("base", (224,)), ("vit_l", 16): ("large", (224, 384)),
    ("vit_l", 32): ("large", (224, 384)), ("vit_l", 14): ("large", (224,)),
}  # fmt: skip


def timm_name(fields: Mapping[str, Any], input_size: int) -> tuple[str, dict] | None:
    """(timm's model name, its model_args) for our model (`fields`: its model config) at
    `input_size`, or None where timm has no model with these keys: ResNet-18 to -152 with
    the ImageNet stem and width 64 (timm's and torchvision's resnetN), ViT-Ti/S/B/L with a
    class token at a patch size timm registers (another image size goes in model_args)."""
    name = fields["name"]
    if name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        imagenet = fields.get("stem", "imagenet") == "imagenet" and fields.get("width", 64) == 64
        return (name, {}) if imagenet else None
    known = _TIMM_VIT.get((name, fields.get("patch_size", 16)))
    if known is None or fields.get("pool", "cls") != "cls":
        return None
    size, registered = known
    at = input_size if input_size in registered else registered[0]
    args = {} if at == input_size else {"img_size": input_size}
    return f"vit_{size}_patch{fields.get('patch_size', 16)}_{at}", args


@dataclasses.dataclass(frozen=True)
class TorchLayout:
    """How a model's PyTorch state dict is laid out: our variable -> torch key (after
    `prepare(tensors, image_size)`, which rewrites fused tensors and resizes position
    embeddings); the classifier weight (dim 0: classes) and the first convolution (dim 1:
    input channels)."""

    torch_key: Callable[[str, tuple[str, ...]], str]
    head_weight: str
    stem_weight: str
    input_size: int = 224  # The preprocessing the published weights expect.
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    prepare: Callable[[dict, int], dict] = lambda tensors, image_size: tensors
    unprepare: Callable[[dict], dict] = lambda tensors: tensors  # The inverse of `prepare`.


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
} | {
    # timm's vit_*_patch16_224 (augreg) and DeiT normalise with mean = std = 0.5 (DeiT: the
    # ImageNet defaults; pass --mean/--std to the converter).
    name: TorchLayout(vit_key, head_weight="head.weight", stem_weight="patch_embed.proj.weight",
                      mean=(0.5,) * 3, std=(0.5,) * 3,
                      prepare=functools.partial(prepare_timm_vit, num_heads=variant[3]),
                      unprepare=unprepare_timm_vit)
    for name, variant in vit.VARIANTS.items()
}  # fmt: skip
