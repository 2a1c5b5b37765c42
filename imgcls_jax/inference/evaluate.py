"""Evaluates a trained workdir beyond what its run reported: the test split, corruptions of
it at five severities, a few-shot linear probe on frozen features, and further TFDS splits.

    imgcls-evaluate --workdir=WORKDIR                      # test, corruptions, few_shot
    imgcls-evaluate --workdir=WORKDIR --step=latest --weights=trained --suites=test,corruptions \\
        --corruptions=gaussian_noise,contrast --extra_splits=mnist:test

The model is read as `predict` reads it (best step, weight average when kept), the data as
the run read it (its dataset config, kept in the workdir's model.json, the same held-out
validation); the suites take their settings from the run's config.evaluation unless the
flags say otherwise. Prints a table and writes WORKDIR/evaluation_<step>_<weights>.json
(or --out).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

SUITES = ("test", "corruptions", "few_shot")
FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "A workdir of launch.py.", required=True)
    flags.DEFINE_string("step", "best", "'best' (by validation), 'latest' or a saved step.")
    flags.DEFINE_enum("weights", "auto", ["auto", "ema", "trained"], "The weight average "
                      "('auto': when the run kept one) or the trained weights.")  # fmt: skip
    flags.DEFINE_list("suites", list(SUITES), f"Which of {', '.join(SUITES)} to run.")
    flags.DEFINE_string("corruptions", "all", "'all' or corruption names, comma-separated.")
    flags.DEFINE_list("severities", ["1", "2", "3", "4", "5"], "Corruption severities (1-5).")
    flags.DEFINE_integer("corruption_examples", -1, "The first N test examples corrupted; 0: "
                         "all; -1: the run's config.evaluation setting.")  # fmt: skip
    flags.DEFINE_list("extra_splits", [], "TFDS NAME:SPLIT (e.g. mnist:test) whose classes "
                      "are the run's, evaluated as the test split is.")  # fmt: skip
    flags.DEFINE_integer("batch_size", 0, "Images per batch; 0: the run's eval batch size.")
    flags.DEFINE_string("eval_pipeline", None, "Evaluate through this pipeline instead of the "
                        "run's augment.eval, e.g. 'resize(36)' for another resolution (a ViT's "
                        "position embeddings are resampled).")  # fmt: skip
    flags.DEFINE_string(
        "out", "", "The JSON to write; default WORKDIR/evaluation_STEP_WEIGHTS.json."
    )


def evaluation_config(description: dict[str, Any], **overrides) -> ml_collections.ConfigDict:
    """The run's config.evaluation (the base config's for a workdir without one), with
    `overrides` (fields of that section) applied."""
    from imgcls_jax.config import base_config

    config = base_config().evaluation
    config.update(description.get("evaluation", {}))
    config.update(overrides)
    return config


def evaluate(
    trained,
    dataset,
    suite_names: Sequence[str],
    evaluation: ml_collections.ConfigDict,
    batch_size: int,
    extra_splits: dict[str, Any] | None = None,
    devices: list | None = None,
    eval_pipeline: str | None = None,
) -> dict[str, float]:
    """`trained` (a `trained_model.TrainedModel`) on `dataset`: "test/accuracy" (test split,
    else validation), the corruption and few-shot metrics (`evaluation.suites`) and
    "<name>/accuracy" for each of `extra_splits` ({name: Split}), over `devices` (default:
    this process's); through `eval_pipeline` instead of the run's evaluation pipeline when
    given (e.g. another resolution)."""
    from imgcls_jax import augment
    from imgcls_jax.evaluation import suites
    from imgcls_jax.runtime import sharding
    from imgcls_jax.training import trained_model

    unknown = [s for s in suite_names if s not in SUITES]
    if unknown:
        raise ValueError(f"Unknown suite(s) {unknown}: choose from {', '.join(SUITES)}.")
    description = trained.description
    mesh = sharding.make_mesh(devices or jax.local_devices(), 1)
    sharding.check_batch_size(batch_size, mesh, "--batch_size")
    variables = jax.device_put(jax.device_get(trained.variables), sharding.replicated(mesh))
    pipeline = description["eval"] if eval_pipeline is None else eval_pipeline
    stored = (description["image_size"], description["image_size"], description["channels"])
    try:
        augment.eval_output_shape(pipeline, stored)
    except (ValueError, TypeError) as e:
        raise ValueError(f"The evaluation pipeline {pipeline!r} does not fit the model's "
                         f"{stored[0]} px images: {e}") from None  # fmt: skip
    logits_fn = trained_model.logits_fn(trained.model, description, pipeline)
    features_fn = trained_model.features_fn(trained.model, description, pipeline)

    if "corruptions" not in suite_names:
        evaluation = ml_collections.ConfigDict({**evaluation.to_dict(), "corruptions": ""})
    runner = suites.Suites(evaluation, logits_fn, features_fn, mesh, batch_size)
    test = dataset.test if dataset.test is not None else dataset.validation
    results: dict[str, float] = {}
    if "test" in suite_names:
        results["test/accuracy"] = runner.accuracy(variables, test)
    for name, split in (extra_splits or {}).items():
        results[f"{name}/accuracy"] = runner.accuracy(variables, split)
    if "corruptions" in suite_names:
        results.update(runner.corruption_metrics(variables, test))
    if "few_shot" in suite_names:
        results.update(runner.few_shot_metrics(variables, dataset.train, test,
                                               dataset.num_classes))  # fmt: skip
    return results


def load_extra_split(spec: str, description: dict[str, Any]):
    """TFDS split "NAME:SPLIT" decoded as the run's images are (size, channels), its classes
    checked against the run's."""
    from imgcls_jax import data
    from imgcls_jax.data import tfds_source

    name, _, split = spec.partition(":")
    if not name or not split:
        raise ValueError(f"--extra_splits={spec!r} must be a TFDS NAME:SPLIT, e.g. mnist:test.")
    dataset = description["dataset"]
    images, labels, class_names = tfds_source.load_split(
        name, split, dataset["data_dir"], dataset["download"], description["image_size"]
    )
    if class_names and list(class_names) != list(description["class_names"]):
        raise ValueError(f"{spec} has the classes {list(class_names)[:4]}... but the model "
                         f"classifies {description['class_names'][:4]}...: evaluate on a split "
                         "of the same classes in the same order.")  # fmt: skip
    if images.shape[-1] != description["channels"]:
        raise ValueError(f"{spec} has {images.shape[-1]}-channel images, the model takes "
                         f"{description['channels']}.")  # fmt: skip
    return data.Split(np.asarray(images), labels)


def main(argv) -> None:
    del argv
    from imgcls_jax import data
    from imgcls_jax.reporting import markdown
    from imgcls_jax.training import trained_model

    unknown = [s for s in FLAGS.suites if s not in SUITES]
    if unknown:  # Before the model and data are read.
        sys.exit(f"evaluate: unknown suite(s) {unknown} in --suites; choose from "
                 f"{', '.join(SUITES)}.")  # fmt: skip
    try:
        trained = trained_model.load_workdir(FLAGS.workdir, FLAGS.step, FLAGS.weights)
        description = trained.description
        if "dataset" not in description:
            raise ValueError(f"{FLAGS.workdir}/model.json records no dataset config; train the "
                             "workdir with this version of imgcls_jax.")  # fmt: skip
        overrides = {"corruptions": FLAGS.corruptions,
                     "corruption_severities": tuple(int(s) for s in FLAGS.severities)}  # fmt: skip
        if FLAGS.corruption_examples >= 0:
            overrides["corruption_examples"] = FLAGS.corruption_examples
        evaluation = evaluation_config(description, **overrides)
        from imgcls_jax.evaluation import suites

        suites.corruption_names(evaluation.corruptions)  # Before any data is read.
        extra = {spec.replace(":", "_"): load_extra_split(spec, description)
                 for spec in FLAGS.extra_splits}  # fmt: skip
        dataset = data.load_dataset(ml_collections.ConfigDict(description["dataset"]))
        batch_size = FLAGS.batch_size or description.get("eval_batch_size", 500)
        results = evaluate(trained, dataset, FLAGS.suites, evaluation, batch_size, extra,
                           eval_pipeline=FLAGS.eval_pipeline)  # fmt: skip
    except ValueError as e:
        sys.exit(f"evaluate: {e}")
    out = FLAGS.out or os.path.join(FLAGS.workdir,
                                    f"evaluation_{trained.step}_{FLAGS.weights}.json")  # fmt: skip
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"source": trained.source, "results": results}, f, indent=2)
    print(f"# {trained.source}")
    print(markdown.table(["metric", "value"], [[k, f"{v:.4f}"] for k, v in results.items()]))
    print(f"Wrote {out}.")


def run() -> None:
    """The `imgcls-evaluate` command."""
    from imgcls_jax.config import show_flags_in_help

    define_flags()
    show_flags_in_help(__name__)
    app.run(main)


if __name__ == "__main__":
    run()
