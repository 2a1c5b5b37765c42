"""Benchmark: what exporting costs and what the StableHLO artifact gives back.

Questions: does exporting a ResNet-50 (224 px, 1,000 classes) take under 60 s here, per
format? Is the StableHLO artifact of the Fashion-MNIST ResNet-20 preset under 2x the size of
its weights? Is loading it and classifying 100 images (`predict --checkpoint=ARTIFACT`) at
least as fast as `predict` on the workdir? Every figure is the wall time of the command a
user runs, in its own process (interpreter start and JAX import included), the two predict
commands interleaved over --rounds.

    python -m experiments.benchmarks.export                 # trains the ResNet-20 run if missing
    python -m experiments.benchmarks.export --rounds=1 --images=20 --resnet50=false

The ResNet-50 is a converted checkpoint of random weights in torchvision's layout
(tests/torch_resnet.py): the same tensors and program as trained weights. Prints a table and
writes JSON to --out.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "/tmp/export_bench/resnet20", "The ResNet-20 preset's run "
                    "(trained for --train_steps steps when it holds no checkpoint).")  # fmt: skip
flags.DEFINE_integer("train_steps", 200, "Steps of the ResNet-20 run when it is trained here.")
flags.DEFINE_integer("images", 100, "Fashion-MNIST test images that predict classifies.")
common.define_rounds(3)
flags.DEFINE_bool("resnet50", True, "Also time exporting a ResNet-50 in every format.")
common.define_out("experiments/results/benchmarks/export.json")


def timed(command: list[str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    return time.perf_counter() - start, run


def export_command(checkpoint: str, out: str, fmt: str) -> list[str]:
    return [sys.executable, "-m", "imgcls_jax.inference.export", f"--checkpoint={checkpoint}",
            f"--out={out}", f"--format={fmt}"]  # fmt: skip


def resnet50_checkpoint(directory: str) -> str:
    """A converted ResNet-50 (random weights in torchvision's layout) in `directory`."""
    from imgcls_jax import convert
    from tests import torch_resnet

    reference = torch_resnet.randomize(torch_resnet.build("resnet50", 1000))
    tensors = {k: v.numpy() for k, v in reference.state_dict().items()}
    variables, classes = convert.convert_model("resnet50", tensors, 64, "imagenet", 224)
    size, mean, std = convert.default_preprocessing("resnet50")
    convert.save_pretrained(directory, variables, {
        "architecture": "resnet50", "width": 64, "stem": "imagenet", "num_classes": classes,
        "input_size": size, "mean": mean.tolist(), "std": std.tolist(), "class_names": [],
        "source": "random weights (tests/torch_resnet.py)", "source_sha256": "",
    })  # fmt: skip
    return directory


def time_resnet50_exports(root: str) -> list[dict]:
    checkpoint = resnet50_checkpoint(os.path.join(root, "resnet50"))
    rows = []
    for fmt in ("stablehlo", "timm", "onnx"):
        seconds, run = timed(export_command(checkpoint, os.path.join(root, f"r50_{fmt}"), fmt))
        outcome = "ok" if run.returncode == 0 else (run.stderr.strip().splitlines() or ["?"])[-1]
        rows.append({"model": "resnet50", "format": fmt, "seconds": round(seconds, 1),
                     "outcome": outcome})  # fmt: skip
    return rows


def ensure_resnet20_run(workdir: str) -> None:
    if os.path.isdir(os.path.join(workdir, "checkpoints")):
        return
    command = [sys.executable, "launch.py", "--config=configs/resnet.py", f"--workdir={workdir}",
               f"--config.training.num_train_steps={FLAGS.train_steps}"]  # fmt: skip
    run = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if run.returncode != 0:
        sys.exit(f"Training {workdir} failed: {run.stderr.strip().splitlines()[-1]}")


def test_images(directory: str, count: int) -> str:
    """The first `count` Fashion-MNIST test images as PNG files in `directory`."""
    from PIL import Image

    from imgcls_jax.data import fashion_mnist_files

    images, _ = fashion_mnist_files.load_split("test")
    os.makedirs(directory, exist_ok=True)
    for i, image in enumerate(images[:count]):
        Image.fromarray(np.squeeze(image)).save(os.path.join(directory, f"{i:03d}.png"))
    return directory


def directory_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


def weight_bytes(workdir: str) -> int:
    import jax

    from imgcls_jax.inference.classifier import Classifier

    classifier = Classifier.load(workdir)
    return sum(np.asarray(x).nbytes for x in jax.tree.leaves(classifier.variables))


def main(argv):
    del argv
    root = tempfile.mkdtemp(prefix="export_bench_")
    rows = time_resnet50_exports(root) if FLAGS.resnet50 else []
    ensure_resnet20_run(FLAGS.workdir)
    artifact = os.path.join(root, "resnet20_stablehlo")
    seconds, run = timed(export_command(FLAGS.workdir, artifact, "stablehlo"))
    if run.returncode != 0:
        sys.exit(f"export failed: {run.stderr[-2000:]}")
    rows.append({"model": "resnet20 (configs/resnet.py)", "format": "stablehlo",
                 "seconds": round(seconds, 1), "outcome": "ok"})  # fmt: skip
    size = {
        "artifact_bytes": directory_bytes(artifact),
        "weight_bytes": weight_bytes(FLAGS.workdir),
    }
    size["ratio"] = round(size["artifact_bytes"] / size["weight_bytes"], 3)
    images = test_images(os.path.join(root, "images"), FLAGS.images)
    predict = {"workdir": [], "stablehlo": []}
    for _ in range(FLAGS.rounds):
        for name, checkpoint in (("workdir", FLAGS.workdir), ("stablehlo", artifact)):
            seconds, run = timed([sys.executable, "-m", "imgcls_jax.inference.predict",
                                  f"--checkpoint={checkpoint}", images])  # fmt: skip
            if run.returncode != 0:
                sys.exit(f"predict failed: {run.stderr[-2000:]}")
            predict[name].append(round(seconds, 2))
    medians = {name: statistics.median(times) for name, times in predict.items()}
    from imgcls_jax.reporting import markdown

    print(markdown.table(["model", "format", "export s", "outcome"],
                         [[r["model"], r["format"], r["seconds"], r["outcome"][:90]] for r in rows]))  # fmt: skip
    print(f"\nResNet-20 artifact: {size['artifact_bytes']:,} bytes, weights "
          f"{size['weight_bytes']:,} bytes (x{size['ratio']}).\n")  # fmt: skip
    print(markdown.table(
        [f"predict {FLAGS.images} images", "median s", "rounds (s)"],
        [[name, f"{medians[name]:.2f}", ", ".join(map(str, predict[name]))] for name in predict],
    ))  # fmt: skip
    common.write_result(FLAGS.out, {"exports": rows, "resnet20_size": size,
                                    "predict_seconds": predict, "predict_median_s": medians,
                                    "images": FLAGS.images})  # fmt: skip


if __name__ == "__main__":
    app.run(main)
