"""Device versions of the powder plan's kernels: same results as :mod:`gixdrt.kernels.reference.powder`.

Numba CUDA kernels (device arrays: anything with ``__cuda_array_interface__``, or the simulator's arrays), launched
on the given stream, no host synchronisation:

- ``powder_normalize``: a histogram kernel (global atomics, one histogram per frame), one thread per frame scanning
  its histogram for the centre and scale (as the reference), and a pixel kernel writing asinh((x − centre)/scale)
  over the whole padded output;
- ``spot_mask``: one thread per pixel;
- ``remove_small_components``: union–find with atomic minimum on the parents (each pixel joined to its
  already-visited neighbours; concurrent unions retry until the smaller root is linked), flattening, component sizes
  by atomics at the roots, then the kept pixels. Labels never cross frames.

``ring_normalize`` (per-ring exact medians) runs as PyTorch ops on device tensors: gathers, two stable sorts and
a scatter. ``extract_tiles`` and ``stitch_logits`` only move blocks: PyTorch slicing on device tensors (as
:mod:`gixdrt.kernels.cuda.layout`), on PyTorch's current stream.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import config, cuda

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
from ..reference.powder import stitch_logits as _reference_stitch
from ._util import as_device, as_stream

__all__ = ["extract_tiles", "powder_normalize", "remove_small_components", "ring_normalize", "spot_mask",
           "stitch_logits"]

_SIM = bool(config.ENABLE_CUDASIM)
_TPB = 32 if _SIM else 256
_MAX_BLOCKS = 4 if _SIM else 8192


def _grid(n: int) -> int:
    return max(1, min(-(-n // _TPB), _MAX_BLOCKS))


def _alloc(shape, dtype, stream):
    return cuda.device_array(shape, dtype=dtype) if _SIM else cuda.device_array(shape, dtype=dtype, stream=stream)


# ---- normalisation -----------------------------------------------------------------------------------------------
@cuda.jit
def _zero_2d(arr):
    n, m = arr.shape
    for p in range(cuda.grid(1), n * m, cuda.gridsize(1)):
        k = p // m
        arr[k, p - k * m] = 0


@cuda.jit(device=True)
def _valid_x(img, mask, use_mask, k, i, j):
    v = np.float64(img[k, i, j])
    if not math.isfinite(v):
        return False, np.float32(0.0)
    if use_mask and mask[i, j] != 0:
        return False, np.float32(0.0)
    return True, np.float32(math.log1p(max(v, 0.0)))


@cuda.jit
def _hist_kernel(img, mask, use_mask, r, nb, hist):
    n, h, w = img.shape
    plane = h * w
    for p in range(cuda.grid(1), n * plane, cuda.gridsize(1)):
        k = p // plane
        rem = p - k * plane
        i = rem // w
        j = rem - i * w
        ok, x = _valid_x(img, mask, use_mask, k, i, j)
        if ok:
            q = int(math.floor(np.float64(x) * r))
            if q > nb - 1:
                q = nb - 1
            cuda.atomic.add(hist, (k, q), 1)


@cuda.jit
def _stats_kernel(hist, r, min_mad, stats):
    k = cuda.grid(1)
    if k >= hist.shape[0]:
        return
    nb = hist.shape[1]
    total = 0
    for q in range(nb):
        total += hist[k, q]
    if total == 0:
        stats[k, 0] = 0.0
        stats[k, 1] = 1.0
        stats[k, 2] = 0.0
        return
    half = total // 2
    c = 0
    m = 0
    for q in range(nb):
        c += hist[k, q]
        if c > half:
            m = q
            break
    acc = hist[k, m]
    d = 0
    while acc <= half:
        d += 1
        if m - d >= 0:
            acc += hist[k, m - d]
        if m + d < nb:
            acc += hist[k, m + d]
    rf = np.float64(r)
    stats[k, 0] = (m + 0.5) / rf
    stats[k, 1] = MAD_SCALE * max(d / rf, min_mad)
    stats[k, 2] = 1.0


@cuda.jit
def _write_kernel(img, mask, use_mask, stats, out):
    n, h, w = img.shape
    hp = out.shape[2]
    wp = out.shape[3]
    plane = hp * wp
    for p in range(cuda.grid(1), n * plane, cuda.gridsize(1)):
        k = p // plane
        rem = p - k * plane
        i = rem // wp
        j = rem - i * wp
        val = np.float32(0.0)
        if i < h and j < w and stats[k, 2] != 0.0:
            ok, x = _valid_x(img, mask, use_mask, k, i, j)
            if ok:
                val = np.float32(math.asinh((np.float64(x) - stats[k, 0]) / stats[k, 1]))
        out[k, 0, i, j] = val


def _mask_view(mask, stream):
    if mask is None:
        return _alloc((1, 1), np.uint8, stream), False
    m = as_device(mask, "mask")
    if m.dtype == np.bool_:
        m = m.view(np.uint8) if hasattr(m, "view") else m
    return m, True


def powder_normalize(images: Any, mask: Any = None, *, out: Any, bins_per_unit: int = BINS_PER_UNIT,
                     max_log: int = MAX_LOG, min_mad: float = MIN_MAD, stream: Any = None) -> Any:
    """See :func:`gixdrt.kernels.reference.powder.powder_normalize` (device arrays)."""
    img = as_device(images, "images")
    dst = as_device(out, "out")
    n, h, w, hp, wp = check_normalize(img, mask, dst, bins_per_unit, max_log)
    st = as_stream(stream)
    r = int(bins_per_unit)
    nb = r * int(max_log)
    m, use_mask = _mask_view(mask, st)
    hist = _alloc((n, nb), np.int32, st)
    stats = _alloc((n, 3), np.float64, st)
    _zero_2d[_grid(n * nb), _TPB, st](hist)
    _hist_kernel[_grid(n * h * w), _TPB, st](img, m, use_mask, r, nb, hist)
    _stats_kernel[max(1, -(-n // _TPB)), _TPB, st](hist, r, float(min_mad), stats)
    _write_kernel[_grid(n * hp * wp), _TPB, st](img, m, use_mask, stats, dst)
    return out


# ---- spot mask -----------------------------------------------------------------------------------------------------
@cuda.jit
def _spot_kernel(lo, mask, use_mask, thr, out):
    n, h, w = lo.shape
    plane = h * w
    for p in range(cuda.grid(1), n * plane, cuda.gridsize(1)):
        k = p // plane
        rem = p - k * plane
        i = rem // w
        j = rem - i * w
        keep = np.float64(lo[k, i, j]) > thr
        if use_mask and mask[i, j] != 0:
            keep = False
        out[k, i, j] = keep


def spot_mask(log_odds: Any, mask: Any = None, *, out: Any, threshold: float, stream: Any = None) -> Any:
    """See :func:`gixdrt.kernels.reference.powder.spot_mask` (device arrays)."""
    lo = as_device(log_odds, "log_odds")
    dst = as_device(out, "out")
    if tuple(dst.shape) != tuple(lo.shape) or dst.dtype != np.bool_:
        raise ValueError(f"spot_mask: out must be bool{list(lo.shape)}, got {dst.dtype}{list(dst.shape)}")
    st = as_stream(stream)
    m, use_mask = _mask_view(mask, st)
    _spot_kernel[_grid(int(np.prod(lo.shape))), _TPB, st](lo, m, use_mask, logit(threshold), dst)
    return out


# ---- connected components ----------------------------------------------------------------------------------------
@cuda.jit(device=True)
def _find(parent, a):
    while parent[a] != a:
        a = parent[a]
    return a


@cuda.jit(device=True)
def _union(parent, a, b):
    done = False
    while not done:
        a = _find(parent, a)
        b = _find(parent, b)
        if a < b:
            old = cuda.atomic.min(parent, b, np.int32(a))
            done = old == b
            b = old
        elif b < a:
            old = cuda.atomic.min(parent, a, np.int32(b))
            done = old == a
            a = old
        else:
            done = True


@cuda.jit
def _cc_init(src, parent, size):
    n, h, w = src.shape
    for p in range(cuda.grid(1), n * h * w, cuda.gridsize(1)):
        k = p // (h * w)
        rem = p - k * h * w
        i = rem // w
        parent[p] = p if src[k, i, rem - i * w] else -1
        size[p] = 0


@cuda.jit
def _cc_merge(src, parent, dys, dxs):
    n, h, w = src.shape
    for p in range(cuda.grid(1), n * h * w, cuda.gridsize(1)):
        k = p // (h * w)
        rem = p - k * h * w
        i = rem // w
        j = rem - i * w
        if not src[k, i, j]:
            continue
        for t in range(dys.shape[0]):
            y = i + dys[t]
            x = j + dxs[t]
            if y < 0 or x < 0 or x >= w:
                continue
            if src[k, y, x]:
                _union(parent, p, k * h * w + y * w + x)


@cuda.jit
def _cc_count(parent, size):
    for p in range(cuda.grid(1), parent.shape[0], cuda.gridsize(1)):
        if parent[p] >= 0:
            root = _find(parent, p)
            cuda.atomic.add(size, root, 1)


@cuda.jit
def _cc_write(parent, size, min_size, out):
    n, h, w = out.shape
    for p in range(cuda.grid(1), n * h * w, cuda.gridsize(1)):
        k = p // (h * w)
        rem = p - k * h * w
        i = rem // w
        keep = False
        if parent[p] >= 0:
            keep = size[_find(parent, p)] >= min_size
        out[k, i, rem - i * w] = keep


@cuda.jit
def _copy_bool(src, out):
    n, h, w = out.shape
    for p in range(cuda.grid(1), n * h * w, cuda.gridsize(1)):
        k = p // (h * w)
        rem = p - k * h * w
        i = rem // w
        out[k, i, rem - i * w] = src[k, i, rem - i * w]


def remove_small_components(masks: Any, *, out: Any, min_size: int, connectivity: int = 8, stream: Any = None) -> Any:
    """See :func:`gixdrt.kernels.reference.powder.remove_small_components` (device arrays; ``out`` must not be
    ``masks``)."""
    src = as_device(masks, "masks")
    dst = as_device(out, "out")
    if tuple(dst.shape) != tuple(src.shape) or dst.dtype != np.bool_ or len(src.shape) != 3:
        raise ValueError(f"remove_small_components: masks bool[N, H, W] and out alike, got {list(src.shape)} and "
                         f"{dst.dtype}{list(dst.shape)}")
    steps = [s for s in _neighbours(connectivity) if s < (0, 0)]
    st = as_stream(stream)
    total = int(np.prod(src.shape))
    grid = _grid(total)
    if min_size <= 1:
        _copy_bool[grid, _TPB, st](src, dst)
        return out
    if total >= 2**31:
        raise ValueError("remove_small_components: the cuda implementation takes fewer than 2³¹ pixels per call")
    parent = _alloc(total, np.int32, st)
    size = _alloc(total, np.int32, st)
    dys = cuda.to_device(np.array([s[0] for s in steps], np.int32), stream=st) if not _SIM else \
        cuda.to_device(np.array([s[0] for s in steps], np.int32))
    dxs = cuda.to_device(np.array([s[1] for s in steps], np.int32), stream=st) if not _SIM else \
        cuda.to_device(np.array([s[1] for s in steps], np.int32))
    _cc_init[grid, _TPB, st](src, parent, size)
    _cc_merge[grid, _TPB, st](src, parent, dys, dxs)
    _cc_count[grid, _TPB, st](parent, size)
    _cc_write[grid, _TPB, st](parent, size, int(min_size), dst)
    return out


# ---- tiles (PyTorch slicing on device tensors) ---------------------------------------------------------------------
def extract_tiles(frames, *, out, starts_y, starts_x, stream: Any = None, **_: object):
    """See :func:`gixdrt.kernels.reference.powder.extract_tiles` (PyTorch tensors)."""
    n = int(frames.shape[0])
    t = len(starts_y) * len(starts_x)
    sh, sw = int(out.shape[-2]), int(out.shape[-1])
    if int(out.shape[0]) != n * t:
        raise ValueError(f"extract_tiles: out must be [{n * t}, C, Sh, Sw], got {list(out.shape)}")
    for i in range(n):
        for a, y in enumerate(starts_y):
            for b, x in enumerate(starts_x):
                out[i * t + a * len(starts_x) + b].copy_(frames[i, :, y:y + sh, x:x + sw])
    return out


def stitch_logits(tiles, *, out, starts_y, starts_x, cores_y, cores_x, stream: Any = None):
    """See :func:`gixdrt.kernels.reference.powder.stitch_logits`: the same slicing, on PyTorch tensors (on their
    device, in the current stream)."""
    return _reference_stitch(tiles, out=out, starts_y=starts_y, starts_x=starts_x, cores_y=cores_y,
                             cores_x=cores_x)


# ---- ring channel (PyTorch ops on device tensors) ------------------------------------------------------------------
def _segment_median(values, ring, counts, starts):
    """Per ring, the median of ``values`` (float64, grouped by ``ring``): sort by value, then stably by ring, so
    each ring's values lie sorted in [starts[r], starts[r] + counts[r]); the mean of the two middle ones for an even
    count (rings with no value give 0)."""
    import torch

    order = torch.argsort(values)
    order = order[torch.argsort(ring[order], stable=True)]
    srt = values[order]
    safe = counts.clamp(min=1)
    upper = srt[(starts + safe // 2).clamp(max=max(srt.numel() - 1, 0))] if srt.numel() else torch.zeros_like(
        starts, dtype=values.dtype)
    lower = srt[(starts + (safe - 1) // 2).clamp(max=max(srt.numel() - 1, 0))] if srt.numel() else upper
    med = torch.where(safe % 2 == 1, upper, (lower + upper) / 2.0)
    return torch.where(counts > 0, med, torch.zeros_like(med))


def ring_normalize(images: Any, *, out: Any, pixels: Any, ptr: Any, channel: int = 1,
                   min_pixels: int = RING_MIN_PIXELS, min_scale: float = RING_MIN_SCALE, stream: Any = None) -> Any:
    """See :func:`gixdrt.kernels.reference.powder.ring_normalize`: PyTorch ops on the tensors' device (in the current
    stream): the values of each ring gathered, two stable sorts (by value, then by ring) give the exact medians, the
    same for the absolute deviations, then one scatter of asinh(z) into the channel."""
    import torch

    n, h, w = check_ring(images, out, pixels, ptr, channel, min_pixels, min_scale)
    dev = out.device
    pix = torch.as_tensor(pixels, device=dev).long()
    p = torch.as_tensor(ptr, device=dev).long()
    n_rings = int(p.numel()) - 1
    ring_all = torch.repeat_interleave(torch.arange(n_rings, device=dev), p[1:] - p[:-1])
    ys, xs = pix // w, pix % w
    out[:, channel].zero_()
    for k in range(n):
        v = images[k].reshape(-1)[pix].double()
        fin = torch.isfinite(v)
        v, ring, y, x = v[fin], ring_all[fin], ys[fin], xs[fin]
        counts = torch.bincount(ring, minlength=n_rings)
        starts = torch.cumsum(counts, 0) - counts
        med = _segment_median(v, ring, counts, starts)
        dv = (v - med[ring]).abs()
        mad = _segment_median(dv, ring, counts, starts)
        scale = torch.clamp(MAD_SCALE * mad, min=float(min_scale))
        z = torch.asinh((v - med[ring]) / scale[ring]).float()
        z = torch.where(counts[ring] >= int(min_pixels), z, torch.zeros_like(z))
        out[k, channel, y, x] = z
    return out
