"""When the loop logs, evaluates and checkpoints, and how many steps each call from the host
runs: worked out once from the config by the builder."""

from __future__ import annotations

import dataclasses
import math

import ml_collections

from imgcls_jax.config import progressive_sizes

# training.steps_per_dispatch=0 on GPUs and TPUs (at most; see `build_cadence`): small steps
# stop waiting on the host. CPUs keep 1: measured side by side, 4 steps per call helped a
# float32 ResNet-20 but not the bfloat16 airbench net (docs/performance.md).
AUTO_STEPS_PER_DISPATCH = 8


@dataclasses.dataclass(frozen=True)
class Cadence:
    """The run's length and periods, in steps (a period of 0 never fires)."""

    total_steps: int
    steps_per_epoch: int
    log_every: int
    eval_every: int  # Also at the last step.
    checkpoint_every: int  # Besides evaluations (which save) and the end.
    steps_per_dispatch: int
    # Progressive resizing: (first step, image side) by step, from step 0; () for one size.
    train_sizes: tuple[tuple[int, int], ...] = ()
    # The evaluation suites (config.evaluation): also at the last step.
    corruptions_every: int = 0
    few_shot_every: int = 0

    def is_log(self, step: int) -> bool:
        return step % self.log_every == 0

    def is_eval(self, step: int) -> bool:
        return step % self.eval_every == 0 or step == self.total_steps

    def is_due(self, step: int, every: int) -> bool:
        """Whether a suite evaluated `every` steps (0: never) runs at `step`."""
        return every > 0 and (step % every == 0 or step == self.total_steps)

    def is_checkpoint(self, step: int) -> bool:
        return self.checkpoint_every > 0 and step % self.checkpoint_every == 0

    def steps_in_next_call(self, step: int) -> int:
        """How many steps the call after `step` runs: `steps_per_dispatch`, cut short at the
        next log, evaluation or checkpoint step, image-size change and at the end."""
        periods = (self.log_every, self.eval_every, self.checkpoint_every,
                   self.corruptions_every, self.few_shot_every)  # fmt: skip
        boundaries = [(step // p + 1) * p for p in periods if p > 0] + [self.total_steps]
        boundaries += [first for first, _ in self.train_sizes if first > step]
        return min(self.steps_per_dispatch, min(boundaries) - step)

    def train_size_after(self, step: int) -> int:
        """The image side of the step after `step` (progressive resizing); 0: as augmented."""
        return max(((first, size) for first, size in self.train_sizes if first <= step),
                   default=(0, 0))[1]  # fmt: skip


def build_cadence(
    training: ml_collections.ConfigDict,
    steps_per_epoch: int,
    platform: str,
    evaluation: ml_collections.ConfigDict | None = None,
) -> Cadence:
    """The cadence `training` (config.training) asks for, over epochs of `steps_per_epoch`;
    automatic steps per dispatch (0) is 1 on CPUs, elsewhere the largest divisor of
    AUTO_STEPS_PER_DISPATCH that also divides every period and the run's length, so that
    every call runs the same number of steps (one compiled program per image size)."""
    total = training.num_train_steps or max(1, int(training.num_epochs * steps_per_epoch))
    sizes = tuple((int(round(epoch * steps_per_epoch)), size)
                  for epoch, size in progressive_sizes(training.progressive_sizes))  # fmt: skip
    eval_every = max(1, int(round(training.eval_every_epochs * steps_per_epoch)))
    suites = [evaluation.corruptions_every_epochs if evaluation else 0,
              evaluation.few_shot_every_epochs if evaluation else 0]  # fmt: skip
    corruptions_every, few_shot_every = (max(1, int(round(e * steps_per_epoch))) if e else 0
                                         for e in suites)  # fmt: skip
    periods = (training.log_every_steps, eval_every, training.checkpoint_every_steps, total,
               corruptions_every, few_shot_every, *(first for first, _ in sizes))  # fmt: skip
    per_dispatch = training.steps_per_dispatch or (
        1 if platform == "cpu" else math.gcd(AUTO_STEPS_PER_DISPATCH, *[p for p in periods if p])
    )
    return Cadence(total_steps=total, steps_per_epoch=steps_per_epoch,
                   log_every=training.log_every_steps, eval_every=eval_every,
                   checkpoint_every=training.checkpoint_every_steps,
                   steps_per_dispatch=per_dispatch, train_sizes=sizes,
                   corruptions_every=corruptions_every, few_shot_every=few_shot_every)  # fmt: skip
