"""Box operations of the detector in vectorised PyTorch: box coding, clipping, IoU, NMS and RoIAlign.

These reproduce torchvision's semantics (``BoxCoder`` without weights, ``nms``, ``batched_nms``,
``roi_align``) without depending on it; :mod:`gixdrt.kernels.reference` (``boxes``, ``roi_align``) holds the
NumPy specifications they are tested against. Boxes are (x0, y0, x1, y1) in image pixels; box arithmetic runs in fp32 (half
inputs are promoted: an fp16 step is 0.5–1 px at x ≥ 512).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ..kernels.reference.boxes import BBOX_CLIP

__all__ = [
    "BBOX_CLIP",
    "batched_nms",
    "box_iou",
    "clip_boxes",
    "decode_boxes",
    "encode_boxes",
    "nms",
    "roi_align",
    "rois_from_list",
    "small_boxes_mask",
]


def _box_dtype(t: Tensor) -> Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def decode_boxes(deltas: Tensor, boxes: Tensor, clip: float = BBOX_CLIP) -> Tensor:
    """deltas: float[..., 4] (dx, dy, dw, dh) relative to boxes: float[..., 4] → float[..., 4] (x0, y0, x1, y1).

    No weights; dw, dh are clamped from above at ``clip`` (log(1000/16)) and not from below.
    """
    deltas = _box_dtype(deltas)
    boxes = boxes.to(deltas.dtype)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    cx = boxes[..., 0] + 0.5 * w
    cy = boxes[..., 1] + 0.5 * h
    dx, dy, dw, dh = deltas.unbind(-1)
    pcx = dx * w + cx
    pcy = dy * h + cy
    half_w = 0.5 * (torch.exp(dw.clamp(max=clip)) * w)
    half_h = 0.5 * (torch.exp(dh.clamp(max=clip)) * h)
    return torch.stack((pcx - half_w, pcy - half_h, pcx + half_w, pcy + half_h), dim=-1)


def encode_boxes(targets: Tensor, boxes: Tensor) -> Tensor:
    """Inverse of :func:`decode_boxes`: targets, boxes: float[..., 4] → deltas float[..., 4] (no weights)."""
    targets, boxes = _box_dtype(targets), _box_dtype(boxes).to(_box_dtype(targets).dtype)
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    tw = targets[..., 2] - targets[..., 0]
    th = targets[..., 3] - targets[..., 1]
    dx = (targets[..., 0] + 0.5 * tw - (boxes[..., 0] + 0.5 * w)) / w
    dy = (targets[..., 1] + 0.5 * th - (boxes[..., 1] + 0.5 * h)) / h
    return torch.stack((dx, dy, torch.log(tw / w), torch.log(th / h)), dim=-1)


def clip_boxes(boxes: Tensor, height: int, width: int) -> Tensor:
    """Clamp x to [0, width] and y to [0, height] (the image size, not size − 1). boxes: float[..., 4]."""
    x = boxes[..., 0::2].clamp(0, width)
    y = boxes[..., 1::2].clamp(0, height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def small_boxes_mask(boxes: Tensor, min_size: float) -> Tensor:
    """bool[...]: True where both sides are ≥ min_size (the boxes to keep)."""
    return ((boxes[..., 2] - boxes[..., 0]) >= min_size) & ((boxes[..., 3] - boxes[..., 1]) >= min_size)


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix float[Ka, Kb] in the boxes' dtype: inter / (area_a + area_b − inter), no "+1"."""
    lt_x = torch.maximum(a[:, None, 0], b[None, :, 0])
    lt_y = torch.maximum(a[:, None, 1], b[None, :, 1])
    rb_x = torch.minimum(a[:, None, 2], b[None, :, 2])
    rb_y = torch.minimum(a[:, None, 3], b[None, :, 3])
    inter = (rb_x - lt_x).clamp(min=0) * (rb_y - lt_y).clamp(min=0)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _threshold_below(threshold: float, dtype: torch.dtype) -> float:
    """The largest value t of ``dtype`` with t ≤ threshold: for x of that dtype, x > threshold ⇔ x > t.

    torchvision's CPU kernel compares the fp32 IoU with the threshold as a double; comparing with t in the
    boxes' own dtype gives the same decision (e.g. an IoU of exactly float32(0.1) is > 0.1).
    """
    np_dtype = {torch.float32: np.float32, torch.float64: np.float64}[dtype]
    t = np_dtype(threshold)
    if float(t) > threshold:
        t = np.nextafter(t, np_dtype(-np.inf))
    return float(t)


_NMS_BLOCK = 1024


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression. boxes: float[K, 4], scores: float[K] → int64[k] kept indices, by score.

    Order: decreasing score, ties by lower index (stable sort). A box is dropped when its IoU with an
    already kept box is > ``iou_threshold``. The IoU is computed in fp32 (fp64 for fp64 boxes) exactly as
    torchvision's kernel does. Cost: the IoU rows are built in blocks of 1024 on the boxes' device; the
    greedy pass runs on the host over boolean rows.
    """
    if boxes.ndim != 2 or boxes.shape[-1] != 4 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: expected boxes [K, 4] and scores [K], got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    boxes = _box_dtype(boxes)
    order = torch.sort(scores, descending=True, stable=True).indices
    b = boxes[order]
    thr = _threshold_below(float(iou_threshold), b.dtype)
    removed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for start in range(0, n, _NMS_BLOCK):
        stop = min(n, start + _NMS_BLOCK)
        if removed[start:stop].all():
            continue
        # rows: boxes start..stop-1 against boxes start..n-1; entries j ≤ i are harmless (already decided)
        over = (box_iou(b[start:stop], b[start:]) > thr).cpu().numpy()
        tail = removed[start:]
        for r in range(stop - start):
            if tail[r]:
                continue
            keep.append(start + r)
            tail |= over[r]
    idx = torch.as_tensor(keep, dtype=torch.int64, device=boxes.device)
    return order[idx]


def batched_nms(boxes: Tensor, scores: Tensor, groups: Tensor, iou_threshold: float) -> Tensor:
    """NMS separately within each group (image, level or class) → int64[k] kept indices by decreasing score.

    Boxes of different groups never suppress each other. Runs :func:`nms` per group on the true coordinates
    (no coordinate-offset trick, which would cost fp32 precision); ties in score keep the lower index first.
    """
    if boxes.shape[0] == 0:
        return torch.empty(0, dtype=torch.int64, device=boxes.device)
    keeps = []
    for g in torch.unique(groups).tolist():
        members = torch.nonzero(groups == g).flatten()
        keeps.append(members[nms(boxes[members], scores[members], iou_threshold)])
    keep = torch.cat(keeps).sort().values
    return keep[torch.sort(scores[keep], descending=True, stable=True).indices]


def rois_from_list(boxes: Sequence[Tensor]) -> Tensor:
    """Per-image boxes [float[K_i, 4]] → float[ΣK_i, 5] rows (batch index, x0, y0, x1, y1)."""
    if len(boxes) == 0:
        return torch.zeros(0, 5)
    rows = [torch.cat((torch.full_like(b[:, :1], i), b), dim=1) for i, b in enumerate(boxes)]
    return torch.cat(rows, dim=0)


def _axis_weights(
    start: Tensor, size: Tensor, bins: int, grid: Tensor, grid_max: int, length: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Bilinear weights of one axis, torchvision semantics.

    start, size: float[K]; grid: int64[K] samples per bin (≥ 0); G = grid_max → index int64[K, bins, 2G],
    weight float[K, bins, 2G] (already divided by the samples per bin), first and last index used int64[K].
    Each sample contributes (1 − l) at its low index and l at its high index; invalid samples weigh 0.
    """
    dtype = start.dtype
    k = start.shape[0]
    p = torch.arange(bins, device=start.device, dtype=dtype)
    i = torch.arange(grid_max, device=start.device, dtype=dtype) + 0.5
    bin_size = size / bins
    g = grid.clamp(min=1).to(dtype)
    # same evaluation order as the reference kernel: (start + p·bin) + (i + 0.5)·bin / grid
    pos = (start[:, None, None] + p[None, :, None] * bin_size[:, None, None]) + (
        i[None, None, :] * bin_size[:, None, None]
    ) / g[:, None, None]
    used = torch.arange(grid_max, device=start.device)[None, None, :] < grid[:, None, None]
    valid = used & (pos >= -1.0) & (pos <= length)
    pos = pos.clamp(min=0)
    low = pos.floor().long()
    edge = low >= length - 1
    low = torch.where(edge, torch.full_like(low, length - 1), low)
    high = torch.where(edge, low, low + 1)
    frac = torch.where(edge, torch.zeros_like(pos), pos - low.to(dtype))
    scale = valid.to(dtype) / g[:, None, None]
    index = torch.cat((low, high), dim=-1)
    weight = torch.cat(((1 - frac) * scale, frac * scale), dim=-1)
    big = torch.iinfo(torch.int64).max
    first = torch.where(valid, low, big).reshape(k, -1).amin(dim=1)
    last = torch.where(valid, high, -1).reshape(k, -1).amax(dim=1)
    none = last < 0
    first = torch.where(none, torch.zeros_like(first), first)
    last = torch.where(none, torch.zeros_like(last), last)
    return index, weight, first, last


_ROI_BUDGET = 1 << 18  # window positions (rows × columns × RoIs) gathered per chunk: × C × 4 bytes of memory


def roi_align(
    features: Tensor,
    rois: Tensor | Sequence[Tensor],
    output_size: int | Sequence[int],
    spatial_scale: float | Sequence[float] = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign with torchvision's semantics (average pooling of bilinear samples).

    features: float[N, C, H, W]; rois: float[K, 5] rows (batch index, x0, y0, x1, y1) or a list of per-image
    float[K_i, 4]; output_size: P or (P, Q); spatial_scale: s or (s_y, s_x), multiplied into the RoI
    coordinates (the published model pools P2 with (1/8, 1/4)); sampling_ratio: samples per bin and axis,
    ≤ 0 for adaptive ceil(roi_size / bins); aligned: False is the legacy mode (no half-pixel shift, RoI size
    clamped to ≥ 1) → float[K, C, P, Q] in the features' dtype.

    Samples outside [−1, H] × [−1, W] give 0, coordinates in [−1, 0] clamp to 0, samples at or past the last
    row/column take it. The bilinear sampling is separable, so each RoI is computed as A_y · V · A_xᵀ on a
    window of the map that covers its samples; windows are gathered in chunks of RoIs of similar size.
    """
    if not isinstance(rois, Tensor):
        rois = rois_from_list(list(rois)).to(features.device)
    if features.ndim != 4 or rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"roi_align: expected features [N, C, H, W] and rois [K, 5], got {tuple(features.shape)} and {tuple(rois.shape)}")
    ph, pw = (output_size, output_size) if isinstance(output_size, int) else (int(output_size[0]), int(output_size[1]))
    if np.ndim(spatial_scale) == 0:
        sy = sx = float(spatial_scale)
    else:
        sy, sx = (float(v) for v in spatial_scale)
    n, c, height, width = features.shape
    k = rois.shape[0]
    if k == 0 or height == 0 or width == 0 or c == 0:
        return features.new_zeros((k, c, ph, pw))
    out = features.new_empty((k, c, ph, pw))  # every RoI is written by exactly one chunk

    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    r = rois.to(device=features.device, dtype=dtype)
    offset = 0.5 if aligned else 0.0
    start_w = r[:, 1] * sx - offset
    start_h = r[:, 2] * sy - offset
    roi_w = (r[:, 3] * sx - offset) - start_w
    roi_h = (r[:, 4] * sy - offset) - start_h
    if not aligned:
        roi_w = roi_w.clamp(min=1.0)
        roi_h = roi_h.clamp(min=1.0)
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.int64, device=r.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / ph).long().clamp(min=0)
        grid_w = torch.ceil(roi_w / pw).long().clamp(min=0)
    batch = r[:, 0].long()

    # windows per RoI, then chunks of RoIs sorted by window size so a chunk gathers little beyond its needs
    y_info = _axis_weights(start_h, roi_h, ph, grid_h, max(int(grid_h.max()), 1), height)
    x_info = _axis_weights(start_w, roi_w, pw, grid_w, max(int(grid_w.max()), 1), width)
    win_h = (y_info[3] - y_info[2] + 1).cpu()
    win_w = (x_info[3] - x_info[2] + 1).cpu()
    order = np.lexsort((win_h.numpy(), win_w.numpy()))
    wh, ww = win_h.numpy()[order].tolist(), win_w.numpy()[order].tolist()
    chunks, begin, mh, mw = [], 0, 0, 0
    for j in range(k):
        nh, nw = max(mh, wh[j]), max(mw, ww[j])
        if j > begin and (j - begin + 1) * nh * nw > _ROI_BUDGET:
            chunks.append((begin, j, mh, mw))
            begin, nh, nw = j, wh[j], ww[j]
        mh, mw = nh, nw
    chunks.append((begin, k, mh, mw))

    # [N·H·W, C]: each gathered position is one contiguous row of C values (index_select is a plain copy)
    table = features.permute(0, 2, 3, 1).reshape(n * height * width, c)
    order_t = torch.as_tensor(order, device=r.device)
    for begin, end, h_win, w_win in chunks:
        sel = order_t[begin:end]
        m = end - begin
        ay = _local_matrix(y_info, sel, h_win, height, ph)  # [m, P, h_win]
        ax = _local_matrix(x_info, sel, w_win, width, pw)  # [m, Q, w_win]
        y0 = torch.clamp(y_info[2][sel], max=height - h_win)
        x0 = torch.clamp(x_info[2][sel], max=width - w_win)
        rows = y0[:, None] + torch.arange(h_win, device=r.device)
        cols = x0[:, None] + torch.arange(w_win, device=r.device)
        flat = (batch[sel][:, None, None] * height + rows[:, :, None]) * width + cols[:, None, :]
        win = table.index_select(0, flat.reshape(-1)).to(dtype).reshape(m, h_win, w_win * c)
        t = torch.bmm(ay, win).reshape(m, ph, w_win, c)  # rows contracted: [m, P, w, C]
        t = t.permute(0, 3, 1, 2).reshape(m, c * ph, w_win)
        pooled = torch.bmm(t, ax.transpose(1, 2)).reshape(m, c, ph, pw)  # columns contracted: [m, C, P, Q]
        out.index_copy_(0, sel, pooled.to(out.dtype))
    return out


def _local_matrix(info, sel: Tensor, window: int, length: int, bins: int) -> Tensor:
    """Dense [m, bins, window] interpolation matrix of the selected RoIs on their window."""
    index, weight, first, _ = info
    index, weight = index[sel], weight[sel]
    origin = torch.minimum(first[sel], torch.tensor(length - window, device=sel.device))
    local = (index - origin[:, None, None]).clamp(0, window - 1)  # weight-0 samples may fall outside: harmless
    mat = weight.new_zeros((sel.shape[0], bins, window))
    mat.scatter_add_(2, local, weight)
    return mat
