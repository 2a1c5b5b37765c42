"""Ablation: progressive resizing (train small, then at full size) against training at full
size throughout, for the same steps.

Fashion-MNIST, a 10,000-image training subset, ResNet-8 (width 16), 10 epochs, the default
preset otherwise; progressive: 20 px for epochs 0-4, 24 px for 4-7, 28 px from 7 (the
augmented 28 px images resized on device), evaluated at 28 px (FixRes's train-small,
test-large). Time per run from timing.json beside the accuracies.

    python -m experiments.ablations.progressive_resizing --root=experiments/results/ablations/progressive_resizing --seeds=3
"""

from absl import app

from experiments.run_sweep import main_for

FIXED = {"dataset.train_size": 10000, "model.name": "resnet8", "training.num_epochs": 10.0,
         "training.eval_every_epochs": 2.0}  # fmt: skip
GRID = [
    ("fixed 28 px", {"training.progressive_sizes": ""}),
    ("progressive 20-24-28 px", {"training.progressive_sizes": "0:20,4:24,7:28"}),
]

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/accuracy", "val/accuracy"]))
