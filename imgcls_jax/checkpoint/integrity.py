"""What makes a saved step trustworthy: per-array content checksums computed on device, a
finiteness check, a digest of the progress record, and a look at the array store's index;
`verify` holds a restored tree against what was saved with it."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import jax
import jax.numpy as jnp
from etils import epath

ALGORITHM = "uint32 sums of bits x (2i+1) and bits x (2i+1)^2, per array"


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


def _path_names(path: tuple) -> tuple:
    """A key path's names (attribute names, dict keys, indices), whether the tree is the
    train state (attributes) or a dict of its fields."""
    return tuple(getattr(k, "name", getattr(k, "key", getattr(k, "idx", k))) for k in path)


_SAVED_KEY = re.compile(r"\.(\w+)|\['([^']*)'\]|\[(\d+)\]")


def _saved_names(keystr: str) -> tuple:
    """The names of a saved checksum's key (`jax.tree_util.keystr`, e.g. ".params['head']")."""
    return tuple(a or b or int(c) for a, b, c in _SAVED_KEY.findall(keystr))


def _hex_checksums(tree: Any) -> tuple[list[tuple[tuple, str]], list[tuple]]:
    """([(key path, hex checksum)] of every array, [key paths of arrays holding inf or NaN])
    of a (possibly sharded, multi-host) pytree, computed on device in one program."""
    sums, finite = jax.device_get(_array_checksums(tree))
    checksums = [(path, f"{int(s[0]):08x}{int(s[1]):08x}")
                 for path, s in jax.tree_util.tree_flatten_with_path(sums)[0]]  # fmt: skip
    return checksums, [path for path, ok in jax.tree_util.tree_flatten_with_path(finite)[0]
                       if not ok]  # fmt: skip


def checksums_and_nonfinite(tree: Any) -> tuple[dict[str, str], list[str]]:
    """({array path: hex checksum}, [paths of arrays holding inf or NaN]) of a (possibly
    sharded, multi-host) pytree; paths as `jax.tree_util.keystr` writes them (as saved)."""
    checksums, nonfinite = _hex_checksums(tree)
    keystr = jax.tree_util.keystr
    return {keystr(p): value for p, value in checksums}, [keystr(p) for p in nonfinite]


def state_checksums(state: Any) -> dict[str, str]:
    """{array path: hex checksum} of a (possibly sharded, multi-host) state pytree."""
    return checksums_and_nonfinite(state)[0]


def progress_digest(progress: dict) -> str:
    """SHA-256 of the progress record as canonical JSON (sorted keys)."""
    return hashlib.sha256(json.dumps(progress, sort_keys=True).encode()).hexdigest()


def read(step_dir: epath.Path) -> dict[str, Any]:
    """The integrity record saved in `step_dir`."""
    return json.loads((step_dir / "integrity" / "metadata").read_text())


def check_array_index(state_dir: epath.Path) -> None:
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


def verify(saved: dict[str, Any], tree: Any, progress: dict | None = None) -> str | None:
    """What is wrong with a restored `tree` (the whole state, or some of its fields as a
    dict) and `progress` against the integrity record `saved`, or None when they match:
    an array whose checksum differs or is missing, a non-finite array, a changed progress
    record. With the whole state, the array list must match too."""
    expected = {_saved_names(k): v for k, v in saved["checksums"].items()}
    checksums, nonfinite = _hex_checksums(tree)
    actual = {_path_names(p): value for p, value in checksums}
    damaged = ["/".join(map(str, p)) for p, v in actual.items() if expected.get(p) != v]
    if damaged:
        return f"content checksum mismatch in {', '.join(damaged)}"
    if progress is not None and expected.keys() != actual.keys():
        return "content checksum mismatch in the array list"
    if nonfinite:
        return f"inf or NaN in {', '.join('/'.join(map(str, _path_names(p))) for p in nonfinite)}"
    digest = saved.get("progress_sha256")  # Older checkpoints have none.
    if progress is not None and digest is not None and digest != progress_digest(progress):
        return "content checksum mismatch in the progress record"
    return None
