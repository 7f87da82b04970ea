"""Training forward and losses of :class:`gixdrt.model.GixdDetector` (reference §7).

The forward reuses the detector's own stages: ``model.dense`` (backbone, FPN, RPN head, with gradient),
``model.proposals`` (under ``no_grad``, on detached RPN outputs), ``model.roi_features`` on the sampled
ROIs and ``model.head``. Only the target assignment (:mod:`gixdrt.train.targets`) and the losses are new.

Losses (all in fp32, also under autocast):

- RPN objectness: BCE-with-logits over the sampled anchors (mean);
- RPN box: smooth-L1 (β = 1/9) of the encoded deltas, summed over the positive anchors and divided by
  the number of sampled anchors;
- ROI score: BCE-with-logits of the single score logit, target 1 / 0 (inference reads 2·sigmoid − 1);
- ROI box: smooth-L1 (β = 1/9) of the deltas relative to the ROI, positives, divided by the sampled ROIs;
- total = 1·rpn_obj + 10·rpn_box + 1·roi_score + 10·roi_box (weights configurable).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..model.network import Dense, GixdDetector, Proposals, flatten_rpn
from .targets import RoiSample, RpnTargets, TargetConfig, roi_targets, rpn_targets

__all__ = ["LOSS_TERMS", "LossWeights", "detector_losses", "roi_losses", "rpn_losses", "smooth_l1"]

#: the loss terms, in the order of losses.csv
LOSS_TERMS = ("rpn_obj", "rpn_box", "roi_score", "roi_box")


@dataclass(frozen=True)
class LossWeights:
    rpn_obj: float = 1.0
    rpn_box: float = 10.0
    roi_score: float = 1.0
    roi_box: float = 10.0
    beta: float = 1.0 / 9.0  # smooth-L1 transition point

    def total(self, terms: dict[str, Tensor]) -> Tensor:
        return sum(getattr(self, k) * terms[k] for k in LOSS_TERMS)


def smooth_l1(pred: Tensor, target: Tensor, beta: float) -> Tensor:
    """Elementwise smooth-L1: 0.5·d²/β for |d| < β, else |d| − 0.5·β."""
    d = (pred - target).abs()
    return torch.where(d < beta, 0.5 * d * d / beta, d - 0.5 * beta)


def rpn_losses(dense: Dense, targets: RpnTargets, beta: float = 1.0 / 9.0) -> tuple[Tensor, Tensor]:
    """(objectness, box) losses of the RPN outputs against sampled targets (labels 1/0/−1 per anchor)."""
    flat = [flatten_rpn(lg, dl) for lg, dl in zip(dense.logits, dense.deltas)]
    logits = torch.cat([f[0] for f in flat], dim=1).float()
    deltas = torch.cat([f[1] for f in flat], dim=1).float()
    labels = targets.labels
    sampled = labels >= 0
    n = sampled.sum().clamp(min=1)
    obj = F.binary_cross_entropy_with_logits(logits[sampled], labels[sampled].float(), reduction="sum") / n
    pos = labels == 1
    box = smooth_l1(deltas[pos], targets.deltas[pos], beta).sum() / n
    return obj, box


def roi_losses(logits: Tensor, deltas: Tensor, sample: RoiSample, beta: float = 1.0 / 9.0) -> tuple[Tensor, Tensor]:
    """(score, box) losses of the box head on the sampled ROIs."""
    labels, target = sample.cat()
    n = max(labels.numel(), 1)
    score = F.binary_cross_entropy_with_logits(logits.float(), labels.float(), reduction="sum") / n
    pos = labels == 1
    box = smooth_l1(deltas.float()[pos], target[pos], beta).sum() / n
    return score, box


def detector_losses(
    model: GixdDetector,
    images: Tensor,
    gt_boxes: Sequence[Tensor],
    targets: TargetConfig | None = None,
    weights: LossWeights | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """One training forward: images float[N, 1, H, W] in [0, 1], per-image boxes float[K_i, 4] →
    {"rpn_obj", "rpn_box", "roi_score", "roi_box", "total"} (scalars; "total" has the gradient of all).

    The model's mode is left as it is (call ``model.train()`` for batch-statistics BN).
    """
    targets = targets or TargetConfig()
    weights = weights or LossWeights()
    gt_boxes = [torch.as_tensor(b, dtype=torch.float32).to(images.device) for b in gt_boxes]
    dense = model.dense(images)
    anchors = torch.cat(model.anchors(dense.image_shape, [f.shape[-2:] for f in dense.features], images.device))
    rpn_t = rpn_targets(anchors, gt_boxes, targets, generator)
    rpn_obj, rpn_box = rpn_losses(dense, rpn_t, weights.beta)

    with torch.no_grad():
        detached = Dense(dense.features, [t.detach() for t in dense.logits], [t.detach() for t in dense.deltas], dense.image_shape)
        props = model.proposals(detached)
    sample = roi_targets(props.boxes, gt_boxes, dense.image_shape, targets, generator)
    feats = model.roi_features(dense, Proposals(sample.boxes, [b.new_ones(b.shape[0]) for b in sample.boxes], dense.image_shape))
    logits, deltas = model.head(feats)
    roi_score, roi_box = roi_losses(logits, deltas, sample, weights.beta)

    terms = {"rpn_obj": rpn_obj, "rpn_box": rpn_box, "roi_score": roi_score, "roi_box": roi_box}
    terms["total"] = weights.total(terms)
    return terms
