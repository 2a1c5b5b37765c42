"""Checkpoints and converted weights saved under older module names are read under those
names and renamed to the current ones, here and nowhere else.

Flax names an unnamed layer after its class: the models' batch norms are `NormAct_N`; the
older naming was `BatchNorm_N`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import jax

RENAMED_MODULES = {"BatchNorm_": "NormAct_"}  # Saved name prefix -> the current one.


def rename_modules(tree: Any, renames: Mapping[str, str]) -> Any:
    """`tree` with every dict key, at any depth, that starts with a key of `renames` starting
    with its value instead (e.g. `{"BatchNorm_": "NormAct_"}`)."""

    def renamed(key: Any) -> Any:
        for old, new in renames.items():
            if isinstance(key, str) and key.startswith(old):
                return new + key[len(old) :]
        return key

    def rename(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        return {renamed(k): rename_modules(v, renames) for k, v in node.items()}

    return jax.tree.map(rename, tree, is_leaf=lambda x: isinstance(x, dict))


def _as_saved(saved_paths: Iterable[str]) -> dict[str, str]:
    """The renames from current module names to the older ones that a checkpoint whose arrays
    are at `saved_paths` (checksum keys, e.g. ".params['BatchNorm_0']['scale']") uses. (Back
    to the current ones is `RENAMED_MODULES` itself: no current name starts as an old one.)"""
    saved_paths = list(saved_paths)
    return {
        new: old
        for old, new in RENAMED_MODULES.items()
        if any(f"['{old}" in path for path in saved_paths)
    }


def as_saved(abstract: Any, saved_paths: Iterable[str]) -> Any:
    """`abstract` (the tree to restore into) under the module names of a step whose arrays
    are at `saved_paths` (its checksum keys)."""
    return rename_modules(abstract, _as_saved(saved_paths))


def to_current(tree: Any) -> Any:
    """`tree` with every older module name replaced by the current one."""
    return rename_modules(tree, RENAMED_MODULES)
