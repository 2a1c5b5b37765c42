"""Renders what the model sees: a grid of augmented train images for any config.

Question: does the augmentation pipeline produce sensible images? (The same grid is written
to TensorBoard and `augmented_train_images.png` at the start of every training run.)

    python -m experiments.render_augmentations --out=experiments/results/augment_default.png
    python -m experiments.render_augmentations --config=configs/resnet.py:tiny \\
        --config.augment.train='randaugment(2,9)|random_erasing(1.0)' --out=/tmp/grid.png

The images are exactly those of train step `--step` (same data order and augmentation keys).
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from experiments import common

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Config file[:preset].")
common.define_out("augmented_train_images.png")
flags.DEFINE_integer("count", 64, "Images in the grid (at most the batch size).")
flags.DEFINE_integer("step", 0, "Which train step's batch to show.")
flags.DEFINE_integer("columns", 0, "Grid columns; 0 makes it square.")


def main(argv):
    del argv
    from imgcls_jax.reporting import plots
    from imgcls_jax.training.builder import Trainer

    trainer = Trainer(FLAGS.config)
    images = trainer.augmented_images(FLAGS.step, FLAGS.count)
    plots.save_png(FLAGS.out, plots.image_grid(images, FLAGS.columns))
    print(f"Wrote {len(images)} images of step {FLAGS.step} "
          f"({FLAGS.config.augment.train or 'no augmentation'}) to {FLAGS.out}")  # fmt: skip


if __name__ == "__main__":
    app.run(main)
