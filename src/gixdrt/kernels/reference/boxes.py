"""Proposal-stage box kernels, NumPy reference (the specification of the cpu and cuda paths).

Fixed-size outputs plus valid counts, so that graphs and engines never see data-dependent shapes:

- :func:`decode_topk`: per image and level the top-k anchors by logit → sigmoid scores, decoded, clipped boxes
  with tiny boxes dropped (valid entries compacted to the front).
- :func:`nms_fixed`: greedy NMS per image (optionally per group) → kept indices padded to ``max_out``.
- :func:`decode_final`: the second stage's score (2·sigmoid − 1), decode against the proposals, clip, score
  threshold and tiny boxes dropped (valid entries compacted to the front); then ``nms_fixed`` at IoU 0.1.

Arithmetic follows :mod:`gixdrt.model.ops` (fp32 box coding, fp32 IoU compared with the threshold as a double).
"""
from __future__ import annotations

import math

import numpy as np

BBOX_CLIP = math.log(1000.0 / 16)

_F = np.float32


def check_decode_inputs(logits, deltas, anchors, level_starts, k):
    """Shapes and dtypes of :func:`decode_topk`'s inputs → (N, A_total, L, level_starts int64[L+1])."""
    if logits.ndim != 2 or deltas.ndim != 3 or deltas.shape[2] != 4 or tuple(deltas.shape[:2]) != tuple(logits.shape):
        raise ValueError(f"decode_topk: expected logits [N, A] and deltas [N, A, 4], got {tuple(logits.shape)} and {tuple(deltas.shape)}")
    n, a = logits.shape
    if tuple(anchors.shape) != (a, 4):
        raise ValueError(f"decode_topk: anchors must be [{a}, 4], got {tuple(anchors.shape)}")
    starts = np.asarray(level_starts, np.int64).reshape(-1)
    if starts.size < 2 or starts[0] != 0 or starts[-1] != a or np.any(np.diff(starts) < 0):
        raise ValueError(f"decode_topk: level_starts must rise from 0 to {a}, got {starts.tolist()}")
    if int(k) < 0:
        raise ValueError(f"decode_topk: k must be ≥ 0, got {k}")
    return n, a, starts.size - 1, starts


def threshold_below(threshold: float) -> np.float32:
    """The largest float32 t ≤ threshold: for an fp32 IoU x, (double)x > threshold ⇔ x > t."""
    t = np.float32(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np.float32(-np.inf))
    return np.float32(t)


def decode_clip_scalar(ref, d, clip, fw, fh):
    """One box from deltas d[4] relative to ref[4], clipped to [0, fw] × [0, fh]: fp32 in the operation order of
    :func:`gixdrt.model.ops.decode_boxes`. Plain Python on scalars, compiled by the cpu (``njit``) and cuda
    (``cuda.jit(device=True)``) kernels alike."""
    half = np.float32(0.5)
    zero = np.float32(0.0)
    w = ref[2] - ref[0]
    h = ref[3] - ref[1]
    cx = ref[0] + half * w
    cy = ref[1] + half * h
    pcx = d[0] * w + cx
    pcy = d[1] * h + cy
    hw = half * (np.float32(math.exp(min(d[2], clip))) * w)
    hh = half * (np.float32(math.exp(min(d[3], clip))) * h)
    return min(max(pcx - hw, zero), fw), min(max(pcy - hh, zero), fh), min(max(pcx + hw, zero), fw), min(max(pcy + hh, zero), fh)


def decode_clip(ref: np.ndarray, d: np.ndarray, clip: np.float32, height: int, width: int) -> np.ndarray:
    """Boxes float32[K, 4] from deltas d float32[K, 4] relative to ref float32[K, 4], clipped to [0, width] ×
    [0, height]: fp32 in the operation order of :func:`gixdrt.model.ops.decode_boxes`."""
    half = _F(0.5)
    w = ref[:, 2] - ref[:, 0]
    h = ref[:, 3] - ref[:, 1]
    cx = ref[:, 0] + half * w
    cy = ref[:, 1] + half * h
    pcx = d[:, 0] * w + cx
    pcy = d[:, 1] * h + cy
    hw = half * (np.exp(np.minimum(d[:, 2], clip)) * w)
    hh = half * (np.exp(np.minimum(d[:, 3], clip)) * h)
    b = np.stack((pcx - hw, pcy - hh, pcx + hw, pcy + hh), axis=-1)
    b[:, 0::2] = np.clip(b[:, 0::2], _F(0), _F(width))
    b[:, 1::2] = np.clip(b[:, 1::2], _F(0), _F(height))
    return b


def descending_order(values: np.ndarray) -> np.ndarray:
    """Indices by decreasing value, ties by lower index first, NaN last (a stable sort of −values)."""
    return np.argsort(-values, kind="stable")


def decode_topk(
    logits,
    deltas,
    anchors,
    level_starts,
    *,
    k: int = 1000,
    height: int,
    width: int,
    bbox_clip: float = BBOX_CLIP,
    min_size: float = 1e-3,
):
    """Top-k per image and level, sigmoid, decode, clip, drop tiny boxes.

    logits: float32[N, A_total] RPN logits; deltas: float32[N, A_total, 4] (dx, dy, dw, dh);
    anchors: float32[A_total, 4] (x0, y0, x1, y1) px; level_starts: int[L+1], level l owns anchors
    level_starts[l]:level_starts[l+1]; k: kept per level (min(k, A_l) when a level is smaller);
    height, width: the image size in px (boxes are clipped to [0, width] × [0, height]);
    bbox_clip: upper clamp of dw, dh; min_size: boxes with a side < min_size are dropped.

    Returns (boxes float32[N, L·k, 4], scores float32[N, L·k], levels int32[N, L·k], valid int32[N]):
    entries [:valid[i]] of image i are the surviving boxes, level by level, each level by decreasing logit
    (ties: lower anchor index first; NaN logits rank last). Padding: boxes and scores 0, levels −1.
    """
    logits = np.asarray(logits, _F)
    deltas = np.asarray(deltas, _F)
    anchors = np.asarray(anchors, _F)
    n, _, n_levels, starts = check_decode_inputs(logits, deltas, anchors, level_starts, k)
    k = int(k)
    m = n_levels * k
    boxes = np.zeros((n, m, 4), _F)
    scores = np.zeros((n, m), _F)
    levels = np.full((n, m), -1, np.int32)
    valid = np.zeros(n, np.int32)
    clip = _F(bbox_clip)
    for i in range(n):
        out = 0
        for lvl in range(n_levels):
            lo, hi = starts[lvl], starts[lvl + 1]
            top = lo + descending_order(logits[i, lo:hi])[:k]
            b = decode_clip(anchors[top], deltas[i, top], clip, height, width)
            ok = ((b[:, 2] - b[:, 0]) >= _F(min_size)) & ((b[:, 3] - b[:, 1]) >= _F(min_size))
            # fp32 1/(1 + exp(−x)) as torch.sigmoid computes it: it saturates to 1.0 for x ≳ 16.6, and the
            # score ties that makes decide the NMS order (ties: lower index first)
            s = _F(1) / (_F(1) + np.exp(-logits[i, top]))
            c = int(ok.sum())
            boxes[i, out : out + c] = b[ok]
            scores[i, out : out + c] = s[ok]
            levels[i, out : out + c] = lvl
            out += c
        valid[i] = out
    return boxes, scores, levels, valid


def check_nms_inputs(boxes, scores, valid, groups, max_out):
    """Shapes of :func:`nms_fixed`'s inputs → (N, M)."""
    if boxes.ndim != 3 or boxes.shape[2] != 4 or tuple(scores.shape) != tuple(boxes.shape[:2]):
        raise ValueError(f"nms_fixed: expected boxes [N, M, 4] and scores [N, M], got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    n, m = scores.shape
    if tuple(valid.shape) != (n,):
        raise ValueError(f"nms_fixed: valid must be [{n}], got {tuple(valid.shape)}")
    if groups is not None and tuple(groups.shape) != (n, m):
        raise ValueError(f"nms_fixed: groups must be [{n}, {m}], got {tuple(groups.shape)}")
    if int(max_out) < 0:
        raise ValueError(f"nms_fixed: max_out must be ≥ 0, got {max_out}")
    return n, m


def nms_fixed(boxes, scores, valid, iou: float, max_out: int, groups=None):
    """Greedy NMS per image with fixed-size output.

    boxes: float32[N, M, 4] (x0, y0, x1, y1); scores: float32[N, M]; valid: int32[N], image i uses entries
    [:valid[i]] (clamped to [0, M]); iou: a box is suppressed when its IoU (fp32, no "+1") with a kept box is
    > iou (compared as a double); max_out: at most this many kept per image; groups: optional int32[N, M],
    boxes suppress only boxes of their own group.

    Returns (keep_idx int32[N, max_out], count int32[N]): keep_idx[i, :count[i]] are indices into image i's
    entries by decreasing score (ties: lower index first), the rest −1.
    """
    boxes = np.asarray(boxes, _F)
    scores = np.asarray(scores, _F)
    valid = np.asarray(valid).astype(np.int64)
    groups = None if groups is None else np.asarray(groups)
    n, m = check_nms_inputs(boxes, scores, valid, groups, max_out)
    max_out = int(max_out)
    thr = float(iou)
    keep_idx = np.full((n, max_out), -1, np.int32)
    count = np.zeros(n, np.int32)
    for i in range(n):
        v = min(max(int(valid[i]), 0), m)
        order = descending_order(scores[i, :v])
        b = boxes[i, order]
        g = np.zeros(v, np.int64) if groups is None else groups[i, order].astype(np.int64)
        area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
        removed = np.zeros(v, bool)
        kept = 0
        for r in range(v):
            if kept >= max_out:
                break
            if removed[r]:
                continue
            keep_idx[i, kept] = order[r]
            kept += 1
            rest = slice(r + 1, v)
            iw = np.maximum(_F(0), np.minimum(b[r, 2], b[rest, 2]) - np.maximum(b[r, 0], b[rest, 0]))
            ih = np.maximum(_F(0), np.minimum(b[r, 3], b[rest, 3]) - np.maximum(b[r, 1], b[rest, 1]))
            inter = iw * ih
            with np.errstate(invalid="ignore", divide="ignore"):
                ious = inter / (area[r] + area[rest] - inter)  # fp32; NaN (0/0) never suppresses
            removed[rest] |= (ious.astype(np.float64) > thr) & (g[rest] == g[r])
        count[i] = kept
    return keep_idx, count


def check_final_inputs(logits, deltas, proposals, valid):
    """Shapes of :func:`decode_final`'s inputs → (N, R)."""
    if logits.ndim != 2 or tuple(deltas.shape) != (*logits.shape, 4) or tuple(proposals.shape) != (*logits.shape, 4):
        raise ValueError(
            f"decode_final: expected logits [N, R], deltas and proposals [N, R, 4], got {tuple(logits.shape)}, "
            f"{tuple(deltas.shape)} and {tuple(proposals.shape)}"
        )
    n, r = logits.shape
    if tuple(valid.shape) != (n,):
        raise ValueError(f"decode_final: valid must be [{n}], got {tuple(valid.shape)}")
    return n, r


def decode_final(
    logits,
    deltas,
    proposals,
    valid,
    *,
    height: int,
    width: int,
    score_threshold: float,
    bbox_clip: float = BBOX_CLIP,
    min_size: float = 1e-3,
):
    """Second-stage scores and boxes, fixed size.

    logits: float32[N, R] head logits; deltas: float32[N, R, 4] head deltas relative to proposals:
    float32[N, R, 4]; valid: int[N], image i uses entries [:valid[i]] (clamped to [0, R]).
    Score = 2·sigmoid(logit) − 1 in fp32 (as :meth:`gixdrt.model.GixdDetector.postprocess`); boxes decoded as
    in :func:`decode_topk`, clipped to [0, width] × [0, height]; an entry survives when score ≥ score_threshold
    and both sides ≥ min_size.

    Returns (boxes float32[N, R, 4], scores float32[N, R], count int32[N]): survivors compacted to the front
    in proposal order, the rest 0. Feed them to :func:`nms_fixed` (IoU 0.1, max detections) for the peaks.
    """
    logits = np.asarray(logits, _F)
    deltas = np.asarray(deltas, _F)
    proposals = np.asarray(proposals, _F)
    valid = np.asarray(valid).astype(np.int64)
    n, r = check_final_inputs(logits, deltas, proposals, valid)
    boxes = np.zeros((n, r, 4), _F)
    scores = np.zeros((n, r), _F)
    count = np.zeros(n, np.int32)
    clip, one, two = _F(bbox_clip), _F(1), _F(2)
    for i in range(n):
        v = min(max(int(valid[i]), 0), r)
        b = decode_clip(proposals[i, :v], deltas[i, :v], clip, height, width)
        s = two * (one / (one + np.exp(-logits[i, :v]))) - one
        with np.errstate(invalid="ignore"):
            ok = (s >= _F(score_threshold)) & ((b[:, 2] - b[:, 0]) >= _F(min_size)) & ((b[:, 3] - b[:, 1]) >= _F(min_size))
        c = int(ok.sum())
        boxes[i, :c] = b[ok]
        scores[i, :c] = s[ok]
        count[i] = c
    return boxes, scores, count
