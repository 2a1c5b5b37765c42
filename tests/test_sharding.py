"""Sharding the train state over the fsdp axis computes what data parallelism computes."""

import jax
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config, train_steps
from jax.sharding import PartitionSpec

from imgcls_jax.runtime import sharding
from imgcls_jax.training.builder import Trainer

P = PartitionSpec


def test_the_largest_divisible_dimension_of_a_large_enough_array_is_split():
    spec = sharding.array_spec
    assert spec((3, 3, 16, 64), 4 * 9216, fsdp=4, min_bytes=0) == P(None, None, None, "fsdp")
    assert spec((3, 3, 16, 6), 4 * 864, fsdp=4, min_bytes=0) == P(None, None, "fsdp", None)
    assert spec((10,), 40, fsdp=4, min_bytes=0) == P()  # No dimension divisible by 4.
    assert spec((64, 64), 4 * 4096, fsdp=4, min_bytes=1 << 20) == P()  # Below the size.
    assert spec((), 4, fsdp=4, min_bytes=0) == P()
    assert spec((64, 64), 4 * 4096, fsdp=1, min_bytes=0) == P()


def test_fsdp_must_divide_the_devices():
    with pytest.raises(
        ValueError,
        match=r"config.mesh.fsdp=3 must divide the 8 devices of a slice; use one of \[1, 2, 4, 8\]",
    ):
        sharding.make_mesh(fsdp=3)


def _train(fsdp: int, steps: int) -> tuple[list[float], Trainer, object]:
    config = tiny_config(**{
        "mesh.fsdp": fsdp, "mesh.fsdp_min_bytes": 0, "training.ema_decay": 0.9,
        "training.grad_accum_steps": 2, "input.batch_size": 32, "optimizer.name": "adamw",
        "model.width": 8,
    })  # fmt: skip
    trainer = Trainer(config, synthetic_dataset(num_train=256))
    state, losses = train_steps(trainer, steps)
    return losses, trainer, state


@pytest.mark.slow
def test_sharded_state_trains_the_same_function_as_data_parallel():
    """50 steps with AdamW, an EMA and 2 micro-batches: the state split over 4 devices in
    each of 2 groups gives the losses, parameters and EMA of the replicated state."""
    replicated_losses, _, replicated = _train(fsdp=1, steps=50)
    sharded_losses, trainer, sharded = _train(fsdp=4, steps=50)
    # Really split: every convolution kernel (and its two AdamW moments) lives in quarters.
    kernel = sharded.params["BasicBlock_0"]["Conv_0"]["kernel"]  # (3, 3, 8, 8)
    assert kernel.sharding.spec == P(None, None, "fsdp", None)
    assert kernel.addressable_shards[0].data.shape == (3, 3, 2, 8)
    kernels = [x for x in jax.tree.leaves((sharded.params, sharded.opt_state)) if x.ndim == 4]
    assert len(kernels) >= 3 * 6 and all("fsdp" in x.sharding.spec for x in kernels)
    assert trainer.mesh.shape == {"slice": 1, "data": 2, "fsdp": 4}
    np.testing.assert_allclose(sharded_losses, replicated_losses, rtol=1e-4)
    # Summation order differs; AdamW's normalised updates carry it to ~1e-4 in 50 steps.
    for a, b in zip(
        jax.tree.leaves(sharded.params), jax.tree.leaves(replicated.params), strict=True
    ):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-3)
    for a, b in zip(jax.tree.leaves(sharded.ema), jax.tree.leaves(replicated.ema), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-3)
    assert replicated_losses[-1] < replicated_losses[0]  # It learned something.
