"""Few-shot ridge probes: the closed form against scikit-learn's, the draw of examples, and
probes that separate clusters and cannot learn random labels."""

import jax
import numpy as np
import pytest

from imgcls_jax.evaluation import few_shot

sklearn_linear_model = pytest.importorskip("sklearn.linear_model", reason="pip install '.[test]'")


@pytest.mark.parametrize("fit_bias", [True, False])
@pytest.mark.parametrize("num_examples, dim", [(60, 20), (20, 60)])  # Primal; dual.
def test_ridge_fit_matches_scikit_learn(num_examples, dim, fit_bias):
    rng = np.random.default_rng(0)
    features = (rng.standard_normal((num_examples, dim)) + 3.0).astype(np.float32)
    labels = rng.integers(0, 4, num_examples)
    l2 = 3.0
    fit = jax.jit(few_shot.ridge_fit, static_argnums=2, static_argnames="fit_bias")
    weights, bias = fit(features, labels, 4, l2, fit_bias=fit_bias)
    targets = 2.0 * np.eye(4)[labels] - 1.0
    reference = sklearn_linear_model.Ridge(alpha=l2, fit_intercept=fit_bias)
    reference.fit(features.astype(np.float64), targets)
    np.testing.assert_allclose(weights, reference.coef_.T, atol=1e-4)
    np.testing.assert_allclose(bias, np.broadcast_to(reference.intercept_, (4,)), atol=1e-4)
    test = rng.standard_normal((30, dim)) + 3.0
    np.testing.assert_allclose(test @ np.asarray(weights) + np.asarray(bias),
                               reference.predict(test), atol=1e-4)  # fmt: skip


def test_sample_shots_takes_k_distinct_per_class_deterministically():
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat(np.arange(5), [9, 30, 12, 7, 20]))
    indices = few_shot.sample_shots(labels, 7, seed=3)
    assert len(set(indices.tolist())) == len(indices) == 35
    np.testing.assert_array_equal(np.bincount(labels[indices]), [7] * 5)
    np.testing.assert_array_equal(indices, few_shot.sample_shots(labels, 7, seed=3))
    assert not np.array_equal(indices, few_shot.sample_shots(labels, 7, seed=4))
    # One seed's draws are nested: its 2 examples of a class are among its 7.
    fewer = few_shot.sample_shots(labels, 2, seed=3)
    assert set(fewer.tolist()) <= set(indices.tolist())
    with pytest.raises(ValueError, match="Class 0 has 9 training example.*fewer than 10 shots"):
        few_shot.sample_shots(labels, 10, seed=0)
    with pytest.raises(ValueError, match="Class 5 has 0 training"):
        few_shot.sample_shots(labels, 1, seed=0, num_classes=6)


def _clusters(rng, num, centres, noise):
    labels = rng.integers(0, len(centres), num)
    return centres[labels] + noise * rng.standard_normal((num, centres.shape[1])), labels


def test_probe_separates_clusters_and_does_not_recompile():
    rng = np.random.default_rng(0)
    centres = 4.0 * rng.standard_normal((5, 32))
    train = _clusters(rng, 500, centres, 1.0)
    test = _clusters(rng, 300, centres, 1.0)
    results = few_shot.probe(*train, *test, num_classes=5, shots=(1, 5))
    assert set(results) == {"few_shot/1shot_accuracy", "few_shot/1shot_accuracy_std",
                            "few_shot/5shot_accuracy", "few_shot/5shot_accuracy_std"}  # fmt: skip
    assert results["few_shot/1shot_accuracy"] > 0.97
    assert results["few_shot/5shot_accuracy"] > 0.99
    compiled = few_shot._accuracies._cache_size()
    few_shot.probe(*_clusters(rng, 500, centres, 1.0), *test, num_classes=5, shots=(1, 5))
    assert few_shot._accuracies._cache_size() == compiled


def test_probe_is_at_chance_on_random_labels():
    rng = np.random.default_rng(1)
    train = rng.standard_normal((1000, 64)), rng.integers(0, 10, 1000)
    test = rng.standard_normal((3000, 64)), rng.integers(0, 10, 3000)
    results = few_shot.probe(*train, *test, num_classes=10, shots=(1, 10, 25))
    for k in (1, 10, 25):
        assert abs(results[f"few_shot/{k}shot_accuracy"] - 0.1) < 0.02, results
        assert results[f"few_shot/{k}shot_accuracy_std"] < 0.03, results


def test_probe_rejects_labels_outside_the_classes():
    features, labels = np.zeros((20, 4)), np.arange(20) % 4
    with pytest.raises(ValueError, match="test labels span 0..3, outside 0..2"):
        few_shot.probe(features, labels % 3, features, labels, num_classes=3, shots=(1,))
