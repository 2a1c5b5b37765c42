"""Published per-chip figures of Cloud TPU generations, for fit checks and roofline estimates.

Sources: Google's Cloud TPU system architecture pages (cloud.google.com/tpu/docs/v4, v5e, v5p,
v6e), read 2026-12-06. ICI is the bidirectional inter-chip bandwidth per chip; DCN the
data-centre network bandwidth per chip (a host's NICs shared by its chips), used between slices.
"""

from __future__ import annotations

import dataclasses

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU chip's memory and peak rates."""

    name: str
    hbm_bytes: int
    peak_bf16_flops: float  # Per second.
    hbm_bytes_per_s: float
    ici_bytes_per_s: float  # Bidirectional, per chip.
    dcn_bytes_per_s: float | None  # Per chip; None where the page gives no figure.
    source: str


CHIPS = {
    "TPU v4": Chip("v4", 32 * GIB, 275e12, 1200e9, 300e9, None, "cloud.google.com/tpu/docs/v4"),
    "TPU v5 lite": Chip(
        "v5e", 16 * GIB, 197e12, 819e9, 400e9, 3.125e9, "cloud.google.com/tpu/docs/v5e"
    ),  # fmt: skip
    "TPU v5": Chip(
        "v5p", 95 * GIB, 459e12, 2765e9, 1200e9, 6.25e9, "cloud.google.com/tpu/docs/v5p"
    ),
    "TPU v6 lite": Chip(
        "v6e", 32 * GIB, 918e12, 1638e9, 800e9, 12.5e9, "cloud.google.com/tpu/docs/v6e"
    ),  # fmt: skip
}


def chip_for(device_kind: str) -> Chip:
    """The chip of a device kind as JAX names it ("TPU v5 lite"); raises for an unknown one."""
    if device_kind not in CHIPS:
        raise ValueError(f"No published figures for device kind {device_kind!r} here; known: "
                         f"{', '.join(CHIPS)} (imgcls_jax/runtime/aot/chips.py).")  # fmt: skip
    return CHIPS[device_kind]
