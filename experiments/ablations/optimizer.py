"""Ablation: SGD with Nesterov momentum vs AdamW, cosine vs step decay, with and without
warm-up — which optimiser and schedule train a small ResNet best for a fixed budget?

Fashion-MNIST, a 10,000-image training subset, ResNet-8 (width 16), 10 epochs. Each optimiser
keeps its usual learning rate and weight decay (SGD 0.1 / 5e-4, AdamW 2e-3 / 0.05); the step
schedule decays by 10x at 50% and 75% of training.

    python -m experiments.ablations.optimizer --root=experiments/results/ablations/optimizer --seeds=2
"""

from absl import app

from experiments.run_sweep import main_for

FIXED = {
    "dataset.train_size": 10000,
    "model.name": "resnet8",
    "training.num_epochs": 10.0,
    "training.eval_every_epochs": 2.0,
    "schedule.step_epochs": (5, 7.5),
}
SGD = {"optimizer.name": "sgd", "optimizer.learning_rate": 0.1, "optimizer.weight_decay": 5e-4}
ADAMW = {"optimizer.name": "adamw", "optimizer.learning_rate": 2e-3, "optimizer.weight_decay": 0.05}
GRID = [
    (f"{name} {schedule}{' + warm-up' if warmup else ''}",
     {**optimizer, "schedule.name": schedule, "schedule.warmup_epochs": warmup})
    for name, optimizer in (("SGD", SGD), ("AdamW", ADAMW))
    for schedule in ("cosine", "step")
    for warmup in (1.0, 0.0)
]  # fmt: skip

if __name__ == "__main__":
    app.run(main_for(GRID, FIXED, ["test/accuracy", "val/accuracy"]))
