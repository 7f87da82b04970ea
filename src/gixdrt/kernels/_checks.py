"""Input checks shared by the host implementations of the kernels."""
from __future__ import annotations

import warnings

import numpy as np

from ..errors import DataWarning, FrameError

FRAME_DTYPES = (np.float32, np.float64, np.uint16, np.uint32, np.int32, np.uint8, np.int16)


def as_frame_stack(frames, frame_shape: tuple[int, int]) -> np.ndarray:
    """View ``frames`` ([H, W] or [N, H, W], a supported dtype) as a C-contiguous [N, H, W] array."""
    arr = np.asarray(frames)
    if arr.dtype.type not in FRAME_DTYPES:
        raise FrameError(
            f"unsupported frame dtype {arr.dtype}; expected one of "
            + ", ".join(np.dtype(t).name for t in FRAME_DTYPES)
        )
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or tuple(arr.shape[1:]) != tuple(frame_shape) or arr.shape[0] < 1:
        raise FrameError(
            f"frame shape {np.shape(frames)} does not match the geometry's detector "
            f"{frame_shape[0]}×{frame_shape[1]} (rows × columns)"
        )
    return np.ascontiguousarray(arr)


def check_out(out, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
    """Allocate or validate a host output buffer."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"out must be a NumPy array for a host implementation, got {type(out).__name__}")
    if out.dtype != dtype or out.shape != tuple(shape) or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {np.dtype(dtype).name}{list(shape)} array, got {out.dtype}{list(out.shape)}")
    return out


def warn_nonfinite(count: int, what: str) -> None:
    if count:
        warnings.warn(
            f"{what}: non-finite pixel values (NaN/Inf) were sampled {count} time(s) and counted as 0",
            DataWarning,
            stacklevel=4,
        )


def check_outs(out, specs, fn: str) -> tuple[np.ndarray, ...]:
    """Allocate or validate the host output arrays of a kernel with several outputs.

    specs: ``((name, shape, dtype), ...)`` in the order of the kernel's results. out: None (allocate, contents
    undefined: the kernel writes every element) or a tuple of preallocated NumPy arrays with exactly these
    shapes and dtypes, C-contiguous and writeable. Returns the arrays as a tuple.
    """
    if out is None:
        return tuple(np.empty(shape, dtype) for _, shape, dtype in specs)
    names = ", ".join(name for name, _, _ in specs)
    if not isinstance(out, (tuple, list)):
        raise TypeError(f"{fn}: out must be a tuple ({names}) of NumPy arrays, got {type(out).__name__}")
    if len(out) != len(specs):
        raise ValueError(f"{fn}: out must be a tuple of {len(specs)} arrays ({names}), got {len(out)}")
    for i, ((name, shape, dtype), arr) in enumerate(zip(specs, out)):
        what = f"{fn}: out[{i}] ({name})"
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{what} must be a NumPy array for a host implementation, got {type(arr).__name__}")
        if arr.dtype != np.dtype(dtype):
            raise TypeError(f"{what} must have dtype {np.dtype(dtype).name}, got {arr.dtype}")
        if arr.shape != tuple(shape):
            raise ValueError(f"{what} must have shape {list(shape)}, got {list(arr.shape)}")
        if not arr.flags.c_contiguous:
            raise ValueError(f"{what} must be C-contiguous")
        if not arr.flags.writeable:
            raise ValueError(f"{what} is read-only")
    return tuple(out)


def decode_topk_specs(n: int, n_levels: int, k: int):
    """The outputs of decode_topk: (boxes, scores, levels, valid)."""
    m = n_levels * k
    return (("boxes", (n, m, 4), np.float32), ("scores", (n, m), np.float32), ("levels", (n, m), np.int32),
            ("valid", (n,), np.int32))


def nms_fixed_specs(n: int, max_out: int):
    """The outputs of nms_fixed: (keep_idx, count)."""
    return (("keep_idx", (n, max_out), np.int32), ("count", (n,), np.int32))


def decode_final_specs(n: int, r: int):
    """The outputs of decode_final: (boxes, scores, count)."""
    return (("boxes", (n, r, 4), np.float32), ("scores", (n, r), np.float32), ("count", (n,), np.int32))
