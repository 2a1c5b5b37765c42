"""Ablation: does on-device augmentation raise test accuracy when training data is scarce?

Fashion-MNIST with 5,000 training images (validation and test as usual), ResNet-8 (width 16),
15 epochs, the default preset's optimizer; the only change is the augmentation pipeline.

    python experiments/ablate_augment.py --root=experiments/results/ablate_augment --seeds=2

Quick smoke run: add `--set=training.num_epochs=0.2 --set=dataset.train_size=1000`.
"""

from absl import app
from run_sweep import main_for

FIXED = {
    "dataset.train_size": 5000,
    "model.name": "resnet8",
    "training.num_epochs": 15.0,
    "training.eval_every_epochs": 3.0,
}
GRID = [{"augment.train": ""}, {"augment.train": "random_crop(2)|flip_lr"}]

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/accuracy", "val/accuracy"]))
