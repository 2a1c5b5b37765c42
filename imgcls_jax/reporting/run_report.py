"""The report every training run leaves in its workdir: curves, confusion matrix, per-class scores.

Files: ``learning_curves.png`` (train vs validation loss and accuracy), ``confusion_matrix.png``,
``report.json`` (final metrics, confusion matrix, per-class accuracy) and ``report.md``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from imgcls_jax.reporting import confusion, markdown, writers

REPORT_FILES = ("learning_curves.png", "confusion_matrix.png", "report.json", "report.md")


def write_run_report(
    workdir: str,
    results: Mapping[str, Any],
    matrix: np.ndarray,
    class_names: Sequence[str],
    split: str,
    details: Mapping[str, Any] | None = None,
) -> None:
    """Writes the report files; `matrix` holds [true, predicted] counts on `split`.

    `details` (optional) adds what the run was: "config" (a dict), "parameters", "devices",
    "compute" (the dtype and kernels used), "image_shape", "class_counts" ({split: [count per class]}), "run_s", "compile_s",
    "fit_check" (`aot.programs.check_devices`) and "distillation" (teacher, weight, temperature).
    """
    per_class = confusion.per_class_accuracy(matrix)
    report = {
        "results": dict(results),
        "split": split,
        "class_names": list(class_names),
        "confusion_matrix": np.asarray(matrix).tolist(),
        "per_class_accuracy": {n: _finite(a) for n, a in zip(class_names, per_class)},
        "balanced_accuracy": confusion.balanced_accuracy(matrix),
        **(details or {}),
    }
    with epath.Path(workdir, "report.json").open("w") as f:
        json.dump(report, f, indent=2)
    with epath.Path(workdir, "report.md").open("w") as f:
        f.write(_markdown(report, matrix))
    records = writers.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    plot_learning_curves(records, os.path.join(workdir, "learning_curves.png"))
    plot_confusion_matrix(matrix, class_names, split, os.path.join(workdir, "confusion_matrix.png"))


def _finite(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def _markdown(report: Mapping[str, Any], matrix: np.ndarray) -> str:
    scalars = {k: v for k, v in report["results"].items() if "/" in k}
    support = np.asarray(matrix).sum(axis=1)
    per_class = [
        [name, int(n), "n/a" if acc is None else f"{100 * acc:.2f}"]
        for (name, acc), n in zip(report["per_class_accuracy"].items(), support)
    ]
    sections = ["# Run report", _run_section(report)]
    sections.append("## Final metrics\n\n" + markdown.table(
        ["metric", "value"], [[k, f"{v:.6g}"] for k, v in scalars.items()]
    ))  # fmt: skip
    sections.append(
        f"## Per-class accuracy ({report['split']}; balanced accuracy "
        f"{100 * report['balanced_accuracy']:.2f}%)\n\n"
        + markdown.table(["class", "examples", "accuracy %"], per_class)
    )
    if "class_counts" in report:
        counts = report["class_counts"]
        rows = [[name, *(counts[s][i] for s in counts)]
                for i, name in enumerate(report["class_names"])]  # fmt: skip
        rows.append(["all", *(sum(counts[s]) for s in counts)])
        sections.append("## Examples per class\n\n" + markdown.table(["class", *counts], rows))
    if "config" in report:
        flat = _flatten(report["config"])
        sections.append("## Config\n\n<details><summary>every field</summary>\n\n"
                        + markdown.table(["field", "value"], [[k, f"`{v}`"] for k, v in flat])
                        + "\n\n</details>")  # fmt: skip
    return "\n\n".join(sections) + "\n"


def _run_section(report: Mapping[str, Any]) -> str:
    results, config = report["results"], report.get("config", {})
    rows = []
    if config:
        model = config["model"]
        rows += [["model", f"{model['name']} (width {model['width']}, {model['dtype']})"],
                 ["dataset", f"{config['dataset']['name']}"]]  # fmt: skip
    if "parameters" in report:
        rows.append(["parameters", f"{report['parameters']:,}"])
    if "image_shape" in report:
        rows.append(["images", " x ".join(map(str, report["image_shape"]))])
    rows.append(["steps", str(results.get("step"))])
    if "best_step" in results:
        rows.append(["best step (validation)", str(results["best_step"])])
    if "devices" in report:
        rows.append(["devices", str(report["devices"])])
    if "compute" in report:
        rows.append(["compute", f"{report['compute']['dtype']} on {report['compute']['kernels']} "
                                "kernels"])  # fmt: skip
    if "fit_check" in report:
        fit = report["fit_check"]
        peaks = ", ".join(f"{p['name']} {p['peak_bytes'] / 2**30:.3f}" for p in fit["programs"])
        memory = fit["memory_bytes"] and f"{fit['memory_bytes'] / 2**30:.2f} GiB"
        rows.append(["fit check (before training)", f"peak GiB per device: {peaks}; a "
                     f"{fit['device_kind']} has {memory or 'unreported memory'}"])  # fmt: skip
    if "distillation" in report:
        kd = report["distillation"]
        rows.append(["distilled from", f"{kd['teacher']} ({kd['teacher_model']}; weight "
                     f"{kd['weight']}, temperature {kd['temperature']})"])  # fmt: skip
    if "run_s" in report:
        rows.append(["wall time", f"{report['run_s']:.1f} s, of which compiling "
                                  f"{report['compile_s']:.1f} s"])  # fmt: skip
    return "## Run\n\n" + markdown.table(["", ""], rows)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in tree.items():
        if isinstance(value, Mapping):
            items += _flatten(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


# The curves' losses: train without label smoothing where the run smoothed (the validation
# loss never smooths); train's is measured on the augmented (and mixed) batches it trained on.
TRAIN_LOSS_KEYS = ("train/loss_no_smoothing", "train/loss")


def plot_learning_curves(records: Sequence[Mapping[str, Any]], path: str) -> None:
    """Loss and accuracy against step, train and validation on the same axes; both losses
    are cross-entropy without label smoothing."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    train_loss = next((k for k in TRAIN_LOSS_KEYS if any(k in r for r in records)), "train/loss")
    keys = {"loss": {"train": train_loss, "val": "val/loss"},
            "accuracy": {"train": "train/accuracy", "val": "val/accuracy"}}  # fmt: skip
    titles = {"loss": "cross-entropy, no label smoothing", "accuracy": "accuracy"}
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-"), ("val", "o-")):
            key = keys[metric][split]
            points = [(r["step"], r[key]) for r in records if key in r]
            if points:
                label = "train (augmented batches)" if split == "train" else "validation"
                ax.plot(*zip(*points), style, markersize=3, label=label)
        ax.set(xlabel="step", ylabel=metric, title=titles[metric])
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save_figure(fig, path)


def plot_confusion_matrix(
    matrix: np.ndarray, class_names: Sequence[str], split: str, path: str
) -> None:
    """Row-normalised colours (recall), counts written in the cells for up to 30 classes."""
    plt = _pyplot()
    matrix = np.asarray(matrix)
    num = len(class_names)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = min(4 + 0.45 * num, 30)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, label="fraction of the true class")
    if num <= 30:
        ax.set_xticks(range(num), class_names, rotation=45, ha="right", fontsize="small")
        ax.set_yticks(range(num), class_names, fontsize="small")
        for (i, j), count in np.ndenumerate(matrix):
            color = "white" if normalised[i, j] > 0.5 else "black"
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7, color=color)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix ({split})")
    fig.tight_layout()
    _save_figure(fig, path)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_figure(fig, path: str) -> None:
    """Saves a matplotlib figure as PNG to a local or gs:// path and closes it."""
    with epath.Path(path).open("wb") as f:
        fig.savefig(f, dpi=100, format="png")
    _pyplot().close(fig)
