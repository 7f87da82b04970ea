"""Naive float64 references of the detector's box operations: the specification the fast kernels are checked against.

Deliberately slow and literal (Python loops, one sample at a time), NumPy only: no PyTorch needed, so the
Numba/CUDA kernels and the torch ops in :mod:`gixdrt.model.ops` can all be tested against the same code.
The semantics are those of torchvision's CPU kernels (``nms``, ``roi_align``) and ``BoxCoder.decode``,
written here from their documented behaviour:

- boxes are (x0, y0, x1, y1), areas have no "+1";
- NMS is greedy in order of decreasing score (ties: lower index first), and a box is suppressed when its IoU
  with a kept box is strictly greater than the threshold;
- RoIAlign averages bilinear samples on a regular grid inside each of ``ph × pw`` bins (see
  :func:`roi_align_reference`).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["BBOX_CLIP", "bilinear_reference", "decode_boxes_reference", "nms_reference", "roi_align_reference"]

#: upper clamp of the log-size deltas (torchvision's ``log(1000/16)``); there is no lower clamp.
BBOX_CLIP = math.log(1000.0 / 16)


def decode_boxes_reference(deltas, boxes, clip: float = BBOX_CLIP) -> np.ndarray:
    """deltas: [K, 4] (dx, dy, dw, dh), boxes: [K, 4] (x0, y0, x1, y1) → float64[K, 4] decoded boxes (no weights)."""
    d = np.asarray(deltas, np.float64).reshape(-1, 4)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = np.zeros_like(d)
    for k in range(len(d)):
        w = b[k, 2] - b[k, 0]
        h = b[k, 3] - b[k, 1]
        cx = b[k, 0] + 0.5 * w
        cy = b[k, 1] + 0.5 * h
        pcx = d[k, 0] * w + cx
        pcy = d[k, 1] * h + cy
        pw = math.exp(min(d[k, 2], clip)) * w
        ph = math.exp(min(d[k, 3], clip)) * h
        out[k] = (pcx - 0.5 * pw, pcy - 0.5 * ph, pcx + 0.5 * pw, pcy + 0.5 * ph)
    return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    zero = a.dtype.type(0)
    w = max(zero, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(zero, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return float(inter / (area_a + area_b - inter))


def nms_reference(boxes, scores, iou_threshold: float, iou_dtype=np.float64) -> list[int]:
    """Greedy NMS. boxes: [K, 4], scores: [K] → kept indices in order of decreasing score.

    Ties in score keep the lower index first. A box is suppressed when IoU > ``iou_threshold`` with an
    already kept box (IoU = inter / (area_a + area_b − inter); 0/0 = NaN never suppresses). The IoU is
    computed in ``iou_dtype`` (float64 by default; ``np.float32`` reproduces torchvision's fp32 kernel, whose
    IoU can round across the threshold: 1/10 becomes 0.10000000149 > 0.1) and compared as a double.
    """
    b = np.asarray(boxes).astype(iou_dtype).reshape(-1, 4)
    s = np.asarray(scores, np.float64).reshape(-1)
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    suppressed = [False] * len(s)
    keep: list[int] = []
    for a, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        for j in order[a + 1 :]:
            if not suppressed[j] and _iou(b[i], b[j]) > iou_threshold:
                suppressed[j] = True
    return keep


def bilinear_reference(channel_image: np.ndarray, y: float, x: float) -> np.ndarray:
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


def roi_align_reference(
    features,
    rois,
    output_size: int | Sequence[int],
    spatial_scale: float | Sequence[float] = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> np.ndarray:
    """RoIAlign, torchvision semantics, float64 loops.

    features: [N, C, H, W]; rois: [K, 5] rows (batch index, x0, y0, x1, y1) in input coordinates;
    output_size: P or (P, Q); spatial_scale: s, or (s_y, s_x) for anisotropic maps (the published model pools
    P2 with (1/8, 1/4)) → float64[K, C, P, Q].

    Per RoI: start = coordinate·scale − (0.5 if aligned else 0); size = end − start, clamped to ≥ 1 only when
    not aligned; bin = size / P; samples per bin along each axis = ``sampling_ratio`` if > 0 else
    ceil(size / P); sample iy of bin p sits at start + p·bin + (iy + 0.5)·bin / samples; the bin value is the
    sum of its samples divided by max(samples_y · samples_x, 1).
    """
    f = np.asarray(features, np.float64)
    r = np.asarray(rois, np.float64).reshape(-1, 5)
    ph_n, pw_n = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    sy, sx = (spatial_scale, spatial_scale) if np.isscalar(spatial_scale) else tuple(spatial_scale)
    offset = 0.5 if aligned else 0.0
    out = np.zeros((len(r), f.shape[1], ph_n, pw_n))
    for k in range(len(r)):
        img = f[int(r[k, 0])]
        start_w = r[k, 1] * sx - offset
        start_h = r[k, 2] * sy - offset
        roi_w = r[k, 3] * sx - offset - start_w
        roi_h = r[k, 4] * sy - offset - start_h
        if not aligned:
            roi_w = max(roi_w, 1.0)
            roi_h = max(roi_h, 1.0)
        bin_h = roi_h / ph_n
        bin_w = roi_w / pw_n
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / ph_n)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / pw_n)
        count = max(grid_h * grid_w, 1)
        for p in range(ph_n):
            for q in range(pw_n):
                acc = np.zeros(f.shape[1])
                for iy in range(grid_h):
                    y = start_h + p * bin_h + (iy + 0.5) * bin_h / grid_h
                    for ix in range(grid_w):
                        x = start_w + q * bin_w + (ix + 0.5) * bin_w / grid_w
                        acc += bilinear_reference(img, y, x)
                out[k, :, p, q] = acc / count
    return out
