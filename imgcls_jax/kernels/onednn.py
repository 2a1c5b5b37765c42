"""oneDNN convolutions and batch normalisation on CPU, called through XLA's FFI.

XLA:CPU computes convolution weight gradients at a quarter of its forward speed; oneDNN, the
library PyTorch uses on CPU, does not. On a ResNet-20 step its convolutions double our img/s
and its batch norm adds about 5%; in bfloat16, on CPUs with AMX, oneDNN runs the
convolutions on the tile units (experiments/results/benchmarks/cpu_perf_notes.md); wide float32 3x3
layers run as its Winograd convolution (docs/performance.md). The C++ source
beside this file is compiled on first use with the system compiler against the system oneDNN
(Debian/Ubuntu: `apt-get install g++ libdnnl-dev`) and cached under ~/.cache/imgcls_jax.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import hashlib
import os
import pathlib
import platform
import subprocess
import tempfile
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

SOURCE = pathlib.Path(__file__).with_name("onednn_kernels.cc")
_TARGETS = {  # FFI target name -> C++ handler symbol.
    "imgcls_onednn_conv_forward": "OnednnConvForward",
    "imgcls_onednn_conv_input_grad": "OnednnConvInputGrad",
    "imgcls_onednn_conv_kernel_grad": "OnednnConvKernelGrad",
    "imgcls_onednn_norm_forward": "OnednnNormForward",
    "imgcls_onednn_norm_backward": "OnednnNormBackward",
}
KERNEL_DTYPES = (jnp.float32, jnp.bfloat16)  # Activation dtypes the kernels take.
# oneDNN 2.x builds bf16 primitives on x86 only from AVX-512 (`dnnl_cpu_isa_avx512_core`) up.
_AVX512_CORE = 0x27
_NHWC = lax.ConvDimensionNumbers(
    lhs_spec=(0, 3, 1, 2), rhs_spec=(3, 2, 0, 1), out_spec=(0, 3, 1, 2)
)


class OnednnUnavailable(RuntimeError):
    """The oneDNN kernels could not be built or loaded on this machine."""


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(root) / "imgcls_jax"


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p)]  # fmt: skip


def onednn_version() -> str:
    """The system oneDNN's version and commit (its `dnnl_version()`); "" where none is found."""
    name = ctypes.util.find_library("dnnl")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        library = None
    if library is None:
        return ""
    library.dnnl_version.restype = ctypes.POINTER(_Version)
    version = library.dnnl_version().contents
    return f"{version.major}.{version.minor}.{version.patch}+{(version.hash or b'').decode()}"


def library_path() -> pathlib.Path:
    """Where the kernels built from this source, for this JAX and this oneDNN, are cached."""
    key = SOURCE.read_bytes() + jax.__version__.encode() + onednn_version().encode()
    return _cache_dir() / f"onednn_kernels_{hashlib.sha256(key).hexdigest()[:16]}.so"


def _build() -> pathlib.Path:
    """Compiles the kernels once per `library_path()`; returns the shared library."""
    library = library_path()
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as tmp:
        partial = pathlib.Path(tmp) / library.name
        command = [os.environ.get("CXX", "g++"), "-O2", "-std=c++17", "-shared", "-fPIC", "-w", "-fopenmp",
                   f"-I{jax.ffi.include_dir()}", str(SOURCE), "-ldnnl", "-o", str(partial)]  # fmt: skip
        try:
            subprocess.run(command, check=True, capture_output=True, text=True)
        except FileNotFoundError as error:
            raise OnednnUnavailable(f"No C++ compiler ({command[0]}): install g++.") from error
        except subprocess.CalledProcessError as error:
            raise OnednnUnavailable(
                f"Building {SOURCE.name} failed; install g++ and oneDNN "
                f"(`apt-get install g++ libdnnl-dev`).\n{error.stderr[-2000:]}"
            ) from error
        os.replace(partial, library)  # Atomic: concurrent builders never see half a file.
    return library


@functools.cache
def load_error() -> str:
    """Builds (if needed) and registers the FFI targets, once; returns why that failed, or ""."""
    try:
        library = ctypes.cdll.LoadLibrary(str(_build()))
    except (OnednnUnavailable, OSError) as error:
        return str(error)
    for target, symbol in _TARGETS.items():
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)), "cpu")
    return ""


def load() -> None:
    """Makes the kernels callable; raises OnednnUnavailable, saying what to install, if not."""
    if error := load_error():
        raise OnednnUnavailable(error)


def available() -> bool:
    """Whether the oneDNN kernels build and load here."""
    return not load_error()


@functools.cache
def _library() -> ctypes.CDLL:
    """The loaded kernels, for their plain C functions."""
    load()
    return ctypes.CDLL(str(_build()))


@functools.cache
def _cpu_isa() -> int:
    """oneDNN's `dnnl_get_effective_cpu_isa()`: the instruction set it dispatches to here."""
    return _library().dnnl_get_effective_cpu_isa()


def avx512() -> bool:
    """Whether oneDNN dispatches to AVX-512 here (x86; ONEDNN_MAX_CPU_ISA may cap it): its
    bfloat16 and Winograd kernels need it."""
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    return x86 and _cpu_isa() & _AVX512_CORE == _AVX512_CORE


def kernel_dtypes() -> tuple:
    """The activation dtypes the kernels take on this CPU: float32, and bfloat16 where oneDNN
    has bf16 primitives (x86 with AVX-512); raises OnednnUnavailable if they do not load."""
    if avx512():
        return KERNEL_DTYPES
    load()
    return (jnp.float32,)


# How a convolution pass is computed: by the rules in onednn_kernels.cc (keyed by the CPU's
# kind and the layer's shape), or one way forced, as the benchmarks and tests do. "matmul"
# (im2col + one matmul) is a kernel-gradient path only; "winograd" is float32 3x3/1 only.
PATHS = {"rule": 0, "direct": 1, "matmul": 2, "winograd": 3}


def _call(name: str, out_shape: Sequence[int], a: jax.Array, b: jax.Array, geometry: tuple,
          path: str = "rule"):  # fmt: skip
    paths = [p for p in PATHS if p != "matmul" or name == "kernel_grad"]
    if path not in paths:
        raise ValueError(f"No {path!r} path for a convolution's {name}: use one of {paths}.")
    (stride_h, stride_w), ((top, bottom), (left, right)) = geometry
    out = jax.ShapeDtypeStruct(tuple(out_shape), a.dtype)
    return jax.ffi.ffi_call(f"imgcls_onednn_conv_{name}", out)(
        a, b, stride_h=stride_h, stride_w=stride_w, pad_top=top, pad_bottom=bottom,
        pad_left=left, pad_right=right, path=np.int64(PATHS[path]),
    )  # fmt: skip


def input_grad(grad: jax.Array, kernel: jax.Array, input_shape: Sequence[int], geometry: tuple,
               path: str = "rule") -> jax.Array:  # fmt: skip
    """The gradient of `conv2d` with respect to its NHWC input: oneDNN's direct or Winograd
    convolution (`path`)."""
    return _call("input_grad", input_shape, grad, kernel, geometry, path)


def kernel_grad(x: jax.Array, grad: jax.Array, kernel_shape: Sequence[int], geometry: tuple,
                path: str = "rule") -> jax.Array:  # fmt: skip
    """The gradient of `conv2d` with respect to its HWIO kernel: oneDNN's direct or Winograd
    convolution, or an im2col copy and one matmul (`path`)."""
    return _call("kernel_grad", kernel_shape, x, grad, geometry, path)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, geometry: tuple, path: str = "rule") -> jax.Array:
    """NHWC x HWIO -> NHWC convolution, float32 or bfloat16 (both operands alike); `geometry`
    is ((sh, sw), ((top, bottom), (left, right))); `path` ("rule", "direct" or "winograd")
    for all three passes."""
    (sh, sw), ((top, bottom), (left, right)) = geometry
    n, h, w, _ = x.shape
    kh, kw, _, out = kernel.shape
    out_shape = (n, (h + top + bottom - kh) // sh + 1, (w + left + right - kw) // sw + 1, out)
    return _call("forward", out_shape, x, kernel, geometry, path)


def _forward(x, kernel, geometry, path):
    return conv2d(x, kernel, geometry, path), (x, kernel)


def _backward(geometry, path, residuals, grad):
    x, kernel = residuals
    return (
        input_grad(grad, kernel, x.shape, geometry, path),
        kernel_grad(x, grad, kernel.shape, geometry, path),
    )


conv2d.defvjp(_forward, _backward)


def conv_general_dilated(
    lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
    dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
    preferred_element_type=None,
):  # fmt: skip
    """`lax.conv_general_dilated` that runs on oneDNN where it can: 2D, NHWC/HWIO, undilated,
    ungrouped, float32 (or bfloat16 where this CPU has oneDNN's bf16 kernels); anything else
    goes to XLA unchanged."""
    plain = functools.partial(
        lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation,
        rhs_dilation, dimension_numbers, feature_group_count, batch_group_count, precision,
        preferred_element_type,
    )  # fmt: skip
    if isinstance(padding, str) and lhs.ndim == 4:
        padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
    if (
        lhs.ndim != 4
        or isinstance(padding, str)
        or min(p for pair in padding for p in pair) < 0  # XLA crops there; oneDNN cannot.
        or lhs.dtype not in kernel_dtypes()
        or rhs.dtype != lhs.dtype
        or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) != _NHWC
        or any(d != 1 for d in (*(lhs_dilation or (1, 1)), *(rhs_dilation or (1, 1))))
        or feature_group_count != 1
        or batch_group_count != 1
        or preferred_element_type not in (None, lhs.dtype)
    ):
        return plain()
    geometry = (tuple(int(s) for s in window_strides), tuple(tuple(map(int, p)) for p in padding))
    load()
    return conv2d(lhs, rhs, geometry)


def _workspace_bytes(x: jax.Array, epsilon: float) -> int:
    """Bytes of oneDNN's workspace for a fused batch norm + ReLU of `x`'s shape and dtype."""
    function = _library().OnednnNormWorkspaceBytes
    function.restype = ctypes.c_int64
    size = function(
        ctypes.c_int(x.dtype == jnp.bfloat16), *map(ctypes.c_int64, x.shape), ctypes.c_float(epsilon)
    )  # fmt: skip
    if size < 0:
        raise RuntimeError(f"oneDNN has no fused batch norm + ReLU for {x.dtype} {x.shape}.")
    return size


def _norm_forward_call(x, scale, shift, epsilon, relu):
    channels = x.shape[-1:]
    workspace = _workspace_bytes(x, epsilon) if relu else 0
    out = (jax.ShapeDtypeStruct(x.shape, x.dtype),
           *[jax.ShapeDtypeStruct(channels, jnp.float32)] * 2,
           jax.ShapeDtypeStruct((workspace,), jnp.uint8))  # fmt: skip
    return jax.ffi.ffi_call("imgcls_onednn_norm_forward", out)(
        x, scale, shift, epsilon=np.float32(epsilon), relu=relu
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def batch_norm_train(x: jax.Array, scale: jax.Array, shift: jax.Array, epsilon: float,
                     relu: bool = False):  # fmt: skip
    """Training-mode batch norm of NHWC `x` (float32 or bfloat16) over N, H, W, computed in
    float32 with float32 `scale` and `shift`, then a ReLU if `relu` (fused into the kernel):
    returns (y like x, batch mean, biased batch variance). The statistics carry no gradient
    (they feed running averages)."""
    return _norm_forward_call(x, scale, shift, epsilon, relu)[:3]


def _norm_forward(x, scale, shift, epsilon, relu):
    y, mean, variance, workspace = _norm_forward_call(x, scale, shift, epsilon, relu)
    return (y, mean, variance), (x, mean, variance, scale, shift, workspace)


def _norm_backward(epsilon, relu, residuals, grads):
    x, mean, variance, scale, shift, workspace = residuals
    grad_y = grads[0]  # Gradients reaching the statistics are dropped (see docstring).
    out = (jax.ShapeDtypeStruct(x.shape, x.dtype),
           *[jax.ShapeDtypeStruct(scale.shape, jnp.float32)] * 2)  # fmt: skip
    return jax.ffi.ffi_call("imgcls_onednn_norm_backward", out)(
        x, grad_y, mean, variance, scale, shift, workspace, epsilon=np.float32(epsilon),
        relu=relu,
    )  # fmt: skip


batch_norm_train.defvjp(_norm_forward, _norm_backward)
