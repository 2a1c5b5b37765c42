"""Ablation: does knowledge distillation from a deeper ResNet beat training the student alone
for the same steps?

Fashion-MNIST, a 10,000-image training subset (validation and test as usual), the default
preset's recipe otherwise (label smoothing 0.1 included). The teacher, a ResNet-56 (width 16)
trained 15 epochs on the same subset, is trained first (ROOT/teacher/...); then ResNet-8 and
ResNet-20 students train 10 epochs each, alone or distilled from it (config.distill: weight
0.9, temperature 4, the teacher run inside the step on the student's augmented batch). A
second teacher, trained without label smoothing (which is known to erase the similarities
between classes that distillation transfers; Müller et al. 2019), teaches ResNet-8 too.

    python -m experiments.ablations.distillation --root=experiments/results/ablations/distillation --seeds=3
"""

import os

from absl import app, flags

from experiments.run_sweep import main_for

FLAGS = flags.FLAGS
FIXED = {"dataset.train_size": 10000, "training.eval_every_epochs": 2.0}
TEACHERS = [
    ("resnet56 teacher", {"model.name": "resnet56", "training.num_epochs": 15.0}),
    ("resnet56 teacher without label smoothing",
     {"model.name": "resnet56", "training.num_epochs": 15.0, "loss.label_smoothing": 0.0}),
]  # fmt: skip


def grid(base):
    """Trains the teachers (once; a rerun finds them done), then returns the students' grid."""
    from imgcls_jax.training import sweep

    root = os.path.join(FLAGS.root, "teacher")
    runs = sweep.expand(TEACHERS, [0])
    sweep.run_sweep(base, runs, root)
    smoothed, unsmoothed = (os.path.join(root, run.directory) for run in runs)
    students = [
        (f"{student} {'distilled' if teacher else 'alone'}",
         {"model.name": student, "training.num_epochs": 10.0, "distill.teacher": teacher})
        for student in ("resnet8", "resnet20")
        for teacher in ("", smoothed)
    ]  # fmt: skip
    students.append(("resnet8 distilled from the teacher without label smoothing",
                     {"model.name": "resnet8", "training.num_epochs": 10.0,
                      "distill.teacher": unsmoothed}))  # fmt: skip
    return students


if __name__ == "__main__":
    app.run(main_for(grid, FIXED, ["test/accuracy", "val/accuracy"]))
