"""Image grids: what the model sees, as one uint8 picture for TensorBoard or a PNG file."""

from __future__ import annotations

import math

import numpy as np
from etils import epath
from PIL import Image


def image_grid(images: np.ndarray, columns: int = 0, border: int = 1) -> np.ndarray:
    """Tiles N HWC images into one (rows*H, columns*W, C) uint8 image with white borders.

    `images` may be float in [0, 255]; they are clipped and rounded. `columns` defaults to
    the smallest square that holds them all.
    """
    images = np.clip(np.rint(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
    count, height, width, channels = images.shape
    columns = columns or math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    cell_h, cell_w = height + border, width + border
    grid = np.full((rows * cell_h + border, columns * cell_w + border, channels), 255, np.uint8)
    for i, image in enumerate(images):
        top, left = border + (i // columns) * cell_h, border + (i % columns) * cell_w
        grid[top : top + height, left : left + width] = image
    return grid


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an HWC uint8 image (1 or 3 channels) as PNG."""
    with epath.Path(path).open("wb") as f:  # Local or gs://.
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format="PNG")
