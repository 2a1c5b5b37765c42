"""Every preset compiled for TPU pods on this machine (no TPU): `python -m imgcls_jax.training.fit_check` once
per (config, topology), each in its own process; one table per topology.

    JAX_PLATFORMS=cpu python -m experiments.benchmarks.aot_table --out=experiments/results/benchmarks/aot

Presets run at their own global batch, raised to the next multiple of the chip count where it
is smaller (a pod needs at least one image per chip). The goal rows add ResNet-50 at 16,384,
ViT-B/16 at 4,096 on every topology, and ViT-L/16 and ViT-g/14 at 4,096 on v5e:16x16 (ViT-g
data parallel, and with its state sharded over 16 chips). Writes table.json (every report,
with the command and its time) and tables.md (the tables). Takes about an hour on 2 cores.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import time

from absl import app, flags

from experiments import common
from experiments.common import REPO_ROOT

FLAGS = flags.FLAGS
common.define_out("experiments/results/benchmarks/aot")
flags.DEFINE_list("topologies", ["v5e:16x16", "v5p:4x4x8", "v6e:16x16", "v5e:16x16x2"],
                  "Topologies; a trailing xN (after the shape) means N slices.")  # fmt: skip
flags.DEFINE_string("only", "", "Run only rows whose name contains this.")

CHIPS = {"v5e:16x16": 256, "v5p:4x4x8": 128, "v6e:16x16": 256}
CONFIG_FILES = ("configs/resnet.py", "configs/vit.py", "configs/transfer.py")
VIT_224 = ["--config.dataset.image_size=224"]


@dataclasses.dataclass(frozen=True)
class Row:
    name: str
    config: str
    overrides: tuple[str, ...] = ()
    topologies: tuple[str, ...] | None = None  # None: every topology.
    batch: int = 0  # 0: the preset's, raised to a multiple of the chips.


def _module(path: str):
    spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3],
                                                  os.path.join(REPO_ROOT, path))  # fmt: skip
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows() -> list[Row]:
    found = []
    for path in CONFIG_FILES:
        for preset in _module(path).PRESETS:
            found.append(Row(f"{path}:{preset}", f"{path}:{preset}"))
    vit = "configs/vit.py:imagenet"
    found += [
        Row("ResNet-50, batch 16,384", "configs/resnet.py:imagenet", batch=16384),
        Row("ViT-B/16, batch 4,096", vit, ("--config.model.name=vit_b",), batch=4096),
        Row("ViT-L/16, batch 4,096", vit, ("--config.model.name=vit_l",), ("v5e:16x16",), 4096),
        Row("ViT-g/14 at 224 px, batch 4,096, data parallel", vit,
            ("--config.model.name=vit_g", "--config.model.patch_size=14", *VIT_224),
            ("v5e:16x16",), 4096),
        Row("ViT-g/14 at 224 px, batch 4,096, mesh.fsdp=16", vit,
            ("--config.model.name=vit_g", "--config.model.patch_size=14", *VIT_224,
             "--config.mesh.fsdp=16"), ("v5e:16x16", "v5e:16x16x2"), 4096),
    ]  # fmt: skip
    return found


def split_topology(topology: str) -> tuple[str, int]:
    """E.g. "v5e:16x16x2" -> ("v5e:16x16", 2) where the base is a 2-D topology; else (topology, 1)."""
    generation, shape = topology.split(":")
    dims = shape.split("x")
    if generation in ("v5e", "v6e") and len(dims) == 3:
        return f"{generation}:{dims[0]}x{dims[1]}", int(dims[2])
    return topology, 1


def command(row: Row, topology: str, out: str) -> list[str]:
    base, slices = split_topology(topology)
    chips = CHIPS[base] * slices
    path, preset = row.config.split(":")
    config = _module(path).get_config(preset)

    def at_least(size: int) -> int:
        return max(size, math.ceil(size / chips) * chips)

    batch = row.batch or at_least(config.input.batch_size)
    eval_batch = row.batch or at_least(config.input.eval_batch_size)
    return [sys.executable, "-m", "imgcls_jax.training.fit_check", f"--config={row.config}", *row.overrides,
            f"--config.input.batch_size={batch}", f"--config.input.eval_batch_size={eval_batch}",
            f"--topology={base}", f"--num_slices={slices}", f"--out={out}"]  # fmt: skip


def run(row: Row, topology: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        cmd = command(row, topology, out)
        start = time.monotonic()
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
        seconds = time.monotonic() - start
        result = {"row": row.name, "topology": topology, "seconds": round(seconds, 1),
                  "command": shlex.join(["python", *cmd[1:-1]])}  # fmt: skip
        if done.returncode == 0:
            with open(os.path.join(out, "report.json"), encoding="utf-8") as f:
                return result | {"report": json.load(f)}
    last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
    return result | {"refused": last}


def table(results: list[dict], topology: str) -> str:
    from imgcls_jax.reporting import markdown

    lines = []
    for r in results:
        if r["topology"] != topology:
            continue
        if "refused" in r:
            lines.append([r["row"], "", "", "", "refused: " + r["refused"], "", "", "", "",
                          f"{r['seconds']:.0f}"])  # fmt: skip
            continue
        rep = r["report"]
        train = next(p for p in rep["programs"] if p["name"] == "train_step")
        peak = max(p["peak_bytes"] for p in rep["programs"])
        sent = train["collectives"] and sum(c["sent_bytes"] for c in train["collectives"].values())
        est = rep["estimate"]
        lines.append([
            r["row"], f"{rep['global_batch']:,}", rep["per_device_batch"],
            f"{train['argument_bytes'] / 2**30:.2f}", f"{peak / 2**30:.2f}",
            f"{rep['train_flops_per_image'] / 1e9:.2f}",
            f"{(sent or 0) / rep['steps_per_dispatch'] / 2**20:,.0f}",
            f"{est['compute_s'] * 1e3:.1f} / {est['hbm_s'] * 1e3:.1f} / "
            f"{est['collectives_s'] * 1e3:.1f}",
            f"{est['images_per_s']:,.0f}", f"{r['seconds']:.0f}",
        ])  # fmt: skip
    return markdown.table(
        ["config", "global batch", "per chip", "train args GiB", "peak GiB per chip",
         "GFLOP per image", "collectives sent MiB per chip per step",
         "estimate ms: compute / HBM / collectives", "estimated images/s", "compile s here"],
        lines,
    )  # fmt: skip


def main(argv: list[str]) -> None:
    del argv

    os.makedirs(FLAGS.out, exist_ok=True)
    results = []
    for topology in FLAGS.topologies:
        for row in rows():
            if FLAGS.only not in row.name or (row.topologies and topology not in row.topologies):
                continue
            result = run(row, topology)
            results.append(result)
            status = result.get("refused") or "{:.2f} GiB peak".format(
                max(p["peak_bytes"] for p in result["report"]["programs"]) / 2**30
            )
            print(f"{topology:14s} {row.name:60s} {result['seconds']:6.0f} s  {status}", flush=True)
            with open(os.path.join(FLAGS.out, "table.json"), "w", encoding="utf-8") as f:
                json.dump(results, f, indent=1)
    sections = [f"### {t}\n\n{table(results, t)}" for t in FLAGS.topologies]
    with open(os.path.join(FLAGS.out, "tables.md"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(sections) + "\n")
    print("\n\n".join(sections))


if __name__ == "__main__":
    app.run(main)
