"""Fine-tuning from a converted checkpoint: load the backbone, re-initialise the head, adapt
the input channels, freeze parameters by pattern, and layer-wise learning-rate decay.

Parameter paths are ``/``-joined names, e.g. ``BasicBlock_0/Conv_0/kernel`` or ``head/bias``;
the classifier is always the top-level module ``head``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
import optax

HEAD = "head"


def path_name(path) -> str:
    return "/".join(str(getattr(p, "key", p)) for p in path)


def adapt_input_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
    """An HWIO stem kernel for `channels` inputs from one trained on kernel.shape[2]: summed
    for one channel (a gray image is R = G = B), else tiled and rescaled (as timm does)."""
    trained = kernel.shape[2]
    if channels == trained:
        return kernel
    if channels == 1:
        return kernel.sum(axis=2, keepdims=True)
    repeats = int(np.ceil(channels / trained))
    return np.tile(kernel, (1, 1, repeats, 1))[:, :, :channels] * (trained / channels)


def check_architecture(metadata: Mapping[str, Any], model_config, checkpoint: str) -> None:
    """Raises unless the checkpoint holds config.model's architecture (and ResNet width/stem,
    ViT patch size/pooling)."""
    expected = {"architecture": model_config.name}
    if model_config.name.startswith("resnet"):
        expected.update(width=model_config.width, stem=model_config.stem)
    if model_config.name.startswith("vit"):
        expected.update(patch_size=model_config.patch_size, pool=model_config.pool)
    wrong = {k: v for k, v in expected.items() if metadata.get(k) != v}
    if wrong:
        held = ", ".join(f"{k} {metadata.get(k)}" for k in expected if k != "architecture")
        raise ValueError(
            f"{checkpoint} holds {metadata.get('architecture')}{f' ({held})' if held else ''}, "
            f"which does not match config.model "
            f"({', '.join(f'{k}: {v}' for k, v in wrong.items())})."
        )


def normalisation(metadata: Mapping[str, Any], channels: int) -> tuple[tuple, tuple]:
    """The checkpoint's mean and std for `channels` inputs: their averages when the stem was
    adapted to another channel count (exact for gray input when the channels agree)."""
    mean, std = list(metadata["mean"]), list(metadata["std"])
    if channels != len(mean):
        mean, std = [float(np.mean(mean))] * channels, [float(np.mean(std))] * channels
    return tuple(mean), tuple(std)


def merge_pretrained(
    fresh: Mapping[str, Any], pretrained: Mapping[str, Any], channels: int, stem_kernel: str
) -> dict[str, Any]:
    """`fresh` variables ({"params", "batch_stats"}) with every tensor taken from `pretrained`,
    except the head when its shape differs (new classes: kept freshly initialised). The stem
    kernel is adapted to `channels`. Any other missing or misshapen tensor raises."""
    flat_pretrained = {
        path_name(p): v for p, v in jax.tree_util.tree_leaves_with_path(dict(pretrained))
    }
    problems, kept_fresh = [], []

    def take(path, fresh_leaf):
        name = path_name(path)
        if name not in flat_pretrained:
            problems.append(f"{name}: not in the checkpoint")
            return fresh_leaf
        value = np.asarray(flat_pretrained.pop(name))
        if name == f"params/{stem_kernel}":
            value = adapt_input_channels(value, channels)
        if value.shape == tuple(fresh_leaf.shape):
            return value.astype(fresh_leaf.dtype)
        if name.split("/")[1] == HEAD:
            kept_fresh.append(name)
            return fresh_leaf
        problems.append(f"{name}: checkpoint {value.shape} vs model {tuple(fresh_leaf.shape)}")
        return fresh_leaf

    merged = jax.tree_util.tree_map_with_path(take, dict(fresh))
    problems += [f"{name}: in the checkpoint but not in the model" for name in flat_pretrained]
    if problems:
        raise ValueError(
            "The pretrained checkpoint does not fit config.model (same architecture, width and "
            "stem as when converted?):\n  " + "\n  ".join(problems)
        )
    if kept_fresh:
        logging.info("Re-initialised for the new classes: %s", ", ".join(kept_fresh))
    return merged


def frozen_mask(params: Any, pattern: str, linear_probe: bool) -> Any:
    """True for frozen parameters: paths matching the regex `pattern` (searched), or, for a
    linear probe, everything outside the head. Raises when `pattern` matches no path."""
    regex = re.compile(pattern) if pattern else None
    names = [path_name(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    if regex and not any(regex.search(name) for name in names):
        raise ValueError(
            f"config.transfer.freeze={pattern!r} matches no parameter of this model; its paths "
            f"look like {', '.join(repr(names[i]) for i in (0, len(names) // 2, -1))}."
        )

    def frozen(path, _):
        name = path_name(path)
        if linear_probe and name.split("/")[0] != HEAD:
            return True
        return bool(regex and regex.search(name))

    return jax.tree_util.tree_map_with_path(frozen, params)


def frozen_norms(params_frozen: Any) -> frozenset[str]:
    """Module paths of the BatchNorm layers whose scale is frozen (they run in inference
    mode and keep their running statistics)."""
    return frozenset(
        path_name(p)[: -len("/scale")]
        for p, f in jax.tree_util.tree_leaves_with_path(params_frozen)
        if f and path_name(p).endswith("/scale")
    )


def _group(module: str) -> str:
    return re.sub(r"_(conv|norm)$", "", module)


def layer_groups(params: Mapping[str, Any]) -> list[str]:
    """Top-level modules merged into layers, input to output: ``stem`` (``stem_conv``,
    ``stem_norm``), the blocks in numeric order (``BasicBlock_2`` before ``BasicBlock_10``),
    then ``head`` (``head_conv``, ``head_norm`` and the classifier). Pytrees sort dict keys,
    so the order is rebuilt from the names."""

    def natural(name: str):
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    groups = sorted({_group(m) for m in params} - {"stem", HEAD}, key=natural)
    return ["stem"] * any(_group(m) == "stem" for m in params) + groups + [HEAD]


def layer_decay_scales(params: Mapping[str, Any], decay: float) -> Any:
    """Per-parameter learning-rate factors ``decay ** (depth from the top)``: 1 for the head,
    ``decay`` for the layer below it, and so on down to the stem."""
    groups = layer_groups(params)
    depth = {g: len(groups) - 1 - i for i, g in enumerate(groups)}
    return jax.tree_util.tree_map_with_path(
        lambda p, _: decay ** depth[_group(path_name(p).split("/")[0])],
        dict(params),
    )


def scale_updates(scales: Any) -> optax.GradientTransformation:
    """Multiplies each update by its fixed factor (a per-parameter learning-rate scale)."""

    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, s: u * s, updates, scales), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def wrap_optimizer(
    tx: optax.GradientTransformation, params_shape: Any, frozen: Any, layer_decay: float
) -> optax.GradientTransformation:
    """`tx` for trainable parameters; frozen ones get zero updates (no weight decay either)
    and no optimizer state; then layer-wise decay (if 0 < layer_decay < 1) scales updates."""
    if any(jax.tree.leaves(frozen)):
        labels = jax.tree.map(lambda f: "frozen" if f else "trained", frozen)
        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    if 0 < layer_decay < 1:
        tx = optax.chain(tx, scale_updates(layer_decay_scales(params_shape, layer_decay)))
    return tx
