"""Cloud TPU jobs: the gcloud commands that create a TPU VM, ship this project to every
worker, install it with its own Python, and start the same training command on all of them,
detached, with the log streamed."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Sequence

ARCHIVE = "/tmp/imgcls_jax.tar.gz"
# The runtime images' system Python is older than this project's JAX needs (3.12), so each
# worker gets its own Python in a virtual environment from uv (github.com/astral-sh/uv).
PYTHON = "3.12"
VENV = "imgcls_jax_venv"
LOG = "imgcls_jax_train.log"  # On every worker, in the home directory; process 0's is streamed.
# The runtime image each TPU generation boots, by accelerator-type prefix (Google's "TPU
# software versions" page); v4 and older boot the base image.
RUNTIME_VERSIONS = {
    "v6e": "v2-alpha-tpuv6e",
    "v5p": "v2-alpha-tpuv5",
    "v5litepod": "v2-alpha-tpuv5-lite",
}
BASE_RUNTIME = "tpu-ubuntu2204-base"
QUEUED_POLL_S = 60


def runtime_version(accelerator_type: str) -> str:
    """The runtime image for an accelerator type, e.g. v5litepod-16 -> v2-alpha-tpuv5-lite."""
    return RUNTIME_VERSIONS.get(accelerator_type.rsplit("-", 1)[0], BASE_RUNTIME)


@dataclasses.dataclass(frozen=True)
class TpuVm:
    """Where the job runs: `gcloud compute tpus tpu-vm` arguments."""

    name: str
    zone: str
    accelerator_type: str  # e.g. v4-8 (one host) or v4-32 (four hosts).
    runtime_version: str = ""  # "": the generation's own (`runtime_version`).
    project: str = ""
    spot: bool = False  # Cheaper, preemptible capacity; the job resumes after a relaunch.
    # Ask for the capacity as a queued resource (how v5e, v5p, v6e and Spot slices are
    # usually obtained): the request waits in line, and the job starts once it is ACTIVE.
    queued: bool = False
    remote_dir: str = "imgcls_jax"

    @property
    def runtime(self) -> str:
        return self.runtime_version or runtime_version(self.accelerator_type)


def commands(vm: TpuVm, launch_args: Sequence[str]) -> list[list[str]]:
    """The steps, in order: pack the committed tree (git archive), create the TPU VM, copy the
    archive to every worker, install there (Python 3.12 from uv, this project, jax[tpu]),
    start training detached on every worker, and stream worker 0's log.

    Training runs under `nohup setsid`, so a dropped SSH connection does not stop it; the last
    command (which ends with the training) can be rerun at any time to follow the log.
    `launch_args` are launch.py's arguments (config, overrides, workdir); `--distributed=on`
    is added so that every worker joins one JAX job.
    """
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = [f"--zone={vm.zone}"] + ([f"--project={vm.project}"] if vm.project else [])
    spot = ["--spot"] if vm.spot else []
    if vm.queued:
        queued = ["gcloud", "compute", "tpus", "queued-resources"]
        describe = [*queued, "describe", vm.name, *where, "--format=value(state.state)"]
        create = [
            [*queued, "create", vm.name, f"--node-id={vm.name}", *where,
             f"--accelerator-type={vm.accelerator_type}", f"--runtime-version={vm.runtime}",
             *spot],
            # Waits in line until the slice is ACTIVE (a FAILED or SUSPENDED request stops).
            ["bash", "-c", f"until [ \"$({shlex.join(describe)})\" = ACTIVE ]; do "
             f"case \"$({shlex.join(describe)})\" in FAILED|SUSPENDED) exit 1;; esac; "
             f"sleep {QUEUED_POLL_S}; done"],
        ]  # fmt: skip
    else:
        create = [[*tpu_vm, "create", vm.name, *where, f"--accelerator-type={vm.accelerator_type}",
                   f"--version={vm.runtime}", *spot]]  # fmt: skip
    directory = shlex.quote(vm.remote_dir)
    uv = "~/.local/bin/uv"
    install = (
        f"mkdir -p {directory} && tar -xzf imgcls_jax.tar.gz -C {directory} && cd {directory} "
        f"&& (test -x {uv} || curl -LsSf https://astral.sh/uv/install.sh | sh) "
        f"&& {uv} venv --allow-existing --python {PYTHON} ~/{VENV} "
        f"&& {uv} pip install --python ~/{VENV}/bin/python -c constraints.txt "
        '-e ".[tfds]" "jax[tpu]"'
    )
    train_args = [a for a in launch_args if not a.startswith("--distributed")]
    train = (
        f"cd {directory} && nohup setsid ~/{VENV}/bin/python launch.py --distributed=on "
        f"{shlex.join(train_args)} > ~/{LOG} 2>&1 < /dev/null &"
    )
    # Follows the log until training ends (or Ctrl-C, which leaves the training running).
    # "[.]": the pattern must not match this shell's own command line.
    stream = (
        "if pid=$(pgrep -o -f 'launch[.]py --distributed=on'); "
        f"then tail -n +1 -F --pid=$pid ~/{LOG}; else cat ~/{LOG}; fi"
    )
    ssh = [*tpu_vm, "ssh", vm.name, *where]
    return [
        ["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
        *create,
        [*tpu_vm, "scp", ARCHIVE, f"{vm.name}:imgcls_jax.tar.gz", *where, "--worker=all"],
        [*ssh, "--worker=all", f"--command={install}"],
        [*ssh, "--worker=all", f"--command={train}"],
        [*ssh, "--worker=0", f"--command={stream}"],
    ]


def delete_command(vm: TpuVm) -> list[str]:
    """Deletes the TPU VM, or the queued resource with its VM (billing stops); the gs://
    workdir stays."""
    where = [f"--zone={vm.zone}"] + ([f"--project={vm.project}"] if vm.project else [])
    if vm.queued:
        return ["gcloud", "compute", "tpus", "queued-resources", "delete", vm.name, *where,
                "--force", "--quiet"]  # fmt: skip
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", vm.name, *where, "--quiet"]


def check_workdir(workdir: str) -> None:
    """Every worker writes one shared checkpoint directory: it must be a bucket path."""
    if not workdir.startswith("gs://"):
        raise ValueError(
            f"--workdir={workdir} is local to each worker; use a Cloud Storage path "
            "(--workdir=gs://BUCKET/DIR) that every worker and you can read."
        )


def run(steps: Sequence[Sequence[str]], dry_run: bool) -> None:
    """Prints each command; also runs it (stopping at the first failure) unless `dry_run`."""
    for step in steps:
        print(shlex.join(step), flush=True)
        if not dry_run:
            subprocess.run(step, check=True)
