"""TFDS image-classification splits: loaded into host memory as uint8 arrays, or listed for
streaming (encoded images read from the TFRecord files batch by batch)."""

from __future__ import annotations

import os

import numpy as np

from imgcls_jax.data.encoded import EncodedImages
from imgcls_jax.registry import closest


def check_fits_in_memory(name: str, split: str, num_examples: int, image_shape: tuple) -> None:
    """Raises before decoding when a split would take more than half of this host's memory."""
    needed = num_examples * int(np.prod(image_shape))
    available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > available // 2:
        raise MemoryError(
            f"TFDS {name}[{split}] needs {needed / 2**30:.1f} GiB as uint8 arrays at "
            f"{image_shape}, over half of this host's {available / 2**30:.1f} GiB. Datasets are "
            "held in host memory; lower config.dataset.image_size or use a subset split such "
            "as 'train[:10%]', or stream it: --config.dataset.streaming=True."
        )


def check_name(name: str, data_dir: str) -> None:
    """Raises naming the closest registered name unless `name` is a TFDS dataset, registered
    or prepared without its code under `data_dir` (DIR/NAME/VERSION, as `tfds.builder` reads)."""
    import tensorflow_datasets as tfds

    base_name = name.split(":")[0].split("/")[0]
    try:
        tfds.builder_cls(base_name)
    except tfds.core.registered.DatasetNotFoundError:
        prepared = _prepared_names(data_dir)
        if base_name in prepared:
            return
        names = [*tfds.list_builders(with_community_datasets=False), *prepared]
        raise ValueError(
            f"config.dataset.name={name!r} is not a TFDS dataset, nor prepared in "
            f"config.dataset.data_dir={data_dir!r}.{closest(name, names)}"
        ) from None


def _prepared_names(data_dir: str) -> list[str]:
    """The dataset folders in a TFDS data_dir (local or remote); [] if there is none."""
    import tensorflow as tf

    if not data_dir or not tf.io.gfile.isdir(data_dir):
        return []
    return [n.rstrip("/") for n in tf.io.gfile.listdir(data_dir)
            if tf.io.gfile.isdir(os.path.join(data_dir, n))]  # fmt: skip


def _prepared_builder(name: str, data_dir: str, download: bool):
    """The TFDS builder of `name`, prepared (downloaded first if `download`)."""
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
    return builder


def image_and_label_keys(builder) -> tuple[str, str]:
    """The feature names of image and label: the dataset's supervised keys, else the usual."""
    return tuple(builder.info.supervised_keys or ("image", "label"))


def _stored_shape(builder, name: str, image_key: str, image_size: int) -> tuple:
    """The stored image shape; raises if images must be resized and `image_size` is 0."""
    stored = builder.info.features[image_key].shape
    if not image_size and (None in stored[:2] or stored[0] != stored[1]):
        raise ValueError(
            f"TFDS {name} images are {stored}, not one square size: set "
            "config.dataset.image_size (shorter side resized to it, centre square kept)."
        )
    return stored


def load_split(
    name: str, split: str, data_dir: str, download: bool, image_size: int
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Returns (images uint8 NHWC, labels int32, class names) of one TFDS split; with
    `image_size`, each image's shorter side is resized to it and the centre square kept."""
    import tensorflow as tf
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name, data_dir, download)
    image_key, label_key = image_and_label_keys(builder)
    if builder.info.splits:  # Unknown for mock data.
        stored = _stored_shape(builder, name, image_key, image_size)
        shape = (image_size, image_size, stored[-1]) if image_size else stored
        if None not in shape:
            check_fits_in_memory(name, split, builder.info.splits[split].num_examples, shape)
    ds = builder.as_dataset(split=split).map(lambda ex: (ex[image_key], ex[label_key]))
    if image_size:
        ds = ds.map(
            lambda image, label: (resize_and_centre_crop(image, image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    images, labels = [], []
    for image_batch, label_batch in tfds.as_numpy(ds.batch(1024).prefetch(2)):
        images.append(image_batch)
        labels.append(label_batch)
    class_names = tuple(builder.info.features[label_key].names)
    return np.concatenate(images), np.concatenate(labels).astype(np.int32), class_names


def resize_and_centre_crop(image, size: int):
    """TF version of the image folders' resize: shorter side to `size`, centre square, uint8."""
    import tensorflow as tf

    height, width = tf.unstack(tf.cast(tf.shape(image)[:2], tf.float32))
    scale = size / tf.minimum(height, width)
    new_size = tf.maximum(size, tf.cast(tf.round(tf.stack([height, width]) * scale), tf.int32))
    resized = tf.image.resize(image, new_size, antialias=True)
    top, left = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    cropped = resized[top : top + size, left : left + size]
    return tf.cast(tf.clip_by_value(tf.round(cropped), 0, 255), tf.uint8)


def list_split(
    name: str,
    split: str,
    data_dir: str,
    download: bool,
    image_size: int,
    channels: int,
    threads: int,
) -> tuple[EncodedImages, np.ndarray, tuple[str, ...]]:
    """One TFDS split left encoded in its TFRecord files, decoded later batch by batch (as
    image folders stream): (images, int32 labels, class names). Reads every record once to
    index it and read its label."""
    from imgcls_jax.data import tfrecord_index

    builder = _prepared_builder(name, data_dir, download)
    image_key, label_key = image_and_label_keys(builder)
    if builder.info.file_format.value != "tfrecord":
        raise ValueError(
            f"TFDS {name} is stored as {builder.info.file_format.value}; streaming reads "
            "TFRecord files. Rebuild it with `tfds build --file_format=tfrecord` or load it into "
            "memory (dataset.streaming=False)."
        )
    stored = _stored_shape(builder, name, image_key, image_size)
    spans = [
        tfrecord_index.FileSpan(i.filename, i.skip, i.take)
        for i in builder.info.splits[split].file_instructions
    ]
    threads = threads or os.cpu_count() or 1
    records, labels = tfrecord_index.index_records(spans, image_key, label_key, threads)
    images = EncodedImages(np.arange(len(labels)), image_size or stored[0],
                           channels or stored[-1] or 3, threads, reader=records)  # fmt: skip
    return images, labels, tuple(builder.info.features[label_key].names)


def write_dataset(
    name: str,
    data_dir: str,
    splits: dict[str, list[dict]],
    class_names: tuple[str, ...],
    image_shape: tuple,
    encoding: str = "jpeg",
    shards: int = 1,
) -> None:
    """Writes labelled images as TFDS dataset `name` (version 1.0.0) prepared in `data_dir`,
    each split in `shards` TFRecord files, in the given order. An example is {"image": a file
    (stored byte for byte when it is already in `encoding`) or a uint8 array, "label": int}."""
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=image_shape, encoding_format=encoding),
        "label": tfds.features.ClassLabel(names=class_names),
    })  # fmt: skip
    tfds.dataset_builders.store_as_tfds_dataset(
        name, "1.0.0", features,
        {split: list(enumerate(examples)) for split, examples in splits.items()},
        data_dir=data_dir, disable_shuffling=True,
        download_config=tfds.download.DownloadConfig(num_shards=shards),
    )  # fmt: skip
