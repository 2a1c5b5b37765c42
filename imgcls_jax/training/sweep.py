"""Sweeps: a grid of config overrides x seeds, one workdir per run, resumable, aggregated.

A sweep is a base config, a grid (``{"key": [values]}``, every combination) or a list of
override dicts, and seeds. Each run trains in ``root/<variant>/seed_<n>``; a run whose
``results.json`` exists is finished and is not rerun, and an unfinished one resumes from its
checkpoints. The results go to ``root/runs.csv``, ``root/summary.json``, ``root/summary.md``
(mean ± sample std over seeds) and two plots.
"""

from __future__ import annotations

import ast
import csv
import dataclasses
import itertools
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from concurrent import futures
from multiprocessing import get_context
from typing import Any

import ml_collections
import numpy as np

from imgcls_jax.config import apply_overrides
from imgcls_jax.reporting import markdown, writers

Grid = Mapping[str, Sequence[Any]] | Sequence[Mapping[str, Any] | tuple[str, Mapping[str, Any]]]


@dataclasses.dataclass(frozen=True)
class Run:
    """One training run of a sweep: a variant (its overrides) with one seed."""

    variant: str
    overrides: tuple[tuple[str, Any], ...]
    seed: int

    @property
    def directory(self) -> str:
        return os.path.join(re.sub(r"[^\w.=,+-]+", "_", self.variant), f"seed_{self.seed}")


def variant_name(overrides: Mapping[str, Any]) -> str:
    """``"key=value,..."`` (an empty string shows as ``''``), or ``"base"`` for no overrides."""
    return ",".join(f"{k}={v if v != '' else repr(v)}" for k, v in overrides.items()) or "base"


def expand(grid: Grid, seeds: Sequence[int]) -> list[Run]:
    """Every variant of `grid` with every seed, in the grid's order. A grid is a dict of lists
    (all combinations) or a list of override dicts, each optionally as (name, dict)."""
    if isinstance(grid, Mapping):
        keys = list(grid)
        entries = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    else:
        entries = list(grid)
    named = [e if isinstance(e, tuple) else (variant_name(e), e) for e in entries]
    names = [name for name, _ in named]
    variants = [dict(overrides) for _, overrides in named]
    if len(set(names)) != len(names):
        raise ValueError(f"Two variants of the grid have the same name: {names}.")
    return [
        Run(name, tuple(overrides.items()), seed)
        for name, overrides in zip(names, variants)
        for seed in seeds
    ]


def run_config(base: ml_collections.ConfigDict, run: Run) -> ml_collections.ConfigDict:
    """The base config with the run's overrides and seed (unknown keys raise)."""
    return apply_overrides(base, {**dict(run.overrides), "seed": run.seed})


def _train(config: ml_collections.ConfigDict, workdir: str, dataset) -> dict[str, Any]:
    from imgcls_jax.training.loop import train_and_evaluate  # Imported in the worker process.

    return train_and_evaluate(config, workdir, dataset)


def run_sweep(
    base: ml_collections.ConfigDict,
    runs: Sequence[Run],
    root: str,
    dataset=None,
    parallel: int = 1,
    train_fn: Callable[..., dict[str, Any]] = _train,
) -> list[dict[str, Any]]:
    """Trains every unfinished run (`parallel` at a time, each in its own process when > 1)
    and returns one row per run: variant, seed, overrides and its results.json."""
    configs = {run: run_config(base, run) for run in runs}  # Bad keys fail before training.
    pending = [run for run in runs if not os.path.exists(_results_path(root, run))]
    if parallel > 1 and len(pending) > 1:
        with futures.ProcessPoolExecutor(parallel, mp_context=get_context("spawn")) as pool:
            jobs = [
                pool.submit(train_fn, configs[r], os.path.join(root, r.directory), dataset)
                for r in pending
            ]
            for job in jobs:
                job.result()
    else:
        for run in pending:
            train_fn(configs[run], os.path.join(root, run.directory), dataset)
    return [load_row(root, run) for run in runs]


def _results_path(root: str, run: Run) -> str:
    return os.path.join(root, run.directory, "results.json")


def load_row(root: str, run: Run) -> dict[str, Any]:
    with open(_results_path(root, run), encoding="utf-8") as f:
        results = json.load(f)
    return {"variant": run.variant, "seed": run.seed, **dict(run.overrides), **results}


def aggregate(rows: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> list[dict[str, Any]]:
    """Per variant (in first-seen order): n, and mean and sample std (ddof 1) of each metric."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_variant.setdefault(row["variant"], []).append(row)
    summary = []
    for variant, group in by_variant.items():
        entry: dict[str, Any] = {"variant": variant, "n": len(group)}
        for metric in metrics:
            values = np.array([r[metric] for r in group if metric in r], np.float64)
            entry[f"{metric}/mean"] = float(values.mean()) if len(values) else math.nan
            entry[f"{metric}/std"] = float(values.std(ddof=1)) if len(values) > 1 else math.nan
        summary.append(entry)
    return summary


def summary_table(summary: Sequence[Mapping[str, Any]], metrics: Sequence[str]) -> str:
    """Markdown: one row per variant, ``mean ± std`` in percent for accuracies."""

    def cell(entry, metric):
        mean, std = entry[f"{metric}/mean"], entry[f"{metric}/std"]
        scale, digits = (100.0, 2) if "accuracy" in metric else (1.0, 4)
        text = f"{scale * mean:.{digits}f}"
        return text if math.isnan(std) else f"{text} ± {scale * std:.{digits}f}"

    return markdown.table(
        ["variant", "seeds", *metrics],
        [[e["variant"], e["n"], *(cell(e, m) for m in metrics)] for e in summary],
    )


def write_outputs(
    root: str, rows: Sequence[Mapping[str, Any]], runs: Sequence[Run], metrics: Sequence[str]
) -> list[dict[str, Any]]:
    """Writes runs.csv, summary.json, summary.md, learning_curves.png and final_metrics.png."""
    summary = aggregate(rows, metrics)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(os.path.join(root, "runs.csv"), "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    with open(os.path.join(root, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"metrics": list(metrics), "summary": summary, "runs": list(rows)}, f, indent=2)
    with open(os.path.join(root, "summary.md"), "w", encoding="utf-8") as f:
        f.write(summary_table(summary, metrics) + "\n")
    _plot_learning_curves(root, runs, os.path.join(root, "learning_curves.png"))
    _plot_final_metric(summary, metrics[0], os.path.join(root, "final_metrics.png"))
    return summary


def _plot_learning_curves(root: str, runs: Sequence[Run], path: str) -> None:
    """Validation accuracy and train/val loss against step, mean over seeds per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for variant in dict.fromkeys(r.variant for r in runs):
        curves = [
            writers.read_metrics(os.path.join(root, r.directory, "metrics.jsonl"))
            for r in runs
            if r.variant == variant
        ]
        line = None
        for key, ax, style in (
            ("val/accuracy", acc_ax, "-"),
            ("val/loss", loss_ax, "-"),
            ("train/loss", loss_ax, ":"),
        ):
            steps, values = _mean_curve(curves, key)
            if len(steps):
                color = line.get_color() if line is not None else None
                (plotted,) = ax.plot(steps, values, style, color=color, marker=".",
                                     label=variant if line is None else None)  # fmt: skip
                line = line or plotted
    acc_ax.set(xlabel="step", ylabel="validation accuracy")
    loss_ax.set(xlabel="step", ylabel="loss (solid: validation, dotted: train)")
    acc_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _mean_curve(curves: Sequence[Sequence[Mapping]], key: str) -> tuple[list, list]:
    """Mean over runs of `key` at the steps that every run logged."""
    per_run = [{r["step"]: r[key] for r in records if key in r} for records in curves]
    steps = sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return steps, [float(np.mean([p[s] for p in per_run])) for s in steps]


def _plot_final_metric(summary: Sequence[Mapping[str, Any]], metric: str, path: str) -> None:
    """Bar chart of `metric` per variant with sample-std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [e["variant"] for e in summary]
    means = [e[f"{metric}/mean"] for e in summary]
    stds = [0.0 if math.isnan(e[f"{metric}/std"]) else e[f"{metric}/std"] for e in summary]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(names) + 2), 4))
    ax.bar(range(len(names)), means, yerr=stds, capsize=4, color="tab:blue")
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
    low = min(m - s for m, s in zip(means, stds))
    high = max(m + s for m, s in zip(means, stds))
    ax.set_ylim(max(0.0, low - 0.1 * (high - low + 1e-3)), high + 0.1 * (high - low + 1e-3))
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``; values are Python literals or strings."""
    parsed = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        if not sep:
            raise ValueError(f"Expected KEY=VALUE, got {assignment!r}.")
        try:
            parsed[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            parsed[key.strip()] = text
    return parsed
