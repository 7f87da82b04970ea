"""Target assignment of the two stages on hand-made boxes (gixdrt.train.targets)."""
from __future__ import annotations

import pytest
import torch

from gixdrt.model import ops
from gixdrt.train.targets import (
    IGNORE,
    TargetConfig,
    jitter_boxes,
    match,
    roi_targets,
    rpn_targets,
    sample_labels,
    widen_boxes,
)


def _t(rows):
    return torch.tensor(rows, dtype=torch.float32)


def test_widen_boxes_x_only():
    b = _t([[10, 5, 20, 50]])  # w = 10 → 0.1·10 + 1.5 = 2.5 px per side
    assert torch.equal(widen_boxes(b, 0.1, 1.5), _t([[7.5, 5, 22.5, 50]]))


def test_match_thresholds_without_best():
    iou = _t([[0.34, 0.3399, 0.15, 0.1499, 0.0, 0.5]])
    matched, label = match(iou, 0.34, 0.15, best_positive=False)
    assert label.tolist() == [1, IGNORE, IGNORE, 0, 0, 1]
    assert matched.tolist() == [0] * 6


def test_match_best_anchors_positive_with_ties():
    # target 0 peaks at 0.1 (below the negative threshold) on two anchors: both become positive
    iou = _t([[0.1, 0.05, 0.1, 0.0], [0.0, 0.0, 0.0, 0.6]])
    matched, label = match(iou, 0.34, 0.15)
    assert label.tolist() == [1, 0, 1, 1]
    assert matched[[0, 2, 3]].tolist() == [0, 0, 1]


def test_match_no_targets_all_negative():
    _, label = match(torch.zeros(0, 7), 0.34, 0.15)
    assert label.tolist() == [0] * 7


def test_rpn_targets_widening_and_best_anchor():
    anchors = _t([[0, 0, 10, 100], [20, 0, 30, 100], [45, 0, 55, 100], [100, 0, 110, 100]])
    # narrow box: IoU 0.2 with anchor 0 unwidened, 5.4 / 10 = 0.54 widened (±1.7 px) → positive
    # short box at x ≈ 50: widened IoU with anchor 2 is 0.084 < 0.15, but it is that target's best → positive
    gt = _t([[4, 0, 6, 100], [50, 0, 51, 20]])
    t = rpn_targets(anchors, [gt], TargetConfig(), torch.Generator().manual_seed(0))
    assert t.labels.tolist() == [[1, 0, 1, 0]]
    wide = widen_boxes(gt, 0.1, 1.5)
    assert torch.allclose(t.deltas[0, 0], ops.encode_boxes(wide[0], anchors[0]))
    assert torch.allclose(t.deltas[0, 2], ops.encode_boxes(wide[1], anchors[2]))
    assert torch.allclose(ops.decode_boxes(t.deltas[0, 0], anchors[0]), wide[0], atol=1e-5)
    # the widening is what makes anchor 0 positive: with a tighter anchor present, anchor 0 (IoU 0.2 with
    # the unwidened box) is ignored without widening and positive (0.54) with it
    anchors2 = torch.cat((anchors, _t([[3, 0, 7, 100]])))
    with_w = rpn_targets(anchors2, [gt[:1]], TargetConfig(), torch.Generator().manual_seed(0))
    without = rpn_targets(anchors2, [gt[:1]], TargetConfig(widen_frac=0.0, widen_pad=0.0), torch.Generator().manual_seed(0))
    assert with_w.labels[0, 0] == 1 and with_w.labels[0, 4] == 1
    assert without.labels[0, 0] == IGNORE and without.labels[0, 4] == 1


def test_rpn_targets_empty_image_all_sampled_negative():
    anchors = torch.cat([_t([[i, 0, i + 10, 100]]) for i in range(0, 400, 4)])
    t = rpn_targets(anchors, [torch.zeros(0, 4)], TargetConfig(rpn_batch=32), torch.Generator().manual_seed(1))
    assert (t.labels == 0).sum() == 32 and (t.labels == 1).sum() == 0


@pytest.mark.parametrize("n_pos,n_neg", [(300, 1000), (10, 1000), (300, 20)])
def test_sample_labels_caps(n_pos, n_neg):
    label = torch.cat([torch.ones(n_pos), torch.zeros(n_neg), torch.full((50,), IGNORE)]).long()
    label = label[torch.randperm(label.numel(), generator=torch.Generator().manual_seed(0))]
    out = sample_labels(label, 256, 0.5, torch.Generator().manual_seed(2))
    pos, neg = int((out == 1).sum()), int((out == 0).sum())
    assert pos == min(n_pos, 128)
    assert neg == min(n_neg, 256 - pos)
    # only original positives / negatives are kept with their label
    assert torch.all(label[out == 1] == 1) and torch.all(label[out == 0] == 0)
    again = sample_labels(label, 256, 0.5, torch.Generator().manual_seed(2))
    assert torch.equal(out, again)  # reproducible from the generator


def test_jitter_boxes_shape_and_bounds():
    gt = _t([[10, 10, 20, 110], [50, 0, 52, 200]])
    j = jitter_boxes(gt, 3, 0.1, 0.1, torch.Generator().manual_seed(0))
    assert j.shape == (6, 4)
    iou = ops.box_iou(gt.repeat(3, 1), j).diagonal()
    assert torch.all(iou > 0.6)


def test_roi_targets_gt_added_and_caps():
    gt = _t([[10, 10, 14, 110], [50, 0, 52, 200]])
    # many background proposals far from the targets, and one overlapping proposal
    props = torch.cat([_t([[i, 0, i + 4, 250]]) for i in range(100, 250, 1)] + [_t([[10, 12, 14.5, 108]])])
    cfg = TargetConfig(roi_batch=16, jitter_copies=2)
    s = roi_targets([props], [gt], (256, 256), cfg, torch.Generator().manual_seed(0))
    labels, deltas = s.cat()
    assert labels.numel() == 16
    assert int((labels == 1).sum()) <= 8 and int((labels == 1).sum()) >= 1
    boxes = s.boxes[0]
    pos = labels == 1
    # positives have IoU ≥ 0.3 with a target and decode back onto it; negatives have IoU < 0.01
    iou = ops.box_iou(gt, boxes).max(dim=0)
    assert torch.all(iou.values[pos] >= 0.3) and torch.all(iou.values[~pos] < 0.01)
    dec = ops.decode_boxes(deltas[pos], boxes[pos])
    assert torch.allclose(dec, gt[iou.indices[pos]], atol=1e-4)
    assert torch.all(deltas[~pos] == 0)


def test_roi_targets_gt_boxes_are_candidates():
    gt = _t([[10, 10, 14, 110]])
    cfg = TargetConfig(jitter_copies=0)
    s = roi_targets([torch.zeros(0, 4)], [gt], (128, 128), cfg, torch.Generator().manual_seed(0))
    assert s.labels[0].tolist() == [1]
    assert torch.equal(s.boxes[0], gt) and torch.allclose(s.deltas[0], torch.zeros(1, 4))
