"""CUDA path of the polar remap (Numba CUDA): device frames in, device polar image out, on one stream."""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from ._util import as_device, as_stream, device_out


@cuda.jit(cache=True)
def _remap_kernel(stack, y0, x0, fy, fx, out, nonfinite):  # pragma: no cover - device code
    i, j = cuda.grid(2)
    rows, cols = out.shape
    if i >= rows or j >= cols:
        return
    n, h, w = stack.shape
    yy = y0[i, j]
    xx = x0[i, j]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    v00 = zero
    v01 = zero
    v10 = zero
    v11 = zero
    bad = 0
    for k in range(n):
        # Same order and float32 arithmetic as the reference; off-frame or non-finite neighbours count 0.
        if 0 <= yy < h and 0 <= xx < w:
            v = np.float32(stack[k, yy, xx])
            if math.isfinite(v):
                v00 += v
            else:
                bad += 1
        if 0 <= yy < h and 0 <= xx + 1 < w:
            v = np.float32(stack[k, yy, xx + 1])
            if math.isfinite(v):
                v01 += v
            else:
                bad += 1
        if 0 <= yy + 1 < h and 0 <= xx < w:
            v = np.float32(stack[k, yy + 1, xx])
            if math.isfinite(v):
                v10 += v
            else:
                bad += 1
        if 0 <= yy + 1 < h and 0 <= xx + 1 < w:
            v = np.float32(stack[k, yy + 1, xx + 1])
            if math.isfinite(v):
                v11 += v
            else:
                bad += 1
    ax = fx[i, j]
    ay = fy[i, j]
    top = v00 * (one - ax) + v01 * ax
    bottom = v10 * (one - ax) + v11 * ax
    out[i, j] = top * (one - ay) + bottom * ay
    if bad:
        cuda.atomic.add(nonfinite, 0, bad)


_BLOCK = (8, 32)  # 256 threads, a warp along |Q| so map reads coalesce


def polar_remap(frames, pmap, out=None, stream=None, nonfinite=None):
    """Device version of :func:`gixdrt.kernels.reference.polar.polar_remap`.

    frames: device array [H, W] or [N, H, W] (float32/float64/uint16/uint32/int32), never copied.
    pmap: :class:`gixdrt.geometry.PolarMap`; its kernel arrays are uploaded once per device and cached.
    out: float32[n_phi, n_q] device buffer (allocated on ``stream`` when None).
    nonfinite: optional int64[1] device counter that accumulates how many non-finite neighbours were
        sampled. No warning is raised here: reading the counter would force a device→host sync.
    The launch is asynchronous on ``stream``; the function returns the output buffer.
    """
    s = as_stream(stream)
    src = as_device(frames, "frames")
    if src.ndim == 2:
        src = src.reshape((1,) + tuple(src.shape))
    if src.ndim != 3 or tuple(src.shape[1:]) != tuple(pmap.frame_shape):
        raise ValueError(
            f"frame shape {tuple(frames.shape)} does not match the geometry's detector "
            f"{pmap.frame_shape[0]}×{pmap.frame_shape[1]} (rows × columns)"
        )
    dst = device_out(out, pmap.shape, np.float32, s)
    y0, x0, fy, fx = pmap.device_arrays(s)
    if nonfinite is None:
        nonfinite = cuda.to_device(np.zeros(1, np.int64), stream=s)  # an 8-byte counter
    rows, cols = pmap.shape
    grid = (math.ceil(rows / _BLOCK[0]), math.ceil(cols / _BLOCK[1]))
    _remap_kernel[grid, _BLOCK, s](src, y0, x0, fy, fx, dst, nonfinite)
    return dst
