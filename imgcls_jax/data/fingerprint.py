"""A dataset's fingerprint: split sizes, class names and a hash of which examples each split
holds (for files streamed from a folder, also of their sizes and modification times), stored
in every checkpoint so that a resume on changed data is caught."""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np

from imgcls_jax.data import Dataset, Split
from imgcls_jax.data.encoded import EncodedImages


class DatasetChangedError(ValueError):
    """A resume found other data than the checkpoints were trained on."""


def _update_with_images(digest, images) -> None:
    """Hashes what identifies the images: pixels in memory; for images left encoded, the file
    names (relative to their common folder) or the records' dataset, split and numbers."""
    if not isinstance(images, EncodedImages):
        digest.update(np.ascontiguousarray(images).data)
        return
    if images.reader is None:
        paths = [str(p) for p in images.items]
        root = os.path.dirname(os.path.commonpath(paths)) if paths else ""
        digest.update("\n".join(os.path.relpath(p, root) for p in paths).encode())
        return
    digest.update(images.reader.identity.encode())
    digest.update(np.ascontiguousarray(images.items, np.int64).data)


def _files_digest(images) -> str | None:
    """For images streamed from files: a hash of every file's size and modification time
    (what changes when a file is rewritten in place); None for other images."""
    if not isinstance(images, EncodedImages) or images.reader is not None:
        return None
    digest = hashlib.sha256()
    for path in images.items:
        try:
            stat = os.stat(path)
            digest.update(f"{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
        except OSError:  # Gone: that is a change too.
            digest.update(b"missing\n")
    return digest.hexdigest()[:16]


def _split_fingerprint(split: Split | None) -> dict | None:
    if split is None:
        return None
    digest = hashlib.sha256(np.ascontiguousarray(split.labels, np.int32).data)
    _update_with_images(digest, split.images)
    fingerprint = {"examples": len(split), "sha256": digest.hexdigest()[:16]}
    if (files := _files_digest(split.images)) is not None:
        fingerprint["files_sha256"] = files
    return fingerprint


def dataset_fingerprint(dataset: Dataset) -> dict:
    """{split: {examples, sha256} or None, classes: [...]}: JSON, equal for equal data."""
    return {
        "classes": list(dataset.class_names),
        "train": _split_fingerprint(dataset.train),
        "validation": _split_fingerprint(dataset.validation),
        "test": _split_fingerprint(dataset.test),
    }


def _count(split: dict | None) -> int:
    return 0 if split is None else split["examples"]


def describe_change(saved: dict, current: dict) -> str:
    """What differs between two fingerprints, in words ("" when nothing does)."""
    changes = []
    if saved.get("classes") != current["classes"]:
        changes.append(f"classes {saved.get('classes')} -> {current['classes']}")
    for split in ("train", "validation", "test"):
        before, now = saved.get(split), current[split]
        if before == now:
            continue
        if before is None or now is None or before["examples"] != now["examples"]:
            changes.append(f"{split} {_count(before)} -> {_count(now)} examples")
        elif before["sha256"] != now["sha256"]:
            changes.append(f"{split} holds other examples (same count, {now['examples']})")
        elif before.get("files_sha256", now.get("files_sha256")) != now.get("files_sha256"):
            # Older checkpoints hold no file hash: not a change.
            changes.append(f"{split}: the same files, but some were rewritten (size or "
                           "modification time)")  # fmt: skip
    return "; ".join(changes)


def check_resume(saved: dict | None, current: dict, allowed: bool, where: str) -> None:
    """Stops a resume from the checkpoints in `where` on other data than they were trained
    on, unless `allowed`; checkpoints without a fingerprint are not checked."""
    change = describe_change(saved, current) if saved else ""
    if not change:
        return
    if allowed:
        logging.warning("Resuming on a changed dataset (%s), as allowed.", change)
        return
    raise DatasetChangedError(
        f"The dataset differs from the one the checkpoints in {where} were trained on "
        f"({change}), so the train/validation split would be redrawn. Use a new --workdir, "
        "restore the data, or set config.training.allow_dataset_change=True to resume anyway."
    )
