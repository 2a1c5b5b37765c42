"""Benchmark: oneDNN's direct and Winograd convolutions per layer shape, all three passes.

The rule in `imgcls_jax/kernels/onednn_kernels.cc` (`UseWinograd`) runs wide float32 3x3/1
convolutions as oneDNN's Winograd F(4x4, 3x3) on CPUs with AVX-512. That implementation wants
its activations in a blocked layout, so every pass also reorders them from and to NHWC; the
timings here include those reorders, as a training step pays them. Each layer is timed on both
paths in interleaved rounds (the median round counts) after checking that both compute XLA's
function. The rule's own timing is the last column, and "rule takes" says whether it took
Winograd (its result bit for bit Winograd's) or another path (direct, or for the kernel gradient
of small outputs im2col + matmul).

    python -m experiments.benchmarks.conv_algorithm --rounds=5

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import statistics
import time

from absl import app, flags

from experiments import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("rounds", 5, "Interleaved rounds of --calls calls; the median counts.")
flags.DEFINE_integer("calls", 5, "Calls per pass, path and round.")
common.define_out("experiments/results/benchmarks/conv_algorithm.json")
flags.DEFINE_list("layers", [], "Names of LAYERS to time; empty: all.")

# (name, batch, side, in channels, out channels): the 3x3/1 layers of the speed preset's
# airbench net and ResNet-20 (28 px), and of ResNet-18/50 at 64 and 224 px.
LAYERS = (
    ("airbench group 1", 256, 14, 32, 32),
    ("airbench group 2 entry", 256, 14, 32, 64),
    ("airbench group 2", 256, 7, 64, 64),
    ("airbench group 3 entry", 256, 7, 64, 128),
    ("airbench group 3", 256, 3, 128, 128),
    ("ResNet-20 stage 1", 128, 28, 16, 16),
    ("ResNet-20 stage 2", 128, 14, 32, 32),
    ("ResNet-20 stage 3", 128, 7, 64, 64),
    ("ResNet 64 px stage 1", 32, 16, 64, 64),
    ("ResNet 64 px stage 2", 32, 8, 128, 128),
    ("ResNet 64 px stage 3", 32, 4, 256, 256),
    ("ResNet 224 px stage 1", 32, 56, 64, 64),
    ("ResNet 224 px stage 2", 32, 28, 128, 128),
    ("ResNet 224 px stage 3", 32, 14, 256, 256),
    ("ResNet 224 px stage 4", 32, 7, 512, 512),
)
PASSES = ("forward", "input grad", "kernel grad")
GEOMETRY = ((1, 1), ((1, 1), (1, 1)))


def passes(path: str, kernel_shape: tuple, input_shape: tuple) -> dict:
    """The three jitted passes of a 3x3/1 convolution on `path`."""
    import jax

    from imgcls_jax.kernels import onednn

    return {
        "forward": jax.jit(lambda x, k, g: onednn.conv2d(x, k, GEOMETRY, path)),
        "input grad": jax.jit(lambda x, k, g: onednn.input_grad(g, k, input_shape, GEOMETRY, path)),
        "kernel grad": jax.jit(
            lambda x, k, g: onednn.kernel_grad(x, g, kernel_shape, GEOMETRY, path)
        ),
    }


def measure_layer(batch: int, side: int, cin: int, cout: int) -> dict:
    """Milliseconds per pass on each path and as the rule runs it, and the path it took."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax import lax

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((batch, side, side, cin), np.float32))
    k = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) * (9 * cin) ** -0.5)
    g = jnp.asarray(rng.standard_normal((batch, side, side, cout), np.float32))

    def xla(x, k):
        return lax.conv_general_dilated(x, k, (1, 1), GEOMETRY[1],
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip

    y, vjp = jax.vjp(xla, x, k)
    reference = dict(zip(PASSES, (y, *vjp(g))))
    fns = {path: passes(path, k.shape, x.shape) for path in ("direct", "winograd", "rule")}
    values = {path: {p: fn(x, k, g) for p, fn in by_pass.items()} for path, by_pass in fns.items()}
    for path in ("direct", "winograd"):
        for p in PASSES:
            scale = float(jnp.abs(reference[p]).max())
            np.testing.assert_allclose(values[path][p], reference[p], atol=1e-4 * scale)
    rule = [
        "winograd" if bool(jnp.array_equal(values["rule"][p], values["winograd"][p])) else "other"
        for p in PASSES
    ]
    times = {path: {p: [] for p in PASSES} for path in fns}
    for _ in range(FLAGS.rounds):
        for path in fns:
            for p in PASSES:
                fn = fns[path][p]
                start = time.perf_counter()
                for _ in range(FLAGS.calls):
                    fn(x, k, g).block_until_ready()
                times[path][p].append((time.perf_counter() - start) / FLAGS.calls * 1e3)
    ms = {path: {p: statistics.median(t) for p, t in by_pass.items()}
          for path, by_pass in times.items()}  # fmt: skip
    return {"ms": ms, "rule": rule[0] if len(set(rule)) == 1 else "/".join(rule)}


def main(argv):
    del argv
    from imgcls_jax.kernels import onednn
    from imgcls_jax.reporting import markdown
    from imgcls_jax.runtime import precision

    onednn.load()
    if not onednn.avx512():
        raise app.UsageError("oneDNN has Winograd convolutions with AVX-512 only, which this CPU "
                             "(or ONEDNN_MAX_CPU_ISA) does not give it.")  # fmt: skip
    unknown = set(FLAGS.layers) - {layer[0] for layer in LAYERS}
    if unknown:
        raise app.UsageError(f"Unknown --layers {sorted(unknown)}: use names of LAYERS.")
    rows, table = [], []
    for name, batch, side, cin, cout in LAYERS:
        if FLAGS.layers and name not in FLAGS.layers:
            continue
        result = measure_layer(batch, side, cin, cout)
        direct, winograd, chosen = (sum(result["ms"][path].values())
                                    for path in ("direct", "winograd", "rule"))  # fmt: skip
        rows.append({"layer": name, "batch": batch, "side": side, "in": cin, "out": cout,
                     **result})  # fmt: skip
        table.append([name, f"{batch}, {side}x{side}, {cin}->{cout}",
                      *(f"{result['ms']['direct'][p]:.2f}" for p in PASSES), f"{direct:.2f}",
                      *(f"{result['ms']['winograd'][p]:.2f}" for p in PASSES),
                      f"{winograd:.2f}", f"{direct / winograd:.2f}x", result["rule"],
                      f"{chosen:.2f}"])  # fmt: skip
        print(f"{name}: direct {direct:.2f} ms, winograd {winograd:.2f} ms, rule {chosen:.2f} ms",
              flush=True)  # fmt: skip
    print(markdown.table(
        ["layer", "batch, output, channels", "direct fwd", "in grad", "kernel grad", "sum",
         "Winograd fwd", "in grad", "kernel grad", "sum", "direct/Winograd", "rule takes",
         "rule's sum"], table))  # fmt: skip
    common.write_result(
        FLAGS.out,
        {
            "rounds": FLAGS.rounds,
            "calls": FLAGS.calls,
            "cpu_vendor": precision.cpu_vendor(),
            "cpu_flags": sorted(f for f in precision.cpu_flags() if "avx" in f or "amx" in f),
            "onednn_isa": hex(onednn._cpu_isa()),
            "rows": rows,
        },
    )


if __name__ == "__main__":
    app.run(main)
