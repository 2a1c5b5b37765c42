"""Random access to the images in TFDS's TFRecord files, through an index of record offsets.

Building the index reads every record once (for its label). Each file's index is saved beside
it (`FILE.imgcls_index.npz`, tagged with the file's size and modification time), so a restart,
or another host sharing the data directory, reads no record again; where the directory is
read-only the index is rebuilt on every start.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import logging
import os
import struct
import tempfile
import zipfile

import numpy as np

# A record: uint64 length, uint32 masked CRC of the length, the data, uint32 masked CRC of it.
_HEADER = struct.Struct("<QI")
_FOOTER_SIZE = 4
INDEX_SUFFIX = ".imgcls_index.npz"


@dataclasses.dataclass(frozen=True)
class FileSpan:
    """Records [skip, skip + take) of one TFRecord file (take -1: to the end)."""

    path: str
    skip: int = 0
    take: int = -1


def _stat(path: str) -> tuple[int, int]:
    """(size, modification time in ns) of a local or remote file."""
    if "://" in path:
        import tensorflow as tf

        stat = tf.io.gfile.stat(path)
        return stat.length, stat.mtime_nsec
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


def _exists(path: str) -> bool:
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def _open(path: str):
    """A binary file object; `tf.io.gfile` serves remote paths such as gs://."""
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.GFile(path, "rb")
    return open(path, "rb")


def _parse_example(data: bytes, where: str):
    from google.protobuf.message import DecodeError
    from tensorflow.core.example import example_pb2

    try:
        return example_pb2.Example.FromString(data)
    except DecodeError as error:
        raise ValueError(
            f"{where} is not a tf.train.Example ({error}). The file is corrupt: rebuild the "
            "dataset (`tfds build`) or restore the file, then relaunch to resume."
        ) from None


def _feature(example, key: str, kind: str, where: str):
    feature = example.features.feature.get(key)
    values = getattr(feature, kind).value if feature is not None else ()
    if len(values) != 1:
        raise ValueError(
            f"{where} has no single {kind} feature {key!r} (it has "
            f"{sorted(example.features.feature)}). Streaming reads the features that the "
            "dataset's supervised_keys name, else 'image' and 'label'."
        )
    return values[0]


def scan_file(path: str, label_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads one whole file once: (data offsets int64, data lengths int64, labels int32)."""
    offsets, lengths, labels = [], [], []
    with _open(path) as f:
        position = 0
        while header := f.read(_HEADER.size):
            where = f"TFRecord file {path!r}, record {len(labels)}"
            if len(header) < _HEADER.size:
                raise ValueError(f"{where} is truncated: restore or rebuild the file.")
            (length, _) = _HEADER.unpack(header)
            data = f.read(length)
            if len(data) < length or len(f.read(_FOOTER_SIZE)) < _FOOTER_SIZE:
                raise ValueError(f"{where} is truncated: restore or rebuild the file.")
            example = _parse_example(data, where)
            offsets.append(position + _HEADER.size)
            lengths.append(length)
            labels.append(_feature(example, label_key, "int64_list", where))
            position += _HEADER.size + length + _FOOTER_SIZE
    return np.array(offsets, np.int64), np.array(lengths, np.int64), np.array(labels, np.int32)


@dataclasses.dataclass(frozen=True)
class RecordImages:
    """Where each example's record lies; `open(i)` returns example i's encoded image bytes as a
    file object for PIL. Safe to call from several threads."""

    paths: tuple[str, ...]
    file_ids: np.ndarray  # int32 [N]: index into paths
    offsets: np.ndarray  # int64 [N]
    lengths: np.ndarray  # int64 [N]
    image_key: str

    def name(self, i: int) -> str:
        return f"{self.paths[self.file_ids[i]]} at byte {self.offsets[i]}"

    def open(self, i: int) -> io.BytesIO:
        with _open(self.paths[self.file_ids[i]]) as f:
            f.seek(int(self.offsets[i]))
            data = f.read(int(self.lengths[i]))
        where = f"The record in {self.name(i)}"
        if len(data) < self.lengths[i]:
            raise ValueError(f"{where} is truncated: restore or rebuild the file.")
        example = _parse_example(data, where)
        return io.BytesIO(_feature(example, self.image_key, "bytes_list", where))


def _read_saved_index(path: str, tag: str) -> tuple[np.ndarray, ...] | None:
    """The index saved beside `path`, if it was made from the file as it is now (None also
    for an unreadable one, which is then rebuilt and overwritten)."""
    sidecar = path + INDEX_SUFFIX
    if not _exists(sidecar):
        return None
    try:
        with _open(sidecar) as f, np.load(io.BytesIO(f.read())) as saved:
            if str(saved["tag"]) != tag:
                return None
            return saved["offsets"], saved["lengths"], saved["labels"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        logging.warning("Rebuilding the unreadable TFRecord index %s.", sidecar)
        return None


def _save_index(path: str, tag: str, index: tuple[np.ndarray, ...]) -> None:
    """Saves the index beside `path`, atomically; warns where it cannot."""
    buffer = io.BytesIO()
    offsets, lengths, labels = index
    np.savez(buffer, tag=tag, offsets=offsets, lengths=lengths, labels=labels)
    try:
        _write_atomically(path + INDEX_SUFFIX, buffer.getvalue())
    except OSError as error:
        logging.warning("Cannot save the TFRecord index beside %s (%s); it is rebuilt on every "
                        "start.", path, error)  # fmt: skip


def _write_atomically(path: str, data: bytes) -> None:
    """Writes `path` so that a concurrent reader sees the old file or the new, never half."""
    if "://" in path:  # Object stores replace whole objects atomically.
        import tensorflow as tf

        try:
            with tf.io.gfile.GFile(path, "wb") as f:
                f.write(data)
        except tf.errors.OpError as error:
            raise OSError(error.message) from None
        return
    with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), delete=False) as f:
        f.write(data)
    os.replace(f.name, path)


def scan_file_cached(span: FileSpan, label_key: str) -> tuple[np.ndarray, ...]:
    """The span's part of its file's index: the one saved beside the file when that is
    current, else a fresh `scan_file`, then saved."""
    tag = repr((*_stat(span.path), label_key))
    index = _read_saved_index(span.path, tag)
    if index is None:
        index = scan_file(span.path, label_key)
        _save_index(span.path, tag, index)
    end = None if span.take < 0 else span.skip + span.take
    if end is not None and end > len(index[2]):
        raise ValueError(
            f"TFRecord file {span.path!r} holds {len(index[2])} records, fewer than the {end} "
            "its dataset_info.json promises: restore or rebuild it."
        )
    return tuple(array[span.skip : end] for array in index)


def index_records(
    spans: list[FileSpan], image_key: str, label_key: str, threads: int
) -> tuple[RecordImages, np.ndarray]:
    """Scans the files in parallel: (the records' index, int32 labels), in span order."""
    with concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        scanned = list(pool.map(lambda span: scan_file_cached(span, label_key), spans))
    sizes = [len(labels) for _, _, labels in scanned]
    records = RecordImages(
        paths=tuple(span.path for span in spans),
        file_ids=np.repeat(np.arange(len(spans), dtype=np.int32), sizes),
        offsets=np.concatenate([o for o, _, _ in scanned] or [np.zeros(0, np.int64)]),
        lengths=np.concatenate([n for _, n, _ in scanned] or [np.zeros(0, np.int64)]),
        image_key=image_key,
    )
    labels = np.concatenate([labels for _, _, labels in scanned] or [np.zeros(0, np.int32)])
    return records, labels
