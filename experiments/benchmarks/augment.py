"""Benchmark: what on-device augmentation adds to the training-step time.

Question: does the default pipeline stay within 10% of the step time without augmentation?
Each variant's jitted train step runs on the same device-resident batch; variants are timed in
interleaved rounds (so background load hits them alike) and the median round counts. The
augmentation alone (jitted, no model) is timed too.

    python -m experiments.benchmarks.augment                  # Fashion-MNIST preset: ResNet-20, b128
    python -m experiments.benchmarks.augment --rounds=3 --steps=5 --config=configs/resnet.py:tiny

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Config file[:preset].")
common.define_synthetic_images(28, 1)
flags.DEFINE_integer("steps", 20, "Steps per variant per round.")
common.define_rounds(7)
common.define_out("experiments/results/benchmarks/augment.json")

# Config overrides, or (a string) an op appended to the preset's own pipeline.
VARIANTS = (
    {"augment.train": ""},
    {},
    {"augment.mixup_alpha": 0.2, "augment.cutmix_alpha": 1.0},
    "randaugment(2,9)",
    "random_erasing(0.25)",
)


def build_variants(config):
    from imgcls_jax.config import apply_overrides

    variants = []
    for change in VARIANTS:
        if isinstance(change, str):  # An op appended to the preset pipeline.
            change = {"augment.train": "|".join(filter(None, [config.augment.train, change]))}
        variant = apply_overrides(config, change)
        label = variant.augment.train or "none"
        if variant.augment.mixup_alpha or variant.augment.cutmix_alpha:
            label += " + mixup/cutmix"
        variants.append((label, variant))
    return variants


def main(argv):
    del argv
    import jax
    import numpy as np

    from imgcls_jax.data import input_pipeline
    from imgcls_jax.data.synthetic import random_dataset
    from imgcls_jax.reporting import markdown
    from imgcls_jax.training.builder import Trainer

    base = FLAGS.config
    batch_size = base.input.batch_size
    dataset = random_dataset(4 * batch_size, FLAGS.image_size, FLAGS.channels, 10)
    runs = []
    for label, config in build_variants(base):
        trainer = Trainer(config, dataset)
        batch = input_pipeline.train_batch(dataset.train, trainer.order, 0, trainer.mesh)
        state = trainer.create_state()
        for _ in range(2):  # Compile and warm up.
            state, _ = trainer.train_step(state, batch, trainer.train_key)
            images = trainer.augment_batch(trainer.train_key, np.int32(0), batch)
        jax.block_until_ready((state, images))
        runs.append({"label": label, "trainer": trainer, "state": state, "batch": batch,
                     "step_s": [], "augment_s": []})  # fmt: skip
    for _ in range(FLAGS.rounds):
        for run in runs:
            trainer, batch = run["trainer"], run["batch"]
            start = time.perf_counter()
            for _ in range(FLAGS.steps):
                run["state"], _ = trainer.train_step(run["state"], batch, trainer.train_key)
            jax.block_until_ready(run["state"])
            run["step_s"].append((time.perf_counter() - start) / FLAGS.steps)
            start = time.perf_counter()
            for step in range(FLAGS.steps):
                images = trainer.augment_batch(trainer.train_key, np.int32(step), batch)
            jax.block_until_ready(images)
            run["augment_s"].append((time.perf_counter() - start) / FLAGS.steps)

    baseline = statistics.median(runs[0]["step_s"])
    rows = []
    for run in runs:
        step_s, augment_s = statistics.median(run["step_s"]), statistics.median(run["augment_s"])
        rows.append({
            "augment": run["label"], "step_ms": round(1e3 * step_s, 2),
            "img_per_s": round(batch_size / step_s, 1),
            "step_overhead": round(step_s / baseline - 1, 4),
            "augment_only_ms": round(1e3 * augment_s, 3),
        })  # fmt: skip
    print(f"{base.model.name} (w{base.model.width}), batch {batch_size}, "
          f"{FLAGS.image_size}x{FLAGS.image_size}x{FLAGS.channels}, {jax.device_count()} x "
          f"{jax.devices()[0].platform}; median of {FLAGS.rounds} rounds x {FLAGS.steps} steps")  # fmt: skip
    print(markdown.table(
        ["augmentation", "step ms", "img/s", "vs none", "augmentation alone, ms"],
        [[r["augment"], f"{r['step_ms']:.1f}", f"{r['img_per_s']:.0f}",
          f"{r['step_overhead']:+.1%}", f"{r['augment_only_ms']:.2f}"] for r in rows],
    ))  # fmt: skip
    common.write_result(
        FLAGS.out,
        {
            "model": base.model.name,
            "batch_size": batch_size,
            "image_size": FLAGS.image_size,
            "channels": FLAGS.channels,
            "rounds": FLAGS.rounds,
            "steps": FLAGS.steps,
            "rows": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
