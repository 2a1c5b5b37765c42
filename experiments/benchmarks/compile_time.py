"""Benchmark: how long the train step of each preset takes to compile, and how large it is.

Question: does compiling stay a small part of a run, and does the compiled step grow in
proportion to the model (not faster)? For each case, the preset's train step is traced,
lowered and compiled on a synthetic batch of the preset's batch size; the table gives the
seconds of each phase, the number of arrays in the train state and the lines of the
optimised HLO module, and the seconds spent compiling the two programs every run compiles
besides the steps: the state's initialisation and the checkpoint checksums.

    python -m experiments.benchmarks.compile_time
    python -m experiments.benchmarks.compile_time --cases=resnet:fashion_mnist@28x1,vit:fashion_mnist@28x1

A case is CONFIG:PRESET@SIZExCHANNELS, CONFIG a file in configs/. Prints a table and writes
JSON to --out.
"""

from __future__ import annotations

import importlib
import json
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "cases",
    ["resnet:fashion_mnist@28x1", "resnet:fashion_mnist_speed@28x1", "vit:fashion_mnist@28x1",
     "resnet:imagenet@224x3"],
    "CONFIG:PRESET@SIZExCHANNELS, e.g. resnet:imagenet@224x3 (configs/resnet.py:imagenet).",
)  # fmt: skip
flags.DEFINE_integer("batch_size", 0, "Batch size for every case; 0: each preset's own.")
common.define_out("experiments/results/benchmarks/compile_time.json")


def parse_case(case: str) -> tuple[str, str, int, int]:
    """ "resnet:imagenet@224x3" -> ("resnet", "imagenet", 224, 3); raises a usage error."""
    try:
        name, shape = case.split("@")
        module, preset = name.split(":")
        size, channels = (int(v) for v in shape.split("x"))
    except ValueError as error:
        raise app.UsageError(
            f"--cases: {case!r} is not CONFIG:PRESET@SIZExCHANNELS (e.g. resnet:imagenet@224x3)."
        ) from error
    return module, preset, size, channels


def measure(module: str, preset: str, size: int, channels: int) -> dict:
    """Seconds to trace+lower and to compile the preset's train step, and its size; seconds to
    compile (trace, lower and compile) the state's initialisation and its checkpoint checksums."""
    import jax

    from experiments.benchmarks.step_timing import OurStep
    from imgcls_jax.checkpoint import integrity
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.reporting import timing
    from imgcls_jax.runtime import precision

    config = importlib.import_module(f"configs.{module}").get_config(preset)
    if FLAGS.batch_size:
        config = apply_overrides(config, {"input.batch_size": FLAGS.batch_size})
    timer = timing.RunTimer()
    step = OurStep(config, size, channels, 10)  # Initialises the state.
    integrity.state_checksums(step.state)
    timer.stop()
    once = timer.summary()["compiled"]
    start = time.perf_counter()
    lowered = step.trainer.train_step.lower(step.state, step.batch, step.trainer.train_key)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    compiled_at = time.perf_counter()
    return {
        "case": f"{module}:{preset}", "model": config.model.name,
        "dtype": precision.resolve(config.model.dtype, jax.devices()),
        "batch_size": config.input.batch_size, "image": f"{size}x{size}x{channels}",
        "state_arrays": len(jax.tree.leaves(step.state)),
        "hlo_lines": len(compiled.as_text().splitlines()),
        "lower_s": round(lowered_at - start, 2), "compile_s": round(compiled_at - lowered_at, 2),
        "init_compile_s": once.get("init_state", {}).get("compile_s", 0.0),
        "checksums_compile_s": once.get("_array_checksums", {}).get("compile_s", 0.0),
    }  # fmt: skip


def main(argv):
    del argv
    import jax

    from imgcls_jax.reporting import markdown

    cases = [parse_case(case) for case in FLAGS.cases]  # Every case checked before compiling.
    rows = []
    for case in cases:
        rows.append(measure(*case))
        print(json.dumps(rows[-1]), flush=True)
    print(markdown.table(
        ["preset", "model", "dtype", "batch", "image", "state arrays", "HLO lines",
         "trace + lower s", "compile s", "init compile s", "checksums compile s"],
        [[r["case"], r["model"], r["dtype"], r["batch_size"], r["image"], r["state_arrays"],
          f"{r['hlo_lines']:,}", r["lower_s"], r["compile_s"], r["init_compile_s"],
          r["checksums_compile_s"]] for r in rows],
    ))  # fmt: skip
    common.write_result(
        FLAGS.out,
        {
            "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
            "rows": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
