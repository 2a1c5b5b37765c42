"""Ablation: with five classes cut to 10% of their examples, what recovers the rare classes —
a class-weighted loss or class-balanced sampling — compared with plain training?

Fashion-MNIST, a 10,000-image training subset whose classes 0-4 (t-shirt, trouser, pullover,
dress, coat) keep 10% of their examples (about 5,500 images, 10:1 imbalance); validation and
test stay balanced. ResNet-8 (width 16), 15 epochs. Balanced accuracy is the metric to read.

    python -m experiments.ablations.imbalance --root=experiments/results/ablations/imbalance --seeds=2
"""

import glob
import json
import os

import numpy as np
from absl import app

from experiments.run_sweep import FLAGS, main_for
from imgcls_jax.reporting import markdown

FIXED = {
    "dataset.train_size": 10000,
    "dataset.class_fractions": (0.1,) * 5 + (1.0,) * 5,
    "model.name": "resnet8",
    "training.num_epochs": 15.0,
    "training.eval_every_epochs": 3.0,
}
GRID = [
    ("plain", {"loss.class_weighting": "none", "input.sampling": "uniform"}),
    ("class-weighted loss", {"loss.class_weighting": "balanced", "input.sampling": "uniform"}),
    (
        "class-balanced sampling",
        {"loss.class_weighting": "none", "input.sampling": "class_balanced"},
    ),
]

RARE = 5  # Classes 0-4 are the reduced ones.


def rare_and_common_accuracy(root: str) -> str:
    """Per variant: mean test accuracy of the reduced classes and of the others (from each
    run's report.json), averaged over seeds."""
    rows = []
    for variant, _ in GRID:
        reports = glob.glob(os.path.join(root, variant.replace(" ", "_"), "seed_*", "report.json"))
        per_class = [list(json.load(open(r))["per_class_accuracy"].values()) for r in reports]
        if per_class:
            rare, common = (
                np.mean([c[:RARE] for c in per_class]),
                np.mean([c[RARE:] for c in per_class]),
            )
            rows.append([variant, len(per_class), f"{100 * rare:.2f}", f"{100 * common:.2f}"])
    return markdown.table(["variant", "seeds", "reduced classes 0-4", "other classes 5-9"], rows)


def main(argv):
    main_for(GRID, FIXED, ["test/balanced_accuracy", "test/accuracy"])(argv)
    print(rare_and_common_accuracy(FLAGS.root))


if __name__ == "__main__":
    app.run(main)
