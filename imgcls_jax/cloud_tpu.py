"""Cloud TPU jobs: the gcloud commands that create a TPU VM, ship this project to every
worker, and start the same training command on all of them."""

from __future__ import annotations

import dataclasses
import shlex
import subprocess
from collections.abc import Sequence

ARCHIVE = "/tmp/imgcls_jax.tar.gz"


@dataclasses.dataclass(frozen=True)
class TpuVm:
    """Where the job runs: `gcloud compute tpus tpu-vm` arguments."""

    name: str
    zone: str
    accelerator_type: str  # e.g. v4-8 (one host) or v4-32 (four hosts).
    runtime_version: str = "tpu-ubuntu2204-base"
    project: str = ""
    spot: bool = False  # Cheaper, preemptible capacity; the job resumes after a relaunch.
    remote_dir: str = "imgcls_jax"


def commands(vm: TpuVm, launch_args: Sequence[str]) -> list[list[str]]:
    """The steps, in order: pack the committed tree (git archive), create the TPU VM, copy the
    archive to every worker, unpack and install there, train on every worker.

    `launch_args` are launch.py's arguments (config, overrides, workdir); `--distributed=on`
    is added so that every worker joins one JAX job.
    """
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    where = [f"--zone={vm.zone}"] + ([f"--project={vm.project}"] if vm.project else [])
    create = [*tpu_vm, "create", vm.name, *where, f"--accelerator-type={vm.accelerator_type}",
              f"--version={vm.runtime_version}"] + (["--spot"] if vm.spot else [])  # fmt: skip
    directory = shlex.quote(vm.remote_dir)
    install = (
        f"mkdir -p {directory} && tar -xzf imgcls_jax.tar.gz -C {directory} && cd {directory} "
        '&& python3 -m pip install -q -c constraints.txt -e . "jax[tpu]"'
    )
    train_args = [a for a in launch_args if not a.startswith("--distributed")]
    train = f"cd {directory} && python3 launch.py --distributed=on " + shlex.join(train_args)
    return [
        ["git", "archive", "--format=tar.gz", f"--output={ARCHIVE}", "HEAD"],
        create,
        [*tpu_vm, "scp", ARCHIVE, f"{vm.name}:imgcls_jax.tar.gz", *where, "--worker=all"],
        [*tpu_vm, "ssh", vm.name, *where, "--worker=all", f"--command={install}"],
        [*tpu_vm, "ssh", vm.name, *where, "--worker=all", f"--command={train}"],
    ]


def delete_command(vm: TpuVm) -> list[str]:
    """Deletes the TPU VM (billing stops); the gs:// workdir stays."""
    where = [f"--zone={vm.zone}"] + ([f"--project={vm.project}"] if vm.project else [])
    return ["gcloud", "compute", "tpus", "tpu-vm", "delete", vm.name, *where, "--quiet"]


def check_workdir(workdir: str) -> None:
    """Every worker writes one shared checkpoint directory: it must be a bucket path."""
    if not workdir.startswith("gs://"):
        raise ValueError(
            f"--workdir={workdir} is local to each TPU worker; use a Cloud Storage path "
            "(--workdir=gs://BUCKET/DIR) that every worker and you can read."
        )


def run(steps: Sequence[Sequence[str]], dry_run: bool) -> None:
    """Prints each command; also runs it (stopping at the first failure) unless `dry_run`."""
    for step in steps:
        print(shlex.join(step), flush=True)
        if not dry_run:
            subprocess.run(step, check=True)
