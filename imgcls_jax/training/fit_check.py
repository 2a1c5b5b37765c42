"""Does this config fit that TPU pod, and what would a step cost there? Compiled here, no TPU:

    python -m imgcls_jax.training.fit_check --config=configs/resnet.py:imagenet --topology=v5e:16x16
    python -m imgcls_jax.training.fit_check --config=configs/vit.py:imagenet --topology=v5e:16x16 \\
        --num_slices=2

The run's own Trainer is built on compile-only devices over a dataset of the right shapes that
holds no images, and its programs compiled (`imgcls_jax.runtime.aot.programs`). Prints a table and
writes report.json and report.md to --out. Exits 1 with one line when a program does not fit a
chip's memory, saying what would. Needs libtpu: `pip install -e ".[tpu]"`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any

import ml_collections
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from imgcls_jax.config import apply_overrides
from imgcls_jax.data import Dataset, Split
from imgcls_jax.runtime.aot import chips, report
from imgcls_jax.runtime.aot.programs import (
    compile_programs,
    estimate,
    flops_per_image,
    topology_devices,
)
from imgcls_jax.training import config_check
from imgcls_jax.training.builder import Trainer

FLAGS = flags.FLAGS


@dataclasses.dataclass(frozen=True)
class DatasetShape:
    """What the programs need to know of a dataset: sizes, classes, stored image shape."""

    train_examples: int
    num_classes: int
    image_size: int
    channels: int


# TFDS names of the presets' datasets (TFDS's catalogue; ImageNet's train split as stored).
KNOWN_DATASETS = {
    "imagenet2012": DatasetShape(1_281_167, 1000, 224, 3),
    "fashion_mnist": DatasetShape(60_000, 10, 28, 1),
    "mnist": DatasetShape(60_000, 10, 28, 1),
    "cifar10": DatasetShape(50_000, 10, 32, 3),
    "cifar100": DatasetShape(50_000, 100, 32, 3),
}


def dataset_shape(
    dataset_config: ml_collections.ConfigDict, num_classes: int = 0, train_examples: int = 0
) -> DatasetShape:
    """The shape of the config's dataset: a known TFDS name, or the given counts (needed for
    image folders and other datasets); image size and channels as the config stores them."""
    known = KNOWN_DATASETS.get(dataset_config.name)
    if known is None and not (num_classes and train_examples and dataset_config.image_size):
        raise ValueError(
            f"config.dataset.name={dataset_config.name!r} is not one of "
            f"{', '.join(KNOWN_DATASETS)}: give --num_classes, --train_examples and "
            "--config.dataset.image_size (and --config.dataset.channels)."
        )
    known = known or DatasetShape(train_examples, num_classes, 0, 3)
    train = train_examples or known.train_examples
    held_out = dataset_config.validation_size if not dataset_config.validation_split else 0
    held_out = int(round(held_out * train)) if held_out < 1 else int(held_out)
    train = dataset_config.train_size or train - held_out - int(dataset_config.test_size)
    return DatasetShape(
        train_examples=train,
        num_classes=num_classes or known.num_classes,
        image_size=dataset_config.image_size or known.image_size,
        channels=dataset_config.channels or known.channels,
    )


def shape_only_dataset(shape: DatasetShape) -> Dataset:
    """A dataset whose splits have the real shapes and hold no image memory (one zero image
    broadcast), for building a Trainer that only compiles."""
    image = np.zeros((1, shape.image_size, shape.image_size, shape.channels), np.uint8)

    def split(count: int) -> Split:
        images = np.broadcast_to(image, (count, *image.shape[1:]))
        return Split(images, np.arange(count, dtype=np.int32) % shape.num_classes)

    names = tuple(f"class{i}" for i in range(shape.num_classes))
    return Dataset(split(shape.train_examples), split(1), None, names)


def build_trainer(config: ml_collections.ConfigDict, shape: DatasetShape, devices: list) -> Trainer:
    """The run's Trainer on `devices`, over a shape-only dataset; the train split stays on the
    host (compile-only devices have no memory to place it in). Pretrained weights are not
    read: they are values of the state, which the programs take as arguments either way."""
    config = apply_overrides(config, {"input.device_resident": "off", "transfer.checkpoint": ""})
    return Trainer(config, shape_only_dataset(shape), devices=devices)


def check(
    config: ml_collections.ConfigDict,
    topology: str,
    num_slices: int = 1,
    num_classes: int = 0,
    train_examples: int = 0,
) -> dict[str, Any]:
    """Compiles the run's programs for `topology` and returns the report (`aot.report`).
    Raises DoesNotFit, with what would make it fit, when XLA cannot fit a program into a
    chip's memory, and a ValueError saying what to fix for a bad config."""
    config_check.validate(config)
    teacher = config.distill.teacher
    if teacher:  # Its variables are data, which compile-only devices cannot hold.
        logging.warning("The fit check leaves out the distillation teacher %s (its variables "
                        "and forward pass); the student's programs are checked.", teacher)  # fmt: skip
        config = apply_overrides(config, {"distill.teacher": ""})
    devices = topology_devices(topology, num_slices)
    chip = chips.chip_for(devices[0].device_kind)
    shape = dataset_shape(config.dataset, num_classes, train_examples)
    trainer = build_trainer(config, shape, devices)
    programs = compile_programs(trainer)
    train = programs[1]
    steps = trainer.cadence.steps_per_dispatch
    batch = config.input.batch_size
    timing = estimate(train, chip, steps, num_slices > 1)
    images_per_s = batch / timing["step_s"] if timing["step_s"] else 0.0
    report = {
        "topology": topology,
        "num_slices": num_slices,
        "chip": dataclasses.asdict(chip),
        "devices": len(devices),
        "hosts": len({d.process_index for d in devices}),
        "mesh": dict(trainer.mesh.shape),
        "model": config.model.name,
        "dtype": trainer.dtype,
        "image": list(trainer.image_shape),
        "global_batch": batch,
        "per_device_batch": batch // len(devices),
        "grad_accum_steps": config.training.grad_accum_steps,
        "steps_per_dispatch": steps,
        "train_examples": shape.train_examples,
        "programs": [dataclasses.asdict(p) | {"peak_bytes": p.peak_bytes} for p in programs],
        "train_flops_per_image": flops_per_image(train, trainer),
        "estimate": timing | {"images_per_s": images_per_s,
                              "epoch_s": shape.train_examples / images_per_s if images_per_s else 0},
    }  # fmt: skip
    if teacher:
        report["left_out"] = f"the distillation teacher {teacher} (variables and forward pass)"
    return report


def define_flags() -> None:
    """The command's flags; defined when it runs, so that importing this module defines none
    (other commands and scripts define --config and --out too)."""
    config_flags.DEFINE_config_file("config", None, "Config file, optionally with :PRESET.",
                                    lock_config=True)  # fmt: skip
    flags.DEFINE_string("topology", None, "TPU topology GENERATION:SHAPE, e.g. v5e:16x16.")
    flags.DEFINE_integer("num_slices", 1, "Slices of the topology joined over the data-centre "
                         "network.")  # fmt: skip
    flags.DEFINE_integer("num_classes", 0, "Classes, for a dataset not in KNOWN_DATASETS.")
    flags.DEFINE_integer("train_examples", 0, "Train examples, likewise (sets the epoch's length).")
    flags.DEFINE_string("out", "", "Folder for report.json and report.md ('' writes nothing).")
    flags.mark_flags_as_required(["config", "topology"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        result = check(FLAGS.config, FLAGS.topology, FLAGS.num_slices, FLAGS.num_classes,
                             FLAGS.train_examples)  # fmt: skip
    except ValueError as error:
        sys.exit(f"imgcls_jax.training.fit_check: {error}")
    text = report.render(result)
    print(text)
    if FLAGS.out:
        os.makedirs(FLAGS.out, exist_ok=True)
        with open(os.path.join(FLAGS.out, "report.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(FLAGS.out, "report.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")


def run() -> None:
    """`python -m imgcls_jax.training.fit_check` and the `imgcls-fit-check` command."""
    from imgcls_jax.config import flags_parser, show_flags_in_help

    define_flags()
    show_flags_in_help(__name__)
    app.run(main, flags_parser=flags_parser("imgcls_jax.training.fit_check"))


if __name__ == "__main__":
    run()
