"""Loads a TFDS image-classification split into host memory as uint8 arrays."""

from __future__ import annotations

import os

import numpy as np


def check_fits_in_memory(name: str, split: str, num_examples: int, image_shape: tuple) -> None:
    """Raises before decoding when a split would take more than half of this host's memory."""
    needed = num_examples * int(np.prod(image_shape))
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available // 2:
        raise MemoryError(
            f"TFDS {name}[{split}] needs {needed / 2**30:.1f} GiB as uint8 arrays at "
            f"{image_shape}, over half of this host's {available / 2**30:.1f} GiB. Datasets are "
            "held in host memory; lower config.dataset.image_size or use a subset split such "
            "as 'train[:10%]' (a streaming input pipeline for large datasets is not built yet)."
        )


def builder_class(name: str):
    """Returns the TFDS builder class for `name`; raises naming the closest registered name."""
    import tensorflow_datasets as tfds

    from imgcls_jax.config import closest

    try:
        return tfds.builder_cls(name.split(":")[0].split("/")[0])
    except tfds.core.registered.DatasetNotFoundError:
        names = tfds.list_builders(with_community_datasets=False)
        raise ValueError(
            f"config.dataset.name={name!r} is not a TFDS dataset.{closest(name, names)}"
        ) from None


def load_split(
    name: str, split: str, data_dir: str, download: bool, image_size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Returns (images uint8 NHWC, labels int32, class names) of one TFDS split."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    tf.config.set_visible_devices([], "GPU")  # TF must never take accelerator memory.
    builder = tfds.builder(name, data_dir=data_dir or None)
    if download:
        builder.download_and_prepare()
    if not builder.is_prepared():
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Either run with "
            f"--config.dataset.download=True on a machine with network access, run "
            f"`tfds build {name} --data_dir=DIR` there and set --config.dataset.data_dir=DIR, "
            "or download it manually as TFDS documents for this dataset."
        )
    if builder.info.splits:  # Unknown for mock data.
        stored = builder.info.features["image"].shape
        shape = (image_size, image_size, stored[-1]) if image_size else stored
        if None not in shape:
            check_fits_in_memory(name, split, builder.info.splits[split].num_examples, shape)
    ds = builder.as_dataset(split=split, as_supervised=True)
    if image_size:
        ds = ds.map(
            lambda image, label: (
                tf.cast(tf.image.resize(image, (image_size, image_size), antialias=True), tf.uint8),
                label,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds.batch(1024).prefetch(2)):
        images.append(image_batch)
        labels.append(label_batch)
    class_names = tuple(builder.info.features["label"].names)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32), class_names
