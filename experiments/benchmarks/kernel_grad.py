"""Benchmark: oneDNN's kernel gradient as its direct convolution or as im2col + one matmul,
per layer shape, on each kind of CPU this machine can present.

The rule in `imgcls_jax/kernels/onednn_kernels.cc` (`MatmulKernelGrad`) picks one path per
shape; this measures both, so that the rule can be fitted per CPU kind. Other kinds of CPU are
presented by capping the instruction sets oneDNN may use (ONEDNN_MAX_CPU_ISA): on a CPU with
AMX, "avx512_core_bf16" is a CPU with AVX-512-BF16 but no AMX, and "avx2" one without
AVX-512 (no bfloat16 kernels). Each kind runs in its own process; the two paths are checked
against each other before they are timed.

    python -m experiments.benchmarks.kernel_grad --kinds=all,avx512_core_bf16,avx2 --rounds=7

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
flags.DEFINE_list("kinds", ["all", "avx512_core_bf16", "avx2"], "ONEDNN_MAX_CPU_ISA values.")
flags.DEFINE_integer("rounds", 7, "Rounds of --calls calls; the median round is reported.")
flags.DEFINE_integer("calls", 5, "Calls per round.")
common.define_out("experiments/results/benchmarks/kernel_grad.json")
flags.DEFINE_string("worker", "", "Internal: measure in this process for this kind.")

# (name, batch, input side, in channels, out channels, kernel, stride): the small-output
# layers of ResNet-20 (28 px), airbench, ResNet-18 and ResNet-50 (64 px) where the two paths
# compete; outputs of 2x2 to 8x8.
LAYERS = (
    ("ResNet-20 stage 3", 128, 7, 64, 64, 3, 1),
    ("ResNet-20 stage 3 entry", 128, 14, 32, 64, 3, 2),
    ("ResNet-20 projection", 128, 14, 32, 64, 1, 2),
    ("wide 7x7", 256, 7, 64, 128, 3, 1),
    ("airbench group 3", 256, 3, 128, 128, 3, 1),
    ("ResNet-18 8x8", 32, 8, 128, 128, 3, 1),
    ("ResNet-18 4x4", 32, 4, 256, 256, 3, 1),
    ("ResNet-18 2x2", 32, 2, 512, 512, 3, 1),
    ("ResNet-50 8x8 1x1", 32, 8, 512, 128, 1, 1),
    ("ResNet-50 4x4 1x1", 32, 4, 1024, 256, 1, 1),
    ("ResNet-50 2x2 1x1", 32, 2, 2048, 512, 1, 1),
    ("ResNet-50 2x2 1x1 expand", 32, 2, 512, 2048, 1, 1),
)


def measure_kind() -> dict:
    """Times both paths for every layer and dtype the kernels take here."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from imgcls_jax.kernels import onednn

    onednn.load()
    rows = []
    for name, batch, side, cin, cout, k, stride in LAYERS:
        pad = (k - 1) // 2
        geometry = ((stride, stride), ((pad, pad), (pad, pad)))
        out_side = (side + 2 * pad - k) // stride + 1
        rng = np.random.default_rng(0)
        for dtype in onednn.kernel_dtypes():
            x = jnp.asarray(rng.standard_normal((batch, side, side, cin)), dtype)
            g = jnp.asarray(rng.standard_normal((batch, out_side, out_side, cout)), dtype)
            ms, values = {}, {}
            for path in ("direct", "matmul"):

                def kernel_grad(x, g, shape=(k, k, cin, cout), geometry=geometry, path=path):
                    return onednn.kernel_grad(x, g, shape, geometry, path)

                fn = jax.jit(kernel_grad)
                values[path] = np.asarray(fn(x, g).astype(jnp.float32))
                times = []
                for _ in range(FLAGS.rounds):
                    start = time.perf_counter()
                    for _ in range(FLAGS.calls):
                        fn(x, g).block_until_ready()
                    times.append((time.perf_counter() - start) / FLAGS.calls * 1e3)
                ms[path] = statistics.median(times)
            scale = np.abs(values["direct"]).max()
            np.testing.assert_allclose(values["matmul"], values["direct"],
                                       atol=(2e-2 if dtype == jnp.bfloat16 else 1e-4) * scale)  # fmt: skip
            rows.append({"layer": name, "shape": f"{batch}, {side}x{side}, {cin}->{cout}, "
                         f"{k}x{k}, {stride}", "output": f"{out_side}x{out_side}",
                         "dtype": jnp.dtype(dtype).name, "direct_ms": round(ms["direct"], 3),
                         "matmul_ms": round(ms["matmul"], 3)})  # fmt: skip
    return {"onednn_isa": hex(onednn._cpu_isa()), "rows": rows}


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(measure_kind()))
        return
    from imgcls_jax.reporting import markdown

    results = {}
    for kind in FLAGS.kinds:
        env = {**os.environ, "ONEDNN_MAX_CPU_ISA": kind.upper()}
        run = subprocess.run([sys.executable, "-m", "experiments.benchmarks.kernel_grad", f"--worker={kind}",
                              f"--rounds={FLAGS.rounds}", f"--calls={FLAGS.calls}"],
                             env=env, cwd=REPO_ROOT, check=True, capture_output=True, text=True)  # fmt: skip
        results[kind] = json.loads(run.stdout.strip().splitlines()[-1])
    table = []
    for kind, result in results.items():
        for row in result["rows"]:
            faster = "matmul" if row["matmul_ms"] < row["direct_ms"] else "direct"
            table.append([kind, row["layer"], row["shape"], row["output"], row["dtype"],
                          row["direct_ms"], row["matmul_ms"], faster])  # fmt: skip
    print(markdown.table(["ONEDNN_MAX_CPU_ISA", "layer", "batch, input, channels, kernel, stride",
                          "output", "dtype", "direct ms", "matmul ms", "faster"], table))  # fmt: skip
    common.write_result(FLAGS.out, {"rounds": FLAGS.rounds, "calls": FLAGS.calls, "kinds": results})


if __name__ == "__main__":
    app.run(main)
