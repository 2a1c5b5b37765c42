"""The workdir and its metric writers: TensorBoard, the log, and a JSON-lines file (process 0
only)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from clu import metric_writers
from clu.metric_writers import interface
from etils import epath


def check_workdir(workdir: str) -> None:
    """Creates `workdir` (local or gs://) and, when local, checks that it takes files."""
    path = epath.Path(workdir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if "://" not in workdir:
            probe = path / f".write_check_{jax.process_index()}"
            probe.write_text("")
            probe.unlink()
    except OSError as e:
        raise NotADirectoryError(
            f"--workdir={workdir} is not a writable directory ({e.strerror or e}): choose "
            "another --workdir or fix its permissions."
        ) from None


class JsonlWriter(interface.MetricWriter):
    """Appends one JSON object per write of scalars: {"step": s, "split/name": value, ...}."""

    def __init__(self, path: str):
        self._file = epath.Path(path).open("a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # A killed run keeps every metric it logged.

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._file.write(json.dumps({"hparams": {k: str(v) for k, v in hparams.items()}}) + "\n")

    def write_images(self, step, images) -> None:
        pass  # Images go to TensorBoard only.

    write_videos = write_audios = write_texts = write_histograms = write_summaries = write_images

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str) -> list[dict]:
    """Reads a metrics.jsonl file back into a list of records (hparams lines skipped)."""
    with epath.Path(path).open() as f:
        return [r for r in map(json.loads, f) if "step" in r]


def create_writer(workdir: str) -> metric_writers.MetricWriter:
    """Log + TensorBoard (workdir/tensorboard) + workdir/metrics.jsonl on process 0; logging elsewhere."""
    if jax.process_index() > 0:
        return metric_writers.MultiWriter([])
    writers = [
        metric_writers.LoggingWriter(),
        metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard")),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
    ]
    return metric_writers.AsyncMultiWriter(writers)
