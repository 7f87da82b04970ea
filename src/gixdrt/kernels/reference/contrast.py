"""NumPy reference of CLAHE (OpenCV semantics) and of the published contrast chain.

This module is the specification the ``cpu`` and ``cuda`` implementations are tested against. It is
written for reading, not for speed.

CLAHE (``cv2.createCLAHE(clipLimit, tileGridSize=(tiles_x, tiles_y)).apply``), for
``bins = 256`` (uint8) or ``65536`` (uint16):

1. Tiles. If ``W % tiles_x == 0 and H % tiles_y == 0`` the histograms are taken on the image.
   Otherwise the image is extended by BORDER_REFLECT_101 by ``tiles_y - H % tiles_y`` rows at the
   bottom and ``tiles_x - W % tiles_x`` columns at the right. OpenCV quirk, reproduced: when only one
   dimension is not divisible, the other one is still extended by a full ``tiles`` rows/columns.
   Tile size ``(tw, th) = extended size // tiles``.
2. Clip limit (only when ``clip_limit > 0``): ``clip = max(int(clip_limit * tw * th / bins), 1)``
   (double arithmetic, truncation). Every bin above ``clip`` is cut to ``clip``; the excess is
   redistributed: ``excess // bins`` to every bin, then the remainder ``r`` one by one to bins
   ``0, s, 2s, ...`` with ``s = max(bins // r, 1)``.
3. LUT per tile: ``lut[i] = saturate(rint(float32(cumsum[i]) * float32(bins - 1) / (tw * th)))``.
4. Bilinear interpolation between the four nearest tile LUTs, in float32, then ``rint`` and
   saturation.

Contrast chain: see :func:`contrast`.
"""
from __future__ import annotations

import math
import numbers
import warnings

import numpy as np

from gixdrt.errors import DataWarning
from gixdrt.published import CONTRAST_COEF, CONTRAST_LIMIT

__all__ = ["check_clahe_args", "check_contrast_args", "clahe", "clahe_geometry", "clip_count", "contrast"]

_BINS = {np.dtype(np.uint8): 256, np.dtype(np.uint16): 65536}
#: largest clip value OpenCV can represent (an ``int``); a larger one means "no clipping" here.
_INT_MAX = 2**31 - 1


# --------------------------------------------------------------------------------------------
# argument checks shared by the three implementations
# --------------------------------------------------------------------------------------------
def check_clahe_args(shape, dtype, clip_limit, tile_grid) -> tuple[int, int, int, float]:
    """Validate CLAHE arguments; return ``(bins, tiles_x, tiles_y, clip_limit)``.

    shape/dtype: of the image (2-D, uint8 or uint16). tile_grid: ``(tiles_x, tiles_y)``, positive ints.
    Raises TypeError (wrong dtype/type) or ValueError (wrong shape, tile grid, NaN clip limit).
    """
    dtype = np.dtype(dtype)
    if dtype not in _BINS:
        raise TypeError(f"clahe: image dtype must be uint8 or uint16, got {dtype}")
    if len(shape) != 2:
        raise ValueError(f"clahe: image must be 2-D [H, W], got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"clahe: image is empty (shape {tuple(shape)})")
    try:
        tiles_x, tiles_y = tile_grid
    except (TypeError, ValueError):
        raise TypeError(f"clahe: tile_grid must be a pair (tiles_x, tiles_y), got {tile_grid!r}") from None
    for t in (tiles_x, tiles_y):
        if not isinstance(t, numbers.Integral) or isinstance(t, bool):
            raise TypeError(f"clahe: tile_grid entries must be integers, got {tile_grid!r}")
        if t < 1:
            raise ValueError(f"clahe: tile_grid entries must be >= 1, got {tile_grid!r}")
    if not isinstance(clip_limit, numbers.Real) or isinstance(clip_limit, bool):
        raise TypeError(f"clahe: clip_limit must be a real number, got {clip_limit!r}")
    clip_limit = float(clip_limit)
    if math.isnan(clip_limit):
        raise ValueError("clahe: clip_limit is NaN")
    return _BINS[dtype], int(tiles_x), int(tiles_y), clip_limit


def clahe_geometry(shape, tiles_x: int, tiles_y: int) -> tuple[bool, int, int, int, int]:
    """Return ``(extended, ext_h, ext_w, th, tw)`` for an image of ``shape = (H, W)``.

    ``extended`` is False when the tiles divide the image (histograms on the image itself).
    """
    h, w = shape
    if w % tiles_x == 0 and h % tiles_y == 0:
        ext_h, ext_w, extended = h, w, False
    else:  # OpenCV pads both directions as soon as one is not divisible
        ext_h, ext_w, extended = h + tiles_y - h % tiles_y, w + tiles_x - w % tiles_x, True
    return extended, ext_h, ext_w, ext_h // tiles_y, ext_w // tiles_x


def clip_count(clip_limit: float, tile_area: int, bins: int) -> int:
    """Integer clip level of one tile histogram; 0 means no clipping.

    OpenCV: ``max((int)(clipLimit * tileArea / bins), 1)`` when ``clipLimit > 0``. A value beyond the
    range of a C ``int`` overflows in OpenCV (cv2 then clips at 1); here it means "no clipping",
    which is what such a limit asks for (no bin can exceed the tile area anyway).
    """
    if not clip_limit > 0:
        return 0
    c = clip_limit * tile_area / bins
    if c >= _INT_MAX:
        return 0
    return max(int(c), 1)


def reflect101(p: np.ndarray, n: int) -> np.ndarray:
    """BORDER_REFLECT_101 index mapping (``gfedcb|abcdefgh|gfedcba``) of indices ``p`` into ``[0, n)``."""
    p = np.asarray(p, dtype=np.int64).copy()
    if n == 1:
        return np.zeros_like(p)
    period = 2 * (n - 1)
    p = np.mod(p, period)
    return np.where(p < n, p, period - p)


def _check_out(out, shape, dtype, name):
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name}: out must be a NumPy array, got {type(out).__name__}")
    if out.dtype != np.dtype(dtype):
        raise TypeError(f"{name}: out must have dtype {np.dtype(dtype)}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name}: out must have shape {tuple(shape)}, got {out.shape}")
    return out


# --------------------------------------------------------------------------------------------
# CLAHE
# --------------------------------------------------------------------------------------------
def clip_histogram(hist: np.ndarray, clip: int) -> np.ndarray:
    """Clip one tile histogram (int64[bins]) at ``clip`` and redistribute the excess (OpenCV order)."""
    bins = hist.size
    hist = hist.copy()
    if clip <= 0:
        return hist
    excess = int(np.maximum(hist - clip, 0).sum())
    hist = np.minimum(hist, clip)
    batch, residual = divmod(excess, bins)
    hist += batch
    if residual:
        step = max(bins // residual, 1)
        # bins 0, step, 2*step, ... receive one count each until the residual is spent
        idx = np.arange(0, bins, step)[:residual]
        hist[idx] += 1
    return hist


def tile_lut(hist: np.ndarray, tile_area: int) -> np.ndarray:
    """LUT (int64[bins], values in [0, bins-1]) of one clipped tile histogram int64[bins]."""
    bins = hist.size
    scale = np.float32(bins - 1) / np.float32(tile_area)  # float32, like OpenCV's lutScale
    cum = np.cumsum(hist).astype(np.float32)
    return np.clip(np.rint(cum * scale), 0, bins - 1).astype(np.int64)


def interp_weights(n: int, tile: int, tiles: int):
    """Per-coordinate interpolation (index 1, index 2, weight 2, weight 1) along one axis.

    float32 arithmetic: ``f = c * float32(1/tile) - 0.5``; ``i1 = floor(f)``, ``i2 = i1 + 1``,
    ``w2 = f - i1``, ``w1 = 1 - w2``, then ``i1`` clamped to >= 0 and ``i2`` to <= tiles - 1.
    """
    inv = np.float32(1.0) / np.float32(tile)
    f = np.arange(n, dtype=np.float32) * inv - np.float32(0.5)
    i1 = np.floor(f)
    w2 = (f - i1).astype(np.float32)
    w1 = (np.float32(1.0) - w2).astype(np.float32)
    i1 = i1.astype(np.int64)
    i2 = np.minimum(i1 + 1, tiles - 1)
    i1 = np.maximum(i1, 0)
    return i1, i2, w2, w1


def clahe_luts(image: np.ndarray, clip_limit: float, tiles_x: int, tiles_y: int, bins: int) -> np.ndarray:
    """All tile LUTs: int64[tiles_y, tiles_x, bins]."""
    h, w = image.shape
    extended, ext_h, ext_w, th, tw = clahe_geometry((h, w), tiles_x, tiles_y)
    if th < 1 or tw < 1:
        raise ValueError(f"clahe: tile grid ({tiles_x}, {tiles_y}) is too fine for an image of shape {(h, w)}")
    ext = image
    if extended:
        rows = reflect101(np.arange(ext_h), h)
        cols = reflect101(np.arange(ext_w), w)
        ext = image[rows[:, None], cols[None, :]]
    area = tw * th
    clip = clip_count(clip_limit, area, bins)
    luts = np.empty((tiles_y, tiles_x, bins), dtype=np.int64)
    for ty in range(tiles_y):
        for tx in range(tiles_x):
            tile = ext[ty * th:(ty + 1) * th, tx * tw:(tx + 1) * tw]
            hist = np.bincount(tile.ravel(), minlength=bins).astype(np.int64)
            luts[ty, tx] = tile_lut(clip_histogram(hist, clip), area)
    return luts


def clahe(
    image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """CLAHE with OpenCV's semantics.

    image: uint8[H, W] (256 bins) or uint16[H, W] (65,536 bins), NumPy array.
    clip_limit: OpenCV's clipLimit (relative to the mean bin count); <= 0 disables clipping.
    tile_grid: ``(tiles_x, tiles_y)`` as OpenCV's tileGridSize.
    out: optional array of the image's dtype and shape, written and returned.
    Returns uint8/uint16[H, W] (the input dtype).
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"clahe: image must be a NumPy array, got {type(image).__name__}")
    bins, tiles_x, tiles_y, clip_limit = check_clahe_args(image.shape, image.dtype, clip_limit, tile_grid)
    out = _check_out(out, image.shape, image.dtype, "clahe")
    h, w = image.shape
    _, _, _, th, tw = clahe_geometry((h, w), tiles_x, tiles_y)
    luts = clahe_luts(image, clip_limit, tiles_x, tiles_y, bins).astype(np.float32)

    x1, x2, xa, xa1 = interp_weights(w, tw, tiles_x)
    y1, y2, ya, ya1 = interp_weights(h, th, tiles_y)
    v = image.astype(np.int64)
    l11 = luts[y1[:, None], x1[None, :], v]
    l12 = luts[y1[:, None], x2[None, :], v]
    l21 = luts[y2[:, None], x1[None, :], v]
    l22 = luts[y2[:, None], x2[None, :], v]
    top = l11 * xa1[None, :] + l12 * xa[None, :]
    bottom = l21 * xa1[None, :] + l22 * xa[None, :]
    res = top * ya1[:, None] + bottom * ya[:, None]  # all float32
    res = np.clip(np.rint(res), 0, bins - 1).astype(image.dtype)
    if out is None:
        return res
    out[...] = res
    return out


# --------------------------------------------------------------------------------------------
# contrast chain
# --------------------------------------------------------------------------------------------
def check_contrast_args(shape, dtype, coef, clip_limit) -> tuple[np.float32, float]:
    """Validate contrast arguments; return ``(float32 coef, clip_limit)``."""
    if np.dtype(dtype) != np.float32:
        raise TypeError(f"contrast: polar image must be float32, got {np.dtype(dtype)}")
    if len(shape) != 2:
        raise ValueError(f"contrast: polar image must be 2-D [H, W], got shape {tuple(shape)}")
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"contrast: polar image is empty (shape {tuple(shape)})")
    if not isinstance(coef, numbers.Real) or isinstance(coef, bool):
        raise TypeError(f"contrast: coef must be a real number, got {coef!r}")
    c32 = np.float32(coef)
    if not (0.0 < c32 <= 65535.0):
        raise ValueError(f"contrast: coef must lie in (0, 65535] (u = uint16(coef * n)), got {coef!r}")
    if not isinstance(clip_limit, numbers.Real) or isinstance(clip_limit, bool) or math.isnan(clip_limit):
        raise TypeError(f"contrast: clip_limit must be a real number, got {clip_limit!r}")
    return c32, float(clip_limit)


def log10_f32(x: np.ndarray) -> np.ndarray:
    """float32 log10, correctly rounded (computed in float64, rounded once to float32).

    ``np.log10`` on float32 is not portable: with AVX-512 NumPy uses a SIMD routine that is up to
    2 ulp away from the correctly rounded value (on ~40 % of inputs), so the specification fixes
    the correctly rounded value, which every implementation (C++ CPU, CUDA) reproduces.
    """
    return np.log10(x.astype(np.float64)).astype(np.float32)


def span_scale(vmin: np.float32, vmax: np.float32) -> np.float32:
    """1 when ``vmax - vmin`` is finite in float32, else 0.5 (exact rescale that avoids overflow)."""
    with np.errstate(over="ignore"):
        return np.float32(1.0) if np.isfinite(vmax - vmin) else np.float32(0.5)


def degenerate(shape: tuple[int, ...], n_bad: int, vmin, vmax, *, stacklevel: int = 2) -> bool:
    """Warn about degenerate contrast input; True when the chain's result is all zeros.

    n_bad: number of non-finite pixels; vmin/vmax: the finite extrema (None when there is none).
    Shared by the host implementations so that they warn alike.
    """
    size = int(np.prod(shape))
    if n_bad == size:
        warnings.warn(f"contrast: no finite pixel in the {shape} image; returning zeros", DataWarning, stacklevel=stacklevel + 1)
        return True
    if n_bad:
        warnings.warn(
            f"contrast: {n_bad} non-finite pixel(s) (NaN/Inf) treated as the image minimum",
            DataWarning,
            stacklevel=stacklevel + 1,
        )
    if vmax == vmin:
        warnings.warn(f"contrast: constant image (all pixels = {vmin}); returning zeros", DataWarning, stacklevel=stacklevel + 1)
        return True
    return False


def contrast(
    polar: np.ndarray,
    *,
    coef: float = CONTRAST_COEF,
    clip_limit: float = CONTRAST_LIMIT,
    log: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The published contrast chain, in float32 arithmetic.

    polar: float32[H, W] (NumPy). out: optional float32[H, W], written and returned.
    Returns float32[H, W] in [0, 1], never NaN.

    With ``n(v) = (v - min v) / (max v - min v)`` over the whole image:

    - ``a = log10(coef * n(P) + 1)`` (``a = n(P)`` when ``log`` is False); log10 correctly rounded
      to float32 (see :func:`log10_f32`);
    - ``u = uint16(coef * n(a))`` (truncation);
    - ``c = CLAHE(u, clip_limit, 1x1 tile, 65536 bins)``;
    - result ``n(c)``.

    Defined results for degenerate data, each with a :class:`~gixdrt.errors.DataWarning`:
    non-finite pixels (NaN, ±Inf) count as the finite minimum (they end at 0); a constant image
    (all zero included) or an image without any finite pixel gives zeros; if CLAHE maps every pixel
    to one level the result is zeros. If ``max - min`` overflows float32, ``n`` is evaluated on
    values scaled by 0.5 (exact for normal numbers), so no NaN appears.
    """
    if not isinstance(polar, np.ndarray):
        raise TypeError(f"contrast: polar must be a NumPy array, got {type(polar).__name__}")
    coef32, clip_limit = check_contrast_args(polar.shape, polar.dtype, coef, clip_limit)
    out = _check_out(out, polar.shape, np.float32, "contrast")
    if out is None:
        out = np.empty(polar.shape, dtype=np.float32)

    finite = np.isfinite(polar)
    n_bad = int(finite.size - np.count_nonzero(finite))
    vmin = polar[finite].min() if n_bad < finite.size else None
    vmax = polar[finite].max() if n_bad < finite.size else None
    if degenerate(polar.shape, n_bad, vmin, vmax, stacklevel=3):
        out[...] = 0
        return out
    p = np.where(finite, polar, vmin).astype(np.float32)

    one = np.float32(1.0)
    s = span_scale(vmin, vmax)
    n = (p * s - vmin * s) / (vmax * s - vmin * s)  # float32, in [0, 1]
    a = log10_f32(coef32 * n + one) if log else n
    amin, amax = a.min(), a.max()  # amax > amin: n reaches 0 and 1 and both maps are increasing
    u = (coef32 * ((a - amin) / (amax - amin))).astype(np.uint16)
    c = clahe(u, clip_limit, (1, 1)).astype(np.float32)
    cmin, cmax = c.min(), c.max()
    if cmax == cmin:
        warnings.warn("contrast: CLAHE mapped every pixel to one level; returning zeros", DataWarning, stacklevel=2)
        out[...] = 0
        return out
    out[...] = (c - cmin) / (cmax - cmin)
    return out
