"""Benchmark: our training step vs the same step in PyTorch on this machine's CPU.

Question: how many images/s does our jitted step train, relative to PyTorch eager
(channels_last, float32) on the same architecture, batch, image size and optimizer (SGD with
Nesterov momentum)? Goal: >= 1.0x on the small-image ResNet. Both sides train on a synthetic
uint8 batch that stays in memory, normalisation included, no augmentation. The two are timed
in interleaved rounds (background load hits both alike); the median round counts.

    python experiments/bench_torch.py                       # all cases below
    python experiments/bench_torch.py --cases=resnet20 --rounds=3 --steps=5

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import json
import os
import statistics
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", "resnet20,resnet18,resnet50", "Which CASES to time.")
flags.DEFINE_integer("rounds", 5, "Interleaved rounds per case; the median is reported.")
flags.DEFINE_integer("steps", 10, "Steps per side per round.")
flags.DEFINE_string("dtype", "float32", "Our compute dtype (PyTorch uses bf16 autocast if bf16).")
flags.DEFINE_list("kernels", ["onednn", "xla"], "Our model.kernels values, one row each.")
flags.DEFINE_string("out", "experiments/results/bench_torch.json", "Where to write the JSON.")

# name -> (model, width, stem, image size, channels, batch size).
CASES = {
    "resnet20": ("resnet20", 16, "small", 28, 1, 128),  # The Fashion-MNIST default model.
    "resnet18": ("resnet18", 64, "imagenet", 64, 3, 32),
    "resnet50": ("resnet50", 64, "imagenet", 64, 3, 32),
}
NUM_CLASSES = 10


def time_case(name: str, kernels: str) -> dict:
    import torch_resnet
    from step_timing import OurStep, TorchStep

    from configs.resnet import get_config
    from imgcls_jax.config import apply_overrides

    model, width, stem, size, channels, batch_size = CASES[name]
    config = apply_overrides(get_config(), {
        "model.name": model, "model.width": width, "model.stem": stem,
        "model.dtype": FLAGS.dtype, "model.kernels": kernels,
        "input.batch_size": batch_size, "augment.train": "",
        "optimizer.weight_decay": 1e-4, "input.device_resident": "off",
        "dataset.mean": (0.5,) * channels, "dataset.std": (0.25,) * channels,
    })  # fmt: skip
    ours = OurStep(config, size, channels, NUM_CLASSES)
    theirs = TorchStep(torch_resnet.build(model, NUM_CLASSES, width, stem, channels), batch_size,
                       size, channels, NUM_CLASSES, amp=FLAGS.dtype == "bfloat16")  # fmt: skip
    ours.run(2), theirs.run(2)  # Compile / warm up.
    rounds = [(ours.run(FLAGS.steps), theirs.run(FLAGS.steps)) for _ in range(FLAGS.rounds)]
    ours_s = statistics.median(r[0] for r in rounds)
    theirs_s = statistics.median(r[1] for r in rounds)
    return {"case": name, "kernels": kernels, "model": model, "width": width,
            "image": f"{size}x{size}x{channels}",
            "batch_size": batch_size, "dtype": FLAGS.dtype,
            "ours_img_per_s": round(batch_size / ours_s, 1),
            "pytorch_img_per_s": round(batch_size / theirs_s, 1),
            "ours_over_pytorch": round(theirs_s / ours_s, 3)}  # fmt: skip


def main(argv):
    del argv
    from imgcls_jax import host_memory

    host_memory.reuse_freed_memory()  # As launch.py does; PyTorch's side gets it too.
    import torch

    from imgcls_jax import markdown

    results = [time_case(name, kernels) for name in FLAGS.cases for kernels in FLAGS.kernels]
    print(markdown.table(
        ["case", "image", "batch", "dtype", "our kernels", "ours img/s", "PyTorch img/s",
         "ours / PyTorch"],
        [[r["case"], r["image"], r["batch_size"], r["dtype"], r["kernels"], r["ours_img_per_s"],
          r["pytorch_img_per_s"], f"{r['ours_over_pytorch']:.2f}x"] for r in results],
    ))  # fmt: skip
    print(f"PyTorch {torch.__version__}, {torch.get_num_threads()} threads.")
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
        json.dump({"torch": torch.__version__, "results": results}, f, indent=2)


if __name__ == "__main__":
    app.run(main)
