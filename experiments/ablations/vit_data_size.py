"""Ablation: where does a ViT need data? ResNet-20 vs ViT-Ti/4 vs ViT-Ti/4 with an EMA of
the weights and stochastic depth, on Fashion-MNIST with 1,000, 5,000 and all 55,000 training
images (5,000 are held out for validation).

Each model trains with its own preset's recipe (`configs/resnet.py`: SGD, crop + flip, 20
epochs; `configs/vit.py:fashion_mnist`: DeiT's AdamW, RandAugment, mixup/CutMix, 100 epochs)
and the preset's number of steps at every size: a smaller set is seen for more epochs, with
warm-up and evaluations stretched alike. Plain ViT-Ti/4 is the ViT preset without its EMA and
stochastic depth. `--budget_fraction` scales every run's steps (e.g. 0.1 for a first look).

    python -m experiments.ablations.vit_data_size --root=experiments/results/ablations/vit_data_size --seeds=3

A GPU job: a ViT-Ti/4 run is 5.5M training images (1.66 GFLOP each, forward and backward).
"""

from absl import app, flags

from configs import resnet, vit
from experiments.run_sweep import FLAGS, main_for
from imgcls_jax.config import apply_overrides, overrides_between
from imgcls_jax.training import sweep

flags.DEFINE_float("budget_fraction", 1.0, "Fraction of each preset's steps that runs train.")

FULL_SET = 55_000  # Fashion-MNIST's training split less the 5,000 held out.
SIZES = (1000, 5000, 0)  # 0: the whole training split.
ARMS = {
    "ResNet-20": (resnet.get_config, {}),
    "ViT-Ti/4": (lambda: vit.get_config("fashion_mnist"),
                 {"model.drop_path_rate": 0.0, "training.ema_decay": 0.0,
                  "training.early_stopping_metric": "val/accuracy"}),
    "ViT-Ti/4 + EMA + stochastic depth": (lambda: vit.get_config("fashion_mnist"), {}),
}  # fmt: skip
METRICS = ["test/accuracy", "test_ema/accuracy", "val/accuracy"]


def grid(base, assignments=(), budget_fraction: float = 1.0):
    """One variant per (size, arm): the arm's preset with `assignments` (KEY=VALUE strings) and
    its steps scaled by `budget_fraction`, as overrides of `base`."""
    if budget_fraction <= 0:
        raise app.UsageError(f"--budget_fraction must be > 0, got {budget_fraction}.")
    variants = []
    for size in SIZES:
        stretch = budget_fraction * FULL_SET / (size or FULL_SET)
        for name, (preset, changes) in ARMS.items():
            config = apply_overrides(preset(), {**sweep.parse_assignments(assignments), **changes})
            config = apply_overrides(config, {
                "dataset.train_size": size,
                "training.num_epochs": config.training.num_epochs * stretch,
                "schedule.warmup_epochs": config.schedule.warmup_epochs * stretch,
                "training.eval_every_epochs": config.training.eval_every_epochs * stretch,
            })  # fmt: skip
            variants.append((f"{size or FULL_SET} images, {name}", overrides_between(base, config)))
    return variants


if __name__ == "__main__":
    app.run(main_for(lambda base: grid(base, FLAGS.set, FLAGS.budget_fraction), {}, METRICS))
