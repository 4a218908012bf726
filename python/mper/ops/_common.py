"""What every op shares: the compiled core, argument checks and kernel dispatch.

The compiled module takes raw addresses, sizes and the CUDA stream; this module turns
tensors into those and picks the CPU or CUDA kernel by the tensors' device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch

try:
    from mper import _C as _C  # re-exported: every op module reaches the core through here
except ImportError as error:  # pragma: no cover - depends on the installation
    raise ImportError(
        "mper's compiled core (mper._C) is missing or failed to load. Install the package "
        "with `pip install .` from the repository root (an editable install needs "
        "`pip install --no-build-isolation -e .`)."
    ) from error

DTYPE_CODES = {
    torch.float32: _C.DType.float32,
    torch.float16: _C.DType.float16,
    torch.bfloat16: _C.DType.bfloat16,
    torch.float64: _C.DType.float64,
}


def cuda_available() -> bool:
    """Whether this build of mper has CUDA kernels."""
    return bool(_C.with_cuda)


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 for float64 data, float32 for float32/float16/bfloat16."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def kernel(name: str, device: torch.device) -> Callable[[Any], None]:
    """The compiled entry point `name` for tensors on `device`."""
    if device.type == "cpu":
        suffix = ""
    elif device.type == "cuda":
        if not _C.with_cuda:
            raise RuntimeError(
                "mper was built without CUDA kernels, so it cannot run on CUDA tensors. "
                "Reinstall it on a machine with the CUDA toolkit (nvcc) on PATH: "
                "`pip install --no-build-isolation .` (or move the tensors to the CPU)."
            )
        suffix = "_cuda"
    else:
        raise RuntimeError(f"mper ops run on CPU or CUDA tensors, not on {device.type!r}")
    entry: Callable[[Any], None] = getattr(_C, name + suffix)
    return entry


@contextlib.contextmanager
def on_device(device: torch.device) -> Iterator[int]:
    """Makes `device` current and yields the stream address to launch on (0 on the CPU)."""
    if device.type != "cuda":
        yield 0
        return
    if device.index == torch.cuda.current_device():
        yield torch.cuda.current_stream(device).cuda_stream
        return
    with torch.cuda.device(device):
        yield torch.cuda.current_stream(device).cuda_stream


def spatially_dense(x: torch.Tensor) -> bool:
    """True when the spatial dims of (B, D, *S) form one contiguous run per (b, d)."""
    expected = 1
    for size, stride in zip(reversed(x.shape[2:]), reversed(x.stride()[2:])):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def with_dense_spatial(x: torch.Tensor) -> torch.Tensor:
    """`x` itself when the kernels can read it in place, else a contiguous copy."""
    return x if spatially_dense(x) else x.contiguous()


def feature_view(x: torch.Tensor) -> _C.FeatureView:
    view = _C.FeatureView()
    view.data = x.data_ptr()
    view.batch, view.depth = x.shape[0], x.shape[1]
    view.voxels = math.prod(x.shape[2:])
    view.batch_stride, view.channel_stride = x.stride(0), x.stride(1)
    return view


def address(x: torch.Tensor | None) -> int:
    return 0 if x is None else x.data_ptr()


# ---------------------------------------------------------------- argument checks
#
# Two levels, written once: the public functions (mper.ops.*) check what a user passes
# and convert it to what the kernels read; the registered ops (torch.ops.mper.*, which
# torch.compile, opcheck and anyone may call directly) run the same checks and then
# refuse anything the kernels would misread (a dtype, a layout), in the op body and in
# the fake kernel alike, so that compiled graphs check too.


def require(ok: bool | torch.SymBool, error: type[Exception], message: Callable[[], str]) -> None:
    """Raises ``error(message())`` unless `ok`; under torch.compile a symbolic `ok`
    becomes a check of the graph (``torch._check_with``) instead of a guard."""
    if ok is True:
        return
    if ok is False:
        raise error(message())
    torch._check_with(error, ok, message)


def check_tensor(name: str, x: object) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    return x


def check_features(name: str, x: object) -> torch.Tensor:
    """Features (B, D, H, W) or (B, D, D', H, W), floating point."""
    x = check_tensor(name, x)
    if x.dim() not in (4, 5):
        raise ValueError(f"{name} must be channels-first (B, D, H, W) or (B, D, D', H, W); got shape {tuple(x.shape)}")
    if x.dtype not in DTYPE_CODES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64; got {x.dtype}")
    if x.dtype == torch.float64 and x.device.type == "cuda":
        raise TypeError(f"{name}: float64 is supported on the CPU only; use float32 on CUDA")
    return x


def check_bank(x: object, depth: int | torch.SymInt) -> torch.Tensor:
    """The prototype bank (C*K, D), floating point, D matching the features."""
    x = check_tensor("prototypes", x)
    require(
        x.dim() == 2 and x.shape[1] == depth,
        ValueError,
        lambda: (
            f"prototypes must be (C*K, D) with D = {depth} (the features' channel count); got shape {tuple(x.shape)}"
        ),
    )
    if not x.is_floating_point():
        raise TypeError(f"prototypes must be floating point; got {x.dtype}")
    require(x.shape[0] > 0, ValueError, lambda: "prototypes must hold at least one row")
    return x


def check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int; got {value!r}")
    return value


def check_temperature(name: str, value: object, dtype: torch.dtype) -> float:
    """A temperature > 0 whose reciprocal is finite in the kernels' arithmetic for `dtype`."""
    if not isinstance(value, (int, float)) or not value > 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a positive finite number; got {value!r}")
    compute = accumulation_dtype(dtype)
    largest = torch.finfo(compute).max
    if 1.0 / value > largest:
        raise ValueError(
            f"{name} = {value!r} is too small: 1/{name} overflows {compute} (the ops divide by "
            f"it); use a {name} of at least {1.0 / largest:.3g}"
        )
    return float(value)


def check_rows(prototypes: torch.Tensor, num_classes: int) -> None:
    """Checks the bank has C*K rows: K prototypes per class."""
    rows = prototypes.shape[0]
    require(
        rows % num_classes == 0,
        ValueError,
        lambda: (
            f"prototypes has {rows} rows, not a multiple of num_classes = {num_classes}: "
            "the bank must hold K prototypes per class (C*K rows, row c*K + k)"
        ),
    )


def check_same_device(**tensors: torch.Tensor | None) -> None:
    present = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in present.values()}
    if len(devices) > 1:
        listing = ", ".join(f"{name} on {t.device}" for name, t in present.items())
        raise ValueError(f"all tensors must be on one device; got {listing}")


def _all(conditions: Iterable[bool | torch.SymBool]) -> bool | torch.SymBool:
    """`all`, but joining symbolic conditions instead of guarding on each."""
    joined: torch.SymBool | None = None
    for condition in conditions:
        if condition is False:
            return False
        if isinstance(condition, torch.SymBool):
            joined = condition if joined is None else joined & condition
    return True if joined is None else joined


def check_shape(name: str, x: torch.Tensor, shape: tuple[int | torch.SymInt, ...], meaning: str = "") -> None:
    """`x` has exactly `shape`; `meaning` names the dims in the message, e.g. "(B, *spatial)"."""
    require(
        x.dim() == len(shape) and _all(a == b for a, b in zip(x.shape, shape)),
        ValueError,
        lambda: f"{name} must have shape {tuple(shape)}{' ' + meaning if meaning else ''}; got {tuple(x.shape)}",
    )


# What the registered ops' kernels read, beyond the public checks above: a direct call of
# torch.ops.mper.* that breaks one of these would make a kernel misread memory.

_CONVERTED_BY = "(the public functions in mper.ops convert their arguments to it)"


def check_kernel_dtype(name: str, x: torch.Tensor, dtype: torch.dtype, why: str = "") -> None:
    if x.dtype != dtype:
        raise TypeError(
            f"{name} must be {dtype}{' ' + why if why else ''} for the kernel; got {x.dtype} " + _CONVERTED_BY
        )


def check_contiguous(name: str, x: torch.Tensor) -> None:
    require(
        x.is_contiguous(),
        ValueError,
        lambda: (
            f"{name} must be contiguous for the kernel; got strides {x.stride()} for shape "
            f"{tuple(x.shape)} " + _CONVERTED_BY
        ),
    )


def check_spatially_dense(name: str, x: torch.Tensor) -> None:
    require(
        spatially_dense(x),
        ValueError,
        lambda: (
            f"{name} must have dense spatial dims (one contiguous run per image and channel) for "
            f"the kernel; got strides {x.stride()} for shape {tuple(x.shape)} " + _CONVERTED_BY
        ),
    )


def check_kernel_bank(prototypes: torch.Tensor, features: torch.Tensor) -> None:
    """The bank as :func:`bank_for` makes it: contiguous, in the features' accumulation dtype."""
    check_kernel_dtype(
        "prototypes", prototypes, accumulation_dtype(features.dtype), f"(the accumulation dtype of {features.dtype})"
    )
    check_contiguous("prototypes", prototypes)


def bank_for(prototypes: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """The bank as the kernels read it: contiguous, in the features' accumulation dtype."""
    dtype = accumulation_dtype(features.dtype)
    return prototypes.detach().to(dtype=dtype, memory_format=torch.contiguous_format)
