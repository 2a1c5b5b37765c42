"""Dataset sources: the real Fashion-MNIST files, content checks, holdout, TFDS via mock data."""

import gzip
import os
import shutil

import ml_collections
import numpy as np
import pytest

from imgcls_jax import data
from imgcls_jax.config import base_config
from imgcls_jax.data import fashion_mnist_files

needs_fmnist = pytest.mark.skipif(
    not fashion_mnist_files.available(), reason="needs Debian's dataset-fashion-mnist"
)


@needs_fmnist
def test_fashion_mnist_is_the_real_data():
    train_images, train_labels = fashion_mnist_files.load_split("train")
    test_images, test_labels = fashion_mnist_files.load_split("test")
    assert train_images.shape == (60000, 28, 28, 1) and train_images.dtype == np.uint8
    assert test_images.shape == (10000, 28, 28, 1)
    # Published statistics of Fashion-MNIST: pixel mean 0.2860 / std 0.3530 (train),
    # 6,000 train and 1,000 test images per class, and the first train labels.
    assert train_images.mean() / 255 == pytest.approx(0.2860, abs=1e-4)
    assert train_images.std() / 255 == pytest.approx(0.3530, abs=1e-4)
    assert test_images.mean() / 255 == pytest.approx(0.2868, abs=1e-4)
    assert np.bincount(train_labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(header + array.astype(np.uint8).tobytes())


@needs_fmnist
def test_recompressed_files_verify_and_altered_content_is_refused(tmp_path):
    images = fashion_mnist_files._read_idx(
        os.path.join(fashion_mnist_files.DEBIAN_DIR, fashion_mnist_files.FILES["test"][0])
    )
    for name in fashion_mnist_files.FILES["train"]:
        shutil.copy(os.path.join(fashion_mnist_files.DEBIAN_DIR, name), tmp_path / name)
    label_file = fashion_mnist_files.FILES["test"][1]
    shutil.copy(os.path.join(fashion_mnist_files.DEBIAN_DIR, label_file), tmp_path / label_file)
    # Different gzip bytes, same content: accepted.
    _write_idx(tmp_path / fashion_mnist_files.FILES["test"][0], images)
    loaded, _ = fashion_mnist_files.load_split("test", str(tmp_path))
    np.testing.assert_array_equal(loaded[..., 0], images)
    # One changed pixel: refused, with the fix.
    images = images.copy()
    images[5, 10, 10] ^= 1
    _write_idx(tmp_path / fashion_mnist_files.FILES["test"][0], images)
    with pytest.raises(ValueError, match="unexpected content.*apt-get install"):
        fashion_mnist_files.load_split("test", str(tmp_path))


def test_missing_files_say_how_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
        fashion_mnist_files.load_split("train", str(tmp_path))


def test_unprepared_tfds_dataset_says_how_to_get_it(tmp_path):
    c = base_config()
    c.dataset.update(name="mnist", source="tfds", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tfds build mnist"):
        data.load_dataset(c.dataset)


def test_dataset_too_large_for_host_memory_is_refused_before_decoding():
    from imgcls_jax.data import tfds_source

    tfds_source.check_fits_in_memory("fashion_mnist", "train", 60000, (28, 28, 1))
    with pytest.raises(MemoryError, match="lower config.dataset.image_size"):
        tfds_source.check_fits_in_memory("imagenet2012", "train", 1_281_167, (224, 224, 3))


def test_validation_holdout_is_disjoint_fixed_and_complete():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    labels = np.arange(100, dtype=np.int32)
    train, val, test = data.hold_out(images, labels, 0.2, 0, seed=0)
    train2, val2, _ = data.hold_out(images, labels, 20, 0, seed=0)
    assert len(val) == 20 and len(train) == 80 and test is None
    np.testing.assert_array_equal(val.labels, val2.labels)
    assert sorted(np.concatenate([train.labels, val.labels]).tolist()) == list(range(100))
    np.testing.assert_array_equal(train.images[:, 0, 0, 0], train.labels)
    everything, none, no_test = data.hold_out(images, labels, 0, 0, seed=0)
    assert none is None and no_test is None
    np.testing.assert_array_equal(everything.labels, labels)


def test_test_holdout_keeps_the_validation_split_and_is_disjoint():
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    labels = np.arange(100, dtype=np.int32)
    _, val_only, _ = data.hold_out(images, labels, 20, 0, seed=3)
    train, val, test = data.hold_out(images, labels, 20, 0.1, seed=3)
    np.testing.assert_array_equal(val.labels, val_only.labels)  # Adding a test set moves nothing.
    assert (len(train), len(val), len(test)) == (70, 20, 10)
    parts = [set(s.labels.tolist()) for s in (train, val, test)]
    assert set.union(*parts) == set(range(100)) and sum(map(len, parts)) == 100
    with pytest.raises(ValueError, match="leave no train examples"):
        data.hold_out(images, labels, 60, 40, seed=3)


def test_tfds_source_with_mock_data(monkeypatch):
    import tensorflow_datasets as tfds

    monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)

    c = base_config().dataset
    c.update(name="mnist", source="tfds", validation_size=10)
    with tfds.testing.mock_data(num_examples=40):
        dataset = data.load_dataset(ml_collections.ConfigDict(c))
    assert len(dataset.train) == 30 and len(dataset.validation) == 10 and len(dataset.test) == 40
    assert dataset.train.images.dtype == np.uint8 and dataset.train.images.shape[1:] == (28, 28, 1)
    assert dataset.num_classes == 10


@needs_fmnist
def test_auto_source_uses_debian_files_and_train_size_subsets():
    c = base_config().dataset
    c.update(train_size=1000, validation_size=5000)
    dataset = data.load_dataset(c)
    assert len(dataset.train) == 1000 and len(dataset.validation) == 5000
    assert len(dataset.test) == 10000 and dataset.class_names[0] == "t-shirt/top"


def test_image_folder_source_splits_and_skips_bad_files(tmp_path, caplog):
    from PIL import Image

    for label, colour in (("cat", (200, 30, 30)), ("dog", (30, 30, 200))):
        (tmp_path / label).mkdir()
        for i in range(6):
            Image.new("RGB", (10 + i, 12), colour).save(tmp_path / label / f"{i}.png")
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    c = base_config().dataset
    c.update(name="image_folder", data_dir=str(tmp_path), image_size=8, validation_size=4,
             test_split="", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))  # fmt: skip
    dataset = data.load_dataset(c)
    assert dataset.class_names == ("cat", "dog")
    assert len(dataset.train) + len(dataset.validation) == 12 and len(dataset.validation) == 4
    assert dataset.train.images.shape[1:] == (8, 8, 3) and dataset.test is None
    red = dataset.train.images[dataset.train.labels == 0]
    assert np.all(red[..., 0] == 200) and np.all(red[..., 2] == 30)
    assert "broken.jpg" in caplog.text
    c.strict = True
    with pytest.raises(ValueError, match="broken.jpg"):
        data.load_dataset(c)
