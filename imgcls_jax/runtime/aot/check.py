"""Compile what a run compiles (the state's initialisation, the train step, the eval step) for a
TPU topology without the hardware, and report whether it fits and what it costs per step.

The programs come from the same `Trainer` a run builds, on compile-only devices
(`jax.experimental.topologies`), with a dataset of the right shapes that holds no images.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from imgcls_jax.config import apply_overrides
from imgcls_jax.data import Dataset, Split
from imgcls_jax.runtime import sharding
from imgcls_jax.runtime.aot import chips, collectives


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


def topology_devices(topology: str, num_slices: int = 1) -> list:
    """Compile-only TPU devices of `topology` (e.g. "v5e:16x16"), `num_slices` slices of it.
    Needs libtpu (`pip install -e ".[tpu]"`); no TPU."""
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # Other JAX processes may run.
    # Not a TPU VM: no metadata server to ask, no workers to find (quiets libtpu's errors).
    os.environ.setdefault("TPU_SKIP_MDS_QUERY", "1")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    from jax.experimental import topologies

    try:
        description = topologies.get_topology_desc(
            platform="tpu", topology_name=topology, num_slices=num_slices
        )
    except jax.errors.JaxRuntimeError as error:
        raise ValueError(
            f"--topology={topology!r} was not accepted by libtpu ({str(error).splitlines()[0]}); "
            "write GENERATION:SHAPE, e.g. v5e:16x16, v5p:4x4x8, v6e:8x8, v4:4x4x4."
        ) from error
    except RuntimeError as error:  # No libtpu.
        raise ValueError(f"--topology={topology}: {error}") from error
    return list(description.devices)


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program's per-chip memory, cost and collectives."""

    name: str
    argument_bytes: int
    output_bytes: int
    alias_bytes: int
    temp_bytes: int
    code_bytes: int
    flops: float
    hbm_bytes: float
    collectives: dict[str, dict[str, float]]

    @property
    def peak_bytes(self) -> int:
        """What the program holds on a chip at its peak: arguments, outputs not aliased to
        (donated) arguments, temporaries and code."""
        return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
                + self.code_bytes)  # fmt: skip

    @property
    def sent_bytes(self) -> float:
        return sum(row["sent_bytes"] for row in self.collectives.values())


def _program(name: str, compiled: Any, devices: int) -> Program:
    memory = compiled.memory_analysis()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return Program(
        name=name,
        argument_bytes=memory.argument_size_in_bytes,
        output_bytes=memory.output_size_in_bytes,
        alias_bytes=memory.alias_size_in_bytes,
        temp_bytes=memory.temp_size_in_bytes,
        code_bytes=memory.generated_code_size_in_bytes,
        flops=float(cost.get("flops", 0.0)),
        hbm_bytes=float(cost.get("bytes accessed", 0.0)),
        collectives=collectives.summary(collectives.collectives(compiled.as_text(), devices)),
    )


class DoesNotFit(ValueError):
    """A program needs more memory per chip than the chip has."""


def _compile(name: str, lowered: Any, config: ml_collections.ConfigDict, devices: int) -> Program:
    """Compiles one program; XLA's out-of-memory refusal becomes DoesNotFit with the fix."""
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as error:
        if "RESOURCE_EXHAUSTED" not in str(error):
            raise
        why = str(error).splitlines()[0].split("CompileTimeHbmOom: ")[-1].rstrip(".")
        raise DoesNotFit(f"{name} does not fit: {why}. {fit_advice(config, devices)}") from None
    return _program(name, compiled, devices)


def fit_advice(config: ml_collections.ConfigDict, devices: int) -> str:
    """What would make a run fit: a smaller per-chip batch, micro-batches, sharding."""
    return (
        f"Lower the per-chip batch ({config.input.batch_size // devices}; "
        f"config.input.batch_size={config.input.batch_size} over {devices} chips), split it "
        f"with config.training.grad_accum_steps (now {config.training.grad_accum_steps}), or "
        "shard parameters and optimizer state (config.mesh.fsdp)."
    )


def _abstract(tree: Any, placement: jax.sharding.Sharding) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement), tree)


def compile_programs(trainer: Any) -> tuple[Program, Program, Program]:
    """Compiles the trainer's state initialisation, train step (as many steps per call as the
    run dispatches) and eval step for its devices; returns them in that order."""
    mesh, config = trainer.mesh, trainer.config
    replicated = sharding.replicated(mesh)
    devices = mesh.size
    key = jax.ShapeDtypeStruct(trainer.init_key.shape, trainer.init_key.dtype, sharding=replicated)
    init = _compile("init_state", trainer.init_state.lower(key), config, devices)
    state = trainer.abstract_state()
    batch = trainer.abstract_batch(config.input.batch_size, mask=False)
    if trainer.steps_per_dispatch > 1:
        metrics = _abstract(jax.eval_shape(trainer.empty_train_metrics), replicated)
        batches = (batch,) * trainer.steps_per_dispatch
        lowered = trainer.train_steps.lower(state, metrics, batches, key)
    else:
        lowered = trainer.train_step.lower(state, batch, key)
    train = _compile("train_step", lowered, config, devices)
    eval_batch = trainer.abstract_batch(config.input.eval_batch_size, mask=True)
    metrics = _abstract(jax.eval_shape(trainer.empty_eval_metrics), replicated)
    evaluate = _compile("eval_step", trainer.eval_step.lower(state, eval_batch, metrics), config,
                        devices)  # fmt: skip
    return init, train, evaluate


def check_devices(trainer: Any, memory_bytes: int | None = None) -> dict[str, Any]:
    """The fit check on the trainer's own devices (a real pod, before training): compiles its
    programs and compares each one's peak with a device's memory (`memory_bytes`, else the
    device's reported limit, else its chip's HBM; unknown on CPUs). Raises DoesNotFit."""
    device = trainer.mesh.devices.flat[0]
    if memory_bytes is None:
        memory_bytes = (device.memory_stats() or {}).get("bytes_limit")
    if memory_bytes is None and device.platform == "tpu":
        memory_bytes = chips.chip_for(device.device_kind).hbm_bytes
    programs = compile_programs(trainer)
    for program in programs:
        if memory_bytes and program.peak_bytes > memory_bytes:
            raise DoesNotFit(
                f"{program.name} does not fit: it needs {program.peak_bytes / chips.GIB:.2f} GiB "
                f"per device, a {device.device_kind} has {memory_bytes / chips.GIB:.2f} GiB. "
                f"{fit_advice(trainer.config, trainer.mesh.size)}"
            )
    return {
        "device_kind": device.device_kind,
        "devices": trainer.mesh.size,
        "memory_bytes": memory_bytes,
        "programs": [dataclasses.asdict(p) | {"peak_bytes": p.peak_bytes} for p in programs],
        "train_flops_per_image": _flops_per_image(programs[1], trainer),
    }


def _flops_per_image(train: Program, trainer: Any) -> float:
    """The train step's FLOPs (XLA's count for one device and one call) per image."""
    return (train.flops / trainer.steps_per_dispatch * trainer.mesh.size
            / trainer.config.input.batch_size)  # fmt: skip


def build_trainer(config: ml_collections.ConfigDict, shape: DatasetShape, devices: list) -> Any:
    """The run's Trainer on `devices`, over a shape-only dataset; the train split stays on the
    host (compile-only devices have no memory to place it in). Pretrained weights are not
    read: they are values of the state, which the programs take as arguments either way."""
    from imgcls_jax.training.builder import Trainer

    config = apply_overrides(config, {"input.device_resident": "off", "transfer.checkpoint": ""})
    return Trainer(config, shape_only_dataset(shape), devices=devices)


def estimate(train: Program, chip: chips.Chip, steps: int, multislice: bool) -> dict[str, float]:
    """A roofline estimate of one train step on one chip: the larger of compute at peak, HBM
    traffic at its bandwidth and collectives at the interconnect's (overlapped perfectly)."""
    per_step = 1 / steps
    link = chip.dcn_bytes_per_s if multislice and chip.dcn_bytes_per_s else chip.ici_bytes_per_s / 2
    terms = {
        "compute_s": train.flops * per_step / chip.peak_bf16_flops,
        "hbm_s": train.hbm_bytes * per_step / chip.hbm_bytes_per_s,
        "collectives_s": train.sent_bytes * per_step / link,
    }
    return {**terms, "step_s": max(terms.values())}


def check(
    config: ml_collections.ConfigDict,
    topology: str,
    num_slices: int = 1,
    num_classes: int = 0,
    train_examples: int = 0,
) -> dict[str, Any]:
    """Compiles the run's programs for `topology` and returns the report (`aot.report`).
    Raises DoesNotFit, with what would make it fit, when XLA cannot fit a program into a
    chip's memory."""
    devices = topology_devices(topology, num_slices)
    chip = chips.chip_for(devices[0].device_kind)
    shape = dataset_shape(config.dataset, num_classes, train_examples)
    trainer = build_trainer(config, shape, devices)
    programs = compile_programs(trainer)
    train = programs[1]
    steps = trainer.steps_per_dispatch
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
        "train_flops_per_image": _flops_per_image(train, trainer),
        "estimate": timing | {"images_per_s": images_per_s,
                              "epoch_s": shape.train_examples / images_per_s if images_per_s else 0},
    }  # fmt: skip
    return report
