"""Loads users' own labelled images from an ImageFolder tree: ROOT/<class_name>/<image file>."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os

import numpy as np
import PIL.Image

from imgcls_jax.data.decode import DECODE_ERRORS, GRAY_MODES, decode_named
from imgcls_jax.data.encoded import EncodedImages


def _readable_extensions() -> tuple[str, ...]:
    """The file extensions of every image format Pillow can read (.png, .jpg, .tif, .webp,
    .bmp, .gif, ...)."""
    PIL.Image.init()
    return tuple(sorted(ext for ext, fmt in PIL.Image.registered_extensions().items()
                        if fmt in PIL.Image.OPEN))  # fmt: skip


IMAGE_EXTENSIONS = _readable_extensions()
LAYOUT_HINT = (
    "Expected one subfolder per class holding image files (any format Pillow reads: .png, "
    ".jpg, .tif, .webp, .bmp, ...), e.g. ROOT/cat/0001.jpg and ROOT/dog/0002.png."
)


@dataclasses.dataclass(frozen=True)
class ImageFolderData:
    """Decoded images with integer labels; `skipped` lists unreadable files relative to root."""

    images: np.ndarray  # uint8 [N, image_size, image_size, C]
    labels: np.ndarray  # int32 [N], index into class_names
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]


def _has_subfolder(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return any(e.is_dir() for e in entries)


def infer_channels(paths: list[str], samples: int = 64) -> int:
    """3 when any of up to `samples` files spread over `paths` is in colour, else 1 (reads
    only the files' headers)."""
    for path in paths[:: max(1, len(paths) // samples)]:
        try:
            with PIL.Image.open(path) as img:
                if img.mode not in GRAY_MODES:
                    return 3
        except DECODE_ERRORS:
            continue
    return 1


def _check_channels(channels: int, paths: list[str]) -> int:
    """`channels`, or with 0 the channels inferred from the files."""
    if channels == 0:
        return infer_channels(paths)
    if channels not in (1, 3):
        raise ValueError(
            f"channels must be 1 (grayscale), 3 (RGB) or 0 (inferred), got {channels}."
        )
    return channels


def _list_files(
    root: str, class_names: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """Returns (sorted class names, [(path relative to root, label)]) in deterministic order.

    With `class_names` (a validation or test folder), labels index those names: the folder
    may lack some classes but holds no other."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist. {LAYOUT_HINT}")
    found = tuple(
        sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    )
    if not found:
        raise ValueError(f"Image folder {root!r} has no class subfolders. {LAYOUT_HINT}")
    if class_names is not None:
        unknown = sorted(set(found) - set(class_names))
        if unknown:
            raise ValueError(f"Class folder(s) {unknown} under {root!r} are not train classes "
                             f"{list(class_names)}: rename or remove them.")  # fmt: skip
    names = found if class_names is None else class_names
    files, others = [], []
    for label, name in enumerate(names):
        if name not in found:
            continue
        for entry in sorted(os.scandir(os.path.join(root, name)), key=lambda e: e.name):
            if not entry.is_file() or entry.name.startswith("."):
                continue
            if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((os.path.join(name, entry.name), label))
            else:
                others.append(os.path.join(name, entry.name))
    if others:
        logging.warning("Skipped %d file(s) under %s that are not in an image format Pillow "
                        "reads: %s%s", len(others), root, ", ".join(others[:5]),
                        " ..." if len(others) > 5 else "")  # fmt: skip
    if not files:
        raise ValueError(
            f"Image folder {root!r} has class subfolders {list(found)} but no image files "
            f"in them. {LAYOUT_HINT}"
        )
    used = {label for _, label in files}
    empty = [
        names[label] for label in range(len(names)) if names[label] in found and label not in used
    ]
    if empty:
        raise ValueError(f"Class folder(s) {empty} under {root!r} hold no image files: add "
                         f"images or remove the folder(s). {LAYOUT_HINT}")  # fmt: skip
    if len(names) < 2:
        raise ValueError(f"Image folder {root!r} has one class, {names[0]!r}; a classifier "
                         f"needs at least 2 class subfolders. {LAYOUT_HINT}")  # fmt: skip
    return names, files


def split_folders(root: str, train: str, validation: str, test: str) -> dict[str, str] | None:
    """{"train"|"validation"|"test": folder} for the layout ROOT/<split>/<class>/<image>
    (torchvision's `train/val/test`), or None for one folder of classes (ROOT/<class>/<image>).

    The split layout is recognised by ROOT/`train` holding class subfolders. Every split
    folder present must be named by the config (`validation` or `test` "" means none), and
    every named one must exist, so that no folder is silently ignored.
    """
    train_dir = os.path.join(root, train)
    if not (os.path.isdir(train_dir) and _has_subfolder(train_dir)):
        if test:
            raise ValueError(
                f"dataset.test_split={test!r}, but {root!r} is one folder of classes with no "
                f"{train!r}/{test!r} split folders: set dataset.test_split='' (results on "
                f"validation), hold out a test set with dataset.test_size, or use the layout "
                f"ROOT/{train}/<class>/ and ROOT/{test}/<class>/."
            )
        if validation:
            raise ValueError(f"dataset.validation_split={validation!r} needs the layout "
                             f"ROOT/{train}/<class>/ and ROOT/{validation}/<class>/; {root!r} is "
                             "one folder of classes. Set dataset.validation_split=''.")  # fmt: skip
        return None
    present = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    named = {"train": train, "validation": validation, "test": test}
    for key, name in named.items():
        if name and name not in present:
            raise ValueError(f"dataset.{key}_split={name!r}, but {root!r} has only the split "
                             f"folders {present}: name one of them, or '' for none.")  # fmt: skip
    unused = [name for name in present if name not in named.values()]
    if unused:
        raise ValueError(
            f"{root!r} has split folder(s) {unused} that the config does not name: set "
            f"dataset.validation_split or dataset.test_split to use them, or move them away."
        )
    return {key: os.path.join(root, name) for key, name in named.items() if name}


def peek_channels(root: str, channels: int) -> int:
    """The channels the images under `root` (one folder of classes) will be decoded to:
    `channels`, or with 0 those read from the files' headers; nothing is decoded."""
    _, files = _list_files(root)
    return _check_channels(channels, [os.path.join(root, rel) for rel, _ in files])


def load_image_folder(
    root: str,
    image_size: int,
    channels: int = 3,
    strict: bool = False,
    class_names: tuple[str, ...] | None = None,
) -> ImageFolderData:
    """Decodes every image under `root` to uint8 [image_size, image_size, channels] (0:
    channels inferred from the files); `class_names` fixes the labels (see `_list_files`).

    Unreadable files are skipped with one warning listing them, or raise a ValueError if `strict`.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}.")
    class_names, files = _list_files(root, class_names)
    paths = [os.path.join(root, rel) for rel, _ in files]
    mode = "RGB" if _check_channels(channels, paths) == 3 else "L"
    # Threads suffice: PIL releases the GIL while decoding and resizing.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        decoded = list(pool.map(lambda p: decode_named(p, p, image_size, mode), paths))

    skipped = tuple(
        sorted(rel for (rel, _), arr in zip(files, decoded, strict=True) if arr is None)
    )
    if skipped and strict:
        raise ValueError(
            f"{len(skipped)} unreadable image file(s) under {root!r}: {list(skipped)}. "
            "Remove or re-save them, or pass strict=False to skip them."
        )
    if skipped:
        logging.getLogger(__name__).warning(
            "Skipped %d unreadable image file(s) under %r: %s",
            len(skipped),
            root,
            list(skipped),
        )
    kept = [(arr, label) for (_, label), arr in zip(files, decoded, strict=True) if arr is not None]
    if not kept:
        raise ValueError(f"No image under {root!r} could be decoded; all were unreadable.")
    return ImageFolderData(
        images=np.stack([arr for arr, _ in kept]),
        labels=np.array([label for _, label in kept], dtype=np.int32),
        class_names=class_names,
        skipped=skipped,
    )


def list_image_folder(
    root: str,
    image_size: int,
    channels: int = 3,
    threads: int = 0,
    class_names: tuple[str, ...] | None = None,
) -> tuple[EncodedImages, np.ndarray, tuple[str, ...]]:
    """The images under `root` left encoded, decoded later batch by batch: (images, int32
    labels, class names). Unreadable files surface when a batch needs them."""
    class_names, files = _list_files(root, class_names)
    paths = [os.path.join(root, rel) for rel, _ in files]
    labels = np.array([label for _, label in files], dtype=np.int32)
    channels = _check_channels(channels, paths)
    return EncodedImages(paths, image_size, channels, threads), labels, class_names
