"""CPU RoIAlign: the C++ kernel ``gixdrt._ext.roi_align_cpu`` (std::thread workers over RoIs)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..reference.roi_align import P2_SCALE, check_valid, pair
from ._ext import ext


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
    threads: int = 0,
) -> np.ndarray:
    """C++ version of :func:`gixdrt.kernels.reference.roi_align.roi_align` (float32 result).

    features: float32[N, C, H, W] and rois: float32[K, 5], C-contiguous NumPy arrays (nothing is converted or
    copied: a wrong dtype or layout raises); out: optional float32[K, C, P, Q]; valid: optional int[N], rows
    j ≥ valid[i] of image i's group are skipped (left as they are). threads: ≤ 0: one per CPU.
    Raises ValueError for a computed RoI with a batch index outside [0, N) (or not its image, with valid) or a
    non-finite coordinate.
    """
    out_h, out_w = pair(output_size, "roi_align: output_size", int)
    scale_y, scale_x = pair(spatial_scale, "roi_align: spatial_scale")
    if valid is not None:
        n, k = np.shape(features)[0], np.shape(rois)[0]
        valid = np.ascontiguousarray(check_valid(valid, n, k), np.int32)
    return ext().roi_align_cpu(
        features, rois, out_h, out_w, scale_y, scale_x, int(sampling_ratio), bool(aligned),
        threads=int(threads), out=out, valid=valid,
    )  # fmt: skip
