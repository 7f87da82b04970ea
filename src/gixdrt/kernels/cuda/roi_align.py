"""CUDA RoIAlign: the compiled kernel ``gixdrt._ext.roi_align_cuda`` on device pointers (no Numba needed).

Takes anything with ``__cuda_array_interface__`` (CuPy, PyTorch, Numba); nothing is converted or copied:
inputs must already be float32 and C-contiguous, and a wrong dtype or layout raises.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..reference.roi_align import P2_SCALE, pair
from ..registry import ExtensionUnavailableError, is_device_array, roi_align_cuda_unavailable_reason


def roi_align(
    features: Any,
    rois: Any,
    output_size: int | Sequence[int] = 16,
    spatial_scale: float | Sequence[float] = P2_SCALE,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    out: Any = None,
    valid: Any = None,
    stream: Any = None,
) -> Any:
    """Device version of :func:`gixdrt.kernels.reference.roi_align.roi_align` (float32 result).

    features: float32[N, C, H, W], rois: float32[K, 5] device arrays; out: optional float32[K, C, P, Q] device
    array (without it one is allocated with the inputs' library, CuPy or PyTorch). valid: optional int[N] (host
    or device): only its shape is checked (K must be N groups of R rows); every row is computed, so rows past
    valid[i] hold whatever their coordinates give (NaN for a bad batch index: the kernel cannot raise).
    stream: a ``cudaStream_t`` as an int, or a stream object with ``.ptr`` (CuPy) or ``.cuda_stream`` (PyTorch);
    None takes the current stream of the inputs' library (else the legacy default stream). The launch is
    asynchronous on that stream; the caller owns the ordering.
    """
    reason = roi_align_cuda_unavailable_reason()
    if reason is not None:
        raise ExtensionUnavailableError(f"roi_align: device arrays need the CUDA kernel, but {reason}")
    from gixdrt import _ext

    if not (is_device_array(features) and is_device_array(rois)):
        raise TypeError("roi_align: the cuda implementation takes device arrays for both features and rois")
    out_h, out_w = pair(output_size, "roi_align: output_size", int)
    scale_y, scale_x = pair(spatial_scale, "roi_align: spatial_scale")
    f_ptr, (n, c, h, w) = _device_view(features, "features", 4, "[N, C, H, W]")
    r_ptr, r_shape = _device_view(rois, "rois", 2, "[K, 5] (batch index, x0, y0, x1, y1)")
    if r_shape[1] != 5:
        raise ValueError(f"roi_align: rois must be [K, 5] (batch index, x0, y0, x1, y1), got shape {list(r_shape)}")
    k = r_shape[0]
    if valid is not None:
        v_shape = tuple(valid.__cuda_array_interface__["shape"]) if is_device_array(valid) else np.shape(valid)
        if tuple(v_shape) != (n,):
            raise ValueError(f"roi_align: valid must be [{n}] (one count per image), got shape {list(v_shape)}")
        if n == 0 or k % n:
            raise ValueError(f"roi_align: with valid, the RoIs must be N groups of R rows (K = {k} is not a multiple of N = {n})")
    shape = (k, c, out_h, out_w)
    if out is None:
        out = _allocate_like(features, shape)
    if not is_device_array(out):
        raise TypeError(f"roi_align: out must be a device array for device inputs, got {type(out).__name__}")
    o_ptr, o_shape = _device_view(out, "out", 4, "[K, C, P, Q]")
    if o_shape != shape:
        raise ValueError(f"roi_align: out must have shape {list(shape)}, got {list(o_shape)}")
    _ext.roi_align_cuda(
        f_ptr, r_ptr, o_ptr, n, c, h, w, k, out_h, out_w, scale_y, scale_x, int(sampling_ratio), bool(aligned),
        _stream_handle(stream, features),
    )  # fmt: skip
    return out


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
