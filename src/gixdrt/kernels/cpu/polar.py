"""CPU polar remap: the C++ kernel ``gixdrt._ext.polar_remap_cpu`` (parallel over polar rows)."""
from __future__ import annotations

import numpy as np

from .._checks import as_frame_stack, check_out, warn_nonfinite
from ._ext import ext


def polar_remap(frames, pmap, out=None, *, threads: int = 0) -> np.ndarray:
    """Same arguments and result as :func:`gixdrt.kernels.reference.polar.polar_remap`, bit for bit.

    threads: worker threads (≤ 0: one per CPU).
    """
    stack = as_frame_stack(frames, pmap.frame_shape)
    out = check_out(out, pmap.shape)
    y0, x0 = (np.ascontiguousarray(a, np.int32) for a in (pmap.y0, pmap.x0))
    fy, fx = (np.ascontiguousarray(a, np.float32) for a in (pmap.fy, pmap.fx))
    nonfinite = ext().polar_remap_cpu(stack, y0, x0, fy, fx, out, threads=int(threads))
    if stack.dtype.kind == "f":
        warn_nonfinite(int(nonfinite), "polar_remap")
    return out
