"""PyTorch weights -> our Flax variables: reading .pth/.safetensors, checked key mapping, and
the pretrained-checkpoint format (Orbax arrays + metadata.json) that fine-tuning loads.

Every Flax variable must find its tensor with the right shape and every tensor must be used
(except bookkeeping such as BatchNorm's ``num_batches_tracked``); anything else is an error
that lists all the offending names at once.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from imgcls_jax import registry
from imgcls_jax.convert import layouts

METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
IGNORED_SUFFIXES = ("num_batches_tracked",)  # Torch bookkeeping with no Flax counterpart.

# (collection, path inside it) -> torch key, e.g. ("params", ("stem_conv", "kernel")).
TorchKeyFn = Callable[[str, tuple[str, ...]], str]


class ConversionError(ValueError):
    """The source tensors do not match the model: lists missing, unused and misshapen ones."""


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of a PyTorch state dict: `.safetensors` (no torch needed) or `.pth`/`.pt`
    (read with ``torch.load(weights_only=True)``), as float32/int numpy arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file at {path}.")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except SafetensorError as e:
            raise ConversionError(f"{path} is not a readable .safetensors file ({e}): "
                                  "download or export it again.") from None  # fmt: skip
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading {path} needs PyTorch: pip install torch==2.13.0 (CPU), or convert the "
            "file to .safetensors elsewhere."
        ) from e
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as e:  # What torch raises for damaged files.
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConversionError(f"{path} is not a readable PyTorch file ({first_line}): "
                              "download or save it again.") from None  # fmt: skip
    if isinstance(state, Mapping) and "state_dict" in state:  # Lightning / training checkpoints.
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict.")
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy() for k, v in state.items()}


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def torch_to_flax(name: str, tensor: np.ndarray) -> np.ndarray:
    """Layout change for a tensor bound to Flax leaf `name`: conv OIHW -> HWIO (depthwise
    (C, 1, H, W) -> (H, W, 1, C)), dense (out, in) -> (in, out); vectors unchanged."""
    if name == "kernel" and tensor.ndim == 4:
        return np.transpose(tensor, (2, 3, 1, 0))
    if name == "kernel" and tensor.ndim == 2:
        return tensor.T
    return tensor


def convert_tensors(
    tensors: Mapping[str, np.ndarray], abstract_variables: Mapping[str, Any], torch_key: TorchKeyFn
) -> dict[str, Any]:
    """Fills every leaf of `abstract_variables` ({"params": ..., "batch_stats": ...} of shape
    structs) from `tensors`, via `torch_key`; raises ConversionError listing every problem."""
    missing, misshapen, used = [], [], set()

    def fill(path, leaf):
        collection, *names = [p.key for p in path]
        key = torch_key(collection, tuple(names))
        if key not in tensors:
            missing.append(f"{key} (for {collection}/{'/'.join(names)} {tuple(leaf.shape)})")
            return np.zeros(leaf.shape, leaf.dtype)
        used.add(key)
        value = torch_to_flax(names[-1], np.asarray(tensors[key]))
        if value.shape != tuple(leaf.shape):
            misshapen.append(
                f"{key}: {tuple(tensors[key].shape)} cannot fill "
                f"{collection}/{'/'.join(names)} {tuple(leaf.shape)}"
            )
            return np.zeros(leaf.shape, leaf.dtype)
        return value.astype(leaf.dtype)

    variables = jax.tree_util.tree_map_with_path(fill, dict(abstract_variables))
    unused = sorted(k for k in tensors if k not in used and not k.endswith(IGNORED_SUFFIXES))
    problems = [
        (f"{len(missing)} missing", missing),
        (f"{len(unused)} unused", unused),
        (f"{len(misshapen)} with the wrong shape", misshapen),
    ]
    if missing or unused or misshapen:
        lines = [f"{title}:\n  " + "\n  ".join(items) for title, items in problems if items]
        raise ConversionError(
            "The weights do not match the model (check --arch, --width and --stem):\n"
            + "\n".join(lines)
        )
    return variables


def save_pretrained(directory: str, variables: Mapping[str, Any], metadata: Mapping) -> None:
    """Writes `directory/variables` (Orbax) and `directory/metadata.json`."""
    import orbax.checkpoint as ocp

    os.makedirs(directory, exist_ok=True)
    target = os.path.abspath(os.path.join(directory, VARIABLES_DIR))
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(target, dict(variables), force=True)
    with open(os.path.join(directory, METADATA_FILE), "w", encoding="utf-8") as f:
        json.dump(dict(metadata), f, indent=2)


def load_metadata(directory: str) -> dict[str, Any]:
    path = os.path.join(directory, METADATA_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} not found: {directory} is not a converted checkpoint. Create one with "
            "python -m imgcls_jax.convert --arch=NAME --source=WEIGHTS --out=DIR."
        )
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def load_pretrained(directory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables as numpy arrays, metadata) of a converted checkpoint, with the current
    module names (`checkpoint.old_names`)."""
    import orbax.checkpoint as ocp

    from imgcls_jax.checkpoint import old_names

    metadata = load_metadata(directory)
    with ocp.StandardCheckpointer() as checkpointer:
        variables = checkpointer.restore(os.path.abspath(os.path.join(directory, VARIABLES_DIR)))
    variables = old_names.to_current(variables)
    return jax.tree.map(np.asarray, variables), metadata


def _layout(arch: str) -> layouts.TorchLayout:
    registry.check_choice("--arch", arch, layouts.TORCH_LAYOUTS)
    return layouts.TORCH_LAYOUTS[arch]


def default_preprocessing(arch: str) -> tuple[int, np.ndarray, np.ndarray]:
    """(input size, mean, std in [0, 1] units) that `arch`'s published weights expect."""
    layout = _layout(arch)
    return layout.input_size, np.array(layout.mean), np.array(layout.std)


def vit_fields(tensors: Mapping[str, np.ndarray], layout: layouts.TorchLayout) -> dict:
    """A ViT's patch size and pooling as the weights have them (the families without these
    fields ignore them)."""
    stem_weight = tensors.get(layout.stem_weight)
    return {"patch_size": int(stem_weight.shape[-1]) if stem_weight is not None else 16,
            "pool": "cls" if "cls_token" in tensors else "gap", "posemb": "learn"}  # fmt: skip


def convert_model(
    arch: str, tensors: Mapping[str, np.ndarray], width: int, stem: str, image_size: int
) -> tuple[dict[str, Any], int]:
    """Converts `tensors` (a state dict in `arch`'s torch layout) into our variables; returns
    them and the number of classes read off the classifier."""
    layout = _layout(arch)
    if layout.head_weight not in tensors:
        raise ConversionError(
            f"No classifier {layout.head_weight!r} in the weights: is {arch!r} right?"
        )
    num_classes = int(tensors[layout.head_weight].shape[0])
    fields = {"width": width, "stem": stem, **vit_fields(tensors, layout)}
    model = registry.build_from("model", arch, fields, num_classes=num_classes, key="--arch")
    stem_weight = tensors.get(layout.stem_weight)
    channels = int(stem_weight.shape[1]) if stem_weight is not None else 3
    tensors = layout.prepare(dict(tensors), image_size)
    abstract = jax.eval_shape(
        lambda: model.init(jax.random.key(0), np.zeros((1, image_size, image_size, channels)))
    )
    return convert_tensors(tensors, abstract, layout.torch_key), num_classes
