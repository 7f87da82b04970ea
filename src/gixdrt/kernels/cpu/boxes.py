"""Proposal-stage box kernels on the CPU (Numba): see :mod:`gixdrt.kernels.reference.boxes` for the semantics.

decode_topk runs one (image, level) job per thread; top-k is a partition to the k-th value, a pass that takes
the ties at that value in index order, and a stable sort of the k candidates. nms_fixed is greedy per image
(images in parallel) and per group (each group only scans its own members), stopping at ``max_out``.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..reference.boxes import (
    BBOX_CLIP,
    check_decode_inputs,
    check_final_inputs,
    check_nms_inputs,
    decode_clip_scalar,
    threshold_below,
)


@njit(cache=True)
def _topk_desc(x, k):  # pragma: no cover - compiled
    """int64[min(k, len(x))]: indices of x by decreasing value, ties lower index first, NaN last."""
    a = x.shape[0]
    k = min(k, a)
    out = np.empty(k, np.int64)
    if k == 0:
        return out
    y = np.empty(a, np.float32)
    n_num = 0
    for j in range(a):
        y[j] = -x[j]
        if not math.isnan(x[j]):
            n_num += 1
    take = min(k, n_num)
    got = 0
    if take > 0:
        t = np.partition(y, take - 1)[take - 1]  # the take-th smallest −x (NaN sort last)
        n_lt = 0
        for j in range(a):
            if -x[j] < t:
                n_lt += 1
        eq_left = take - n_lt
        cand = np.empty(take, np.int64)
        for j in range(a):  # candidates in index order: all below t, the first ties at t
            v = -x[j]
            if v < t:
                cand[got] = j
                got += 1
            elif v == t and eq_left > 0:
                cand[got] = j
                got += 1
                eq_left -= 1
        vals = np.empty(take, np.float32)
        for c in range(take):
            vals[c] = -x[cand[c]]
        order = np.argsort(vals, kind="mergesort")  # stable: ties stay in index order
        for c in range(take):
            out[c] = cand[order[c]]
    j = 0
    while got < k:  # NaN logits, in index order
        if math.isnan(x[j]):
            out[got] = j
            got += 1
        j += 1
    return out


_decode_clip = njit(inline="always", cache=True)(decode_clip_scalar)


@njit(parallel=True, cache=True)
def _decode_topk(logits, deltas, anchors, starts, k, height, width, clip, min_size, boxes, scores, levels, valid):  # pragma: no cover
    n = logits.shape[0]
    n_levels = starts.shape[0] - 1
    m = n_levels * k
    tmp = np.zeros((n, m, 4), np.float32)
    tmp_s = np.zeros((n, m), np.float32)
    ok = np.zeros((n, m), np.bool_)
    one = np.float32(1.0)
    fw = np.float32(width)
    fh = np.float32(height)
    for job in prange(n * n_levels):
        i = job // n_levels
        lvl = job % n_levels
        lo = starts[lvl]
        top = _topk_desc(logits[i, lo : starts[lvl + 1]], k)
        for r in range(top.shape[0]):
            a = lo + top[r]
            x0, y0, x1, y1 = _decode_clip(anchors[a], deltas[i, a], clip, fw, fh)
            p = lvl * k + r
            tmp[i, p, 0] = x0
            tmp[i, p, 1] = y0
            tmp[i, p, 2] = x1
            tmp[i, p, 3] = y1
            # fp32 sigmoid as torch computes it (saturates at 1.0; the ties it makes order the NMS)
            tmp_s[i, p] = one / (one + np.float32(math.exp(-logits[i, a])))
            ok[i, p] = (x1 - x0) >= min_size and (y1 - y0) >= min_size
    for i in prange(n):
        c = 0
        for p in range(m):
            if ok[i, p]:
                for q in range(4):
                    boxes[i, c, q] = tmp[i, p, q]
                scores[i, c] = tmp_s[i, p]
                levels[i, c] = p // k
                c += 1
        valid[i] = c


@njit(parallel=True, cache=True)
def _nms_fixed(boxes, scores, valid, groups, use_groups, thr, max_out, keep_idx, count):  # pragma: no cover
    n, m = scores.shape
    for i in prange(n):
        v = min(max(valid[i], 0), m)
        neg = np.empty(v, np.float32)
        for j in range(v):
            neg[j] = -scores[i, j]
        order = np.argsort(neg, kind="mergesort")  # decreasing score, ties lower index first
        # members of each group, contiguous and each in score order (stable sort by group)
        g = np.zeros(v, np.int64)
        if use_groups:
            for r in range(v):
                g[r] = groups[i, order[r]]
        by_group = np.argsort(g, kind="mergesort")
        x0 = np.empty(v, np.float32)
        y0 = np.empty(v, np.float32)
        x1 = np.empty(v, np.float32)
        y1 = np.empty(v, np.float32)
        area = np.empty(v, np.float32)
        for r in range(v):
            b = order[by_group[r]]
            x0[r] = boxes[i, b, 0]
            y0[r] = boxes[i, b, 1]
            x1[r] = boxes[i, b, 2]
            y1[r] = boxes[i, b, 3]
            area[r] = (x1[r] - x0[r]) * (y1[r] - y0[r])
        removed = np.zeros(v, np.bool_)
        kept = np.zeros(v, np.bool_)  # by score rank
        start = 0
        while start < v:
            stop = start
            while stop < v and g[by_group[stop]] == g[by_group[start]]:
                stop += 1
            n_kept = 0
            for r in range(start, stop):
                if n_kept >= max_out:  # later members of this group can never make the overall top max_out
                    break
                if removed[r]:
                    continue
                kept[by_group[r]] = True
                n_kept += 1
                for s in range(r + 1, stop):
                    if removed[s]:
                        continue
                    iw = min(x1[r], x1[s]) - max(x0[r], x0[s])
                    ih = min(y1[r], y1[s]) - max(y0[r], y0[s])
                    if iw < 0:
                        iw = np.float32(0.0)
                    if ih < 0:
                        ih = np.float32(0.0)
                    inter = iw * ih
                    if inter / (area[r] + area[s] - inter) > thr:
                        removed[s] = True
            start = stop
        c = 0
        for r in range(v):
            if c >= max_out:
                break
            if kept[r]:
                keep_idx[i, c] = order[r]
                c += 1
        count[i] = c


def decode_topk(logits, deltas, anchors, level_starts, *, k=1000, height, width, bbox_clip=BBOX_CLIP, min_size=1e-3):
    """Numba version of :func:`gixdrt.kernels.reference.boxes.decode_topk` (same arguments and outputs)."""
    logits = np.ascontiguousarray(logits, np.float32)
    deltas = np.ascontiguousarray(deltas, np.float32)
    anchors = np.ascontiguousarray(anchors, np.float32)
    n, _, n_levels, starts = check_decode_inputs(logits, deltas, anchors, level_starts, k)
    k = int(k)
    boxes = np.zeros((n, n_levels * k, 4), np.float32)
    scores = np.zeros((n, n_levels * k), np.float32)
    levels = np.full((n, n_levels * k), -1, np.int32)
    valid = np.zeros(n, np.int32)
    _decode_topk(
        logits, deltas, anchors, starts, k, height, width,
        np.float32(bbox_clip), np.float32(min_size), boxes, scores, levels, valid,
    )
    return boxes, scores, levels, valid


def nms_fixed(boxes, scores, valid, iou, max_out, groups=None):
    """Numba version of :func:`gixdrt.kernels.reference.boxes.nms_fixed` (same arguments and outputs)."""
    boxes = np.ascontiguousarray(boxes, np.float32)
    scores = np.ascontiguousarray(scores, np.float32)
    valid = np.ascontiguousarray(valid, np.int64)
    n, m = check_nms_inputs(boxes, scores, valid, None if groups is None else np.asarray(groups), max_out)
    g = np.zeros((n, m), np.int64) if groups is None else np.ascontiguousarray(groups, np.int64)
    keep_idx = np.full((n, int(max_out)), -1, np.int32)
    count = np.zeros(n, np.int32)
    _nms_fixed(boxes, scores, valid, g, groups is not None, threshold_below(iou), int(max_out), keep_idx, count)
    return keep_idx, count


@njit(parallel=True, cache=True)
def _decode_final(logits, deltas, proposals, valid, height, width, thr, clip, min_size, boxes, scores, count):  # pragma: no cover
    n, r = logits.shape
    one = np.float32(1.0)
    two = np.float32(2.0)
    fw = np.float32(width)
    fh = np.float32(height)
    for i in prange(n):
        v = min(max(valid[i], 0), r)
        c = 0
        for j in range(v):
            x0, y0, x1, y1 = _decode_clip(proposals[i, j], deltas[i, j], clip, fw, fh)
            s = two * (one / (one + np.float32(math.exp(-logits[i, j])))) - one
            if s >= thr and (x1 - x0) >= min_size and (y1 - y0) >= min_size:
                boxes[i, c, 0] = x0
                boxes[i, c, 1] = y0
                boxes[i, c, 2] = x1
                boxes[i, c, 3] = y1
                scores[i, c] = s
                c += 1
        count[i] = c


def decode_final(logits, deltas, proposals, valid, *, height, width, score_threshold, bbox_clip=BBOX_CLIP, min_size=1e-3):
    """Numba version of :func:`gixdrt.kernels.reference.boxes.decode_final` (same arguments and outputs)."""
    logits = np.ascontiguousarray(logits, np.float32)
    deltas = np.ascontiguousarray(deltas, np.float32)
    proposals = np.ascontiguousarray(proposals, np.float32)
    valid = np.ascontiguousarray(valid, np.int64)
    n, r = check_final_inputs(logits, deltas, proposals, valid)
    boxes = np.zeros((n, r, 4), np.float32)
    scores = np.zeros((n, r), np.float32)
    count = np.zeros(n, np.int32)
    _decode_final(logits, deltas, proposals, valid, height, width, np.float32(score_threshold),
                  np.float32(bbox_clip), np.float32(min_size), boxes, scores, count)
    return boxes, scores, count
