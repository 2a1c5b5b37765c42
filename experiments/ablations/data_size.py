"""Ablation: how does test accuracy scale with the amount of training data, and does a
deeper network pay off only when data is plentiful?

Fashion-MNIST with 1,000, 5,000 and all 55,000 training images (5,000 are held out for
validation) x ResNet-8 / ResNet-20 (width 16). Every run sees the same number of images
(a budget of 165,000: 3 epochs of the full set, 33 of 5,000, 165 of 1,000).

    python -m experiments.ablations.data_size --root=experiments/results/ablations/data_size --seeds=2
"""

from absl import app

from experiments.run_sweep import main_for

BUDGET = 165_000  # Training images seen per run.
FIXED = {"training.eval_every_epochs": 1e9}  # Evaluate at the end only.
GRID = [
    (f"{size or 55_000} images, {model}",
     {"dataset.train_size": size, "model.name": model,
      "training.num_epochs": BUDGET / (size or 55_000)})
    for size in (1000, 5000, 0)  # 0: the whole training split.
    for model in ("resnet8", "resnet20")
]  # fmt: skip

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/accuracy", "val/accuracy"]))
