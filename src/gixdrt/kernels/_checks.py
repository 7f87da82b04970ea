"""Input checks shared by the host implementations of the kernels."""
from __future__ import annotations

import math
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


def check_out(out, shape: tuple[int, ...], dtype=np.float32, name: str = "out") -> np.ndarray:
    """Allocate or validate a host output buffer (``name``: how errors call it)."""
    if out is None:
        return np.empty(shape, dtype)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array for a host implementation, got {type(out).__name__}")
    if out.dtype != dtype or out.shape != tuple(shape) or not out.flags.c_contiguous:
        raise ValueError(
            f"{name} must be a C-contiguous {np.dtype(dtype).name}{list(shape)} array, got {out.dtype}{list(out.shape)}"
        )
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


#: |v| above which an unmasked sampled pixel value is "extreme": polar_remap counts such samples (only when no
#: saturation value is given) and the host implementations warn, since they are most likely flags or saturated
#: pixels that a saturation value or a mask should exclude. One constant for every implementation.
EXTREME_VALUE = 1e12


def _sci(x: float) -> str:
    """``x`` in short scientific notation: 1e12, 2.5e11."""
    mantissa, exponent = f"{x:e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def flag_value(dtype) -> float | int | None:
    """The value that marks a bad pixel in frames of ``dtype``, always masked by polar_remap: 2^bits − 1 for
    unsigned integers, the largest finite value for floats (its negative is a flag too), None for signed
    integers (they have no flag value)."""
    dt = np.dtype(dtype)
    if dt.kind == "u":
        return int(np.iinfo(dt).max)
    if dt.kind == "f":
        return float(np.finfo(dt).max)
    return None


def check_mask(mask, frame_shape: tuple[int, int], fn: str = "polar_remap") -> np.ndarray | None:
    """None, or ``mask`` (a bool or uint8 [H, W] host array, nonzero = masked) as a C-contiguous uint8 array:
    a view, without a copy, where the input is already C-contiguous. Otherwise a ValueError naming ``mask``."""
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray):
        raise ValueError(
            f"{fn}: mask must be a NumPy bool or uint8 array of shape {tuple(frame_shape)} for a host "
            f"implementation, got {type(mask).__name__}"
        )
    if mask.dtype not in (np.dtype(np.bool_), np.dtype(np.uint8)):
        raise ValueError(f"{fn}: mask must be bool or uint8 (nonzero = masked pixel), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(frame_shape):
        raise ValueError(
            f"{fn}: mask shape {tuple(mask.shape)} does not match the detector {frame_shape[0]}×{frame_shape[1]} "
            "(rows × columns)"
        )
    mask = np.ascontiguousarray(mask)
    return mask.view(np.uint8) if mask.dtype == np.bool_ else mask


def check_saturation(saturation, fn: str = "polar_remap") -> float | None:
    """None, or ``saturation`` as a float (pixel values ≥ it are masked); NaN or a non-number is a ValueError."""
    if saturation is None:
        return None
    try:
        value = float(saturation)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: saturation must be a number or None, got {saturation!r}") from None
    if math.isnan(value):
        raise ValueError(f"{fn}: saturation must be a number or None, got NaN")
    return value


def extreme_message(count: int, what: str = "polar_remap") -> str:
    """The text of polar_remap's DataWarning about ``count`` unmasked samples beyond ±EXTREME_VALUE."""
    return (
        f"{what}: {count} sampled pixel value(s) beyond ±{_sci(EXTREME_VALUE)} and no saturation value: if they are "
        "flags or saturated pixels, set saturation_value (or a mask) so they are masked"
    )


def warn_extreme(count: int, what: str = "polar_remap", stacklevel: int = 3) -> None:
    """Raise polar_remap's DataWarning when ``count`` > 0 (``stacklevel``: as for :func:`warnings.warn`, counted
    from this function's caller's caller by default)."""
    if count:
        warnings.warn(extreme_message(int(count), what), DataWarning, stacklevel=stacklevel + 1)


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
