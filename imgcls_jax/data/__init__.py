"""Dataset loading: sources (TFDS, Debian's Fashion-MNIST files, image folders) to uint8 arrays."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import ml_collections
import numpy as np

from imgcls_jax import registry
from imgcls_jax.data import fashion_mnist_files


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
    """Raises before any work when the source or dataset name cannot be resolved."""
    sources = ("auto", *registry.names("source"))
    registry.check_choice("dataset.source", dataset_config.source, sources)
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


def image_folder_channels(dataset_config: ml_collections.ConfigDict) -> int | None:
    """For an image folder, the channels its train images will have (from the config or the
    files' headers, before any decoding); None for other sources."""
    if resolve_source(dataset_config) != "image_folder":
        return None
    from imgcls_jax.data import image_folder

    return image_folder.peek_channels(_image_folders(dataset_config)["train"],
                                      dataset_config.channels)  # fmt: skip


def _image_folders(c: ml_collections.ConfigDict) -> dict[str, str]:
    """{split: folder} of an image-folder dataset: its split folders, or the one folder."""
    from imgcls_jax.data import image_folder

    return image_folder.split_folders(c.data_dir, c.train_split, c.validation_split,
                                      c.test_split) or {"train": c.data_dir}  # fmt: skip


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


def _held_out_count(size: float, total: int, key: str) -> int:
    count = int(round(size * total)) if size < 1 else int(size)
    if size and not 0 < count < total:
        raise ValueError(f"config.dataset.{key}={size} leaves no train or no {key[:-5]} "
                         f"examples out of {total}.")  # fmt: skip
    return count


def hold_out(
    images: np.ndarray, labels: np.ndarray, validation_size: float, test_size: float, seed: int
) -> tuple[Split, Split | None, Split | None]:
    """(train, validation, test): `validation_size` and `test_size` examples (or fractions if
    < 1) held out of train by one fixed permutation; None for a size of 0."""
    total = len(labels)
    val_count = _held_out_count(validation_size, total, "validation_size")
    test_count = _held_out_count(test_size, total, "test_size")
    if val_count + test_count >= total:
        raise ValueError(f"config.dataset.validation_size={validation_size} and test_size="
                         f"{test_size} leave no train examples out of {total}.")  # fmt: skip
    if not val_count and not test_count:
        return Split(images, labels), None, None
    order = np.random.default_rng(seed).permutation(total)
    held = np.split(order, [val_count, val_count + test_count])

    def part(indices: np.ndarray) -> Split | None:
        indices = np.sort(indices)
        return Split(images[indices], labels[indices]) if len(indices) else None

    return part(held[2]), part(held[0]), part(held[1])


def subset(split: Split, size: int, seed: int) -> Split:
    """A random subset of `size` examples (kept in their original order)."""
    if not 0 < size <= len(split):
        raise ValueError(f"config.dataset.train_size={size} must lie in [1, {len(split)}].")
    keep = np.sort(np.random.default_rng([seed, 1]).permutation(len(split))[:size])
    return Split(split.images[keep], split.labels[keep])


def reduce_classes(split: Split, fractions: Sequence[float], seed: int) -> Split:
    """Keeps a random `fractions[c]` of each class c (at least one example of a kept class)."""
    num_classes = int(split.labels.max()) + 1 if len(split) else 0
    if len(fractions) < num_classes:
        raise ValueError(
            f"config.dataset.class_fractions has {len(fractions)} entries but the data has "
            f"{num_classes} classes; give one fraction per class."
        )
    rng = np.random.default_rng([seed, 2])
    keep = []
    for label, fraction in enumerate(fractions):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(
                f"config.dataset.class_fractions[{label}]={fraction} is not in [0, 1]."
            )
        members = np.flatnonzero(split.labels == label)
        count = max(1, round(fraction * len(members))) if fraction > 0 and len(members) else 0
        keep.append(rng.permutation(members)[:count])
    keep = np.sort(np.concatenate(keep))
    return Split(split.images[keep], split.labels[keep])


# Sources (registry kind "source"): dataset config -> ({"train"|"validation"|"test": (images,
# labels)}, class names). dataset.source="auto" picks one (resolve_source).


@registry.register("source", "debian")
def _load_debian(c: ml_collections.ConfigDict) -> tuple[dict, tuple[str, ...]]:
    if c.validation_split:
        raise ValueError("Fashion-MNIST's files have only 'train' and 'test' splits: set "
                         "config.dataset.validation_split=''.")  # fmt: skip
    splits = {"train": fashion_mnist_files.load_split(c.train_split)}
    if c.test_split:
        splits["test"] = fashion_mnist_files.load_split(c.test_split)
    return splits, fashion_mnist_files.CLASS_NAMES


@registry.register("source", "image_folder")
def _load_image_folder(c: ml_collections.ConfigDict) -> tuple[dict, tuple[str, ...]]:
    from imgcls_jax.data import image_folder

    folders = _image_folders(c)
    splits, class_names, channels = {}, None, c.channels
    for key in ("train", "validation", "test"):  # Train first: it fixes classes and channels.
        if key not in folders:
            continue
        if c.streaming:
            images, labels, class_names = image_folder.list_image_folder(
                folders[key], c.image_size, channels, c.decode_threads, class_names
            )
        else:
            folder = image_folder.load_image_folder(
                folders[key], c.image_size, channels, c.strict, class_names
            )
            images, labels, class_names = folder.images, folder.labels, folder.class_names
        splits[key], channels = (images, labels), images.shape[-1]
    return splits, class_names


@registry.register("source", "tfds")
def _load_tfds(c: ml_collections.ConfigDict) -> tuple[dict, tuple[str, ...]]:
    from imgcls_jax.data import tfds_source

    splits, class_names, channels = {}, (), c.channels
    names = {"train": c.train_split, "validation": c.validation_split, "test": c.test_split}
    for key, split in names.items():  # Train first: it fixes the channels.
        if not split:
            continue
        common = (c.name, split, c.data_dir, c.download, c.image_size)
        if c.streaming:
            images, labels, names_found = tfds_source.list_split(*common, channels,
                                                                 c.decode_threads)  # fmt: skip
        else:
            images, labels, names_found = tfds_source.load_split(*common)
        splits[key], channels = (images, labels), images.shape[-1]
        class_names = class_names or names_found
    return splits, class_names


def class_counts(split: Split, num_classes: int) -> list[int]:
    return np.bincount(split.labels, minlength=num_classes).tolist()


def describe_class_counts(split: Split, class_names: tuple[str, ...], most: int = 20) -> str:
    """Like "12 cat, 9 dog"; for more than `most` classes the smallest and largest."""
    counts = class_counts(split, len(class_names))
    if len(class_names) <= most:
        return ", ".join(f"{n} {name}" for name, n in zip(class_names, counts, strict=True))
    low, high = int(np.argmin(counts)), int(np.argmax(counts))
    return (f"{len(class_names)} classes, {counts[low]} ({class_names[low]}) to "
            f"{counts[high]} ({class_names[high]}) each")  # fmt: skip


def load_dataset(dataset_config: ml_collections.ConfigDict) -> Dataset:
    """Loads the configured dataset (into host memory, or listed for streaming) and holds out
    validation (unless `validation_split` names one) and `test_size` examples from train."""
    c = dataset_config
    source = resolve_source(c)
    if source == "debian" and c.image_size not in (0, 28):
        raise ValueError("Fashion-MNIST from Debian's files is 28 px: set dataset.image_size=0.")
    splits, class_names = registry.get("source", source, key="dataset.source")(c)
    validation_size = 0 if c.validation_split else c.validation_size
    train, validation, test = hold_out(*splits["train"], validation_size, c.test_size,
                                       c.split_seed)  # fmt: skip
    if "validation" in splits:
        validation = Split(*splits["validation"])
    if "test" in splits:
        test = Split(*splits["test"])
    if c.train_size:
        train = subset(train, c.train_size, c.split_seed)
    if c.class_fractions:
        train = reduce_classes(train, c.class_fractions, c.split_seed)
    dataset = Dataset(train, validation, test, tuple(class_names))
    counts = {
        name: len(split) if split is not None else 0
        for name, split in (("train", train), ("validation", validation), ("test", test))
    }
    logging.info(
        "Dataset %s (%s): %d train, %d validation, %d test, %d classes, images %s.",
        c.name, source, counts["train"], counts["validation"], counts["test"],
        len(class_names), train.images.shape[1:],
    )  # fmt: skip
    for name, split in (("train", train), ("validation", validation), ("test", test)):
        if split is not None:
            logging.info("  %s: %s", name, describe_class_counts(split, dataset.class_names))
    return dataset
