"""Compile what a run compiles (the state's initialisation, the train step, the eval step) for
its devices, real or compile-only (`jax.experimental.topologies`: a TPU pod without the
hardware), and measure each program: per-chip memory, FLOPs, collectives, a roofline estimate.
The programs come from a Trainer (`imgcls_jax.training.fit_check` builds one for a topology).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import ml_collections

from imgcls_jax.runtime import sharding
from imgcls_jax.runtime.aot import chips, collectives


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
    if trainer.cadence.steps_per_dispatch > 1:
        metrics = _abstract(jax.eval_shape(trainer.empty_train_metrics), replicated)
        batches = (batch,) * trainer.cadence.steps_per_dispatch
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
        "train_flops_per_image": flops_per_image(programs[1], trainer),
    }


def flops_per_image(train: Program, trainer: Any) -> float:
    """The train step's FLOPs (XLA's count for one device and one call) per image."""
    return (train.flops / trainer.cadence.steps_per_dispatch * trainer.mesh.size
            / trainer.config.input.batch_size)  # fmt: skip


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
