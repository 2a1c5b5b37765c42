"""Benchmark: our training step vs the same step in PyTorch on this machine's CPU.

Question: how many images/s does our jitted step train, relative to PyTorch eager
(channels_last; float32, or bf16 autocast when ours is bf16) on the same architecture, batch,
image size and optimizer (SGD with Nesterov momentum)? Goal: >= 1.0x on the small-image
ResNet. Both sides train on a synthetic uint8 batch that stays in memory, normalisation
included, no augmentation.

Each side runs in its own worker process (two frameworks in one process share one heap and
two OpenMP runtimes, which slows both), and the workers are timed in interleaved rounds
(background load hits all alike); the median round counts. Ours runs as launch.py runs it,
with freed host memory kept for reuse (imgcls_jax/runtime/host_memory.py); PyTorch is timed as
shipped and, for comparison, with the same malloc settings.

    python -m experiments.benchmarks.torch_comparison                       # all cases below
    python -m experiments.benchmarks.torch_comparison --cases=resnet20 --rounds=3 --steps=5

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", "resnet20,airbench,resnet18,resnet50", "Which CASES to time.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds per case; the median is reported.")
flags.DEFINE_integer("steps", 10, "Steps per side per round.")
flags.DEFINE_string("dtype", "float32", "Our compute dtype (PyTorch uses bf16 autocast if bf16).")
flags.DEFINE_list("kernels", ["onednn", "xla"], "Our model.kernels values, one row each.")
common.define_out("experiments/results/benchmarks/torch_comparison.json")
flags.DEFINE_string("worker", "", "Internal: 'ours:CASE:KERNELS' or 'torch:CASE:REUSE'.")

# name -> (model, width, stem, image size, channels, batch size).
CASES = {
    "resnet20": ("resnet20", 16, "small", 28, 1, 128),  # The Fashion-MNIST default model.
    "airbench": ("airbench", 32, "small", 28, 1, 256),  # The Fashion-MNIST speed preset's.
    "resnet18": ("resnet18", 64, "imagenet", 64, 3, 32),
    "resnet50": ("resnet50", 64, "imagenet", 64, 3, 32),
}
NUM_CLASSES = 10


def build_step(side: str, name: str, option: str):
    """Our step (option: model.kernels) or PyTorch's (option: "reuse" or "system" malloc)."""
    from imgcls_jax.runtime import host_memory

    if side == "ours" or option == "reuse":
        host_memory.reuse_freed_memory()  # Before any library starts its threads.
    model, width, stem, size, channels, batch_size = CASES[name]
    if side == "torch":
        from experiments.benchmarks.step_timing import TorchStep
        from tests import torch_resnet

        module = torch_resnet.build(model, NUM_CLASSES, width, stem, channels)
        return TorchStep(module, batch_size, size, channels, NUM_CLASSES,
                         amp=FLAGS.dtype == "bfloat16")  # fmt: skip
    from configs.resnet import get_config
    from experiments.benchmarks.step_timing import OurStep
    from imgcls_jax.config import apply_overrides

    config = apply_overrides(get_config(), {
        "model.name": model, "model.width": width, "model.stem": stem,
        "model.dtype": FLAGS.dtype, "model.kernels": option,
        "input.batch_size": batch_size, "augment.train": "",
        "optimizer.weight_decay": 1e-4, "input.device_resident": "off",
        "dataset.mean": (0.5,) * channels, "dataset.std": (0.25,) * channels,
    })  # fmt: skip
    return OurStep(config, size, channels, NUM_CLASSES)


def serve(spec: str) -> None:
    """Worker: builds one step, then for each line N on stdin times N steps and answers
    with the seconds per step."""
    step = build_step(*spec.split(":"))
    print("ready", flush=True)
    for line in sys.stdin:
        print(step.run(int(line)), flush=True)


class Worker:
    """A worker process timing one side of one case."""

    def __init__(self, spec: str):
        command = [sys.executable, "-m", "experiments.benchmarks.torch_comparison", f"--worker={spec}",
                   f"--dtype={FLAGS.dtype}"]  # fmt: skip
        env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env, cwd=REPO_ROOT)  # fmt: skip
        self.spec = spec
        self._read()  # "ready": built (and, for ours, its kernels loaded).

    def _read(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"Benchmark worker {self.spec} died; its stderr is above.")
        return line

    def run(self, steps: int) -> float:
        self.process.stdin.write(f"{steps}\n")
        self.process.stdin.flush()
        return float(self._read())

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def time_case(name: str) -> list[dict]:
    """One row per value of --kernels; PyTorch's workers are shared by the rows."""
    specs = {"torch": f"torch:{name}:system", "torch_reuse": f"torch:{name}:reuse",
             **{kernels: f"ours:{name}:{kernels}" for kernels in FLAGS.kernels}}  # fmt: skip
    workers = {}
    try:
        for key, spec in specs.items():
            workers[key] = Worker(spec)
        for worker in workers.values():
            worker.run(2)  # Compile / warm up.
        rounds = [{key: w.run(FLAGS.steps) for key, w in workers.items()}
                  for _ in range(FLAGS.rounds)]  # fmt: skip
    finally:  # Also when one worker died: the others must not outlive the script.
        for worker in workers.values():
            worker.close()
    seconds = {key: statistics.median(r[key] for r in rounds) for key in workers}
    model, width, _, size, channels, batch_size = CASES[name]
    return [{"case": name, "kernels": kernels, "model": model, "width": width,
             "image": f"{size}x{size}x{channels}", "batch_size": batch_size,
             "dtype": FLAGS.dtype,
             "ours_img_per_s": round(batch_size / seconds[kernels], 1),
             "pytorch_img_per_s": round(batch_size / seconds["torch"], 1),
             "ours_over_pytorch": round(seconds["torch"] / seconds[kernels], 3),
             "pytorch_reused_memory_img_per_s": round(batch_size / seconds["torch_reuse"], 1),
             "ours_over_pytorch_reused_memory": round(seconds["torch_reuse"] / seconds[kernels], 3)}
            for kernels in FLAGS.kernels]  # fmt: skip


def main(argv):
    del argv
    if FLAGS.worker:
        return serve(FLAGS.worker)
    import torch

    from imgcls_jax.reporting import markdown

    results = [row for name in FLAGS.cases for row in time_case(name)]
    print(markdown.table(
        ["case", "image", "batch", "dtype", "our kernels", "ours img/s", "PyTorch img/s",
         "ours / PyTorch", "PyTorch, memory reused", "ours / that"],
        [[r["case"], r["image"], r["batch_size"], r["dtype"], r["kernels"], r["ours_img_per_s"],
          r["pytorch_img_per_s"], f"{r['ours_over_pytorch']:.2f}x",
          r["pytorch_reused_memory_img_per_s"],
          f"{r['ours_over_pytorch_reused_memory']:.2f}x"] for r in results],
    ))  # fmt: skip
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads.")
    common.write_result(FLAGS.out, {"torch": torch.__version__, "results": results})


if __name__ == "__main__":
    app.run(main)
