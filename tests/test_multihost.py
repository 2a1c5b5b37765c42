"""Multi-process set-up and the Cloud TPU launcher (no processes or gcloud needed)."""

import os
import shlex
import shutil
import subprocess
import sys

import pytest
from conftest import REPO_ROOT, why_failed

from imgcls_jax.runtime.clusters import cloud_tpu, multihost

SRUN = {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_STEP_NODELIST": "n[1-4]",
        "SLURM_PROCID": "2", "SLURM_LOCALID": "0"}  # fmt: skip
OMPI = {"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_LOCAL_RANK": "1"}
K8S = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3"}
Job = multihost.Job


@pytest.mark.parametrize(
    "environ, expected",
    [
        ({}, None),
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}, None),  # One task: single process.
        (SRUN, Job("SLURM job 7 with 4 tasks", "slurm")),
        ({**SRUN, "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "2"},
         Job("SLURM job 7 with 2 tasks", "slurm")),
        ({"TPU_WORKER_HOSTNAMES": "t1k-0"}, None),  # A single-host TPU VM.
        ({"TPU_WORKER_HOSTNAMES": "w-0,w-1,w-2,w-3"}, Job("Cloud TPU slice with 4 workers")),
        ({"TPU_WORKER_HOSTNAMES": "w-0,w-1", "MEGASCALE_COORDINATOR_ADDRESS": "w-0"},
         Job("Cloud TPU multislice")),
        # GKE's TPU pods are Indexed Job pods with the TPU variables: a TPU slice.
        ({**K8S, "TPU_WORKER_HOSTNAMES": "p-0,p-1"}, Job("Cloud TPU slice with 2 workers")),
        ({"JAX_COORDINATOR_ADDRESS": "10.0.0.2:1234"}, Job("JAX_COORDINATOR_ADDRESS=10.0.0.2:1234")),
        ({**OMPI, "OMPI_MCA_orte_hnp_uri": "1234.0;tcp://10.0.0.5:4000"},
         Job("Open MPI mpirun with 4 processes", "ompi")),
        ({**OMPI, "OMPI_COMM_WORLD_SIZE": "1"}, None),
        (K8S, Job("Kubernetes Indexed Job (pod 3)")),  # JAX asks the API server.
    ],
)  # fmt: skip
def test_detects_multi_process_environments(environ, expected):
    assert multihost.detect_environment(environ, installed=lambda _: True) == expected


@pytest.mark.parametrize(
    "environ, line",
    [
        ({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"}, "not started by srun"),  # sbatch's script.
        (OMPI, r"Open MPI 5\), which JAX joins through mpi4py: pip install mpi4py"),
        ({"PMI_SIZE": "2", "PMI_RANK": "0"}, r"MPI job \(PMI\) with 2 processes, which JAX joins"),
        (K8S, "Indexed Job \\(pod 3\\): its process count and coordinator are unknown"),
    ],
)  # fmt: skip
def test_a_job_jax_cannot_join_stops_with_what_to_do(environ, line):
    """Without srun, mpi4py or the kubernetes client, the job is seen and refused: running
    alone would train one process's share as if it were the whole job."""
    job = multihost.detect_environment(environ, installed=lambda _: False)
    assert job.problem is not None and "\n" not in job.problem
    with pytest.raises(ValueError, match=line):
        multihost.initialize("auto", environ=environ, installed=lambda _: False)
    if "SLURM_JOB_ID" not in environ:
        assert multihost.detect_environment(environ, installed=lambda _: True).problem is None


@pytest.mark.parametrize(
    "environ",
    [SRUN, {**SRUN, "SLURM_PROCID": None}, {**OMPI, "OMPI_MCA_orte_hnp_uri": "1.0;tcp://h:1"}],
)
def test_joinable_exactly_where_jax_own_detectors_see_the_job(environ, monkeypatch):
    """The job kinds JAX's own cluster detection reads from variables: where ours says
    "join with method M", JAX's detector M sees the job; where ours refuses, it does not."""
    from jax._src import clusters

    for name in [*SRUN, *OMPI, "OMPI_MCA_orte_hnp_uri", "OMPI_VERSION"]:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        if value is not None:
            monkeypatch.setenv(name, value)
    job = multihost.detect_environment(os.environ, installed=lambda _: False)
    detector = {c.name: c for c in clusters.ClusterEnv._cluster_types}["slurm" if "SLURM_JOB_ID"
                                                                        in environ else "ompi"]  # fmt: skip
    assert detector.is_env_present() == (job.problem is None)
    assert job.method in (None, detector.name)


def test_launch_stops_in_one_line_in_a_job_it_cannot_join(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "OMPI", "PMI"))}
    run = subprocess.run(
        [sys.executable, "launch.py", "--config=configs/resnet.py:tiny",
         f"--workdir={tmp_path / 'run'}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
        env=env | {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "2"},
    )  # fmt: skip
    assert run.returncode == 1, why_failed(run)
    assert run.stderr.strip().splitlines()[-1] == (
        "launch.py: SLURM job 7 with 2 tasks, but this process was not started by srun (no "
        "SLURM_PROCID/SLURM_STEP_NODELIST): run `srun python launch.py ...` in the batch "
        "script, or pass --distributed=off for one process."
    )
    assert not (tmp_path / "run").exists()  # Stopped before anything was written.


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
    assert run.returncode == 0, why_failed(run)
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
    install = commands[3][9]
    assert f"uv venv --allow-existing --python {cloud_tpu.PYTHON}" in install  # Python >= 3.11.
    assert f'--python ~/{cloud_tpu.VENV}/bin/python -c constraints.txt -e ".[tfds]" ' in install
    assert '"jax[tpu]"' in install
    assert commands[4][:9] == [*tpu_vm, "ssh", "my-tpu", *where, "--worker=all"]
    train = commands[4][9].removeprefix("--command=cd imgcls_jax && ")
    # Detached from the SSH session; the output goes to a log file.
    assert train.startswith(f"nohup setsid ~/{cloud_tpu.VENV}/bin/python launch.py ")
    assert train.endswith(f" > ~/{cloud_tpu.LOG} 2>&1 < /dev/null &")
    launched = shlex.split(train.split(" > ")[0])[4:]
    assert launched == ["--distributed=on", "--config=configs/resnet.py:imagenet",
                        "--workdir=gs://bucket/r50", "--config.model.name=resnet50"]  # fmt: skip
    assert commands[5][:9] == [*tpu_vm, "ssh", "my-tpu", *where, "--worker=0"]
    assert f"tail -n +1 -F --pid=$pid ~/{cloud_tpu.LOG}" in commands[5][9]
    assert len(commands) == 6
    assert "tpu-vm delete my-tpu --zone=us-central2-b --project=lab --quiet" in run.stdout


def test_the_detached_command_and_the_log_stream_run_in_a_shell(tmp_path):
    """The train and stream commands as a worker's shell runs them: launch.py starts in the
    background with its output in the log, and the stream prints that log until it ends."""
    vm = cloud_tpu.TpuVm("t", "z", "v4-8", remote_dir=str(tmp_path / "project"))
    commands = cloud_tpu.commands(vm, ["--workdir=gs://b/r"])
    home = tmp_path / "home"
    (home / cloud_tpu.VENV / "bin").mkdir(parents=True)
    (tmp_path / "project").mkdir()
    fake_python = home / cloud_tpu.VENV / "bin" / "python"  # Stands in for training.
    fake_python.write_text("#!/bin/sh\necho started $@; sleep 1; echo finished\n")
    fake_python.chmod(0o755)
    env = {"HOME": str(home), "PATH": os.environ["PATH"]}
    train = commands[4][-1].removeprefix("--command=")
    started = subprocess.run(["bash", "-c", train], env=env, timeout=10)
    assert started.returncode == 0  # Returns at once: the SSH session may close.
    stream = commands[5][-1].removeprefix("--command=")
    streamed = subprocess.run(["bash", "-c", stream], env=env, capture_output=True, text=True,
                              timeout=30)  # fmt: skip
    assert streamed.stdout.splitlines() == [
        "started launch.py --distributed=on --workdir=gs://b/r",
        "finished",
    ], streamed
    again = subprocess.run(["bash", "-c", stream], env=env, capture_output=True, text=True,
                           timeout=30)  # After the training: the whole log, then it ends.  # fmt: skip
    assert again.stdout == streamed.stdout


def test_tpu_launch_needs_a_bucket_workdir():
    run = _dry_run("--workdir=/tmp/run", "--tpu=t", "--tpu_zone=z", "--tpu_type=v4-8")
    assert run.returncode != 0 and "gs://BUCKET/DIR" in run.stderr


def test_tpu_launch_validates_the_config_before_printing_any_command():
    run = _dry_run("--workdir=gs://b/r", "--tpu=t", "--tpu_zone=z", "--tpu_type=v4-8",
                   "--config.model.name=resnet5O")  # fmt: skip
    assert run.returncode == 1 and run.stdout == "", run.stdout
    assert "resnet50" in run.stderr.strip().splitlines()[-1], run.stderr[-2000:]


def test_each_tpu_generation_boots_its_own_runtime():
    assert [cloud_tpu.runtime_version(t) for t in ("v6e-8", "v5p-16", "v5litepod-16", "v4-32",
                                                    "v3-8")] == [
        "v2-alpha-tpuv6e", "v2-alpha-tpuv5", "v2-alpha-tpuv5-lite", "tpu-ubuntu2204-base",
        "tpu-ubuntu2204-base"]  # fmt: skip
    vm = cloud_tpu.TpuVm("t", "z", "v5litepod-16", runtime_version="v2-alpha-tpuv5-lite-x")
    assert vm.runtime == "v2-alpha-tpuv5-lite-x"  # An explicit version wins.


def _gcloud_commands(*args):
    run = _dry_run("--workdir=gs://bucket/run", "--tpu=my-tpu", "--tpu_zone=us-west4-a",
                   "--tpu_project=lab", *args)  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    lines = [shlex.split(line.removeprefix("# ")) for line in run.stdout.splitlines()]
    return [line for line in lines if line[:1] == ["gcloud"]]


def test_queued_capacity_is_requested_waited_for_and_deleted():
    commands = _gcloud_commands("--tpu_type=v5litepod-16", "--tpu_queued", "--tpu_spot")
    queued = ["gcloud", "compute", "tpus", "queued-resources"]
    where = ["--zone=us-west4-a", "--project=lab"]
    assert commands[0] == [*queued, "create", "my-tpu", "--node-id=my-tpu", *where,
                           "--accelerator-type=v5litepod-16",
                           "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]  # fmt: skip
    assert commands[-1] == [*queued, "delete", "my-tpu", *where, "--force", "--quiet"]
    assert not any(c[3:5] == ["tpu-vm", "create"] for c in commands)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("gcloud") is None, reason="needs the gcloud client")
@pytest.mark.parametrize("mode", [("--tpu_type=v4-32",), ("--tpu_type=v6e-16", "--tpu_spot"),
                                  ("--tpu_type=v5p-16", "--tpu_queued")])  # fmt: skip
def test_every_gcloud_command_parses_with_the_real_client(mode, tmp_path):
    """Without credentials gcloud stops at the account (exit 1); a wrong argument would stop
    it earlier, at parsing (exit 2)."""
    env = {**os.environ, "CLOUDSDK_CONFIG": str(tmp_path)}  # No account, no project.
    commands = _gcloud_commands(*mode)
    wait = next((c for c in _dry_run_lines(mode) if c[:2] == ["bash", "-c"]), None)
    if wait is not None:  # The queued resource's wait loop runs gcloud describe.
        describe = shlex.split(wait[2].split('"$(')[1].split(')"')[0])
        commands.append(describe)
    assert len(commands) >= 5
    for command in commands:
        run = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 1, (command, run.stderr[-800:])
        assert "active account" in run.stderr, (command, run.stderr[-800:])


def _dry_run_lines(mode):
    run = _dry_run("--workdir=gs://bucket/run", "--tpu=my-tpu", "--tpu_zone=us-west4-a",
                   "--tpu_project=lab", *mode)  # fmt: skip
    return [shlex.split(line) for line in run.stdout.splitlines() if not line.startswith("#")]


class _SlowCoordinationService:
    """A key-value store whose writes take `delay` seconds; peer 1 has stopped beating."""

    def __init__(self, delay):
        self.delay = delay

    def key_value_set(self, key, value, allow_overwrite):
        import time

        time.sleep(self.delay)

    def key_value_try_get(self, key):
        return "7"  # Peer 1's last beat, never changing.


def test_a_failed_collective_waits_for_the_verdict_of_a_slow_peer_watch(monkeypatch):
    """The survivor's collective fails the moment its peer dies; its traceback must wait until
    the watch has named the dead peer, however slowly the watch's rounds go (here each
    round takes longer than a poll, so a fixed wait of the timeout and three polls ends
    before the verdict)."""
    import threading

    verdicts = []
    watch = multihost.PeerWatch(timeout_s=0.5, poll_s=0.05)
    watch._client, watch._count = _SlowCoordinationService(delay=0.4), 2

    def record(why):
        verdicts.append(why)
        watch._stop.set()  # What os._exit would end.

    monkeypatch.setattr(multihost.PeerWatch, "_exit", staticmethod(record))
    thread = threading.Thread(target=watch._run, daemon=True)
    thread.start()
    watch.wait_for_verdict()
    assert verdicts and verdicts[0].startswith("process 1 of 2 has shown no sign of life")
    thread.join(timeout=5)
