"""Streaming an image folder or a TFDS dataset (images decoded batch by batch) equals loading
it into memory: the same splits, batches and training; unreadable images stop the run naming
where they lie."""

from __future__ import annotations

import json
import os
import pathlib
import re

import numpy as np
import PIL.Image
import pytest
from conftest import tiny_config

from imgcls_jax import data
from imgcls_jax.data import batch_rows, device_resident, input_pipeline
from imgcls_jax.data.encoded import EncodedImages
from imgcls_jax.data.image_folder import list_image_folder
from imgcls_jax.data.tfds_array_record import add_array_record
from imgcls_jax.data.tfds_source import write_dataset
from imgcls_jax.runtime import sharding
from imgcls_jax.training.loop import TIMING_FILE, train_and_evaluate

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
    order = batch_rows.TrainOrder(len(memory.train), 16, seed=3)
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
    # Read by 2 Grain worker processes from a step mid-run (a resume): the same batches.
    assert input_pipeline.worker_count(-1, streamed.train) == os.cpu_count()
    assert input_pipeline.worker_count(-1, memory.train) == 0
    batches = input_pipeline.train_batches(streamed.train, order, 12, mesh, workers=2)
    for step in (12, 13, 14):
        a = input_pipeline.train_batch(memory.train, order, step, mesh)
        b = next(batches)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    batches.close()
    pairs = zip(input_pipeline.eval_batches(memory.validation, 16, mesh),
                input_pipeline.eval_batches(streamed.validation, 16, mesh, workers=2),
                strict=True)  # fmt: skip
    for a, b in pairs:
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]))
    # "auto" keeps a streamed split off the devices, as the point is not to hold it all.
    assert device_resident.use_device_resident("auto", memory.train, mesh)
    assert not device_resident.use_device_resident("auto", streamed.train, mesh)


@pytest.mark.slow
def test_streamed_training_equals_in_memory_training(folder, tmp_path):
    overrides = {"input.device_resident": "off", "input.prefetch": 3}
    memory = train_and_evaluate(_config(folder, False, **overrides), str(tmp_path / "memory"))
    streamed = train_and_evaluate(_config(folder, True, **overrides), str(tmp_path / "stream"))
    assert streamed == memory
    timing = json.loads((tmp_path / "stream" / TIMING_FILE).read_text())
    assert 0 < timing["compile_s"] < timing["run_s"]


def test_two_threads_closing_one_block_of_shared_memory_close_its_descriptor_once(monkeypatch):
    """Grain's thread and the cycle collector can close one block of a worker's batch at once
    (see `input_pipeline.close_shared_memory_once`): the descriptor must be closed once, or the
    second close can hit a file another thread has just opened."""
    import threading
    import time
    from multiprocessing import shared_memory

    descriptor_closes = []
    close = shared_memory.SharedMemory.close

    def slow_close(memory):  # Widens the window between reading the descriptor and closing it.
        if memory._fd >= 0:
            time.sleep(0.05)
            if memory._fd >= 0:
                descriptor_closes.append(memory._fd)
        close(memory)

    monkeypatch.setattr(shared_memory.SharedMemory, "close", slow_close)
    input_pipeline.close_shared_memory_once()
    block = shared_memory.SharedMemory(create=True, size=4096)
    both = threading.Barrier(2)

    def close_when_both_are_ready():
        both.wait()
        block.close()

    threads = [threading.Thread(target=close_when_both_are_ready) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    block.unlink()
    assert len(descriptor_closes) == 1


def test_worker_batches_close_every_block_of_shared_memory_once(folder, monkeypatch):
    """Batches read by worker processes, one of them left in a reference cycle for the cycle
    collector and the rest dropped by closing the reader: every block of shared memory the
    batches came in is closed exactly once."""
    import collections
    import gc
    import time
    from multiprocessing import shared_memory

    opened, closed = [], []
    memory_type = shared_memory.SharedMemory
    open_memory, close_memory = memory_type.__init__, memory_type.close

    def watched_open(memory, *args, **kwargs):
        open_memory(memory, *args, **kwargs)
        opened.append(memory.name)

    def watched_close(memory):
        if memory._fd >= 0:
            closed.append(memory.name)
        close_memory(memory)

    monkeypatch.setattr(memory_type, "__init__", watched_open)
    monkeypatch.setattr(memory_type, "close", watched_close)
    streamed = data.load_dataset(_config(folder, True).dataset)
    order = batch_rows.TrainOrder(len(streamed.train), 16, seed=3)
    batches = input_pipeline.host_train_batches(streamed.train, order, 0, workers=2)
    cycle = {"batch": next(batches)}
    cycle["itself"] = cycle
    later = [next(batches) for _ in range(3)]
    assert [batch["image"].shape for batch in later] == [(16, 12, 12, 3)] * 3
    del cycle
    assert gc.collect() > 0
    batches.close()
    del later

    def closed_here():  # Not blocks of earlier tests that Grain or the collector close now.
        return collections.Counter(name for name in closed if name in opened)

    deadline = time.monotonic() + 30  # Grain's thread closes blocks in the background.
    while closed_here().total() < len(opened) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(opened) >= 8 and closed_here() == collections.Counter(opened)


@pytest.mark.slow
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


def test_streaming_needs_an_image_folder_or_tfds():
    config = tiny_config(**{"dataset.streaming": True, "dataset.source": "debian"})
    with pytest.raises(ValueError, match="streaming=True needs source 'image_folder' or 'tfds'"):
        data.check_dataset_name(config.dataset)


@pytest.fixture(scope="module")
def tfds_tfrecords(folder, tmp_path_factory) -> pathlib.Path:
    """The folder's JPEG files, byte for byte, as a TFDS dataset of 3 TFRecord shards."""
    images, labels, class_names = list_image_folder(str(folder), 12)
    assert class_names == CLASSES
    data_dir = tmp_path_factory.mktemp("tfds")
    examples = [{"image": path, "label": label} for path, label in zip(images.items, labels)]
    write_dataset("stream_jpegs", str(data_dir), {"train": examples}, CLASSES, (None, None, 3),
                  "jpeg", shards=3)  # fmt: skip
    assert len(list(data_dir.glob("stream_jpegs/1.0.0/*.tfrecord-?????-of-?????"))) == 3
    return data_dir


@pytest.fixture(scope="module")
def tfds_jpegs(tfds_tfrecords, tmp_path_factory) -> pathlib.Path:
    """The same dataset with array_record shards added beside the TFRecord ones, by the
    command that the error for streaming TFRecords names."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    data_dir = _copy_tfds(tfds_tfrecords, tmp_path_factory.mktemp("copy") / "tfds")
    command = [sys.executable, "-m", "imgcls_jax.data.tfds_array_record", "--name=stream_jpegs",
               f"--data_dir={data_dir}"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "Wrote 3 array_record shards." in run.stdout, run.stderr
    shards = sorted(data_dir.glob("stream_jpegs/1.0.0/*.array_record-?????-of-?????"))
    assert len(shards) == 3
    assert add_array_record("stream_jpegs", str(data_dir)) == []  # Once is enough.
    return data_dir


def _copy_tfds(data_dir: pathlib.Path, to: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(data_dir, to)
    return to


def _tfds_config(data_dir, name, streaming, **overrides):
    return _config(data_dir, streaming, **{"dataset.name": name, "dataset.source": "tfds",
                                           **overrides})  # fmt: skip


def test_a_misspelt_tfds_name_suggests_the_dataset_prepared_in_data_dir(tfds_jpegs):
    with pytest.raises(ValueError, match="nor prepared in .* Did you mean 'stream_jpegs'"):
        data.check_dataset_name(_tfds_config(tfds_jpegs, "stream_jpeg", True).dataset)


@pytest.mark.parametrize("streaming", [False, True])
def test_images_of_several_sizes_need_an_image_size(tfds_jpegs, streaming):
    config = _tfds_config(tfds_jpegs, "stream_jpegs", streaming, **{"dataset.image_size": 0})
    with pytest.raises(ValueError, match=r"\(None, None, 3\), not one square size: set config"):
        data.load_dataset(config.dataset)


def test_streaming_tfrecords_names_the_command_that_adds_array_record(tfds_tfrecords):
    config = _tfds_config(tfds_tfrecords, "stream_jpegs", True)
    command = f"python -m imgcls_jax.data.tfds_array_record --name=stream_jpegs --data_dir={tfds_tfrecords} ("
    with pytest.raises(ValueError, match=re.escape(command)):  # The data_dir as configured.
        data.load_dataset(config.dataset)


def test_tfds_records_stream_as_the_same_files_do(folder, tfds_jpegs):
    split = "train[5:110]"  # Starts inside the first shard and ends inside the last.
    config = _tfds_config(tfds_jpegs, "stream_jpegs", True, **{"dataset.train_split": split})
    from_tfds = data.load_dataset(config.dataset)
    assert isinstance(from_tfds.train.images, EncodedImages)
    assert from_tfds.class_names == CLASSES
    # The folder's files 5..109, streamed and held out as the TFDS split must be.
    images, labels, _ = list_image_folder(str(folder), 12, 3, threads=2)
    train, validation, _ = data.hold_out(
        images[5:110], labels[5:110], config.dataset.validation_size, 0, config.dataset.split_seed
    )
    for streamed, reference in ((from_tfds.train, train), (from_tfds.validation, validation)):
        np.testing.assert_array_equal(streamed.labels, reference.labels)
        np.testing.assert_array_equal(np.asarray(streamed.images), np.asarray(reference.images))


def test_tfds_in_memory_decodes_as_streaming_and_image_folders_do(folder, tfds_tfrecords,
                                                                  tfds_jpegs):  # fmt: skip
    """One decoder and resize for every source: the same pixels from the TFRecords in memory,
    the array_records streamed and the image files."""
    memory = data.load_dataset(_tfds_config(tfds_tfrecords, "stream_jpegs", False).dataset)
    streamed = data.load_dataset(_tfds_config(tfds_jpegs, "stream_jpegs", True).dataset)
    files = data.load_dataset(_config(folder, False).dataset)
    for other in (streamed, files):
        for a, b in ((memory.train, other.train), (memory.validation, other.validation)):
            np.testing.assert_array_equal(a.labels, b.labels)
            np.testing.assert_array_equal(a.images, np.asarray(b.images))


@pytest.fixture(scope="module")
def tfds_pngs(folder, tmp_path_factory) -> pathlib.Path:
    """The folder's images decoded to 12x12, stored as PNGs in a TFDS dataset prepared as 2
    array_record shards (as `tfds build --file_format=array_record` prepares one)."""
    images, labels, _ = list_image_folder(str(folder), 12)
    data_dir = tmp_path_factory.mktemp("tfds")
    examples = [
        {"image": image, "label": label} for image, label in zip(np.asarray(images), labels)
    ]
    write_dataset("stream_pngs", str(data_dir), {"train": examples}, CLASSES, (12, 12, 3),
                  "png", shards=2, file_format="array_record")  # fmt: skip
    assert len(list(data_dir.glob("stream_pngs/1.0.0/*.array_record-?????-of-?????"))) == 2
    return data_dir


@pytest.mark.slow
def test_tfds_streamed_training_equals_in_memory_training(tfds_pngs, tmp_path):
    overrides = {"dataset.image_size": 0, "input.device_resident": "off", "input.prefetch": 3}
    memory_config = _tfds_config(tfds_pngs, "stream_pngs", False, **overrides)
    streamed_config = _tfds_config(tfds_pngs, "stream_pngs", True, **overrides)
    memory, streamed = data.load_dataset(memory_config.dataset), data.load_dataset(
        streamed_config.dataset)  # fmt: skip
    assert isinstance(streamed.train.images, EncodedImages)
    for a, b in ((memory.train, streamed.train), (memory.validation, streamed.validation)):
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.images, np.asarray(b.images))
    assert train_and_evaluate(streamed_config, str(tmp_path / "stream")) == train_and_evaluate(
        memory_config, str(tmp_path / "memory"))  # fmt: skip


def test_class_fractions_and_balanced_sampling_read_the_same_batches_from_every_source(
    folder, tfds_tfrecords, tfds_jpegs
):
    from imgcls_jax.data import class_balance

    overrides = {"dataset.class_fractions": (1.0, 0.5, 0.25)}
    splits = [
        data.load_dataset(_config(folder, False, **overrides).dataset).train,
        data.load_dataset(_config(folder, True, **overrides).dataset).train,
        data.load_dataset(_tfds_config(tfds_tfrecords, "stream_jpegs", False, **overrides).dataset).train,
        data.load_dataset(_tfds_config(tfds_jpegs, "stream_jpegs", True, **overrides).dataset).train,
    ]  # fmt: skip
    counts = np.bincount(splits[0].labels)
    assert counts[0] > counts[1] > counts[2] > 0
    mesh = sharding.make_mesh()
    order = class_balance.BalancedOrder(splits[0].labels, 16, seed=1)
    for step in (0, 3, 9):
        batches = [input_pipeline.train_batch(split, order, step, mesh) for split in splits]
        for batch in batches[1:]:
            for key in ("image", "label"):
                np.testing.assert_array_equal(np.asarray(batch[key]), np.asarray(batches[0][key]))


def test_a_damaged_tfds_file_stops_the_run_naming_the_record(tfds_jpegs, tmp_path):
    data_dir = _copy_tfds(tfds_jpegs, tmp_path / "tfds")
    config = _tfds_config(data_dir, "stream_jpegs", True, **{"dataset.validation_size": 0})
    streamed = data.load_dataset(config.dataset)  # Reads every record's label.
    shard = sorted(data_dir.glob("stream_jpegs/1.0.0/*.array_record-?????-of-?????"))[1]
    contents = bytearray(shard.read_bytes())
    contents[200:240] = bytes(b ^ 0xFF for b in contents[200:240])  # Inside its first record.
    shard.write_bytes(bytes(contents))
    first = len(streamed.train) // 3  # 3 shards of equal size.
    with pytest.raises(ValueError, match=rf"record {first} of TFDS stream_jpegs\[train\] .* is un"):
        np.asarray(streamed.train.images)  # Decoded batch by batch, after the listing.
    with pytest.raises(ValueError, match=r"stream_jpegs\[train\] .* has a damaged file .*rebuild"):
        data.load_dataset(config.dataset)


def _launch_streaming(folder, workdir, devices: int, workers: int, process=0, address=""):
    """launch.py streaming `folder` with `workers` Grain workers per process, on `devices`
    CPU devices of this process (process `process` of 2 with a coordinator `address`)."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    overrides = {
        "dataset.name": "image_folder", "dataset.data_dir": folder, "dataset.image_size": 12,
        "dataset.mean": "(0.5,0.5,0.5)", "dataset.std": "(0.25,0.25,0.25)",
        "dataset.validation_size": 24, "dataset.train_size": 0, "dataset.test_split": "",
        "dataset.streaming": True, "input.workers": workers, "input.device_resident": "off",
        "input.batch_size": 16, "input.eval_batch_size": 16, "augment.train": "flip_lr",
        "augment.grid_images": 0, "training.num_train_steps": 8,
        "training.log_every_steps": 1, "training.eval_every_epochs": 1000.0,
    }  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    flags = [f"--coordinator_address={address}", "--num_processes=2",
             f"--process_id={process}"] if address else []  # fmt: skip
    log = open(f"{workdir}.{process}.log", "w+")  # Not a pipe, which could fill up.
    process = subprocess.Popen(
        [sys.executable, "launch.py", "--config=configs/resnet.py:tiny", f"--workdir={workdir}",
         *(f"--config.{k}={v}" for k, v in overrides.items()), *flags],
        cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    process.log = log
    return process


def _wait(process) -> str:
    """Waits for a `_launch_streaming` process; returns its log."""
    process.wait(timeout=300)
    process.log.seek(0)
    return process.log.read()


@pytest.mark.slow
def test_two_processes_with_grain_workers_train_what_one_process_trains(folder, tmp_path):
    """2 processes x 4 devices, each reading its own rows of every batch in a Grain worker,
    train what 1 process x 8 devices with 2 workers trains."""
    import socket

    from imgcls_jax.reporting import writers

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    one = _launch_streaming(folder, tmp_path / "one", 8, 2)
    one_log = _wait(one)
    assert one.returncode == 0, one_log[-3000:]
    two = [_launch_streaming(folder, tmp_path / "two", 4, 1, i, address) for i in range(2)]
    logs = [_wait(p) for p in two]
    assert [p.returncode for p in two] == [0, 0], logs[0][-3000:] + logs[1][-3000:]

    def losses(workdir):
        records = writers.read_metrics(str(workdir / "metrics.jsonl"))
        return {r["step"]: r["train/loss"] for r in records if "train/loss" in r}

    expected, actual = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(actual) == sorted(expected) == list(range(1, 9))
    # Gradients are summed in another order across processes: equal to float precision.
    np.testing.assert_allclose([actual[s] for s in expected], list(expected.values()), rtol=1e-4)
    results = [json.loads((tmp_path / w / "results.json").read_text()) for w in ("one", "two")]
    assert results[1]["val/loss"] == pytest.approx(results[0]["val/loss"], rel=1e-4)
