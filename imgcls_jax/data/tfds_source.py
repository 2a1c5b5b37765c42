"""TFDS image-classification splits: loaded into host memory as uint8 arrays, or listed for
streaming (encoded images read from array_record files through `tfds.data_source`, batch by
batch). Images are decoded on the host as image folders are."""

from __future__ import annotations

import concurrent.futures
import io
import os

import numpy as np

from imgcls_jax.data.decode import decode_named
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
    """Returns (images uint8 NHWC, labels int32, class names) of one TFDS split, decoded on the
    host as image folders are (`decode.decode_image`); with `image_size`, each image's shorter
    side is resized to it and the centre square kept."""
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name, data_dir, download)
    image_key, label_key = image_and_label_keys(builder)
    stored = builder.info.features[image_key].shape
    if builder.info.splits:  # Unknown for mock data.
        stored = _stored_shape(builder, name, image_key, image_size)
        shape = (image_size, image_size, stored[-1]) if image_size else stored
        if None not in shape:
            check_fits_in_memory(name, split, builder.info.splits[split].num_examples, shape)
    if _has_array_record(builder):  # Read as streaming reads it (TFDS reads no other way).
        images, labels, class_names = list_split(name, split, data_dir, False, image_size, 0, 0)
        return np.asarray(images), labels, class_names
    mode = "L" if stored[-1] == 1 else "RGB"
    where = f"TFDS {name}[{split}]"
    size = image_size or stored[0]

    def decode_one(index_and_encoded: tuple[int, bytes]) -> np.ndarray:
        index, encoded = index_and_encoded
        image = decode_named(io.BytesIO(encoded), where, size, mode)
        if image is None:
            raise ValueError(f"Example {index} of {where} is not a readable image: rebuild the "
                             "dataset, or restore its files.")  # fmt: skip
        return image

    ds = builder.as_dataset(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    images, labels = [], []
    with concurrent.futures.ThreadPoolExecutor(os.cpu_count()) as pool:  # PIL frees the GIL.
        for batch in tfds.as_numpy(ds.batch(1024).prefetch(2)):
            images.extend(pool.map(decode_one, enumerate(batch[image_key], len(labels))))
            labels.extend(batch[label_key].tolist())
    class_names = tuple(builder.info.features[label_key].names)
    return np.stack(images), np.asarray(labels, np.int32), class_names


class RecordImages:
    """The encoded images of one TFDS split, by record number, through `tfds.data_source`
    (random access to array_record files): the `reader` of an `EncodedImages`. Picklable,
    so Grain's worker processes read records themselves. `identity` names the records (for
    the dataset fingerprint), `where` names them for people."""

    def __init__(self, source, image_key: str, identity: str, where: str):
        self.source, self.image_key, self.identity, self.where = source, image_key, identity, where

    def name(self, i: int) -> str:
        return f"The image in record {i} of {self.where}"

    def open(self, i: int) -> io.BytesIO:
        """The record's image bytes; none when the record itself cannot be read (a corrupt
        file), so that decoding reports the image as unreadable."""
        try:
            return io.BytesIO(self.source[int(i)][self.image_key])
        except RuntimeError:  # array_record's error for a damaged chunk.
            return io.BytesIO(b"")


def _has_array_record(builder) -> bool:
    return "array_record" in {f.value for f in builder.info.available_file_formats()}


def list_split(
    name: str,
    split: str,
    data_dir: str,
    download: bool,
    image_size: int,
    channels: int,
    threads: int,
) -> tuple[EncodedImages, np.ndarray, tuple[str, ...]]:
    """One TFDS split left encoded in its array_record files, decoded later batch by batch (as
    image folders stream): (images, int32 labels, class names). Reads every record once for
    its label."""
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name, data_dir, download)
    image_key, label_key = image_and_label_keys(builder)
    if not _has_array_record(builder):
        raise ValueError(
            f"TFDS {name} is stored as {builder.info.file_format.value} files, which have no "
            "random access; streaming reads array_record. Add array_record files beside them "
            f"once: python -m imgcls_jax.data.tfds_array_record --name={name}"
            f"{f' --data_dir={data_dir}' if data_dir else ''} (or load the split into memory: "
            "dataset.streaming=False)."
        )
    stored = _stored_shape(builder, name, image_key, image_size)
    source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False,
                              decoders={image_key: tfds.decode.SkipDecoding()})  # fmt: skip
    threads = threads or os.cpu_count() or 1
    where = f"TFDS {name}[{split}] ({builder.data_dir})"
    identity = f"{builder.info.full_name}[{split}]"
    try:
        labels = _read_labels(source, label_key, threads)
    except RuntimeError as error:  # array_record's error for a damaged file.
        raise ValueError(f"{where} has a damaged file ({error}): rebuild the dataset or "
                         "restore its files.") from None  # fmt: skip
    images = EncodedImages(np.arange(len(labels)), image_size or stored[0],
                           channels or stored[-1] or 3, threads,
                           reader=RecordImages(source, image_key, identity, where))  # fmt: skip
    return images, labels, tuple(builder.info.features[label_key].names)


def _read_labels(source, label_key: str, threads: int, chunk: int = 4096) -> np.ndarray:
    """Every record's label (each record read once), in `threads` threads."""
    starts = range(0, len(source), chunk)

    def read(start: int) -> list[int]:
        records = source.__getitems__(range(start, min(start + chunk, len(source))))
        return [record[label_key] for record in records]

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        labels = [label for part in pool.map(read, starts) for label in part]
    return np.asarray(labels, np.int32)


def write_dataset(
    name: str,
    data_dir: str,
    splits: dict[str, list[dict]],
    class_names: tuple[str, ...],
    image_shape: tuple,
    encoding: str = "jpeg",
    shards: int = 1,
    file_format: str = "tfrecord",
) -> None:
    """Writes labelled images as TFDS dataset `name` (version 1.0.0) prepared in `data_dir`,
    each split in `shards` files of `file_format` (as `tfds build` writes), in the given order. An example is {"image": a file
    (stored byte for byte when it is already in `encoding`) or a uint8 array, "label": int}."""
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=image_shape, encoding_format=encoding),
        "label": tfds.features.ClassLabel(names=class_names),
    })  # fmt: skip
    tfds.dataset_builders.store_as_tfds_dataset(
        name, "1.0.0", features,
        {split: list(enumerate(examples)) for split, examples in splits.items()},
        data_dir=data_dir, disable_shuffling=True, file_format=file_format,
        download_config=tfds.download.DownloadConfig(num_shards=shards),
    )  # fmt: skip
