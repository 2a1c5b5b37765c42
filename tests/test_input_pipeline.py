"""Batch order as a function of (seed, step), eval padding and masks, device placement."""

import jax
import numpy as np

from imgcls_jax import data
from imgcls_jax.data import batch_rows, input_pipeline
from imgcls_jax.runtime import sharding


def test_train_order_is_a_function_of_seed_and_step():
    order = batch_rows.TrainOrder(100, 32, seed=3)
    assert order.steps_per_epoch == 3
    epoch0 = np.concatenate([order.indices(s) for s in range(3)])
    assert len(set(epoch0.tolist())) == 96  # No repeats within an epoch.
    again = batch_rows.TrainOrder(100, 32, seed=3)
    np.testing.assert_array_equal(again.indices(4), order.indices(4))  # Jumping in mid-run.
    assert not np.array_equal(order.indices(3), order.indices(0))  # Epochs reshuffle.
    other = batch_rows.TrainOrder(100, 32, seed=4)
    assert not np.array_equal(other.indices(0), order.indices(0))


def test_train_batches_are_sharded_global_arrays():
    mesh = sharding.make_mesh()
    split = data.Split(
        np.arange(64, dtype=np.uint8).reshape(64, 1, 1, 1), np.arange(64, dtype=np.int32)
    )
    order = batch_rows.TrainOrder(64, 16, seed=0)
    batches = input_pipeline.train_batches(split, order, start_step=5, mesh=mesh)
    batch = next(batches)
    batches.close()
    assert batch["image"].shape == (16, 1, 1, 1)
    assert batch["image"].sharding.is_equivalent_to(sharding.batch_sharding(mesh), 4)
    assert sorted(np.asarray(batch["label"]).tolist()) == sorted(order.indices(5).tolist())


def test_batches_of_class_ordered_data_are_not_ordered_by_class():
    """Image folders list their files class by class; a batch must still mix the classes in
    random order (as must the augmentation preview, which shows a batch's first images)."""
    mesh = sharding.make_mesh()
    labels = np.repeat(np.arange(10, dtype=np.int32), 100)  # Class-ordered, as on disk.
    split = data.Split(labels.astype(np.uint8).reshape(-1, 1, 1, 1), labels)
    order = batch_rows.TrainOrder(len(labels), 64, seed=0)
    for step in range(5):
        batch = np.asarray(input_pipeline.train_batch(split, order, step, mesh)["label"])
        assert len(set(batch[:16].tolist())) >= 6, batch[:16]  # The preview's first 16.
        rises = np.mean(np.diff(batch) > 0)
        assert 0.3 < rises < 0.7, batch  # About half, as for random order; sorted gives ~0.14.


def test_eval_batches_cover_every_example_once_with_mask():
    mesh = sharding.make_mesh()
    split = data.Split(np.zeros((50, 2, 2, 1), np.uint8), np.arange(50, dtype=np.int32))
    seen = []
    for batch in input_pipeline.eval_batches(split, 16, mesh):
        assert batch["image"].shape[0] == 16
        mask = np.asarray(batch["mask"])
        seen += np.asarray(batch["label"])[mask].tolist()
    assert seen == list(range(50))


def test_batch_size_must_divide_over_devices():
    mesh = sharding.make_mesh()
    assert mesh.size == len(jax.devices()) == 8
    try:
        sharding.check_batch_size(12, mesh, "input.batch_size")
    except ValueError as e:
        assert "multiple of 8" in str(e)
    else:
        raise AssertionError("batch 12 on 8 devices must be refused")


def test_device_resident_batches_equal_host_fed_ones():
    from imgcls_jax.data import class_balance, device_resident

    mesh = sharding.make_mesh()
    rng = np.random.default_rng(0)
    split = data.Split(rng.integers(0, 256, (100, 3, 3, 1), dtype=np.uint8),
                       rng.integers(0, 4, 100).astype(np.int32))  # fmt: skip
    for order in (batch_rows.TrainOrder(100, 16, seed=2),
                  class_balance.BalancedOrder(split.labels, 16, seed=2)):  # fmt: skip
        resident = device_resident.DeviceResidentTrain(split, order, mesh)
        batches = resident.batches(start_step=4)  # 6 steps per epoch: crosses an epoch.
        for step in range(4, 14):
            on_device, host_fed = (
                next(batches),
                input_pipeline.train_batch(split, order, step, mesh),
            )
            assert on_device["image"].sharding == host_fed["image"].sharding
            for key in ("image", "label"):
                np.testing.assert_array_equal(on_device[key], host_fed[key])


def test_auto_places_only_splits_that_fit():
    from imgcls_jax.data import device_resident

    mesh = sharding.make_mesh()
    small = data.Split(np.zeros((10, 4, 4, 1), np.uint8), np.zeros(10, np.int32))
    huge = data.Split(np.broadcast_to(np.zeros((1, 1, 1, 1), np.uint8), (2**31, 1, 1, 1)),
                      np.broadcast_to(np.zeros(1, np.int32), (2**31,)))  # fmt: skip
    assert device_resident.use_device_resident("auto", small, mesh)
    assert not device_resident.use_device_resident("auto", huge, mesh)
    assert not device_resident.use_device_resident("off", small, mesh)
    assert device_resident.use_device_resident("on", small, mesh)


def test_closing_the_batches_stops_the_device_thread_and_the_worker_processes():
    """A thread left copying to the devices when the interpreter exits aborts the process:
    closing the iterator stops and joins it, and ends Grain's worker processes."""
    import multiprocessing
    import threading

    def prefetch_threads() -> list[str]:  # Grain's thread prefetch (one puts on the devices).
        return [t.name for t in threading.enumerate() if t.name.startswith("grain-thread-")]

    mesh = sharding.make_mesh()
    split = data.Split(np.zeros((64, 4, 4, 1), np.uint8), np.arange(64, dtype=np.int32) % 4)
    order = batch_rows.TrainOrder(64, 16, seed=0)
    for workers in (0, 2):
        batches = input_pipeline.train_batches(split, order, 0, mesh, prefetch=2, workers=workers)
        for step in range(3):  # Grain starts a worker when the first batch is due from it.
            batch = next(batches)
            np.testing.assert_array_equal(batch["label"], split.labels[order.indices(step)])
        assert prefetch_threads()  # Reading ahead.
        assert len(multiprocessing.active_children()) == workers
        batches.close()
        assert prefetch_threads() == [] and multiprocessing.active_children() == []
