"""Few-shot linear probes on frozen features, as big_vision's few-shot evaluator
(`evaluators/fewshot_lsr.py`): from k training examples per class, a closed-form ridge
regression onto targets in {-1, 1} (2 * one-hot - 1), over features standardised on those
examples; its argmax scored on the test features. Reported as the mean and spread over a few
draws of the k examples."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

SHOTS = (1, 5, 10, 25)
SEEDS = (0, 1, 2)
# big_vision's l2_reg (configs/common_fewshot.py), made for standardised features.
L2 = 2.0**10
# Added to the standard deviation of each feature before dividing (big_vision's): a feature
# constant over the k examples stays finite.
STD_EPSILON = 1e-5


def _matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    # Full float32: the default precision on GPUs and TPUs (TF32, bfloat16 passes) would perturb
    # the normal equations.
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def ridge_fit(
    features: jax.Array, labels: jax.Array, num_classes: int, l2: float, fit_bias: bool = True
) -> tuple[jax.Array, jax.Array]:
    """Weights [D, C] and bias [C] minimising ||features @ weights + bias - targets||^2 +
    l2 ||weights||^2 for targets = 2 * one_hot(labels, C) - 1, in closed form (l2 > 0).

    The bias is not regularised: features and targets are centred, the exact form of what
    big_vision approximates with a constant feature of 100 (`fit_bias=False`: no bias, zeros).
    Solves the D x D primal system when there are at least as many examples N as dimensions D,
    else the N x N dual (kernel) one, as big_vision. Jittable, with `num_classes` and
    `fit_bias` static."""
    x = jnp.asarray(features, jnp.float32)
    y = 2.0 * jax.nn.one_hot(labels, num_classes, dtype=jnp.float32) - 1.0
    if fit_bias:
        x_mean, y_mean = x.mean(axis=0), y.mean(axis=0)
        x, y = x - x_mean, y - y_mean
    n, d = x.shape
    if n >= d:  # (x^T x + l2 I) w = x^T y
        gram = _matmul(x.T, x) + l2 * jnp.eye(d, dtype=x.dtype)
        weights = jax.scipy.linalg.solve(gram, _matmul(x.T, y), assume_a="pos")
    else:  # w = x^T (x x^T + l2 I)^-1 y
        gram = _matmul(x, x.T) + l2 * jnp.eye(n, dtype=x.dtype)
        weights = _matmul(x.T, jax.scipy.linalg.solve(gram, y, assume_a="pos"))
    bias = y_mean - _matmul(x_mean, weights) if fit_bias else jnp.zeros(num_classes, x.dtype)
    return weights, bias


def sample_shots(
    labels: np.ndarray, shots: int, seed: int, *, num_classes: int | None = None
) -> np.ndarray:
    """Indices of `shots` distinct examples of each class 0 .. num_classes - 1 (default: up to
    the largest label), class by class, drawn with NumPy's generator of `seed`. The draw of a
    class depends on the seed and the class sizes only, so for one seed the 1-shot examples are
    among the 5-shot ones (as in big_vision)."""
    labels = np.asarray(labels)
    if shots < 1:
        raise ValueError(f"shots={shots}: a probe needs at least 1 example per class.")
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    order = np.argsort(labels, kind="stable")
    counts = np.bincount(labels, minlength=num_classes)
    ends = np.cumsum(counts)
    rng = np.random.default_rng(seed)
    chosen = []
    for c in range(num_classes):
        members = order[ends[c] - counts[c] : ends[c]]
        if len(members) < shots:
            raise ValueError(f"Class {c} has {len(members)} training example(s), fewer than "
                             f"{shots} shots: leave {shots} out of the shots, or probe with "
                             "more training examples.")  # fmt: skip
        chosen.append(rng.permutation(members)[:shots])
    return np.concatenate(chosen)


@functools.partial(jax.jit, static_argnums=4)
def _accuracies(
    train_x: jax.Array,
    train_y: jax.Array,
    test_x: jax.Array,
    test_y: jax.Array,
    num_classes: int,
    l2: jax.Array,
) -> jax.Array:
    """Test accuracy [S] of the ridge probe fitted to each of S draws, train_x [S, N, D]."""

    def accuracy(x, y):
        mean, std = x.mean(axis=0), x.std(axis=0) + STD_EPSILON
        weights, bias = ridge_fit((x - mean) / std, y, num_classes, l2)
        # Standardising the test features folded into the weights: no standardised copy.
        weights = weights / std[:, None]
        logits = _matmul(test_x, weights) + (bias - _matmul(mean, weights))
        return jnp.mean(jnp.argmax(logits, axis=-1) == test_y)

    return jax.vmap(accuracy)(train_x, train_y)


def probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    test_features: np.ndarray,
    test_labels: np.ndarray,
    num_classes: int,
    shots: Sequence[int] = SHOTS,
    seeds: Sequence[int] = SEEDS,
    l2: float = L2,
) -> dict[str, float]:
    """Few-shot accuracies of a ridge probe on frozen features ([N, D], labels [N]): for each
    k in `shots`, "few_shot/{k}shot_accuracy" (the mean over `seeds`, each a draw of k train
    examples per class) and "few_shot/{k}shot_accuracy_std" (their standard deviation, ddof=0).
    One compiled program per k, the seeds solved together; the same shapes do not recompile."""
    train_features, test_features = np.asarray(train_features), np.asarray(test_features)
    train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
    for name, x, y in (("train", train_features, train_labels),
                       ("test", test_features, test_labels)):  # fmt: skip
        if x.ndim != 2 or y.shape != x.shape[:1]:
            raise ValueError(f"The {name} features must be [N, D] with labels [N], got "
                             f"{x.shape} and {y.shape}.")  # fmt: skip
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"The {name} labels span {y.min()}..{y.max()}, outside 0.."
                             f"{num_classes - 1} (num_classes={num_classes}).")  # fmt: skip
    if train_features.shape[1] != test_features.shape[1]:
        raise ValueError(f"Train features have {train_features.shape[1]} dimensions, test "
                         f"features {test_features.shape[1]}: extract both with one model.")  # fmt: skip
    if not seeds:
        raise ValueError("A probe needs at least one seed.")
    test_x = jnp.asarray(test_features, jnp.float32)
    test_y = jnp.asarray(test_labels, jnp.int32)
    results = {}
    for k in shots:
        indices = np.stack([sample_shots(train_labels, k, seed, num_classes=num_classes)
                            for seed in seeds])  # fmt: skip
        accuracies = np.asarray(_accuracies(
            jnp.asarray(train_features[indices], jnp.float32),
            jnp.asarray(train_labels[indices], jnp.int32),
            test_x, test_y, num_classes, jnp.float32(l2),
        ))  # fmt: skip
        results[f"few_shot/{k}shot_accuracy"] = float(accuracies.mean())
        results[f"few_shot/{k}shot_accuracy_std"] = float(accuracies.std())
    return results
