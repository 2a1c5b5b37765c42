"""Class imbalance: reduced classes, class-weighted loss, class-balanced sampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config

from imgcls_jax import data
from imgcls_jax.data import class_balance
from imgcls_jax.data.batch_rows import TrainOrder
from imgcls_jax.training import steps
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.config_check import validate


def _imbalanced_dataset():
    """Classes 0 and 1 kept at 10%: about 10:1 against classes 2 and 3."""
    full = synthetic_dataset(num_train=1200)
    train = data.reduce_classes(full.train, (0.1, 0.1, 1.0, 1.0), seed=0)
    return data.Dataset(train, full.validation, full.test, full.class_names), full.train


def test_reduce_classes_keeps_the_asked_fraction_of_each_class():
    reduced, full = _imbalanced_dataset()
    before, after = np.bincount(full.labels), np.bincount(reduced.train.labels)
    np.testing.assert_array_equal(after, [round(0.1 * before[0]), round(0.1 * before[1]),
                                          before[2], before[3]])  # fmt: skip
    # Kept examples are real rows of the original split, with their own labels.
    index = {img.tobytes(): label for img, label in zip(full.images, full.labels)}
    assert all(index[i.tobytes()] == y for i, y in zip(reduced.train.images, reduced.train.labels))
    with pytest.raises(ValueError, match="one fraction per class"):
        data.reduce_classes(full, (0.5, 0.5), seed=0)


def test_balanced_class_weights_equalise_each_class_total():
    labels = np.array([0] * 90 + [1] * 10 + [3] * 20)
    weights = class_balance.balanced_class_weights(labels, 4)
    np.testing.assert_allclose(weights, [120 / (3 * 90), 120 / (3 * 10), 0.0, 120 / (3 * 20)])
    totals = weights[labels] @ np.eye(4)[labels]
    np.testing.assert_allclose(totals[[0, 1, 3]], 40.0)  # Same total weight per present class.
    assert weights[labels].mean() == pytest.approx(1.0)


@pytest.mark.slow
def test_class_weighted_loss_is_the_weighted_mean_and_reaches_the_step():
    labels = jnp.array([0, 1, 1, 2])
    soft = jax.nn.one_hot(labels, 3) * 0.5 + jax.nn.one_hot(jnp.array([1, 1, 0, 0]), 3) * 0.5
    class_weights = np.array([2.0, 0.5, 1.0], np.float32)
    np.testing.assert_allclose(steps.example_weights(labels, class_weights), [2.0, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(
        steps.example_weights(soft, class_weights), [1.25, 0.5, 1.25, 1.5]
    )  # Soft labels: the label-weighted mean of class weights.

    dataset, _ = _imbalanced_dataset()
    plain = Trainer(tiny_config(**{"input.batch_size": 32}), dataset)
    weighted = Trainer(tiny_config(**{"input.batch_size": 32,
                                      "loss.class_weighting": "balanced"}), dataset)  # fmt: skip
    np.testing.assert_allclose(
        weighted.class_weights,
        class_balance.balanced_class_weights(dataset.train.labels, 4),
    )
    assert plain.class_weights is None
    batch = {"image": jnp.asarray(dataset.train.images[:32]),
             "label": jnp.asarray(dataset.train.labels[:32])}  # fmt: skip
    state = plain.create_state()
    a, metrics_a = plain.train_step(state, batch, plain.train_key)
    b, metrics_b = weighted.train_step(plain.create_state(), batch, weighted.train_key)
    # Same reported (unweighted) loss; different updates because the optimised loss differs.
    assert float(metrics_a.compute()["loss"]) == pytest.approx(float(metrics_b.compute()["loss"]))
    assert not np.allclose(a.params["head"]["kernel"], b.params["head"]["kernel"])


def test_class_balanced_sampling_draws_every_class_equally_and_deterministically():
    dataset, _ = _imbalanced_dataset()
    labels = dataset.train.labels
    order = class_balance.BalancedOrder(labels, 64, seed=3)
    uniform = TrainOrder(len(labels), 64, seed=3)
    steps_ = range(5 * order.steps_per_epoch)
    drawn = np.concatenate([labels[order.indices(s)] for s in steps_])
    plain = np.concatenate([labels[uniform.indices(s)] for s in steps_])
    assert np.bincount(plain, minlength=4)[0] / len(plain) < 0.06  # Imbalanced as stored.
    np.testing.assert_allclose(np.bincount(drawn, minlength=4) / len(drawn), 0.25, atol=0.03)
    # A pure function of (seed, step): a fresh order, asked out of sequence, agrees.
    again = class_balance.BalancedOrder(labels, 64, seed=3)
    for s in (7, 0, 12, 7):
        np.testing.assert_array_equal(again.indices(s), order.indices(s))
    assert order.steps_per_epoch == len(labels) // 64

    trainer = Trainer(tiny_config(**{"input.batch_size": 32,
                                     "input.sampling": "class_balanced"}), dataset)  # fmt: skip
    assert isinstance(trainer.order, class_balance.BalancedOrder)


def test_imbalance_options_are_validated():
    with pytest.raises(ValueError, match="Did you mean 'class_balanced'"):
        validate(tiny_config(**{"input.sampling": "balanced"}))
    with pytest.raises(ValueError, match="Did you mean 'balanced'"):
        validate(tiny_config(**{"loss.class_weighting": "balance"}))
