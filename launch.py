"""Entry point: `python launch.py --config=configs/resnet.py[:PRESET] --workdir=DIR [--config.X=V]`."""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, optionally with :PRESET.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_enum(
    "distributed", "auto", ["auto", "on", "off"],
    "jax.distributed: auto (with the flags below, or in a multi-process SLURM/Cloud TPU job), "
    "on (always; Cloud TPU VMs find every worker themselves) or off.",
)  # fmt: skip
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0.")
flags.DEFINE_integer("num_processes", None, "Multi-process: total number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_library_info_logs() -> None:
    """Drops Orbax's per-save INFO chatter so the training log stays readable."""

    def keep(record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

    for handler in std_logging.getLogger().handlers:
        handler.addFilter(keep)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses flags; a misspelled --config.KEY override exits with one line, not a traceback."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:  # Raised by ml_collections for unknown keys.
        message = str(e).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        sys.exit(f"launch.py: bad config override: {message}")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    _quiet_library_info_logs()
    from imgcls_jax import multihost

    multihost.initialize(
        FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
    )
    from imgcls_jax.train import train_and_evaluate

    logging.info("Config:\n%s", FLAGS.config)
    results = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    logging.info("Results: %s", results)


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
