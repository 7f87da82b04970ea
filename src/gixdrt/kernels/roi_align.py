"""RoIAlign through the compiled extension :mod:`gixdrt._ext`: the C++ CPU kernel for NumPy arrays, the CUDA
kernel for device arrays (anything with ``__cuda_array_interface__``: CuPy, PyTorch, Numba).

The semantics are those of :func:`gixdrt.model.reference_ops.roi_align_reference` (torchvision's RoIAlign,
average pooling); the defaults are the published detector's: 16×16 bins pooled from P2 with the anisotropic
scale (y · 1/8, x · 1/4), adaptive sampling, legacy ``aligned=False``. Nothing is converted or copied here:
inputs must already be float32 and C-contiguous, and a wrong dtype or layout raises.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

try:
    from .. import _ext
except ImportError as _exc:  # a source checkout that was never built, or a broken build
    _ext = None
    _EXT_IMPORT_ERROR: ImportError | None = _exc
else:
    _EXT_IMPORT_ERROR = None

__all__ = ["ExtensionUnavailableError", "roi_align"]

#: the published detector's RoIAlign scale on P2, as (s_y, s_x)
P2_SCALE = (1.0 / 8.0, 1.0 / 4.0)


class ExtensionUnavailableError(ImportError):
    """The compiled extension (or the part of it a call needs) is not available in this installation."""


def _require_ext():
    if _ext is None:
        raise ExtensionUnavailableError(
            "gixdrt._ext is not built, so the compiled RoIAlign kernels are unavailable; reinstall gixdrt "
            "(`pip install .` builds it with CMake and a C++17 compiler) or use gixdrt.model.ops.roi_align "
            f"(import error: {_EXT_IMPORT_ERROR})"
        )
    return _ext


def pair(value, what: str, cast: type = float) -> tuple[Any, Any]:
    """(y, x) from a number (both) or a pair; ValueError naming ``what`` otherwise."""
    if np.ndim(value) == 0:
        return cast(value), cast(value)
    out = tuple(cast(v) for v in value)
    if len(out) != 2:
        raise ValueError(f"{what} must be a number or a (y, x) pair, got {value!r}")
    return out


def roi_align(
    features: Any,
    rois: Any,
    output_size: int | Sequence[int] = 16,
    spatial_scale: float | Sequence[float] = P2_SCALE,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    out: Any = None,
    stream: Any = None,
    threads: int = 0,
) -> Any:
    """RoIAlign forward with the compiled kernels.

    features: float32[N, C, H, W] C-contiguous feature map; rois: float32[K, 5] rows (batch index, x0, y0, x1,
        y1) in input (image) pixels; both NumPy (C++ CPU kernel) or both device arrays (CUDA kernel).
    output_size: P or (P, Q) bins; spatial_scale: s or (s_y, s_x) multiplied into the RoI coordinates;
    sampling_ratio: samples per bin and axis, ≤ 0 for adaptive ceil(roi_size / bins); aligned: False is the
        legacy mode (no half-pixel shift, RoI size clamped to ≥ 1).
    out: optional float32[K, C, P, Q] C-contiguous buffer of the same kind as the inputs. A device call without
        ``out`` allocates one with the inputs' library (CuPy or PyTorch).
    stream: device calls only: a ``cudaStream_t`` as an int, or a stream object with ``.ptr`` (CuPy) or
        ``.cuda_stream`` (PyTorch); None takes the current stream of the inputs' library (else the legacy
        default stream). The launch is asynchronous on that stream; the caller owns the ordering.
    threads: host calls only: worker threads (≤ 0: ``gixdrt._ext.build_info()["cpu_threads"]``).
    Returns float32[K, C, P, Q] (``out`` when given).

    The CPU kernel raises ValueError for a batch index outside [0, N) or a non-finite coordinate; the CUDA kernel
    cannot raise from the device and writes NaN for RoIs with a bad batch index instead.
    """
    ext = _require_ext()
    if isinstance(output_size, (int, np.integer)):
        out_h = out_w = int(output_size)
    else:
        out_h, out_w = (int(v) for v in output_size)
    scale_y, scale_x = pair(spatial_scale, "roi_align: spatial_scale")
    on_device = hasattr(features, "__cuda_array_interface__")
    if on_device != hasattr(rois, "__cuda_array_interface__"):
        raise TypeError("roi_align: features and rois must both be NumPy arrays or both be device arrays")
    if not on_device:
        return ext.roi_align_cpu(
            np.asarray(features), np.asarray(rois), out_h, out_w, scale_y, scale_x,
            int(sampling_ratio), bool(aligned), threads=int(threads), out=out,
        )  # fmt: skip
    if not hasattr(ext, "roi_align_cuda"):
        raise ExtensionUnavailableError(
            "roi_align: device arrays need the CUDA kernel, but gixdrt._ext was built without CUDA "
            "(no CUDA compiler was found at build time, or GIXDRT_DISABLE_CUDA=ON); pass NumPy arrays instead"
        )
    return _roi_align_cuda(
        ext, features, rois, out_h, out_w, scale_y, scale_x, int(sampling_ratio), bool(aligned), out, stream
    )


def _device_view(arr: Any, name: str, ndim: int, layout: str) -> tuple[int, tuple[int, ...]]:
    """(device pointer, shape) of a float32 C-contiguous device array, or a clear error."""
    cai = arr.__cuda_array_interface__
    shape = tuple(int(s) for s in cai["shape"])
    if np.dtype(cai["typestr"]) != np.float32:
        raise TypeError(f"roi_align: {name} must be float32, got {np.dtype(cai['typestr'])}")
    if len(shape) != ndim:
        raise ValueError(f"roi_align: {name} must be {layout}, got shape {list(shape)}")
    if cai.get("mask") is not None:
        raise ValueError(f"roi_align: {name} must not be a masked array")
    strides = cai.get("strides")
    if strides is not None:
        expected, step = [], 4
        for s in reversed(shape):
            expected.append(step)
            step *= s
        # strides of axes of length 1 do not matter for contiguity
        if any(s > 1 and st != e for s, st, e in zip(shape, strides, reversed(expected))):
            raise ValueError(
                f"roi_align: {name} must be C-contiguous, got strides {tuple(strides)} for shape {list(shape)}"
            )
    return int(cai["data"][0]), shape


def _stream_handle(stream: Any, features: Any) -> int:
    if stream is None:
        module = type(features).__module__.split(".")[0]
        if module == "cupy":
            import cupy

            return int(cupy.cuda.get_current_stream().ptr)
        if module == "torch":
            import torch

            return int(torch.cuda.current_stream(features.device).cuda_stream)
        return 0
    for attr in ("ptr", "cuda_stream"):
        if hasattr(stream, attr):
            return int(getattr(stream, attr))
    return int(stream)


def _allocate_like(features: Any, shape: tuple[int, ...]) -> Any:
    module = type(features).__module__.split(".")[0]
    if module == "cupy":
        import cupy

        with cupy.cuda.Device(features.device.id):
            return cupy.empty(shape, dtype=cupy.float32)
    if module == "torch":
        import torch

        return torch.empty(shape, dtype=torch.float32, device=features.device)
    raise TypeError(
        f"roi_align: pass out= for device arrays of type {type(features).__name__} "
        "(only CuPy and PyTorch arrays are allocated here)"
    )


def _roi_align_cuda(ext, features, rois, out_h, out_w, scale_y, scale_x, sampling_ratio, aligned, out, stream):
    f_ptr, (n, c, h, w) = _device_view(features, "features", 4, "[N, C, H, W]")
    r_ptr, r_shape = _device_view(rois, "rois", 2, "[K, 5] (batch index, x0, y0, x1, y1)")
    if r_shape[1] != 5:
        raise ValueError(f"roi_align: rois must be [K, 5] (batch index, x0, y0, x1, y1), got shape {list(r_shape)}")
    k = r_shape[0]
    shape = (k, c, out_h, out_w)
    if out is None:
        out = _allocate_like(features, shape)
    if not hasattr(out, "__cuda_array_interface__"):
        raise TypeError(f"roi_align: out must be a device array for device inputs, got {type(out).__name__}")
    o_ptr, o_shape = _device_view(out, "out", 4, "[K, C, P, Q]")
    if o_shape != shape:
        raise ValueError(f"roi_align: out must have shape {list(shape)}, got {list(o_shape)}")
    ext.roi_align_cuda(
        f_ptr, r_ptr, o_ptr, n, c, h, w, k, out_h, out_w, scale_y, scale_x, sampling_ratio, aligned,
        _stream_handle(stream, features),
    )  # fmt: skip
    return out
