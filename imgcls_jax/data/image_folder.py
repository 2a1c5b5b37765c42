"""Loads users' own labelled images from an ImageFolder tree: ROOT/<class_name>/<image file>."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import os

import numpy as np
import PIL.Image

from imgcls_jax.data.encoded import EncodedImages

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
LAYOUT_HINT = (
    "Expected one subfolder per class holding .png/.jpg/.jpeg files, "
    "e.g. ROOT/cat/0001.jpg and ROOT/dog/0002.png."
)
# What PIL raises for a corrupt, truncated or unreadable file (SyntaxError: some truncated PNGs).
DECODE_ERRORS = (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError)


@dataclasses.dataclass(frozen=True)
class ImageFolderData:
    """Decoded images with integer labels; `skipped` lists unreadable files relative to root."""

    images: np.ndarray  # uint8 [N, image_size, image_size, C]
    labels: np.ndarray  # int32 [N], index into class_names
    class_names: tuple[str, ...]
    skipped: tuple[str, ...]


def decode_image(source, image_size: int, mode: str) -> np.ndarray | None:
    """Returns the image in `source` (a path or a binary file object) as uint8 [S, S, C]
    (shorter side resized, centre crop); None if unreadable."""
    try:
        with PIL.Image.open(source) as img:
            # convert() fully loads the pixels, so truncation surfaces inside the try.
            img = img.convert(mode)
    except DECODE_ERRORS:
        return None
    w, h = img.size
    scale = image_size / min(w, h)
    new_w, new_h = max(image_size, round(w * scale)), max(image_size, round(h * scale))
    img = img.resize((new_w, new_h), PIL.Image.Resampling.BILINEAR)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    return np.asarray(img, dtype=np.uint8).reshape(image_size, image_size, len(mode))


def _list_files(root: str) -> tuple[tuple[str, ...], list[tuple[str, int]]]:
    """Returns (sorted class names, [(path relative to root, label)]) in deterministic order."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root!r} does not exist. {LAYOUT_HINT}")
    class_names = tuple(
        sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    )
    if not class_names:
        raise ValueError(f"Image folder {root!r} has no class subfolders. {LAYOUT_HINT}")
    files = []
    for label, name in enumerate(class_names):
        for entry in sorted(os.scandir(os.path.join(root, name)), key=lambda e: e.name):
            if entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS):
                files.append((os.path.join(name, entry.name), label))
    if not files:
        raise ValueError(
            f"Image folder {root!r} has class subfolders {list(class_names)} but no image files "
            f"in them. {LAYOUT_HINT}"
        )
    return class_names, files


def load_image_folder(
    root: str, image_size: int, channels: int = 3, strict: bool = False
) -> ImageFolderData:
    """Decodes every image under `root` to uint8 [image_size, image_size, channels].

    Unreadable files are skipped with one warning listing them, or raise a ValueError if `strict`.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    if image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size}.")
    mode = "RGB" if channels == 3 else "L"
    class_names, files = _list_files(root)
    paths = [os.path.join(root, rel) for rel, _ in files]
    # Threads suffice: PIL releases the GIL while decoding and resizing.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        decoded = list(pool.map(lambda p: decode_image(p, image_size, mode), paths))

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
    root: str, image_size: int, channels: int = 3, threads: int = 0
) -> tuple[EncodedImages, np.ndarray, tuple[str, ...]]:
    """The images under `root` left encoded, decoded later batch by batch: (images, int32
    labels, class names). Unreadable files surface when a batch needs them."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}.")
    class_names, files = _list_files(root)
    paths = [os.path.join(root, rel) for rel, _ in files]
    labels = np.array([label for _, label in files], dtype=np.int32)
    return EncodedImages(paths, image_size, channels, threads), labels, class_names
