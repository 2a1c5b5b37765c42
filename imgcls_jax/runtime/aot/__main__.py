"""Does this config fit that TPU pod, and what would a step cost there? Compiled here, no TPU:

    python -m imgcls_jax.runtime.aot --config=configs/resnet.py:imagenet --topology=v5e:16x16
    python -m imgcls_jax.runtime.aot --config=configs/vit.py:imagenet --topology=v5e:16x16 --num_slices=2

Prints a table and writes report.json and report.md to --out. Exits 1 with one line when a
program does not fit a chip's memory, saying what would. Needs libtpu: `pip install -e ".[tpu]"`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags; defined when it runs, so that importing this module defines none
    (other commands and scripts define --config and --out too)."""
    config_flags.DEFINE_config_file("config", None, "Config file, optionally with :PRESET.",
                                    lock_config=True)  # fmt: skip
    flags.DEFINE_string("topology", None, "TPU topology GENERATION:SHAPE, e.g. v5e:16x16.")
    flags.DEFINE_integer("num_slices", 1, "Slices of the topology joined over the data-centre "
                         "network.")  # fmt: skip
    flags.DEFINE_integer(
        "num_classes", 0, "Classes, for a dataset not in aot.check.KNOWN_DATASETS."
    )
    flags.DEFINE_integer("train_examples", 0, "Train examples, likewise (sets the epoch's length).")
    flags.DEFINE_string("out", "", "Folder for report.json and report.md ('' writes nothing).")
    flags.mark_flags_as_required(["config", "topology"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from imgcls_jax.runtime.aot import check, report
    from imgcls_jax.training import config_check

    try:
        config_check.validate(FLAGS.config)
        result = check.check(FLAGS.config, FLAGS.topology, FLAGS.num_slices, FLAGS.num_classes,
                             FLAGS.train_examples)  # fmt: skip
    except ValueError as error:
        sys.exit(f"imgcls_jax.runtime.aot: {error}")
    text = report.render(result)
    print(text)
    if FLAGS.out:
        os.makedirs(FLAGS.out, exist_ok=True)
        with open(os.path.join(FLAGS.out, "report.json"), "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
        with open(os.path.join(FLAGS.out, "report.md"), "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    from imgcls_jax.config import flags_parser

    define_flags()
    app.run(main, flags_parser=flags_parser("imgcls_jax.runtime.aot"))
