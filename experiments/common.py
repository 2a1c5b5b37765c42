"""What the experiment scripts share: the repository's root, the flags they repeat, and one
way to write a result (a JSON with the commit, date, machine and command inside)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
from typing import Any

from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_out(default: str) -> None:
    """--out: where the result's JSON goes."""
    flags.DEFINE_string("out", default, "Where to write the JSON.")


def define_synthetic_images(image_size: int = 28, channels: int = 1, num_classes: int = 0) -> None:
    """--image_size, --channels (and --num_classes, when given a default): synthetic data."""
    flags.DEFINE_integer("image_size", image_size, "Synthetic image side.")
    flags.DEFINE_integer("channels", channels, "Synthetic image channels.")
    if num_classes:
        flags.DEFINE_integer("num_classes", num_classes, "Synthetic classes.")


def define_rounds(rounds: int) -> None:
    """--rounds: interleaved rounds of every variant (the median is reported)."""
    flags.DEFINE_integer("rounds", rounds, "Interleaved rounds; the median is reported.")


def provenance() -> dict[str, Any]:
    """The commit (with "+changes" for a modified tree), date, machine and command."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True,
                                  text=True, check=True).stdout.strip()  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return ""

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--untracked-files=no"):
        commit += "+changes"
    cpu = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{cpu}, {os.cpu_count()} cores",
        "command": " ".join(["python", "-m", _module(), *sys.argv[1:]]),
    }


def _module() -> str:
    main = sys.modules["__main__"]
    spec = getattr(main, "__spec__", None)
    return spec.name if spec is not None else os.path.relpath(sys.argv[0], REPO_ROOT)


def write_result(path: str, result: dict[str, Any]) -> None:
    """Writes `result` with its provenance (`provenance()`) as JSON to `path`."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump({**result, "provenance": provenance()}, f, indent=2)
