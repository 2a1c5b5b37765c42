"""Converts PyTorch weights into a checkpoint that fine-tuning and `predict` load.

    python -m imgcls_jax.convert --arch=resnet50 --source=resnet50.pth --out=pretrained/r50
    python -m imgcls_jax.convert --arch=efficientnet_lite0 \\
        --source=efficientnet-lite0-57934424.pth --out=pretrained/lite0 --class_names=imagenet

Writes OUT/variables (Orbax) and OUT/metadata.json: architecture, width, stem, number of
classes and input channels, the input size and normalisation the weights expect, the class
names, and the source file's SHA-256.
"""

from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", None, "Model name in our registry, e.g. resnet50.", required=True)
flags.DEFINE_string("source", None, "A .pth/.pt or .safetensors state dict.", required=True)
flags.DEFINE_string("out", None, "Output directory.", required=True)
flags.DEFINE_integer("width", 64, "Channels of the first stage (ResNet).")
flags.DEFINE_enum("stem", "imagenet", ["imagenet", "small"], "ResNet stem.")
flags.DEFINE_integer("input_size", 0, "Input size of the weights; 0: the architecture's own.")
flags.DEFINE_list("mean", [], "Per-channel mean in [0, 1] units; empty: the architecture's own.")
flags.DEFINE_list("std", [], "Per-channel std in [0, 1] units; empty: the architecture's own.")
flags.DEFINE_string(
    "class_names", "", "'imagenet' (the 1,000 ImageNet-1k names), a text file with one name per "
    "line, or empty for numbered classes."
)  # fmt: skip


def main(argv):
    del argv
    from imgcls_jax import convert
    from imgcls_jax.data import class_names as class_names_lib

    input_size, mean, std = convert.default_preprocessing(FLAGS.arch)
    input_size = FLAGS.input_size or input_size
    mean = [float(m) for m in FLAGS.mean] or mean.tolist()
    std = [float(s) for s in FLAGS.std] or std.tolist()
    try:
        tensors = convert.read_tensors(FLAGS.source)
        variables, num_classes = convert.convert_model(
            FLAGS.arch, tensors, FLAGS.width, FLAGS.stem, input_size
        )
    except (ValueError, OSError, ImportError) as e:  # Each says what to fix: one line.
        sys.exit(f"convert: {e}")
    names = class_names_lib.resolve(FLAGS.class_names, num_classes)
    metadata = {
        "architecture": FLAGS.arch,
        "width": FLAGS.width,
        "stem": FLAGS.stem,
        "num_classes": num_classes,
        "input_size": input_size,
        "mean": mean,
        "std": std,
        "class_names": names,
        "source": FLAGS.source,
        "source_sha256": convert.file_sha256(FLAGS.source),
    }
    if FLAGS.arch.startswith("vit"):
        metadata.update(convert.vit_fields(tensors, convert.layouts.TORCH_LAYOUTS[FLAGS.arch]))
    convert.save_pretrained(FLAGS.out, variables, metadata)
    print(f"Converted {len(tensors)} tensors of {FLAGS.source} ({FLAGS.arch}, {num_classes} "
          f"classes) to {FLAGS.out}.")  # fmt: skip


def run() -> None:
    """The `imgcls-convert` command."""
    from imgcls_jax.config import show_flags_in_help

    show_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
