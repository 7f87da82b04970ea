"""CPU (Numba, parallel) versions of the powder plan's kernels: same results as
:mod:`gixdrt.kernels.reference.powder` (the specification).

- ``powder_normalize``: per frame, one parallel pass over row blocks computing x (a table of float32(log1p) for
  integer counts below 2¹⁶, the same values) and a histogram per block (summed afterwards), the median/MAD scan of
  the reference, then one parallel pass writing asinh((x − centre)/scale) (in float32: within 5e-7 of the
  reference's float64);
- ``ring_normalize``: per frame, the classical mask's ring statistics (:mod:`gixdrt.powder.classical`: exact
  median and MAD per ring, parallel over rings), then asinh of each pixel's z-score against its ring;
- ``spot_mask``: one parallel pass;
- ``remove_small_components``: union–find over the raster (each pixel joined to its already-visited neighbours,
  the smaller root wins), component sizes at the roots, one pass to keep the large ones; frames in parallel.
The tile ops move blocks of memory and run their NumPy reference (registered as such).
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..reference.powder import (
    BINS_PER_UNIT,
    MAD_SCALE,
    MAX_LOG,
    MIN_MAD,
    RING_MIN_PIXELS,
    RING_MIN_SCALE,
    _neighbours,
    check_normalize,
    check_ring,
    logit,
)

__all__ = ["powder_normalize", "remove_small_components", "ring_normalize", "spot_mask"]

_ROWS = 32  # rows per histogram block


@njit(cache=True, parallel=True, nogil=True)
def _hist_pass(img, mask, use_mask, r, nb, xbuf, hists, table):
    h, w = img.shape
    nblk = hists.shape[0]
    nt = table.shape[0]
    for b in prange(nblk):
        y0 = b * _ROWS
        y1 = min(y0 + _ROWS, h)
        for i in range(y0, y1):
            for j in range(w):
                v = np.float64(img[i, j])
                if not math.isfinite(v) or (use_mask and mask[i, j] != 0):
                    xbuf[i, j] = np.nan
                    continue
                if v >= 0.0 and v < nt and v == math.floor(v):
                    x = table[int(v)]  # integer counts: the same float32(log1p) from a table
                else:
                    x = np.float32(math.log1p(max(v, 0.0)))
                xbuf[i, j] = x
                q = int(math.floor(np.float64(x) * r))
                if q > nb - 1:
                    q = nb - 1
                hists[b, q] += 1


@njit(cache=True, nogil=True)
def _center_scale(hist, r, min_mad):
    total = 0
    nb = hist.shape[0]
    for q in range(nb):
        total += hist[q]
    if total == 0:
        return 0.0, 1.0, False
    half = total // 2
    c = 0
    m = 0
    for q in range(nb):
        c += hist[q]
        if c > half:
            m = q
            break
    acc = hist[m]
    d = 0
    while acc <= half:
        d += 1
        if m - d >= 0:
            acc += hist[m - d]
        if m + d < nb:
            acc += hist[m + d]
    rf = np.float64(r)
    return (m + 0.5) / rf, MAD_SCALE * max(d / rf, min_mad), True


@njit(cache=True, parallel=True, nogil=True)
def _write_pass(xbuf, centre, scale, out):
    h, w = xbuf.shape
    for i in prange(out.shape[0]):
        for j in range(out.shape[1]):
            if i < h and j < w:
                x = xbuf[i, j]
                if math.isnan(x):
                    out[i, j] = 0.0
                else:
                    # asinh(a) = log(a + √(a² + 1)) in float32: 2× faster than float64 asinh, within 5e-7 of it
                    d = (np.float64(x) - centre) / scale
                    a = np.float32(abs(d))
                    v = math.log(a + math.sqrt(a * a + np.float32(1.0)))
                    out[i, j] = v if d >= 0.0 else -v
            else:
                out[i, j] = 0.0


_LOG1P: list[np.ndarray] = []


def _log1p_table() -> np.ndarray:
    """float32(log1p(v)) for the integers v = 0 … 65535 (16-bit detector counts), computed in float64 once."""
    if not _LOG1P:
        _LOG1P.append(np.log1p(np.arange(65536, dtype=np.float64)).astype(np.float32))
    return _LOG1P[0]


def powder_normalize(images, mask=None, *, out, bins_per_unit: int = BINS_PER_UNIT, max_log: int = MAX_LOG,
                     min_mad: float = MIN_MAD):
    """See :func:`gixdrt.kernels.reference.powder.powder_normalize`."""
    n, h, w, _, _ = check_normalize(images, mask, out, bins_per_unit, max_log)
    r = int(bins_per_unit)
    nb = r * int(max_log)
    use_mask = mask is not None
    m = np.ascontiguousarray(mask) if use_mask else np.zeros((1, 1), np.uint8)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    nblk = -(-h // _ROWS)
    hists = np.zeros((nblk, nb), np.int64)
    xbuf = np.empty((h, w), np.float32)
    for k in range(n):
        hists[...] = 0
        _hist_pass(np.asarray(images[k]), m, use_mask, r, nb, xbuf, hists, _log1p_table())
        centre, scale, ok = _center_scale(hists.sum(axis=0), r, float(min_mad))
        if not ok:
            out[k, 0] = 0
            continue
        _write_pass(xbuf, centre, scale, out[k, 0])
    return out


def ring_normalize(images, *, out, pixels, ptr, channel: int = 1, min_pixels: int = RING_MIN_PIXELS,
                   min_scale: float = RING_MIN_SCALE):
    """See :func:`gixdrt.kernels.reference.powder.ring_normalize`."""
    from ...powder.classical import ring_zscores

    n, h, w = check_ring(images, out, pixels, ptr, channel, min_pixels, min_scale)
    pixels = np.ascontiguousarray(pixels)
    if pixels.dtype not in (np.int32, np.int64):
        pixels = pixels.astype(np.int64)
    ptr = np.ascontiguousarray(ptr, dtype=np.int64)
    for k in range(n):
        ring_zscores(images[k], pixels, ptr, int(min_pixels), float(min_scale), out[k, channel])
    return out


@njit(cache=True, parallel=True, nogil=True)
def _spot_mask(lo, mask, use_mask, thr, out):
    n, h, w = lo.shape
    for i in prange(h):
        for k in range(n):
            for j in range(w):
                out[k, i, j] = np.float64(lo[k, i, j]) > thr and not (use_mask and mask[i, j] != 0)


def spot_mask(log_odds, mask=None, *, out, threshold: float):
    """See :func:`gixdrt.kernels.reference.powder.spot_mask`."""
    if out.shape != log_odds.shape or out.dtype != np.bool_:
        raise ValueError(f"spot_mask: out must be bool{list(log_odds.shape)}, got {out.dtype}{list(out.shape)}")
    use_mask = mask is not None
    m = np.ascontiguousarray(mask) if use_mask else np.zeros((1, 1), np.uint8)
    if m.dtype == np.bool_:
        m = m.view(np.uint8)
    _spot_mask(log_odds, m, use_mask, logit(threshold), out)
    return out


@njit(cache=True, nogil=True)
def _find(parent, a):
    root = a
    while parent[root] != root:
        root = parent[root]
    while parent[a] != root:  # path compression
        nxt = parent[a]
        parent[a] = root
        a = nxt
    return root


@njit(cache=True, nogil=True)
def _components(src, dst, min_size, dys, dxs, parent, size):
    h, w = src.shape
    for i in range(h):
        for j in range(w):
            p = i * w + j
            if not src[i, j]:
                continue
            parent[p] = p
            for t in range(dys.shape[0]):
                y = i + dys[t]
                x = j + dxs[t]
                if y < 0 or x < 0 or x >= w or not src[y, x]:
                    continue
                a = _find(parent, p)
                b = _find(parent, y * w + x)
                if a < b:
                    parent[b] = a
                elif b < a:
                    parent[a] = b
    for i in range(h):
        for j in range(w):
            if src[i, j]:
                size[_find(parent, i * w + j)] += 1
    for i in range(h):
        for j in range(w):
            dst[i, j] = src[i, j] and size[_find(parent, i * w + j)] >= min_size


@njit(cache=True, parallel=True, nogil=True)
def _components_batch(src, dst, min_size, dys, dxs):
    n, h, w = src.shape
    for k in prange(n):
        parent = np.empty(h * w, np.int64)
        size = np.zeros(h * w, np.int64)
        _components(src[k], dst[k], min_size, dys, dxs, parent, size)


def remove_small_components(masks, *, out, min_size: int, connectivity: int = 8):
    """See :func:`gixdrt.kernels.reference.powder.remove_small_components`."""
    if out.shape != masks.shape or out.dtype != np.bool_ or masks.ndim != 3:
        raise ValueError(f"remove_small_components: masks bool[N, H, W] and out alike, got {list(masks.shape)} and "
                         f"{out.dtype}{list(out.shape)}")
    steps = [s for s in _neighbours(connectivity) if s < (0, 0)]  # the neighbours visited before a pixel
    if min_size <= 1:
        out[...] = masks
        return out
    src = np.ascontiguousarray(masks, bool)
    if src is out or np.shares_memory(src, out):
        src = src.copy()
    dys = np.array([s[0] for s in steps], np.int64)
    dxs = np.array([s[1] for s in steps], np.int64)
    _components_batch(src, out, int(min_size), dys, dxs)
    return out
