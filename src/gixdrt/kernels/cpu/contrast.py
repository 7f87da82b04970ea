"""CPU CLAHE and contrast chain: the C++ kernels ``gixdrt._ext.clahe_cpu`` and ``gixdrt._ext.contrast_cpu``.

Same signatures and results as :mod:`gixdrt.kernels.reference.contrast` (the specification), bit for bit,
with the same DataWarnings for degenerate data: the arguments are checked and the clip count and tile
geometry computed here with the reference's own functions; the C++ kernels do the pixel work.

``contrast`` evaluates the chain per pixel as the reference does (n, then log10 in double rounded once to
float32, u = uint16 truncation), then the 65,536-bin histogram of u, OpenCV's clip and LUT, and the final
min–max. With a single tile CLAHE's output is exactly ``lut[u]`` (the four interpolated LUTs are the same
one and ``L·(1−w) + L·w`` rounds back to ``L``), so the kernel reads the LUT directly.
"""
from __future__ import annotations

import warnings

import numpy as np

from gixdrt.errors import DataWarning
from gixdrt.kernels.reference.contrast import (
    _check_out,
    check_clahe_args,
    check_contrast_args,
    clahe_geometry,
    clip_count,
    degenerate,
)
from gixdrt.published import CONTRAST_COEF, CONTRAST_LIMIT

from ._ext import ext

__all__ = ["clahe", "contrast", "levels"]


def clahe(
    image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int], out: np.ndarray | None = None, *, threads: int = 0
) -> np.ndarray:
    """CLAHE with OpenCV's semantics (see :func:`gixdrt.kernels.reference.contrast.clahe`).

    image: uint8[H, W] or uint16[H, W] NumPy array. tile_grid: (tiles_x, tiles_y).
    out: optional array of the image's dtype and shape. Returns the input dtype, shape [H, W].
    threads: worker threads (≤ 0: one per CPU).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"clahe: image must be a NumPy array, got {type(image).__name__}")
    bins, tiles_x, tiles_y, clip_limit = check_clahe_args(image.shape, image.dtype, clip_limit, tile_grid)
    out = _check_out(out, image.shape, image.dtype, "clahe")
    h, w = image.shape
    _, _, _, th, tw = clahe_geometry((h, w), tiles_x, tiles_y)
    if th < 1 or tw < 1:
        raise ValueError(f"clahe: tile grid ({tiles_x}, {tiles_y}) is too fine for an image of shape {(h, w)}")
    clip = clip_count(clip_limit, th * tw, bins)
    src = np.ascontiguousarray(image)
    dst = out if out is not None and out.flags.c_contiguous and out.flags.writeable else np.empty_like(src)
    ext().clahe_cpu(src, bins, tiles_x, tiles_y, th, tw, clip, dst, threads=int(threads))
    if out is not None and dst is not out:
        out[...] = dst
        return out
    return dst


def contrast(
    polar: np.ndarray,
    *,
    coef: float = CONTRAST_COEF,
    clip_limit: float = CONTRAST_LIMIT,
    log: bool = True,
    out: np.ndarray | None = None,
    threads: int = 0,
) -> np.ndarray:
    """The published contrast chain (see :func:`gixdrt.kernels.reference.contrast.contrast`).

    polar: float32[H, W] NumPy array. out: optional float32[H, W]. Returns float32[H, W] in [0, 1],
    bit-identical to the reference, with the same DataWarnings for degenerate data.
    threads: worker threads (≤ 0: one per CPU).
    """
    if not isinstance(polar, np.ndarray):
        raise TypeError(f"contrast: polar must be a NumPy array, got {type(polar).__name__}")
    coef32, clip_limit = check_contrast_args(polar.shape, polar.dtype, coef, clip_limit)
    out = _check_out(out, polar.shape, np.float32, "contrast")
    src = np.ascontiguousarray(polar)
    dst = out if out is not None and out.flags.c_contiguous and out.flags.writeable else np.empty(polar.shape, np.float32)
    clip = clip_count(clip_limit, src.size, 65536)
    n_bad, vmin, vmax, one_level = ext().contrast_cpu(src, float(coef32), clip, bool(log), dst, threads=int(threads))
    vmin = None if vmin is None else np.float32(vmin)
    vmax = None if vmax is None else np.float32(vmax)
    # the same warnings, in the same order, as the reference (the kernel has already written zeros)
    if not degenerate(polar.shape, n_bad, vmin, vmax, stacklevel=3) and one_level:
        warnings.warn("contrast: CLAHE mapped every pixel to one level; returning zeros", DataWarning, stacklevel=2)
    if out is not None and dst is not out:
        out[...] = dst
        return out
    return dst


def levels(polar: np.ndarray, *, coef: float = CONTRAST_COEF, log: bool = True, threads: int = 0) -> np.ndarray | None:
    """The chain's 16-bit levels ``u = uint16(coef · n(a))`` of a float32 image (flattened), as the contrast
    kernel computes them (non-finite pixels count as the minimum); None when the image has no two distinct
    finite values. For tests: the reference evaluates the same expression per pixel."""
    coef32, _ = check_contrast_args((1, np.size(polar)), np.asarray(polar).dtype, coef, 0.0)
    return ext().contrast_levels_cpu(np.ascontiguousarray(polar).reshape(-1), float(coef32), bool(log), threads=int(threads))
