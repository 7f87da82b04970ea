"""Training targets of the two detection stages (the paper's recipe, reference §7).

RPN: anchors are matched to the ground-truth boxes widened in x by ``frac·w + pad`` px per side; IoU ≥ 0.34
→ positive, < 0.15 → negative, in between ignored; every target's best anchors (all anchors reaching its
maximal IoU) are positive too; then 256 anchors per image are sampled, at most half of them positive.

ROI stage: the RPN proposals (no gradient) plus the ground-truth boxes and jittered copies of them are
matched to the (unwidened) ground truth; IoU ≥ 0.3 → positive, < 0.01 → negative; 128 per image are
sampled, at most half positive. Regression targets are :func:`gixdrt.model.ops.encode_boxes` deltas of the
matched box relative to the anchor / proposal (the coding the inference model decodes with).

All randomness comes from an explicit ``torch.Generator`` (CPU), so a step is reproducible from its seed.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import ops

__all__ = [
    "IGNORE",
    "RoiSample",
    "RpnTargets",
    "TargetConfig",
    "jitter_boxes",
    "match",
    "roi_targets",
    "rpn_targets",
    "sample_labels",
    "valid_boxes",
    "widen_boxes",
]

#: label of anchors / proposals that take no part in the loss
IGNORE = -1


@dataclass(frozen=True)
class TargetConfig:
    """Matching and sampling parameters (defaults: the paper's code, reference §7)."""

    rpn_pos_iou: float = 0.34
    rpn_neg_iou: float = 0.15
    rpn_batch: int = 256  # anchors sampled per image
    rpn_pos_fraction: float = 0.5
    widen_frac: float = 0.1  # RPN targets: x0 −= frac·w + pad, x1 += frac·w + pad
    widen_pad: float = 1.5
    roi_pos_iou: float = 0.3
    roi_neg_iou: float = 0.01
    roi_batch: int = 128  # ROIs sampled per image
    roi_pos_fraction: float = 0.5
    jitter_copies: int = 2  # jittered copies of each ground-truth box added to the proposals
    jitter_shift: float = 0.1  # centre shift ~ U(−s, s)·size, per axis
    jitter_scale: float = 0.1  # log-size change ~ U(−s, s), per axis


def valid_boxes(boxes: Tensor, min_size: float = 1e-3) -> Tensor:
    """Drop boxes with a side below ``min_size`` (they cannot be encoded)."""
    boxes = boxes.reshape(-1, 4).float()
    return boxes[ops.small_boxes_mask(boxes, min_size)]


def widen_boxes(boxes: Tensor, frac: float = 0.1, pad: float = 1.5) -> Tensor:
    """Widen float[K, 4] boxes in x by ``frac·w + pad`` on each side (y unchanged)."""
    grow = frac * (boxes[:, 2] - boxes[:, 0]) + pad
    return torch.stack((boxes[:, 0] - grow, boxes[:, 1], boxes[:, 2] + grow, boxes[:, 3]), dim=1)


def match(iou: Tensor, pos_iou: float, neg_iou: float, best_positive: bool = True) -> tuple[Tensor, Tensor]:
    """iou float[G, A] (targets × candidates) → (matched target int64[A], label int64[A]: 1, 0 or IGNORE).

    A candidate is positive when its best IoU is ≥ ``pos_iou``, negative when < ``neg_iou``, ignored in
    between. best_positive: every target's best candidates (all those reaching the target's maximal IoU,
    when it is > 0) are positive as well, matched to that target. With no targets all are negative.
    """
    a = iou.shape[1]
    if iou.shape[0] == 0:
        return torch.zeros(a, dtype=torch.int64, device=iou.device), torch.zeros(a, dtype=torch.int64, device=iou.device)
    best, matched = iou.max(dim=0)
    label = torch.full((a,), IGNORE, dtype=torch.int64, device=iou.device)
    label[best < neg_iou] = 0
    label[best >= pos_iou] = 1
    if best_positive:
        per_target = iou.max(dim=1, keepdim=True).values
        g_idx, a_idx = torch.nonzero((iou == per_target) & (per_target > 0), as_tuple=True)
        label[a_idx] = 1
        matched[a_idx] = g_idx  # a tie between targets: the later target wins (a candidate has one target)
    return matched, label


def sample_labels(label: Tensor, num: int, pos_fraction: float, generator: torch.Generator | None = None) -> Tensor:
    """Keep at most ``num·pos_fraction`` random positives and fill up to ``num`` with random negatives;
    the others become IGNORE. Returns a new label tensor."""
    out = torch.full_like(label, IGNORE)
    pos = torch.nonzero(label == 1).flatten()
    neg = torch.nonzero(label == 0).flatten()
    n_pos = min(pos.numel(), int(num * pos_fraction))
    n_neg = min(neg.numel(), num - n_pos)
    pos = pos[torch.randperm(pos.numel(), generator=generator)[:n_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator)[:n_neg].to(neg.device)]
    out[pos] = 1
    out[neg] = 0
    return out


@dataclass
class RpnTargets:
    """labels int64[N, A] (1, 0, IGNORE after sampling) and deltas float32[N, A, 4] (valid where label 1)."""

    labels: Tensor
    deltas: Tensor


def rpn_targets(
    anchors: Tensor, gt_boxes: Sequence[Tensor], cfg: TargetConfig | None = None, generator: torch.Generator | None = None
) -> RpnTargets:
    """anchors float[A, 4] (all levels concatenated in the RPN's flatten order), per-image ground truth
    float[K_i, 4] → sampled labels and regression targets against the widened ground truth."""
    cfg = cfg or TargetConfig()
    labels, deltas = [], []
    for gt in gt_boxes:
        gt = valid_boxes(gt.to(anchors.device))
        wide = widen_boxes(gt, cfg.widen_frac, cfg.widen_pad)
        matched, label = match(ops.box_iou(wide, anchors), cfg.rpn_pos_iou, cfg.rpn_neg_iou)
        label = sample_labels(label, cfg.rpn_batch, cfg.rpn_pos_fraction, generator)
        d = torch.zeros_like(anchors)
        pos = label == 1
        if pos.any():
            d[pos] = ops.encode_boxes(wide[matched[pos]], anchors[pos])
        labels.append(label)
        deltas.append(d)
    return RpnTargets(torch.stack(labels), torch.stack(deltas))


def jitter_boxes(boxes: Tensor, copies: int, shift: float, scale: float, generator: torch.Generator | None = None) -> Tensor:
    """``copies`` randomly shifted and rescaled copies of each box: centre += U(−shift, shift)·size and
    log(size) += U(−scale, scale), independently per axis → float[copies·K, 4]."""
    if copies <= 0 or boxes.shape[0] == 0:
        return boxes.new_zeros((0, 4))
    b = boxes.repeat(copies, 1)
    w = b[:, 2] - b[:, 0]
    h = b[:, 3] - b[:, 1]
    cx = b[:, 0] + 0.5 * w
    cy = b[:, 1] + 0.5 * h
    u = (torch.rand((b.shape[0], 4), generator=generator) * 2 - 1).to(b.device)
    cx = cx + u[:, 0] * shift * w
    cy = cy + u[:, 1] * shift * h
    w = w * torch.exp(u[:, 2] * scale)
    h = h * torch.exp(u[:, 3] * scale)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=1)


@dataclass
class RoiSample:
    """Per image: sampled ROI boxes float32[R_i, 4], labels int64[R_i] (1/0), deltas float32[R_i, 4]."""

    boxes: list[Tensor]
    labels: list[Tensor]
    deltas: list[Tensor]

    def cat(self) -> tuple[Tensor, Tensor]:
        """(labels int64[ΣR_i], deltas float32[ΣR_i, 4]) in the order of the pooled ROIs."""
        return torch.cat(self.labels), torch.cat(self.deltas)


def roi_targets(
    proposals: Sequence[Tensor],
    gt_boxes: Sequence[Tensor],
    image_shape: tuple[int, int],
    cfg: TargetConfig | None = None,
    generator: torch.Generator | None = None,
) -> RoiSample:
    """Proposals (detached) + ground truth + jittered ground truth → sampled ROIs with targets."""
    cfg = cfg or TargetConfig()
    height, width = image_shape
    boxes_out, labels_out, deltas_out = [], [], []
    for props, gt in zip(proposals, gt_boxes):
        gt = valid_boxes(gt.to(props.device))
        extra = ops.clip_boxes(jitter_boxes(gt, cfg.jitter_copies, cfg.jitter_shift, cfg.jitter_scale, generator), height, width)
        cand = valid_boxes(torch.cat((props.detach().float(), gt, extra)))
        matched, label = match(ops.box_iou(gt, cand), cfg.roi_pos_iou, cfg.roi_neg_iou, best_positive=False)
        label = sample_labels(label, cfg.roi_batch, cfg.roi_pos_fraction, generator)
        keep = torch.nonzero(label >= 0).flatten()
        cand, label, matched = cand[keep], label[keep], matched[keep]
        d = torch.zeros_like(cand)
        pos = label == 1
        if pos.any():
            d[pos] = ops.encode_boxes(gt[matched[pos]], cand[pos])
        boxes_out.append(cand)
        labels_out.append(label)
        deltas_out.append(d)
    return RoiSample(boxes_out, labels_out, deltas_out)
