"""Class names for converted checkpoints: ImageNet-1k's, a user file, or numbers.

`imagenet_class_names.tsv` lists the 1,000 ImageNet-1k synsets in the standard label order
(identical to TFDS's imagenet2012 labels.txt) with their WordNet lemmas, as shipped in timm's
``data/_info`` files (Apache-2.0).
"""

from __future__ import annotations

import os

IMAGENET_FILE = os.path.join(os.path.dirname(__file__), "imagenet_class_names.tsv")


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names in label order, e.g. 281 -> "tabby, tabby cat"."""
    with open(IMAGENET_FILE, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t", 1)[1] for line in f]


def resolve(spec: str, num_classes: int) -> list[str]:
    """`spec` is "imagenet", a text file with one name per line, or "" for "0", "1", ..."""
    if not spec:
        return [str(i) for i in range(num_classes)]
    if spec == "imagenet":
        names = imagenet_class_names()
    else:
        with open(spec, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    if len(names) != num_classes:
        raise ValueError(
            f"--class_names={spec!r} has {len(names)} names but the weights have {num_classes} "
            "classes."
        )
    return names
