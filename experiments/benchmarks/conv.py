"""Benchmark: where a ResNet-20 convolution's time goes on XLA:CPU, and whether another
formulation of its slowest part is faster.

For each 3x3 convolution shape of ResNet-20 on 28 px images (batch 128), it times the forward
pass, the input gradient and the weight gradient (each jitted alone, median of rounds), in
float32 and bfloat16, and two other formulations of the weight gradient: nine shifted
matmuls, and a convolution with batch and channels swapped. Every alternative is checked
against XLA's own gradient before it is timed.

    python -m experiments.benchmarks.conv --rounds=5

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Rounds; the median is reported.")
flags.DEFINE_integer("batch_size", 128, "Batch size.")
common.define_out("experiments/results/benchmarks/conv.json")

SHAPES = ((16, 28), (32, 14), (64, 7))  # (channels, side) of ResNet-20's 3x3 convolutions.
DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    from jax import lax

    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=DIMENSIONS)


def weight_grad_shifted_matmuls(x, g):
    """dW[i, j] = sum over pixels of x shifted by (i, j), outer g: nine (C x NHW) @ (NHW x C)."""
    import jax.numpy as jnp

    _, height, width, channels = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    grads = g.reshape(-1, g.shape[-1])
    return jnp.stack([
        jnp.stack([padded[:, i:i + height, j:j + width].reshape(-1, channels).T @ grads
                   for j in range(3)])
        for i in range(3)
    ])  # fmt: skip


def weight_grad_swapped_conv(x, g):
    """The weight gradient as one convolution whose 'batch' is the input channel."""
    from jax import lax

    return lax.conv_general_dilated(x, g, (1, 1), ((1, 1), (1, 1)),
                                    dimension_numbers=("CHWN", "IHWO", "HWNC"))  # fmt: skip


def median_ms(fn, *args) -> float:
    import jax

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(FLAGS.rounds):
        start = time.perf_counter()
        for _ in range(3):
            out = fn(*args)
        jax.block_until_ready(out)
        times.append((time.perf_counter() - start) / 3 * 1e3)
    return statistics.median(times)


def main(argv):
    del argv
    import jax
    import jax.numpy as jnp
    import numpy as np

    from imgcls_jax.reporting import markdown

    rows, results = [], []
    for dtype in (jnp.float32, jnp.bfloat16):
        for channels, side in SHAPES:
            keys = jax.random.split(jax.random.key(0), 3)
            x = jax.random.normal(keys[0], (FLAGS.batch_size, side, side, channels), dtype)
            w = (0.1 * jax.random.normal(keys[1], (3, 3, channels, channels))).astype(dtype)
            g = jax.random.normal(keys[2], (FLAGS.batch_size, side, side, channels), dtype)
            weight_grad = jax.jit(lambda x, g, w=w: jax.vjp(conv, x, w)[1](g)[1])
            timed = {
                "forward": (jax.jit(conv), (x, w)),
                "input grad": (jax.jit(lambda g, x=x, w=w: jax.vjp(conv, x, w)[1](g)[0]), (g,)),
                "weight grad": (weight_grad, (x, g)),
                "weight grad, 9 matmuls": (jax.jit(weight_grad_shifted_matmuls), (x, g)),
                "weight grad, swapped conv": (jax.jit(weight_grad_swapped_conv), (x, g)),
            }
            reference = np.asarray(weight_grad(x, g), np.float32)
            gflop = 2 * FLAGS.batch_size * side * side * channels * channels * 9 / 1e9
            for name, (fn, args) in timed.items():
                if name.startswith("weight grad,"):
                    np.testing.assert_allclose(np.asarray(fn(*args), np.float32), reference,
                                               rtol=0.05, atol=0.05 * np.abs(reference).max())  # fmt: skip
                ms = median_ms(fn, *args)
                dtype_name = jnp.dtype(dtype).name
                results.append({"dtype": dtype_name, "channels": channels, "side": side,
                                "part": name, "ms": ms, "gflop_per_s": gflop / ms * 1e3})  # fmt: skip
                rows.append([dtype_name, f"{side}x{side}x{channels}", name, f"{ms:.1f}",
                             f"{gflop / ms * 1e3:.0f}"])  # fmt: skip
    print(markdown.table(["dtype", "activation", "part", "ms", "GFLOP/s"], rows))
    common.write_result(FLAGS.out, {"batch_size": FLAGS.batch_size, "results": results})


if __name__ == "__main__":
    app.run(main)
