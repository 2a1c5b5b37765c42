"""Ablation: with five classes cut to 10% of their examples, what recovers the rare classes —
a class-weighted loss or class-balanced sampling — compared with plain training?

Fashion-MNIST, a 10,000-image training subset whose classes 0-4 (t-shirt, trouser, pullover,
dress, coat) keep 10% of their examples (about 5,500 images, 10:1 imbalance); validation and
test stay balanced. ResNet-8 (width 16), 15 epochs. Balanced accuracy is the metric to read.

    python experiments/ablate_imbalance.py --root=experiments/results/ablate_imbalance --seeds=2
"""

from absl import app
from run_sweep import main_for

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

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/balanced_accuracy", "test/accuracy"]))
