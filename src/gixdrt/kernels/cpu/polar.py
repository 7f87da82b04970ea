"""Numba CPU fast path of the polar remap (parallel over polar rows, cached compilation)."""
from __future__ import annotations

import math

import numba as nb
import numpy as np

from .._checks import as_frame_stack, check_out, warn_nonfinite


@nb.njit(cache=True, inline="always")
def _pixel(stack, k, y, x, h, w):  # pragma: no cover - compiled
    """Frame k at (y, x) as float32; 0 off the frame (constant border) or when non-finite (flag 1)."""
    if y < 0 or y >= h or x < 0 or x >= w:
        return np.float32(0.0), 0
    v = np.float32(stack[k, y, x])
    if math.isfinite(v):
        return v, 0
    return np.float32(0.0), 1


@nb.njit(cache=True)
def _remap_row(stack, y0, x0, fy, fx, out, i):  # pragma: no cover - compiled
    n, h, w = stack.shape
    one = np.float32(1.0)
    bad = 0
    for j in range(out.shape[1]):
        yy = y0[i, j]
        xx = x0[i, j]
        v00 = np.float32(0.0)
        v01 = np.float32(0.0)
        v10 = np.float32(0.0)
        v11 = np.float32(0.0)
        for k in range(n):
            a, b0 = _pixel(stack, k, yy, xx, h, w)
            b, b1 = _pixel(stack, k, yy, xx + 1, h, w)
            c, b2 = _pixel(stack, k, yy + 1, xx, h, w)
            d, b3 = _pixel(stack, k, yy + 1, xx + 1, h, w)
            v00 += a
            v01 += b
            v10 += c
            v11 += d
            bad += b0 + b1 + b2 + b3
        ax = fx[i, j]
        ay = fy[i, j]
        top = v00 * (one - ax) + v01 * ax
        bottom = v10 * (one - ax) + v11 * ax
        out[i, j] = top * (one - ay) + bottom * ay
    return bad


@nb.njit(cache=True)
def _remap_row_single(frame, y0, x0, fy, fx, out, i):  # pragma: no cover - compiled
    """One frame: interior pixels take a branch-free path; a non-finite result (a NaN/Inf neighbour)
    or a neighbour off the frame falls back to the checked path, so the arithmetic stays that of the
    reference."""
    h, w = frame.shape
    one = np.float32(1.0)
    bad = 0
    for j in range(out.shape[1]):
        yy = y0[i, j]
        xx = x0[i, j]
        ax = fx[i, j]
        ay = fy[i, j]
        if 0 <= yy < h - 1 and 0 <= xx < w - 1:
            v00 = np.float32(frame[yy, xx])
            v01 = np.float32(frame[yy, xx + 1])
            v10 = np.float32(frame[yy + 1, xx])
            v11 = np.float32(frame[yy + 1, xx + 1])
            r = (v00 * (one - ax) + v01 * ax) * (one - ay) + (v10 * (one - ax) + v11 * ax) * ay
            if math.isfinite(r):
                out[i, j] = r
                continue
        v00, b0 = _pixel2(frame, yy, xx, h, w)
        v01, b1 = _pixel2(frame, yy, xx + 1, h, w)
        v10, b2 = _pixel2(frame, yy + 1, xx, h, w)
        v11, b3 = _pixel2(frame, yy + 1, xx + 1, h, w)
        bad += b0 + b1 + b2 + b3
        out[i, j] = (v00 * (one - ax) + v01 * ax) * (one - ay) + (v10 * (one - ax) + v11 * ax) * ay
    return bad


@nb.njit(cache=True, inline="always")
def _pixel2(frame, y, x, h, w):  # pragma: no cover - compiled
    if y < 0 or y >= h or x < 0 or x >= w:
        return np.float32(0.0), 0
    v = np.float32(frame[y, x])
    if math.isfinite(v):
        return v, 0
    return np.float32(0.0), 1


@nb.njit(parallel=True, cache=True)
def _remap_single(frame, y0, x0, fy, fx, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    bad_rows = np.zeros(rows, np.int64)
    for i in nb.prange(rows):
        bad_rows[i] = _remap_row_single(frame, y0, x0, fy, fx, out, i)
    return bad_rows.sum()


@nb.njit(parallel=True, cache=True)
def _remap(stack, y0, x0, fy, fx, out):  # pragma: no cover - compiled
    rows = out.shape[0]
    bad_rows = np.zeros(rows, np.int64)  # per-row counts: no cross-thread reduction needed
    for i in nb.prange(rows):
        bad_rows[i] = _remap_row(stack, y0, x0, fy, fx, out, i)
    return bad_rows.sum()


def polar_remap(frames, pmap, out=None) -> np.ndarray:
    """Numba version of :func:`gixdrt.kernels.reference.polar.polar_remap` (same arithmetic, bit-exact)."""
    stack = as_frame_stack(frames, pmap.frame_shape)
    out = check_out(out, pmap.shape)
    if stack.shape[0] == 1:
        nonfinite = _remap_single(stack[0], pmap.y0, pmap.x0, pmap.fy, pmap.fx, out)
    else:
        nonfinite = _remap(stack, pmap.y0, pmap.x0, pmap.fy, pmap.fx, out)
    if stack.dtype.kind == "f":
        warn_nonfinite(int(nonfinite), "polar_remap")
    return out
