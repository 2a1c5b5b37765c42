"""Ablation: SGD, AdamW, Muon, SAM and schedule-free AdamW on one budget — accuracy and time
per step.

Fashion-MNIST, a 10,000-image training subset, ResNet-8 (width 16), 10 epochs, batch 128,
1 warm-up epoch, the default preset otherwise. SGD (Nesterov) and SAM take lr 0.1 and weight
decay 5e-4 with cosine decay (SAM's rho 0.05); AdamW and Muon take lr 2e-3 and decay 0.05
with cosine decay (Muon's updates are scaled to AdamW's RMS, so one rate serves both);
schedule-free AdamW takes lr 2e-3, decay 0.05 and a constant rate after the warm-up, and is
scored on its average (test_ema/...). Seconds per step: the run's wall time over its steps
(compiles and evaluations included), from each run's timing.json.

    python -m experiments.ablations.optimizer_families --root=experiments/results/ablations/optimizer_families --seeds=3
"""

import json
import os

import numpy as np
from absl import app, flags

from experiments.run_sweep import main_for

FLAGS = flags.FLAGS
FIXED = {"dataset.train_size": 10000, "model.name": "resnet8", "training.num_epochs": 10.0,
         "training.eval_every_epochs": 2.0, "schedule.warmup_epochs": 1.0}  # fmt: skip
SGD = {"optimizer.learning_rate": 0.1, "optimizer.weight_decay": 5e-4}
ADAM = {"optimizer.learning_rate": 2e-3, "optimizer.weight_decay": 0.05}
GRID = [
    ("SGD", {"optimizer.name": "sgd", **SGD}),
    ("AdamW", {"optimizer.name": "adamw", **ADAM}),
    ("Muon", {"optimizer.name": "muon", **ADAM}),
    ("SAM", {"optimizer.name": "sam", **SGD}),
    ("schedule-free AdamW", {"optimizer.name": "schedule_free", "schedule.name": "constant",
                             "training.early_stopping_metric": "val_ema/accuracy", **ADAM}),
]  # fmt: skip
METRICS = ["test/accuracy", "test_ema/accuracy", "val/accuracy"]


def seconds_per_step(root: str) -> dict[str, tuple[float, float]]:
    """Per variant: mean and std over seeds of wall seconds per train step."""
    from imgcls_jax.training import sweep

    times: dict[str, list[float]] = {}
    for run in sweep.expand(GRID, range(FLAGS.seeds)):
        workdir = os.path.join(root, run.directory)
        with open(os.path.join(workdir, "timing.json"), encoding="utf-8") as f:
            run_s = json.load(f)["run_s"]
        with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
            steps = json.load(f)["step"]
        times.setdefault(run.variant, []).append(run_s / steps)
    return {k: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0)
            for k, v in times.items()}  # fmt: skip


def main(argv):
    main_for(GRID, FIXED, METRICS)(argv)
    times = seconds_per_step(FLAGS.root)
    with open(os.path.join(FLAGS.root, "seconds_per_step.json"), "w", encoding="utf-8") as f:
        json.dump(times, f, indent=2)
    for variant, (mean, std) in times.items():
        print(f"{variant}: {1000 * mean:.1f} ± {1000 * std:.1f} ms per step")


if __name__ == "__main__":
    app.run(main)
