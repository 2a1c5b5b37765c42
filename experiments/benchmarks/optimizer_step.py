"""Benchmark: the train step's time with each optimizer, side by side in one process.

The optimizer ablation's setting (ResNet-8, width 16, batch 128, 28x28x1 synthetic images,
the default preset's loss and augmentation) with SGD, AdamW, Muon, SAM and schedule-free
AdamW, each at the ablation's hyperparameters (experiments/ablations/optimizer_families.py).
Every optimizer's step is compiled first; then --rounds rounds of --steps steps each, the
optimizers interleaved within a round; the median round counts.

    python -m experiments.benchmarks.optimizer_step

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import statistics

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 20, "Steps per round.")
flags.DEFINE_integer("batch_size", 128, "Global batch.")
common.define_rounds(5)
common.define_out("experiments/results/benchmarks/optimizer_step.json")


def main(argv):
    del argv
    import jax

    from configs.resnet import get_config
    from experiments.ablations.optimizer_families import FIXED, GRID
    from experiments.benchmarks.step_timing import OurStep
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.reporting import markdown

    steps = {}
    for name, overrides in GRID:
        config = apply_overrides(get_config(None), {**FIXED, **overrides,
                                                    "input.batch_size": FLAGS.batch_size})  # fmt: skip
        steps[name] = OurStep(config, 28, 1, 10)
        steps[name].run(2)  # Compiles.
    seconds = {name: [] for name in steps}
    for _ in range(FLAGS.rounds):
        for name, step in steps.items():
            seconds[name].append(step.run(FLAGS.steps))
    sgd = statistics.median(seconds["SGD"])
    rows = [{"optimizer": name, "ms_per_step": round(1000 * statistics.median(s), 2),
             "vs_sgd": round(statistics.median(s) / sgd, 3),
             "rounds_ms": [round(1000 * x, 2) for x in s]} for name, s in seconds.items()]  # fmt: skip
    print(
        f"ResNet-8 (w16), batch {FLAGS.batch_size}, 28x28x1, {jax.device_count()} x "
        f"{jax.devices()[0].platform}; median of {FLAGS.rounds} rounds of {FLAGS.steps} steps"
    )
    print(markdown.table(["optimizer", "ms per step", "vs SGD"],
                         [[r["optimizer"], f"{r['ms_per_step']:.1f}", f"{r['vs_sgd']:.2f}x"]
                          for r in rows]))  # fmt: skip
    common.write_result(FLAGS.out, {"batch_size": FLAGS.batch_size, "steps": FLAGS.steps,
                                    "rounds": FLAGS.rounds, "rows": rows})  # fmt: skip


if __name__ == "__main__":
    app.run(main)
