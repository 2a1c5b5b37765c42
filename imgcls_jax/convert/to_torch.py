"""Our variables -> the PyTorch state dict our converter reads (its exact inverse: importing
the export gives the same variables), in timm's and torchvision's key names for ResNets and
ViTs and efficientnet-lite-pytorch's for EfficientNet-Lite; and the config.json timm reads."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from imgcls_jax.convert import layouts

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"


def flax_to_torch(name: str, array: np.ndarray) -> np.ndarray:
    """The inverse of `convert.torch_to_flax`: conv HWIO -> OIHW (depthwise (H, W, 1, C) ->
    (C, 1, H, W)), dense (in, out) -> (out, in); other leaves unchanged."""
    if name == "kernel" and array.ndim == 4:
        return np.transpose(array, (3, 2, 0, 1))
    if name == "kernel" and array.ndim == 2:
        return array.T
    return array


def torch_tensors(arch: str, variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """{torch key: tensor} of `variables` ({"params", "batch_stats"}) of model `arch`, with
    BatchNorm's `num_batches_tracked` counters (0) so that `load_state_dict` is strict."""
    if arch not in layouts.TORCH_LAYOUTS:
        raise ValueError(
            f"{arch} has no PyTorch layout (the formats for it: stablehlo, onnx); the timm "
            f"format exports {', '.join(sorted(layouts.TORCH_LAYOUTS))}."
        )
    layout = layouts.TORCH_LAYOUTS[arch]
    tensors = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
        collection, *names = [p.key for p in path]
        tensors[layout.torch_key(collection, tuple(names))] = flax_to_torch(
            names[-1], np.asarray(leaf, np.float32)
        )
    tensors = layout.unprepare(tensors)
    for key in [k for k in tensors if k.endswith(".running_mean")]:
        tensors[key.removesuffix("running_mean") + "num_batches_tracked"] = np.zeros((), np.int64)
    return tensors


def timm_config(
    fields: Mapping[str, Any],
    class_names: Sequence[str],
    mean: Sequence[float],
    std: Sequence[float],
    input_size: int,
    channels: int,
) -> dict[str, Any] | None:
    """The config.json of a timm model on the Hugging Face Hub (`architecture`, `num_classes`,
    `pretrained_cfg`), or None where timm has no model with these keys."""
    known = layouts.timm_name(fields, input_size)
    if known is None:
        return None
    name, model_args = known
    return {
        "architecture": name,
        **({"model_args": model_args} if model_args else {}),
        "num_classes": len(class_names),
        "num_features": None,
        "label_names": list(class_names),
        "pretrained_cfg": {
            "input_size": [channels, input_size, input_size],
            "mean": list(mean),
            "std": list(std),
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "num_classes": len(class_names),
            "first_conv": layouts.TORCH_LAYOUTS[fields["name"]].stem_weight.rsplit(".", 1)[0],
            "classifier": layouts.TORCH_LAYOUTS[fields["name"]].head_weight.rsplit(".", 1)[0],
        },
    }
