"""Ablation: which training augmentation makes a classifier robust to corruptions it never
saw? Plain (random crop + flip) against mixup (alpha 0.2), CutMix (alpha 1) and RandAugment
(2 ops, magnitude 9), each on top of the plain ops.

Fashion-MNIST, a 10,000-image training subset, ResNet-8 (width 16), 10 epochs, the default
preset otherwise. Each trained model is evaluated at the end on the first 2,000 test images
under every corruption (config.evaluation.corruptions="all": ImageNet-C's image ops with
CIFAR-10-C's severities) at severities 1-5.

    python -m experiments.ablations.corruption_robustness --root=experiments/results/ablations/corruption_robustness --seeds=3
"""

from absl import app

from experiments.run_sweep import main_for

PLAIN = "random_crop(2)|flip_lr"
FIXED = {"dataset.train_size": 10000, "model.name": "resnet8", "training.num_epochs": 10.0,
         "training.eval_every_epochs": 2.0, "evaluation.corruptions": "all",
         "evaluation.corruption_examples": 2000,
         "evaluation.corruptions_every_epochs": 10.0}  # fmt: skip
GRID = [
    ("plain", {"augment.train": PLAIN}),
    ("mixup", {"augment.train": PLAIN, "augment.mixup_alpha": 0.2}),
    ("cutmix", {"augment.train": PLAIN, "augment.cutmix_alpha": 1.0}),
    ("randaugment", {"augment.train": f"{PLAIN}|randaugment(2, 9)"}),
]

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/accuracy", "test_c/mean", "test_c/clean"]))
