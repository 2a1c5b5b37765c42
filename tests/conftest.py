"""Test set-up: 8 fake CPU devices (before JAX is imported), tiny configs and datasets."""

import atexit
import os
import re
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# CPU devices only, also where libtpu is installed (it still compiles for TPU topologies).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, inherited by launch.py subprocesses: the
# many relaunches of one config (resume and fault tests) compile it once. Removed at the end.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="imgcls_jax_xla_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

from imgcls_jax.runtime import host_memory

host_memory.reuse_freed_memory()  # As launch.py does, before any library starts threads.

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from imgcls_jax import data  # noqa: E402
from imgcls_jax.config import apply_overrides  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def why_failed(run) -> str:
    """A failed subprocess's stderr for an assertion message: the lines that say why it
    aborted (Python's fatal errors, C++ and XLA fatal logs), then its end."""
    why = ("Fatal Python error", "terminate called", "Check failed", "Termination timeout",
           "double free", "corrupted")  # fmt: skip
    lines = run.stderr.splitlines()
    fatal = [
        line[:500] for line in lines if any(w in line for w in why) or re.match(r"F\d{4} ", line)
    ]
    return "\n".join(fatal[:5] + [run.stderr[-3000:]])


def synthetic_split(num: int, num_classes: int, seed: int, size: int = 8, channels: int = 1):
    """Learnable images: each class brightens its own horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num).astype(np.int32)
    images = rng.integers(0, 60, (num, size, size, channels)).astype(np.float32)
    band = size // num_classes or 1
    for c in range(num_classes):
        rows = slice((c * band) % size, (c * band) % size + band)
        images[labels == c, rows] += 150
    return data.Split(images.clip(0, 255).astype(np.uint8), labels)


def synthetic_dataset(num_train=256, num_val=100, num_test=70, num_classes=4, size=8):
    return data.Dataset(
        train=synthetic_split(num_train, num_classes, 0, size),
        validation=synthetic_split(num_val, num_classes, 1, size),
        test=synthetic_split(num_test, num_classes, 2, size),
        class_names=tuple(f"class{i}" for i in range(num_classes)),
    )


def tiny_config(**overrides):
    """configs/resnet.py:tiny with dotted-key overrides (a locked copy)."""
    import sys

    sys.path.insert(0, REPO_ROOT)
    from configs.resnet import get_config

    defaults = {
        "training.log_every_steps": 1,
        "training.keep_checkpoints": 10,
        "augment.train": "flip_lr",
        "training.eval_every_epochs": 1.0,
    }
    return apply_overrides(get_config("tiny"), {**defaults, **overrides})


@pytest.fixture
def dataset():
    return synthetic_dataset()


def train_steps(trainer, count):
    """`count` train steps from a fresh state, batches as the loop reads them: (state, losses)."""
    from imgcls_jax.data import input_pipeline

    state = trainer.create_state()
    losses = []
    for step in range(count):
        batch = input_pipeline.train_batch(trainer.dataset.train, trainer.order, step, trainer.mesh)
        state, metrics = trainer.train_step(state, batch, trainer.train_key)
        losses.append(float(metrics.compute()["loss"]))
    return state, losses


def trainer_restore(trainer, workdir):
    from imgcls_jax.checkpoint import Checkpointer

    checkpointer = Checkpointer(str(workdir), 10)
    restored = checkpointer.restore(trainer.abstract_state())
    checkpointer.close()
    return restored
