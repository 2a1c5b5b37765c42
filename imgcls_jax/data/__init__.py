"""Dataset loading: sources (TFDS, Debian's Fashion-MNIST files, image folders) to uint8 arrays."""

from __future__ import annotations

import dataclasses
import logging

import ml_collections
import numpy as np

from imgcls_jax.data import fashion_mnist_files

SOURCES = ("auto", "tfds", "debian", "image_folder")


@dataclasses.dataclass(frozen=True)
class Split:
    """One split: uint8 NHWC images (in host memory, or `EncodedImages` decoded batch by
    batch when streaming) and int32 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclasses.dataclass(frozen=True)
class Dataset:
    """Train, validation (held out from train; None with validation_size=0) and optional test
    splits."""

    train: Split
    validation: Split | None
    test: Split | None
    class_names: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def check_dataset_name(dataset_config: ml_collections.ConfigDict) -> None:
    """Raises before any work when the dataset name cannot be resolved."""
    source = resolve_source(dataset_config)
    if source == "tfds":
        from imgcls_jax.data import tfds_source

        tfds_source.check_name(dataset_config.name, dataset_config.data_dir)
    elif source == "debian" and dataset_config.name != "fashion_mnist":
        raise ValueError("config.dataset.source='debian' only provides 'fashion_mnist'.")
    elif source == "image_folder" and not dataset_config.data_dir:
        raise ValueError("config.dataset.source='image_folder' needs config.dataset.data_dir=ROOT.")
    elif source == "image_folder" and not dataset_config.image_size:
        raise ValueError("config.dataset.image_size must be > 0 for image folders.")
    if dataset_config.streaming and source not in ("image_folder", "tfds"):
        raise ValueError(
            f"config.dataset.streaming=True needs source 'image_folder' or 'tfds' (this is "
            f"{source!r}, which loads into memory)."
        )


def resolve_source(dataset_config: ml_collections.ConfigDict) -> str:
    """Resolves source="auto": image folders by name, Debian files for Fashion-MNIST, else TFDS."""
    if dataset_config.source != "auto":
        return dataset_config.source
    if dataset_config.name == "image_folder":
        return "image_folder"
    if (
        dataset_config.name == "fashion_mnist"
        and not dataset_config.data_dir
        and fashion_mnist_files.available()
    ):
        return "debian"
    return "tfds"


def split_validation(
    images: np.ndarray, labels: np.ndarray, size: float, seed: int
) -> tuple[Split, Split | None]:
    """Holds out `size` examples (or a fraction if < 1) of train, chosen by a fixed permutation;
    none (validation None) when `size` is 0."""
    if size == 0:
        return Split(images, labels), None
    count = int(round(size * len(labels))) if size < 1 else int(size)
    if not 0 < count < len(labels):
        raise ValueError(
            f"config.dataset.validation_size={size} leaves no train or no validation examples "
            f"out of {len(labels)}."
        )
    order = np.random.default_rng(seed).permutation(len(labels))
    val, train = np.sort(order[:count]), np.sort(order[count:])
    return Split(images[train], labels[train]), Split(images[val], labels[val])


def subset(split: Split, size: int, seed: int) -> Split:
    """A random subset of `size` examples (kept in their original order)."""
    if not 0 < size <= len(split):
        raise ValueError(f"config.dataset.train_size={size} must lie in [1, {len(split)}].")
    keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(split))[:size])
    return Split(split.images[keep], split.labels[keep])


def load_dataset(dataset_config: ml_collections.ConfigDict) -> Dataset:
    """Loads the configured dataset into host memory and holds out the validation split."""
    source = resolve_source(dataset_config)
    test = None
    if source == "debian":
        images, labels = fashion_mnist_files.load_split("train")
        if dataset_config.test_split:
            test = Split(*fashion_mnist_files.load_split(dataset_config.test_split))
        class_names = fashion_mnist_files.CLASS_NAMES
    elif source == "image_folder" and dataset_config.streaming:
        from imgcls_jax.data.image_folder import list_image_folder

        images, labels, class_names = list_image_folder(
            dataset_config.data_dir, dataset_config.image_size, dataset_config.channels,
            dataset_config.decode_threads,
        )  # fmt: skip
    elif source == "image_folder":
        from imgcls_jax.data.image_folder import load_image_folder

        folder = load_image_folder(
            dataset_config.data_dir,
            image_size=dataset_config.image_size,
            channels=dataset_config.channels,
            strict=dataset_config.strict,
        )
        images, labels, class_names = folder.images, folder.labels, folder.class_names
    else:
        from imgcls_jax.data import tfds_source

        def load(split: str):
            common = (dataset_config.name, split, dataset_config.data_dir,
                      dataset_config.download, dataset_config.image_size)  # fmt: skip
            if dataset_config.streaming:
                return tfds_source.list_split(*common, dataset_config.channels,
                                              dataset_config.decode_threads)  # fmt: skip
            return tfds_source.load_split(*common)

        images, labels, class_names = load(dataset_config.train_split)
        if dataset_config.test_split:
            test_images, test_labels, _ = load(dataset_config.test_split)
            test = Split(test_images, test_labels)
    if source == "debian" and dataset_config.image_size not in (0, 28):
        raise ValueError("Fashion-MNIST from Debian's files is 28 px: set dataset.image_size=0.")
    train, validation = split_validation(
        images, labels, dataset_config.validation_size, dataset_config.split_seed
    )
    if dataset_config.train_size:
        train = subset(train, dataset_config.train_size, dataset_config.split_seed)
    if dataset_config.class_fractions:
        from imgcls_jax.imbalance import reduce_classes

        train = reduce_classes(train, dataset_config.class_fractions, dataset_config.split_seed)
    logging.info(
        "Dataset %s (%s): %d train, %d validation, %s test, %d classes, images %s.",
        dataset_config.name,
        source,
        len(train),
        len(validation) if validation is not None else 0,
        len(test) if test is not None else "no",
        len(class_names),
        images.shape[1:],
    )
    return Dataset(train, validation, test, tuple(class_names))
