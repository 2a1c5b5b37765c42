"""Timing of one training step, ours and PyTorch's, on a device-resident synthetic batch:
shared by the benchmark scripts."""

from __future__ import annotations

import time

import jax

from imgcls_jax.config import apply_overrides
from imgcls_jax.data import input_pipeline
from imgcls_jax.data.synthetic import random_dataset
from imgcls_jax.training.builder import Trainer


class OurStep:
    """Our jitted train_step for `config` on one synthetic batch that stays on the device."""

    def __init__(self, config, image_size: int, channels: int, num_classes: int):
        batch_size = config.input.batch_size
        config = apply_overrides(config, {"input.eval_batch_size": batch_size,
                                          "augment.grid_images": 0})  # fmt: skip
        dataset = random_dataset(batch_size, image_size, channels, num_classes, batch_size)
        self.trainer = Trainer(config, dataset)
        self.batch = next(iter(input_pipeline.eval_batches(dataset.train, batch_size,
                                                           self.trainer.mesh)))  # fmt: skip
        self.batch.pop("mask")
        self.state = self.trainer.create_state()
        self.batch_size = batch_size

    def run(self, steps: int) -> float:
        """Runs `steps` steps; returns seconds per step."""
        start = time.perf_counter()
        for _ in range(steps):
            self.state, _ = self.trainer.train_step(self.state, self.batch, self.trainer.train_key)
        jax.block_until_ready(self.state)
        return (time.perf_counter() - start) / steps

    def train_flops_per_image(self) -> float:
        """The convolution and matrix-product FLOPs of one whole train step (forward and
        backward), counted from its program (imgcls_jax.reporting.flops), per image."""
        from imgcls_jax.reporting import flops

        count = flops.flops(self.trainer.train_step, self.state, self.batch, self.trainer.train_key)
        return count / self.batch_size

    def xla_forward_flops_per_image(self) -> float:
        """XLA's cost analysis of one compiled inference forward pass, per image (on GPUs it
        leaves out cuDNN's convolutions)."""
        images = jax.numpy.zeros((8, *self.batch["image"].shape[1:]), jax.numpy.float32)
        variables = {"params": self.state.params, "batch_stats": self.state.batch_stats}
        forward = jax.jit(lambda v, x: self.trainer.model.apply(v, x, train=False))
        cost = forward.lower(variables, images).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        return float(cost["flops"]) / len(images)


class TorchStep:
    """The same step in PyTorch: uint8 -> normalised float, channels_last, SGD with Nesterov
    momentum, label smoothing 0.1; with `amp`, bf16 autocast; eager, or with `compile` the
    model under `torch.compile`; cuDNN's autotuner on."""

    def __init__(self, model, batch_size: int, image_size: int, channels: int, num_classes: int,
                 amp: bool, compile: bool = False):  # fmt: skip
        import torch

        self.torch = torch
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        torch.backends.cudnn.benchmark = True  # Autotuned convolutions, as a tuned run sets.
        self.model = model.to(self.device, memory_format=torch.channels_last).train()
        self.forward = torch.compile(self.model) if compile else self.model
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                                         nesterov=True, weight_decay=1e-4)  # fmt: skip
        shape = (batch_size, channels, image_size, image_size)
        self.pixels = torch.randint(0, 256, shape, dtype=torch.uint8, device=self.device)
        self.labels = torch.randint(0, num_classes, (batch_size,), device=self.device)
        self.amp = amp
        self.batch_size = batch_size

    def _step(self) -> None:
        torch = self.torch
        images = ((self.pixels.float() - 127.5) / 64.0).contiguous(
            memory_format=torch.channels_last
        )
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            logits = self.forward(images)
        loss = torch.nn.functional.cross_entropy(logits.float(), self.labels, label_smoothing=0.1)
        loss.backward()
        self.optimizer.step()

    def run(self, steps: int) -> float:
        """Runs `steps` steps; returns seconds per step."""
        sync = self.torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        sync()
        start = time.perf_counter()
        for _ in range(steps):
            self._step()
        sync()
        return (time.perf_counter() - start) / steps
