"""The classical spot mask: GSAS-II's "pixel mask search" idea, written from its description.

Specification (:func:`pixel_mask_search_reference`, NumPy; :func:`pixel_mask_search` is the fast Numba version and
gives identical masks):

1. **Rings.** Pixel p with scattering angle 2θ_p (radians) inside ``tth_range`` = [lo, hi) and below 90° lies at
   ``r_p = distance·tan(2θ_p)/pixel`` pixels from the beam along a flat detector normal to it; its ring is
   ``floor((r_p − r_lo)/width_px)`` with ``r_lo = distance·tan(lo)/pixel``. Rings are thus ``width_px`` (2 by default)
   pixels wide in the radial direction, for an untilted detector exactly, for a tilted one nearly. Pixels outside the
   range get no ring (:func:`ring_ids` gives −1) and are never masked.
2. **Valid pixels.** A pixel takes part when it has a ring, its detector-mask value is 0 (nonzero = excluded, as
   pyFAI) and its value is finite.
3. **Statistics per ring** over its valid pixels, in float64: ``med`` = the median (for an even count the mean of
   the two middle values) and ``mad`` = the median of ``|I − med|``. Rings with fewer than ``min_pixels`` (10) valid
   pixels are skipped: none of their pixels is masked.
4. **Test** (two-sided): a valid pixel is a spot pixel when ``|I − med| > K·mad`` with ``K = n_mad·1.4826`` (n_mad =
   3, 1.4826 makes the MAD a standard deviation for Gaussian noise), evaluated as ``abs(I − med) > K * mad`` in
   float64. With ``mad = 0`` (more than half of the ring's pixels equal) every pixel not equal to the median is
   masked: that is the method as described, kept as is.

The fast version needs a :class:`RingIndex` built once per geometry and detector mask (the pixels of each ring in
one array, ring by ring). Per frame it gathers each ring's values (Numba, parallel over rings) and finds the two order
statistics exactly: for integer values spanning at most 4·n + 1024 (detector ADU, as almost every ring has) from a
histogram (the median from cumulative counts, the MAD by walking outwards from the median, where deviations grow
monotonically on both sides), otherwise by selection (Hoare partitioning) on the values themselves.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .._numba import njit, prange

__all__ = ["MAD_SCALE", "RingIndex", "pixel_mask_search", "pixel_mask_search_reference", "ring_ids"]

MAD_SCALE = 1.4826  # MAD → standard deviation of a Gaussian


def _check_tth(tth: np.ndarray) -> np.ndarray:
    tth = np.asarray(tth)
    if tth.ndim != 2:
        raise ValueError(f"tth must be a 2-D array of 2θ in radians, got shape {tth.shape}")
    return tth


def ring_ids(
    tth: np.ndarray,
    *,
    distance: float,
    pixel: float,
    width_px: float = 2.0,
    tth_range: tuple[float, float] | None = None,
) -> np.ndarray:
    """Ring number of every pixel (int32, same shape as ``tth``; −1 = no ring): step 1 of the specification.

    ``tth`` in radians; ``distance`` and ``pixel`` in the same length unit (metres); ``tth_range`` (lo, hi) in
    radians, default the whole frame."""
    tth = _check_tth(tth)
    if not (distance > 0 and pixel > 0 and width_px > 0):
        raise ValueError("distance, pixel and width_px must be > 0")
    lo, hi = (0.0, math.inf) if tth_range is None else (float(tth_range[0]), float(tth_range[1]))
    if not 0.0 <= lo < hi:
        raise ValueError(f"tth_range must satisfy 0 ≤ lo < hi, got {tth_range!r}")
    hi = min(hi, math.pi / 2)
    t = tth.astype(np.float64, copy=False)
    scale = distance / pixel
    r_lo = scale * math.tan(lo)
    inside = (t >= lo) & (t < hi)
    with np.errstate(invalid="ignore"):
        r = np.where(inside, scale * np.tan(np.where(inside, t, 0.0)), 0.0)
        ids = np.floor((r - r_lo) / width_px)
    ids = np.where(inside & (ids >= 0), ids, -1)
    return ids.astype(np.int32)


def pixel_mask_search_reference(
    image: np.ndarray,
    tth: np.ndarray,
    *,
    distance: float,
    pixel: float,
    mask: np.ndarray | None = None,
    width_px: float = 2.0,
    tth_range: tuple[float, float] | None = None,
    n_mad: float = 3.0,
    min_pixels: int = 10,
) -> np.ndarray:
    """The specification (module docstring): bool[H, W], True = spot pixel. Plain NumPy, one ring at a time."""
    image = np.asarray(image)
    if image.shape != np.shape(tth):
        raise ValueError(f"image shape {image.shape} differs from the 2θ map's {np.shape(tth)}")
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"mask shape {np.shape(mask)} differs from the image's {image.shape}")
    ids = ring_ids(tth, distance=distance, pixel=pixel, width_px=width_px, tth_range=tth_range)
    values = image.astype(np.float64)
    valid = (ids >= 0) & np.isfinite(values)
    if mask is not None:
        valid &= np.asarray(mask) == 0
    k = n_mad * MAD_SCALE
    out = np.zeros(image.shape, bool)
    flat_ids = ids[valid]
    flat_pos = np.flatnonzero(valid)
    flat_val = values.ravel()[flat_pos]
    order = np.argsort(flat_ids, kind="stable")
    flat_ids, flat_pos, flat_val = flat_ids[order], flat_pos[order], flat_val[order]
    starts = np.flatnonzero(np.r_[True, np.diff(flat_ids) != 0]) if flat_ids.size else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], flat_ids.size]
    out_flat = out.ravel()
    for s, e in zip(starts, ends):
        if e - s < min_pixels:
            continue
        v = flat_val[s:e]
        med = np.median(v)
        dev = np.abs(v - med)
        mad = np.median(dev)
        out_flat[flat_pos[s:e][dev > k * mad]] = True
    return out


@dataclass(frozen=True)
class RingIndex:
    """Pixels of each ring, ring by ring: ``pixels[ptr[r]:ptr[r + 1]]`` are the flat indices of ring r's pixels
    (those with a ring and detector-mask value 0), ``shape`` the frame's. Build once per geometry and mask."""

    pixels: np.ndarray  # int32[P] (int64 for frames of 2³¹ pixels or more)
    ptr: np.ndarray  # int64[R + 1]
    shape: tuple[int, int]

    @property
    def n_rings(self) -> int:
        return int(self.ptr.size - 1)

    @classmethod
    def build(
        cls,
        tth: np.ndarray,
        *,
        distance: float,
        pixel: float,
        mask: np.ndarray | None = None,
        width_px: float = 2.0,
        tth_range: tuple[float, float] | None = None,
    ) -> RingIndex:
        """From a 2θ map (radians) and the detector mask (nonzero = excluded); rings as :func:`ring_ids`."""
        ids = ring_ids(tth, distance=distance, pixel=pixel, width_px=width_px, tth_range=tth_range)
        if mask is not None:
            if np.shape(mask) != ids.shape:
                raise ValueError(f"mask shape {np.shape(mask)} differs from the 2θ map's {ids.shape}")
            ids = np.where(np.asarray(mask) == 0, ids, -1)
        flat = ids.ravel()
        pos = np.flatnonzero(flat >= 0)
        r = flat[pos]
        # stable: pixels keep their raster order within a ring (memory locality); 16-bit keys sort by radix, O(P)
        order = np.argsort(r.astype(np.int16) if r.size and r.max() < 2**15 else r, kind="stable")
        pixels = pos[order].astype(np.int32 if ids.size < 2**31 else np.int64)
        n_rings = int(r.max()) + 1 if r.size else 0
        counts = np.bincount(r, minlength=n_rings)
        ptr = np.zeros(n_rings + 1, np.int64)
        np.cumsum(counts, out=ptr[1:])
        return cls(pixels=pixels, ptr=ptr, shape=(int(ids.shape[0]), int(ids.shape[1])))

    @classmethod
    def from_geometry(cls, geometry, mask: np.ndarray | None = None, *, width_px: float = 2.0,
                      tth_range: tuple[float, float] | None = None) -> RingIndex:
        """From a :class:`gixdrt.powder.geometry.PowderGeometry` (pixel = mean of pixel1, pixel2)."""
        return cls.build(geometry.tth(), distance=geometry.dist, pixel=0.5 * (geometry.pixel1 + geometry.pixel2),
                         mask=mask, width_px=width_px, tth_range=tth_range)


@njit(cache=True, nogil=True)
def _select(a, n, k):
    """Rearrange a[:n] so that a[k] is its k-th smallest value and a[:k] ≤ a[k] (Hoare partition, Wirth's
    selection with a median-of-three pivot). Returns a[k]."""
    lo = 0
    hi = n - 1
    while hi > lo:
        mid = (lo + hi) >> 1
        x, y, z = a[lo], a[mid], a[hi]
        if x > y:
            x, y = y, x
        if y > z:
            y = z
            if x > y:
                y = x
        pivot = y
        i = lo
        j = hi
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                t = a[i]
                a[i] = a[j]
                a[j] = t
                i += 1
                j -= 1
        if k <= j:
            hi = j
        elif k >= i:
            lo = i
        else:
            break
    return a[k]


@njit(cache=True, nogil=True)
def _median_inplace(a, n):
    """Median of a[:n] (mean of the two middle values for even n); reorders a[:n]."""
    k = n // 2
    upper = _select(a, n, k)
    if n % 2 == 1:
        return upper
    lower = a[0]
    for i in range(1, k):
        if a[i] > lower:
            lower = a[i]
    return (lower + upper) / 2.0


@njit(cache=True, nogil=True)
def _rank_in_hist(hist, nb, rank):
    """Bin index holding the value of 0-based ``rank`` in sorted order (counts in hist[:nb])."""
    c = 0
    for b in range(nb):
        c += hist[b]
        if c > rank:
            return b
    return nb - 1


@njit(cache=True, nogil=True)
def _hist_median_mad(hist, nb, vmin, n):
    """Median and MAD of integer values counted in hist (value = vmin + bin), exactly as sorting would give:
    the median from the cumulative counts, the MAD by walking outwards from the median (deviations grow
    monotonically on each side), both as the mean of the two middle ranks for even n."""
    k = n // 2
    upper = vmin + _rank_in_hist(hist, nb, k)
    if n % 2 == 1:
        med = np.float64(upper)
    else:
        med = (np.float64(vmin + _rank_in_hist(hist, nb, k - 1)) + np.float64(upper)) / 2.0
    # left: bins with value ≤ med (walking down), right: value > med (walking up)
    left = int(math.floor(med - vmin))
    right = left + 1
    seen = 0
    lower_dev = -1.0
    dev_k = -1.0
    want_lower = n % 2 == 0
    while True:
        take_left = False
        if left >= 0 and right < nb:
            take_left = abs(np.float64(vmin + left) - med) <= abs(np.float64(vmin + right) - med)
        elif left >= 0:
            take_left = True
        if take_left:
            cnt = hist[left]
            d = abs(np.float64(vmin + left) - med)
            left -= 1
        else:
            cnt = hist[right]
            d = abs(np.float64(vmin + right) - med)
            right += 1
        if cnt == 0:
            continue
        if want_lower and lower_dev < 0.0 and seen + cnt > k - 1:
            lower_dev = d
        if seen + cnt > k:
            dev_k = d
            break
        seen += cnt
    if want_lower:
        return med, (lower_dev + dev_k) / 2.0
    return med, dev_k


@njit(cache=True, nogil=True)
def _one_ring(image, pixels, s, e, min_pixels, vals, idx):
    """Median and MAD (float64, exact order statistics) of ring [s, e)'s finite values, gathered into vals/idx
    (length ≥ e − s) → (med, mad, n finite); n < min_pixels: not computed (0, 0)."""
    n = 0
    integral = True
    vmin = np.inf
    vmax = -np.inf
    for q in range(s, e):
        p = pixels[q]
        v = image[p]
        fv = np.float64(v)
        if math.isfinite(fv):
            vals[n] = v
            idx[n] = p
            n += 1
            if fv < vmin:
                vmin = fv
            if fv > vmax:
                vmax = fv
            if fv != math.floor(fv):
                integral = False
    if n < min_pixels:
        return 0.0, 0.0, n
    span = vmax - vmin
    if integral and span <= 4.0 * n + 1024.0 and abs(vmin) < 2.0**52 and abs(vmax) < 2.0**52:
        nb = int(span) + 1
        hist = np.zeros(nb, np.int64)
        base = np.int64(vmin)
        for q in range(n):
            hist[np.int64(np.float64(vals[q])) - base] += 1
        med, mad = _hist_median_mad(hist, nb, base, n)
        return med, mad, n
    work = np.empty(n, image.dtype)
    for q in range(n):
        work[q] = vals[q]
    k = n // 2
    upper = np.float64(_select(work, n, k))
    if n % 2 == 1:
        med = upper
    else:
        lower = work[0]
        for i in range(1, k):
            if work[i] > lower:
                lower = work[i]
        med = (np.float64(lower) + upper) / 2.0
    dev = np.empty(n, np.float64)
    for q in range(n):
        dev[q] = abs(np.float64(vals[q]) - med)
    mad = _median_inplace(dev, n)
    return med, mad, n


@njit(cache=True, parallel=True, nogil=True)
def _ring_pass(image, pixels, ptr, min_pixels, k_mad, min_scale, width, flags, z):
    """Per ring (in parallel): gather the finite values; median and MAD in float64 (a histogram for integer values
    of a narrow span, else selection on the values themselves; both give the exact order statistics, hence the
    reference's values). Then, when ``flags`` is not empty (bool flat [H·W]): flag |I − med| > k_mad·mad (the
    classical mask); when ``z`` is not empty (float32 [≥ H, ≥ width], zeroed by the caller): write
    asinh((I − med)/max(1.4826·mad, min_scale)) (the ring channel,
    :func:`gixdrt.kernels.reference.powder.ring_normalize`; the asinh in float32, within 5e-7 of the reference's). Rings with < min_pixels finite values are skipped."""
    do_flags = flags.size > 0
    do_z = z.shape[0] > 0
    n_rings = ptr.size - 1
    for r in prange(n_rings):
        s = ptr[r]
        e = ptr[r + 1]
        if e - s < min_pixels:
            continue
        vals = np.empty(e - s, image.dtype)
        idx = np.empty(e - s, pixels.dtype)
        med, mad, n = _one_ring(image, pixels, s, e, min_pixels, vals, idx)
        if n < min_pixels:
            continue
        thr = k_mad * mad
        sc = max(MAD_SCALE * mad, min_scale)
        for q in range(n):
            dev = np.float64(vals[q]) - med
            if do_flags and abs(dev) > thr:
                flags[idx[q]] = True
            if do_z:
                p = idx[q]
                y = p // width
                # asinh(a) = log(a + √(a² + 1)) in float32: 2× faster than float64 asinh, within 5e-7 of it
                a = np.float32(abs(dev) / sc)
                v = math.log(a + math.sqrt(a * a + np.float32(1.0)))
                z[y, p - y * width] = v if dev >= 0.0 else -v


def _as_float(flat: np.ndarray) -> np.ndarray:
    """The two compiled variants only: float32 holds 8/16-bit integers exactly; everything else as the specification
    converts it (float64)."""
    if flat.dtype.kind not in "fiu" or flat.dtype.itemsize > 8:
        raise ValueError(f"image must be a real-valued numeric array, got dtype {flat.dtype}")
    if flat.dtype != np.float32:
        exact32 = flat.dtype.kind in "iu" and flat.dtype.itemsize <= 2
        flat = flat.astype(np.float32 if exact32 else np.float64)
    return flat


def ring_zscores(image: np.ndarray, pixels: np.ndarray, ptr: np.ndarray, min_pixels: int, min_scale: float,
                 out: np.ndarray) -> np.ndarray:
    """The ring channel of one frame (:func:`gixdrt.kernels.reference.powder.ring_normalize`) into ``out`` (float32
    [≥ H, ≥ W], zeroed here) from ``image`` [H, W] and a ring index's ``pixels`` / ``ptr``."""
    image = np.asarray(image)
    out[...] = 0
    flat = _as_float(np.ascontiguousarray(image).reshape(-1))
    _ring_pass(flat, pixels, ptr, int(min_pixels), 0.0, float(min_scale), int(image.shape[1]), np.zeros(0, np.bool_),
               out)
    return out


def pixel_mask_search(
    image: np.ndarray,
    index: RingIndex,
    *,
    n_mad: float = 3.0,
    min_pixels: int = 10,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Spot mask of one frame: bool[H, W], True = spot pixel; identical to :func:`pixel_mask_search_reference`
    with the same rings and mask. ``out`` (bool[H, W], C-contiguous) is reused when given."""
    image = np.asarray(image)
    if image.shape != index.shape:
        raise ValueError(f"image shape {image.shape} differs from the ring index's {index.shape}")
    if out is None:
        out = np.zeros(index.shape, bool)
    else:
        if out.shape != index.shape or out.dtype != np.bool_ or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous bool array of the frame's shape")
        out[...] = False
    flat = _as_float(np.ascontiguousarray(image).reshape(-1))
    _ring_pass(flat, index.pixels, index.ptr, int(min_pixels), float(n_mad * MAD_SCALE), 1.0, 1, out.reshape(-1),
               np.zeros((0, 0), np.float32))
    return out
