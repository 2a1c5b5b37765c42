"""Getting a run back on its feet: which saved step a relaunch continues from
(config.training.restore_step, another global batch, changed optimizer settings), and what a
non-finite update leads to (the relaunch it prints, or a rewind during the run)."""

from __future__ import annotations

import json
import logging
import math
import os
from typing import Any

import jax
from etils import epath
from jax.experimental import multihost_utils

from imgcls_jax.checkpoint import Checkpointer, CheckpointRestoreError, read_progress
from imgcls_jax.reporting import writers
from imgcls_jax.training import train_state
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.progress import Progress

# Written when a non-finite update stops the run; a relaunch with training.restore_step then
# goes back even if the newest step was itself sent back to that step.
DIVERGED_FILE = "diverged.json"


def mark_diverged(workdir: str, step: int) -> None:
    """Records that a non-finite update stopped the run at `step` (DIVERGED_FILE)."""
    if jax.process_index() == 0:
        with epath.Path(workdir, DIVERGED_FILE).open("w") as f:
            json.dump({"step": step}, f)


def send_back(restore_step: int, checkpointer: Checkpointer) -> int | None:
    """Applies config.training.restore_step: sets aside the saved steps after it (all of
    them for 0) and returns it. None for -1, and for a relaunch of the same command after an
    interruption: the newest step already continues from it and no divergence stopped the run
    since (DIVERGED_FILE)."""
    steps_saved = checkpointer.all_steps()
    marker = epath.Path(checkpointer.workdir, DIVERGED_FILE)
    diverged = marker.exists()
    if restore_step < 0 or not steps_saved:
        return None
    try:
        sent_back_to = read_progress(str(checkpointer.workdir), steps_saved[-1]).get("sent_back_to")
    except CheckpointRestoreError:  # Damaged: the restore falls back past it anyway.
        sent_back_to = None
    if sent_back_to == restore_step and not diverged:
        logging.info("training.restore_step=%d was applied before; continuing from step %d.",
                     restore_step, steps_saved[-1])  # fmt: skip
        return None
    if restore_step and restore_step not in steps_saved:
        raise ValueError(f"config.training.restore_step={restore_step} is not a saved step of "
                         f"{checkpointer.directory}; saved: "
                         f"{', '.join(map(str, steps_saved))} (0 starts over).")  # fmt: skip
    checkpointer.set_aside_after(restore_step)
    if jax.process_count() > 1:  # Every process has read the marker.
        multihost_utils.sync_global_devices("imgcls_jax restore_step")
    if diverged and jax.process_index() == 0:
        marker.unlink()
    return restore_step


def restore_model_only(trainer, checkpointer, abstract, newest, error) -> tuple[Any, dict]:
    """The newest step's parameters, batch statistics and EMA with a fresh optimizer state,
    when the saved optimizer state no longer fits the config's optimizer (its settings
    changed); re-raises `error` (with what to do) when the model does not fit either."""
    try:
        model, saved = checkpointer.restore_model(abstract, newest)
    except CheckpointRestoreError:
        raise CheckpointRestoreError(
            f"The checkpoints do not fit this config's model/optimizer or are damaged: {error}. "
            "Use a new --workdir for a different model, or the config the checkpoints were "
            "trained with; nothing was changed in the workdir."
        ) from error
    state = trainer.replace_variables(model)  # A fresh optimizer state for these parameters.
    state = state.replace(step=model["step"], ema=model.get("ema", state.ema))
    logging.warning(
        "Step %d: the parameters, batch statistics and weight average were restored; the "
        "saved optimizer state does not fit this config's optimizer (its settings changed) "
        "and starts afresh.", int(state.step),
    )  # fmt: skip
    return state, saved


def check_global_batch(saved: int | None, batch: int, config, step: int, where: str) -> None:
    """Stops a resume with another global batch than the checkpoints' (older checkpoints do
    not record it), unless config.training.allow_batch_change."""
    if saved is None or saved == batch:
        return
    if config.training.allow_batch_change:
        logging.warning("Resuming step %d with global batch %d (trained with %d), as allowed.",
                        step, batch, saved)  # fmt: skip
        return
    raise ValueError(
        f"The checkpoints in {where} were trained with global batch {saved} "
        f"(config.input.batch_size), this run has {batch}: relaunch with "
        f"--config.input.batch_size={saved} (on any number of processes and devices), or set "
        "--config.training.allow_batch_change=True to continue with the new batch."
    )


def rewind(
    error: DivergedError,
    trainer: Trainer,
    progress: Progress,
    writer: writers.MetricWriter,
    checkpointer: Checkpointer,
) -> train_state.TrainState:
    """After a non-finite update at step D: the weights of the newest saved step whose loss
    was sane, continuing with step D + rewind_skip_steps + 1 (the steps in between skipped);
    re-raises `error` after max_rewinds rewinds or without a sane step."""
    cfg = trainer.config.training
    rewinds = progress.rewinds
    writer.flush()
    checkpointer.wait()
    sane = sane_steps(checkpointer.all_steps(), error.step,
                      str(checkpointer.workdir / "metrics.jsonl"))  # fmt: skip
    if rewinds >= cfg.max_rewinds or not sane:
        raise DivergedError(f"{error} No rewind left ({rewinds} of training.max_rewinds="
                            f"{cfg.max_rewinds} made; sane saved steps: {sane or 'none'}).",
                            error.step) from None  # fmt: skip
    back = sane[-1]
    state, saved = checkpointer.restore(trainer.abstract_state(), back)
    checkpointer.set_aside_after(back)
    resume = min(error.step + cfg.rewind_skip_steps, trainer.cadence.total_steps)
    state = trainer.jump_to_step(state, resume)
    progress.go_back_to(saved)
    progress.rewinds = rewinds + 1
    logging.warning(
        "Rewind %d of %d: non-finite update at step %d; the weights of step %d (the newest "
        "saved step whose loss was sane) continue with step %d; steps %d-%d and their batches "
        "are skipped.", rewinds + 1, cfg.max_rewinds, error.step, back, resume + 1, back + 1,
        resume,
    )  # fmt: skip
    return state


class DivergedError(FloatingPointError):
    """A non-finite loss, gradient or state stopped the run at `step`; `overrides` are the
    config changes of a relaunch that recovers (launch.py prints that command)."""

    def __init__(self, message: str, step: int, overrides: dict[str, Any] | None = None):
        super().__init__(message)
        self.step, self.overrides = step, overrides or {}


# A saved step is taken for sane when the train loss logged up to it stayed within this
# factor of the run's first logged loss (a diverging run's loss climbs by orders of magnitude).
SANE_LOSS_FACTOR = 1.5


def sane_steps(saved: list[int], before: int, metrics_path: str) -> list[int]:
    """The saved steps before `before` whose weights gave a sane train loss: the first loss
    logged after the step (computed with those weights) finite and within SANE_LOSS_FACTOR
    of the run's first logged loss; oldest first."""
    if not os.path.exists(metrics_path):
        return []
    logged = [(r["step"], r["train/loss"]) for r in writers.read_metrics(metrics_path)
              if "train/loss" in r]  # fmt: skip
    if not logged:
        return []
    limit = SANE_LOSS_FACTOR * logged[0][1]
    sane = []
    for step in saved:
        after = [loss for at, loss in logged if at > step]
        if step < before and after and math.isfinite(after[0]) and after[0] <= limit:
            sane.append(step)
    return sane


def with_recovery(
    error: DivergedError, trainer: Trainer, checkpointer: Checkpointer, progress: Progress
) -> DivergedError:
    """`error` with the saved steps and the relaunch that recovers: back to the best step by
    validation when it is sane, else the newest sane step, else the start, with a 10x lower
    learning rate."""
    saved = checkpointer.all_steps()
    sane = sane_steps(saved, error.step, str(checkpointer.workdir / "metrics.jsonl"))
    best = progress.best_step
    back = best if best in sane else (sane[-1] if sane else 0)
    why = ("the best by validation" if back == best else
           "the newest whose logged loss was sane" if back else "the start")  # fmt: skip
    lr = trainer.config.optimizer.learning_rate / 10
    overrides = {"training.restore_step": back, "optimizer.learning_rate": lr}
    listing = ", ".join(map(str, saved)) or "none"
    return DivergedError(
        f"{error} Saved steps: {listing}. To go back to step {back} ({why}) with a 10x lower "
        f"learning rate, relaunch with --config.training.restore_step={back} "
        f"--config.optimizer.learning_rate={lr:g} (the later steps are set aside, not deleted).",
        error.step, overrides,
    )  # fmt: skip
