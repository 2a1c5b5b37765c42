"""Benchmark: which XLA:CPU options, compute dtype and kernels train our step fastest here?

Each variant (XLA flags x model dtype x `model.kernels` x host malloc settings) runs in its
own process (XLA reads its flags once) and times our jitted step of a configs/resnet.py preset
(default: ResNet-20 of the Fashion-MNIST preset, batch 128), without augmentation, on one
resident batch. The variants are run in interleaved rounds; the median counts. The first
step's loss of each variant is printed next to the first variant's, so a fast path that computes
something else shows up.

    python -m experiments.benchmarks.cpu_options --rounds=3 --steps=10
    python -m experiments.benchmarks.cpu_options --preset=fashion_mnist_speed \
        --variants="our oneDNN kernels (f32; the default),our oneDNN kernels (bf16)"

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys

from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
common.define_rounds(3)
flags.DEFINE_integer("steps", 10, "Timed steps per variant per round.")
flags.DEFINE_string("preset", "fashion_mnist", "configs/resnet.py preset whose step is timed.")
flags.DEFINE_string("model", "", "Another model in the preset (default: the preset's).")
flags.DEFINE_integer("batch_size", 0, "Batch size (default: the preset's).")
flags.DEFINE_list("variants", [], "Names of VARIANTS to run, comma-separated (default: all).")
flags.DEFINE_string("measure", "", "Internal: time one variant in this process.")
common.define_out("experiments/results/benchmarks/cpu_options.json")

# name -> (XLA flags, model dtype, model.kernels, host memory reused). "onednn_conv" (this
# script only) takes oneDNN's convolutions but XLA's batch norm, to show what each kernel
# adds. Host memory reused is what launch.py does by default (imgcls_jax/runtime/host_memory.py).
VARIANTS = {
    "baseline f32": ("", "float32", "xla", True),
    "bf16": ("", "bfloat16", "xla", True),
    "XLA's oneDNN custom calls (f32)": (
        "--xla_cpu_experimental_onednn_custom_call=true", "float32", "xla", True),
    "XLA's oneDNN custom calls (bf16)": (
        "--xla_cpu_experimental_onednn_custom_call=true", "bfloat16", "xla", True),
    "YNNPACK convolutions (f32)": (
        "--xla_cpu_experimental_ynn_fusion_type=individual_convolution", "float32", "xla", True),
    "XNNPACK dot/eltwise/reduce (f32)": (
        "--xla_cpu_experimental_xnn_fusion_type=dot,eltwise,reduce", "float32", "xla", True),
    "our oneDNN convolutions (f32)": ("", "float32", "onednn_conv", True),
    "our oneDNN kernels (f32; glibc's default malloc)": ("", "float32", "onednn", False),
    "our oneDNN kernels (f32; the default)": ("", "float32", "onednn", True),
    "our oneDNN kernels (bf16; glibc's default malloc)": ("", "bfloat16", "onednn", False),
    "our oneDNN kernels (bf16)": ("", "bfloat16", "onednn", True),
}  # fmt: skip


def measure(dtype: str, kernels: str, reuse_host_memory: bool) -> dict:
    """Times our step in this process; returns seconds per step and the first step's loss."""
    from imgcls_jax.runtime import host_memory

    if reuse_host_memory:
        host_memory.reuse_freed_memory()  # Before JAX starts its threads, as launch.py does.
    from configs.resnet import get_config
    from experiments.benchmarks.step_timing import OurStep
    from imgcls_jax.config import apply_overrides

    if kernels == "onednn_conv":  # oneDNN's convolutions with XLA's batch norm.
        from imgcls_jax import kernels as kernels_lib
        from imgcls_jax import registry

        def conv_only(devices, dtype):
            native = kernels_lib.onednn_kernels(devices, dtype)
            return dataclasses.replace(native, name=kernels, batch_norm_train=None)

        registry.register("kernels", kernels, conv_only)
    config = apply_overrides(get_config(FLAGS.preset), {
        "model.dtype": dtype, "model.kernels": kernels, "augment.train": "",
        "input.device_resident": "off", **preset_changes(),
    })  # fmt: skip
    step = OurStep(config, 28, 1, 10)
    step.state, first = step.trainer.train_step(step.state, step.batch, step.trainer.train_key)
    loss = float(first.compute()["loss"])
    step.run(2)
    return {"seconds_per_step": step.run(FLAGS.steps), "first_loss": loss}


def preset_changes() -> dict:
    """The model and batch size flags as config overrides (where set)."""
    changes = {"model.name": FLAGS.model, "input.batch_size": FLAGS.batch_size}
    return {key: value for key, value in changes.items() if value}


def run_variant(name: str) -> dict:
    xla_flags = VARIANTS[name][0]
    env = {**os.environ, "XLA_FLAGS": xla_flags}
    command = [sys.executable, "-m", "experiments.benchmarks.cpu_options", f"--measure={name}", f"--steps={FLAGS.steps}",
               f"--preset={FLAGS.preset}", f"--model={FLAGS.model}",
               f"--batch_size={FLAGS.batch_size}"]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO_ROOT)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1][:200]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv):
    del argv
    if FLAGS.measure:
        print(json.dumps(measure(*VARIANTS[FLAGS.measure][1:])))
        return
    from configs.resnet import get_config
    from imgcls_jax import registry
    from imgcls_jax.reporting import markdown

    names = FLAGS.variants or list(VARIANTS)
    for name in names:
        if name not in VARIANTS:
            raise app.UsageError(
                f"--variants: {name!r} is not known.{registry.closest(name, VARIANTS)}"
            )
    preset = get_config(FLAGS.preset)
    model, images = FLAGS.model or preset.model.name, FLAGS.batch_size or preset.input.batch_size
    rounds = [{name: run_variant(name) for name in names} for _ in range(FLAGS.rounds)]
    rows, results = [], {}
    for name in names:
        runs = [r[name] for r in rounds]
        errors = [r["error"] for r in runs if "error" in r]
        if errors:
            results[name] = {"error": errors[0]}
            rows.append([name, VARIANTS[name][0] or "-", "failed: " + errors[0], "", ""])
            continue
        seconds = statistics.median(r["seconds_per_step"] for r in runs)
        results[name] = {"img_per_s": images / seconds, "first_loss": runs[0]["first_loss"]}
        rows.append([name, VARIANTS[name][0] or "-", f"{images / seconds:.0f}",
                     f"{runs[0]['first_loss']:.5f}", ""])  # fmt: skip
    base = results.get(names[0], {}).get("img_per_s")
    for row, name in zip(rows, names):
        if base and "img_per_s" in results[name]:
            row[4] = f"{results[name]['img_per_s'] / base:.2f}x"
    print(markdown.table(["variant", "XLA flags", "img/s", "first loss", f"vs {names[0]}"], rows))
    common.write_result(
        FLAGS.out,
        {"preset": FLAGS.preset, "model": model, "batch_size": images, "results": results},
    )


if __name__ == "__main__":
    app.run(main)
