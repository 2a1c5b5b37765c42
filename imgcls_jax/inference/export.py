"""Ship a trained workdir (best, latest or a step; average or trained weights) or a converted
checkpoint in another form:

    python -m imgcls_jax.inference.export --checkpoint=WORKDIR --format=stablehlo --out=DIR
    python -m imgcls_jax.inference.export --checkpoint=WORKDIR --format=timm --out=DIR
    python -m imgcls_jax.inference.export --checkpoint=WORKDIR --format=onnx --out=DIR

- stablehlo: `jax.export` of uint8 images [batch, size, size, channels] -> class
  probabilities (the run's evaluation pipeline, normalisation, the model, softmax), with a
  symbolic batch size, lowered for CPU, CUDA and TPU in one artifact (model.stablehlo) and
  artifact.json beside it (classes, input, the run). `predict --checkpoint=DIR` runs it
  without the model's code; so does any JAX process (docs/export.md).
- timm: model.safetensors in the PyTorch layout our converter reads (timm/torchvision keys
  for ResNets and ViTs, efficientnet-lite-pytorch's for EfficientNet-Lite) and, where timm
  has the architecture, the config.json timm reads.
- onnx: model.onnx through jax2onnx (same function as stablehlo, float inputs in [0, 255]),
  checked against onnxruntime before it is kept.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags

from imgcls_jax import models
from imgcls_jax.inference.classifier import (
    ARTIFACT_FILE,
    STABLEHLO_FILE,
    Classifier,
    probabilities_fn,
)
from imgcls_jax.kernels import XLA

FORMATS = ("stablehlo", "timm", "onnx")
PLATFORMS = ("cpu", "cuda", "tpu")
ONNX_FILE = "model.onnx"
ONNX_TOLERANCE = 1e-4  # Largest probability difference onnxruntime may show.


def host_description(classifier: Classifier) -> dict[str, Any]:
    """What a caller of an exported model needs to feed it: classes, input size and channels,
    and how the host prepares an image."""
    d = classifier.description
    return {
        "class_names": classifier.class_names,
        "image_size": d["image_size"],
        "channels": d["channels"],
        "input": f"uint8 [batch, {d['image_size']}, {d['image_size']}, {d['channels']}]",
        "host_preprocessing": "decode, shorter side resized to image_size (bilinear), centre "
        "square crop (imgcls_jax.data.decode)",
        "output": f"float32 [batch, {len(classifier.class_names)}]: class probabilities",
        "source": classifier.source,
    }


def portable_model(classifier: Classifier, dtype: str = "auto") -> Any:
    """The classifier's model on XLA's own kernels (no custom calls, so every platform can
    run it), computing in `dtype`: "auto" keeps the run's dtype unless it was "auto" itself,
    which becomes float32."""
    fields = dict(classifier.description["model"])
    if dtype == "auto":
        dtype = fields["dtype"] if fields["dtype"] != "auto" else "float32"
    return models.build_model(fields, len(classifier.class_names), XLA, dtype=dtype)


def export_stablehlo(
    classifier: Classifier,
    directory: str,
    platforms: Sequence[str] = PLATFORMS,
    dtype: str = "auto",
) -> dict[str, Any]:
    """Writes DIRECTORY/model.stablehlo and DIRECTORY/artifact.json; returns the latter."""
    d = classifier.description
    function = probabilities_fn(portable_model(classifier, dtype), d)
    variables = classifier.variables

    def probabilities(images: jax.Array) -> jax.Array:
        return function(variables, images)  # The weights become constants of the program.

    (batch,) = jax.export.symbolic_shape("batch")
    images = jax.ShapeDtypeStruct((batch, d["image_size"], d["image_size"], d["channels"]),
                                  np.uint8)  # fmt: skip
    exported = jax.export.export(jax.jit(probabilities), platforms=tuple(platforms))(images)
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, STABLEHLO_FILE), "wb") as f:
        f.write(exported.serialize())
    artifact = {"format": "stablehlo", "platforms": list(exported.platforms),
                "jax_version": jax.__version__, **host_description(classifier)}  # fmt: skip
    with open(os.path.join(directory, ARTIFACT_FILE), "w", encoding="utf-8") as f:
        json.dump(artifact, f, indent=2)
    return artifact


def export_timm(classifier: Classifier, directory: str) -> list[str]:
    """Writes DIRECTORY/model.safetensors (and config.json where timm has the architecture);
    returns the files written."""
    from safetensors.numpy import save_file

    from imgcls_jax.convert import to_torch

    fields = classifier.description["model"]
    tensors = to_torch.torch_tensors(fields["name"], jax.device_get(classifier.variables))
    os.makedirs(directory, exist_ok=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()},
              os.path.join(directory, to_torch.WEIGHTS_FILE))  # fmt: skip
    written = [to_torch.WEIGHTS_FILE]
    d = classifier.description
    config = to_torch.timm_config(fields, classifier.class_names, d["mean"], d["std"],
                                  _model_input_size(d), d["channels"])  # fmt: skip
    if config is not None:
        with open(os.path.join(directory, to_torch.CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
        written.append(to_torch.CONFIG_FILE)
    return written


def _model_input_size(description: dict[str, Any]) -> int:
    """The side of the images the model itself sees (after the evaluation pipeline)."""
    from imgcls_jax import augment

    stored = (description["image_size"], description["image_size"], description["channels"])
    return int(augment.eval_output_shape(description["eval"], stored)[0])


def export_onnx(
    classifier: Classifier, directory: str, check_images: np.ndarray, dtype: str = "auto"
) -> str:
    """Writes DIRECTORY/model.onnx (float32 images in [0, 255] -> probabilities, dynamic
    batch) after checking it with onnxruntime on `check_images` (uint8) against the model
    in JAX; raises ValueError naming what jax2onnx or onnxruntime refused."""
    try:
        import onnxruntime
        from jax2onnx import to_onnx
    except ImportError as e:
        raise ValueError(f"ONNX export needs jax2onnx and onnxruntime ({e}): see docs/export.md "
                         "for the install line.") from None  # fmt: skip
    d = classifier.description
    function = probabilities_fn(portable_model(classifier, dtype), d)
    variables = classifier.variables
    size, channels = d["image_size"], d["channels"]
    try:
        model = to_onnx(lambda images: function(variables, images),
                        [("batch", size, size, channels)], return_mode="proto")  # fmt: skip
    except Exception as e:  # jax2onnx names the JAX primitive it has no rule for.
        raise ValueError(f"jax2onnx cannot convert {d['model']['name']}: "
                         f"{type(e).__name__}: {str(e).splitlines()[0]}") from None  # fmt: skip
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, ONNX_FILE)
    with open(path + ".unchecked", "wb") as f:
        f.write(model.SerializeToString())
    expected = np.asarray(jax.jit(lambda images: function(variables, images))(check_images))
    try:
        session = onnxruntime.InferenceSession(path + ".unchecked")
        name = session.get_inputs()[0].name
        got = session.run(None, {name: check_images.astype(np.float32)})[0]
    except Exception as e:  # onnxruntime's own error types; the artifact is not kept.
        os.remove(path + ".unchecked")
        reason = str(e).splitlines()[0].split(".unchecked failed:", 1)[-1]  # Not the temp file.
        raise ValueError(f"onnxruntime cannot run the ONNX model of {d['model']['name']}: "
                         f"{reason}; the stablehlo and timm formats work.") from None  # fmt: skip
    error = float(np.abs(got - expected).max())
    if error > ONNX_TOLERANCE:
        os.remove(path + ".unchecked")
        raise ValueError(f"The ONNX model of {d['model']['name']} differs from the model by "
                         f"{error:.2g} in probability (> {ONNX_TOLERANCE}); not written.")  # fmt: skip
    os.replace(path + ".unchecked", path)
    with open(os.path.join(directory, ARTIFACT_FILE), "w", encoding="utf-8") as f:
        json.dump({"format": "onnx", "input": f"float32 [batch, {size}, {size}, {channels}] in "
                   "[0, 255]", "onnxruntime_max_error": error,
                   **{k: v for k, v in host_description(classifier).items() if k != "input"}},
                  f, indent=2)  # fmt: skip
    return path


FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags (defined when it runs, so that importing this module defines none)."""
    flags.DEFINE_string("checkpoint", None, "A workdir of launch.py or a converted checkpoint.")
    flags.DEFINE_enum("format", "stablehlo", FORMATS, "What to write.")
    flags.DEFINE_string("out", None, "Output directory.")
    flags.DEFINE_string("step", "best", "Workdirs: 'best' (by validation), 'latest' or a step.")
    flags.DEFINE_enum("weights", "auto", ["auto", "ema", "trained"], "Workdirs: the weight "
                      "average ('auto': when the run kept one) or the trained weights.")  # fmt: skip
    flags.DEFINE_list("platforms", list(PLATFORMS), "stablehlo: platforms to lower for.")
    flags.DEFINE_enum("dtype", "auto", ["auto", "float32", "bfloat16"], "stablehlo and onnx: "
                      "compute dtype ('auto': the run's, float32 when it chose per device).")  # fmt: skip
    flags.mark_flags_as_required(["checkpoint", "out"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    unknown = sorted(set(FLAGS.platforms) - set(PLATFORMS))
    if unknown:
        sys.exit(f"export: --platforms: {', '.join(unknown)} not in {', '.join(PLATFORMS)}.")
    try:
        classifier = Classifier.load(FLAGS.checkpoint, FLAGS.step, FLAGS.weights)
        if classifier.variables is None:
            raise ValueError(f"{FLAGS.checkpoint} is already an exported artifact; export the "
                             "workdir or converted checkpoint it came from.")  # fmt: skip
        if FLAGS.format == "stablehlo":
            export_stablehlo(classifier, FLAGS.out, FLAGS.platforms, FLAGS.dtype)
            written = [STABLEHLO_FILE, ARTIFACT_FILE]
        elif FLAGS.format == "timm":
            written = export_timm(classifier, FLAGS.out)
        else:
            d = classifier.description
            check = np.random.default_rng(0).integers(
                0, 256, (4, d["image_size"], d["image_size"], d["channels"]), dtype=np.uint8
            )
            written = [os.path.basename(export_onnx(classifier, FLAGS.out, check, FLAGS.dtype)),
                       ARTIFACT_FILE]  # fmt: skip
    except ValueError as e:
        sys.exit(f"export: {e}")
    print(f"Exported {classifier.source} as {FLAGS.format}: "
          f"{', '.join(os.path.join(FLAGS.out, w) for w in written)}")  # fmt: skip


def run() -> None:
    """The `imgcls-export` command."""
    from imgcls_jax.config import show_flags_in_help

    define_flags()
    show_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
