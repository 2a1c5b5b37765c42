"""One registry for everything a config names: models, optimizers, schedules, data sources,
augmentation ops and kernel backends.

A module registers its constructors with ``@register(kind, name)``; ``build(kind, name,
**kwargs)`` calls one. An unknown name, or a keyword the constructor does not take, raises
a ValueError naming the closest valid one. This module imports nothing from the package, so
any module may use it.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable

_ENTRIES: dict[str, dict[str, Callable]] = {}


# Below this similarity (difflib's ratio) nothing is suggested: "random_crop" still finds
# "center_crop" (0.55), "nope" finds no preset (at most 0.33).
SIMILARITY_CUTOFF = 0.5


def closest(name: str, choices: Iterable[str]) -> str:
    """Formats a 'did you mean' hint naming the closest valid choices (every one equally
    close; none below SIMILARITY_CUTOFF), then all of them."""
    choices = sorted(choices)
    ratios = {c: difflib.SequenceMatcher(None, name, c).ratio() for c in choices}
    best = max(ratios.values(), default=0.0)
    matches = [c for c in choices if ratios[c] == best] if best >= SIMILARITY_CUTOFF else []
    hint = f" Did you mean {' or '.join(map(repr, matches))}?" if matches else ""
    return f"{hint} Valid choices: {', '.join(choices)}."


def check_choice(key: str, value: str, choices: Iterable[str]) -> None:
    """Raises a ValueError naming the closest valid choice when `value` is not one of them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(f"config.{key}={value!r} is not known.{closest(value, choices)}")


def register(kind: str, name: str, fn: Callable | None = None) -> Callable:
    """Registers `fn` as `kind` `name`; without `fn`, a decorator that does."""

    def add(fn: Callable) -> Callable:
        entries = _ENTRIES.setdefault(kind, {})
        if name in entries and entries[name] is not fn:
            raise ValueError(f"{kind} {name!r} is registered twice.")
        entries[name] = fn
        return fn

    return add(fn) if fn is not None else add


def names(kind: str) -> tuple[str, ...]:
    """The registered names of `kind`, sorted."""
    if kind not in _ENTRIES:
        raise KeyError(f"No {kind!r} is registered (is the module that registers them imported?)")
    return tuple(sorted(_ENTRIES[kind]))


def get(kind: str, name: str, key: str | None = None) -> Callable:
    """The constructor registered as `kind` `name`; `key` (e.g. "model.name") names the config
    field in the error."""
    check_choice(key or kind, name, names(kind))
    return _ENTRIES[kind][name]


def parameters(kind: str, name: str) -> tuple[str, ...]:
    """The keyword arguments the registered constructor takes."""
    signature = inspect.signature(get(kind, name))
    return tuple(p.name for p in signature.parameters.values()
                 if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))  # fmt: skip


def build(kind: str, name: str, /, *args, key: str | None = None, **kwargs):
    """Calls the constructor registered as `kind` `name`; an unknown keyword raises naming the
    closest one it takes."""
    fn = get(kind, name, key)
    accepted = parameters(kind, name)
    for keyword in kwargs:
        if keyword not in accepted:
            raise ValueError(
                f"{kind} {name!r} takes no argument {keyword!r}.{closest(keyword, accepted)}"
            )
    return fn(*args, **kwargs)


def build_from(kind: str, name: str, fields, /, *args, key: str | None = None, **kwargs):
    """`build` with the constructor's keyword arguments taken from `fields` (a config
    section or mapping) where it has them; `kwargs` win. Fields the constructor does not take
    are left alone (a config section serves every entry of its kind)."""
    get(kind, name, key)  # An unknown name raises naming the config field.
    accepted = parameters(kind, name)
    taken = {k: fields[k] for k in accepted if k in fields and k not in kwargs}
    return build(kind, name, *args, key=key, **taken, **kwargs)
