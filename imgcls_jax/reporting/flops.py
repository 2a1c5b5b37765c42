"""Model FLOPs counted from the program itself: the multiply-adds of every convolution and
matrix product in a function's jaxpr, times 2. Unlike XLA's cost analysis of the compiled
program, this does not depend on the backend: on GPUs cuDNN's convolutions are custom calls
that XLA's count leaves out (0.24 GFLOP per ResNet-50 training image at 224 px instead of the
24.3 counted here)."""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
from jax.extend import core


def _conv_flops(equation) -> float:
    lhs, rhs = (v.aval for v in equation.invars)
    out = equation.outvars[0].aval
    numbers = equation.params["dimension_numbers"]
    # Each output element sums over the kernel's spatial window and its input features. An
    # input dilated by d (the input gradient of a strided convolution) holds 1 - 1/d zeros
    # per axis that no one multiplies, so only 1/d of the window's taps count.
    kernel_spatial = math.prod(rhs.shape[d] for d in numbers.rhs_spec[2:])
    in_features = rhs.shape[numbers.rhs_spec[1]]
    dilation = math.prod(equation.params.get("lhs_dilation") or (1,))
    del lhs
    return 2.0 * math.prod(out.shape) * kernel_spatial * in_features / dilation


def _dot_flops(equation) -> float:
    lhs = equation.invars[0].aval
    out = equation.outvars[0].aval
    (lhs_contract, _), _ = equation.params["dimension_numbers"]
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in lhs_contract)


def _subjaxprs(equation):
    for value in equation.params.values():
        values = value if isinstance(value, (tuple, list)) else (value,)
        for item in values:
            if isinstance(item, core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, core.Jaxpr):
                yield item


def jaxpr_flops(jaxpr) -> float:
    """2 x multiply-adds of the convolutions and dot products in `jaxpr` and its sub-jaxprs
    (a scan's body counts once per iteration; a cond's costliest branch)."""
    total = 0.0
    for equation in jaxpr.eqns:
        name = equation.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(equation)
        elif name == "dot_general":
            total += _dot_flops(equation)
        elif name == "cond":
            total += max(jaxpr_flops(branch.jaxpr) for branch in equation.params["branches"])
        else:
            inner = sum(jaxpr_flops(sub) for sub in _subjaxprs(equation))
            total += inner * (equation.params.get("length", 1) if name == "scan" else 1)
    return total


def flops(fn: Callable, *args, **kwargs) -> float:
    """The convolution and matrix-product FLOPs of one call of `fn` on `args` (abstract
    values are enough)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)
