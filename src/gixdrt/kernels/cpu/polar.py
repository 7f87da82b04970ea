"""CPU polar remap with masked pixels and hole filling: the C++ kernels ``gixdrt._ext.polar_remap_cpu``
(parallel over polar rows) and ``gixdrt._ext.fill_holes_cpu`` (a pass over images and blocks of columns that
finds each hole's nearest rows that are not holes, then a pass over images and rows that fills).

Same arguments and results as :mod:`gixdrt.kernels.reference.polar`, bit for bit (the extension is compiled
without floating-point contraction). The one-frame path without a masked or flagged neighbour is as fast as the
remap without masks: the flag tests are compile-time constants per frame dtype.
"""
from __future__ import annotations

import numpy as np

from .._checks import EXTREME_VALUE, as_frame_stack, check_mask, check_out, check_saturation, warn_extreme
from ..reference.polar import check_fill_args
from ._ext import ext


def _remap(frames, pmap, mask, saturation, out, masked, threads: int = 0) -> tuple[np.ndarray, int]:
    """polar_remap without the warning: returns (out, number of extreme samples)."""
    stack = as_frame_stack(frames, pmap.frame_shape)
    mask = check_mask(mask, pmap.frame_shape)
    saturation = check_saturation(saturation)
    out = check_out(out, pmap.shape)
    if masked is not None:
        masked = check_out(masked, pmap.shape, np.uint8, "masked")
    y0, x0 = (np.ascontiguousarray(a, np.int32) for a in (pmap.y0, pmap.x0))
    fy, fx = (np.ascontiguousarray(a, np.float32) for a in (pmap.fy, pmap.fx))
    n_extreme = ext().polar_remap_cpu(
        stack, y0, x0, fy, fx, out,
        mask=mask,
        saturation=float("nan") if saturation is None else saturation,
        masked=masked,
        extreme_value=EXTREME_VALUE,
        threads=int(threads),
    )
    return out, int(n_extreme)


def polar_remap(frames, pmap, *, mask=None, saturation=None, out=None, masked=None, threads: int = 0) -> np.ndarray:
    """Same arguments and result as :func:`gixdrt.kernels.reference.polar.polar_remap` (the specification), bit
    for bit, including the codes written into ``masked`` and the extreme-value DataWarning.

    mask: bool or uint8 [H, W] (a bool mask is viewed as uint8, not copied). threads: worker threads (≤ 0: one
    per CPU).
    """
    out, n_extreme = _remap(frames, pmap, mask, saturation, out, masked, threads)
    warn_extreme(n_extreme)
    return out


def fill_holes(polar, masked, *, threads: int = 0) -> np.ndarray:
    """Same as :func:`gixdrt.kernels.reference.polar.fill_holes` (in place, bit for bit); returns ``polar``.

    threads: worker threads (≤ 0: one per CPU).
    """
    images, codes = check_fill_args(polar, masked)
    ext().fill_holes_cpu(images, codes, threads=int(threads))
    return polar
