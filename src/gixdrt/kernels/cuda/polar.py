"""CUDA path of the polar remap with masked pixels and of the hole filling (Numba CUDA): device arrays in and
out, launched asynchronously on one stream, no host copies and no device→host synchronisation.

Same semantics as :mod:`gixdrt.kernels.reference.polar` (the specification). The arithmetic follows the
reference operation by operation in float32, but the CUDA compiler may contract a·b + c into a fused
multiply-add, so results may differ from the host implementations in the last bits; the codes written into
``masked`` are the same.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._checks import EXTREME_VALUE, check_saturation, flag_value
from ..registry import cudasim
from ._util import as_device, as_stream, device_out


@cuda.jit(device=True)
def _flagged(v, has_sat, sat, check_finite, finite_bound, has_flag, flag):  # pragma: no cover - device code
    """Whether frame value v is flagged: float frames: not |v| < finite_bound (NaN, ±inf, ±max, and for float64
    values that are ±inf as float32); unsigned frames: v == flag; any frame: v ≥ sat (float64) when has_sat."""
    if check_finite and not abs(v) < finite_bound:
        return True
    if has_flag and v == flag:
        return True
    return has_sat and np.float64(v) >= sat


@cuda.jit(device=True)
def _neighbour(stack, mask, has_mask, has_sat, sat, check_finite, finite_bound, has_flag, flag, count_ext, limit,
               y, x):  # pragma: no cover - device code
    """(on the frame, masked, float32 sum of the G values in order (0 off the frame or masked), extreme values)."""
    n, h, w = stack.shape
    zero = np.float32(0.0)
    if y < 0 or y >= h or x < 0 or x >= w:
        return False, False, zero, 0  # constant border 0, not masked
    if has_mask and mask[y, x] != 0:
        return True, True, zero, 0
    s = zero
    ext = 0
    for k in range(n):
        v = stack[k, y, x]
        if _flagged(v, has_sat, sat, check_finite, finite_bound, has_flag, flag):
            return True, True, zero, 0
        s += np.float32(v)
        if count_ext and abs(np.float64(v)) > limit:
            ext += 1
    return True, False, s, ext


@cuda.jit(cache=True)
def _remap_kernel(stack, mask, has_mask, has_sat, sat, check_finite, finite_bound, has_flag, flag, count_ext, limit,
                  y0, x0, fy, fx, out, codes, has_codes, extreme):  # pragma: no cover - device code
    i, j = cuda.grid(2)
    rows, cols = out.shape
    if i >= rows or j >= cols:
        return
    yy = y0[i, j]
    xx = x0[i, j]
    zero = np.float32(0.0)
    one = np.float32(1.0)
    on00, m00, v00, e00 = _neighbour(stack, mask, has_mask, has_sat, sat, check_finite, finite_bound, has_flag, flag,
                                     count_ext, limit, yy, xx)
    on01, m01, v01, e01 = _neighbour(stack, mask, has_mask, has_sat, sat, check_finite, finite_bound, has_flag, flag,
                                     count_ext, limit, yy, xx + 1)
    on10, m10, v10, e10 = _neighbour(stack, mask, has_mask, has_sat, sat, check_finite, finite_bound, has_flag, flag,
                                     count_ext, limit, yy + 1, xx)
    on11, m11, v11, e11 = _neighbour(stack, mask, has_mask, has_sat, sat, check_finite, finite_bound, has_flag, flag,
                                     count_ext, limit, yy + 1, xx + 1)
    ax = fx[i, j]
    ay = fy[i, j]
    top = v00 * (one - ax) + v01 * ax
    bottom = v10 * (one - ax) + v11 * ax
    r = top * (one - ay) + bottom * ay
    code = 0
    if m00 or m01 or m10 or m11:
        w00 = (one - ax) * (one - ay)
        w01 = ax * (one - ay)
        w10 = (one - ax) * ay
        w11 = ax * ay
        w_in = zero
        w_ok = zero
        if on00:
            w_in += w00
        if on01:
            w_in += w01
        if on10:
            w_in += w10
        if on11:
            w_in += w11
        if on00 and not m00:
            w_ok += w00
        if on01 and not m01:
            w_ok += w01
        if on10 and not m10:
            w_ok += w10
        if on11 and not m11:
            w_ok += w11
        if w_ok > zero:
            r = r * (w_in / w_ok)
            code = 1
        else:
            r = zero
            code = 2
    out[i, j] = r
    if has_codes:
        codes[i, j] = code
    if count_ext:
        e = e00 + e01 + e10 + e11
        if e:
            cuda.atomic.add(extreme, 0, e)


_BLOCK = (8, 32)  # 256 threads, a warp along |Q| so map reads coalesce

_DUMMIES: dict = {}


def _dummies(stream):
    """(uint8[1, 1], uint8[1, 1], int64[1]) device arrays that stand for an absent mask, codes buffer and counter
    (never read or written: the kernel's flags say so), allocated once per device."""
    key = "sim" if cudasim() else cuda.get_current_device().id
    if key not in _DUMMIES:
        _DUMMIES[key] = (
            cuda.to_device(np.zeros((1, 1), np.uint8), stream=stream),
            cuda.to_device(np.zeros((1, 1), np.uint8), stream=stream),
            cuda.to_device(np.zeros(1, np.int64), stream=stream),
        )
    return _DUMMIES[key]


#: the smallest float64 magnitude that float32 rounds to ±inf: 2^128 − 2^103
FLOAT32_OVERFLOW = float.fromhex("0x1.ffffffp+127")


def _flag_args(dtype):
    """(check_finite, finite_bound, has_flag, flag) for frames of ``dtype`` (scalars of that dtype).

    Float frames: v is flagged when not |v| < finite_bound, one comparison for "not finite as float32 or ±the
    dtype's largest value": float32's largest value itself, or for float64 2^128 − 2^103 (below it float32 rounds
    to a finite value; float64's largest value is above it). Unsigned frames: v == flag (2^bits − 1)."""
    dt = np.dtype(dtype)
    flag = flag_value(dt)
    if dt.kind == "f":
        bound = np.finfo(np.float32).max if dt == np.float32 else FLOAT32_OVERFLOW
        return True, dt.type(bound), False, dt.type(0)
    if flag is None:
        return False, dt.type(0), False, dt.type(0)
    return False, dt.type(0), True, dt.type(flag)


def polar_remap(frames, pmap, *, mask=None, saturation=None, out=None, masked=None, stream=None, extreme=None):
    """Device version of :func:`gixdrt.kernels.reference.polar.polar_remap` (the specification).

    frames: device array [H, W] or [G, H, W] (float32/float64/uint8/uint16/uint32/int16/int32), never copied.
    pmap: :class:`gixdrt.geometry.PolarMap`; its kernel arrays are uploaded once per device and cached.
    mask: None or a bool/uint8 [H, W] device array, nonzero = masked pixel.
    saturation: None or a number: frame values ≥ it are masked.
    out: float32[n_phi, n_q] device buffer (allocated on ``stream`` when None).
    masked: None or a uint8[n_phi, n_q] device buffer that receives the codes 0/1/2 (not written when None).
    extreme: optional int64[1] device counter that accumulates how many values of unmasked on-frame neighbours
        beyond ±EXTREME_VALUE were sampled (only when saturation is None; not counted when extreme is None). No
        warning is raised here: reading the counter would force a device→host sync.
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
    saturation = check_saturation(saturation)
    dummy_mask, dummy_codes, dummy_counter = _dummies(s)
    if mask is not None:
        m = as_device(mask, "mask")
        if m.dtype not in (np.dtype(np.bool_), np.dtype(np.uint8)):
            raise ValueError(f"polar_remap: mask must be bool or uint8 (nonzero = masked pixel), got dtype {m.dtype}")
        if tuple(m.shape) != tuple(pmap.frame_shape):
            raise ValueError(
                f"polar_remap: mask shape {tuple(m.shape)} does not match the detector "
                f"{pmap.frame_shape[0]}×{pmap.frame_shape[1]} (rows × columns)"
            )
    else:
        m = dummy_mask
    dst = device_out(out, pmap.shape, np.float32, s)
    codes = dummy_codes if masked is None else device_out(masked, pmap.shape, np.uint8, s, "masked")
    if extreme is not None:
        counter = as_device(extreme, "extreme")
        if counter.dtype != np.int64 or tuple(counter.shape) != (1,):
            raise ValueError(f"polar_remap: extreme must be an int64[1] device array, got {counter.dtype}{list(counter.shape)}")
    else:
        counter = dummy_counter
    y0, x0, fy, fx = pmap.device_arrays(s)
    check_finite, finite_bound, has_flag, flag = _flag_args(src.dtype)
    rows, cols = pmap.shape
    grid = (math.ceil(rows / _BLOCK[0]), math.ceil(cols / _BLOCK[1]))
    _remap_kernel[grid, _BLOCK, s](
        src, m, mask is not None, saturation is not None, np.float64(0.0 if saturation is None else saturation),
        check_finite, finite_bound, has_flag, flag, extreme is not None and saturation is None, np.float64(EXTREME_VALUE),
        y0, x0, fy, fx, dst, codes, masked is not None, counter,
    )
    return dst


@cuda.jit(device=True)
def _hole_value(polar, img, h, w, i, j, a, b, c, d):  # pragma: no cover - device code
    """The value of hole (i, j) of image img from the nearest rows a (above), b (below) and columns c (left),
    d (right) that are not holes (−1, h, −1, w when none); see fill_holes. Reads only pixels that are not holes."""
    two_phi = a >= 0 and b < h
    two_q = c >= 0 and d < w
    v_phi = np.float32(0.0)
    v_q = np.float32(0.0)
    if two_phi:
        left = polar[img, a, j]
        right = polar[img, b, j]
        t = np.float32(i - a) / np.float32(b - a)
        v_phi = left + (right - left) * t
    if two_q:
        left = polar[img, i, c]
        right = polar[img, i, d]
        t = np.float32(j - c) / np.float32(d - c)
        v_q = left + (right - left) * t
    if two_phi and two_q:
        return (v_phi * np.float32(d - c) + v_q * np.float32(b - a)) / np.float32((b - a) + (d - c))
    if two_phi:
        return v_phi
    if two_q:
        return v_q
    if a >= 0:
        return polar[img, a, j]
    if b < h:
        return polar[img, b, j]
    if c >= 0:
        return polar[img, i, c]
    if d < w:
        return polar[img, i, d]
    return np.float32(0.0)


@cuda.jit(cache=True)
def _fill_kernel(polar, codes):  # pragma: no cover - device code
    """One thread per pixel (adjacent threads on adjacent columns): a hole scans its column up and down and its
    row left and right to the nearest pixels that are not holes, and is filled from them. Holes are never read,
    so filling in place is safe whatever the order of the threads."""
    idx = cuda.grid(1)
    n, h, w = polar.shape
    if idx >= n * h * w:
        return
    j = idx % w
    rest = idx // w
    i = rest % h
    img = rest // h
    if codes[img, i, j] != 2:
        return
    a = i - 1
    while a >= 0 and codes[img, a, j] == 2:
        a -= 1
    b = i + 1
    while b < h and codes[img, b, j] == 2:
        b += 1
    c = j - 1
    while c >= 0 and codes[img, i, c] == 2:
        c -= 1
    d = j + 1
    while d < w and codes[img, i, d] == 2:
        d += 1
    polar[img, i, j] = _hole_value(polar, img, h, w, i, j, a, b, c, d)


_FILL_BLOCK = 128  # adjacent threads take adjacent columns: each row is read coalesced


def fill_holes(polar, masked, *, stream=None):
    """Device version of :func:`gixdrt.kernels.reference.polar.fill_holes`, in place; returns ``polar``.

    polar: float32[H, W] or [N, H, W] device array (C-contiguous); masked: uint8 device array of the same shape.
    One thread per pixel (threads on pixels that are not holes return at once), launched asynchronously on
    ``stream``. The interpolations may be contracted into fused multiply-adds (see the module's docstring).
    """
    s = as_stream(stream)
    p = as_device(polar, "polar")
    c = as_device(masked, "masked")
    if p.dtype != np.float32:
        raise TypeError(f"fill_holes: polar must be float32, got {p.dtype}")
    if c.dtype != np.uint8:
        raise TypeError(f"fill_holes: masked must be uint8, got {c.dtype}")
    if p.ndim not in (2, 3):
        raise ValueError(f"fill_holes: polar must be [H, W] or [N, H, W], got shape {tuple(p.shape)}")
    if tuple(c.shape) != tuple(p.shape):
        raise ValueError(f"fill_holes: masked must have the shape of polar {tuple(p.shape)}, got {tuple(c.shape)}")
    if p.ndim == 2:
        p = p.reshape((1,) + tuple(p.shape))
        c = c.reshape((1,) + tuple(c.shape))
    size = int(np.prod(p.shape))
    if size:
        _fill_kernel[math.ceil(size / _FILL_BLOCK), _FILL_BLOCK, s](p, c)
    return polar
