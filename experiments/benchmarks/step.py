"""Benchmark: training throughput of the bare jitted step vs the full training loop.

Question: does the loop (host batching, device transfer, augmentation, metrics, logging)
keep up with the step? Target: loop >= 95% of the bare step's images/s. The loop runs once
per `--steps_per_dispatch` value (train steps per call from the host), side by side.

    python -m experiments.benchmarks.step                       # ResNet-20 on 28x28x1, batch 128
    python -m experiments.benchmarks.step --config=configs/resnet.py:cifar10 --image_size=32 --steps=30

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import json
import os
import tempfile

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Config file[:preset].")
common.define_synthetic_images(28, 1, 10)
flags.DEFINE_integer("steps", 100, "Timed steps (after warm-up).")
flags.DEFINE_list(
    "steps_per_dispatch",
    ["1", "4"],
    "training.steps_per_dispatch values; empty: time the bare step only.",
)
common.define_out("experiments/results/benchmarks/step.json")


def bare_step_images_per_sec(config, steps: int) -> float:
    """The jitted train_step alone, on one device-resident batch."""
    from experiments.benchmarks.step_timing import OurStep

    step = OurStep(config, FLAGS.image_size, FLAGS.channels, FLAGS.num_classes)
    step.run(3)
    return config.input.batch_size / step.run(steps)


def loop_images_per_sec(config, dataset, steps: int, per_dispatch: int) -> float:
    """The real training loop (train_and_evaluate): two runs of `steps` and 2 x `steps`
    steps, whose difference in wall time (timing.json) is `steps` steps of the loop alone;
    compiling, set-up and the final evaluation cancel out. (CLU's steps_per_sec times the
    host's dispatches, which run ahead of the device.)"""
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.training.loop import TIMING_FILE, train_and_evaluate

    seconds = []
    for total in (steps, 2 * steps):
        run = apply_overrides(config, {
            "training.num_train_steps": total, "training.log_every_steps": max(steps // 4, 1),
            "training.eval_every_epochs": 1e6, "training.checkpoint_every_steps": 0,
            "training.steps_per_dispatch": per_dispatch, "augment.grid_images": 0,
        })  # fmt: skip
        with tempfile.TemporaryDirectory() as workdir:
            train_and_evaluate(run, workdir, dataset)
            with open(os.path.join(workdir, TIMING_FILE), encoding="utf-8") as f:
                seconds.append(json.load(f)["run_s"])
    return steps * config.input.batch_size / (seconds[1] - seconds[0])


def _label(config, dtype: str) -> str:
    """The model's row label: "resnet20 (w16, float32)", or "vit_ti/4 (bfloat16)" for a ViT
    (its size is in its name and patch size; model.width is unused)."""
    if config.model.name.startswith("vit"):
        return f"{config.model.name}/{config.model.patch_size} ({dtype})"
    return f"{config.model.name} (w{config.model.width}, {dtype})"


def main(argv):
    del argv
    import jax

    from imgcls_jax.data.synthetic import random_dataset
    from imgcls_jax.reporting import markdown

    config = FLAGS.config
    dataset = random_dataset(
        max(config.input.batch_size * (2 * FLAGS.steps + 10), 2048),
        FLAGS.image_size, FLAGS.channels, FLAGS.num_classes,
    )  # fmt: skip
    bare = bare_step_images_per_sec(config, FLAGS.steps)
    loops = {int(k): loop_images_per_sec(config, dataset, FLAGS.steps, int(k))
             for k in FLAGS.steps_per_dispatch}  # fmt: skip
    from imgcls_jax.runtime import precision

    dtype = precision.resolve(config.model.dtype, jax.devices())
    result = {
        "model": config.model.name, "width": config.model.width, "dtype": dtype,
        "batch_size": config.input.batch_size, "image_size": FLAGS.image_size,
        "channels": FLAGS.channels, "augment": config.augment.train,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "bare_step_img_per_s": round(bare, 1),
        "full_loop_img_per_s": {k: round(v, 1) for k, v in loops.items()},
        "loop_over_bare": {k: round(v / bare, 3) for k, v in loops.items()},
    }  # fmt: skip
    print(markdown.table(
        ["model", "batch", "image", "augment", "bare step img/s", "steps per call",
         "full loop img/s", "loop/bare"],
        [[_label(config, dtype), config.input.batch_size,
          f"{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}",
          config.augment.train or "none", f"{bare:.0f}", k, f"{loop:.0f}", f"{loop / bare:.1%}"]
         for k, loop in loops.items()] or
        [[_label(config, dtype), config.input.batch_size,
          f"{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}",
          config.augment.train or "none", f"{bare:.0f}", "-", "-", "-"]],
    ))  # fmt: skip
    common.write_result(FLAGS.out, result)


if __name__ == "__main__":
    app.run(main)
