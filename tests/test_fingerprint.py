"""Dataset fingerprints: equal for equal data, and a resume on changed data stops with the fix."""

import dataclasses
import os

import PIL.Image
import pytest
from conftest import tiny_config

from imgcls_jax import data
from imgcls_jax.config import apply_overrides
from imgcls_jax.data.fingerprint import DatasetChangedError, dataset_fingerprint, describe_change
from imgcls_jax.data.image_folder import list_image_folder
from imgcls_jax.training.loop import train_and_evaluate


def _streamed(root, count):
    for i in range(count):
        (root / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        PIL.Image.new("L", (4, 4), i).save(root / f"c{i % 2}" / f"{i}.png")
    images, labels, names = list_image_folder(str(root), 4, channels=1)
    split = data.Split(images, labels)
    return data.Dataset(train=split, validation=None, test=split, class_names=names)


def test_fingerprints_tell_equal_from_changed_data(tmp_path, dataset):
    same = dataclasses.replace(dataset, train=data.Split(dataset.train.images.copy(),
                                                         dataset.train.labels.copy()))  # fmt: skip
    assert dataset_fingerprint(same) == dataset_fingerprint(dataset)
    pixels = dataset.train.images.copy()
    pixels[7, 0, 0, 0] ^= 1
    changed = dataclasses.replace(dataset, train=data.Split(pixels, dataset.train.labels))
    assert describe_change(dataset_fingerprint(dataset), dataset_fingerprint(changed)) == (
        "train holds other examples (same count, 256)"
    )
    # Streamed image folders: identified by their file names, relative to the data folder,
    # and the files' sizes and modification times (a copy keeping them, e.g. cp -p or rsync -a,
    # is the same data).
    a, b = _streamed(tmp_path / "a" / "root", 6), _streamed(tmp_path / "b" / "root", 6)
    for path in (tmp_path / "a" / "root").rglob("*.png"):
        twin = tmp_path / "b" / "root" / path.relative_to(tmp_path / "a" / "root")
        os.utime(twin, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns))
    assert dataset_fingerprint(a) == dataset_fingerprint(b)
    rewritten = tmp_path / "b" / "root" / "c1" / "3.png"
    PIL.Image.new("L", (5, 4), 3).save(rewritten)  # Same name, other pixels.
    assert describe_change(dataset_fingerprint(a), dataset_fingerprint(b)) == (
        "train: the same files, but some were rewritten (size or modification time); test: "
        "the same files, but some were rewritten (size or modification time)"
    )
    fewer = _streamed(tmp_path / "c" / "root", 5)
    assert describe_change(dataset_fingerprint(a), dataset_fingerprint(fewer)) == (
        "train 6 -> 5 examples; test 6 -> 5 examples"
    )


@pytest.mark.slow
def test_resuming_on_a_changed_dataset_stops_unless_allowed(tmp_path, dataset):
    config = tiny_config(**{"training.num_train_steps": 2, "input.batch_size": 32})
    train_and_evaluate(config, str(tmp_path), dataset)
    fewer = dataclasses.replace(dataset, train=data.Split(dataset.train.images[:250],
                                                          dataset.train.labels[:250]))  # fmt: skip
    longer = apply_overrides(config, {"training.num_train_steps": 3})
    with pytest.raises(
        DatasetChangedError, match=r"train 256 -> 250 examples.*allow_dataset_change"
    ):
        train_and_evaluate(longer, str(tmp_path), fewer)
    allowed = apply_overrides(longer, {"training.allow_dataset_change": True})
    assert train_and_evaluate(allowed, str(tmp_path), fewer)["step"] == 3
    # The checkpoints now carry the new fingerprint: a plain relaunch on it resumes.
    again = apply_overrides(config, {"training.num_train_steps": 4})
    assert train_and_evaluate(again, str(tmp_path), fewer)["step"] == 4
