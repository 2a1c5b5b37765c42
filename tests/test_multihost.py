"""Multi-process set-up and the Cloud TPU launcher (no processes or gcloud needed)."""

import shlex
import subprocess
import sys

import pytest
from conftest import REPO_ROOT

from imgcls_jax import cloud_tpu, multihost


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # One task: single process.
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "SLURM job 7 with 4 tasks"),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"},
         "SLURM job 7 with 2 tasks"),
        ({"TPU_WORKER_HOSTNAMES": "t1k-0"}, None),  # A single-host TPU VM.
        ({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"}, "Cloud TPU slice with 4 workers"),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, "JAX_COORDINATOR_ADDRESS=10.0.0.2:1234"),
    ],
)  # fmt: skip
def test_detects_multi_process_environments(environ, expected):
    assert multihost.detect_environment(environ) == expected


def test_single_process_and_inconsistent_flags_start_nothing():
    assert multihost.initialize("auto", environ={}) is None
    assert multihost.initialize("off", environ={"SLURM_JOB_ID": "1", "SLURM_NTASKS": "2"}) is None
    with pytest.raises(ValueError, match="all of --coordinator_address"):
        multihost.initialize("auto", coordinator_address="h:1", environ={})
    with pytest.raises(ValueError, match="contradicts"):
        multihost.initialize("off", "h:1", 2, 0, environ={})
    import jax

    assert jax.process_count() == 1


def _dry_run(*args):
    run = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/resnet.py:imagenet", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return run


def test_tpu_dry_run_prints_the_job_commands():
    run = _dry_run("--workdir=gs://bucket/r50", "--tpu", "my-tpu", "--config.model.name=resnet50",
                   "--tpu_zone=us-central2-b", "--tpu_type", "v4-32", "--tpu_project=lab",
                   "--tpu_spot")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    commands = [shlex.split(line) for line in run.stdout.splitlines() if not line.startswith("#")]
    where = ["--zone=us-central2-b", "--project=lab"]
    tpu_vm = ["gcloud", "compute", "tpus", "tpu-vm"]
    assert commands[0] == ["git", "archive", "--format=tar.gz",
                           f"--output={cloud_tpu.ARCHIVE}", "HEAD"]  # fmt: skip
    assert commands[1] == [*tpu_vm, "create", "my-tpu", *where, "--accelerator-type=v4-32",
                           "--version=tpu-ubuntu2204-base", "--spot"]  # fmt: skip
    assert commands[2] == [*tpu_vm, "scp", cloud_tpu.ARCHIVE, "my-tpu:imgcls_jax.tar.gz", *where,
                           "--worker=all"]  # fmt: skip
    assert commands[3][:9] == [*tpu_vm, "ssh", "my-tpu", *where, "--worker=all"]
    assert "pip install" in commands[3][9] and '"jax[tpu]"' in commands[3][9]
    assert commands[4][:9] == [*tpu_vm, "ssh", "my-tpu", *where, "--worker=all"]
    train = commands[4][9].removeprefix("--command=cd imgcls_jax && ")
    assert shlex.split(train) == ["python3", "launch.py", "--distributed=on",
                                  "--config=configs/resnet.py:imagenet", "--workdir=gs://bucket/r50",
                                  "--config.model.name=resnet50"]  # fmt: skip
    assert len(commands) == 5
    assert "tpu-vm delete my-tpu --zone=us-central2-b --project=lab --quiet" in run.stdout


def test_tpu_launch_needs_a_bucket_workdir():
    run = _dry_run("--workdir=/tmp/run", "--tpu=t", "--tpu_zone=z", "--tpu_type=v4-8")
    assert run.returncode != 0 and "gs://BUCKET/DIR" in run.stderr
