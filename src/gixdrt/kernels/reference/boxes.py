"""Box operations, NumPy reference: the one specification of box coding, IoU, NMS and the proposal-stage kernels.

The detector's box semantics (those of torchvision's ``BoxCoder`` without weights and its ``nms``, written
here from their documented behaviour): boxes are (x0, y0, x1, y1), areas have no "+1"; :func:`decode` clamps
dw, dh from above at :data:`BBOX_CLIP` and not from below; :func:`nms` is greedy by decreasing score (ties:
lower index first) and suppresses a box when its IoU with a kept box is strictly greater than the threshold
(compared as a double; 0/0 = NaN never suppresses). The torch ops of :mod:`gixdrt.model.ops` and the cpu and
cuda kernels are tested against these functions.

Proposal-stage kernels, fixed-size outputs plus valid counts, so that graphs and engines never see
data-dependent shapes:

- :func:`decode_topk`: per image and level the top-k anchors by logit → sigmoid scores, decoded, clipped boxes
  with tiny boxes dropped (valid entries compacted to the front).
- :func:`nms_fixed`: greedy NMS per image (optionally per group) → kept indices padded to ``max_out``.
- :func:`decode_final`: the second stage's score (2·sigmoid − 1), decode against the proposals, clip, score
  threshold and tiny boxes dropped (valid entries compacted to the front); then ``nms_fixed`` at IoU 0.1.

Arithmetic follows :mod:`gixdrt.model.ops` (fp32 box coding, fp32 IoU compared with the threshold as a double).
:func:`decode`, :func:`iou` and :func:`nms` also run in float64 (``dtype=np.float64``), the naive references of
the fp32 ops. Every kernel takes an optional ``out`` tuple of preallocated arrays of exactly the shapes and dtypes
it would allocate, writes and returns them.
"""
from __future__ import annotations

import math

import numpy as np

from .._checks import check_outs, decode_final_specs, decode_topk_specs, nms_fixed_specs

#: upper clamp of the log-size deltas dw, dh (torchvision's ``log(1000/16)``); there is no lower clamp.
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


def decode(deltas, boxes, clip: float = BBOX_CLIP, dtype=np.float32) -> np.ndarray:
    """Boxes [K, 4] (x0, y0, x1, y1) from deltas [K, 4] (dx, dy, dw, dh) relative to boxes [K, 4], in ``dtype``.

    In the operation order of :func:`gixdrt.model.ops.decode_boxes`: w = x1 − x0, cx = x0 + 0.5·w,
    pcx = dx·w + cx, hw = 0.5·(exp(min(dw, clip))·w), box = (pcx − hw, pcy − hh, pcx + hw, pcy + hh).
    float32 is the kernels' arithmetic; float64 is the naive reference of the fp32 ops.
    """
    t = np.dtype(dtype).type
    d = np.asarray(deltas).astype(dtype).reshape(-1, 4)
    ref = np.asarray(boxes).astype(dtype).reshape(-1, 4)
    half = t(0.5)
    w = ref[:, 2] - ref[:, 0]
    h = ref[:, 3] - ref[:, 1]
    cx = ref[:, 0] + half * w
    cy = ref[:, 1] + half * h
    pcx = d[:, 0] * w + cx
    pcy = d[:, 1] * h + cy
    hw = half * (np.exp(np.minimum(d[:, 2], t(clip))) * w)
    hh = half * (np.exp(np.minimum(d[:, 3], t(clip))) * h)
    return np.stack((pcx - hw, pcy - hh, pcx + hw, pcy + hh), axis=-1)


def decode_clip(ref: np.ndarray, d: np.ndarray, clip: np.float32, height: int, width: int) -> np.ndarray:
    """Boxes float32[K, 4] from deltas d float32[K, 4] relative to ref float32[K, 4] (:func:`decode` in fp32),
    clipped to [0, width] × [0, height]."""
    b = decode(d, ref, clip, np.float32)
    b[:, 0::2] = np.clip(b[:, 0::2], _F(0), _F(width))
    b[:, 1::2] = np.clip(b[:, 1::2], _F(0), _F(height))
    return b


def iou(box, others) -> np.ndarray:
    """IoU of ``box`` [4] with each of ``others`` [K, 4], in their dtype (no "+1"; NaN propagates; 0/0 = NaN).

    inter = max(0, min(x1) − max(x0))·max(0, min(y1) − max(y0)); IoU = inter / (area + area_k − inter).
    """
    zero = others.dtype.type(0)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN/inf boxes give NaN, never an error
        iw = np.maximum(zero, np.minimum(box[2], others[:, 2]) - np.maximum(box[0], others[:, 0]))
        ih = np.maximum(zero, np.minimum(box[3], others[:, 3]) - np.maximum(box[1], others[:, 1]))
        inter = iw * ih
        area = (box[2] - box[0]) * (box[3] - box[1])
        areas = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
        return inter / (area + areas - inter)


def iou_matrix(a, b) -> np.ndarray:
    """IoU of every box of ``a`` [K, 4] with every box of ``b`` [M, 4], (x0, y0, x1, y1) → float64[K, M].

    Continuous areas (x1 − x0)·(y1 − y0), no "+1" (as :func:`iou`); negative widths count as 0; a pair whose union
    is 0 or not finite has IoU 0 (for matching and linking, where a degenerate box matches nothing).
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
        area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
        iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
        ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
        inter = iw * ih
        union = area_a[:, None] + area_b[None, :] - inter
        out = np.where(np.isfinite(union) & (union > 0), inter / union, 0.0)
    return np.where(np.isfinite(out), out, 0.0)


def nms(boxes, scores, iou_threshold: float, dtype=np.float32, *, groups=None, max_out: int | None = None) -> np.ndarray:
    """Greedy NMS of one image → int64 indices of the kept boxes by decreasing score.

    boxes: [K, 4]; scores: [K] (ties: lower index first, NaN last); a box is suppressed when its IoU with an
    already kept box, computed in ``dtype`` (float32: the fp32 arithmetic of torchvision's kernel and of the
    gixdrt kernels, where 1/10 rounds to 0.10000000149 > 0.1; float64: the exact value), is > ``iou_threshold``
    compared as a double. groups: optional [K] labels, boxes suppress only boxes of their own group.
    max_out: stop after this many kept boxes.
    """
    b = np.asarray(boxes).astype(dtype).reshape(-1, 4)
    s = np.asarray(scores).reshape(-1)
    order = descending_order(s)
    b = b[order]
    g = np.zeros(len(order), np.int64) if groups is None else np.asarray(groups).astype(np.int64).reshape(-1)[order]
    removed = np.zeros(len(order), bool)
    keep: list[int] = []
    thr = float(iou_threshold)
    for r in range(len(order)):
        if max_out is not None and len(keep) >= max_out:
            break
        if removed[r]:
            continue
        keep.append(int(order[r]))
        rest = slice(r + 1, len(order))
        removed[rest] |= (iou(b[r], b[rest]).astype(np.float64) > thr) & (g[rest] == g[r])
    return np.asarray(keep, np.int64)


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
    out=None,
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
    out: optional tuple of four arrays of exactly these shapes and dtypes, written and returned.
    """
    logits = np.asarray(logits, _F)
    deltas = np.asarray(deltas, _F)
    anchors = np.asarray(anchors, _F)
    n, _, n_levels, starts = check_decode_inputs(logits, deltas, anchors, level_starts, k)
    k = int(k)
    m = n_levels * k
    out = None if out is None else check_outs(out, decode_topk_specs(n, n_levels, k), "decode_topk")
    boxes = np.zeros((n, m, 4), _F)
    scores = np.zeros((n, m), _F)
    levels = np.full((n, m), -1, np.int32)
    valid = np.zeros(n, np.int32)
    clip = _F(bbox_clip)
    for i in range(n):
        c_out = 0
        for lvl in range(n_levels):
            lo, hi = starts[lvl], starts[lvl + 1]
            top = lo + descending_order(logits[i, lo:hi])[:k]
            b = decode_clip(anchors[top], deltas[i, top], clip, height, width)
            ok = ((b[:, 2] - b[:, 0]) >= _F(min_size)) & ((b[:, 3] - b[:, 1]) >= _F(min_size))
            # fp32 1/(1 + exp(−x)) as torch.sigmoid computes it: it saturates to 1.0 for x ≳ 16.6, and the
            # score ties that makes decide the NMS order (ties: lower index first)
            s = _F(1) / (_F(1) + np.exp(-logits[i, top]))
            c = int(ok.sum())
            boxes[i, c_out : c_out + c] = b[ok]
            scores[i, c_out : c_out + c] = s[ok]
            levels[i, c_out : c_out + c] = lvl
            c_out += c
        valid[i] = c_out
    return _written(out, (boxes, scores, levels, valid))


def _written(out, results):
    """``results`` copied into the checked ``out`` arrays (returned as a tuple), or ``results`` when out is None."""
    if out is None:
        return results
    for dst, src in zip(out, results):
        dst[...] = src
    return out


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


def nms_fixed(boxes, scores, valid, iou: float, max_out: int, groups=None, *, out=None):
    """Greedy NMS per image with fixed-size output: :func:`nms` in fp32 on each image's valid entries.

    boxes: float32[N, M, 4] (x0, y0, x1, y1); scores: float32[N, M]; valid: int32[N], image i uses entries
    [:valid[i]] (clamped to [0, M]); iou: a box is suppressed when its IoU (fp32, no "+1") with a kept box is
    > iou (compared as a double); max_out: at most this many kept per image; groups: optional int32[N, M],
    boxes suppress only boxes of their own group.

    Returns (keep_idx int32[N, max_out], count int32[N]): keep_idx[i, :count[i]] are indices into image i's
    entries by decreasing score (ties: lower index first), the rest −1.
    out: optional (keep_idx, count) arrays of exactly these shapes and dtypes, written and returned.
    """
    boxes = np.asarray(boxes, _F)
    scores = np.asarray(scores, _F)
    valid = np.asarray(valid).astype(np.int64)
    groups = None if groups is None else np.asarray(groups)
    n, m = check_nms_inputs(boxes, scores, valid, groups, max_out)
    max_out = int(max_out)
    out = None if out is None else check_outs(out, nms_fixed_specs(n, max_out), "nms_fixed")
    keep_idx = np.full((n, max_out), -1, np.int32)
    count = np.zeros(n, np.int32)
    for i in range(n):
        v = min(max(int(valid[i]), 0), m)
        g = None if groups is None else groups[i, :v]
        kept = nms(boxes[i, :v], scores[i, :v], iou, np.float32, groups=g, max_out=max_out)
        keep_idx[i, : len(kept)] = kept
        count[i] = len(kept)
    return _written(out, (keep_idx, count))


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
    out=None,
):
    """Second-stage scores and boxes, fixed size.

    logits: float32[N, R] head logits; deltas: float32[N, R, 4] head deltas relative to proposals:
    float32[N, R, 4]; valid: int[N], image i uses entries [:valid[i]] (clamped to [0, R]).
    Score = 2·sigmoid(logit) − 1 in fp32 (as :meth:`gixdrt.model.GixdDetector.postprocess`); boxes decoded as
    in :func:`decode_topk`, clipped to [0, width] × [0, height]; an entry survives when score ≥ score_threshold
    and both sides ≥ min_size.

    Returns (boxes float32[N, R, 4], scores float32[N, R], count int32[N]): survivors compacted to the front
    in proposal order, the rest 0. Feed them to :func:`nms_fixed` (IoU 0.1, max detections) for the peaks.
    out: optional (boxes, scores, count) arrays of exactly these shapes and dtypes, written and returned.
    """
    logits = np.asarray(logits, _F)
    deltas = np.asarray(deltas, _F)
    proposals = np.asarray(proposals, _F)
    valid = np.asarray(valid).astype(np.int64)
    n, r = check_final_inputs(logits, deltas, proposals, valid)
    out = None if out is None else check_outs(out, decode_final_specs(n, r), "decode_final")
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
    return _written(out, (boxes, scores, count))
