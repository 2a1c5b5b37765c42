"""Reads Fashion-MNIST from the original IDX files (Debian's `dataset-fashion-mnist`) and checks them."""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np

DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
CLASS_NAMES = (
    "t-shirt/top", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
)  # fmt: skip
# SHA-256 of the decoded uint8 arrays (images, then labels), so that re-compressed copies of
# the same data (Debian's .gz bytes differ from the upstream ones) still verify.
CONTENT_SHA256 = {
    "train": "16d82e2b505296aa2b78bd5ea0992634f30419a4c97def7c907d154a35ac6157",
    "test": "9f1ec356a747bfe4ebab3cfb722d3694c9ca737e2570f6f90cf31d7b6fd689d4",
}
INSTALL_HINT = (
    "Install the offline copy with `apt-get update && apt-get install -y dataset-fashion-mnist` "
    f"(files land in {DEBIAN_DIR}), or point config.dataset.data_dir at a TFDS data_dir that "
    "holds a prepared `fashion_mnist` (`tfds build fashion_mnist --data_dir=DIR` on a machine "
    "with network access)."
)


def _read_idx(path: str) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if data[2] != 0x08:
        raise ValueError(f"{path}: expected an unsigned-byte IDX file, got type {data[2]:#x}.")
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: truncated IDX file ({array.size} values for shape {shape}).")
    return array.reshape(shape)


def content_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    """Hash of the decoded arrays, independent of how the files were compressed."""
    digest = hashlib.sha256(np.ascontiguousarray(images).tobytes())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def available(directory: str = DEBIAN_DIR) -> bool:
    """Whether all four IDX files are present in `directory`."""
    return all(os.path.exists(os.path.join(directory, f)) for pair in FILES.values() for f in pair)


def load_split(split: str, directory: str = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Returns (images uint8 [N, 28, 28, 1], labels int32 [N]) after a content check."""
    if not available(directory):
        raise FileNotFoundError(f"Fashion-MNIST IDX files not found in {directory}. {INSTALL_HINT}")
    if split not in FILES:
        raise ValueError(f"Fashion-MNIST has the splits {', '.join(FILES)}, not {split!r}.")
    image_file, label_file = FILES[split]
    images = _read_idx(os.path.join(directory, image_file))
    labels = _read_idx(os.path.join(directory, label_file))
    digest = content_sha256(images, labels)
    if digest != CONTENT_SHA256[split]:
        raise ValueError(
            f"Fashion-MNIST {split} files in {directory} decode to unexpected content "
            f"(sha256 {digest}, expected {CONTENT_SHA256[split]}): the files are corrupt or "
            f"not Fashion-MNIST. Reinstall them: {INSTALL_HINT}"
        )
    return images[..., None], labels.astype(np.int32)
