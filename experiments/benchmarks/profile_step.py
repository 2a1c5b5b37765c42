"""Profile: where a config's bare train step spends its time on this machine, by operation.

Traces `--steps` steps of the jitted train_step on one synthetic device-resident batch with
`jax.profiler`, then sums the durations the trace records on XLA's compute threads: native
kernels (FFI custom calls, named by their target, e.g. oneDNN's convolution forward) and
XLA's own fusions, per step. The largest single calls are listed with their output shapes.
Reading the trace needs TensorFlow's profiler protos (installed with the tfds extra).

    python -m experiments.benchmarks.profile_step --config=configs/resnet.py:fashion_mnist_speed

Prints tables and writes JSON to --out.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Config file[:preset].")
common.define_synthetic_images(28, 1, 10)
flags.DEFINE_integer("steps", 20, "Traced steps (after 10 untraced ones).")
flags.DEFINE_integer("top", 12, "Largest single operations to list.")
common.define_out("experiments/results/benchmarks/profile_step.json")
flags.DEFINE_bool(
    "reuse_host_memory",
    True,
    "Keep freed host memory for reuse, as launch.py does by default (imgcls_jax/runtime/host_memory.py).",
)


def custom_calls(hlo_text: str) -> dict[str, tuple[str, str]]:
    """Instruction name -> (custom-call target, output shape) of a compiled program's text."""
    found = {}
    for line in hlo_text.splitlines():
        match = re.search(r"(\S+) = (.+?) custom-call\(.*custom_call_target=\"(\w+)\"", line)
        if match:
            found[match.group(1).lstrip("%")] = (match.group(3), match.group(2).split("{")[0])
    return found


def trace_durations(trace_dir: str) -> collections.Counter:
    """Picoseconds per event name on XLA's compute threads, excluding the executor's own."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    [path] = glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.xplane.pb"))
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    totals = collections.Counter()
    for plane in space.planes:
        names = {key: meta.name for key, meta in plane.event_metadata.items()}
        for line in plane.lines:
            if "XLAEigen" not in line.name:  # XLA:CPU's compute threads.
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "?")
                if not name.startswith(("ThunkExecutor", "end: ")):
                    totals[name] += event.duration_ps
    return totals


def category(name: str, calls: dict) -> str:
    if name in calls:
        return calls[name][0]
    base = re.sub(r"\.\d+$", "", name)
    return f"XLA {base}"


def main(argv):
    del argv
    from imgcls_jax.runtime import host_memory

    if FLAGS.reuse_host_memory:
        host_memory.reuse_freed_memory()  # Before JAX starts its threads, as launch.py does.
    import jax

    from experiments.benchmarks.step_timing import OurStep
    from imgcls_jax.reporting import markdown

    step = OurStep(FLAGS.config, FLAGS.image_size, FLAGS.channels, FLAGS.num_classes)
    trainer = step.trainer
    compiled = trainer.train_step.lower(step.state, step.batch, trainer.train_key).compile()
    calls = custom_calls(compiled.as_text())
    step.run(10)
    with tempfile.TemporaryDirectory() as trace_dir:
        start = time.perf_counter()
        jax.profiler.start_trace(trace_dir)
        step.run(FLAGS.steps)
        jax.profiler.stop_trace()
        wall_ms = (time.perf_counter() - start) * 1e3 / FLAGS.steps
        totals = trace_durations(trace_dir)
    per_step = {name: ps / 1e9 / FLAGS.steps for name, ps in totals.items()}
    by_category = collections.Counter()
    for name, ms in per_step.items():
        by_category[category(name, calls)] += ms
    busy = sum(per_step.values())
    print(f"{FLAGS.config.model.name} (dtype {trainer.dtype}, kernels {trainer.kernels.name}), "
          f"batch {step.batch_size} at {FLAGS.image_size} px: {wall_ms:.1f} ms per traced step "
          f"(tracing included), {busy:.1f} ms of operations on XLA's threads.\n")  # fmt: skip
    print(markdown.table(
        ["operation", "ms per step", "share"],
        [[name, f"{ms:.2f}", f"{100 * ms / busy:.1f}%"] for name, ms in by_category.most_common()
         if ms >= 0.05],
    ))  # fmt: skip
    largest = sorted(per_step.items(), key=lambda item: -item[1])[: FLAGS.top]
    print()
    print(markdown.table(
        ["instruction", "operation", "output", "ms per step"],
        [[name, category(name, calls), calls.get(name, ("", ""))[1], f"{ms:.2f}"]
         for name, ms in largest],
    ))  # fmt: skip
    common.write_result(
        FLAGS.out,
        {
            "model": FLAGS.config.model.name,
            "dtype": str(trainer.dtype),
            "kernels": trainer.kernels.name,
            "batch_size": step.batch_size,
            "reuse_host_memory": FLAGS.reuse_host_memory,
            "traced_ms_per_step": round(wall_ms, 2),
            "busy_ms_per_step": round(busy, 2),
            "ms_per_step": {k: round(v, 3) for k, v in by_category.most_common()},
            "largest": [
                {
                    "instruction": n,
                    "operation": category(n, calls),
                    "output": calls.get(n, ("", ""))[1],
                    "ms_per_step": round(ms, 3),
                }
                for n, ms in largest
            ],
        },
    )


if __name__ == "__main__":
    app.run(main)
