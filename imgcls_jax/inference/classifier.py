"""A trained, converted or exported model ready to classify image files: its evaluation
preprocessing, its class names, and a function from uint8 images to class probabilities
(the model with its variables, or a StableHLO artifact of `imgcls_jax.inference.export`)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from imgcls_jax.data import decode
from imgcls_jax.training import trained_model

STABLEHLO_FILE = "model.stablehlo"  # In an exported artifact: the serialized program.
ARTIFACT_FILE = "artifact.json"  # Beside it: classes, input, the model it came from.


@dataclasses.dataclass
class Prediction:
    """One image's most probable classes, most probable first; or why it could not be read."""

    path: str
    indices: list[int] = dataclasses.field(default_factory=list)
    names: list[str] = dataclasses.field(default_factory=list)
    probabilities: list[float] = dataclasses.field(default_factory=list)
    error: str = ""


def probabilities_fn(
    model: nn.Module, description: dict[str, Any]
) -> Callable[[dict[str, Any], jax.Array], jax.Array]:
    """(variables, uint8 images [N, image_size, image_size, channels]) -> class probabilities:
    the run's evaluation pipeline, normalisation and the model (`steps.eval_logits`, the
    function evaluation uses), then softmax."""
    logits_fn = trained_model.logits_fn(model, description)
    return lambda variables, images: jax.nn.softmax(logits_fn(variables, images))


class Classifier:
    """Classifies image files: decoded and resized on the host as in training, then
    `probabilities` (on device) in fixed-size batches.

    `description` holds what the host side needs (class names, image size, channels) and,
    for a model with variables, what rebuilds it (its model config, evaluation pipeline,
    normalisation); `variables` is None for an exported artifact."""

    def __init__(
        self,
        probabilities: Callable[[np.ndarray], jax.Array],
        description: dict[str, Any],
        source: str,
        variables: dict[str, Any] | None = None,
    ):
        self.description, self.source, self.variables = description, source, variables
        self.class_names = list(description["class_names"])
        self._probabilities = probabilities

    @classmethod
    def from_model(
        cls, model: nn.Module, variables: dict[str, Any], description: dict[str, Any], source: str
    ) -> Classifier:
        jitted = jax.jit(probabilities_fn(model, description))
        return cls(functools.partial(jitted, variables), description, source, variables)

    @classmethod
    def load(cls, path: str, step: str = "best", weights: str = "auto") -> Classifier:
        """From a training workdir (MODEL_FILE), a converted checkpoint (CONVERTED_FILE) or an
        exported StableHLO artifact (STABLEHLO_FILE)."""
        if trained_model.is_loadable(path):
            return cls.from_trained(trained_model.load(path, step, weights))
        if os.path.exists(os.path.join(path, STABLEHLO_FILE)):
            return cls.from_stablehlo(path)
        raise ValueError(f"{path} holds neither {trained_model.MODEL_FILE} (a workdir of "
                         f"launch.py), {trained_model.CONVERTED_FILE} (a checkpoint of "
                         "imgcls_jax.convert) nor "
                         f"{STABLEHLO_FILE} (an artifact of imgcls_jax.inference.export).")  # fmt: skip

    @classmethod
    def from_trained(cls, trained: trained_model.TrainedModel) -> Classifier:
        return cls.from_model(trained.model, trained.variables, trained.description,
                              trained.source)  # fmt: skip

    @classmethod
    def from_workdir(cls, workdir: str, step: str = "best", weights: str = "auto") -> Classifier:
        """The model trained in `workdir` at `step` with `weights`
        (`trained_model.load_workdir`)."""
        return cls.from_trained(trained_model.load_workdir(workdir, step, weights))

    @classmethod
    def from_converted(cls, directory: str) -> Classifier:
        """A checkpoint of imgcls_jax.convert (`trained_model.load_converted`)."""
        return cls.from_trained(trained_model.load_converted(directory))

    @classmethod
    def from_stablehlo(cls, directory: str) -> Classifier:
        """An artifact of `imgcls_jax.inference.export` (format stablehlo): the serialized
        program, run on this process's first device; no model code or checkpoint is read."""
        with open(os.path.join(directory, ARTIFACT_FILE), encoding="utf-8") as f:
            description = json.load(f)
        with open(os.path.join(directory, STABLEHLO_FILE), "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
        platform = jax.local_devices()[0].platform
        platform = "cuda" if platform == "gpu" else platform
        if platform not in exported.platforms:
            raise ValueError(f"{directory} was exported for {', '.join(exported.platforms)}, not "
                             f"{platform}: export again with --platforms={platform}.")  # fmt: skip
        return cls(jax.jit(exported.call), description, f"{directory} ({description['source']})")

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of uint8 [N, image_size, image_size, channels] images."""
        return np.asarray(self._probabilities(images))

    def decode(self, path: str) -> np.ndarray:
        """`path` decoded as in training; raises ValueError naming the file if unreadable."""
        mode = "RGB" if self.description["channels"] == 3 else "L"
        image = decode.decode_named(path, path, self.description["image_size"], mode)
        if image is None:
            raise ValueError(f"Cannot read image {path}")
        return image

    def classify(self, paths: Sequence[str], top: int, batch_size: int = 64) -> list[Prediction]:
        """Per path, its `top` classes, or why it could not be read (the others are still
        classified). Batches are padded to `batch_size`, so one compiled program serves all."""
        results: list[Prediction] = []
        size, channels = self.description["image_size"], self.description["channels"]
        with concurrent.futures.ThreadPoolExecutor() as pool:
            for start in range(0, len(paths), batch_size):
                chunk = paths[start : start + batch_size]
                decoded = list(pool.map(_or_error(self.decode), chunk))
                images = np.zeros((batch_size, size, size, channels), np.uint8)
                readable = [i for i, d in enumerate(decoded) if not isinstance(d, str)]
                for row, i in enumerate(readable):
                    images[row] = decoded[i]
                probabilities = self.probabilities(images) if readable else None
                rows = dict(zip(readable, range(len(readable)), strict=True))
                for i, path in enumerate(chunk):
                    if i not in rows:
                        results.append(Prediction(path, error=decoded[i]))
                        continue
                    probs = probabilities[rows[i]]
                    best = np.argsort(-probs, kind="stable")[:top].tolist()
                    results.append(Prediction(path, best, [self.class_names[j] for j in best],
                                              [float(probs[j]) for j in best]))  # fmt: skip
        return results


def _or_error(decode: Callable[[str], np.ndarray]) -> Callable[[str], np.ndarray | str]:
    def decode_or_error(path: str) -> np.ndarray | str:
        try:
            return decode(path)
        except ValueError as e:  # UnsupportedImageError included.
            return str(e)

    return decode_or_error
