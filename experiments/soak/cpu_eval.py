"""Soak: does evaluating on several CPU devices ever abort in an XLA:CPU collective?

Starts --processes copies at once (on a 2-core machine they compete for the cores), each
evaluating `configs/resnet.py:tiny`'s fresh model on Fashion-MNIST's 10,000 test images
--passes times on 2 CPU devices, in one of two ways:

- merged: `Trainer.evaluate`, one program per batch that merges into the running metrics,
  read back with `jax.device_get`;
- separate: a program per batch returning that batch's metrics, merged and computed by
  small device programs dispatched after it (how evaluation ran before).

A copy that dies (XLA aborts when a collective's rendezvous waits 40 s) counts as aborted.

    python -m experiments.soak.cpu_eval --pattern=separate --passes=100
    python -m experiments.soak.cpu_eval --pattern=merged --passes=250

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
flags.DEFINE_enum("pattern", "merged", ["merged", "separate"], "How each batch is evaluated.")
flags.DEFINE_integer("processes", 2, "Copies started at once.")
flags.DEFINE_integer("passes", 100, "Evaluations of the test split per copy.")
flags.DEFINE_float("timeout", 1800.0, "Seconds after which a copy is killed.")
flags.DEFINE_bool("worker", False, "Internal: run one copy in this process.")
common.define_out("experiments/results/soak/cpu_eval.json")


def evaluate_repeatedly(pattern: str, passes: int) -> None:
    """One copy: `passes` evaluations, printing the count done after each."""
    import jax

    from configs.resnet import get_config
    from imgcls_jax.config import apply_overrides
    from imgcls_jax.training.builder import Trainer

    trainer = Trainer(apply_overrides(get_config("tiny"), {"augment.grid_images": 0}))
    state = trainer.create_state()
    test = trainer.dataset.test
    one_batch = jax.jit(lambda s, b: trainer.eval_step(s, b, trainer.empty_eval_metrics()))
    for done in range(1, passes + 1):
        if pattern == "merged":
            trainer.evaluate(state, test, "test")
        else:
            from imgcls_jax.data import input_pipeline

            total = None
            for batch in input_pipeline.eval_batches(
                test, trainer.config.input.eval_batch_size, trainer.mesh
            ):
                metrics = one_batch(state, batch)
                total = metrics if total is None else total.merge(metrics)
            float(total.compute()["accuracy"])
        print(f"passes {done}", flush=True)


def main(_):
    if FLAGS.worker:
        evaluate_repeatedly(FLAGS.pattern, FLAGS.passes)
        return
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    command = [sys.executable, "-m", "experiments.soak.cpu_eval", "--worker",
               f"--pattern={FLAGS.pattern}", f"--passes={FLAGS.passes}"]  # fmt: skip
    start = time.time()
    copies = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
              for _ in range(FLAGS.processes)]  # fmt: skip
    outcomes = []
    for copy in copies:
        try:
            stdout, stderr = copy.communicate(
                timeout=max(1.0, FLAGS.timeout - (time.time() - start))
            )
        except subprocess.TimeoutExpired:
            copy.kill()
            stdout, stderr = copy.communicate()
        done = [int(line.split()[1]) for line in stdout.splitlines() if line.startswith("passes")]
        stuck = [line for line in stderr.splitlines() if "Termination timeout" in line]
        outcomes.append({"returncode": copy.returncode, "passes": done[-1] if done else 0,
                         "collective_timeout": stuck[0][:300] if stuck else ""})  # fmt: skip
    summary = {
        "pattern": FLAGS.pattern, "processes": FLAGS.processes, "passes": FLAGS.passes,
        "aborted": sum(o["returncode"] != 0 for o in outcomes),
        "collective_timeouts": sum(bool(o["collective_timeout"]) for o in outcomes),
        "wall_s": round(time.time() - start, 1), "copies": outcomes,
    }  # fmt: skip
    print("| pattern | copies | passes asked | passes done per copy | aborted | wall s |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| {FLAGS.pattern} | {FLAGS.processes} | {FLAGS.passes} | "
          f"{', '.join(str(o['passes']) for o in outcomes)} | {summary['aborted']} | "
          f"{summary['wall_s']} |")  # fmt: skip
    common.write_result(FLAGS.out, summary)


if __name__ == "__main__":
    app.run(main)
