"""The Kubernetes manifests that run one training command on many nodes: a JobSet for a TPU
slice (or several, multislice) on GKE, and an Indexed Job with a headless Service for GPU nodes.

On GKE's TPU node pools the TPU webhook gives every pod TPU_WORKER_HOSTNAMES (and the
MEGASCALE_* variables for multislice), from which `jax.distributed` joins by itself. GPU pods
get the coordinator (pod 0's stable DNS name through the headless Service), the process count
and their index as launch.py flags.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

JOBSET_API = "jobset.x-k8s.io/v1alpha2"
# GKE's node selector value for each TPU generation (GKE's "Plan TPUs" page).
GKE_TPU_ACCELERATORS = {
    "v4": "tpu-v4-podslice",
    "v5e": "tpu-v5-lite-podslice",
    "v5p": "tpu-v5p-slice",
    "v6e": "tpu-v6e-slice",
}
CHIPS_PER_TPU_NODE = 4  # Multi-host slices: 4 chips per VM; v5e/v6e up to 8 on one host.
TPU_PORT = 8471  # The TPU runtime's port between the hosts of a slice.
COORDINATOR_PORT = 1234  # jax.distributed's coordinator on GPU pod 0.
_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class TpuSlices:
    """`num_slices` TPU slices of `topology` ("v5e:16x16", "v5p:4x4x8") on GKE."""

    topology: str
    num_slices: int = 1

    def __post_init__(self):
        generation, _, shape = self.topology.partition(":")
        if generation not in GKE_TPU_ACCELERATORS or not re.fullmatch(r"\d+(x\d+){1,2}", shape):
            raise ValueError(f"--k8s_tpu={self.topology!r}: write GENERATION:SHAPE with GENERATION "
                             f"one of {', '.join(GKE_TPU_ACCELERATORS)}, e.g. v5e:16x16.")  # fmt: skip
        if self.num_slices < 1:
            raise ValueError(f"--k8s_slices={self.num_slices} must be at least 1.")

    @property
    def chips(self) -> int:
        dims = [int(d) for d in self.topology.split(":")[1].split("x")]
        return dims[0] * dims[1] * (dims[2] if len(dims) == 3 else 1)

    @property
    def chips_per_node(self) -> int:
        single_host = self.topology.startswith(("v5e", "v6e")) and self.chips <= 8
        return self.chips if single_host else min(self.chips, CHIPS_PER_TPU_NODE)

    @property
    def nodes(self) -> int:
        return self.chips // self.chips_per_node


def check_name(name: str) -> None:
    """Kubernetes object names (DNS labels; pods append "-<index>-<suffix>")."""
    if not _NAME.match(name):
        raise ValueError(f"--k8s={name!r}: a job name is lower-case letters, digits and '-', "
                         "starts with a letter, at most 42 characters.")  # fmt: skip


def _container(image: str, args: list[str], resources: dict[str, Any], **extra) -> dict:
    return {"name": "train", "image": image, "command": ["python", "launch.py"], "args": args,
            "resources": {"limits": resources}, **extra}  # fmt: skip


def tpu_jobset(name: str, image: str, launch_args: list[str], tpu: TpuSlices) -> dict:
    """A JobSet: one replicated Job per slice, one pod per TPU VM of the slice."""
    check_name(name)
    generation, shape = tpu.topology.split(":")
    pod = {
        "restartPolicy": "Never",
        # Host networking: the TPU runtime's traffic between hosts skips the pod network.
        "hostNetwork": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "nodeSelector": {
            "cloud.google.com/gke-tpu-accelerator": GKE_TPU_ACCELERATORS[generation],
            "cloud.google.com/gke-tpu-topology": shape,
        },
        "containers": [_container(
            image, launch_args, {"google.com/tpu": str(tpu.chips_per_node)},
            ports=[{"containerPort": TPU_PORT}],
        )],
    }  # fmt: skip
    job = {
        "completionMode": "Indexed",
        "completions": tpu.nodes,
        "parallelism": tpu.nodes,
        "backoffLimit": 0,
        "template": {"spec": pod},
    }
    return {
        "apiVersion": JOBSET_API,
        "kind": "JobSet",
        "metadata": {
            "name": name,
            # Each slice's Job gets a node pool of its own (a TPU slice is one node pool).
            "annotations": {
                "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"
            },
        },  # fmt: skip
        "spec": {
            # A failed pod restarts the whole set; the run resumes from its last checkpoint.
            "failurePolicy": {"maxRestarts": 3},
            "replicatedJobs": [
                {"name": "slice", "replicas": tpu.num_slices, "template": {"spec": job}}
            ],
        },  # fmt: skip
    }


def gpu_indexed_job(
    name: str, image: str, launch_args: list[str], nodes: int, gpus_per_node: int
) -> list[dict]:
    """A headless Service and an Indexed Job of `nodes` pods with `gpus_per_node` GPUs each;
    pod 0 (`NAME-0.NAME`) runs the coordinator."""
    check_name(name)
    if nodes < 1 or gpus_per_node < 1:
        raise ValueError(f"--k8s_nodes={nodes} and --k8s_gpus={gpus_per_node} must be >= 1.")
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "clusterIP": "None",  # Headless: a DNS record per pod, no load balancing.
            "selector": {"batch.kubernetes.io/job-name": name},
            "publishNotReadyAddresses": True,  # Pod 0 resolves before it is "ready".
            "ports": [{"name": "coordinator", "port": COORDINATOR_PORT}],
        },
    }
    process_flags = [
        f"--coordinator_address={name}-0.{name}:{COORDINATOR_PORT}",
        f"--num_processes={nodes}",
        "--process_id=$(PROCESS_ID)",  # Kubernetes substitutes the variable below.
    ]
    index = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    pod = {
        "subdomain": name,  # With the Service: pod i is NAME-i.NAME in DNS.
        "restartPolicy": "Never",
        "containers": [_container(
            image, [*launch_args, *process_flags], {"nvidia.com/gpu": str(gpus_per_node)},
            env=[{"name": "PROCESS_ID", "valueFrom": {"fieldRef": {"fieldPath": index}}}],
            ports=[{"containerPort": COORDINATOR_PORT}],
            volumeMounts=[{"name": "shm", "mountPath": "/dev/shm"}],
        )],
        # NCCL and the input workers share memory through /dev/shm (64 MiB by default).
        "volumes": [{"name": "shm", "emptyDir": {"medium": "Memory"}}],
    }  # fmt: skip
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "completionMode": "Indexed",
            "completions": nodes,
            "parallelism": nodes,
            "backoffLimit": 0,
            "template": {"spec": pod},
        },
    }
    return [service, job]
