"""Numba CUDA kernels of CLAHE (OpenCV semantics) and of the published contrast chain.

Same results as :mod:`gixdrt.kernels.reference.contrast` (the specification). Inputs are device
arrays (anything with ``__cuda_array_interface__``, or the simulator's arrays); every kernel runs on
the given stream and nothing image-sized crosses between host and device: extrema, histograms and
LUTs live in small device buffers that the next kernel reads. Scalars derived from the arguments
alone (clip level, LUT scale, tile geometry) are computed on the host.

Differences from the host implementations, by design:

- no :class:`~gixdrt.errors.DataWarning`: whether the data is degenerate (constant, non-finite) is
  known only on the device, and warning would need a device→host synchronisation. The result is the
  same defined one (zeros for constant / all non-finite images, non-finite pixels count as the
  minimum, never NaN);
- float32 products and sums go through ``__fmul_rn`` / ``__fadd_rn`` / ``__fsub_rn`` (and the float64
  log10 series through ``__dmul_rn`` / ``__dadd_rn``): NVVM contracts ``a*b + c`` into FMA by
  default, which would change roundings relative to OpenCV and the reference. The CUDA simulator
  has no libdevice, so there plain operators are used (NumPy scalars, no contraction).

Kernels (block = 256 threads on a GPU, 32 in the simulator, which runs every thread as a Python
thread):

CLAHE: histogram kernel, one block per (tile, row chunk): 8-bit in shared memory, 16-bit with
global atomics, the BORDER_REFLECT_101 extension is an index map; LUT kernel, one block per tile,
each thread owning a contiguous run of bins (clip excess by block reduction, prefix sums of the
per-thread totals, then each thread writes its run of the LUT); interpolation kernel, one thread
per pixel (grid-stride).

Contrast: min/max of the finite pixels and the non-finite count (block reduction + atomics);
``a`` per pixel written into ``out`` with its min/max; histogram of ``u`` (shared memory when
``trunc(coef) + 1 <= 8192`` bins, else global); one LUT block that also folds the final min–max into
the LUT; gather ``out = F[u(a)]`` in place.
"""
from __future__ import annotations

import math

import numpy as np
from numba import config, cuda

from gixdrt.kernels.reference.contrast import (
    check_clahe_args,
    check_contrast_args,
    clahe_geometry,
    clip_count,
)
from gixdrt.published import CONTRAST_COEF, CONTRAST_LIMIT

from ._util import as_device, as_stream, device_out

__all__ = ["clahe", "contrast"]

# ---- log10 ----------------------------------------------------------------------------------
#: log10 for float32 arguments x in [1, 2**17): x = m·2^e with m in [√2/2, √2),
#: log10 x = e·log10(2) + 2/ln(10)·atanh((m−1)/(m+1)) (series, 12 terms), all in float64. Rounded to float32
#: it equals the correctly rounded float32 log10 (NumPy's float64 log10, rounded) for every float32 in
#: [1, 65536] (checked exhaustively, 134,217,729 values), which is what the reference specifies.
LOG10_2 = math.log10(2.0)
TWO_OVER_LN10 = 2.0 / math.log(10.0)
SQRT2 = math.sqrt(2.0)
LOG10_SERIES = tuple(1.0 / c for c in (21.0, 19.0, 17.0, 15.0, 13.0, 11.0, 9.0, 7.0, 5.0, 3.0, 1.0))
LOG10_SERIES_TOP = 1.0 / 23.0

_SIM = bool(config.ENABLE_CUDASIM)
_TPB = 32 if _SIM else 256  # threads per block (shared arrays below are sized for 256)
_SHARED = 256
_SHARED_BINS = 8192  # u histogram in shared memory (32 KiB) up to this many bins
_MAX_BLOCKS = 2 if _SIM else 4096  # grid cap of the grid-stride pixel kernels

# ---------------------------------------------------------------------------------------------
# rounding-exact arithmetic (no FMA contraction)
# ---------------------------------------------------------------------------------------------
if _SIM:

    @cuda.jit(device=True)
    def _fmul(a, b):
        return a * b

    @cuda.jit(device=True)
    def _fadd(a, b):
        return a + b

    @cuda.jit(device=True)
    def _fsub(a, b):
        return a - b

    @cuda.jit(device=True)
    def _dmul(a, b):
        return a * b

    @cuda.jit(device=True)
    def _dadd(a, b):
        return a + b

    @cuda.jit(device=True)
    def _rintf(a):
        return np.rint(a)

else:  # pragma: no cover - needs a GPU
    from numba.cuda import libdevice

    @cuda.jit(device=True)
    def _fmul(a, b):
        return libdevice.fmul_rn(a, b)

    @cuda.jit(device=True)
    def _fadd(a, b):
        return libdevice.fadd_rn(a, b)

    @cuda.jit(device=True)
    def _fsub(a, b):
        return libdevice.fsub_rn(a, b)

    @cuda.jit(device=True)
    def _dmul(a, b):
        return libdevice.dmul_rn(a, b)

    @cuda.jit(device=True)
    def _dadd(a, b):
        return libdevice.dadd_rn(a, b)

    @cuda.jit(device=True)
    def _rintf(a):
        return libdevice.rintf(a)


@cuda.jit(device=True)
def _log10_f32(x32):
    """Correctly rounded float32 log10 of a float32 ``x32`` in [1, 2**17) by the series above (float64)."""
    x = np.float64(x32)
    e = 0.0
    if x >= 65536.0:  # exact range reduction
        x = x * (1.0 / 65536.0)
        e = e + 16.0
    if x >= 256.0:
        x = x * (1.0 / 256.0)
        e = e + 8.0
    if x >= 16.0:
        x = x * (1.0 / 16.0)
        e = e + 4.0
    if x >= 4.0:
        x = x * 0.25
        e = e + 2.0
    if x >= 2.0:
        x = x * 0.5
        e = e + 1.0
    if x > SQRT2:
        x = x * 0.5
        e = e + 1.0
    t = (x - 1.0) / (x + 1.0)
    z = _dmul(t, t)
    q = LOG10_SERIES_TOP
    for c in LOG10_SERIES:
        q = _dadd(_dmul(q, z), c)
    return np.float32(_dadd(_dmul(e, LOG10_2), _dmul(TWO_OVER_LN10, _dmul(t, q))))


@cuda.jit(device=True)
def _reflect101(p, n):
    if n == 1:
        return 0
    period = 2 * (n - 1)
    p = p % period
    return p if p < n else period - p


# ---------------------------------------------------------------------------------------------
# small buffers
# ---------------------------------------------------------------------------------------------
@cuda.jit
def _fill_i32(arr, value):
    for i in range(cuda.grid(1), arr.size, cuda.gridsize(1)):
        arr[i] = value


@cuda.jit
def _init_stats(stats_f, stats_i):
    if cuda.grid(1) == 0:
        stats_f[0] = np.float32(np.inf)  # min of the finite pixels
        stats_f[1] = np.float32(-np.inf)  # max of the finite pixels
        stats_f[2] = np.float32(np.inf)  # min of a
        stats_f[3] = np.float32(-np.inf)  # max of a
        stats_i[0] = 0  # non-finite pixels


# ---------------------------------------------------------------------------------------------
# CLAHE kernels
# ---------------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _tile_chunk(job, parts, tiles_x, th, tw):
    t = job // parts
    k = job - t * parts
    ty = t // tiles_x
    tx = t - ty * tiles_x
    r0 = ty * th + (k * th) // parts
    r1 = ty * th + ((k + 1) * th) // parts
    return t, r0, r1, tx * tw


@cuda.jit
def _hist8_kernel(img, parts, tiles_x, th, tw, hist):
    """8-bit: block per (tile, row chunk), shared 256-bin histogram merged with atomics into hist[t*256+i]."""
    sh = cuda.shared.array(256, np.int32)
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    for i in range(tid, 256, nt):
        sh[i] = 0
    cuda.syncthreads()
    h, w = img.shape
    t, r0, r1, c0 = _tile_chunk(cuda.blockIdx.x, parts, tiles_x, th, tw)
    for j in range(tid, (r1 - r0) * tw, nt):
        r = r0 + j // tw
        c = c0 + j % tw
        sr = r if r < h else _reflect101(r, h)
        sc = c if c < w else _reflect101(c, w)
        cuda.atomic.add(sh, int(img[sr, sc]), 1)
    cuda.syncthreads()
    for i in range(tid, 256, nt):
        if sh[i] != 0:
            cuda.atomic.add(hist, t * 256 + i, sh[i])


@cuda.jit
def _hist16_kernel(img, parts, tiles_x, th, tw, hist):
    """16-bit: block per (tile, row chunk), global atomics into hist[t*65536+i]."""
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    h, w = img.shape
    t, r0, r1, c0 = _tile_chunk(cuda.blockIdx.x, parts, tiles_x, th, tw)
    for j in range(tid, (r1 - r0) * tw, nt):
        r = r0 + j // tw
        c = c0 + j % tw
        sr = r if r < h else _reflect101(r, h)
        sc = c if c < w else _reflect101(c, w)
        cuda.atomic.add(hist, t * 65536 + int(img[sr, sc]), 1)


@cuda.jit(device=True)
def _clipped(hcount, i, clip, batch, residual, step):
    c = hcount
    if clip > 0:
        c = min(c, clip)
        c += batch
        if residual > 0 and i % step == 0 and i // step < residual:
            c += 1
    return c


@cuda.jit
def _lut_kernel(hist, m, clip, bins, scale, luts, fold):
    """One block per tile t: hist[t*m : (t+1)*m] (bins m..bins-1 empty) → luts[t*m : (t+1)*m] (float32).

    Each thread owns the contiguous bins [tid*chunk, (tid+1)*chunk). fold: also replace the LUT by
    (lut − lut[u_min]) / (lut[u_max] − lut[u_min]) (zeros when equal), u_min/u_max the first/last
    non-empty bins (the contrast chain, one tile).
    """
    part = cuda.shared.array(256, np.int64)
    part2 = cuda.shared.array(256, np.int64)
    par = cuda.shared.array(4, np.int64)
    parf = cuda.shared.array(2, np.float32)
    t = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    base = t * m
    chunk = (m + nt - 1) // nt
    i0 = min(tid * chunk, m)
    i1 = min(i0 + chunk, m)

    # 1. clip excess → batch, residual, step
    ex = 0
    if clip > 0:
        for i in range(i0, i1):
            c = hist[base + i]
            if c > clip:
                ex += c - clip
    part[tid] = ex
    cuda.syncthreads()
    if tid == 0:
        tot = 0
        for k in range(nt):
            tot += part[k]
        batch = tot // bins
        residual = tot - batch * bins
        par[0] = batch
        par[1] = residual
        par[2] = max(bins // residual, 1) if residual > 0 else 1
    cuda.syncthreads()
    batch = par[0]
    residual = par[1]
    step = par[2]

    # 2. per-thread totals of the clipped counts, exclusive prefix sums
    s = 0
    for i in range(i0, i1):
        s += _clipped(hist[base + i], i, clip, batch, residual, step)
    part2[tid] = s
    cuda.syncthreads()
    if tid == 0:
        acc = 0
        for k in range(nt):
            v = part2[k]
            part2[k] = acc
            acc += v
    cuda.syncthreads()

    # 3. each thread writes its run of the LUT
    top = np.float32(bins - 1)
    s = part2[tid]
    for i in range(i0, i1):
        s += _clipped(hist[base + i], i, clip, batch, residual, step)
        lv = _rintf(_fmul(np.float32(s), scale))
        luts[base + i] = min(lv, top)
    if not fold:
        return

    # 4. contrast chain: fold the final min–max into the LUT
    lo = m
    hi = -1
    for i in range(i0, i1):
        if hist[base + i] > 0:
            lo = min(lo, i)
            hi = max(hi, i)
    part[tid] = lo
    part2[tid] = hi
    cuda.syncthreads()
    if tid == 0:
        lo = m
        hi = -1
        for k in range(nt):
            lo = min(lo, part[k])
            hi = max(hi, part2[k])
        if hi < 0:  # empty histogram (cannot happen): zeros
            lo = 0
            hi = 0
        parf[0] = luts[base + lo]
        parf[1] = luts[base + hi]
    cuda.syncthreads()
    cmin = parf[0]
    cmax = parf[1]
    d = _fsub(cmax, cmin)
    for i in range(i0, i1):
        if cmax == cmin:
            luts[base + i] = np.float32(0.0)
        else:
            luts[base + i] = _fsub(luts[base + i], cmin) / d


@cuda.jit(device=True)
def _axis(c, inv, tiles):
    f = _fsub(_fmul(np.float32(c), inv), np.float32(0.5))
    i1 = int(math.floor(f))
    w2 = _fsub(f, np.float32(i1))
    w1 = _fsub(np.float32(1.0), w2)
    return max(i1, 0), min(i1 + 1, tiles - 1), w2, w1


@cuda.jit
def _interp_kernel(img, luts, bins, tiles_x, tiles_y, inv_tw, inv_th, out):
    h, w = img.shape
    top = np.float32(bins - 1)
    for i in range(cuda.grid(1), h * w, cuda.gridsize(1)):
        y = i // w
        x = i - y * w
        v = int(img[y, x])
        x1, x2, xa, xa1 = _axis(x, inv_tw, tiles_x)
        y1, y2, ya, ya1 = _axis(y, inv_th, tiles_y)
        r1 = y1 * tiles_x
        r2 = y2 * tiles_x
        t1 = _fadd(_fmul(luts[(r1 + x1) * bins + v], xa1), _fmul(luts[(r1 + x2) * bins + v], xa))
        t2 = _fadd(_fmul(luts[(r2 + x1) * bins + v], xa1), _fmul(luts[(r2 + x2) * bins + v], xa))
        r = _rintf(_fadd(_fmul(t1, ya1), _fmul(t2, ya)))
        out[y, x] = min(r, top)


# ---------------------------------------------------------------------------------------------
# contrast kernels
# ---------------------------------------------------------------------------------------------
@cuda.jit
def _minmax_kernel(p, stats_f, stats_i):
    smin = cuda.shared.array(256, np.float32)
    smax = cuda.shared.array(256, np.float32)
    sbad = cuda.shared.array(256, np.int32)
    h, w = p.shape
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    nb = 0
    for i in range(cuda.grid(1), h * w, cuda.gridsize(1)):
        y = i // w
        v = p[y, i - y * w]
        if math.isfinite(v):
            lo = min(lo, v)
            hi = max(hi, v)
        else:
            nb += 1
    tid = cuda.threadIdx.x
    smin[tid] = lo
    smax[tid] = hi
    sbad[tid] = nb
    cuda.syncthreads()
    if tid == 0:
        for k in range(1, cuda.blockDim.x):
            lo = min(lo, smin[k])
            hi = max(hi, smax[k])
            nb += sbad[k]
        cuda.atomic.min(stats_f, 0, lo)
        cuda.atomic.max(stats_f, 1, hi)
        cuda.atomic.add(stats_i, 0, nb)


@cuda.jit
def _a_kernel(p, stats_f, stats_i, coef, use_log, out):
    """out[y, x] = a = log10(coef·n + 1) (or n); min/max of a into stats_f[2], stats_f[3].

    Degenerate images (no finite pixel, or max == min) give a = 0 everywhere.
    """
    smin = cuda.shared.array(256, np.float32)
    smax = cuda.shared.array(256, np.float32)
    h, w = p.shape
    vmin = stats_f[0]
    vmax = stats_f[1]
    degenerate = stats_i[0] == h * w or not (vmax > vmin)
    s = np.float32(1.0)
    if not degenerate and math.isinf(_fsub(vmax, vmin)):
        s = np.float32(0.5)
    vs = _fmul(vmin, s)
    span = _fsub(_fmul(vmax, s), vs)
    lo = np.float32(np.inf)
    hi = np.float32(-np.inf)
    for i in range(cuda.grid(1), h * w, cuda.gridsize(1)):
        y = i // w
        x = i - y * w
        a = np.float32(0.0)
        if not degenerate:
            v = p[y, x]
            if not math.isfinite(v):
                v = vmin
            n = _fsub(_fmul(v, s), vs) / span
            if use_log:
                a = _log10_f32(_fadd(_fmul(coef, n), np.float32(1.0)))
            else:
                a = n
        out[y, x] = a
        lo = min(lo, a)
        hi = max(hi, a)
    tid = cuda.threadIdx.x
    smin[tid] = lo
    smax[tid] = hi
    cuda.syncthreads()
    if tid == 0:
        for k in range(1, cuda.blockDim.x):
            lo = min(lo, smin[k])
            hi = max(hi, smax[k])
        cuda.atomic.min(stats_f, 2, lo)
        cuda.atomic.max(stats_f, 3, hi)


@cuda.jit(device=True)
def _u_of(a, amin, amax, coef, m):
    if not (amax > amin):
        return 0
    u = int(np.uint16(_fmul(coef, (a - amin) / (amax - amin))))
    return u if u < m else m - 1


@cuda.jit
def _u_hist_kernel(a_img, stats_f, coef, m, hist):
    sh = cuda.shared.array(_SHARED_BINS, np.int32)
    use_shared = m <= _SHARED_BINS
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    if use_shared:
        for i in range(tid, m, nt):
            sh[i] = 0
    cuda.syncthreads()
    amin = stats_f[2]
    amax = stats_f[3]
    h, w = a_img.shape
    for i in range(cuda.grid(1), h * w, cuda.gridsize(1)):
        y = i // w
        u = _u_of(a_img[y, i - y * w], amin, amax, coef, m)
        if use_shared:
            cuda.atomic.add(sh, u, 1)
        else:
            cuda.atomic.add(hist, u, 1)
    cuda.syncthreads()
    if use_shared:
        for i in range(tid, m, nt):
            if sh[i] != 0:
                cuda.atomic.add(hist, i, sh[i])


@cuda.jit
def _gather_kernel(stats_f, coef, m, flut, out):
    """In place: out holds a; out = flut[u(a)]."""
    amin = stats_f[2]
    amax = stats_f[3]
    h, w = out.shape
    for i in range(cuda.grid(1), h * w, cuda.gridsize(1)):
        y = i // w
        x = i - y * w
        out[y, x] = flut[_u_of(out[y, x], amin, amax, coef, m)]


# ---------------------------------------------------------------------------------------------
# host wrappers
# ---------------------------------------------------------------------------------------------
def _grid(n: int) -> int:
    return max(1, min(-(-n // _TPB), _MAX_BLOCKS))


def _sm_count() -> int:
    if _SIM:
        return 1
    return int(cuda.get_current_device().MULTIPROCESSOR_COUNT)  # pragma: no cover - needs a GPU


def clahe(image, clip_limit: float, tile_grid: tuple[int, int], out=None, stream=None):
    """CLAHE with OpenCV's semantics on the device (see :func:`gixdrt.kernels.reference.contrast.clahe`).

    image: device uint8[H, W] or uint16[H, W]. tile_grid: (tiles_x, tiles_y).
    out: optional device array of the image's dtype and shape (allocated on ``stream`` if None).
    stream: Numba stream (or CuPy stream / raw handle); None = default stream. Returns ``out``.
    """
    img = as_device(image, "clahe")
    bins, tiles_x, tiles_y, clip_limit = check_clahe_args(tuple(img.shape), img.dtype, clip_limit, tile_grid)
    st = as_stream(stream)
    h, w = img.shape
    _, _, _, th, tw = clahe_geometry((h, w), tiles_x, tiles_y)
    if th < 1 or tw < 1:
        raise ValueError(f"clahe: tile grid ({tiles_x}, {tiles_y}) is too fine for an image of shape {(h, w)}")
    out = device_out(out, (h, w), img.dtype, st)
    n_tiles = tiles_x * tiles_y
    area = tw * th
    parts = max(1, min(th, -(-2 * _sm_count() // n_tiles)))
    hist = cuda.device_array(n_tiles * bins, dtype=np.int32, stream=st)
    _fill_i32[_grid(hist.size), _TPB, st](hist, 0)
    if bins == 256:
        _hist8_kernel[n_tiles * parts, _TPB, st](img, parts, tiles_x, th, tw, hist)
    else:
        _hist16_kernel[n_tiles * parts, _TPB, st](img, parts, tiles_x, th, tw, hist)
    luts = cuda.device_array(n_tiles * bins, dtype=np.float32, stream=st)
    scale = np.float32(bins - 1) / np.float32(area)
    _lut_kernel[n_tiles, _TPB, st](hist, bins, clip_count(clip_limit, area, bins), bins, scale, luts, False)
    inv_tw = np.float32(1.0) / np.float32(tw)
    inv_th = np.float32(1.0) / np.float32(th)
    _interp_kernel[_grid(h * w), _TPB, st](img, luts, bins, tiles_x, tiles_y, inv_tw, inv_th, out)
    return out


def contrast(polar, *, coef: float = CONTRAST_COEF, clip_limit: float = CONTRAST_LIMIT, log: bool = True, out=None, stream=None):
    """The published contrast chain on the device (see :func:`gixdrt.kernels.reference.contrast.contrast`).

    polar: device float32[H, W]. out: optional device float32[H, W] (allocated on ``stream`` if None);
    it is also the scratch buffer of the chain. Returns ``out``, float32 in [0, 1], never NaN.
    No DataWarning is emitted (it would need a device→host synchronisation); degenerate inputs give
    the same defined result as the host implementations.
    """
    p = as_device(polar, "contrast")
    coef32, clip_limit = check_contrast_args(tuple(p.shape), p.dtype, coef, clip_limit)
    st = as_stream(stream)
    h, w = p.shape
    size = h * w
    out = device_out(out, (h, w), np.float32, st)
    m = int(coef32) + 1  # u <= trunc(coef)
    stats_f = cuda.device_array(4, dtype=np.float32, stream=st)
    stats_i = cuda.device_array(1, dtype=np.int32, stream=st)
    hist = cuda.device_array(m, dtype=np.int32, stream=st)
    flut = cuda.device_array(m, dtype=np.float32, stream=st)
    grid = _grid(size)
    _init_stats[1, 1, st](stats_f, stats_i)
    _fill_i32[_grid(m), _TPB, st](hist, 0)
    _minmax_kernel[grid, _TPB, st](p, stats_f, stats_i)
    _a_kernel[grid, _TPB, st](p, stats_f, stats_i, coef32, bool(log), out)
    _u_hist_kernel[grid, _TPB, st](out, stats_f, coef32, m, hist)
    scale = np.float32(65535) / np.float32(size)
    _lut_kernel[1, _TPB, st](hist, m, clip_count(clip_limit, size, 65536), 65536, scale, flut, True)
    _gather_kernel[grid, _TPB, st](stats_f, coef32, m, flut, out)
    return out
