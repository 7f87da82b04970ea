"""NumPy reference of the polar remap: the specification of the fast paths."""
from __future__ import annotations

import numpy as np

from .._checks import as_frame_stack, check_out, warn_nonfinite


def polar_remap(frames, pmap, out=None) -> np.ndarray:
    """Bilinear sampling of raw frame(s) through a :class:`gixdrt.geometry.PolarMap`.

    frames: [H, W] or [N, H, W] detector counts (float or integer); N frames are summed.
    Returns float32[n_phi, n_q].

    Specification (all arithmetic in float32, in this order):
    for each polar pixel with top-left source pixel (y0, x0) and fractions (fy, fx), each of the
    four neighbours v00 = F[y0, x0], v01 = F[y0, x0+1], v10 = F[y0+1, x0], v11 = F[y0+1, x0+1] is the
    float32 sum over the N frames (n = 0, 1, … in order) of the pixel, with pixels outside the frame
    and non-finite pixels counting as 0; then

        top = v00·(1 − fx) + v01·fx,  bottom = v10·(1 − fx) + v11·fx,  out = top·(1 − fy) + bottom·fy.

    Undefined map positions carry y0 = x0 = −2, so every neighbour is outside and the result is 0.
    """
    stack = as_frame_stack(frames, pmap.frame_shape)
    out = check_out(out, pmap.shape)
    n, h, w = stack.shape
    nonfinite = 0
    corners = []
    for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        yy = pmap.y0.astype(np.int64) + dy
        xx = pmap.x0.astype(np.int64) + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = np.where(ok, yy * w + xx, 0)
        acc = np.zeros(pmap.shape, np.float32)
        for k in range(n):
            v = stack[k].reshape(-1)[flat].astype(np.float32)
            bad = ~np.isfinite(v)
            if bad.any():
                nonfinite += int((bad & ok).sum())
                v[bad] = 0.0
            acc += np.where(ok, v, np.float32(0.0))
        corners.append(acc)
    v00, v01, v10, v11 = corners
    one = np.float32(1.0)
    fx, fy = pmap.fx, pmap.fy
    top = v00 * (one - fx) + v01 * fx
    bottom = v10 * (one - fx) + v11 * fx
    out[...] = top * (one - fy) + bottom * fy
    if stack.dtype.kind == "f":
        warn_nonfinite(nonfinite, "polar_remap")
    return out
