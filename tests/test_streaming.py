"""Streaming an image folder (files decoded batch by batch) equals loading it into memory:
the same splits, batches and training; unreadable files stop the run naming the file."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import PIL.Image
import pytest
from conftest import tiny_config

from imgcls_jax import data, device_data, input_pipeline, sharding
from imgcls_jax.data.encoded import EncodedImages
from imgcls_jax.train import TIMING_FILE, train_and_evaluate

CLASSES = ("ant", "bee", "cat")
PER_CLASS = 40


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    """Real JPEGs of assorted sizes: each class a different colour and stripe direction."""
    root = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    for label, name in enumerate(CLASSES):
        (root / name).mkdir()
        for i in range(PER_CLASS):
            h, w = rng.integers(10, 30, 2)
            pixels = rng.integers(0, 80, (h, w, 3)).astype(np.uint8)
            pixels[..., label] += 150
            pixels[:: 2 + label] //= 2
            PIL.Image.fromarray(pixels).save(root / name / f"{i:03d}.jpg", quality=90)
    return root


def _config(folder, streaming, **overrides):
    return tiny_config(**{
        "dataset.name": "image_folder", "dataset.data_dir": str(folder),
        "dataset.image_size": 12, "dataset.mean": (0.5,) * 3, "dataset.std": (0.25,) * 3,
        "dataset.validation_size": 24, "dataset.train_size": 0, "dataset.test_split": "",
        "dataset.streaming": streaming, "dataset.decode_threads": 2,
        "input.batch_size": 16, "input.eval_batch_size": 16, **overrides,
    })  # fmt: skip


def test_streamed_splits_and_batches_equal_the_in_memory_ones(folder):
    memory = data.load_dataset(_config(folder, False).dataset)
    streamed = data.load_dataset(_config(folder, True).dataset)
    assert isinstance(streamed.train.images, EncodedImages)
    assert streamed.train.images.shape == memory.train.images.shape
    np.testing.assert_array_equal(streamed.train.labels, memory.train.labels)
    mesh = sharding.make_mesh()
    order = input_pipeline.TrainOrder(len(memory.train), 16, seed=3)
    for step in (0, 1, 5, 13):  # 13: past the first epoch's reshuffle.
        a = input_pipeline.train_batch(memory.train, order, step, mesh)
        b = input_pipeline.train_batch(streamed.train, order, step, mesh)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    pairs = zip(input_pipeline.eval_batches(memory.validation, 16, mesh),
                input_pipeline.eval_batches(streamed.validation, 16, mesh), strict=True)  # fmt: skip
    for a, b in pairs:
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    # "auto" keeps a streamed split off the devices, as the point is not to hold it all.
    assert device_data.use_device_resident("auto", memory.train, mesh)
    assert not device_data.use_device_resident("auto", streamed.train, mesh)


def test_streamed_training_equals_in_memory_training(folder, tmp_path):
    overrides = {"input.device_resident": "off", "input.prefetch": 3}
    memory = train_and_evaluate(_config(folder, False, **overrides), str(tmp_path / "memory"))
    streamed = train_and_evaluate(_config(folder, True, **overrides), str(tmp_path / "stream"))
    assert streamed == memory
    timing = json.loads((tmp_path / "stream" / TIMING_FILE).read_text())
    assert 0 < timing["compile_s"] < timing["run_s"]


def test_an_unreadable_file_stops_the_run_naming_it(folder, tmp_path):
    broken = tmp_path / "folder"
    for name in CLASSES:
        (broken / name).mkdir(parents=True)
        for path in sorted((folder / name).iterdir())[:8]:
            (broken / name / path.name).write_bytes(path.read_bytes())
    (broken / "bee" / "003.jpg").write_bytes(b"not a jpeg")
    config = _config(broken, True, **{"dataset.validation_size": 6, "input.batch_size": 8})
    streamed = data.load_dataset(config.dataset)  # Listing the files reads no pixels.
    assert len(streamed.train) + len(streamed.validation) == 24
    with pytest.raises(ValueError, match=r"bee/003\.jpg' is unreadable.*relaunch"):
        train_and_evaluate(config, str(tmp_path / "run"))


def test_streaming_needs_an_image_folder():
    config = tiny_config(**{"dataset.streaming": True})
    with pytest.raises(ValueError, match="streaming=True needs source 'image_folder'"):
        data.check_dataset_name(config.dataset)
