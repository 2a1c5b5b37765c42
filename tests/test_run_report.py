"""The confusion-matrix metric, per-class scores, and the report every run writes."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from imgcls_jax.reporting import confusion, run_report
from imgcls_jax.training.loop import train_and_evaluate


def test_confusion_matrix_counts_unmasked_examples_and_merges():
    logits = jnp.array([[3.0, 0, 0], [0, 3.0, 0], [3.0, 0, 0], [0, 0, 3.0], [0, 3.0, 0]])
    labels = jnp.array([0, 1, 1, 2, 2])
    mask = jnp.array([True, True, True, True, False])  # The last row is padding.
    metric = confusion.ConfusionMatrix.from_model_output(logits=logits, labels=labels, mask=mask)
    expected = np.array([[1, 0, 0], [1, 1, 0], [0, 0, 1]])
    np.testing.assert_array_equal(metric.compute(), expected)
    np.testing.assert_array_equal(metric.merge(metric).compute(), 2 * expected)
    np.testing.assert_allclose(confusion.per_class_accuracy(expected), [1.0, 0.5, 1.0])
    assert confusion.balanced_accuracy(expected) == pytest.approx(2.5 / 3)
    missing = np.array([[2, 0], [0, 0]])  # Class 1 never occurs: left out of the mean.
    assert np.isnan(confusion.per_class_accuracy(missing)[1])
    assert confusion.balanced_accuracy(missing) == 1.0


def test_every_run_writes_a_report_that_matches_its_results(tmp_path, dataset, monkeypatch):
    from imgcls_jax.reporting import writers
    from imgcls_jax.training.builder import Trainer

    evaluated = []  # (split, step) of every evaluation: none may be repeated.
    evaluate = Trainer.evaluate_with_confusion

    def counting(self, state, split, prefix):
        evaluated.append((prefix, int(state.step)))
        return evaluate(self, state, split, prefix)

    monkeypatch.setattr(Trainer, "evaluate_with_confusion", counting)
    config = tiny_config(**{"training.num_train_steps": 8, "input.batch_size": 32,
                            "training.eval_every_epochs": 0.5})  # fmt: skip
    results = train_and_evaluate(config, str(tmp_path), dataset)
    assert len(evaluated) == len(set(evaluated)) and ("val", 8) in evaluated, evaluated
    for name in run_report.REPORT_FILES:
        assert (tmp_path / name).stat().st_size > 0
    with open(tmp_path / "report.json") as f:
        report = json.load(f)
    matrix = np.array(report["confusion_matrix"])
    assert report["split"] == "test" and matrix.shape == (4, 4)
    assert matrix.sum() == results["test/num_examples"] == 70
    np.testing.assert_array_equal(matrix.sum(axis=1), np.bincount(dataset.test.labels, minlength=4))
    assert np.trace(matrix) / matrix.sum() == pytest.approx(results["test/accuracy"], abs=1e-6)
    per_class = np.diag(matrix) / matrix.sum(axis=1)
    np.testing.assert_allclose(list(report["per_class_accuracy"].values()), per_class)
    assert results["test/balanced_accuracy"] == pytest.approx(per_class.mean())
    text = (tmp_path / "report.md").read_text()
    assert "class3" in text and f"| best step (validation) | {results['best_step']} |" in text
    assert report["config"]["model"]["name"] == config.model.name and report["parameters"] > 0
    assert report["class_counts"]["test"] == np.bincount(dataset.test.labels).tolist()
    assert report["run_s"] > report["compile_s"] > 0
    # Label smoothing is on: the curves compare the train loss without it to validation's.
    records = writers.read_metrics(str(tmp_path / "metrics.jsonl"))
    assert config.loss.label_smoothing > 0 and "train/loss_no_smoothing" in records[0]
