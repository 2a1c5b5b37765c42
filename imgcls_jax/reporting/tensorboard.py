"""TensorBoard event files without TensorFlow: scalars, images and hyperparameters written as
TF2's summary ops write them, with the `tensorboard` package's protos and event file writer."""

from __future__ import annotations

import io
import sys
import time
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image
from tensorboard.compat.proto import (
    event_pb2,
    summary_pb2,
    tensor_pb2,
    tensor_shape_pb2,
    types_pb2,
)
from tensorboard.plugins.hparams import summary_v2 as hparams_summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

_HPARAM_TYPES = (bool, int, float, str)
_NO_TENSORFLOW = "tensorboard.compat.notf"  # TensorBoard's switch to its own file API.


def _file_api_for(logdir: str) -> None:
    """TensorBoard's event file writer does its file I/O through TensorFlow's gfile when
    TensorFlow is installed, importing it (seconds at the start of every run); its stub of that
    API writes local files alike. Local logdirs take the stub, unless TensorFlow is already
    loaded; remote ones (gs://) keep TensorFlow's. TensorBoard chooses once per process."""
    if "://" not in logdir and "tensorflow" not in sys.modules:
        sys.modules.setdefault(_NO_TENSORFLOW, types.ModuleType(_NO_TENSORFLOW))


def _metadata(plugin: str) -> summary_pb2.SummaryMetadata:
    return summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name=plugin)
    )


def _png(image: np.ndarray) -> bytes:
    """HWC uint8 (or float in [0, 1]) with 1, 3 or 4 channels as PNG bytes."""
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


class TensorBoardWriter:
    """Writes one event file under `logdir`."""

    def __init__(self, logdir: str):
        _file_api_for(logdir)
        self._events = EventFileWriter(logdir)

    def _add(self, step: int, summary: summary_pb2.Summary) -> None:
        self._events.add_event(event_pb2.Event(step=int(step), wall_time=time.time(),
                                               summary=summary))  # fmt: skip

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        scalar_shape = tensor_shape_pb2.TensorShapeProto()
        values = [
            summary_pb2.Summary.Value(
                tag=tag,
                metadata=_metadata("scalars"),
                tensor=tensor_pb2.TensorProto(
                    dtype=types_pb2.DT_FLOAT,
                    tensor_shape=scalar_shape,
                    float_val=[float(np.asarray(value))],
                ),
            )  # fmt: skip
            for tag, value in scalars.items()
        ]
        self._add(step, summary_pb2.Summary(value=values))

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Each value holds N images, NHWC: one summary of [width, height, PNG...] (TF2's)."""
        values = []
        for tag, batch in images.items():
            batch = np.asarray(batch)
            encoded = [_png(image) for image in batch]
            height, width = batch.shape[1:3]
            shape = tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=2 + len(encoded))]
            )
            tensor = tensor_pb2.TensorProto(
                dtype=types_pb2.DT_STRING, tensor_shape=shape,
                string_val=[str(width).encode(), str(height).encode(), *encoded],
            )  # fmt: skip
            values.append(summary_pb2.Summary.Value(tag=tag, metadata=_metadata("images"),
                                                    tensor=tensor))  # fmt: skip
        self._add(step, summary_pb2.Summary(value=values))

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """For TensorBoard's HParams tab; values that are not bool, int, float or str as str."""
        plain = {k: v if isinstance(v, _HPARAM_TYPES) else str(v) for k, v in hparams.items()}
        self._add(0, hparams_summary.hparams_pb(plain))

    def flush(self) -> None:
        self._events.flush()

    def close(self) -> None:
        self._events.close()
