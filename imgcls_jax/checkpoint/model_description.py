"""What a trained workdir's model needs for inference, written beside its checkpoints: the
model config, class names, input size and the evaluation preprocessing."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import ml_collections
from etils import epath

MODEL_FILE = "model.json"  # In a training workdir: what `Classifier.from_workdir` needs.


def describe(
    config: ml_collections.ConfigDict,
    class_names: Sequence[str],
    image_shape: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
) -> dict[str, Any]:
    """What a trained workdir's model needs for inference (written to MODEL_FILE)."""
    return {
        # The checkpoints hold a weight average (an EMA, or schedule-free's average).
        "ema": config.training.ema_decay > 0 or config.optimizer.name == "schedule_free",
        "model": config.model.to_dict(),
        "class_names": list(class_names),
        "image_size": int(image_shape[0]),  # Host: shorter side to this, centre square.
        "channels": int(image_shape[-1]),
        "eval": config.augment.eval,  # Then on device, as in evaluation.
        "eval_flip_tta": bool(config.augment.eval_flip_tta),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        # What `imgcls-evaluate` reads the run's data and suites with.
        "dataset": config.dataset.to_dict(),
        "evaluation": config.evaluation.to_dict(),
        "eval_batch_size": config.input.eval_batch_size,
    }


def write_description(workdir: str, description: dict[str, Any]) -> None:
    with epath.Path(workdir, MODEL_FILE).open("w") as f:
        json.dump(description, f, indent=2)
