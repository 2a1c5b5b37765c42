"""The fit check's report as Markdown: the pod, per-chip memory of each program, the train
step's collectives and the roofline estimate, labelled as one."""

from __future__ import annotations

from typing import Any

from imgcls_jax.reporting import markdown
from imgcls_jax.runtime.aot.chips import GIB


def _gib(value: float) -> str:
    return f"{value / GIB:.3f}"


def render(report: dict[str, Any]) -> str:
    """The report as Markdown."""
    chip, estimate = report["chip"], report["estimate"]
    lines = [
        f"## {report['model']} ({report['dtype']}, {'x'.join(map(str, report['image']))}) on "
        f"{report['topology']}"
        + (f" x {report['num_slices']} slices" if report["num_slices"] > 1 else ""),  # fmt: skip
        "",
        f"{report['devices']} devices ({chip['name']}), {report['hosts']} hosts, mesh "
        f"{' x '.join(f'{axis} {size}' for axis, size in report['mesh'].items())}; global batch "
        f"{report['global_batch']}, {report['per_device_batch']} per device, "
        f"{report['grad_accum_steps']} micro-batch(es), {report['steps_per_dispatch']} step(s) "
        f"per call; {_gib(chip['hbm_bytes'])} GiB HBM per chip ({chip['source']}).",
        "",
        _memory_table(report),
        "",
        f"Train step: {report['train_flops_per_image'] / 1e9:.4g} GFLOP per image (XLA's cost "
        "analysis of the compiled program).",
        "",
    ]
    train = next(p for p in report["programs"] if p["name"] == "train_step")
    if train["collectives"]:
        lines += [markdown.table(
            ["collective (train call)", "count", "result MiB per chip", "sent MiB per chip"],
            [[kind, int(row["count"]), f"{row['result_bytes'] / 2**20:.2f}",
              f"{row['sent_bytes'] / 2**20:.2f}"] for kind, row in train["collectives"].items()],
        ), ""]  # fmt: skip
    lines += [
        "**Estimate, not a measurement** (a roofline from the compiled program's counts and the "
        "chip's published peaks; no TPU ran): per step "
        f"compute {estimate['compute_s'] * 1e3:.1f} ms at peak, HBM traffic "
        f"{estimate['hbm_s'] * 1e3:.1f} ms, collectives {estimate['collectives_s'] * 1e3:.1f} ms "
        f"-> {estimate['step_s'] * 1e3:.1f} ms per step, {estimate['images_per_s']:,.0f} images/s, "
        f"{estimate['epoch_s']:,.0f} s per epoch of {report['train_examples']:,} images."
        + (" With several slices the collectives inside a slice are charged at the data-centre "
           "network's bandwidth and the reductions between slices (Megascale operations, not "
           "HLO collectives) are not counted: a rough figure." if report["num_slices"] > 1
           else ""),
    ]  # fmt: skip
    return "\n".join(lines)


def _memory_table(report: dict[str, Any]) -> str:
    return markdown.table(
        ["program", "arguments GiB", "outputs GiB", "donated GiB", "temporaries GiB", "code GiB",
         "peak GiB per chip"],
        [[p["name"], _gib(p["argument_bytes"]), _gib(p["output_bytes"]), _gib(p["alias_bytes"]),
          _gib(p["temp_bytes"]), _gib(p["code_bytes"]), _gib(p["peak_bytes"])]
         for p in report["programs"]],
    )  # fmt: skip
