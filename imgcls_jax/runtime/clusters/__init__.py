"""Starting one training job on many machines: joining `jax.distributed`, and the commands
and manifests that start the job on Cloud TPU VMs and Kubernetes."""
