"""Kernel backends: how a model's convolutions and batch norms compute.

`backend(name, devices, dtype)` is the one place that chooses, once the run's devices are
known; models take the result as their `kernels` field. "xla" is XLA's own kernels
everywhere; "onednn" swaps in native CPU kernels that XLA:CPU lacks at speed (each with a
plain-JAX twin it must match, in onednn.py); "auto" takes oneDNN's where they apply.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from imgcls_jax import registry


@dataclasses.dataclass(frozen=True)
class Kernels:
    """A replacement for `lax.conv_general_dilated` and a training-mode batch norm kernel
    `(x, scale, bias, epsilon, relu) -> (y, mean, biased var)`; None: XLA's own."""

    name: str
    conv_general_dilated: Callable | None = None
    batch_norm_train: Callable | None = None


XLA = Kernels("xla")


@registry.register("kernels", "xla")
def xla(devices: Sequence[jax.Device], dtype: str) -> Kernels:
    del devices, dtype  # XLA's kernels run everywhere, in every dtype.
    return XLA


@registry.register("kernels", "onednn")
def onednn_kernels(devices: Sequence[jax.Device], dtype: str) -> Kernels:
    """oneDNN's convolution and batch norm. They run on the CPU and XLA's partitioner cannot
    split them (with several devices each would get the whole batch), so they need exactly
    one CPU device; raises saying what to use or install otherwise."""
    from imgcls_jax.kernels import onednn

    if not (len(devices) == 1 and devices[0].platform == "cpu"):
        raise ValueError(
            f"config.model.kernels='onednn' needs a run on one CPU device; this one has "
            f"{len(devices)} {devices[0].platform} devices. Use 'auto' or 'xla'."
        )
    onednn.load()  # Raises OnednnUnavailable, saying what to install.
    supported = [jnp.dtype(d).name for d in onednn.kernel_dtypes()]
    if jnp.dtype(dtype).name not in supported:
        raise ValueError(
            f"oneDNN's kernels take {' or '.join(supported)} on this CPU, not "
            f"config.model.dtype={dtype!r} (bfloat16 needs AVX-512). Use model.kernels='auto' "
            "or 'xla'."
        )
    return Kernels("onednn", onednn.conv_general_dilated, onednn.batch_norm_train)


def backend(name: str, devices: Sequence[jax.Device], dtype: str) -> Kernels:
    """The kernels of a run on `devices` computing in `dtype`: `name` ("xla", "onednn") or, for
    "auto", oneDNN's on one CPU device where they build and take `dtype`, else XLA's."""
    if name != "auto":
        return registry.build("kernels", name, devices, dtype, key="model.kernels")
    if not (len(devices) == 1 and devices[0].platform == "cpu"):
        return XLA
    try:
        chosen = onednn_kernels(devices, dtype)
    except (ValueError, RuntimeError) as error:  # RuntimeError: onednn.OnednnUnavailable.
        logging.warning("Using XLA's kernels: %s", error)
        return XLA
    logging.info("Convolutions and batch norm run on oneDNN's kernels (model.kernels=auto).")
    return chosen


def check_name(name: str) -> None:
    """Raises naming the closest backend when `name` is neither one nor "auto"."""
    registry.check_choice("model.kernels", name, ("auto", *registry.names("kernels")))
