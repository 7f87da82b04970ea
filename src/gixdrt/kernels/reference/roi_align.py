"""RoIAlign, NumPy reference: the specification of the cpu (C++) and cuda kernels.

Deliberately slow and literal (Python loops, one sample at a time, float64). The semantics are those of
torchvision's RoIAlign (average pooling), written from its documented behaviour:

Per RoI (batch index, x0, y0, x1, y1) in input pixels and per axis: start = coordinate·scale − (0.5 if aligned
else 0); size = end − start, clamped to ≥ 1 only when not aligned; bin = size / bins; samples per bin =
``sampling_ratio`` if > 0 else ceil(size / bins); sample i of bin p sits at start + p·bin + (i + 0.5)·bin /
samples; the bin value is the sum of its bilinear samples (:func:`bilinear`) divided by max(samples_y ·
samples_x, 1). The published detector pools 16×16 bins from P2 with the anisotropic scale (y · 1/8, x · 1/4),
adaptive sampling and the legacy ``aligned=False``.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["P2_SCALE", "bilinear", "check_valid", "pair", "roi_align"]

#: the published detector's RoIAlign scale on P2, as (s_y, s_x)
P2_SCALE = (1.0 / 8.0, 1.0 / 4.0)


def pair(value, what: str, cast: type = float) -> tuple[Any, Any]:
    """(y, x) from a number (both) or a pair; ValueError naming ``what`` otherwise."""
    if np.ndim(value) == 0:
        return cast(value), cast(value)
    out = tuple(cast(v) for v in value)
    if len(out) != 2:
        raise ValueError(f"{what} must be a number or a (y, x) pair, got {value!r}")
    return out


def check_valid(valid, n: int, k: int) -> np.ndarray | None:
    """The optional ``valid`` counts as int64[N] clamped to [0, R] (R = K // N rows per image), or None.

    ValueError when valid is not [N] or K is not a multiple of N.
    """
    if valid is None:
        return None
    v = np.asarray(valid)
    if v.shape != (n,):
        raise ValueError(f"roi_align: valid must be [{n}] (one count per image), got shape {list(v.shape)}")
    if n == 0 or k % n:
        raise ValueError(f"roi_align: with valid, the RoIs must be N groups of R rows (K = {k} is not a multiple of N = {n})")
    return np.clip(v.astype(np.int64), 0, k // n)


def bilinear(channel_image: np.ndarray, y: float, x: float) -> np.ndarray:
    """One RoIAlign sample of a [C, H, W] map at (y, x), torchvision semantics, float64 → [C].

    Outside [−1, H] × [−1, W] the sample is 0; coordinates in [−1, 0] clamp to 0; at or beyond the last
    row/column the sample takes that row/column (no interpolation past the edge).
    """
    _, height, width = channel_image.shape
    if y < -1.0 or y > height or x < -1.0 or x > width:
        return np.zeros(channel_image.shape[0])
    y = max(y, 0.0)
    x = max(x, 0.0)
    y_low, x_low = int(y), int(x)
    if y_low >= height - 1:
        y_low = y_high = height - 1
        y = float(y_low)
    else:
        y_high = y_low + 1
    if x_low >= width - 1:
        x_low = x_high = width - 1
        x = float(x_low)
    else:
        x_high = x_low + 1
    ly, lx = y - y_low, x - x_low
    hy, hx = 1.0 - ly, 1.0 - lx
    v = channel_image
    return hy * hx * v[:, y_low, x_low] + hy * lx * v[:, y_low, x_high] + ly * hx * v[:, y_high, x_low] + ly * lx * v[:, y_high, x_high]


def roi_align(
    features,
    rois,
    output_size: int | Sequence[int] = 16,
    spatial_scale: float | Sequence[float] = P2_SCALE,
    sampling_ratio: int = -1,
    aligned: bool = False,
    *,
    out: np.ndarray | None = None,
    valid=None,
    dtype=np.float32,
) -> np.ndarray:
    """RoIAlign forward, torchvision semantics, float64 loops (see the module docstring).

    features: [N, C, H, W]; rois: [K, 5] rows (batch index, x0, y0, x1, y1) in input coordinates;
    output_size: P or (P, Q); spatial_scale: s, or (s_y, s_x) for anisotropic maps.
    valid: optional int[N]: the rows are N groups of R = K // N, row i·R + j belongs to image i (its batch
    index must be i), and rows with j ≥ valid[i] are skipped (left as they are in ``out``, zeros otherwise).
    out: optional C-contiguous array of ``dtype`` and shape [K, C, P, Q], written and returned.
    Returns [K, C, P, Q] in ``dtype`` (float32: the kernels' output; float64: the exact reference).
    """
    f = np.asarray(features, np.float64)
    r = np.asarray(rois, np.float64)
    if f.ndim != 4:
        raise ValueError(f"roi_align: features must be [N, C, H, W], got shape {list(f.shape)}")
    if r.ndim != 2 or r.shape[1] != 5:
        raise ValueError(f"roi_align: rois must be [K, 5] (batch index, x0, y0, x1, y1), got shape {list(r.shape)}")
    ph_n, pw_n = pair(output_size, "roi_align: output_size", int)
    if ph_n < 1 or pw_n < 1:
        raise ValueError(f"roi_align: output size must be ≥ 1 × 1, got {ph_n} × {pw_n}")
    sy, sx = pair(spatial_scale, "roi_align: spatial_scale")
    n_images, channels = f.shape[:2]
    k_rois = len(r)
    counts = check_valid(valid, n_images, k_rois)
    shape = (k_rois, channels, ph_n, pw_n)
    if out is None:
        out = np.zeros(shape, dtype)
    else:
        if not isinstance(out, np.ndarray):
            raise TypeError(f"roi_align: out must be a NumPy array for a host implementation, got {type(out).__name__}")
        if out.dtype != np.dtype(dtype):
            raise TypeError(f"roi_align: out must be {np.dtype(dtype).name}, got {out.dtype}")
        if out.shape != shape:
            raise ValueError(f"roi_align: out must have shape {list(shape)}, got {list(out.shape)}")
    offset = 0.5 if aligned else 0.0
    for k in range(k_rois):
        if counts is not None:
            image, j = divmod(k, k_rois // n_images)
            if j >= counts[image]:
                continue
        b = math.trunc(r[k, 0]) if np.isfinite(r[k, 0]) else -1
        if not (np.isfinite(r[k]).all() and 0 <= b < n_images) or (counts is not None and b != image):
            raise ValueError(
                f"roi_align: rois[{k}] = {tuple(r[k].tolist())} has a batch index outside [0, {n_images}) or a "
                "non-finite coordinate" + ("" if counts is None else " (with valid, row i·R + j must have batch index i)")
            )
        img = f[b]
        start_w = r[k, 1] * sx - offset
        start_h = r[k, 2] * sy - offset
        roi_w = r[k, 3] * sx - offset - start_w
        roi_h = r[k, 4] * sy - offset - start_h
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_h = roi_h / ph_n
        bin_w = roi_w / pw_n
        grid_h = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_h / ph_n), 0)
        grid_w = sampling_ratio if sampling_ratio > 0 else max(math.ceil(roi_w / pw_n), 0)
        count = max(grid_h * grid_w, 1)
        res = np.zeros((channels, ph_n, pw_n))
        for p in range(ph_n):
            for q in range(pw_n):
                acc = np.zeros(channels)
                for iy in range(grid_h):
                    y = start_h + p * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + q * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += bilinear(img, y, x)
                res[:, p, q] = acc / count
        out[k] = res
    return out
