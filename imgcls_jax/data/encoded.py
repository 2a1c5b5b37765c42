"""Image files left encoded on disk and decoded batch by batch, for folders too big for memory."""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np


class EncodedImages:
    """A lazy uint8 [N, S, S, C] array over image files.

    Indexing selects files without reading them (so splits and subsets stay lazy);
    `np.asarray` decodes the selection in parallel threads (PIL releases the GIL), each image
    resized on its shorter side and centre-cropped exactly as the in-memory image folder does.
    """

    def __init__(self, paths, image_size: int, channels: int, threads: int = 0, pool=None):
        self.paths = np.asarray(paths, dtype=object)
        self.image_size = image_size
        self.channels = channels
        self.threads = threads or os.cpu_count() or 1
        self._pool = pool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.image_size, self.image_size, self.channels)

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def nbytes(self) -> int:
        """The decoded size."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index) -> EncodedImages:
        if isinstance(index, (int, np.integer)):
            raise TypeError("Select with an index array or slice, then decode with np.asarray.")
        return EncodedImages(self.paths[index], self.image_size, self.channels, self.threads,
                             self._executor())  # fmt: skip

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "decode")
        return self._pool

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        from imgcls_jax.data.image_folder import decode_image

        mode = "RGB" if self.channels == 3 else "L"
        decoded = list(
            self._executor().map(lambda p: decode_image(p, self.image_size, mode), self.paths)
        )
        for path, image in zip(self.paths, decoded):
            if image is None:
                raise ValueError(
                    f"Image file {path!r} is unreadable. Streaming decodes files only when a "
                    "batch needs them, so it was not caught up front: remove or re-save it, "
                    "then relaunch the same command to resume from the last checkpoint."
                )
        images = np.stack(decoded) if decoded else np.zeros(self.shape, np.uint8)
        return images if dtype is None else images.astype(dtype)
