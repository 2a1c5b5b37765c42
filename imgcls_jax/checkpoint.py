"""Orbax checkpoints in the workdir: the last N steps, plus the best by a validation metric."""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
    """`workdir/checkpoints` keeps the last `keep` saves; `workdir/best` keeps the best one.

    Each save holds the train state and a small JSON `progress` dict (best metric so far,
    evaluations without improvement, whether training stopped early).
    """

    def __init__(self, workdir: str, keep: int):
        options = dict(create=True, enable_async_checkpointing=True)
        self.latest = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "checkpoints")),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options),
        )
        self.best = ocp.CheckpointManager(
            os.path.abspath(os.path.join(workdir, "best")),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
        )

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, progress: dict, is_best: bool = False) -> None:
        """Saves `state` at `step` (asynchronously); also as the best one when `is_best`."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
        )
        if self.latest.latest_step() != step:
            self.latest.save(step, args=args, force=True)
        if is_best:
            self.best.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, best: bool = False) -> tuple[Any, dict] | None:
        """Restores the latest (or best) save into the shape and sharding of `abstract_state`."""
        manager = self.best if best else self.latest
        step = manager.latest_step()
        if step is None:
            return None
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state), progress=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], dict(restored["progress"])

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
