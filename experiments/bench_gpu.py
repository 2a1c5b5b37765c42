"""Benchmark: ResNet-50 bf16 training images/s at 224 px on one accelerator, our jitted step vs
torchvision's ResNet-50 with PyTorch AMP (bf16 autocast, channels_last), in one run.

Question: does our step reach >= 6,000 img/s on an H200 and beat torchvision? Both train on
the same synthetic uint8 batch, resident on the device (normalisation included, no
augmentation), with SGD + Nesterov momentum and label smoothing 0.1. Model-FLOPs utilisation
(MFU) = 3 x forward FLOPs per image (XLA's count) x images/s / the device's peak bf16 FLOP/s.

    python experiments/bench_gpu.py                                   # ResNet-50, 224 px, batch 256
    python experiments/bench_gpu.py --model=resnet18 --image_size=32 --batch_size=8 --steps=2

Without torchvision (e.g. this CPU machine) the PyTorch side is experiments/torch_resnet.py,
the same architecture in torchvision's layout. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "A ResNet of our registry (torchvision name too).")
flags.DEFINE_integer("image_size", 224, "Synthetic image side.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_integer("num_classes", 1000, "Classes.")
flags.DEFINE_integer("steps", 50, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 5, "Untimed steps first (compilation, autotuning).")
flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s of the device; 0: from its kind.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch model.")
flags.DEFINE_string("out", "experiments/results/bench_gpu.json", "Where to write the JSON.")

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # Dense, per device.


def our_step(steps: int, warmup: int) -> dict:
    """Our train_step (imagenet preset, bf16 compute) on one device-resident batch."""
    import jax

    from configs.resnet import get_config
    from imgcls_jax import input_pipeline
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.data.synthetic import random_dataset
    from imgcls_jax.train import Trainer

    size, batch_size = FLAGS.image_size, FLAGS.batch_size
    config = apply_overrides(get_config("imagenet"), {
        "model.name": FLAGS.model, "model.dtype": "bfloat16", "dataset.image_size": size,
        "input.batch_size": batch_size, "input.eval_batch_size": batch_size,
        "augment.train": "", "augment.eval": "", "augment.grid_images": 0,
        "training.num_train_steps": steps + warmup, "input.device_resident": "off",
    })  # fmt: skip
    dataset = random_dataset(batch_size, size, 3, FLAGS.num_classes, num_eval=batch_size)
    trainer = Trainer(config, dataset)
    batch = next(iter(input_pipeline.eval_batches(dataset.train, batch_size, trainer.mesh)))
    batch.pop("mask")
    state = trainer.create_state()
    for _ in range(warmup):
        state, _ = trainer.train_step(state, batch, trainer.train_key)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = trainer.train_step(state, batch, trainer.train_key)
    jax.block_until_ready(state)
    seconds = (time.perf_counter() - start) / steps
    return {"images_per_sec": batch_size / seconds, "ms_per_step": 1e3 * seconds,
            "forward_flops_per_image": forward_flops_per_image(trainer, state),
            "devices": trainer.mesh.size, "device_kind": jax.devices()[0].device_kind}  # fmt: skip


def forward_flops_per_image(trainer, state) -> float:
    """XLA's FLOP count of one inference forward pass, per image."""
    import jax
    import jax.numpy as jnp

    images = jnp.zeros((8, FLAGS.image_size, FLAGS.image_size, 3), jnp.float32)
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    forward = jax.jit(lambda v, x: trainer.model.apply(v, x, train=False))
    cost = forward.lower(variables, images).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / len(images)


def torch_step(steps: int, warmup: int) -> dict:
    """The same training step in PyTorch eager mode with AMP (bf16 autocast), channels_last."""
    import torch
    import torch.nn.functional as F

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        import torchvision

        model, source = getattr(torchvision.models, FLAGS.model)(num_classes=FLAGS.num_classes), \
            "torchvision"  # fmt: skip
    except (ImportError, AttributeError, RuntimeError):  # RuntimeError: a CUDA-only build.
        import torch_resnet

        model, source = torch_resnet.build(FLAGS.model, FLAGS.num_classes), "torch_resnet.py"
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True,
                                weight_decay=1e-4)  # fmt: skip
    size, batch_size = FLAGS.image_size, FLAGS.batch_size
    pixels = torch.randint(0, 256, (batch_size, 3, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, FLAGS.num_classes, (batch_size,), device=device)
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1) * 255

    def step():
        images = ((pixels.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        loss.backward()
        optimizer.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / steps
    return {"images_per_sec": batch_size / seconds, "ms_per_step": 1e3 * seconds,
            "model": source, "device": str(device)}  # fmt: skip


def peak_flops(device_kind: str) -> float | None:
    if FLAGS.peak_tflops:
        return FLAGS.peak_tflops * 1e12
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_kind:
            return tflops * 1e12
    return None


def main(argv):
    del argv
    ours = our_step(FLAGS.steps, FLAGS.warmup)
    rows = {"imgcls_jax (jit, bf16)": ours}
    if FLAGS.torch:
        rows["PyTorch eager AMP bf16"] = torch_step(FLAGS.steps, FLAGS.warmup)
    peak = peak_flops(ours["device_kind"])
    train_flops = 3 * ours["forward_flops_per_image"]
    print(
        f"{FLAGS.model}, {FLAGS.image_size} px, batch {FLAGS.batch_size}, "
        f"{ours['device_kind']} x{ours['devices']}, {train_flops / 1e9:.2f} GFLOP/image/step"
    )
    print(f"| {'step':<24} | {'img/s':>9} | {'ms/step':>8} | {'MFU':>6} |")
    print(f"| {'-' * 24} | {'-' * 9}:| {'-' * 8}:| {'-' * 6}:|")
    for name, row in rows.items():
        mfu = train_flops * row["images_per_sec"] / (peak * ours["devices"]) if peak else None
        row["mfu"] = mfu
        mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
        print(f"| {name:<24} | {row['images_per_sec']:>9.1f} | {row['ms_per_step']:>8.1f} | "
              f"{mfu_text:>6} |")  # fmt: skip
    if FLAGS.torch:
        ratio = ours["images_per_sec"] / rows["PyTorch eager AMP bf16"]["images_per_sec"]
        print(f"ours / PyTorch: {ratio:.2f}x")
    result = {"model": FLAGS.model, "image_size": FLAGS.image_size,
              "batch_size": FLAGS.batch_size, "train_flops_per_image": train_flops,
              "peak_flops": peak, "rows": rows}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
    print(f"Wrote {FLAGS.out}.")


if __name__ == "__main__":
    app.run(main)
