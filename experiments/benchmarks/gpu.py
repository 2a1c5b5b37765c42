"""Benchmark: ResNet-50 bf16 training images/s at 224 px on one accelerator, our jitted step vs
torchvision's ResNet-50 with PyTorch AMP (bf16 autocast, channels_last), in one run.

Question: does our step reach >= 6,000 img/s on an H200 and beat torchvision? Both train on
the same synthetic uint8 batch, resident on the device (normalisation included, no
augmentation), with SGD + Nesterov momentum and label smoothing 0.1; PyTorch eager (cuDNN's
autotuner on) and under `torch.compile`. Model-FLOPs utilisation (MFU) = the train step's
convolution and matmul FLOPs per image, counted from its program (imgcls_jax.reporting.flops; 24.3
GFLOP for ResNet-50 at 224 px: 3 x 2 x its 4.09 G multiply-adds forward, less the first
convolution's input gradient) x images/s / the
device's peak bf16 FLOP/s. XLA's own cost analysis is printed beside it: on GPUs it leaves
out cuDNN's convolutions.

    python -m experiments.benchmarks.gpu                                   # ResNet-50, 224 px, batch 256
    python -m experiments.benchmarks.gpu --model=resnet18 --image_size=32 --batch_size=8 --steps=2

Without torchvision (e.g. this CPU machine) the PyTorch side is tests/torch_resnet.py,
the same architecture in torchvision's layout. Prints a table and writes JSON to --out.
"""

from __future__ import annotations

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet50", "A ResNet of our registry (torchvision name too).")
flags.DEFINE_integer("image_size", 224, "Synthetic image side.")
flags.DEFINE_integer("batch_size", 256, "Global batch size.")
flags.DEFINE_integer("num_classes", 1000, "Classes.")
flags.DEFINE_integer("steps", 50, "Timed steps (after warm-up).")
flags.DEFINE_integer("warmup", 5, "Untimed steps first (compilation, autotuning).")
flags.DEFINE_float("peak_tflops", 0.0, "Peak bf16 TFLOP/s of the device; 0: from its kind.")
flags.DEFINE_bool("torch", True, "Also time the PyTorch model.")
flags.DEFINE_bool("torch_compile", True, "Also time it under torch.compile.")
common.define_out("experiments/results/benchmarks/gpu.json")

PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0}  # Dense, per device.


def torch_model():
    """torchvision's model, or where torchvision is missing (CPU tests) our PyTorch twin."""
    try:
        import torchvision

        return getattr(torchvision.models, FLAGS.model)(
            num_classes=FLAGS.num_classes
        ), "torchvision"
    except (ImportError, AttributeError, RuntimeError):  # RuntimeError: a CUDA-only build.
        from tests import torch_resnet

        return torch_resnet.build(FLAGS.model, FLAGS.num_classes), "torch_resnet.py"


def peak_flops(device_kind: str) -> float | None:
    if FLAGS.peak_tflops:
        return FLAGS.peak_tflops * 1e12
    for name, tflops in PEAK_BF16_TFLOPS.items():
        if name in device_kind:
            return tflops * 1e12
    return None


def main(argv):
    del argv
    import jax

    from configs.resnet import get_config
    from experiments.benchmarks.step_timing import OurStep, TorchStep
    from imgcls_jax.config import apply_overrides

    size, batch_size = FLAGS.image_size, FLAGS.batch_size
    config = apply_overrides(get_config("imagenet"), {
        "model.name": FLAGS.model, "model.dtype": "bfloat16", "dataset.image_size": size,
        "input.batch_size": batch_size, "augment.train": "", "augment.eval": "",
        "input.device_resident": "off",
    })  # fmt: skip
    steps = {"ours": ("imgcls_jax jit bf16", OurStep(config, size, 3, FLAGS.num_classes))}
    if FLAGS.torch:
        model, source = torch_model()
        steps["pytorch"] = (f"PyTorch AMP bf16 eager ({source})",
                            TorchStep(model, batch_size, size, 3, FLAGS.num_classes, amp=True))  # fmt: skip
    if FLAGS.torch and FLAGS.torch_compile:
        model, source = torch_model()
        steps["pytorch_compile"] = (
            f"PyTorch AMP bf16 torch.compile ({source})",
            TorchStep(model, batch_size, size, 3, FLAGS.num_classes, amp=True, compile=True),
        )
    rows = {}
    for key, (name, step) in steps.items():
        step.run(FLAGS.warmup)
        seconds = step.run(FLAGS.steps)
        rows[key] = {"name": name, "images_per_sec": batch_size / seconds,
                     "ms_per_step": 1e3 * seconds}  # fmt: skip
    ours = steps["ours"][1]
    kind, devices = jax.devices()[0].device_kind, ours.trainer.mesh.size
    peak = peak_flops(kind)
    train_flops = ours.train_flops_per_image()
    xla_train_flops = 3 * ours.xla_forward_flops_per_image()
    print(f"{FLAGS.model}, {size} px, batch {batch_size}, {kind} x{devices}, "
          f"{train_flops / 1e9:.2f} GFLOP/image/step counted from the program "
          f"(XLA's cost analysis: 3 x forward = {xla_train_flops / 1e9:.2f})")  # fmt: skip
    print(f"| {'step':<40} | {'img/s':>9} | {'ms/step':>8} | {'MFU':>6} |")
    print(f"| {'-' * 40} | {'-' * 9}:| {'-' * 8}:| {'-' * 6}:|")
    for row in rows.values():
        row["mfu"] = train_flops * row["images_per_sec"] / (peak * devices) if peak else None
        mfu_text = f"{100 * row['mfu']:.1f}%" if peak else "n/a"
        print(f"| {row['name']:<40} | {row['images_per_sec']:>9.1f} | {row['ms_per_step']:>8.1f} "
              f"| {mfu_text:>6} |")  # fmt: skip
    for key in ("pytorch", "pytorch_compile"):
        if key in rows:
            ratio = rows["ours"]["images_per_sec"] / rows[key]["images_per_sec"]
            print(f"ours / {rows[key]['name']}: {ratio:.2f}x")
    result = {"model": FLAGS.model, "image_size": FLAGS.image_size,
              "batch_size": FLAGS.batch_size, "device_kind": kind, "devices": devices,
              "train_flops_per_image": train_flops, "xla_train_flops_per_image": xla_train_flops,
              "peak_flops": peak, "rows": rows}  # fmt: skip
    common.write_result(FLAGS.out, result)
    print(f"Wrote {FLAGS.out}.")


if __name__ == "__main__":
    app.run(main)
