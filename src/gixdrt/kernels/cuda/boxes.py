"""Proposal-stage box kernels on the device (Numba CUDA): see :mod:`gixdrt.kernels.reference.boxes`.

decode_topk: one block per (image, level) finds the k-th logit by a 4-pass radix select on order-preserving
32-bit keys, gathers the candidates in index order (ties at the k-th value: lowest indices), ranks them
(stable), and decodes; a second kernel compacts the valid boxes per image.
nms_fixed: rank sort by (−score, index) per image, the classic per-block IoU bitmask kernel (64×64 tiles), and
one serial reduction block per image on the device.
decode_final: one block per image scores, decodes and compacts its entries in proposal order (block scans).
All launches are asynchronous on the caller's stream.

On a real GPU NVVM may contract a·b + c into an FMA, so coordinates/IoU can differ from the host paths in the
last bit; the simulator reproduces them exactly.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from .._checks import decode_final_specs, decode_topk_specs, nms_fixed_specs
from ..reference.boxes import (
    BBOX_CLIP,
    check_decode_inputs,
    check_final_inputs,
    check_nms_inputs,
    decode_clip_scalar,
    threshold_below,
)
from ..registry import cudasim
from ._util import as_device, as_stream, device_outs

_TPB = 128  # threads per block of the select/compact kernels (also the scan buffer length)
_NMS_TILE = 64  # boxes per mask tile: one uint64 word per (row, column tile)
_FULL = 0xFFFFFFFF


def _alloc(shape, dtype, stream):
    """An uninitialised device array on ``stream`` (the simulator takes no stream)."""
    return cuda.device_array(shape, dtype) if cudasim() else cuda.device_array(shape, dtype, stream=stream)


@cuda.jit(device=True, inline=True)
def _desc_key(bits):  # pragma: no cover - device code
    """int64 key of an fp32 bit pattern: ascending key = descending value, NaN last, −0 == +0."""
    b = np.int64(bits) & _FULL
    if (b & 0x7FFFFFFF) > 0x7F800000:
        return np.int64(_FULL)
    if b == 0x80000000:  # −0.0 compares equal to +0.0: same key, so ties keep index order
        b = np.int64(0)
    asc = (_FULL - b) if b >= 0x80000000 else (b + 0x80000000)
    return np.int64(_FULL) - asc


_decode_clip = cuda.jit(device=True, inline=True)(decode_clip_scalar)


@cuda.jit(device=True)
def _block_scan(buf, tid):  # pragma: no cover - device code
    """Inclusive prefix sum of buf[:_TPB] in place (Hillis–Steele); every thread of the block must call it."""
    off = 1
    while off < _TPB:
        v = buf[tid - off] if tid >= off else 0
        cuda.syncthreads()
        buf[tid] += v
        cuda.syncthreads()
        off *= 2


@cuda.jit(cache=True)
def _select_decode_kernel(bits, logits, deltas, anchors, starts, k, height, width, clip, min_size,
                          cand, ranked, tmp_boxes, tmp_scores, ok):  # pragma: no cover - device code
    n_levels = starts.shape[0] - 1
    i = cuda.blockIdx.x // n_levels
    lvl = cuda.blockIdx.x % n_levels
    tid = cuda.threadIdx.x
    lo = starts[lvl]
    a = starts[lvl + 1] - lo
    take = min(k, a)
    hist = cuda.shared.array(256, np.int32)
    buf = cuda.shared.array(_TPB, np.int32)
    state = cuda.shared.array(2, np.int64)  # prefix of the k-th key, how many of its ties to take
    if tid == 0:
        state[0] = 0
        state[1] = take
    cuda.syncthreads()
    # radix select of the take-th smallest key, 8 bits per pass from the top
    mask = np.int64(0)
    for p in range(4):
        shift = 24 - 8 * p
        for d in range(tid, 256, _TPB):
            hist[d] = 0
        cuda.syncthreads()
        prefix = state[0]
        for j in range(tid, a, _TPB):
            key = _desc_key(bits[i, lo + j])
            if (key & mask) == prefix:
                cuda.atomic.add(hist, (key >> shift) & 255, 1)
        cuda.syncthreads()
        if tid == 0 and take > 0:
            left = state[1]
            cum = 0
            for d in range(256):
                if cum + hist[d] >= left:
                    state[0] = prefix | (np.int64(d) << shift)
                    state[1] = left - cum
                    break
                cum += hist[d]
        cuda.syncthreads()
        mask |= np.int64(255) << shift
    kth = state[0]
    eq_left = state[1]
    # candidates in index order: keys below the k-th, then its first eq_left ties
    written = 0
    eq_seen = 0
    for base in range(0, a, _TPB):
        j = base + tid
        key = _desc_key(bits[i, lo + j]) if j < a else np.int64(-1)
        is_eq = 1 if (j < a and key == kth) else 0
        buf[tid] = is_eq
        cuda.syncthreads()
        _block_scan(buf, tid)
        eq_before = eq_seen + buf[tid] - is_eq
        eq_total = buf[_TPB - 1]
        cuda.syncthreads()
        sel = 1 if (j < a and take > 0 and (key < kth or (is_eq == 1 and eq_before < eq_left))) else 0
        buf[tid] = sel
        cuda.syncthreads()
        _block_scan(buf, tid)
        if sel == 1:
            cand[i, lvl, written + buf[tid] - 1] = j
        sel_total = buf[_TPB - 1]
        cuda.syncthreads()
        written += sel_total
        eq_seen += eq_total
    cuda.syncthreads()
    # stable rank of each candidate by (key, index)
    for c in range(tid, take, _TPB):
        jc = cand[i, lvl, c]
        kc = _desc_key(bits[i, lo + jc])
        rank = 0
        for c2 in range(take):
            j2 = cand[i, lvl, c2]
            k2 = _desc_key(bits[i, lo + j2])
            if k2 < kc or (k2 == kc and j2 < jc):
                rank += 1
        ranked[i, lvl, rank] = jc
    cuda.syncthreads()
    one = np.float32(1.0)
    fw = np.float32(width)
    fh = np.float32(height)
    for r in range(tid, take, _TPB):
        q = lo + ranked[i, lvl, r]
        x0, y0, x1, y1 = _decode_clip(anchors[q], deltas[i, q], clip, fw, fh)
        pos = lvl * k + r
        tmp_boxes[i, pos, 0] = x0
        tmp_boxes[i, pos, 1] = y0
        tmp_boxes[i, pos, 2] = x1
        tmp_boxes[i, pos, 3] = y1
        tmp_scores[i, pos] = one / (one + math.exp(-logits[i, q]))  # fp32, as torch.sigmoid
        ok[i, pos] = 1 if ((x1 - x0) >= min_size and (y1 - y0) >= min_size) else 0


@cuda.jit(cache=True)
def _compact_kernel(tmp_boxes, tmp_scores, ok, k, boxes, scores, levels, valid):  # pragma: no cover
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    m = ok.shape[1]
    buf = cuda.shared.array(_TPB, np.int32)
    written = 0
    for base in range(0, m, _TPB):
        p = base + tid
        f = ok[i, p] if p < m else 0
        buf[tid] = f
        cuda.syncthreads()
        _block_scan(buf, tid)
        if f == 1:
            c = written + buf[tid] - 1
            for q in range(4):
                boxes[i, c, q] = tmp_boxes[i, p, q]
            scores[i, c] = tmp_scores[i, p]
            levels[i, c] = p // k
        total = buf[_TPB - 1]
        cuda.syncthreads()
        written += total
    for c in range(written + tid, m, _TPB):
        for q in range(4):
            boxes[i, c, q] = 0
        scores[i, c] = 0
        levels[i, c] = -1
    if tid == 0:
        valid[i] = written


def decode_topk(logits, deltas, anchors, level_starts, *, k=1000, height, width, bbox_clip=BBOX_CLIP,
                min_size=1e-3, out=None, stream=None):
    """Device version of :func:`gixdrt.kernels.reference.boxes.decode_topk`.

    logits float32[N, A], deltas float32[N, A, 4], anchors float32[A, 4]: device arrays (never copied);
    level_starts: host ints. Returns device arrays (boxes, scores, levels, valid), allocated (or ``out``, a
    tuple of four device arrays of exactly those shapes and dtypes) and filled asynchronously on ``stream``.
    """
    s = as_stream(stream)
    lg = as_device(logits, "logits")
    dl = as_device(deltas, "deltas")
    an = as_device(anchors, "anchors")
    for name, arr in (("logits", lg), ("deltas", dl), ("anchors", an)):
        if arr.dtype != np.float32:
            raise TypeError(f"decode_topk: {name} must be float32 on the device, got {arr.dtype}")
    n, _, n_levels, starts = check_decode_inputs(lg, dl, an, level_starts, k)
    k = int(k)
    m = n_levels * k
    d_starts = cuda.to_device(starts, stream=s)
    bits = lg.view(np.uint32)
    cand = _alloc((n, n_levels, max(k, 1)), np.int32, stream=s)
    ranked = _alloc((n, n_levels, max(k, 1)), np.int32, stream=s)
    tmp_boxes = _alloc((n, m, 4), np.float32, stream=s)
    tmp_scores = _alloc((n, m), np.float32, stream=s)
    ok = cuda.to_device(np.zeros((n, m), np.int32), stream=s)
    (boxes, scores, levels, valid), result = device_outs(out, decode_topk_specs(n, n_levels, k), "decode_topk", s)
    if n == 0:
        return result
    if n_levels > 0 and k > 0:
        _select_decode_kernel[n * n_levels, _TPB, s](
            bits, lg, dl, an, d_starts, k, height, width, np.float32(bbox_clip), np.float32(min_size),
            cand, ranked, tmp_boxes, tmp_scores, ok,
        )
    _compact_kernel[n, _TPB, s](tmp_boxes, tmp_scores, ok, max(k, 1), boxes, scores, levels, valid)
    return result


@cuda.jit(cache=True)
def _rank_kernel(scores, valid, order):  # pragma: no cover - device code
    """order[i, rank] = e for the valid entries: rank by decreasing score, ties lower index first."""
    i = cuda.blockIdx.y
    e = cuda.blockIdx.x * cuda.blockDim.x + cuda.threadIdx.x
    m = scores.shape[1]
    v = min(max(valid[i], 0), m)
    if e >= v:
        return
    se = scores[i, e]
    rank = 0
    for j in range(v):
        sj = scores[i, j]
        if sj > se or (sj == se and j < e):
            rank += 1
    order[i, rank] = e


@cuda.jit(cache=True)
def _mask_kernel(boxes, groups, valid, order, thr, mask):  # pragma: no cover - device code
    i = cuda.blockIdx.z
    rb = cuda.blockIdx.y
    cb = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    m = boxes.shape[1]
    v = min(max(valid[i], 0), m)
    if rb > cb:
        return
    rows = min(v - rb * _NMS_TILE, _NMS_TILE)
    cols = min(v - cb * _NMS_TILE, _NMS_TILE)
    if rows <= 0 or cols <= 0:
        return
    col = cuda.shared.array((_NMS_TILE, 5), np.float32)
    col_g = cuda.shared.array(_NMS_TILE, np.int64)
    if tid < cols:
        e = order[i, cb * _NMS_TILE + tid]
        for q in range(4):
            col[tid, q] = boxes[i, e, q]
        col[tid, 4] = (col[tid, 2] - col[tid, 0]) * (col[tid, 3] - col[tid, 1])
        col_g[tid] = groups[i, e]
    cuda.syncthreads()
    if tid >= rows:
        return
    r = rb * _NMS_TILE + tid
    e = order[i, r]
    x0 = boxes[i, e, 0]
    y0 = boxes[i, e, 1]
    x1 = boxes[i, e, 2]
    y1 = boxes[i, e, 3]
    area = (x1 - x0) * (y1 - y0)
    g = groups[i, e]
    bitsw = np.uint64(0)
    zero = np.float32(0.0)
    start = tid + 1 if rb == cb else 0
    for jj in range(start, cols):
        if col_g[jj] != g:
            continue
        iw = max(zero, min(x1, col[jj, 2]) - max(x0, col[jj, 0]))
        ih = max(zero, min(y1, col[jj, 3]) - max(y0, col[jj, 1]))
        inter = iw * ih
        if inter / (area + col[jj, 4] - inter) > thr:
            bitsw |= np.uint64(1) << np.uint64(jj)
    mask[i, r, cb] = bitsw


@cuda.jit(cache=True)
def _reduce_kernel(mask, valid, order, max_out, removed, keep_idx, count):  # pragma: no cover - device code
    """One block per image: the greedy pass over the bitmask rows, in score order."""
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    nt = cuda.blockDim.x
    m = order.shape[1]
    n_tiles = mask.shape[2]
    v = min(max(valid[i], 0), m)
    for t in range(tid, n_tiles, nt):
        removed[i, t] = np.uint64(0)
    cuda.syncthreads()
    kept = 0
    for r in range(v):
        if kept >= max_out:
            break
        word = removed[i, r // _NMS_TILE]
        gone = (word >> np.uint64(r % _NMS_TILE)) & np.uint64(1)
        cuda.syncthreads()  # everyone has read the word before it is updated
        if gone == 0:
            if tid == 0:
                keep_idx[i, kept] = order[i, r]
            kept += 1
            for t in range(r // _NMS_TILE + tid, n_tiles, nt):
                removed[i, t] |= mask[i, r, t]
        cuda.syncthreads()
    for c in range(kept + tid, keep_idx.shape[1], nt):
        keep_idx[i, c] = -1
    if tid == 0:
        count[i] = kept


def nms_fixed(boxes, scores, valid, iou, max_out, groups=None, *, out=None, stream=None):
    """Device version of :func:`gixdrt.kernels.reference.boxes.nms_fixed`.

    boxes float32[N, M, 4], scores float32[N, M], valid int32[N], groups int32[N, M] or None: device arrays.
    Returns device (keep_idx int32[N, max_out], count int32[N]) (or ``out``, a tuple of two device arrays of
    exactly those shapes and dtypes), filled asynchronously on ``stream``.
    NaN scores are not supported (their rank is undefined).
    """
    s = as_stream(stream)
    b = as_device(boxes, "boxes")
    sc = as_device(scores, "scores")
    va = as_device(valid, "valid")
    g = None if groups is None else as_device(groups, "groups")
    if b.dtype != np.float32 or sc.dtype != np.float32:
        raise TypeError("nms_fixed: boxes and scores must be float32 on the device")
    n, m = check_nms_inputs(b, sc, va, g, max_out)
    max_out = int(max_out)
    if g is None:
        g = cuda.to_device(np.zeros((n, m), np.int32), stream=s)
    n_tiles = max(1, math.ceil(m / _NMS_TILE))
    (keep_idx, count), result = device_outs(out, nms_fixed_specs(n, max_out), "nms_fixed", s)
    if n == 0:
        return result
    order = _alloc((n, max(m, 1)), np.int32, stream=s)
    mask = _alloc((n, max(m, 1), n_tiles), np.uint64, stream=s)
    removed = _alloc((n, n_tiles), np.uint64, stream=s)
    if m > 0:
        _rank_kernel[(math.ceil(m / _TPB), n), _TPB, s](sc, va, order)
        _mask_kernel[(n_tiles, n_tiles, n), _NMS_TILE, s](b, g, va, order, threshold_below(iou), mask)
    _reduce_kernel[n, 32, s](mask, va, order, max_out, removed, keep_idx, count)
    return result


@cuda.jit(cache=True)
def _final_kernel(logits, deltas, proposals, valid, height, width, thr, clip, min_size, boxes, scores, count):  # pragma: no cover
    i = cuda.blockIdx.x
    tid = cuda.threadIdx.x
    r = logits.shape[1]
    v = min(max(valid[i], 0), r)
    buf = cuda.shared.array(_TPB, np.int32)
    one = np.float32(1.0)
    two = np.float32(2.0)
    zero = np.float32(0.0)
    fw = np.float32(width)
    fh = np.float32(height)
    written = 0
    for base in range(0, v, _TPB):
        j = base + tid
        f = 0
        x0 = y0 = x1 = y1 = s = zero
        if j < v:
            x0, y0, x1, y1 = _decode_clip(proposals[i, j], deltas[i, j], clip, fw, fh)
            s = two * (one / (one + math.exp(-logits[i, j]))) - one
            if s >= thr and (x1 - x0) >= min_size and (y1 - y0) >= min_size:
                f = 1
        buf[tid] = f
        cuda.syncthreads()
        _block_scan(buf, tid)
        if f == 1:
            c = written + buf[tid] - 1
            boxes[i, c, 0] = x0
            boxes[i, c, 1] = y0
            boxes[i, c, 2] = x1
            boxes[i, c, 3] = y1
            scores[i, c] = s
        total = buf[_TPB - 1]
        cuda.syncthreads()
        written += total
    for c in range(written + tid, r, _TPB):
        for q in range(4):
            boxes[i, c, q] = 0
        scores[i, c] = 0
    if tid == 0:
        count[i] = written


def decode_final(logits, deltas, proposals, valid, *, height, width, score_threshold, bbox_clip=BBOX_CLIP,
                 min_size=1e-3, out=None, stream=None):
    """Device version of :func:`gixdrt.kernels.reference.boxes.decode_final`: device arrays in (never copied),
    device arrays (boxes, scores, count) out (allocated, or ``out``: a tuple of three device arrays of exactly
    those shapes and dtypes), filled asynchronously on ``stream``."""
    s = as_stream(stream)
    lg = as_device(logits, "logits")
    dl = as_device(deltas, "deltas")
    pr = as_device(proposals, "proposals")
    va = as_device(valid, "valid")
    for name, arr in (("logits", lg), ("deltas", dl), ("proposals", pr)):
        if arr.dtype != np.float32:
            raise TypeError(f"decode_final: {name} must be float32 on the device, got {arr.dtype}")
    n, r = check_final_inputs(lg, dl, pr, va)
    (boxes, scores, count), result = device_outs(out, decode_final_specs(n, r), "decode_final", s)
    if n == 0:
        return result
    _final_kernel[n, _TPB, s](lg, dl, pr, va, height, width, np.float32(score_threshold), np.float32(bbox_clip),
                              np.float32(min_size), boxes, scores, count)
    return result
