"""Ablation: does on-device augmentation raise test accuracy when training data is scarce?

Fashion-MNIST with 5,000 training images (validation and test as usual), ResNet-8 (width 16),
the default preset's optimizer, 15 or 40 epochs; the only other change is the augmentation
pipeline. (Augmentation pays off once the plain model starts to overfit; with a short budget
it can underfit instead, which is why the epochs are part of the grid.)

    python -m experiments.ablations.augment --root=experiments/results/ablations/augment --seeds=2

Quick smoke run: add `--set=dataset.train_size=1000` and a small `--set=training.num_epochs`
is overridden by the grid, so use run_sweep.py for that.
"""

from absl import app

from experiments.run_sweep import main_for

FIXED = {"dataset.train_size": 5000, "model.name": "resnet8", "training.eval_every_epochs": 5.0}
GRID = {"training.num_epochs": [15.0, 40.0], "augment.train": ["", "random_crop(2)|flip_lr"]}

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/accuracy", "val/accuracy"]))
