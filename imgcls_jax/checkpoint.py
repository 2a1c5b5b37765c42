"""Orbax checkpoints in the workdir: the last N steps plus the best one, each verified by a
content checksum on restore, falling back to an older step when one is damaged."""

from __future__ import annotations

import logging
import time
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

CHECKSUM_ALGORITHM = "uint32 sums of bits x (2i+1) and bits x (2i+1)^2, per array"
QUARANTINE_DIR = "corrupt_checkpoints"


class CheckpointRestoreError(ValueError):
    """No saved step could be restored; the message lists why each one failed."""


@jax.jit
def _array_checksums(tree: Any) -> Any:
    """Two uint32 position-weighted sums of each array's raw bits.

    Any change of one element (one flipped bit or byte) changes the first sum, because the
    element's weight 2i+1 is odd; the second sum makes coincidental multi-element collisions
    about 2^-64 likely. Computed on device, so it costs one pass over the state.
    """

    def checksum(x: jax.Array) -> jax.Array:
        bits = _as_uint32(x).reshape(-1)
        weight = jnp.arange(bits.size, dtype=jnp.uint32) * 2 + 1
        return jnp.stack([jnp.sum(bits * weight), jnp.sum(bits * weight * weight)])

    return jax.tree.map(checksum, tree)


def _as_uint32(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize
    if width == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # A trailing axis of 2 words.
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def state_checksums(state: Any) -> dict[str, str]:
    """{array path: hex checksum} of a (possibly sharded, multi-host) state pytree."""
    sums = jax.device_get(_array_checksums(state))
    flat = jax.tree_util.tree_flatten_with_path(sums)[0]
    return {jax.tree_util.keystr(path): f"{int(s[0]):08x}{int(s[1]):08x}" for path, s in flat}


class Checkpointer:
    """`workdir/checkpoints` keeps the last `keep` saves; `workdir/best` keeps the best one.

    Each save holds the train state, a small JSON `progress` dict (best metric so far,
    evaluations without improvement, whether training stopped early) and the state's
    checksums. Orbax writes each step to a temporary directory and renames it when complete,
    so a save cut short by a crash is never restored (and is cleaned up on the next start).
    """

    def __init__(self, workdir: str, keep: int):
        self.workdir = epath.Path(workdir)
        options = dict(create=True, enable_async_checkpointing=True, cleanup_tmp_directories=True)
        self.latest = ocp.CheckpointManager(
            self._directory("checkpoints"),
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **options),
        )
        self.best = ocp.CheckpointManager(
            self._directory("best"),
            options=ocp.CheckpointManagerOptions(max_to_keep=1, **options),
        )

    def _directory(self, name: str) -> epath.Path:
        path = self.workdir / name
        return path if "://" in str(path) else path.resolve()  # Orbax wants absolute paths.

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def save(self, step: int, state: Any, progress: dict, is_best: bool = False) -> None:
        """Saves `state` at `step` (asynchronously); also as the best one when `is_best`.

        A step that is already saved is kept as it is: a resumed run recomputes it exactly.
        """
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(progress),
            integrity=ocp.args.JsonSave(
                {"algorithm": CHECKSUM_ALGORITHM, "checksums": state_checksums(state)}
            ),
        )
        for manager, wanted in ((self.latest, True), (self.best, is_best)):
            if wanted and step not in manager.all_steps():
                manager.save(step, args=args, force=True)

    def restore(self, abstract_state: Any, best: bool = False) -> tuple[Any, dict] | None:
        """Restores the newest intact save (latest, or best) into the shape and sharding of
        `abstract_state`; None when there is none.

        A step that cannot be read or whose checksums differ is logged and skipped for the
        next older one; once an intact step is found, the damaged newer ones are moved to
        `workdir/corrupt_checkpoints`. Raises CheckpointRestoreError, moving nothing, when no
        step can be restored (e.g. the checkpoints belong to another model).
        """
        manager = self.best if best else self.latest
        failures: list[tuple[int, str]] = []
        for step in sorted(manager.all_steps(), reverse=True):
            problem, restored = self._restore_step(manager, step, abstract_state)
            if problem:
                logging.error("Checkpoint step %d in %s is unusable: %s", step,
                              manager.directory, problem)  # fmt: skip
                failures.append((step, problem))
                continue
            if failures:
                self._quarantine(manager, [s for s, _ in failures])
                logging.warning("Fell back to step %d of %s.", step, manager.directory)
            return restored
        if failures:
            listing = "; ".join(f"step {s}: {p}" for s, p in failures)
            raise CheckpointRestoreError(f"no step in {manager.directory} could be restored "
                                         f"({listing})")  # fmt: skip
        return None

    def _restore_step(
        self, manager: ocp.CheckpointManager, step: int, abstract_state: Any
    ) -> tuple[str | None, tuple[Any, dict] | None]:
        """(None, (state, progress)) for an intact step, else (what is wrong, None)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            progress=ocp.args.JsonRestore(),
            integrity=ocp.args.JsonRestore(),
        )
        try:
            restored = manager.restore(step, args=args)
        except (ValueError, OSError) as e:  # Orbax/TensorStore report unreadable data so.
            return f"{type(e).__name__}: {e}", None
        saved = dict(restored["integrity"])["checksums"]
        actual = state_checksums(restored["state"])
        damaged = [path for path, value in actual.items() if saved.get(path) != value]
        if damaged or saved.keys() != actual.keys():
            return f"content checksum mismatch in {', '.join(damaged) or 'the array list'}", None
        return None, (restored["state"], dict(restored["progress"]))

    def _quarantine(self, manager: ocp.CheckpointManager, steps: list[int]) -> None:
        """Moves damaged steps out of the manager's directory (kept for inspection)."""
        if jax.process_index() == 0:
            target = self.workdir / QUARANTINE_DIR
            target.mkdir(parents=True, exist_ok=True)
            for step in steps:
                source = epath.Path(manager.directory) / str(step)
                moved = target / f"{source.parent.name}_{step}_{int(time.time())}"
                source.rename(moved)
                logging.warning("Moved damaged checkpoint %s to %s.", source, moved)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("imgcls_jax checkpoint quarantine")
        manager.reload()

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        self.latest.close()
        self.best.close()
