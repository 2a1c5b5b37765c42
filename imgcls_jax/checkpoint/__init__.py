"""Orbax checkpoints in the workdir: the last N steps plus the best one, each verified by a
content checksum and a finiteness check, falling back to an older step when one is damaged."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

CHECKSUM_ALGORITHM = "uint32 sums of bits x (2i+1) and bits x (2i+1)^2, per array"
CHECKPOINT_DIR = "checkpoints"
QUARANTINE_DIR = "corrupt_checkpoints"
SET_ASIDE_DIR = "set_aside_checkpoints"  # Steps after the one a run was sent back to.
# What a changed optimizer leaves restorable: everything of a state but its optimizer state.
MODEL_FIELDS = ("step", "params", "batch_stats", "ema")
# Flax names an unnamed layer after its class: the models' batch norms are `NormAct_N`.
# Checkpoints and converted weights in the older naming, `BatchNorm_N`, are renamed as they
# are restored. Saved name prefix -> the current one.
RENAMED_MODULES = {"BatchNorm_": "NormAct_"}


class CheckpointRestoreError(ValueError):
    """No saved step could be restored; the message lists why each one failed."""


class NonFiniteStateError(FloatingPointError):
    """A train state holding inf or NaN was not checkpointed."""


def rename_modules(tree: Any, renames: Mapping[str, str]) -> Any:
    """`tree` with every dict key, at any depth, that starts with a key of `renames` starting
    with its value instead (e.g. `{"BatchNorm_": "NormAct_"}`)."""

    def renamed(key: Any) -> Any:
        for old, new in renames.items():
            if isinstance(key, str) and key.startswith(old):
                return new + key[len(old) :]
        return key

    def rename(node: Any) -> Any:
        if not isinstance(node, dict):
            return node
        return {renamed(k): rename_modules(v, renames) for k, v in node.items()}

    return jax.tree.map(rename, tree, is_leaf=lambda x: isinstance(x, dict))


def _as_saved(saved_paths: Iterable[str]) -> dict[str, str]:
    """The renames from current module names to the older ones that a checkpoint whose arrays
    are at `saved_paths` (checksum keys, e.g. ".params['BatchNorm_0']['scale']") uses. (Back
    to the current ones is `RENAMED_MODULES` itself: no current name starts as an old one.)"""
    saved_paths = list(saved_paths)
    return {
        new: old
        for old, new in RENAMED_MODULES.items()
        if any(f"['{old}" in path for path in saved_paths)
    }


@jax.jit
def _array_checksums(tree: Any) -> Any:
    """Per array: two uint32 position-weighted sums of its raw bits (as 32-bit words, word i
    weighted 2i+1 in the first sum and (2i+1)^2 in the second), and whether all its values
    are finite.

    Any change of one element (one flipped bit or byte) changes the first sum, because the
    element's weight 2i+1 is odd; the second sum makes coincidental multi-element collisions
    about 2^-64 likely. Computed on device in one pass over the state: one reduction per array
    gives both sums and the count of values that are not finite.
    """
    leaves, treedef = jax.tree.flatten(tree)
    pairs, finite = zip(*map(_sums_and_finite, leaves)) if leaves else ((), ())
    return treedef.unflatten(pairs), treedef.unflatten(finite)


def _sums_and_finite(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`x`'s two checksum sums and whether all its values are finite, in one reduction."""
    bits = _as_uint32(x).reshape(-1)
    weight = jnp.arange(bits.size, dtype=jnp.uint32) * 2 + 1
    words_are_values = x.dtype.itemsize < 8  # 8-byte values are two words each.
    checks_finite = jnp.issubdtype(x.dtype, jnp.inexact)
    if checks_finite and words_are_values:
        not_finite = (~jnp.isfinite(x)).reshape(-1).astype(jnp.uint32)
    else:
        not_finite = jnp.zeros_like(bits)
    first, second, bad = jax.lax.reduce(
        (bits * weight, bits * weight * weight, not_finite), (jnp.uint32(0),) * 3, _add3, (0,)
    )
    if checks_finite and not words_are_values:
        bad = jnp.sum(~jnp.isfinite(x))
    return jnp.stack([first, second]), bad == 0


def _add3(a: tuple, b: tuple) -> tuple:
    return a[0] + b[0], a[1] + b[1], a[2] + b[2]


def _as_uint32(x: jax.Array) -> jax.Array:
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = x.dtype.itemsize
    if width == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)  # A trailing axis of 2 words.
    unsigned = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}[width]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _checksums_and_nonfinite(state: Any) -> tuple[dict[str, str], list[str]]:
    """({array path: hex checksum}, [paths of arrays holding inf or NaN]) of a (possibly
    sharded, multi-host) state pytree."""
    sums, finite = jax.device_get(_array_checksums(state))
    checksums = {
        jax.tree_util.keystr(path): f"{int(s[0]):08x}{int(s[1]):08x}"
        for path, s in jax.tree_util.tree_flatten_with_path(sums)[0]
    }
    flags = jax.tree_util.tree_flatten_with_path(finite)[0]
    return checksums, [jax.tree_util.keystr(path) for path, ok in flags if not ok]


def _check_array_index(state_dir: epath.Path) -> None:
    """Reads the index of a saved state's array store (TensorStore's OCDBT manifest and
    B-tree, each with its own checksum) and raises when it is damaged or empty. Cheap, and
    done before Orbax's restore: a damaged index found inside it fails one of many concurrent
    reads, whose siblings then report into a closed event loop (dozens of tracebacks)."""
    import tensorstore as ts

    if not (state_dir / "manifest.ocdbt").exists():  # Not an OCDBT store: Orbax reads it.
        return
    location = str(state_dir) if "://" in str(state_dir) else f"file://{state_dir}"
    store = ts.KvStore.open({"driver": "ocdbt", "base": location.rstrip("/") + "/"}).result()
    if not store.list().result():
        raise ValueError(f"no arrays indexed in {state_dir}")


def _progress_digest(progress: dict) -> str:
    """SHA-256 of the progress record as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(progress, sort_keys=True).encode()).hexdigest()


def state_checksums(state: Any) -> dict[str, str]:
    """{array path: hex checksum} of a (possibly sharded, multi-host) state pytree."""
    return _checksums_and_nonfinite(state)[0]


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
        path = self.workdir / name
        return path if "://" in str(path) else path.resolve()  # Orbax wants absolute paths.

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
        checksums, nonfinite = _checksums_and_nonfinite(state)
        if nonfinite:
            raise NonFiniteStateError(
                f"Refused to checkpoint step {step}: the train state holds inf or NaN in "
                f"{', '.join(nonfinite[:5])}{' ...' if len(nonfinite) > 5 else ''}. The last "
                f"good checkpoint stays in {self.directory}."
            )
        integrity = {"algorithm": CHECKSUM_ALGORITHM, "checksums": checksums,
                     "progress_sha256": _progress_digest(progress)}  # fmt: skip
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            progress=ocp.args.JsonSave(progress),
            integrity=ocp.args.JsonSave(integrity),
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
        """(None, (state, progress)) for an intact step, else (what is wrong, None). A step
        saved with older module names (`RENAMED_MODULES`) is read as saved, then renamed."""
        try:
            _check_array_index(self.directory / str(step) / "state")
            integrity = json.loads(
                (self.directory / str(step) / "integrity" / "metadata").read_text()
            )
            saved = integrity["checksums"]
            args = ocp.args.Composite(
                state=ocp.args.StandardRestore(rename_modules(abstract_state, _as_saved(saved))),
                progress=ocp.args.JsonRestore(),
            )
            restored = self.manager.restore(step, args=args)
            progress = dict(restored["progress"])
        # Orbax and TensorStore report damaged files, metadata included, in many types (e.g.
        # KeyError for a field missing from an edited _METADATA); any of them makes the step
        # unusable, and the caller falls back to an older one.
        except Exception as e:
            return f"{type(e).__name__}: {e}", None
        actual, nonfinite = _checksums_and_nonfinite(restored["state"])
        damaged = [path for path, value in actual.items() if saved.get(path) != value]
        if damaged or saved.keys() != actual.keys():
            return f"content checksum mismatch in {', '.join(damaged) or 'the array list'}", None
        if nonfinite:
            return f"inf or NaN in {', '.join(nonfinite)}", None
        digest = integrity.get("progress_sha256")  # Older checkpoints have none.
        if digest is not None and digest != _progress_digest(progress):
            return "content checksum mismatch in the progress record", None
        return None, (rename_modules(restored["state"], RENAMED_MODULES), progress)

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
                saved = json.loads(
                    (self.directory / str(step) / "integrity" / "metadata").read_text()
                )["checksums"]
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


def saved_steps(workdir: str) -> list[int]:
    """The complete steps under `workdir/checkpoints`, oldest first (none while unwritten)."""
    directory = epath.Path(workdir) / CHECKPOINT_DIR
    if not directory.exists():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())


def read_progress(workdir: str, step: int) -> dict:
    """The `progress` dict (best step and metric, ...) saved with `step`, checked against its
    checksum; raises CheckpointRestoreError when it is damaged or unreadable."""
    step_dir = epath.Path(workdir) / CHECKPOINT_DIR / str(step)
    try:
        progress = json.loads((step_dir / "progress" / "metadata").read_text())
        digest = json.loads((step_dir / "integrity" / "metadata").read_text()).get(
            "progress_sha256"
        )
    except (OSError, ValueError) as e:
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: unreadable progress "
                                     f"record ({type(e).__name__}: {e})") from e  # fmt: skip
    if digest is not None and digest != _progress_digest(progress):
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: content checksum "
                                     "mismatch in the progress record")  # fmt: skip
    return progress


def restore_variables(workdir: str, step: int, abstract_variables: dict) -> dict:
    """Only the fields of the saved state that `abstract_variables` names (e.g. `params` and
    `batch_stats`, no optimizer state), on its shardings, verified against the step's
    checksums; raises CheckpointRestoreError when they are missing, damaged or not finite."""
    step_dir = epath.Path(workdir) / CHECKPOINT_DIR / str(step)
    try:
        saved = json.loads((step_dir / "integrity" / "metadata").read_text())["checksums"]
        abstract_variables = rename_modules(abstract_variables, _as_saved(saved))
        restored = ocp.PyTreeCheckpointer().restore(
            (step_dir / "state").resolve(),
            args=ocp.args.PyTreeRestore(
                item=abstract_variables,
                restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_variables),
                partial_restore=True,
            ),
        )
    except Exception as e:  # Damaged or missing files surface in many types (see restore).
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent}: "
                                     f"{type(e).__name__}: {e}") from e  # fmt: skip
    checksums, nonfinite = _checksums_and_nonfinite(restored)
    # Saved from the train state's attributes (".params[...]"), restored as a dict ("['params']").
    damaged = [path for path, value in checksums.items()
               if saved.get("." + path[2:].replace("']", "", 1)) != value]  # fmt: skip
    if damaged or nonfinite:
        raise CheckpointRestoreError(f"step {step} in {step_dir.parent} is damaged or not "
                                     f"finite in {', '.join(damaged + nonfinite)}")  # fmt: skip
    return rename_modules(restored, RENAMED_MODULES)
