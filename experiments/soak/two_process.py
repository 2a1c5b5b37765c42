"""Soak: do two-process runs ever hang or fail at checkpoint saves?

Starts N trainings of `configs/resnet.py:tiny`, each as 2 `launch.py` processes x 2 CPU
devices joined by `jax.distributed` on 127.0.0.1, with a checkpoint at every step and an
evaluation (which may save the best step too) every few steps. A run that has not finished
within --timeout counts as a hang; both processes are then killed. A finished run must leave
results.json and no temporary checkpoint directory.

    python -m experiments.soak.two_process --runs=20

Prints a table and writes JSON to --out.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
flags.DEFINE_integer("runs", 20, "Two-process trainings to run, one after another.")
flags.DEFINE_integer("steps", 24, "Train steps per run; each one is checkpointed.")
flags.DEFINE_integer("eval_every_steps", 4, "Steps between evaluations (best-step saves).")
flags.DEFINE_float("timeout", 240.0, "Seconds after which a run counts as hung.")
common.define_out("experiments/results/soak/two_process.json")

TRAIN_EXAMPLES, BATCH = 2000, 64  # The tiny preset's: 31 steps per epoch.


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(workdir: str, steps: int, eval_every_steps: int, timeout: float) -> dict:
    """One two-process training; returns its outcome ("ok", "hang" or "failed") and facts."""
    steps_per_epoch = TRAIN_EXAMPLES // BATCH
    overrides = {
        "training.num_train_steps": steps,
        "training.checkpoint_every_steps": 1,
        "training.keep_checkpoints": 2,
        "training.log_every_steps": 1,
        "training.eval_every_epochs": eval_every_steps / steps_per_epoch,
        "dataset.validation_size": 500,
        "augment.grid_images": 0,
    }
    address = f"127.0.0.1:{_free_port()}"
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    logs = [open(os.path.join(workdir + f".process{i}.log"), "w+") for i in range(2)]
    start = time.monotonic()
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "launch.py",
                "--config=configs/resnet.py:tiny",
                *(f"--config.{k}={v}" for k, v in overrides.items()),
                f"--workdir={workdir}",
                f"--coordinator_address={address}",
                "--num_processes=2",
                f"--process_id={i}",
            ],
            cwd=REPO_ROOT,
            env=env,
            stdout=logs[i],
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for i in range(2)
    ]
    codes: list[int | None] = [None, None]
    deadline = start + timeout
    while None in codes and time.monotonic() < deadline:
        codes = [p.poll() for p in processes]
        time.sleep(0.1)
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()
    seconds = time.monotonic() - start
    checkpoints = os.path.join(workdir, "checkpoints")
    names = sorted(os.listdir(checkpoints)) if os.path.isdir(checkpoints) else []
    finished = os.path.exists(os.path.join(workdir, "results.json"))
    tails = []
    for log in logs:
        log.seek(0)
        tails.append(log.read()[-2000:])
        log.close()
    if None in codes:
        outcome = "hang"
    elif codes == [0, 0] and finished and not [n for n in names if "tmp" in n]:
        outcome = "ok"
    else:
        outcome = "failed"
    return {"outcome": outcome, "exit_codes": codes, "seconds": round(seconds, 1),
            "checkpoints": names, "results_json": finished,
            "log_tails": tails if outcome != "ok" else []}  # fmt: skip


def main(argv):
    del argv
    root = tempfile.mkdtemp(prefix="soak_two_process_")
    runs = []
    print("| run | outcome | exit codes | seconds | checkpoints left |")
    print("| --- | --- | --- | --- | --- |")
    for i in range(FLAGS.runs):
        row = run_once(os.path.join(root, f"run{i}"), FLAGS.steps, FLAGS.eval_every_steps,
                       FLAGS.timeout)  # fmt: skip
        runs.append(row)
        print(f"| {i} | {row['outcome']} | {row['exit_codes']} | {row['seconds']} | "
              f"{' '.join(row['checkpoints'])} |", flush=True)  # fmt: skip
    counts = {k: sum(r["outcome"] == k for r in runs) for k in ("ok", "hang", "failed")}
    print(f"\n{counts['hang']} of {len(runs)} runs hung, {counts['failed']} failed.")
    summary = {"command": " ".join(sys.argv), "steps": FLAGS.steps,
               "eval_every_steps": FLAGS.eval_every_steps, "timeout_s": FLAGS.timeout,
               "counts": counts, "runs": runs}  # fmt: skip
    common.write_result(FLAGS.out, summary)
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
