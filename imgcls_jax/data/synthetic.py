"""Random uint8 images with random labels: the same cost as real data, for benchmarks."""

from __future__ import annotations

import numpy as np

from imgcls_jax.data import Dataset, Split


def random_dataset(
    num_train: int, size: int, channels: int, num_classes: int, num_eval: int = 256, seed: int = 0
) -> Dataset:
    """Train, validation and test splits of uniform noise (nothing to learn)."""
    rng = np.random.default_rng(seed)

    def split(num: int) -> Split:
        images = rng.integers(0, 256, (num, size, size, channels), dtype=np.uint8)
        return Split(images, rng.integers(0, num_classes, num).astype(np.int32))

    names = tuple(f"class{i}" for i in range(num_classes))
    return Dataset(split(num_train), split(num_eval), split(num_eval), names)
