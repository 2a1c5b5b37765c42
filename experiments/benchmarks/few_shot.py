"""Benchmark: how long the few-shot probe takes, end to end (goal: under a minute here).

The probe of config.evaluation as a run makes it (`evaluation.suites.Suites.few_shot_metrics`):
pre-logit features of --train_examples train images and of --test_examples test images
through a ResNet-20 (width 16, random weights: the cost does not depend on them), then the
ridge probe for k = 1, 5, 10, 25 shots per class and 3 draws each. Fashion-MNIST from
Debian's files when installed, else synthetic images of its shape. Every figure includes
compiling (a run pays it once per process).

    python -m experiments.benchmarks.few_shot

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import functools
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("train_examples", 5000, "Train images whose features the probe draws from.")
flags.DEFINE_integer("test_examples", 10_000, "Test images scored.")
flags.DEFINE_integer("batch_size", 500, "Evaluation batch size.")
common.define_out("experiments/results/benchmarks/few_shot.json")


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from imgcls_jax import data, models
    from imgcls_jax.config import base_config
    from imgcls_jax.data import fashion_mnist_files
    from imgcls_jax.evaluation import suites
    from imgcls_jax.reporting import markdown
    from imgcls_jax.runtime import sharding
    from imgcls_jax.training import steps

    if fashion_mnist_files.available():
        train, test = (data.Split(*fashion_mnist_files.load_split(s)) for s in ("train", "test"))
        source = "Fashion-MNIST"
    else:
        rng = np.random.default_rng(0)
        train, test = (data.Split(rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
                                  rng.integers(0, 10, n).astype(np.int32))
                       for n in (60_000, 10_000))  # fmt: skip
        source = "synthetic 28x28x1"
    test = data.Split(test.images[: FLAGS.test_examples], test.labels[: FLAGS.test_examples])
    model = models.build("resnet20", num_classes=10, width=16)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    features_fn = functools.partial(steps.eval_features, model=model, preprocess_fn=lambda x: x,
                                    mean=(0.2860,), std=(0.3530,))  # fmt: skip

    evaluation = base_config().evaluation
    evaluation.few_shot_train_examples = FLAGS.train_examples
    mesh = sharding.make_mesh()
    sharding.check_batch_size(FLAGS.batch_size, mesh, "--batch_size")
    runner = suites.Suites(evaluation, None, features_fn, mesh, FLAGS.batch_size)
    variables = jax.device_put(variables, sharding.replicated(mesh))
    start = time.perf_counter()
    results = runner.few_shot_metrics(variables, train, test, 10)
    total = time.perf_counter() - start
    pool = data.subset(train, FLAGS.train_examples, suites.FEW_SHOT_DRAW_SEED)
    start = time.perf_counter()
    runner.features(variables, pool), runner.features(variables, test)
    features_s = time.perf_counter() - start  # Compiled by now: the features' share.
    rows = [["features + probe, first call (compiling included)", f"{total:.1f}"],
            ["of which features (measured again, compiled)", f"{features_s:.1f}"]]  # fmt: skip
    print(f"{source}: features of {FLAGS.train_examples} train + {len(test)} test images "
          f"(ResNet-20 w16, batch {FLAGS.batch_size}, {jax.device_count()} x "
          f"{jax.devices()[0].platform}); shots {tuple(evaluation.few_shot_shots)}, "
          f"{evaluation.few_shot_seeds} draws each")  # fmt: skip
    print(markdown.table(["", "seconds"], rows))
    common.write_result(FLAGS.out, {
        "data": source, "train_examples": FLAGS.train_examples, "test_examples": len(test),
        "model": "resnet20 (w16), random weights", "batch_size": FLAGS.batch_size,
        "shots": list(evaluation.few_shot_shots), "draws": evaluation.few_shot_seeds,
        "total_s": round(total, 2), "features_s": round(features_s, 2), "goal_s": 60,
        "results": results,
    })  # fmt: skip


if __name__ == "__main__":
    app.run(main)
