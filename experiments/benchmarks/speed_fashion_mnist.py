"""Speed run: how accurate is Fashion-MNIST after about 5 minutes on this machine? Goal:
>= 94.0% test accuracy in <= 5 minutes of wall time on 2 CPU cores.

Launches `configs/resnet.py:fashion_mnist_speed` once per seed, each as its own
`python launch.py` process, and times the whole command (interpreter start, data loading,
compiling, training, final evaluation). Compile seconds come from the run's timing.json.
Finished seeds are read back, not rerun.

    python -m experiments.benchmarks.speed_fashion_mnist --seeds=3

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
flags.DEFINE_integer("seeds", 3, "Seeds 0..N-1.")
flags.DEFINE_string("workdir", "/tmp/speed_fashion_mnist", "Where the runs go.")
common.define_out("experiments/results/benchmarks/speed_fashion_mnist.json")
flags.DEFINE_list("overrides", [], "Extra --config.KEY=VALUE flags for every run.")

PRESET = "configs/resnet.py:fashion_mnist_speed"
GOAL_ACCURACY, GOAL_SECONDS = 0.94, 300.0


def cpu_kind() -> str:
    """The CPU features that decide the speed here: AMX, AVX-512 (with BF16) or AVX2, as this
    process may use them (an ISA cap in XLA_FLAGS or ONEDNN_MAX_CPU_ISA counts), and the
    vendor (bfloat16 without AMX is fast on AMD's CPUs only: imgcls_jax/runtime/precision.py)."""
    from imgcls_jax.runtime import precision

    flags = precision.cpu_flags()
    amx = precision.AMX_FLAGS <= flags and not precision.amx_capped(os.environ)
    kinds = [("AMX", amx), ("AVX-512-BF16", "avx512_bf16" in flags),
             ("AVX-512", "avx512f" in flags), ("AVX2", "avx2" in flags)]  # fmt: skip
    best = next((name for name, present in kinds if present), "other")
    capped = precision.amx_capped(os.environ)
    vendor = {precision.INTEL: "Intel", precision.AMD: "AMD"}.get(precision.cpu_vendor())
    return (f"{best}{f' ({capped})' if capped and precision.AMX_FLAGS <= flags else ''}"
            f"{f', {vendor}' if vendor else ''}")  # fmt: skip


def run_seed(seed: int) -> dict:
    from imgcls_jax.reporting import writers

    workdir = os.path.join(FLAGS.workdir, f"seed{seed}")
    summary_file = os.path.join(workdir, "speed.json")
    if os.path.exists(summary_file):
        with open(summary_file, encoding="utf-8") as f:
            return json.load(f)
    if os.path.exists(workdir):
        raise FileExistsError(f"{workdir} holds an unfinished run; delete it to time it afresh.")
    command = [sys.executable, "launch.py", f"--config={PRESET}", f"--workdir={workdir}",
               f"--config.seed={seed}", *(f"--config.{o}" for o in FLAGS.overrides)]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    wall_s = time.perf_counter() - start
    with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    with open(os.path.join(workdir, "timing.json"), encoding="utf-8") as f:
        timing = json.load(f)
    with open(os.path.join(workdir, "report.json"), encoding="utf-8") as f:
        compute = json.load(f)["compute"]
    rates = [r["steps_per_sec"] for r in writers.read_metrics(
        os.path.join(workdir, "metrics.jsonl")) if "steps_per_sec" in r]  # fmt: skip
    summary = {"seed": seed, "test_accuracy": results["test/accuracy"],
               "wall_s": round(wall_s, 1), "compile_s": timing["compile_s"],
               "steps": results["step"], "dtype": compute["dtype"],
               "kernels": compute["kernels"], "cpu": cpu_kind(),
               "median_steps_per_s": round(statistics.median(rates), 2)}  # fmt: skip
    with open(summary_file, "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    return summary


def main(argv):
    del argv
    from imgcls_jax.reporting import markdown

    runs = [run_seed(seed) for seed in range(FLAGS.seeds)]
    accuracy = [100 * r["test_accuracy"] for r in runs]
    wall = [r["wall_s"] for r in runs]

    def mean_std(values, digits):
        spread = f" ± {statistics.stdev(values):.{digits}f}" if len(values) > 1 else ""
        return f"{statistics.mean(values):.{digits}f}{spread}"

    rows = [[r["seed"], r.get("cpu", ""), r.get("dtype", ""), f"{100 * r['test_accuracy']:.2f}%",
             r["wall_s"], r["compile_s"], r["steps"], r["median_steps_per_s"]] for r in runs]  # fmt: skip
    rows.append(["mean", "", "", f"{mean_std(accuracy, 2)}%", mean_std(wall, 1),
                 mean_std([r["compile_s"] for r in runs], 1), "",
                 mean_std([r["median_steps_per_s"] for r in runs], 1)])  # fmt: skip
    print(markdown.table(["seed", "CPU", "dtype", "test accuracy", "wall s",
                          "of which compiling s", "steps", "train steps/s (median)"], rows))  # fmt: skip
    met_accuracy = min(accuracy) >= 100 * GOAL_ACCURACY
    met_time = max(wall) <= GOAL_SECONDS
    print(f"\nGoal >= {100 * GOAL_ACCURACY:.1f}% test: {'met' if met_accuracy else 'not met'}; "
          f"<= {GOAL_SECONDS:.0f} s wall: {'met' if met_time else 'not met'} "
          f"({os.cpu_count()} cores).")  # fmt: skip
    common.write_result(
        FLAGS.out,
        {
            "preset": PRESET,
            "overrides": FLAGS.overrides,
            "runs": runs,
            "accuracy_goal_met": met_accuracy,
            "time_goal_met": met_time,
        },
    )


if __name__ == "__main__":
    app.run(main)
