"""The Kubernetes manifests launch.py writes: shapes that match the slice or the GPU nodes, the
training command passed through, and offline schema checks that catch real mistakes."""

import copy
import subprocess
import sys

import pytest
import yaml
from conftest import REPO_ROOT, why_failed

from imgcls_jax.runtime.clusters import kubernetes_manifests as manifests

schema = pytest.importorskip("imgcls_jax.runtime.clusters.kubernetes_schema")
pytest.importorskip("kubernetes", reason="schema checks need pip install '.[k8s]'")
pytest.importorskip("jsonschema", reason="schema checks need pip install '.[k8s]'")

LAUNCH = ["--config=configs/resnet.py:imagenet", "--workdir=gs://bucket/r50",
          "--config.input.batch_size=16384"]  # fmt: skip


def _write(tmp_path, *k8s_flags):
    out = tmp_path / "job.yaml"
    run = subprocess.run(
        [sys.executable, "launch.py", *LAUNCH[:2], "--k8s=r50", *k8s_flags, LAUNCH[2],
         "--k8s_image=us-docker.pkg.dev/p/r/imgcls:1", f"--k8s_out={out}"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, why_failed(run)
    assert "schema checked" in run.stdout and f"kubectl apply -f {out}" in run.stdout
    return list(yaml.safe_load_all(out.read_text()))


def _pod(job_spec):
    return job_spec["template"]["spec"]


def test_tpu_jobset_has_a_job_per_slice_and_a_pod_per_tpu_vm(tmp_path):
    [jobset] = _write(tmp_path, "--k8s_tpu=v5e:16x16", "--k8s_slices=2")
    assert schema.check(jobset) == []
    [replicated] = jobset["spec"]["replicatedJobs"]
    job = replicated["template"]["spec"]
    pod = _pod(job)
    chips = int(pod["containers"][0]["resources"]["limits"]["google.com/tpu"])
    # 2 slices of 64 TPU VMs with 4 chips each: 256 chips per slice, as v5e:16x16 has.
    assert (replicated["replicas"], job["parallelism"], job["completions"], chips) == (2, 64, 64, 4)
    assert job["completionMode"] == "Indexed"
    assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                                   "cloud.google.com/gke-tpu-topology": "16x16"}  # fmt: skip
    # The training command is the command line minus the --k8s flags, in its order.
    assert pod["containers"][0]["command"] + pod["containers"][0]["args"] == [
        "python", "launch.py", *LAUNCH
    ]  # fmt: skip


@pytest.mark.parametrize(
    "topology, nodes, chips_per_node",
    [("v5e:2x4", 1, 8), ("v6e:2x2", 1, 4), ("v5p:2x2x1", 1, 4), ("v4:4x4x4", 16, 4),
     ("v5p:4x4x8", 32, 4), ("v6e:16x16", 64, 4)],
)  # fmt: skip
def test_tpu_nodes_cover_the_topology(topology, nodes, chips_per_node):
    slices = manifests.TpuSlices(topology)
    assert (slices.nodes, slices.chips_per_node) == (nodes, chips_per_node)
    assert slices.nodes * slices.chips_per_node == slices.chips


def test_gpu_indexed_job_finds_its_coordinator_through_the_headless_service(tmp_path):
    service, job = _write(tmp_path, "--k8s_gpus=8", "--k8s_nodes=4")
    assert schema.check(service) == [] and schema.check(job) == []
    pod = _pod(job["spec"])
    [container] = pod["containers"]
    assert container["args"][: len(LAUNCH)] == LAUNCH
    assert container["args"][len(LAUNCH) :] == [
        "--coordinator_address=r50-0.r50:1234", "--num_processes=4", "--process_id=$(PROCESS_ID)"
    ]  # fmt: skip
    # Pod 0 of the Indexed Job is r50-0, and the Service r50 (the pods' subdomain) gives it
    # the DNS name r50-0.r50 even before it is ready.
    assert pod["subdomain"] == service["metadata"]["name"] == job["metadata"]["name"] == "r50"
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"]
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "r50"}
    [env] = container["env"]
    assert env["name"] == "PROCESS_ID"
    index = env["valueFrom"]["fieldRef"]["fieldPath"]
    assert index == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert job["spec"]["parallelism"] == job["spec"]["completions"] == 4
    assert container["resources"]["limits"] == {"nvidia.com/gpu": "8"}


def test_schema_checks_catch_misspelt_fields_and_wrong_types():
    jobset = manifests.tpu_jobset("r50", "img", LAUNCH, manifests.TpuSlices("v5e:4x4"))
    service, job = manifests.gpu_indexed_job("r50", "img", LAUNCH, 2, 8)
    bad = copy.deepcopy(jobset)
    bad["spec"]["replicatedJobs"][0]["replica"] = 2  # JobSet's own schema.
    bad["spec"]["failurePolicy"]["maxRestarts"] = "3"
    _pod(bad["spec"]["replicatedJobs"][0]["template"]["spec"])["nodeSelecter"] = {}  # Job template.
    errors = schema.check(bad)
    assert len(errors) == 3, errors
    assert any("'replica' was unexpected" in e for e in errors)
    assert any("maxRestarts" in e and "integer" in e for e in errors)
    assert any(e.startswith("spec.replicatedJobs[0].template.spec.template.spec.nodeSelecter")
               for e in errors)  # fmt: skip
    bad = copy.deepcopy(job)
    del _pod(bad["spec"])["containers"][0]["name"]
    bad["spec"]["completions"] = "2"
    errors = schema.check(bad)
    assert [e.split(":")[0] for e in errors] == ["spec.completions",
                                                 "spec.template.spec.containers.0.name"]  # fmt: skip
    bad = copy.deepcopy(service)
    bad["spec"]["clusterIp"] = "None"
    assert [e.split(":")[0] for e in schema.check(bad)] == ["spec.clusterIp"]


def test_bad_kubernetes_flags_stop_in_one_line(tmp_path):
    def stderr(*flags):
        run = subprocess.run([sys.executable, "launch.py", "--config=configs/resnet.py:tiny",
                              *flags], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert run.returncode == 1, why_failed(run)
        return run.stderr.strip().splitlines()[-1]

    common = ["--k8s=r50", "--k8s_image=img"]
    assert "is local to each worker" in stderr("--workdir=/tmp/r", *common, "--k8s_gpus=8")
    assert "one of --k8s_tpu or --k8s_gpus" in stderr("--workdir=gs://b/r", *common)
    assert "GENERATION one of v4, v5e, v5p, v6e" in stderr("--workdir=gs://b/r", *common,
                                                          "--k8s_tpu=v7:2x2")  # fmt: skip
    assert "a job name is lower-case" in stderr("--workdir=gs://b/r", "--k8s=R50",
                                                "--k8s_image=i", "--k8s_gpus=8")  # fmt: skip
