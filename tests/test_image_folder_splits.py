"""Image folders with split subfolders (ROOT/train|val|test/<class>/) or held-out fractions."""

from __future__ import annotations

import pathlib

import numpy as np
import PIL.Image
import pytest
from conftest import tiny_config

from imgcls_jax import data

CLASSES = ("circle", "cross", "square")
COLOURS = {"circle": (220, 40, 40), "cross": (40, 200, 40), "square": (40, 40, 220)}


def write_images(folder: pathlib.Path, name: str, count: int, seed: int) -> None:
    """`count` noisy 12x12 PNGs of class `name`'s colour in `folder`/`name`/."""
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = np.clip(np.array(COLOURS[name]) + rng.normal(0, 25, (12, 12, 3)), 0, 255)
        PIL.Image.fromarray(pixels.astype(np.uint8)).save(folder / name / f"{seed}_{i:03d}.png")


def split_layout(
    root: pathlib.Path, sizes=(("train", 10), ("val", 3), ("test", 4))
) -> pathlib.Path:
    """ROOT/<split>/<class>/ in class order, as torchvision's ImageFolder users keep them."""
    for split_index, (split, count) in enumerate(sizes):
        for class_index, name in enumerate(CLASSES):
            write_images(root / split, name, count, seed=10 * split_index + class_index)
    return root


def _dataset_config(root: pathlib.Path, **overrides):
    config = tiny_config(**{"dataset.name": "image_folder", "dataset.data_dir": str(root),
                            "dataset.image_size": 8, "dataset.train_size": 0, "dataset.mean": (0.5,) * 3,
                            "dataset.std": (0.5,) * 3, **overrides})  # fmt: skip
    return config.dataset


@pytest.mark.parametrize("streaming", [False, True])
def test_train_val_and_test_folders_are_read_as_their_splits(tmp_path, streaming):
    root = split_layout(tmp_path)
    dataset = data.load_dataset(
        _dataset_config(root, **{"dataset.validation_split": "val", "dataset.streaming": streaming})
    )
    assert dataset.class_names == CLASSES
    for split, count in ((dataset.train, 10), (dataset.validation, 3), (dataset.test, 4)):
        assert data.class_counts(split, 3) == [count] * 3
        images = np.asarray(split.images[np.arange(len(split))]).astype(float)
        for label, name in enumerate(CLASSES):  # Each label holds its own class's colour.
            mean = images[split.labels == label].mean(axis=(0, 1, 2))
            assert np.abs(mean - COLOURS[name]).max() < 20, (name, mean)


def test_streamed_split_folders_equal_the_in_memory_ones(tmp_path):
    root = split_layout(tmp_path)
    overrides = {"dataset.validation_split": "val"}
    in_memory = data.load_dataset(_dataset_config(root, **overrides))
    streamed = data.load_dataset(_dataset_config(root, **overrides, **{"dataset.streaming": True}))
    for a, b in zip((in_memory.train, in_memory.validation, in_memory.test),
                    (streamed.train, streamed.validation, streamed.test), strict=True):  # fmt: skip
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.images, np.asarray(b.images[np.arange(len(b))]))


def test_a_split_folder_may_lack_a_class_but_not_add_one(tmp_path):
    root = split_layout(tmp_path, (("train", 4), ("test", 2)))
    for image in (root / "test" / "cross").iterdir():
        image.unlink()
    (root / "test" / "cross").rmdir()
    dataset = data.load_dataset(_dataset_config(root, **{"dataset.validation_size": 2}))
    assert data.class_counts(dataset.test, 3) == [2, 0, 2]
    write_images(root / "test", "cross", 1, seed=99)
    (root / "test" / "cross").rename(root / "test" / "triangle")
    with pytest.raises(ValueError, match=r"\['triangle'\] under .* are not train classes"):
        data.load_dataset(_dataset_config(root, **{"dataset.validation_size": 2}))


@pytest.mark.parametrize(
    ("sizes", "overrides", "message"),
    [
        # A val/ folder that the config does not name is refused, never ignored.
        ((("train", 2), ("val", 1), ("test", 1)), {}, r"split folder\(s\) \['val'\] that the "
         r"config does not name: set dataset.validation_split"),
        ((("train", 2), ("val", 1)), {"dataset.validation_split": "val"},
         r"dataset.test_split='test', but .* has only the split folders \['train', 'val'\]"),
        ((("train", 2),), {"dataset.validation_split": "validation", "dataset.test_split": ""},
         r"validation_split='validation', but .* has only the split folders \['train'\]"),
    ],
)  # fmt: skip
def test_split_folders_and_the_config_must_agree(tmp_path, sizes, overrides, message):
    root = split_layout(tmp_path, sizes)
    with pytest.raises(ValueError, match=message):
        data.load_dataset(_dataset_config(root, **overrides))


def test_one_folder_of_classes_holds_out_validation_and_test(tmp_path):
    for index, name in enumerate(CLASSES):
        write_images(tmp_path, name, 10, seed=index)
    with pytest.raises(ValueError, match="set dataset.test_split='' .* dataset.test_size"):
        data.load_dataset(_dataset_config(tmp_path))  # The default test_split is "test".
    with pytest.raises(ValueError, match="validation_split='val' needs the layout"):
        data.load_dataset(_dataset_config(tmp_path, **{"dataset.test_split": "",
                                                         "dataset.validation_split": "val"}))  # fmt: skip
    dataset = data.load_dataset(
        _dataset_config(
            tmp_path,
            **{"dataset.test_split": "", "dataset.test_size": 0.2, "dataset.validation_size": 3},
        )  # fmt: skip
    )
    assert (len(dataset.train), len(dataset.validation), len(dataset.test)) == (21, 3, 6)
    pixels = [np.asarray(s.images).reshape(len(s), -1) for s in
              (dataset.train, dataset.validation, dataset.test)]  # fmt: skip
    all_rows = np.concatenate(pixels)
    assert len(np.unique(all_rows, axis=0)) == 30  # Disjoint: every image in exactly one split.


@pytest.mark.slow
def test_train_on_split_folders_then_predict_new_files_with_the_workdir(tmp_path):
    """The whole user path: class-ordered train/val/test folders -> launch-style training ->
    `predict` on the test files with the trained workdir, which must agree exactly with the
    run's own test evaluation of its best step."""
    import csv
    import subprocess
    import sys

    from conftest import REPO_ROOT

    from imgcls_jax.training.loop import train_and_evaluate

    root = split_layout(tmp_path / "images", (("train", 16), ("val", 4), ("test", 6)))
    config = tiny_config(**{
        "dataset.name": "image_folder", "dataset.data_dir": str(root), "dataset.image_size": 8,
        "dataset.validation_split": "val", "dataset.train_size": 0,
        "dataset.mean": (0.5,) * 3, "dataset.std": (0.5,) * 3, "input.batch_size": 16,
        "input.eval_batch_size": 8, "training.num_train_steps": 12,
        "training.eval_every_epochs": 1.0, "augment.grid_images": 0,
        "optimizer.learning_rate": 0.05, "augment.eval": "center_crop(6)",
        "training.ema_decay": 0.8,
    })  # fmt: skip
    workdir = tmp_path / "run"
    results = train_and_evaluate(config, str(workdir))
    assert results["test/num_examples"] == 18 and results["val/num_examples"] == 12
    assert results["best_step"] < 12  # So that "best" is not simply the final state.

    (root / "test" / "square" / "broken.png").write_bytes(b"not a png")
    run = subprocess.run(
        [sys.executable, "-m", "imgcls_jax.inference.predict", f"--checkpoint={workdir}", "--top=3",
         "--batch_size=5", f"--output={tmp_path / 'predictions.csv'}", str(root / "test")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 1, run.stderr[-3000:]
    assert f"Cannot read image {root / 'test' / 'square' / 'broken.png'}" in run.stderr
    with open(tmp_path / "predictions.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    first = [r for r in rows if r["rank"] == "1"]
    assert len(first) == 18 and len([r for r in rows if r["error"]]) == 1
    truth = [CLASSES.index(pathlib.Path(r["path"]).parent.name) for r in first]
    correct = sum(int(r["class_index"]) == t for r, t in zip(first, truth, strict=True))
    # The run kept a weight average: predict uses it, as the run's best_test_ema evaluated it.
    assert correct / 18 == pytest.approx(results["best_test_ema/accuracy"], abs=1e-6)
    assert all(r["class_name"] == CLASSES[int(r["class_index"])] for r in rows if r["rank"])
    # Same weights, preprocessing and normalisation as the run's evaluation: same loss.
    true_class = {(r["path"], int(r["class_index"])): float(r["probability"]) for r in rows
                  if r["rank"]}  # fmt: skip
    losses = [-np.log(true_class[(r["path"], t)]) for r, t in zip(first, truth, strict=True)]
    assert np.mean(losses) == pytest.approx(results["best_test_ema/loss"], rel=1e-4)
    # The trained weights, in process: the run's best_test numbers.
    from imgcls_jax.inference.classifier import Classifier

    trained = Classifier.from_workdir(str(workdir), "best", weights="trained")
    paths = [r["path"] for r in first]
    predictions = trained.classify(paths, top=3, batch_size=8)
    p_true = [p.probabilities[p.indices.index(t)] for p, t in zip(predictions, truth, strict=True)]
    assert np.mean(-np.log(p_true)) == pytest.approx(results["best_test/loss"], rel=1e-4)
    assert results["best_test/loss"] != pytest.approx(results["best_test_ema/loss"], rel=1e-3)
