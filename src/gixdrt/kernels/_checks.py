"""Input checks shared by the host backends of the kernels."""
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
        raise TypeError(f"out must be a NumPy array for a host backend, got {type(out).__name__}")
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
