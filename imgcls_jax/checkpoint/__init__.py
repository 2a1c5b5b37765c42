"""Orbax checkpoints in the workdir: the last N steps plus the best one, each verified
(`integrity`) when read, falling back to an older step when one is damaged; steps saved
under older module names are read through `old_names`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

from imgcls_jax.checkpoint import integrity, old_names

CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "corrupt_checkpoints"
SET_ASIDE_DIR = "set_aside_checkpoints"  # Steps after the one a run was sent back to.
# What a changed optimizer leaves restorable: everything of a state but its optimizer state.
MODEL_FIELDS = ("step", "params", "batch_stats", "ema")


class CheckpointRestoreError(ValueError):
    """No saved step could be restored; the message lists why each one failed."""


class NonFiniteStateError(FloatingPointError):
    """A train state holding inf or NaN was not checkpointed."""


class KeepLatestAndBest:
    """Orbax preservation policy: the newest `keep` steps, `best_step` (when set), and every
    step that is a multiple of `period` (when > 0; Orbax's keep_period)."""

    def __init__(self, keep: int, period: int = 0):
        self.keep, self.period = keep, period
        self.best_step: int | None = None

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        del context
        newest = {info.step for info in list(checkpoints)[-self.keep :]}
        return [
            info.step in newest
            or info.step == self.best_step
            or (self.period > 0 and info.step % self.period == 0)
            for info in checkpoints
        ]


class Checkpointer:
    """`workdir/checkpoints` keeps the last `keep` saves, the best one (by validation) and
    every multiple of `keep_period` steps (when > 0).

    Each save holds the train state, a small JSON `progress` dict (best metric and its step,
    evaluations without improvement, whether training stopped early) and the state's
    checksums. One Orbax manager writes every step once, in the same order on every process:
    its asynchronous saves never overlap, so their cross-process barriers cannot collide.
    Orbax writes each step to a temporary directory and renames it when complete, so a save
    cut short by a crash is never restored (and is cleaned up on the next start).
    """

    def __init__(self, workdir: str, keep: int, keep_period: int = 0):
        if keep < 1:
            raise ValueError(f"keep_checkpoints must be >= 1 to resume a run, got {keep}.")
        self.workdir = epath.Path(workdir)
        self._policy = KeepLatestAndBest(keep, keep_period)
        self.manager = ocp.CheckpointManager(
            self._directory(CHECKPOINT_DIR),
            options=ocp.CheckpointManagerOptions(
                preservation_policy=self._policy,
                create=True,
                enable_async_checkpointing=True,
                cleanup_tmp_directories=True,
            ),
        )

    def _directory(self, name: str) -> epath.Path:
        return absolute(self.workdir / name)

    @property
    def directory(self) -> epath.Path:
        return epath.Path(self.manager.directory)

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """The saved steps, oldest first."""
        return sorted(self.manager.all_steps())

    def set_aside_after(self, step: int) -> list[int]:
        """Moves every saved step after `step` to `workdir/set_aside_checkpoints` (kept, not
        deleted), so that a run sent back to `step` saves its new steps in their place;
        returns the steps moved."""
        later = [s for s in self.all_steps() if s > step]
        if later and jax.process_index() == 0:
            target = self.workdir / SET_ASIDE_DIR / f"after_step_{step}_{int(time.time())}"
            target.mkdir(parents=True, exist_ok=True)
            for s in later:
                (self.directory / str(s)).rename(target / str(s))
            logging.warning("Moved steps %s to %s (the run goes back to %s).",
                            ", ".join(map(str, later)), target, step or "the start")  # fmt: skip
        if later and jax.process_count() > 1:
            multihost_utils.sync_global_devices("imgcls_jax checkpoint set aside")
        self.manager.reload()
        return later

    def save(self, step: int, state: Any, progress: dict) -> None:
        """Saves `state` at `step` asynchronously; `progress["best_step"]` is kept too.

        A step that is already saved is kept as it is: a resumed run recomputes it exactly.
        Raises NonFiniteStateError, writing nothing, when any array holds inf or NaN.
        """
        self._policy.best_step = progress.get("best_step")
        if step in self.manager.all_steps():
            return
        checksums, nonfinite = integrity.checksums_and_nonfinite(state)
        if nonfinite:
            raise NonFiniteStateError(
                f"Refused to checkpoint step {step}: the train state holds inf or NaN in "
                f"{', '.join(nonfinite[:5])}{' ...' if len(nonfinite) > 5 else ''}. The last "
                f"good checkpoint stays in {self.directory}."
            )
        record = {"algorithm": integrity.ALGORITHM, "checksums": checksums,
                  "progress_sha256": integrity.progress_digest(progress)}  # fmt: skip
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(progress),
            integrity=ocp.args.JsonSave(record),
        )
        self.manager.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, newest: int | None = None) -> tuple[Any, dict] | None:
        """Restores the newest intact step (no newer than `newest`, when given) into the shape
        and sharding of `abstract_state`; None when there is none.

        A step that cannot be read (metadata or arrays), whose checksums differ or whose
        arrays are not finite is logged and skipped for the next older one; once an intact
        step is found, the damaged newer ones are moved to `workdir/corrupt_checkpoints`.
        Raises CheckpointRestoreError, moving nothing, when no step can be restored (e.g. the
        checkpoints belong to another model).
        """
        failures: list[tuple[int, str]] = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            if newest is not None and step > newest:
                continue
            problem, restored = self._restore_step(step, abstract_state)
            if problem:
                logging.error("Checkpoint step %d in %s is unusable: %s", step, self.directory,
                              problem)  # fmt: skip
                failures.append((step, problem))
                continue
            if failures:
                self._quarantine([s for s, _ in failures])
                logging.warning("Fell back to step %d of %s.", step, self.directory)
            return restored
        if failures:
            listing = "; ".join(f"step {s}: {p}" for s, p in failures)
            raise CheckpointRestoreError(f"no step in {self.directory} could be restored "
                                         f"({listing})")  # fmt: skip
        return None

    def restore_step(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores exactly `step` (e.g. the best one); raises CheckpointRestoreError when it
        is missing or damaged."""
        if step not in self.manager.all_steps():
            raise CheckpointRestoreError(f"step {step} is not in {self.directory}")
        problem, restored = self._restore_step(step, abstract_state)
        if problem:
            raise CheckpointRestoreError(f"step {step} in {self.directory}: {problem}")
        return restored

    def _restore_step(
        self, step: int, abstract_state: Any
    ) -> tuple[str | None, tuple[Any, dict] | None]:
        """(None, (state, progress)) for an intact step, else (what is wrong, None)."""
        step_dir = self.directory / str(step)
        try:
            integrity.check_array_index(step_dir / "state")
            saved = integrity.read(step_dir)
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(old_names.as_saved(abstract_state,
                                                                  saved["checksums"])),
                progress=ocp.args.JsonRestore(),
            )  # fmt: skip
            restored = self.manager.restore(step, args=args)
            progress = dict(restored["progress"])
        except jax.errors.JaxRuntimeError:  # A failed collective or device, not a damaged step:
            raise  # falling back would set good steps aside when a peer dies mid-restore.
        # Orbax and TensorStore report damaged files, metadata included, in many types (e.g.
        # KeyError for a field missing from an edited _METADATA); any of them makes the step
        # unusable, and the caller falls back to an older one.
        except Exception as e:
            return f"{type(e).__name__}: {e}", None
        problem = integrity.verify(saved, restored["state"], progress)
        if problem:
            return problem, None
        return None, (old_names.to_current(restored["state"]), progress)

    def restore_model(self, abstract_state: Any, newest: int | None = None) -> tuple[dict, dict]:
        """The newest step's (no newer than `newest`) step, parameters, batch statistics and
        EMA (`MODEL_FIELDS`: all but the optimizer state), verified against its checksums,
        with its progress: for a config whose optimizer no longer fits the saved optimizer
        state. A field the step did not save (an EMA newly asked for) is left out. Raises
        CheckpointRestoreError when no step has them intact."""
        failures = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            if newest is not None and step > newest:
                continue
            try:
                saved = integrity.read(self.directory / str(step))["checksums"]
                wanted = {k: getattr(abstract_state, k) for k in MODEL_FIELDS
                          if getattr(abstract_state, k) is not None
                          and any(p.startswith(f".{k}") for p in saved)}  # fmt: skip
                model = restore_variables(str(self.workdir), step, wanted)
                return model, read_progress(str(self.workdir), step)
            except (CheckpointRestoreError, OSError, ValueError, KeyError) as e:
                failures.append(f"step {step}: {e}")
        raise CheckpointRestoreError("; ".join(failures) or f"no step in {self.directory}")

    def _quarantine(self, steps: list[int]) -> None:
        """Moves damaged steps out of the checkpoint directory (kept for inspection)."""
        if jax.process_index() == 0:
            target = self.workdir / QUARANTINE_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                source = self.directory / str(step)
                moved = target / f"{source.parent.name}_{step}_{int(time.time())}"
                source.rename(moved)
                logging.warning("Moved damaged checkpoint %s to %s.", source, moved)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("imgcls_jax checkpoint quarantine")
        self.manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.close()


def absolute(path: epath.Path) -> epath.Path:
    """`path` made absolute, as Orbax (TensorStore) wants it; URLs such as gs:// already are."""
    return path if "://" in str(path) else path.resolve()


def saved_steps(workdir: str) -> list[int]:
    """The complete steps under `workdir/checkpoints`, oldest first (none while unwritten)."""
    directory = epath.Path(workdir) / CHECKPOINT_DIR
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def read_progress(workdir: str, step: int) -> dict:
    """The `progress` dict (best step and metric, ...) saved with `step`, checked against its
    checksum; raises CheckpointRestoreError when it is damaged or unreadable."""
    step_dir = absolute(epath.Path(workdir)) / CHECKPOINT_DIR / str(step)
    try:
        progress = json.loads((step_dir / "progress" / "metadata").read_text())
        digest = integrity.read(step_dir).get("progress_sha256")
    except (OSError, ValueError) as e:
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: unreadable progress "
                                     f"record ({type(e).__name__}: {e})") from e  # fmt: skip
    if digest is not None and digest != integrity.progress_digest(progress):
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: content checksum "
                                     "mismatch in the progress record")  # fmt: skip
    return progress


def restore_variables(workdir: str, step: int, abstract_variables: dict) -> dict:
    """Only the fields of the saved state that `abstract_variables` names (e.g. `params` and
    `batch_stats`, no optimizer state), on its shardings, verified against the step's
    checksums; raises CheckpointRestoreError when they are missing, damaged or not finite."""
    step_dir = absolute(epath.Path(workdir)) / CHECKPOINT_DIR / str(step)
    try:
        integrity.check_array_index(step_dir / "state")
        saved = integrity.read(step_dir)
        abstract_variables = old_names.as_saved(abstract_variables, saved["checksums"])
        restored = ocp.PyTreeCheckpointer().restore(
            step_dir / "state",
            args=ocp.args.PyTreeRestore(
                item=abstract_variables,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables),
                partial_restore=True,
            ),
        )
    except jax.errors.JaxRuntimeError:  # A failed collective or device (see _restore_step).
        raise
    except Exception as e:  # Damaged or missing files surface in many types (see restore).
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: "
                                     f"{type(e).__name__}: {e}") from e  # fmt: skip
    problem = integrity.verify(saved, restored)
    if problem:
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: {problem}")
    return old_names.to_current(restored)
