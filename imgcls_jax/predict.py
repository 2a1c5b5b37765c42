"""Top-5 predictions of a converted checkpoint for image files.

    python -m imgcls_jax.predict --checkpoint=pretrained/efficientnet_lite0 cat.jpg dog.png

Each image is resized (shorter side to input_size / 0.875, antialiased) and centre-cropped to
the checkpoint's input size, then normalised with its mean and std, as in standard ImageNet
evaluation.
"""

from __future__ import annotations

import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags
from PIL import Image

CROP_FRACTION = 0.875

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "A converted checkpoint directory.", required=True)
flags.DEFINE_integer("top", 5, "How many classes to print per image.")


def load_image(path: str, size: int, channels: int) -> np.ndarray:
    """Decodes, resizes the shorter side to size / 0.875 and centre-crops size x size."""
    try:
        image = Image.open(path)
        image = image.convert("L" if channels == 1 else "RGB")
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot read image {path}: {e}") from e
    scale = size / CROP_FRACTION / min(image.size)
    width, height = (max(size, round(d * scale)) for d in image.size)
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    pixels = np.asarray(image.crop((left, top, left + size, top + size)), np.float32)
    return pixels.reshape(size, size, channels)


class Predictor:
    """A converted checkpoint ready to classify images."""

    def __init__(self, checkpoint: str):
        from imgcls_jax import convert
        from imgcls_jax.models import build_model

        self.variables, self.metadata = convert.load_pretrained(checkpoint)
        model_config = ml_collections.ConfigDict({
            "name": self.metadata["architecture"], "width": self.metadata["width"],
            "stem": self.metadata["stem"], "dtype": "float32", "bn_momentum": 0.9,
            "kernels": "auto",
        })  # fmt: skip
        model = build_model(model_config, self.metadata["num_classes"])
        self.channels = self.variables["params"]["stem_conv"]["kernel"].shape[2]
        self.apply = jax.jit(lambda v, x: jax.nn.softmax(model.apply(v, x)))
        self.class_names = self.metadata["class_names"] or [
            str(i) for i in range(self.metadata["num_classes"])
        ]

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of float32 [N, size, size, C] images in [0, 255]."""
        mean = np.asarray(self.metadata["mean"], np.float32)
        std = np.asarray(self.metadata["std"], np.float32)
        return np.asarray(self.apply(self.variables, (images / 255.0 - mean) / std))

    def top(self, paths: list[str], k: int) -> list[list[tuple[str, float]] | str]:
        """For each image, its k most probable (class name, probability) pairs, or why it
        could not be read (the other images are still classified)."""
        loaded: dict[int, np.ndarray] = {}
        results: list = [None] * len(paths)
        for i, path in enumerate(paths):
            try:
                loaded[i] = load_image(path, self.metadata["input_size"], self.channels)
            except ValueError as e:
                results[i] = str(e)
        if loaded:
            probabilities = self.probabilities(np.stack(list(loaded.values())))
            for i, probs in zip(loaded, probabilities, strict=True):
                best = np.argsort(-probs)[:k]
                results[i] = [(self.class_names[j], float(probs[j])) for j in best]
        return results


def main(argv):
    paths = argv[1:]
    if not paths:
        raise app.UsageError("Give one or more image files after the flags.")
    predictor = Predictor(FLAGS.checkpoint)
    failed = 0
    for path, top in zip(paths, predictor.top(paths, FLAGS.top)):
        if isinstance(top, str):
            print(f"predict: {top}; skipped.", file=sys.stderr)
            failed += 1
            continue
        print(path)
        for name, probability in top:
            print(f"  {probability:7.2%}  {name}")
    sys.stdout.flush()
    if failed:
        sys.exit(f"predict: {failed} of {len(paths)} image(s) could not be read.")


if __name__ == "__main__":
    app.run(main)
