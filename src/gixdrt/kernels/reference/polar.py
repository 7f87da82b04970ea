"""NumPy reference of the polar remap with masked pixels, and of the hole filling that may follow it: the
specification of the fast paths (:mod:`gixdrt.kernels.cpu.polar`, :mod:`gixdrt.kernels.cuda.polar`).

:func:`polar_remap` samples raw frame(s) bilinearly onto the polar grid; pixels that are masked (a user mask, a
saturation value, the dtype's flag value, non-finite values) take no part: the remaining neighbours' weights are
renormalised, and a polar pixel with no valid neighbour is a hole (code 2 in ``masked``). :func:`fill_holes`
fills the holes from the nearest pixels that are not holes along φ and along |Q|, the shorter interpolation
weighing more.
"""
from __future__ import annotations

import numpy as np

from .._checks import (
    EXTREME_VALUE,
    as_frame_stack,
    check_mask,
    check_out,
    check_saturation,
    flag_value,
    warn_extreme,
)

#: the codes written into ``masked``: no on-frame neighbour masked / renormalised over the unmasked ones / a hole
CODE_OK, CODE_RENORMALISED, CODE_HOLE = 0, 1, 2


def flagged_pixels(stack: np.ndarray, saturation: float | None) -> np.ndarray:
    """bool[H, W]: pixels of ``stack`` [G, H, W] with at least one flagged value among the G frames.

    A value v is flagged when v converted to float32 is not finite (NaN, ±inf, and for float64 frames values
    beyond the float32 range, which would sum to ±inf), when v is the dtype's flag value
    (:func:`gixdrt.kernels._checks.flag_value`: 2^bits − 1 for unsigned integers, ±the largest finite value for
    floats, none for signed integers), or when ``saturation`` is not None and v ≥ saturation (compared in float64,
    exact for every frame dtype).
    """
    bad = np.zeros(stack.shape[1:], bool)
    flag = flag_value(stack.dtype)
    with np.errstate(over="ignore", invalid="ignore"):
        for frame in stack:
            if frame.dtype.kind == "f":
                bad |= ~np.isfinite(frame.astype(np.float32))
                bad |= (frame == flag) | (frame == -flag)
            elif flag is not None:
                bad |= frame == flag
            if saturation is not None:
                bad |= frame.astype(np.float64) >= np.float64(saturation)
    return bad


def _remap(frames, pmap, mask, saturation, out, masked) -> tuple[np.ndarray, int]:
    """polar_remap without the warning: returns (out, number of extreme samples)."""
    stack = as_frame_stack(frames, pmap.frame_shape)
    mask = check_mask(mask, pmap.frame_shape)
    saturation = check_saturation(saturation)
    out = check_out(out, pmap.shape)
    if masked is not None:
        masked = check_out(masked, pmap.shape, np.uint8, "masked")
    n, h, w = stack.shape

    # 1. the masked pixels of the frame, and per pixel how many of its G values are extreme
    bad = flagged_pixels(stack, saturation)
    if mask is not None:
        bad |= mask != 0
    extreme = np.zeros((h, w), np.int64)
    if saturation is None and stack.dtype.kind == "f":  # integer frames never exceed ±EXTREME_VALUE
        for frame in stack:
            extreme += np.abs(frame.astype(np.float64)) > EXTREME_VALUE

    # 2. the four neighbours: on the frame? masked? their float32 sums over the G frames (masked → 0)
    n_extreme = 0
    values, on_frame, is_masked = [], [], []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy = pmap.y0.astype(np.int64) + dy
        xx = pmap.x0.astype(np.int64) + dx
        on = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = np.where(on, yy * w + xx, 0)
        msk = on & bad.reshape(-1)[flat]
        use = on & ~msk
        acc = np.zeros(pmap.shape, np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            for k in range(n):
                v = stack[k].reshape(-1)[flat].astype(np.float32)
                acc += np.where(use, v, np.float32(0.0))
        n_extreme += int(extreme.reshape(-1)[flat][use].sum())
        values.append(acc)
        on_frame.append(on)
        is_masked.append(msk)

    # 3. the bilinear interpolation, as without masks
    v00, v01, v10, v11 = values
    one = np.float32(1.0)
    fx, fy = pmap.fx.astype(np.float32), pmap.fy.astype(np.float32)
    top = v00 * (one - fx) + v01 * fx
    bottom = v10 * (one - fx) + v11 * fx
    r = top * (one - fy) + bottom * fy

    # 4. where an on-frame neighbour is masked: renormalise over the unmasked on-frame neighbours, or a hole
    any_masked = is_masked[0] | is_masked[1] | is_masked[2] | is_masked[3]
    weights = ((one - fx) * (one - fy), fx * (one - fy), (one - fx) * fy, fx * fy)
    w_in = np.zeros(pmap.shape, np.float32)
    w_ok = np.zeros(pmap.shape, np.float32)
    for wgt, on, msk in zip(weights, on_frame, is_masked):
        w_in = np.where(on, w_in + wgt, w_in)
        w_ok = np.where(on & ~msk, w_ok + wgt, w_ok)
    hole = any_masked & ~(w_ok > 0)
    renorm = any_masked & (w_ok > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        scaled = r * (w_in / w_ok)
    out[...] = np.where(renorm, scaled, np.where(hole, np.float32(0.0), r))
    if masked is not None:
        masked[...] = np.where(hole, CODE_HOLE, np.where(renorm, CODE_RENORMALISED, CODE_OK)).astype(np.uint8)
    return out, n_extreme


def polar_remap(frames, pmap, *, mask=None, saturation=None, out=None, masked=None) -> np.ndarray:
    """Bilinear sampling of raw frame(s) through a :class:`gixdrt.geometry.PolarMap`, masked pixels excluded.

    frames: [H, W] or [G, H, W] detector counts (float32/float64/uint8/uint16/uint32/int16/int32); the G frames
        are summed.
    mask: None or a bool/uint8 [H, W] array, nonzero = masked pixel.
    saturation: None or a number: a pixel value v ≥ saturation is masked.
    out: optional float32[n_phi, n_q] buffer. masked: optional uint8[n_phi, n_q] buffer that receives each polar
        pixel's code (0, 1, 2, below); not written when None.
    Returns float32[n_phi, n_q] (``out``).

    Specification (float32 arithmetic in this order unless said otherwise):

    A frame pixel (y, x) is *masked* when mask[y, x] ≠ 0 or any of its G values v is flagged: v converted to
    float32 is not finite; v is the dtype's flag value (2^bits − 1 for uint8/uint16/uint32, ±the largest finite
    value for float32/float64, none for signed integers); or saturation is given and v ≥ saturation (float64
    comparison). See :func:`flagged_pixels`.

    Each polar pixel has a top-left source pixel (y0, x0) and fractions (fy, fx). Its neighbours (y0, x0),
    (y0, x0+1), (y0+1, x0), (y0+1, x0+1) have values v00, v01, v10, v11: 0 for a neighbour off the frame
    (constant border; such a neighbour is not masked) or masked, else the float32 sum over the G frames
    (k = 0, 1, … in order, starting from 0) of the pixel's values converted to float32. Then

        top = v00·(1 − fx) + v01·fx,  bottom = v10·(1 − fx) + v11·fx,  r = top·(1 − fy) + bottom·fy.

    - No on-frame neighbour masked: out = r, code 0 (the remap without masks, bit for bit).
    - Otherwise, with the weights w00 = (1−fx)(1−fy), w01 = fx(1−fy), w10 = (1−fx)fy, w11 = fx·fy,
      W_in = the sum of the weights of the on-frame neighbours and W_ok = the sum of the weights of the
      on-frame unmasked neighbours (each summed in the order 00, 01, 10, 11): if W_ok > 0,
      out = r·(W_in / W_ok), code 1; else out = 0, code 2 (a hole: no valid sample; see :func:`fill_holes`).

    Undefined map positions carry y0 = x0 = −2, so every neighbour is off the frame and the result is 0, code 0.

    Values v of unmasked on-frame neighbours (each of the G values, per polar pixel and neighbour) with
    |v| > :data:`~gixdrt.kernels._checks.EXTREME_VALUE` (1e12, float64 comparison) are counted when saturation
    is None; when the count is > 0 one :class:`gixdrt.errors.DataWarning` names it: such values are most
    likely flags or saturated pixels that a saturation value or a mask should exclude.
    """
    out, n_extreme = _remap(frames, pmap, mask, saturation, out, masked)
    warn_extreme(n_extreme)
    return out


def check_fill_args(polar, masked, fn: str = "fill_holes") -> tuple[np.ndarray, np.ndarray]:
    """``polar`` (float32 [H, W] or [N, H, W], C-contiguous, writeable) and ``masked`` (uint8 of the same shape)
    as [N, H, W] views, else a TypeError or ValueError naming the argument."""
    for name, arr, dtype in (("polar", polar, np.float32), ("masked", masked, np.uint8)):
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"{fn}: {name} must be a NumPy array for a host implementation, got {type(arr).__name__}")
        if arr.dtype != dtype:
            raise TypeError(f"{fn}: {name} must be {np.dtype(dtype).name}, got {arr.dtype}")
    if polar.ndim not in (2, 3):
        raise ValueError(f"{fn}: polar must be [H, W] or [N, H, W], got shape {polar.shape}")
    if masked.shape != polar.shape:
        raise ValueError(f"{fn}: masked must have the shape of polar {polar.shape}, got {masked.shape}")
    if not polar.flags.c_contiguous or not polar.flags.writeable:
        raise ValueError(f"{fn}: polar is filled in place: it must be C-contiguous and writeable")
    masked = np.ascontiguousarray(masked)
    if polar.ndim == 2:
        return polar[None], masked[None]
    return polar, masked


def _nearest_valid(valid: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(before, after): int64 arrays of ``valid``'s shape holding, at every position p, the index along ``axis`` of
    the nearest valid position at or before p (−1 when there is none) and at or after p (the axis length when
    there is none). At an invalid position these are the nearest valid ones strictly before and after it."""
    n = valid.shape[axis]
    index = np.arange(n, dtype=np.int64).reshape([n if k == axis else 1 for k in range(valid.ndim)])
    before = np.maximum.accumulate(np.where(valid, index, -1), axis=axis)
    after = np.flip(np.minimum.accumulate(np.flip(np.where(valid, index, n), axis), axis=axis), axis)
    return before, after


def fill_holes(polar, masked) -> np.ndarray:
    """Fill the holes of polar image(s) in place from the nearest pixels that are not holes along φ and |Q|;
    returns ``polar``.

    polar: float32[H, W] or [N, H, W]; masked: uint8 of the same shape, the codes of :func:`polar_remap`
    (2 = hole; 0 and 1 are not holes). Every hole (i, j) of every image is filled from the values of pixels that
    are not holes only, never from a filled value, so the result does not depend on the order of the pixels
    (each can be computed on its own). In float32:

    - Along φ (column j): a = the nearest row above i that is not a hole, b = the nearest row below i that is
      not a hole (either may not exist). When both exist, with L = polar[a, j] and R = polar[b, j],
      t = float32(i − a) / float32(b − a), vφ = L + (R − L)·t, span_φ = b − a.
    - Along |Q| (row i): c and d = the nearest columns left and right of j that are not holes. When both exist,
      with L' = polar[i, c] and R' = polar[i, d], t' = float32(j − c) / float32(d − c), vq = L' + (R' − L')·t',
      span_q = d − c.
    - Both directions two-sided: polar[i, j] = (vφ·float32(span_q) + vq·float32(span_φ)) / float32(span_φ + span_q),
      each estimate weighted by the inverse of its own span, so that the shorter interpolation dominates (a gap
      that runs nearly parallel to one axis is bridged across it).
    - One direction two-sided: that direction's estimate (vφ or vq).
    - Neither: the nearest value along φ, polar[a, j] or polar[b, j] (at most one of them exists); else the
      nearest along |Q|, polar[i, c] or polar[i, d]; else 0 (the pixel's row and column are all holes).

    Pixels that are not holes are never changed.
    """
    images, codes = check_fill_args(polar, masked)
    hole = codes == CODE_HOLE
    if not hole.any():
        return polar
    _, h, w = images.shape
    # the nearest rows above/below and columns left/right that are not holes, at every hole (k, i, j)
    up, down = _nearest_valid(~hole, axis=1)
    left, right = _nearest_valid(~hole, axis=2)
    k, i, j = np.nonzero(hole)
    a, b, c, d = up[k, i, j], down[k, i, j], left[k, i, j], right[k, i, j]
    has_a, has_b, has_c, has_d = a >= 0, b < h, c >= 0, d < w

    # the neighbour values (where a neighbour does not exist the clipped index reads some pixel, never used);
    # every read happens before the holes are written
    v_a = images[k, np.maximum(a, 0), j]
    v_b = images[k, np.minimum(b, h - 1), j]
    v_c = images[k, i, np.maximum(c, 0)]
    v_d = images[k, i, np.minimum(d, w - 1)]

    span_phi, span_q = b - a, d - c  # ≥ 2 always: no division by zero
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite or huge neighbour values propagate
        t_phi = (i - a).astype(np.float32) / span_phi.astype(np.float32)
        t_q = (j - c).astype(np.float32) / span_q.astype(np.float32)
        v_phi = v_a + (v_b - v_a) * t_phi
        v_q = v_c + (v_d - v_c) * t_q
        blend = (v_phi * span_q.astype(np.float32) + v_q * span_phi.astype(np.float32)) / (span_phi + span_q).astype(
            np.float32
        )
    two_phi, two_q = has_a & has_b, has_c & has_d
    value = np.select(
        [two_phi & two_q, two_phi, two_q, has_a, has_b, has_c, has_d],
        [blend, v_phi, v_q, v_a, v_b, v_c, v_d],
        default=np.float32(0.0),
    )
    images[k, i, j] = value.astype(np.float32, copy=False)
    return polar
