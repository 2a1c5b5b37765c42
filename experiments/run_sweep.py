"""Runs a sweep from the command line; ablation scripts in this folder call `main_for`.

    python -m experiments.run_sweep --config=configs/resnet.py:tiny --root=/tmp/sweep \\
        --grid='{"model.width": [4, 8], "optimizer.learning_rate": [0.05, 0.1]}' --seeds=2

Every run trains in REPO_ROOT/<variant>/seed_<n>; rerunning the command skips finished runs and
resumes unfinished ones. Writes REPO_ROOT/runs.csv, summary.json, summary.md (mean ± std over
seeds), learning_curves.png and final_metrics.png, and prints the table.
`--set=KEY=VALUE` (repeatable) changes the base config for every run, after the script's own
fixed settings.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", "configs/resnet.py", "Base config file[:preset].")
flags.DEFINE_string("root", None, "Sweep directory (one workdir per run below it).")
flags.DEFINE_string("grid", "", "JSON: {key: [values]} (all combinations) or [{key: value}].")
flags.DEFINE_multi_string("set", [], "KEY=VALUE applied to the base config of every run.")
flags.DEFINE_integer("seeds", 1, "Seeds per variant: 0, 1, ..., seeds - 1.")
flags.DEFINE_integer("parallel", 1, "Runs at a time, each in its own process.")
flags.DEFINE_list("metrics", "test/accuracy,val/accuracy", "Metrics to aggregate.")


def main_for(grid, fixed: Mapping[str, Any] = {}, metrics: Sequence[str] | None = None):  # noqa: B006
    """An absl main that sweeps `grid` over the base config plus `fixed` (then --set); `grid`
    may be a function of that base config that returns the grid."""

    def main(argv):
        del argv
        from imgcls_jax.config import apply_overrides
        from imgcls_jax.training import sweep

        if not FLAGS.root:
            raise app.UsageError("--root is required.")
        try:  # A misspelled key or bad value: one line naming the closest key, no traceback.
            base = apply_overrides(FLAGS.config, {**fixed, **sweep.parse_assignments(FLAGS.set)})
            runs = sweep.expand(grid(base) if callable(grid) else grid, range(FLAGS.seeds))
            for run in runs:
                sweep.run_config(base, run)
        except (KeyError, ValueError) as error:
            raise app.UsageError(error.args[0] if error.args else str(error)) from error
        os.makedirs(FLAGS.root, exist_ok=True)
        rows = sweep.run_sweep(base, runs, FLAGS.root, parallel=FLAGS.parallel)
        chosen = list(metrics or FLAGS.metrics)
        summary = sweep.write_outputs(FLAGS.root, rows, runs, chosen)
        print(sweep.summary_table(summary, chosen))
        print(f"Wrote {FLAGS.root}/summary.md, runs.csv, summary.json and plots.")

    return main


def main(argv):
    if not FLAGS.grid:
        raise app.UsageError("--grid is required, e.g. --grid='{\"model.width\": [4, 8]}'.")
    main_for(json.loads(FLAGS.grid))(argv)


if __name__ == "__main__":
    app.run(main)
