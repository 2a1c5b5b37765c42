"""Knowledge distillation: the loss against NumPy, the teacher run once per step inside the
jitted step, a teacher of other classes refused, and a distilled run end to end."""

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config, train_steps

from imgcls_jax import data
from imgcls_jax.training import distillation, steps
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.loop import train_and_evaluate


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _numpy_kd(student, teacher, t):
    p_teacher = np.exp(_log_softmax(teacher / t))
    return t**2 * (p_teacher * (_log_softmax(teacher / t) - _log_softmax(student / t))).sum(-1)


def test_distillation_loss_matches_numpy():
    rng = np.random.default_rng(0)
    student, teacher = rng.normal(size=(2, 6, 10)) * 3
    for t in (1.0, 4.0):
        ours = steps.distillation_loss(jnp.asarray(student), jnp.asarray(teacher), t)
        np.testing.assert_allclose(ours, _numpy_kd(student, teacher, t), rtol=1e-5, atol=1e-6)
    assert (
        float(steps.distillation_loss(jnp.asarray(student), jnp.asarray(student), 4.0).max()) < 1e-5
    )


@pytest.mark.parametrize("micro_batches", [1, 2])
def test_the_objective_mixes_cross_entropy_and_distillation_as_configured(micro_batches):
    trainer = Trainer(tiny_config(**{"input.batch_size": 32, "augment.train": "",
                                     "loss.label_smoothing": 0.1}), synthetic_dataset())  # fmt: skip
    state = trainer.create_state()
    rng = np.random.default_rng(1)
    images = jnp.asarray(rng.normal(size=(32, 8, 8, 1)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 4, 32), jnp.int32)
    teacher = jnp.asarray(rng.normal(size=(32, 4)) * 2, jnp.float32)
    w, t = 0.7, 3.0
    parts = steps.TrainStepParts(
        model=trainer.model, tx=trainer.tx, learning_rate_fn=trainer.learning_rate_fn,
        augment_fn=None, mix_fn=None, mean=(0.0,), std=(1.0,),
        metrics_cls=trainer.train_metrics_cls, label_smoothing=0.1, micro_batches=micro_batches,
        distill_weight=w, distill_temperature=t,
    )  # fmt: skip
    objective, logits, loss, _, _ = jax.jit(
        lambda *args: steps._loss_and_grads(*args, parts=parts)
    )(state, images, labels, jnp.ones(32), teacher, jax.random.key(0))
    logits, teacher = np.asarray(logits, np.float64), np.asarray(teacher, np.float64)
    targets = np.eye(4)[np.asarray(labels)] * 0.9 + 0.1 / 4
    cross_entropy = -(targets * _log_softmax(logits)).sum(-1)
    np.testing.assert_allclose(loss, cross_entropy, rtol=1e-5)
    expected = ((1 - w) * cross_entropy + w * _numpy_kd(logits, teacher, t)).mean()
    assert float(objective) == pytest.approx(expected, rel=1e-5)


@pytest.fixture(scope="module")
def teacher_workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("teacher")
    config = tiny_config(**{"training.num_train_steps": 16, "input.batch_size": 32,
                            "model.width": 8, "augment.train": ""})  # fmt: skip
    train_and_evaluate(config, str(workdir), synthetic_dataset())
    return str(workdir)


@pytest.mark.slow
def test_the_teacher_runs_once_per_step_whatever_the_micro_batches_and_sam(
    teacher_workdir, monkeypatch
):
    """With 2 micro-batches (a scan) and SAM's second gradient, tracing the step calls the
    teacher once: its logits are computed one time per step, outside the gradients."""
    calls = []
    load = distillation.load_teacher

    def counting_teacher(*args):
        teacher = load(*args)
        return dataclasses.replace(teacher, logits=lambda x: calls.append(1) or teacher.logits(x))

    monkeypatch.setattr(distillation, "load_teacher", counting_teacher)
    config = tiny_config(**{"distill.teacher": teacher_workdir, "input.batch_size": 32,
                            "optimizer.name": "sam", "training.grad_accum_steps": 2,
                            "augment.train": "flip_lr"})  # fmt: skip
    trainer = Trainer(config, synthetic_dataset())
    state, losses = train_steps(trainer, 2)
    assert calls == [1] and np.isfinite(losses).all()


@pytest.mark.slow
def test_a_distilled_run_trains_names_its_teacher_and_saves_only_the_student(
    teacher_workdir, tmp_path
):
    overrides = {"training.num_train_steps": 16, "input.batch_size": 32, "model.width": 8,
                 "distill.teacher": teacher_workdir, "distill.weight": 0.5,
                 "distill.temperature": 2.0, "augment.mixup_alpha": 0.2}  # fmt: skip
    results = train_and_evaluate(tiny_config(**overrides), str(tmp_path), synthetic_dataset())
    teacher = json.loads((Path(teacher_workdir) / "results.json").read_text())
    assert results["test/accuracy"] > 0.5, (results, teacher)  # 4 classes.
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["distillation"]["teacher"].startswith(teacher_workdir)
    assert "distilled from" in (tmp_path / "report.md").read_text()
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any("train/distill_loss" in record for record in logged)
    plain = Trainer(tiny_config(**{**overrides, "distill.teacher": ""}), synthetic_dataset())
    from conftest import trainer_restore

    saved = trainer_restore(plain, tmp_path)[0]  # The student's state, nothing more.
    assert jax.tree.structure(saved) == jax.tree.structure(plain.abstract_state())


@pytest.mark.slow
def test_a_teacher_of_other_classes_or_channels_is_refused(teacher_workdir):
    other = synthetic_dataset()
    renamed = data.Dataset(other.train, other.validation, other.test,
                           class_names=("a", "b", "c", "d"))  # fmt: skip
    config = tiny_config(**{"distill.teacher": teacher_workdir, "input.batch_size": 32})
    with pytest.raises(ValueError, match=r"classifies 4 classes \(class0, class1, .*same order"):
        Trainer(config, renamed)
    colour = data.Dataset(*(data.Split(np.repeat(s.images, 3, -1), s.labels)
                            for s in (other.train, other.validation, other.test)),
                          class_names=other.class_names)  # fmt: skip
    colour_config = tiny_config(**{"distill.teacher": teacher_workdir, "input.batch_size": 32,
                                   "dataset.mean": (0.5,) * 3, "dataset.std": (0.5,) * 3})  # fmt: skip
    with pytest.raises(ValueError, match="takes 1-channel images but the student's have 3"):
        Trainer(colour_config, colour)
    with pytest.raises(ValueError, match="is neither a training workdir"):
        Trainer(tiny_config(**{"distill.teacher": "/nonexistent"}), other)


@pytest.mark.slow
def test_distillation_with_weight_zero_trains_as_without_a_teacher(teacher_workdir):
    dataset = synthetic_dataset()
    base = {"input.batch_size": 32, "augment.train": "flip_lr"}
    alone, alone_losses = train_steps(Trainer(tiny_config(**base), dataset), 3)
    zero = tiny_config(**base, **{"distill.teacher": teacher_workdir, "distill.weight": 0.0})
    distilled, losses = train_steps(Trainer(zero, dataset), 3)
    np.testing.assert_allclose(losses, alone_losses, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 alone.params, distilled.params)  # fmt: skip
    assert isinstance(Trainer(zero, dataset).teacher, distillation.Teacher)


@pytest.mark.slow
def test_a_converted_checkpoint_teaches_when_its_classes_match(tmp_path):
    """A teacher from imgcls_jax.convert's format: its ImageNet-style preprocessing (centre
    crop of its input size) and normalisation, its class names checked."""
    from imgcls_jax import convert, models

    model = models.build("resnet8", num_classes=4, width=8, stem="small")
    variables = jax.device_get(model.init(jax.random.key(3), jnp.zeros((1, 8, 8, 1)), train=False))
    metadata = {"architecture": "resnet8", "width": 8, "stem": "small", "input_size": 8,
                "num_classes": 4, "class_names": [f"class{i}" for i in range(4)],
                "mean": [0.5], "std": [0.25]}  # fmt: skip
    convert.save_pretrained(str(tmp_path / "teacher"), variables, metadata)
    config = tiny_config(**{"distill.teacher": str(tmp_path / "teacher"), "input.batch_size": 32,
                            "augment.train": ""})  # fmt: skip
    trainer = Trainer(config, synthetic_dataset())
    images = jnp.asarray(synthetic_dataset().train.images[:32], jnp.float32)
    expected = model.apply(variables, (images / 255 - 0.5) / 0.25, train=False)
    np.testing.assert_allclose(trainer.teacher.logits(images), expected, rtol=1e-5, atol=1e-5)
    _, losses = train_steps(trainer, 2)
    assert np.isfinite(losses).all()
    convert.save_pretrained(str(tmp_path / "other"), variables,
                            {**metadata, "class_names": ["w", "x", "y", "z"]})  # fmt: skip
    with pytest.raises(ValueError, match="classifies 4 classes"):
        Trainer(tiny_config(**{"distill.teacher": str(tmp_path / "other")}), synthetic_dataset())


@pytest.mark.slow
def test_a_teacher_workdir_given_by_a_relative_path_loads(teacher_workdir, monkeypatch):
    monkeypatch.chdir(Path(teacher_workdir).parent)
    relative = Path(teacher_workdir).name
    trainer = Trainer(tiny_config(**{"distill.teacher": relative, "input.batch_size": 32}),
                      synthetic_dataset())  # fmt: skip
    assert trainer.teacher.source.startswith(relative)
