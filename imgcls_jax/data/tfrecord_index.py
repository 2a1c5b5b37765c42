"""Random access to the images in TFDS's TFRecord files, through an index of record offsets.

Building the index reads every record once (for its label). Each file's part is cached under
~/.cache/imgcls_jax/tfrecord_index, keyed by the file's path, size and modification time, so
a restart on the same host reads no record again.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import os
import pathlib
import struct
import tempfile

import numpy as np

# A record: uint64 length, uint32 masked CRC of the length, the data, uint32 masked CRC of it.
_HEADER = struct.Struct("<QI")
_FOOTER_SIZE = 4


@dataclasses.dataclass(frozen=True)
class FileSpan:
    """Records [skip, skip + take) of one TFRecord file (take -1: to the end)."""

    path: str
    skip: int = 0
    take: int = -1


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "imgcls_jax" / "tfrecord_index"


def _stat(path: str) -> tuple[int, float]:
    """(size, modification time) of a local or remote file."""
    if "://" in path:
        import tensorflow as tf

        stat = tf.io.gfile.stat(path)
        return stat.length, stat.mtime_nsec / 1e9
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime


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


def scan_file(span: FileSpan, label_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Reads one file once: (data offsets int64, data lengths int64, labels int32) of its span."""
    offsets, lengths, labels = [], [], []
    with _open(span.path) as f:
        position, index = 0, 0
        while span.take < 0 or index < span.skip + span.take:
            header = f.read(_HEADER.size)
            if not header:
                break
            where = f"TFRecord file {span.path!r}, record {index}"
            if len(header) < _HEADER.size:
                raise ValueError(f"{where} is truncated: restore or rebuild the file.")
            (length, _) = _HEADER.unpack(header)
            data = f.read(length)
            if len(data) < length or len(f.read(_FOOTER_SIZE)) < _FOOTER_SIZE:
                raise ValueError(f"{where} is truncated: restore or rebuild the file.")
            if index >= span.skip:
                example = _parse_example(data, where)
                offsets.append(position + _HEADER.size)
                lengths.append(length)
                labels.append(_feature(example, label_key, "int64_list", where))
            position += _HEADER.size + length + _FOOTER_SIZE
            index += 1
    if span.take >= 0 and len(labels) < span.take:
        raise ValueError(
            f"TFRecord file {span.path!r} holds {index} records, fewer than the "
            f"{span.skip + span.take} its dataset_info.json promises: restore or rebuild it."
        )
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


def scan_file_cached(span: FileSpan, label_key: str) -> tuple[np.ndarray, ...]:
    """`scan_file`, read back from the cache when the file is unchanged since it was scanned."""
    identity = repr((os.path.abspath(span.path) if "://" not in span.path else span.path,
                     *_stat(span.path), span.skip, span.take, label_key))  # fmt: skip
    cached = _cache_dir() / f"{hashlib.sha256(identity.encode()).hexdigest()[:32]}.npz"
    if cached.exists():
        with np.load(cached) as saved:
            return saved["offsets"], saved["lengths"], saved["labels"]
    offsets, lengths, labels = scan_file(span, label_key)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".npz", delete=False) as f:
        np.savez(f, offsets=offsets, lengths=lengths, labels=labels)
    os.replace(f.name, cached)  # Atomic: a concurrent reader never sees half a file.
    return offsets, lengths, labels


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
