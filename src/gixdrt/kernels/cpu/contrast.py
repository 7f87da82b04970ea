"""Numba CPU fast path of CLAHE (OpenCV semantics) and of the published contrast chain.

Same signatures and results as :mod:`gixdrt.kernels.reference.contrast` (the specification),
bit for bit.

``clahe``: three parallel passes: per-(tile, row-chunk) histograms read straight from the image
(the BORDER_REFLECT_101 extension is an index map, never materialised), per-tile clip + LUT, and
row-parallel bilinear interpolation in float32.

``contrast`` (1×1 tile, 16 bit): with a single tile CLAHE's output is exactly ``lut[u]`` (the four
interpolated LUTs are the same one and ``L·(1−w) + L·w`` rounds back to ``L``; the tests check it
against the reference), and the LUT is non-decreasing, so the final min–max is a LUT as well. The
chain therefore runs as:

1. parallel min/max over the finite pixels (integer min/max of order-preserving keys of the float
   bits, so that the loop vectorises) and a count of the non-finite ones;
2. the 16-bit level ``u`` of every pixel (uint16) and per-thread histograms of ``u`` (``u <=
   trunc(coef)``: ``trunc(coef) + 1`` bins), by thresholds (below) or, for ``log=False`` and for
   images with fewer than 25 pixels per level, per pixel (:func:`_u_direct`: n, log10, u as the
   reference, vectorised);
3. serial merge, clip, LUT and the final min–max folded into one float32 LUT;
4. parallel gather ``out = F[u]``.

**u by thresholds.** For a given image, u is a non-decreasing step function of the float32 pixel
value p. The chain is a sequence of single float32 operations, each correctly rounded and hence
monotone non-decreasing: ``y = p·s`` (s = 1 or 0.5 > 0), ``d = y − vmin·s``, ``n = d / span``
(span > 0), then ``t = coef·n``, ``x = t + 1``, ``a = log10(x)`` (the series below is the correctly
rounded float32 log10 on [1, 65536], checked exhaustively; x ∈ [1, coef + 1] since n ∈ [0, 1]) or
``a = n`` for ``log=False``, then ``r = a − amin``, ``q = r / (amax − amin)``, ``w = coef·q`` and
``u = trunc(w)`` (w ∈ [0, coef]). Non-finite pixels count as vmin. As a is monotone in p, its
extrema over the image are a(vmin) = a(n = 0) and a(vmax) = a(n = 1) (n(vmin) = 0/span = 0,
n(vmax) = span/span = 1 exactly): the predicted extrema are the observed ones, always, so
u(vmin) = 0 and u(vmax) = trunc(coef) = umax (for umax = 0 every u is 0). Hence
``u(p) = #{k : T_k <= p}`` with ``T_k`` the smallest float32 with u ≥ k, k = 1..umax,
vmin < T_1 <= ... <= T_umax <= vmax.

The thresholds (:func:`_thresholds`) are carried back from ``w = k`` one operation at a time: as
every step is monotone, {z : u(z) ≥ k} is [τ, ∞) at each step's input, τ_in = the smallest z with
op(z) ≥ τ_out. For one correctly rounded operation that is the float32 at (or just above) the
real preimage of the midpoint between τ_out and the float below it; it is evaluated in float64,
rounded, and verified by evaluating op there and one float below (a bisection on the float keys is
the safety net, never needed in practice). Vectorised over k (``error_model="numpy"``: division
without Python's zero check, so that the loops vectorise), about 0.04 ms for 5000 thresholds.

The per-pixel pass (:func:`_u_pass`) then needs no log10: a monotone bucket index, the float32 bits
of ``(v·s − vmin·s)·c0 + 1`` shifted right (c0 = coef/span, so that this is about coef·n + 1,
where the thresholds are evenly spread in log x, i.e. in float bits), and per bucket ``lo_b = #{k :
bucket(T_k) < b}``. For v in bucket b, every T_k with bucket(T_k) < b is below v and every T_k with
bucket(T_k) > b above it (bucket is monotone), so ``u(v) = lo_b + #{k : bucket(T_k) = b, T_k <= v}``:
one comparison with ``T_{lo_b + 1}`` when the bucket holds at most one threshold (if it holds none,
that threshold lies beyond the bucket and the comparison is false), a walk up the thresholds
otherwise. Comparisons with the exact float32 thresholds are exact: u is bit-identical to the
per-pixel evaluation (the tests check it on values at and one ulp around every threshold). The grid
is as coarse as leaves at most 1/64 of the threshold gaps narrower than a bucket (≤ 2**17 buckets).
The bucket loop is vectorised; the lookup/comparison/histogram loop is scalar, with unsigned
indices (no negative-index wrap-around code) and two interleaved histograms.

Loops index slices (``pv = p[b0:b1]; pv[j]``), not ``p[b0 + j]``: with a possibly negative index
Numba's wrap-around select turns the unit-stride load into a gather.
"""
from __future__ import annotations

import math
import warnings

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

from gixdrt.errors import DataWarning
from gixdrt.kernels.reference.contrast import (
    _check_out,
    check_clahe_args,
    check_contrast_args,
    clahe_geometry,
    clip_count,
    degenerate,
    reflect101,
)

__all__ = ["clahe", "contrast"]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------
@njit(cache=True)
def _clip_lut(hist, clip, bins, area, lut):
    """Clip ``hist`` (int32/int64[m], counts of bins 0..m-1; bins m..bins-1 are empty) at ``clip``
    (0 = off), redistribute as OpenCV does over ``bins`` bins, and write the LUT values of bins
    0..m-1 (integers in [0, bins-1]) into ``lut`` (float32[m] or the image dtype)."""
    m = hist.size
    batch = 0
    residual = 0
    step = 1
    if clip > 0:
        excess = 0
        for i in range(m):
            if hist[i] > clip:
                excess += hist[i] - clip
        batch = excess // bins
        residual = excess - batch * bins
        if residual > 0:
            step = max(bins // residual, 1)
    scale = np.float32(bins - 1) / np.float32(area)
    top = np.float32(bins - 1)
    s = 0
    next_r = 0  # next bin that receives one of the residual counts (0, step, 2*step, ...)
    left = residual
    for i in range(m):
        c = hist[i]
        if clip > 0:
            c = min(c, clip)
            c += batch
            if left > 0 and i == next_r:
                c += 1
                left -= 1
                next_r += step
        s += c
        v = np.rint(np.float32(s) * scale)
        v = min(v, top)
        lut[i] = v


def _nthreads() -> int:
    return max(1, int(numba.get_num_threads()))


# --------------------------------------------------------------------------------------------
# CLAHE, any tile grid
# --------------------------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _tile_hists(img, rows, cols, tiles_x, th, tw, parts, bins, hist):
    """hist[int32, n_tiles*parts, bins]: part k of tile t counts rows chunk k of the tile."""
    h, w = img.shape
    n_jobs = hist.shape[0]
    for job in prange(n_jobs):
        t = job // parts
        k = job - t * parts
        ty = t // tiles_x
        tx = t - ty * tiles_x
        r0 = ty * th + (k * th) // parts
        r1 = ty * th + ((k + 1) * th) // parts
        c0 = tx * tw
        c1 = c0 + tw
        c_in = min(c1, w)
        for i in range(bins):
            hist[job, i] = 0
        for r in range(r0, r1):
            sr = rows[r]
            for c in range(c0, c_in):
                hist[job, img[sr, c]] += 1
            for c in range(max(c0, w), c1):  # reflected columns right of the image
                hist[job, img[sr, cols[c]]] += 1


@njit(parallel=True, cache=True)
def _tile_luts(hist, parts, clip, bins, area, luts):
    """luts[n_tiles, bins] (the image dtype, like OpenCV: half the cache footprint of float32) from the
    partial histograms."""
    n_tiles = luts.shape[0]
    for t in prange(n_tiles):
        if parts == 1:
            _clip_lut(hist[t], clip, bins, area, luts[t])
        else:
            merged = np.zeros(bins, dtype=np.int64)
            for k in range(parts):
                for i in range(bins):
                    merged[i] += hist[t * parts + k, i]
            _clip_lut(merged, clip, bins, area, luts[t])


@njit(cache=True)
def _axis_weights(n, tile, tiles):
    """Per-coordinate (i1, i2, w2, w1) in float32 arithmetic, as OpenCV's interpolation."""
    inv = np.float32(1.0) / np.float32(tile)
    i1 = np.empty(n, dtype=np.int64)
    i2 = np.empty(n, dtype=np.int64)
    w2 = np.empty(n, dtype=np.float32)
    w1 = np.empty(n, dtype=np.float32)
    for x in range(n):
        f = np.float32(x) * inv - np.float32(0.5)
        a = int(math.floor(f))
        w2[x] = f - np.float32(a)
        w1[x] = np.float32(1.0) - w2[x]
        i1[x] = max(a, 0)
        i2[x] = min(a + 1, tiles - 1)
    return i1, i2, w2, w1


@njit(parallel=True, cache=True)
def _interpolate(img, luts, tiles_x, tiles_y, th, tw, bins, out):
    h, w = img.shape
    x1, x2, xa, xa1 = _axis_weights(w, tw, tiles_x)
    y1, y2, ya_, ya1_ = _axis_weights(h, th, tiles_y)
    top = np.float32(bins - 1)
    for y in prange(h):
        ya = ya_[y]
        ya1 = ya1_[y]
        l1 = y1[y] * tiles_x
        l2 = y2[y] * tiles_x
        for x in range(w):
            v = img[y, x]
            a1 = x1[x]
            a2 = x2[x]
            f11 = np.float32(luts[l1 + a1, v])
            f12 = np.float32(luts[l1 + a2, v])
            f21 = np.float32(luts[l2 + a1, v])
            f22 = np.float32(luts[l2 + a2, v])
            res = (f11 * xa1[x] + f12 * xa[x]) * ya1 + (f21 * xa1[x] + f22 * xa[x]) * ya
            r = np.rint(res)
            if r > top:
                r = top
            elif r < np.float32(0.0):
                r = np.float32(0.0)
            out[y, x] = r


def clahe(
    image: np.ndarray, clip_limit: float, tile_grid: tuple[int, int], out: np.ndarray | None = None
) -> np.ndarray:
    """CLAHE with OpenCV's semantics (see :func:`gixdrt.kernels.reference.contrast.clahe`).

    image: uint8[H, W] or uint16[H, W] NumPy array. tile_grid: (tiles_x, tiles_y).
    out: optional array of the image's dtype and shape. Returns the input dtype, shape [H, W].
    """
    if not isinstance(image, np.ndarray):
        raise TypeError(f"clahe: image must be a NumPy array, got {type(image).__name__}")
    bins, tiles_x, tiles_y, clip_limit = check_clahe_args(image.shape, image.dtype, clip_limit, tile_grid)
    out = _check_out(out, image.shape, image.dtype, "clahe")
    h, w = image.shape
    _, ext_h, ext_w, th, tw = clahe_geometry((h, w), tiles_x, tiles_y)
    if th < 1 or tw < 1:
        raise ValueError(f"clahe: tile grid ({tiles_x}, {tiles_y}) is too fine for an image of shape {(h, w)}")
    rows = reflect101(np.arange(ext_h), h)
    cols = reflect101(np.arange(ext_w), w)
    n_tiles = tiles_x * tiles_y
    # enough (tile, row chunk) jobs to keep every thread busy, at most one per tile row
    parts = max(1, min(th, -(-2 * _nthreads() // n_tiles)))
    hist = np.empty((n_tiles * parts, bins), dtype=np.int32)
    _tile_hists(image, rows, cols, tiles_x, th, tw, parts, bins, hist)
    area = tw * th
    luts = np.empty((n_tiles, bins), dtype=image.dtype)
    _tile_luts(hist, parts, clip_count(clip_limit, area, bins), bins, area, luts)
    dst = out if out is not None else np.empty_like(image)
    _interpolate(image, luts, tiles_x, tiles_y, th, tw, bins, dst)
    return dst


# --------------------------------------------------------------------------------------------
# contrast chain
# --------------------------------------------------------------------------------------------
# ---- float bit patterns (scalar bitcasts, so that loops using them still vectorise) ---------
@intrinsic
def _f32_bits(typingctx, x):
    """The bit pattern of a float32, as an int32."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.int32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, b):
    """The float32 with bit pattern ``b`` (an int32)."""
    if b != types.int32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return types.float32(types.int32), codegen


@intrinsic
def _bits_f64(typingctx, b):
    """The float64 with bit pattern ``b`` (an int64)."""
    if b != types.int64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@intrinsic
def _bit_length(typingctx, x):
    """Number of bits of a non-negative int64 (0 for 0)."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):
        lz = builder.ctlz(args[0], ir.Constant(ir.IntType(1), 0))
        return builder.sub(ir.Constant(ir.IntType(64), 64), lz)

    return types.int64(types.int64), codegen


@njit(cache=True, inline="always")
def _key(f):
    """Order-preserving key of a non-NaN float32: consecutive floats have consecutive keys (−0 is
    the key just below +0); int64, within the int32 range."""
    b = np.int64(_f32_bits(f))
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@njit(cache=True, inline="always")
def _unkey(k):
    """The float32 of key ``k`` (inverse of :func:`_key`)."""
    return _bits_f32(np.int32(k ^ ((k >> 31) & 0x7FFFFFFF)))


@njit(cache=True)
def _extrema(kmins, kmaxs, bad):
    """(vmin, vmax, n_bad) from the per-chunk results of :func:`_minmax` (vmin, vmax meaningless
    when every pixel is non-finite)."""
    return _unkey(kmins.min()), _unkey(kmaxs.max()), bad.sum()


# ---- pass 1: extrema ------------------------------------------------------------------------
@njit(parallel=True, cache=True)
def _minmax(p, nchunks, kmins, kmaxs, bad):
    """Per chunk: min and max key (:func:`_key`) of the finite values, count of the non-finite ones
    (integer min/max, so that the loop vectorises)."""
    size = p.size
    for c in prange(nchunks):
        i0 = (c * size) // nchunks
        i1 = ((c + 1) * size) // nchunks
        pv = p[i0:i1]  # a slice: unit-stride loads (p[i0 + i] would be gathered)
        lo = np.int32(0x7FFFFFFF)
        hi = np.int32(-0x80000000)
        nb = 0
        for i in range(i1 - i0):
            b = _f32_bits(pv[i])
            k = b ^ ((b >> np.int32(31)) & np.int32(0x7FFFFFFF))
            finite = (b & np.int32(0x7F800000)) != np.int32(0x7F800000)
            lo = min(lo, k if finite else np.int32(0x7FFFFFFF))
            hi = max(hi, k if finite else np.int32(-0x80000000))
            nb += np.int32(not finite)
        kmins[c] = lo
        kmaxs[c] = hi
        bad[c] = nb


# ---- log10 ----------------------------------------------------------------------------------
#: log10 for float32 arguments x in [1, 2**17): x = m·2^e with m in [√2/2, √2),
#: log10 x = e·log10(2) + 2/ln(10)·atanh((m−1)/(m+1)) (series, 12 terms), all in float64 without
#: calls or branches so that it vectorises. Rounded to float32 it equals the correctly rounded
#: float32 log10 (NumPy/libm float64 log10, rounded) for every float32 in [1, 65536] (checked
#: exhaustively, 134,217,729 values). The CUDA backend evaluates the same expression.
LOG10_2 = math.log10(2.0)
TWO_OVER_LN10 = 2.0 / math.log(10.0)
SQRT2 = math.sqrt(2.0)
LOG10_SERIES = tuple(1.0 / c for c in (21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0))
LOG10_SERIES_TOP = 1.0 / 23.0


@njit(cache=True, inline="always")
def _halve_to(x, e, k, big, small):
    """x ≥ 2^k → (x·2^-k, e + k) (exact), as a select so that loops vectorise."""
    b = x >= big
    return (x * small if b else x), (e + k if b else e)


@njit(cache=True, inline="always")
def log10_f32(x32):
    """Correctly rounded float32 log10 of a float32 ``x32`` in [1, 2**17) (see LOG10_SERIES)."""
    x = np.float64(x32)
    e = 0.0
    x, e = _halve_to(x, e, 16.0, 65536.0, 1.0 / 65536.0)
    x, e = _halve_to(x, e, 8.0, 256.0, 1.0 / 256.0)
    x, e = _halve_to(x, e, 4.0, 16.0, 1.0 / 16.0)
    x, e = _halve_to(x, e, 2.0, 4.0, 0.25)
    x, e = _halve_to(x, e, 1.0, 2.0, 0.5)
    b = x > SQRT2
    x = x * 0.5 if b else x
    e = e + 1.0 if b else e
    t = (x - 1.0) / (x + 1.0)
    z = t * t
    q = LOG10_SERIES_TOP
    for c in LOG10_SERIES:
        q = q * z + c
    return np.float32(e * LOG10_2 + TWO_OVER_LN10 * (t * q))


#: 10**y for y in [0, 20] in float64 (a guess only, relative error < 1e-13), vectorisable:
#: 2^n · exp(f), |f| ≤ ln(2)/2, Taylor series to f^13.
LOG2_10 = math.log2(10.0)
LN2 = math.log(2.0)
EXP_SERIES = tuple(1.0 / math.factorial(k) for k in range(12, -1, -1))


@njit(cache=True, inline="always")
def _exp10(y):
    y = y if y > 0.0 else 0.0  # noqa: FURB136 (a select that also maps NaN to 0)
    y = y if y < 20.0 else 20.0  # noqa: FURB136
    w = y * LOG2_10
    n = np.floor(w + 0.5)
    f = (w - n) * LN2
    q = 1.0 / 6227020800.0  # 1/13!
    for c in EXP_SERIES:
        q = q * f + c
    return q * _bits_f64((np.int64(n) + 1023) << 52)


@njit(cache=True)
def _a_of(n, coef, use_log):
    """a(n) = log10(coef·n + 1) (float32) or n."""
    if use_log:
        return log10_f32(coef * n + np.float32(1.0))
    return n


# ---- thresholds of u(p) ---------------------------------------------------------------------
#: the steps of the chain p → w = coef·q (u = trunc(w)), each one float32 operation with a constant
_MUL, _DIV, _SUB, _ADD, _LOG = 0, 1, 2, 3, 4


@njit(cache=True, inline="always")
def _op(kind, z, c):
    """One float32 step of the chain; monotone non-decreasing in z (c > 0 for _MUL/_DIV)."""
    if kind == _MUL:
        return z * c
    if kind == _DIV:
        return z / c
    if kind == _SUB:
        return z - c
    if kind == _ADD:
        return z + c
    return log10_f32(z)


@njit(cache=True, inline="always")
def _op_inverse(kind, y, c):
    """The real z with op(z) = y (float64, for a guess)."""
    c64 = np.float64(c)
    if kind == _MUL:
        return y / c64
    if kind == _DIV:
        return y * c64
    if kind == _SUB:
        return y + c64
    if kind == _ADD:
        return y - c64
    return _exp10(y)


@njit(cache=True, inline="always")
def _settle(kind, c, first, hi, t):
    """(z, ok): z the smallest float32 in [first, hi] with op(z) ≥ t, when ok.

    op is one correctly rounded operation, so op(z) ≥ t ⇔ z ∘ c ≥ the midpoint between t and the
    float below it (up to ties): the answer is the float32 nearest to the real preimage of that
    midpoint, g, or the next one. One more evaluation tells which and verifies it,
    op(prev z) < t ≤ op(z); ok is False if that fails (the caller then searches)."""
    mid = 0.5 * (np.float64(_unkey(_key(t) - 1)) + np.float64(t))
    g = np.float32(_op_inverse(kind, mid, c))
    g = g if g >= first else first  # noqa: FURB136 (a select that also maps NaN to first)
    g = g if g <= hi else hi  # noqa: FURB136
    up = _op(kind, g, c) < t
    z2 = _unkey(_key(g) + (1 if up else -1))
    ok = (_op(kind, z2, c) >= t) == up
    return (z2 if up else g), ok


@njit(cache=True, inline="always")
def _settle_all(kind, c, first, hi, tgt, z):
    nbad = 0
    for k in range(tgt.size):
        zk, ok = _settle(kind, c, first, hi, tgt[k])
        z[k] = zk
        nbad += np.int64(not ok)
    return nbad


@njit(cache=True, error_model="numpy")  # plain IEEE division: the loops vectorise
def _stage(kind, c, lo, hi, tgt, z):
    """z[k] = the smallest float32 z in (lo, hi] with op(z) ≥ tgt[k], given op(lo) < tgt[k] ≤ op(hi)."""
    first = _unkey(_key(lo) + 1)
    if kind == _MUL:  # one loop per kind, each vectorised
        nbad = _settle_all(_MUL, c, first, hi, tgt, z)
    elif kind == _DIV:
        nbad = _settle_all(_DIV, c, first, hi, tgt, z)
    elif kind == _SUB:
        nbad = _settle_all(_SUB, c, first, hi, tgt, z)
    elif kind == _ADD:
        nbad = _settle_all(_ADD, c, first, hi, tgt, z)
    else:
        nbad = _settle_all(_LOG, c, first, hi, tgt, z)
    if nbad:
        _stage_search(kind, c, lo, hi, tgt, z)


@njit(cache=True)
def _stage_search(kind, c, lo, hi, tgt, z):
    """Safety net of :func:`_stage` (not met in practice): every z[k] that is not the smallest float32
    with op(z) ≥ tgt[k] is replaced by the one found by bisection on the keys of (lo, hi]."""
    klo = _key(lo)
    khi = _key(hi)
    for k in range(tgt.size):
        t = tgt[k]
        zk = z[k]
        if zk > lo and zk <= hi and _op(kind, zk, c) >= t and _op(kind, _unkey(_key(zk) - 1), c) < t:
            continue
        a = klo  # op(lo) < t
        b = khi  # op(hi) >= t
        while b - a > 1:
            mk = (a + b) >> 1
            if _op(kind, _unkey(mk), c) >= t:
                b = mk
            else:
                a = mk
        z[k] = _unkey(b)


@njit(parallel=True, cache=True, error_model="numpy")
def _thresholds(kinds, consts, lows, highs, nparts, thr):
    """thr[k−1] = T_k, the smallest float32 pixel value p with u(p) ≥ k, k = 1..thr.size.

    Step i of the chain is (kinds[i], consts[i]); lows[i] / highs[i] are the values at its input for
    p = vmin / p = vmax. T_k is carried back from w = k one step at a time (nparts ranges of k in
    parallel)."""
    m = thr.size
    for part in prange(nparts):
        k0 = (part * m) // nparts
        k1 = ((part + 1) * m) // nparts
        tgt = np.empty(k1 - k0, dtype=np.float32)
        z = np.empty(k1 - k0, dtype=np.float32)
        for k in range(k1 - k0):
            tgt[k] = np.float32(k0 + k + 1)
        for i in range(kinds.size - 1, -1, -1):
            _stage(kinds[i], consts[i], lows[i], highs[i], tgt, z)
            tgt, z = z, tgt
        for k in range(k1 - k0):
            thr[k0 + k] = tgt[k]


@njit(cache=True, inline="always")
def _push(kinds, consts, n, kind, c):
    """Append step (kind, c) unless it is the identity (·1, −0, +0)."""
    if (kind == _MUL and c == np.float32(1.0)) or ((kind == _SUB or kind == _ADD) and c == np.float32(0.0)):
        return n
    kinds[n] = kind
    consts[n] = c
    return n + 1


@njit(cache=True)
def _chain(vmin, vmax, s, vs, span, coef, use_log, amin, den):
    """The steps of p → w = coef·q (identities left out) and the values at each step's input for
    p = vmin and p = vmax (lows, highs)."""
    kinds = np.empty(9, dtype=np.int64)
    consts = np.empty(9, dtype=np.float32)
    n = _push(kinds, consts, 0, _MUL, s)
    n = _push(kinds, consts, n, _SUB, vs)
    n = _push(kinds, consts, n, _DIV, span)
    if use_log:
        n = _push(kinds, consts, n, _MUL, coef)
        n = _push(kinds, consts, n, _ADD, np.float32(1.0))
        n = _push(kinds, consts, n, _LOG, np.float32(0.0))
    n = _push(kinds, consts, n, _SUB, amin)
    n = _push(kinds, consts, n, _DIV, den)
    n = _push(kinds, consts, n, _MUL, coef)
    lows = np.empty(n + 1, dtype=np.float32)
    highs = np.empty(n + 1, dtype=np.float32)
    lows[0] = vmin
    highs[0] = vmax
    for i in range(n):
        lows[i + 1] = _op(kinds[i], lows[i], consts[i])
        highs[i + 1] = _op(kinds[i], highs[i], consts[i])
    return kinds[:n], consts[:n], lows, highs


@njit(cache=True)
def _setup(vmin, vmax, coef, use_log):
    """Scalars of the chain for finite extrema vmin < vmax: (s, vs, span, amin, amax, c0), c0 the
    scale of the bucket grid (see :func:`_bucket`)."""
    # span_scale: 1 when vmax − vmin is finite in float32, else 0.5
    s = np.float32(1.0) if np.isfinite(vmax - vmin) else np.float32(0.5)
    vs = vmin * s
    span = vmax * s - vs
    # a is monotone in p, so its extrema over the image are a(vmin) = a(n = 0), a(vmax) = a(n = 1)
    amin = _a_of(np.float32(0.0), coef, use_log)
    amax = _a_of(np.float32(1.0), coef, use_log)
    c0 = np.float32((np.float64(coef) if use_log else 1.0) / np.float64(span))
    if not (c0 > 0 and np.isfinite(c0)):
        c0 = np.float32(3.4028234663852886e38)
    return s, vs, span, amin, amax, c0


# ---- bucket grid ----------------------------------------------------------------------------
_BITS_ONE = 0x3F800000  # float32 1.0
#: most buckets (8 bytes each: 1 MiB, within L2; coef = 65535 needs about this many for few
#: buckets with two thresholds or more)
_MAX_BUCKETS = 2**17
#: the grid is as coarse as leaves at most this fraction of threshold gaps narrower than a bucket
_NARROW_GAPS = 1.0 / 64.0


@njit(cache=True, inline="always")
def _bucket(v, s, vs, c0, shift, top):
    """Bucket of a pixel value v ∈ [vmin, vmax]: the float32 bits of x = (v·s − vs)·c0 + 1 ≥ 1
    (minus those of 1), shifted right; monotone non-decreasing in v (each step is)."""
    x = (v * s - vs) * c0 + np.float32(1.0)
    i = (np.int64(_f32_bits(x)) - _BITS_ONE) >> shift
    return min(max(i, 0), top)


@njit(cache=True)
def _grid(thr_pad, vmax, s, vs, c0, max_buckets):
    """(shift, tab, sp): the bucket grid for thresholds thr_pad[1..m] (thr_pad[m+1] = +inf).

    tab[b] = lo_b = #{k : bucket(T_k) < b} (< 2**16), plus 2**16 when two or more thresholds fall in
    bucket b; sp[b] = T_{lo_b + 1} (+inf past the last threshold)."""
    m = thr_pad.size - 2
    big = np.int64(1) << 62
    keys = np.empty(m, dtype=np.int64)
    for k in range(m):
        keys[k] = _bucket(thr_pad[k + 1], s, vs, c0, 0, big)
    # the coarsest shift with few threshold gaps below the bucket width
    nbits = np.zeros(65, dtype=np.int64)
    for k in range(1, m):
        nbits[_bit_length(keys[k] - keys[k - 1])] += 1
    allowed = np.int64(_NARROW_GAPS * m)
    shift = 0
    narrow = nbits[0]
    while shift < 62 and narrow + nbits[shift + 1] <= allowed:
        shift += 1
        narrow += nbits[shift]
    top = _bucket(vmax, s, vs, c0, 0, big)
    while (top >> shift) >= max_buckets:  # (top >> shift) + 1 buckets
        shift += 1
    top = top >> shift
    cnt = np.zeros(top + 1, dtype=np.int32)
    for k in range(m):
        cnt[keys[k] >> shift] += 1
    tab = np.empty(top + 1, dtype=np.uint32)
    sp = np.empty(top + 1, dtype=np.float32)
    lo = 0
    for b in range(top + 1):
        tab[b] = lo if cnt[b] <= 1 else lo | 0x10000
        sp[b] = thr_pad[lo + 1]
        lo += cnt[b]
    return shift, tab, sp


@njit(cache=True)
def _prepare(vmin, vmax, coef, use_log, nparts, max_buckets):
    """Everything the per-pixel pass needs: (scal, shift, tab, sp, thr_pad), scal = float32[s, vs, c0],
    thr_pad = [−inf, T_1..T_umax, +inf]."""
    s, vs, span, amin, amax, c0 = _setup(vmin, vmax, coef, use_log)
    umax = np.int64(coef)  # u(vmax) = trunc(coef · 1)
    thr_pad = np.empty(umax + 2, dtype=np.float32)
    thr_pad[0] = -np.inf
    thr_pad[umax + 1] = np.inf
    if umax > 0:  # else u = 0 everywhere (amax may equal amin; the reference's uint16(NaN) is 0 too)
        kinds, consts, lows, highs = _chain(vmin, vmax, s, vs, span, coef, use_log, amin, amax - amin)
        _thresholds(kinds, consts, lows, highs, nparts, thr_pad[1:umax + 1])
    shift, tab, sp = _grid(thr_pad, vmax, s, vs, c0, max_buckets)
    scal = np.empty(3, dtype=np.float32)
    scal[0] = s
    scal[1] = vs
    scal[2] = c0
    return scal, shift, tab, sp, thr_pad


# ---- pass 2: u and its histogram ------------------------------------------------------------
_BLOCK = 1024
_LO_MASK = np.uint64(0xFFFF)
_U1 = np.uint64(1)


@njit(parallel=True, cache=True)
def _u_pass(p, vmin, scal, shift, tab, sp, thr_pad, nchunks, u, hist):
    """u per pixel (stored in ``u``) and per-chunk histograms hist[nchunks, umax+1, 2] (two
    interleaved halves, so that equal neighbouring levels do not wait on each other's increment).

    Per block: a vectorised loop for the buckets, then u = lo_b + (v ≥ sp[b]), or, in a bucket with
    two thresholds or more (flag bit 16 of tab[b]), a walk up the thresholds from there
    (thr_pad[k] = T_k, thr_pad[umax+1] = +inf). Non-finite pixels count as vmin. Unsigned indices:
    no negative-index wrap-around code in the scalar loop."""
    s, vs, c0 = scal[0], scal[1], scal[2]
    size = p.size
    top = tab.size - 1
    m = hist.shape[1]
    for c in prange(nchunks):
        i0 = (c * size) // nchunks
        i1 = ((c + 1) * size) // nchunks
        h = hist[c]
        for i in range(m):
            h[i, 0] = 0
            h[i, 1] = 0
        hv = h.reshape(2 * m)
        bbuf = np.empty(_BLOCK, dtype=np.uint32)
        vbuf = np.empty(_BLOCK, dtype=np.float32)
        for b0 in range(i0, i1, _BLOCK):
            nb = min(_BLOCK, i1 - b0)
            pv = p[b0:b0 + nb]  # slices: unit-stride loads and stores (p[b0 + j] would be gathered)
            uv = u[b0:b0 + nb]
            for j in range(nb):
                v = pv[j]
                v = v if np.isfinite(v) else vmin
                vbuf[j] = v
                bbuf[j] = np.uint32(_bucket(v, s, vs, c0, shift, top))
            for j in range(nb):
                b = np.uint64(bbuf[j])
                v = vbuf[j]
                e = np.uint64(tab[b])
                q = (e & _LO_MASK) + np.uint64(v >= sp[b])
                if e > _LO_MASK:
                    while v >= thr_pad[q + _U1]:
                        q += _U1
                uv[j] = np.uint16(q)
                hv[(q << _U1) + np.uint64(j & 1)] += 1


@njit(parallel=True, cache=True, error_model="numpy")
def _u_direct(p, vmin, vmax, coef, use_log, nchunks, u, hist):
    """Same outputs as :func:`_u_pass`, u evaluated per pixel with the reference's operations:
    n, a = log10(coef·n + 1) (or n), u = trunc(coef·(a − amin)/(amax − amin)). For images with
    few pixels per level, where the thresholds would cost more than they save; also the tests'
    per-pixel yardstick. error_model="numpy": IEEE division without a zero check, so that the
    first loop (log10 in float64) vectorises."""
    s, vs, span, amin, amax, _ = _setup(vmin, vmax, coef, use_log)
    den = amax - amin
    umax = np.uint32(hist.shape[1] - 1)  # umax = 0: den may be 0, every u is 0
    one = np.float32(1.0)
    size = p.size
    m = hist.shape[1]
    for c in prange(nchunks):
        i0 = (c * size) // nchunks
        i1 = ((c + 1) * size) // nchunks
        h = hist[c]
        for i in range(m):
            h[i, 0] = 0
            h[i, 1] = 0
        hv = h.reshape(2 * m)
        qbuf = np.empty(_BLOCK, dtype=np.uint32)
        for b0 in range(i0, i1, _BLOCK):
            nb = min(_BLOCK, i1 - b0)
            pv = p[b0:b0 + nb]
            uv = u[b0:b0 + nb]
            for j in range(nb):
                v = pv[j]
                v = v if np.isfinite(v) else vmin
                n = (v * s - vs) / span
                a = log10_f32(coef * n + one) if use_log else n
                q = np.uint32(np.uint16(coef * ((a - amin) / den)))
                qbuf[j] = q if umax > 0 else np.uint32(0)
            for j in range(nb):
                q = np.uint64(qbuf[j])
                uv[j] = np.uint16(q)
                hv[(q << _U1) + np.uint64(j & 1)] += 1


@njit(cache=True)
def _final_lut(hist, clip, area, flut):
    """Merge the per-chunk histograms hist[nchunks, m, 2] (see :func:`_u_pass`), then clip + LUT of
    the 65,536-bin histogram (bins m and above are empty) and the final
    min–max folded in: flut[k] = (lut[k] − lut[u_min]) / (lut[u_max] − lut[u_min]) (float32).
    Returns False when lut[u_min] == lut[u_max] (flut is then all zero)."""
    nchunks, m, _ = hist.shape
    merged = np.zeros(m, dtype=np.int64)
    for c in range(nchunks):
        for i in range(m):
            merged[i] += hist[c, i, 0] + hist[c, i, 1]
    lut = np.empty(m, dtype=np.float32)
    _clip_lut(merged, clip, 65536, area, lut)
    lo = -1
    hi = -1
    for i in range(m):
        if merged[i] > 0:
            if lo < 0:
                lo = i
            hi = i
    cmin = lut[lo]
    cmax = lut[hi]
    if cmax == cmin:
        for i in range(m):
            flut[i] = 0
        return False
    d = cmax - cmin
    for i in range(m):
        flut[i] = (lut[i] - cmin) / d
    return True


@njit(parallel=True, cache=True)
def _gather(u, flut, nchunks, out):
    size = u.size
    for c in prange(nchunks):
        i0 = (c * size) // nchunks
        i1 = ((c + 1) * size) // nchunks
        uv = u[i0:i1]  # slices: unit-stride loads and stores
        ov = out[i0:i1]
        for i in range(i1 - i0):
            ov[i] = flut[uv[i]]


def contrast(
    polar: np.ndarray,
    *,
    coef: float = 5000.0,
    clip_limit: float = 2000.0,
    log: bool = True,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """The published contrast chain (see :func:`gixdrt.kernels.reference.contrast.contrast`).

    polar: float32[H, W] NumPy array. out: optional float32[H, W]. Returns float32[H, W] in [0, 1],
    bit-identical to the reference, with the same DataWarnings for degenerate data.
    """
    if not isinstance(polar, np.ndarray):
        raise TypeError(f"contrast: polar must be a NumPy array, got {type(polar).__name__}")
    coef32, clip_limit = check_contrast_args(polar.shape, polar.dtype, coef, clip_limit)
    out = _check_out(out, polar.shape, np.float32, "contrast")
    if out is None:
        out = np.empty(polar.shape, dtype=np.float32)
    p = np.ascontiguousarray(polar).reshape(-1)
    size = p.size
    nchunks = max(1, min(_nthreads(), size // 4096 or 1))

    kmins = np.empty(nchunks, dtype=np.int64)
    kmaxs = np.empty(nchunks, dtype=np.int64)
    bad = np.empty(nchunks, dtype=np.int64)
    _minmax(p, nchunks, kmins, kmaxs, bad)
    vmin, vmax, n_bad = _extrema(kmins, kmaxs, bad)
    vmin, vmax = (np.float32(vmin), np.float32(vmax)) if n_bad < size else (None, None)
    if degenerate(polar.shape, n_bad, vmin, vmax, stacklevel=3):
        out[...] = 0
        return out

    u, hist = _levels(p, vmin, vmax, coef32, bool(log), nchunks)
    flut = np.empty(hist.shape[1], dtype=np.float32)
    if not _final_lut(hist, clip_count(clip_limit, size, 65536), size, flut):
        warnings.warn("contrast: CLAHE mapped every pixel to one level; returning zeros", DataWarning, stacklevel=2)
        out[...] = 0
        return out
    if out.flags.c_contiguous:
        _gather(u, flut, nchunks, out.reshape(-1))
    else:
        tmp = np.empty(size, dtype=np.float32)
        _gather(u, flut, nchunks, tmp)
        out[...] = tmp.reshape(polar.shape)
    return out


#: a threshold costs about as much as 25 pixels save: below this many pixels per level, u is
#: evaluated per pixel instead (log path; measured on the 2-core development machine)
_DIRECT_BELOW = 25


def _levels(p, vmin, vmax, coef32, use_log, nchunks, direct=None, max_buckets=_MAX_BUCKETS):
    """(u, hist): the 16-bit levels u of the pixels of p (float32[N], finite extrema vmin < vmax,
    np.float32), uint16[N], and their histograms per chunk, int32[nchunks, trunc(coef) + 1, 2]
    (see :func:`_u_pass`). direct: force the per-pixel evaluation (True) or the thresholds (False);
    max_buckets: the most buckets of the grid (tests make it small)."""
    umax = int(coef32)
    u = np.empty(p.size, dtype=np.uint16)
    hist = np.empty((nchunks, umax + 1, 2), dtype=np.int32)
    if direct is None:  # log=False: n per pixel is cheaper than a bucket lookup
        direct = not use_log or p.size < _DIRECT_BELOW * (umax + 1)
    if direct:
        _u_direct(p, vmin, vmax, coef32, use_log, nchunks, u, hist)
        return u, hist
    nparts = max(1, min(_nthreads(), umax // 2048))
    scal, shift, tab, sp, thr_pad = _prepare(vmin, vmax, coef32, use_log, nparts, max_buckets)
    _u_pass(p, vmin, scal, shift, tab, sp, thr_pad, nchunks, u, hist)
    return u, hist
