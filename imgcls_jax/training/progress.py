"""Typed records of the loop: `Progress` (saved with every checkpoint) and `Evaluation`
(one evaluation of a split)."""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np

# Kept across checkpoints but not results of the run.
_BOOKKEEPING = ("dataset", "global_batch", "sent_back_to")


@dataclasses.dataclass
class Progress:
    """What a run carries from checkpoint to checkpoint besides its state: the best
    validation value and its step, evaluations without improvement, whether training stopped
    early, rewinds made, and what resuming checks (the dataset's fingerprint, the global
    batch, the step a relaunch was sent back to)."""

    best_metric: float = -math.inf
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    rewinds: int = 0
    dataset: dict[str, Any] | None = None
    global_batch: int | None = None
    sent_back_to: int | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON record a checkpoint saves (fields left unset are left out)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Progress:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in names})

    def go_back_to(self, record: dict[str, Any]) -> None:
        """Takes the fields of an older step's saved `record` (a rewind), keeping the count
        of rewinds."""
        rewinds = self.rewinds
        vars(self).update(vars(Progress.from_record(record)), rewinds=rewinds)

    def results(self) -> dict[str, Any]:
        """The fields a run's results report."""
        return {k: v for k, v in self.to_record().items() if k not in _BOOKKEEPING}

    def record_validation(self, value: float, step: int, metric: str, patience: int) -> None:
        """Tracks the best validation `value` (of `metric`), its step, and early stopping
        after `patience` evaluations without improvement (0: never)."""
        if value > self.best_metric:
            self.best_metric, self.best_step, self.evals_without_improvement = value, step, 0
        else:
            self.evals_without_improvement += 1
        if patience and self.evals_without_improvement >= patience:
            self.stopped_early = True
            logging.info("Early stop at step %d: %s has not improved for %d evaluations.",
                         step, metric, patience)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """One evaluation of a split: its step, its metrics (keyed `split/name`) and the trained
    weights' [true, predicted] counts."""

    step: int
    metrics: dict[str, float]
    confusion: np.ndarray
