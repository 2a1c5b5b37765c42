"""The workdir and its metric writers: TensorBoard, the log, and a JSON-lines file (process 0
only), written from a background thread; progress reports. None of it needs TensorFlow (CLU's
metric writers import it)."""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from etils import epath

from imgcls_jax.reporting.tensorboard import TensorBoardWriter


class MetricWriter:
    """Where a run's scalars, images and hyperparameters go; this one drops them."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        pass

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        pass

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


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


class LoggingWriter(MetricWriter):
    """Scalars to the log, one line per write."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = ", ".join(f"{k}={float(np.asarray(v)):.6g}" for k, v in sorted(scalars.items()))
        logging.info("[%d] %s", step, values)

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        logging.info("Hyperparameters: %s", dict(hparams))


class JsonlWriter(MetricWriter):
    """Appends one JSON object per write of scalars: {"step": s, "split/name": value, ...}."""

    def __init__(self, path: str):
        self._file = epath.Path(path).open("a")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        record = {"step": int(step), **{k: float(np.asarray(v)) for k, v in scalars.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()  # A killed run keeps every metric it logged.

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._file.write(json.dumps({"hparams": {k: str(v) for k, v in hparams.items()}}) + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_metrics(path: str) -> list[dict]:
    """Reads a metrics.jsonl file back into a list of records (hparams lines skipped)."""
    with epath.Path(path).open() as f:
        return [r for r in map(json.loads, f) if "step" in r]


class AsyncMultiWriter(MetricWriter):
    """Each write goes to every writer, in order, on one background thread, so that the loop
    does not wait for files; `flush` and `close` wait for the writes and raise their errors."""

    def __init__(self, writers: Sequence[MetricWriter]):
        self._writers = list(writers)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self._pending: list[concurrent.futures.Future] = []

    def _submit(self, method: str, *args) -> None:
        for writer in self._writers:
            self._pending.append(self._executor.submit(getattr(writer, method), *args))

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        # Device values become host numbers here: the loop may donate their buffers.
        self._submit("write_scalars", step, {k: np.asarray(v) for k, v in scalars.items()})

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        self._submit("write_images", step, {k: np.asarray(v) for k, v in images.items()})

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        self._submit("write_hparams", dict(hparams))

    def flush(self) -> None:
        self._submit("flush")
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        try:
            self.flush()
            for writer in self._writers:
                writer.close()
        finally:
            self._executor.shutdown()


def create_writer(workdir: str) -> MetricWriter:
    """Log + TensorBoard (workdir/tensorboard) + workdir/metrics.jsonl on process 0; nothing
    elsewhere."""
    if jax.process_index() > 0:
        return MetricWriter()
    writers = [
        LoggingWriter(),
        TensorBoardWriter(os.path.join(workdir, "tensorboard")),
        JsonlWriter(os.path.join(workdir, "metrics.jsonl")),
    ]
    return AsyncMultiWriter(writers)


class ProgressReporter:
    """Every `every_steps` steps: the train steps per second since the last report (the first
    report starts after the first step, so compiling is not counted) to `writer` as
    "steps_per_sec", and the progress with the time left to the log."""

    def __init__(self, total_steps: int, every_steps: int, writer: MetricWriter):
        self._total, self._every, self._writer = total_steps, every_steps, writer
        self._last: tuple[int, float] | None = None  # (step, time) of the last report.

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last is None:
            self._last = step, now
            return
        if step % self._every:
            return
        last_step, last_time = self._last
        rate = (step - last_step) / max(now - last_time, 1e-9)
        self._last = step, now
        self._writer.write_scalars(step, {"steps_per_sec": rate})
        left = (self._total - step) / rate
        logging.info("Step %d of %d (%.1f%%), %.2f steps/s, %.0f s left.", step, self._total,
                     100 * step / self._total, rate, left)  # fmt: skip
