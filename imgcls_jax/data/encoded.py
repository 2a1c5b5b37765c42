"""Images left encoded on disk (files or TFDS records), decoded batch by batch, for datasets
too big for memory."""

from __future__ import annotations

import concurrent.futures
import os

import numpy as np

from imgcls_jax.data.decode import decode_named


class EncodedImages:
    """A lazy uint8 [N, S, S, C] array over encoded images.

    `items` are file paths, or, with a `reader` (such as `tfds_source.RecordImages`), what
    `reader.open(item)` turns into a file object, `reader.name(item)` names in errors and
    `reader.identity` with the items identifies (the dataset fingerprint).
    Indexing selects items without reading them (so splits and subsets stay lazy);
    `np.asarray` decodes the selection in parallel threads (PIL releases the GIL), each image
    resized on its shorter side and centre-cropped exactly as the in-memory image folder does.
    """

    def __init__(self, items, image_size: int, channels: int, threads: int = 0, pool=None,
                 reader=None):  # fmt: skip
        self.items = np.asarray(items, dtype=object if reader is None else None)
        self.image_size = image_size
        self.channels = channels
        self.threads = threads or os.cpu_count() or 1
        self.reader = reader
        self._pool = pool

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.items), self.image_size, self.image_size, self.channels)

    dtype = np.dtype(np.uint8)
    ndim = 4

    @property
    def nbytes(self) -> int:
        """The decoded size."""
        return int(np.prod(self.shape))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index) -> EncodedImages:
        if isinstance(index, (int, np.integer)):
            raise TypeError("Select with an index array or slice, then decode with np.asarray.")
        return EncodedImages(self.items[index], self.image_size, self.channels, self.threads,
                             self._executor(), self.reader)  # fmt: skip

    def __getstate__(self) -> dict:
        """For input worker processes, which decode in parallel themselves: one thread each."""
        return {**self.__dict__, "_pool": None, "threads": 1}

    def _executor(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(self.threads, "decode")
        return self._pool

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        mode = "RGB" if self.channels == 3 else "L"
        reader = self.reader

        def what(item) -> str:
            return f"The image in {reader.name(item)}" if reader else f"Image file {item!r}"

        def decode(item):
            source = reader.open(item) if reader else item
            return decode_named(source, what(item), self.image_size, mode)

        if self.threads == 1:  # A Grain worker: a pool of one thread only adds handoffs.
            decoded = [decode(item) for item in self.items]
        else:
            decoded = list(self._executor().map(decode, self.items))
        for item, image in zip(self.items, decoded):
            if image is None:
                raise ValueError(
                    f"{what(item)} is unreadable. Streaming decodes images only when a batch needs "
                    "them, so it was not caught up front: remove or re-save it, then relaunch "
                    "the same command to resume from the last checkpoint."
                )
        images = np.stack(decoded) if decoded else np.zeros(self.shape, np.uint8)
        return images if dtype is None else images.astype(dtype)
