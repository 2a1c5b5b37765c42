"""Collectives of a compiled program, read from its optimised HLO text: how many of each kind
and how many bytes each chip sends for them (ring algorithms)."""

from __future__ import annotations

import dataclasses
import math
import re

KINDS = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "collective-permute")
BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
         "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}  # fmt: skip
_OP = re.compile(
    r"=\s*(?P<shape>.*?)\s(?P<kind>" + "|".join(KINDS) + r")(?P<suffix>-start|-done)?\("
)
_ARRAY = re.compile(r"\b(?P<dtype>[a-z]+\d*)\[(?P<dims>[\d,]*)\]")
_IOTA_GROUPS = re.compile(r"replica_groups=\[(?P<groups>\d+),(?P<size>\d+)\]<=")
_LIST_GROUPS = re.compile(r"replica_groups=\{\{(?P<first>[\d,]*)\}")
_MESH_GROUPS = re.compile(r"replica_groups=mesh\[(?P<axes>[^\]]*)\]\s*\{(?P<used>[^}]*)\}")


@dataclasses.dataclass(frozen=True)
class Collective:
    kind: str
    result_bytes: int  # The result's size on one chip.
    group_size: int  # Chips taking part in one group.

    @property
    def sent_bytes(self) -> float:
        """Bytes one chip sends in a ring implementation of this collective."""
        n = self.group_size
        if n <= 1:
            return 0.0
        if self.kind == "all-reduce":
            return 2 * (n - 1) / n * self.result_bytes
        if self.kind == "reduce-scatter":
            return (n - 1) * self.result_bytes
        if self.kind in ("all-gather", "all-to-all"):
            return (n - 1) / n * self.result_bytes
        return float(self.result_bytes)  # collective-permute


def _arrays(shape: str) -> list[int]:
    """The byte size of each array in an HLO shape (one array, or a tuple of them)."""
    return [BYTES[m["dtype"]] * math.prod(int(d) for d in m["dims"].split(",") if d)
            for m in _ARRAY.finditer(shape) if m["dtype"] in BYTES]  # fmt: skip


def _result_bytes(kind: str, start: bool, shape: str) -> int:
    """The collective's output on one chip. An asynchronous "-start" returns a tuple: for
    all-gather, reduce-scatter and all-to-all (inputs..., outputs...), for collective-permute
    (input, output, contexts); an all-reduce's start returns its outputs."""
    sizes = _arrays(shape)
    if not start or kind == "all-reduce" or len(sizes) < 2:
        return sum(sizes)
    if kind == "collective-permute":
        return max(sizes)
    return sum(sizes[len(sizes) // 2 :])


def _group_size(line: str, devices: int) -> int:
    if match := _IOTA_GROUPS.search(line):
        return int(match["size"])
    if match := _LIST_GROUPS.search(line):
        return len([d for d in match["first"].split(",") if d])
    if match := _MESH_GROUPS.search(line):
        sizes = dict(re.findall(r"'([^']+)'=(\d+)", match["axes"]))
        used = re.findall(r"'([^']+)'", match["used"])
        return math.prod(int(sizes[name]) for name in used if name in sizes)
    return devices  # No groups written out: every device.


def collectives(hlo_text: str, devices: int) -> list[Collective]:
    """Every collective of the program (asynchronous pairs counted once, at their "-start")."""
    found = []
    for line in hlo_text.splitlines():
        match = _OP.search(line)
        if match is None or match["suffix"] == "-done":
            continue
        size = _result_bytes(match["kind"], match["suffix"] == "-start", match["shape"])
        found.append(Collective(match["kind"], size, _group_size(line, devices)))
    return found


def summary(found: list[Collective]) -> dict[str, dict[str, float]]:
    """Per kind: count, result bytes and bytes sent per chip."""
    table: dict[str, dict[str, float]] = {}
    for c in found:
        row = table.setdefault(c.kind, {"count": 0, "result_bytes": 0, "sent_bytes": 0.0})
        row["count"] += 1
        row["result_bytes"] += c.result_bytes
        row["sent_bytes"] += c.sent_bytes
    return table
