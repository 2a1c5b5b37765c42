"""Benchmark: what on-device corruptions (imgcls_jax.evaluation.corruptions) add to evaluation.

Question: does corrupting the test images inside the jitted evaluation add under 20% to the
clean evaluation's time? Each variant evaluates the same --num_images synthetic images in
batches of --batch_size: normalise, ResNet-20 forward (random weights), argmax; the corrupted
variants apply `corrupt` first, at a traced severity that cycles 1..5 over the batches (one
program per corruption). Variants run in interleaved rounds; the median round counts.

    python -m experiments.benchmarks.corruptions                 # 10,000 28x28x1, batch 500
    python -m experiments.benchmarks.corruptions --image_size=32 --channels=3 --rounds=1

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
common.define_synthetic_images(28, 1, 10)
flags.DEFINE_integer("num_images", 10_000, "Images evaluated per variant per round.")
flags.DEFINE_integer("batch_size", 500, "Evaluation batch size.")
flags.DEFINE_string("model", "resnet20", "Registered model name.")
flags.DEFINE_integer("width", 16, "Model width.")
flags.DEFINE_list("corruptions", [], "Corruptions to time; empty: all of corruptions.NAMES.")
common.define_rounds(5)
common.define_out("experiments/results/benchmarks/corruptions.json")

# Fashion-MNIST's statistics (configs/resnet.py), repeated for every channel.
MEAN, STD = 0.2860, 0.3530


def build_evaluate(model, corruption: str | None):
    """A jitted (variables, uint8 images, indices, severity) -> predicted classes."""
    import jax
    import jax.numpy as jnp

    from imgcls_jax.evaluation.corruptions import corrupt

    @jax.jit
    def evaluate(variables, images, indices, severity):
        images = images.astype(jnp.float32)
        if corruption is not None:
            images = corrupt(images, indices, corruption, severity, seed=0)
        logits = model.apply(variables, (images - 255 * MEAN) / (255 * STD))
        return jnp.argmax(logits, axis=-1)

    return evaluate


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from imgcls_jax import models
    from imgcls_jax.evaluation import corruptions
    from imgcls_jax.reporting import markdown

    names = FLAGS.corruptions or list(corruptions.NAMES)
    shape = (FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (FLAGS.num_images, *shape), dtype=np.uint8)
    starts = range(0, FLAGS.num_images - FLAGS.batch_size + 1, FLAGS.batch_size)
    batches = [(jax.device_put(images[s : s + FLAGS.batch_size]),
                jax.device_put(np.arange(s, s + FLAGS.batch_size, dtype=np.int32)),
                jax.device_put(np.int32(b % corruptions.SEVERITIES + 1)))
               for b, s in enumerate(starts)]  # fmt: skip
    model = models.build(FLAGS.model, num_classes=FLAGS.num_classes, width=FLAGS.width)
    variables = model.init(jax.random.key(0), jnp.zeros((1, *shape)))

    runs = []
    for name in [None, *names]:
        evaluate = build_evaluate(model, name)
        start = time.perf_counter()
        jax.block_until_ready(evaluate(variables, *batches[0]))
        runs.append({"name": name or "clean", "evaluate": evaluate,
                     "compile_s": time.perf_counter() - start, "pass_s": []})  # fmt: skip
    for _ in range(FLAGS.rounds):
        for run in runs:
            start = time.perf_counter()
            jax.block_until_ready([run["evaluate"](variables, *batch) for batch in batches])
            run["pass_s"].append(time.perf_counter() - start)

    evaluated = len(batches) * FLAGS.batch_size
    clean = statistics.median(runs[0]["pass_s"])
    rows = [{
        "corruption": run["name"], "eval_s": round(statistics.median(run["pass_s"]), 3),
        "img_per_s": round(evaluated / statistics.median(run["pass_s"]), 1),
        "overhead": round(statistics.median(run["pass_s"]) / clean - 1, 4),
        "compile_s": round(run["compile_s"], 2), "rounds_s": [round(t, 3) for t in run["pass_s"]],
    } for run in runs]  # fmt: skip
    print(f"{FLAGS.model} (w{FLAGS.width}), {evaluated} images {'x'.join(map(str, shape))}, batch "
          f"{FLAGS.batch_size}, {jax.device_count()} x {jax.devices()[0].platform}; median of "
          f"{FLAGS.rounds} rounds; severity cycles 1..5 over the batches")  # fmt: skip
    print(markdown.table(
        ["corruption", "eval s", "img/s", "vs clean", "compile s"],
        [[r["corruption"], f"{r['eval_s']:.2f}", f"{r['img_per_s']:.0f}",
          "-" if r["corruption"] == "clean" else f"{r['overhead']:+.1%}",
          f"{r['compile_s']:.1f}"] for r in rows],
    ))  # fmt: skip
    common.write_result(FLAGS.out, {
        "model": FLAGS.model, "width": FLAGS.width, "num_images": evaluated,
        "batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size,
        "channels": FLAGS.channels, "rounds": FLAGS.rounds,
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "target_overhead": 0.2, "rows": rows,
    })  # fmt: skip


if __name__ == "__main__":
    app.run(main)
