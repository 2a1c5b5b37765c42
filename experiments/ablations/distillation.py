"""Ablation: does knowledge distillation from a deeper ResNet beat training the student alone
for the same steps?

Fashion-MNIST, a 10,000-image training subset (validation and test as usual), the default
preset's recipe otherwise. The teacher, a ResNet-56 (width 16) trained 15 epochs on the same
subset, is trained first (ROOT/teacher/seed_0); then ResNet-8 and ResNet-20 students train 10
epochs each, alone or distilled from it (config.distill: weight 0.9, temperature 4, the
teacher run inside the step on the student's augmented batch).

    python -m experiments.ablations.distillation --root=experiments/results/ablations/distillation --seeds=3
"""

import os

from absl import app, flags

from experiments.run_sweep import main_for

FLAGS = flags.FLAGS
FIXED = {"dataset.train_size": 10000, "training.eval_every_epochs": 2.0}
TEACHER = {"model.name": "resnet56", "training.num_epochs": 15.0}


def grid(base):
    """Trains the teacher (once; a rerun finds it done), then returns the students' grid."""
    from imgcls_jax.training import sweep

    root = os.path.join(FLAGS.root, "teacher")
    (run,) = sweep.expand([("resnet56 teacher", TEACHER)], [0])
    sweep.run_sweep(base, [run], root)
    teacher = os.path.join(root, run.directory)
    return [
        (f"{student} {'distilled' if distilled else 'alone'}",
         {"model.name": student, "training.num_epochs": 10.0,
          "distill.teacher": teacher if distilled else ""})
        for student in ("resnet8", "resnet20")
        for distilled in (False, True)
    ]  # fmt: skip


if __name__ == "__main__":
    app.run(main_for(grid, FIXED, ["test/accuracy", "val/accuracy"]))
