"""The training command: `python launch.py --config=configs/resnet.py[:PRESET] --workdir=DIR
[--config.X=V]` (installed as `imgcls-train` too): flags, jax.distributed set-up, one call
into `loop.train_and_evaluate`, and one-line errors for what the user can fix.

With `--tpu=NAME --tpu_zone=Z --tpu_type=T` it prints (with `--tpu_run`, also runs) the gcloud
commands that start the same training on every worker of a Cloud TPU VM instead; with
`--k8s=NAME --k8s_image=IMAGE` and `--k8s_tpu=v5e:16x16` or `--k8s_gpus=8 --k8s_nodes=4` it
writes the Kubernetes manifests (a JobSet, or an Indexed Job and a headless Service).
"""

import logging as std_logging
import os
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS


def define_flags() -> None:
    """The command's flags; defined when it runs, so that importing this module defines none
    (experiment scripts and other commands define --config too)."""
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
    flags.DEFINE_string("tpu", None, "Cloud TPU VM name: print the gcloud commands for this job.")
    flags.DEFINE_string("tpu_zone", None, "Cloud TPU zone, e.g. us-central2-b.")
    flags.DEFINE_string("tpu_type", None, "Cloud TPU accelerator type, e.g. v4-32.")
    flags.DEFINE_string("tpu_version", "", "Cloud TPU VM runtime version; '' picks the "
                        "generation's (v6e, v5p, v5litepod: v2-alpha-*; older: tpu-ubuntu2204-base).")  # fmt: skip
    flags.DEFINE_bool("tpu_queued", False, "Request the slice as a queued resource and wait until "
                      "it is ACTIVE (how v5e, v5p, v6e and Spot capacity is usually obtained).")  # fmt: skip
    flags.DEFINE_string("tpu_project", "", "Google Cloud project (default: gcloud's).")
    flags.DEFINE_bool("tpu_spot", False, "Create the TPU VM as Spot (preemptible) capacity.")
    flags.DEFINE_bool("tpu_run", False, "Run the gcloud commands instead of only printing them.")
    flags.DEFINE_string("k8s", None, "Kubernetes job name: write the manifests that run this job on "
                        "a GKE TPU slice (--k8s_tpu) or on GPU nodes (--k8s_gpus) instead.")  # fmt: skip
    flags.DEFINE_string("k8s_image", None, "Container image with this project installed "
                        "(docs/scale_out.md shows how to build it).")  # fmt: skip
    flags.DEFINE_string("k8s_tpu", None, "GKE TPU slice topology, e.g. v5e:16x16: a JobSet.")
    flags.DEFINE_integer("k8s_slices", 1, "TPU slices of --k8s_tpu (multislice).")
    flags.DEFINE_integer("k8s_gpus", None, "GPUs per node: an Indexed Job and a headless Service.")
    flags.DEFINE_integer("k8s_nodes", 1, "GPU nodes (one process each).")
    flags.DEFINE_string("k8s_out", "", "Write the manifests to this file ('' prints them).")
    flags.DEFINE_bool(
        "reuse_host_memory", True,
        "glibc: keep freed host memory in the process, so XLA:CPU's step buffers are not "
        "page-faulted in again every step (imgcls_jax/runtime/host_memory.py). CPU runs only.",
    )  # fmt: skip
    flags.DEFINE_string(
        "compilation_cache", "~/.cache/imgcls_jax/jax_compilation_cache",
        "JAX's persistent compilation cache: a relaunch (resume, sweep, new seed) loads the "
        "compiled steps instead of compiling again. '' disables it; JAX_COMPILATION_CACHE_DIR wins.",
    )  # fmt: skip
    flags.DEFINE_bool("fit_check", False, "Before training, compile the run's programs and check "
                      "them against the devices' memory (python -m imgcls_jax.training.fit_check does it without "
                      "the devices); a run that does not fit stops in one line.")  # fmt: skip
    flags.DEFINE_bool(
        "traceback", False, "Show the full traceback of a config, data or workdir error."
    )
    flags.mark_flags_as_required(["config", "workdir"])


# Errors that mean a mistake in the config, the data, the workdir or a diverging run; they
# say what to fix, so launch.py prints them as one line (--traceback shows the rest).
USER_ERRORS = (ValueError, FloatingPointError, OSError)


def _quiet_library_info_logs() -> None:
    """Drops Orbax's per-save INFO chatter so the training log stays readable."""

    def keep(record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname

    for handler in std_logging.getLogger().handlers:
        handler.addFilter(keep)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if FLAGS.tpu:
        return launch_on_tpu()
    if FLAGS.k8s:
        return write_kubernetes_manifests()
    _quiet_library_info_logs()
    from imgcls_jax.runtime import host_memory
    from imgcls_jax.runtime.clusters import multihost

    on_cpus = host_memory.devices_are_cpus()
    if on_cpus and not os.environ.get("JAX_PLATFORMS"):
        import jax

        # No accelerator: JAX need not start libtpu (installed for imgcls_jax.training.fit_check) to find none.
        jax.config.update("jax_platforms", "cpu")
    reuse = FLAGS.reuse_host_memory and on_cpus
    if reuse and host_memory.reuse_freed_memory():  # Before JAX's threads.
        logging.info("Host memory: freed memory is kept for reuse (--reuse_host_memory).")

    try:
        multihost.initialize(
            FLAGS.distributed, FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id
        )
    except ValueError as e:  # A job JAX cannot join, or contradicting flags.
        sys.exit(f"launch.py: {e}")
    _use_compilation_cache(FLAGS.compilation_cache)
    import jax

    from imgcls_jax.training.loop import train_and_evaluate

    try:
        results = train_and_evaluate(FLAGS.config, FLAGS.workdir, fit_check=FLAGS.fit_check)
    except jax.errors.JaxRuntimeError:
        # With several processes, a failed collective usually means a dead peer: its one line
        # (from the peer watch) instead of the collective's traceback.
        multihost.explain_collective_failure()
        raise
    except USER_ERRORS as e:
        if FLAGS.traceback:
            raise
        # What the user can fix (config, data, workdir, divergence): one line, no traceback.
        sys.exit(f"launch.py: {type(e).__name__}: {e}{_relaunch(getattr(e, 'overrides', {}))}")
    multihost.finished()
    logging.info("Results: %s", results)


def _relaunch(overrides: dict) -> str:
    """The end of a divergence's message: this command line with `overrides` (config keys)
    set, after "Relaunch:"; "" when there are none."""
    if not overrides:
        return ""
    names = {f"--config.{key}" for key in overrides}
    kept = [a for a in sys.argv[1:] if a.split("=")[0] not in names]
    added = [f"--config.{key}={value}" for key, value in overrides.items()]
    return " Relaunch: " + shlex.join([*_this_command(), *kept, *added])


def _this_command() -> list[str]:
    """How this command was started: `python launch.py`, or the installed `imgcls-train`."""
    program = os.path.basename(sys.argv[0])
    return ["python", "launch.py"] if program == "launch.py" else [program]


def _use_compilation_cache(directory: str) -> None:
    """Points JAX's persistent compilation cache at `directory` (unless the environment
    already names one) for programs that took at least a second to compile."""
    import jax

    if not directory or os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        return
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(directory))
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def _without_flags(args: list[str], prefix: str, booleans: tuple[str, ...] = ()) -> list[str]:
    """The command line minus the flags named PREFIX* (also "--PREFIX NAME" as two words);
    `booleans` take no value."""
    kept, skip_value = [], False
    for arg in args:
        if skip_value:
            skip_value = False
        elif arg.startswith((f"--{prefix}", f"--no{prefix}")):
            name = arg.split("=")[0].lstrip("-").removeprefix("no")
            skip_value = "=" not in arg and name not in booleans
        else:
            kept.append(arg)
    return kept


def write_kubernetes_manifests() -> None:
    """Prints (or writes to --k8s_out) the manifests that run this job on Kubernetes."""
    import yaml

    from imgcls_jax.runtime.clusters import cloud_tpu, kubernetes_manifests, kubernetes_schema
    from imgcls_jax.training import config_check

    if not FLAGS.k8s_image or (FLAGS.k8s_tpu is None) == (FLAGS.k8s_gpus is None):
        raise app.UsageError("--k8s needs --k8s_image and one of --k8s_tpu or --k8s_gpus.")
    args = _without_flags(sys.argv[1:], "k8s")
    try:
        cloud_tpu.check_workdir(FLAGS.workdir)
        config_check.validate(FLAGS.config)
        if FLAGS.k8s_tpu:
            slices = kubernetes_manifests.TpuSlices(FLAGS.k8s_tpu, FLAGS.k8s_slices)
            manifests = [kubernetes_manifests.tpu_jobset(FLAGS.k8s, FLAGS.k8s_image, args, slices)]
        else:
            manifests = kubernetes_manifests.gpu_indexed_job(
                FLAGS.k8s, FLAGS.k8s_image, args, FLAGS.k8s_nodes, FLAGS.k8s_gpus
            )
    except ValueError as e:
        sys.exit(f"launch.py: {e}")
    try:
        errors = [e for m in manifests for e in kubernetes_schema.check(m)]
    except ImportError:
        errors = None  # Without the k8s extra the manifests are written unchecked.
    if errors:
        sys.exit("launch.py: the manifest fails its schema check: " + "; ".join(errors))
    text = yaml.safe_dump_all(manifests, sort_keys=False)
    checked = "checked" if errors == [] else "not checked (pip install -e '.[k8s]')"
    if FLAGS.k8s_out:
        with open(FLAGS.k8s_out, "w", encoding="utf-8") as f:
            f.write(text)
        print(f"# Wrote {FLAGS.k8s_out} (schema {checked}); submit it with:\n"
              f"kubectl apply -f {FLAGS.k8s_out}")  # fmt: skip
    else:
        print(f"# Schema {checked}; submit with: kubectl apply -f FILE\n{text}", end="")


def launch_on_tpu() -> None:
    """Prints (or runs) the commands that train this job on every worker of a TPU VM."""
    from imgcls_jax.runtime.clusters import cloud_tpu

    if not (FLAGS.tpu_zone and FLAGS.tpu_type):
        raise app.UsageError("--tpu needs --tpu_zone and --tpu_type.")
    from imgcls_jax.training import config_check

    try:
        cloud_tpu.check_workdir(FLAGS.workdir)
        config_check.validate(FLAGS.config)  # Here, before anything is created or paid for.
    except ValueError as e:
        sys.exit(f"launch.py: {e}")
    vm = cloud_tpu.TpuVm(FLAGS.tpu, FLAGS.tpu_zone, FLAGS.tpu_type, FLAGS.tpu_version,
                         FLAGS.tpu_project, FLAGS.tpu_spot, FLAGS.tpu_queued)  # fmt: skip
    launch_args = _without_flags(sys.argv[1:], "tpu", ("tpu_spot", "tpu_run", "tpu_queued"))
    if not FLAGS.tpu_run:
        print("# Dry run: the commands of this job (add --tpu_run to run them).")
    cloud_tpu.run(cloud_tpu.commands(vm, launch_args), dry_run=not FLAGS.tpu_run)
    print("# When done (the gs:// workdir stays):\n# " + shlex.join(cloud_tpu.delete_command(vm)))


def run() -> None:
    """`python launch.py` and the `imgcls-train` command."""
    from imgcls_jax.config import flags_parser, show_flags_in_help

    define_flags()
    show_flags_in_help(__name__)
    app.run(main, flags_parser=flags_parser("launch.py"))


if __name__ == "__main__":
    run()
