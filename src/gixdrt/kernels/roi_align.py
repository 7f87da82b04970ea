"""RoIAlign through the kernel registry: the public entry point :func:`roi_align`.

Backends: ``reference`` (:mod:`gixdrt.kernels.reference.roi_align`, the naive float64 loops, float32 result),
``cpu`` (the C++ kernel ``gixdrt._ext.roi_align_cpu``) and ``cuda`` (the CUDA kernel ``gixdrt._ext.roi_align_cuda``
on device arrays). The semantics are torchvision's RoIAlign (average pooling); the defaults are the published
detector's: 16×16 bins pooled from P2 with the anisotropic scale (y · 1/8, x · 1/4), adaptive sampling, legacy
``aligned=False``.

This module is callable: ``gixdrt.kernels.roi_align(...)`` is :func:`roi_align`, and
``from gixdrt.kernels.roi_align import roi_align`` gives the same function.
"""
from __future__ import annotations

import sys
import types
from collections.abc import Sequence
from typing import Any

from .reference.roi_align import P2_SCALE, pair
from .registry import ExtensionUnavailableError, is_device_array, resolve

try:
    from .. import _ext
except ImportError as _exc:  # a source checkout that was never built, or a broken build
    _ext = None
    _EXT_IMPORT_ERROR: ImportError | None = _exc
else:
    _EXT_IMPORT_ERROR = None

__all__ = ["P2_SCALE", "ExtensionUnavailableError", "pair", "roi_align"]


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
    impl: str | None = None,
    stream: Any = None,
) -> Any:
    """RoIAlign forward.

    features: float32[N, C, H, W] C-contiguous feature map; rois: float32[K, 5] rows (batch index, x0, y0, x1,
        y1) in input (image) pixels; both NumPy arrays (host implementations) or both device arrays (cuda).
    output_size: P or (P, Q) bins; spatial_scale: s or (s_y, s_x) multiplied into the RoI coordinates;
    sampling_ratio: samples per bin and axis, ≤ 0 for adaptive ceil(roi_size / bins); aligned: False is the
        legacy mode (no half-pixel shift, RoI size clamped to ≥ 1).
    out: optional float32[K, C, P, Q] C-contiguous buffer of the same kind as the inputs. A device call without
        ``out`` allocates one with the inputs' library (CuPy or PyTorch).
    valid: optional int32[N]: the rows are grouped R = K // N per image (row i·R + j belongs to image i and its
        batch index must be i); rows with j ≥ valid[i] need not be computed and their content is unspecified
        (the reference and cpu implementations skip them, cuda may compute them).
    impl: None (from where ``features`` lives), "reference", "cpu" or "cuda".
    stream: cuda only: a ``cudaStream_t`` as an int, or a stream object with ``.ptr`` (CuPy) or ``.cuda_stream``
        (PyTorch); None takes the current stream of the inputs' library. The launch is asynchronous.
    Returns float32[K, C, P, Q] (``out`` when given).

    The host implementations raise ValueError for a (computed) RoI with a batch index outside [0, N) or a non-finite
    coordinate; the CUDA kernel cannot raise from the device and writes NaN for RoIs with a bad batch index.
    """
    if is_device_array(features) != is_device_array(rois):
        raise TypeError("roi_align: features and rois must both be NumPy arrays or both be device arrays")
    name, fn = resolve("roi_align", impl, features)
    args = (features, rois, output_size, spatial_scale, sampling_ratio, aligned)
    if name == "cuda":
        return fn(*args, out=out, valid=valid, stream=stream)
    return fn(*args, out=out, valid=valid)


class _CallableModule(types.ModuleType):
    """``gixdrt.kernels.roi_align`` is this module (its attributes stay reachable, e.g. for the engines) and
    calling it calls :func:`roi_align`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return roi_align(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
