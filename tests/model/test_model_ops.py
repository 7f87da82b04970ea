"""Box coding, NMS and RoIAlign (torch, vectorised) against the NumPy specifications in gixdrt.kernels.reference
(boxes: decode and nms in float64 or float32; roi_align: the naive float64 loops).

Tolerances (fp32 fast ops vs float64 references):
- box decoding: 1e-4 px absolute on coordinates up to ~2000 px (fp32 ulp there is 1.2e-4);
- RoIAlign: 2e-5 absolute on unit-variance features (fp32 sums of ≤ 64 weighted samples);
- NMS: identical kept lists. Random boxes are drawn with fixed seeds; integer boxes make every IoU exact in
  both precisions, so ties at the threshold are decided the same way.
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from gixdrt.kernels.reference import roi_align as roi_align_spec
from gixdrt.kernels.reference.boxes import BBOX_CLIP, decode, nms
from gixdrt.model import ops


def decode_boxes_reference(deltas, boxes):
    return decode(deltas, boxes, BBOX_CLIP, np.float64)


def nms_reference(boxes, scores, iou_threshold, iou_dtype=np.float64):
    return nms(boxes, scores, iou_threshold, iou_dtype).tolist()


def roi_align_reference(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    return roi_align_spec.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned, dtype=np.float64)


TOL_BOX = 1e-4
TOL_ROI = 2e-5


def _random_boxes(n: int, seed: int, span: float = 100.0, size: float = 30.0, integer: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * span
    wh = torch.rand(n, 2, generator=g) * size + 0.5
    boxes = torch.cat((xy, xy + wh), dim=1)
    return boxes.round() if integer else boxes


# --- box coding -------------------------------------------------------------------------------------
def test_decode_matches_reference_including_clamp():
    g = torch.Generator().manual_seed(0)
    boxes = _random_boxes(200, 1, span=1000.0, size=400.0)
    deltas = torch.randn(200, 4, generator=g) * 0.5
    deltas[:10, 2:] = 8.0  # above log(1000/16): clamped
    deltas[10:20, 2:] = -8.0  # no lower clamp
    got = ops.decode_boxes(deltas, boxes)
    want = decode_boxes_reference(deltas.numpy(), boxes.numpy())
    np.testing.assert_allclose(got.numpy(), want, atol=TOL_BOX, rtol=1e-6)
    widths = (got[:10, 2] - got[:10, 0]) / (boxes[:10, 2] - boxes[:10, 0])
    np.testing.assert_allclose(widths.numpy(), 1000 / 16, rtol=1e-5)
    assert BBOX_CLIP == pytest.approx(math.log(1000 / 16))


def test_encode_inverts_decode():
    boxes = _random_boxes(100, 2)
    targets = _random_boxes(100, 3)
    back = ops.decode_boxes(ops.encode_boxes(targets, boxes), boxes)
    np.testing.assert_allclose(back.numpy(), targets.numpy(), atol=1e-4)


def test_clip_and_small_boxes():
    boxes = torch.tensor([[-5.0, -3.0, 1030.0, 600.0], [10.0, 10.0, 10.0005, 20.0], [3.0, 4.0, 5.0, 6.0]])
    clipped = ops.clip_boxes(boxes, 512, 1024)
    assert clipped[0].tolist() == [0.0, 0.0, 1024.0, 512.0]  # W and H, not W − 1
    assert ops.small_boxes_mask(clipped, 1e-3).tolist() == [True, False, True]


# --- NMS ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nms_matches_reference_random(threshold, seed):
    boxes = _random_boxes(300, seed)
    scores = torch.rand(300, generator=torch.Generator().manual_seed(seed + 10))
    keep = ops.nms(boxes, scores, threshold)
    assert keep.dtype == torch.int64
    assert keep.tolist() == nms_reference(boxes.numpy(), scores.numpy(), threshold)
    assert torch.all(scores[keep][:-1] >= scores[keep][1:])


@pytest.mark.parametrize("threshold", [0.1, 0.25, 0.5])
def test_nms_integer_boxes_with_ties(threshold):
    """Integer boxes: many IoUs sit exactly at 0.1, 0.25 or 0.5, and scores have many ties.

    At 0.25 and 0.5 the fp32 IoU is exact, so the float64 reference decides the same way. At 0.1 an IoU of
    k/(10k) rounds up in fp32 (torchvision's kernel suppresses, float64 keeps): there the reference runs with
    its IoU in float32, as torchvision's kernel computes it.
    """
    boxes = _random_boxes(400, 5, span=40.0, size=8.0, integer=True)
    boxes[:, 2:] = torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)
    scores = torch.randint(0, 5, (400,), generator=torch.Generator().manual_seed(6)).float()
    keep = ops.nms(boxes, scores, threshold)
    want = nms_reference(boxes.numpy(), scores.numpy(), threshold, iou_dtype=np.float32)
    # ties reorder nothing here (both sorts are stable), but compare what matters first: the kept scores
    assert scores[keep].tolist() == scores.numpy()[want].tolist()
    assert keep.tolist() == want
    if threshold != 0.1:
        assert want == nms_reference(boxes.numpy(), scores.numpy(), threshold)


def test_nms_iou_exactly_at_threshold_is_kept():
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 4.0, 1.0]])  # IoU = 1 / 4 exactly
    scores = torch.tensor([0.9, 0.8])
    assert ops.nms(boxes, scores, 0.25).tolist() == [0, 1]
    assert ops.nms(boxes, scores, 0.2499).tolist() == [0]
    assert nms_reference(boxes, scores, 0.25) == [0, 1]


def test_nms_fp32_iou_compared_as_torchvision_does():
    """IoU = 1/10: in fp32 it rounds to 0.10000000149 > 0.1 (torchvision's kernel compares that fp32 value with
    the double threshold), so the box is suppressed; a float64 computation gives exactly 0.1 and keeps it."""
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 10.0, 1.0]])  # inter 1, union 10
    scores = torch.tensor([0.9, 0.8])
    assert ops.nms(boxes, scores, 0.1).tolist() == [0]
    assert ops.nms(boxes.double(), scores.double(), 0.1).tolist() == [0, 1]
    assert nms_reference(boxes, scores, 0.1) == [0, 1]
    assert nms_reference(boxes, scores, 0.1, iou_dtype=np.float32) == [0]


def test_nms_tied_scores_keep_lower_index():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.5, 0.5, 0.5])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0, 2]


def test_nms_degenerate_and_empty():
    assert ops.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).shape == (0,)
    boxes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])  # 0/0 IoU never suppresses
    assert ops.nms(boxes, torch.tensor([0.2, 0.1]), 0.5).tolist() == [0, 1]
    with pytest.raises(ValueError):
        ops.nms(torch.zeros(3, 4), torch.zeros(2), 0.5)


def test_nms_many_blocks(monkeypatch):
    monkeypatch.setattr(ops, "_NMS_BLOCK", 37)
    boxes = _random_boxes(250, 7, span=60.0)
    scores = torch.rand(250, generator=torch.Generator().manual_seed(8))
    assert ops.nms(boxes, scores, 0.3).tolist() == nms_reference(boxes, scores, 0.3)


def test_batched_nms_groups_do_not_interact():
    boxes = _random_boxes(300, 11, span=50.0)
    scores = torch.rand(300, generator=torch.Generator().manual_seed(12))
    groups = torch.randint(0, 3, (300,), generator=torch.Generator().manual_seed(13))
    keep = ops.batched_nms(boxes, scores, groups, 0.4)
    want = []
    for g in range(3):
        idx = torch.nonzero(groups == g).flatten()
        want += idx[nms_reference(boxes[idx], scores[idx], 0.4)].tolist()
    want.sort(key=lambda i: (-float(scores[i]), i))
    assert keep.tolist() == want
    assert ops.batched_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).shape == (0,)


def test_nms_3000_boxes_is_fast():
    boxes = _random_boxes(3000, 21, span=1000.0, size=50.0)
    scores = torch.rand(3000, generator=torch.Generator().manual_seed(22))
    ops.nms(boxes, scores, 0.5)
    t = time.perf_counter()
    ops.nms(boxes, scores, 0.5)
    assert time.perf_counter() - t < 2.0  # ~0.05 s on 2 idle cores; loose for shared CI machines


# --- RoIAlign -----------------------------------------------------------------------------------------
def _roi_case(seed: int, k: int = 30):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 3, 9, 11, generator=g)
    xy = torch.rand(k, 2, generator=g) * torch.tensor([16.0, 14.0]) - 3.0  # partly outside the 11×9 map
    wh = torch.rand(k, 2, generator=g) * 9.0
    wh[:5] *= 0.01  # tiny RoIs
    wh[5:8] = 0.0  # empty RoIs
    boxes = torch.cat((xy, xy + wh), dim=1)
    boxes[8] = torch.tensor([-30.0, -30.0, -20.0, -20.0])  # wholly outside
    boxes[9] = torch.tensor([5.0, 6.0, 3.0, 2.0])  # inverted
    batch = torch.randint(0, 2, (k, 1), generator=g).float()
    return features, torch.cat((batch, boxes), dim=1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("scale", [1.0, (0.5, 0.75)])
def test_roi_align_matches_reference(aligned, sampling_ratio, scale):
    features, rois = _roi_case(3)
    got = ops.roi_align(features, rois, (4, 5), scale, sampling_ratio, aligned)
    want = roi_align_reference(features.numpy(), rois.numpy(), (4, 5), scale, sampling_ratio, aligned)
    assert got.shape == (30, 3, 4, 5) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, atol=TOL_ROI, rtol=0)


def test_roi_align_published_geometry_and_chunks(monkeypatch):
    """Tall narrow RoIs on an anisotropic map (x·1/4, y·1/8), adaptive sampling, split into many chunks."""
    monkeypatch.setattr(ops, "_ROI_BUDGET", 300)
    g = torch.Generator().manual_seed(4)
    features = torch.randn(1, 2, 8, 32, generator=g)  # an image of 64 × 128 px
    k = 25
    x0 = torch.rand(k, generator=g) * 130 - 4
    y0 = torch.rand(k, generator=g) * 60 - 2
    w = torch.rand(k, generator=g) * 14 + 0.5
    h = torch.rand(k, generator=g) * 70
    rois = torch.stack((torch.zeros(k), x0, y0, x0 + w, y0 + h), dim=1)
    got = ops.roi_align(features, rois, 16, (1 / 8, 1 / 4), -1, False)
    want = roi_align_reference(features.numpy(), rois.numpy(), 16, (1 / 8, 1 / 4), -1, False)
    np.testing.assert_allclose(got.numpy(), want, atol=TOL_ROI, rtol=0)


def test_roi_align_list_input_float64_and_empty():
    features, rois = _roi_case(5, k=12)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    got = ops.roi_align(features, per_image, 3)
    order = torch.cat([torch.nonzero(rois[:, 0] == i).flatten() for i in range(2)])
    np.testing.assert_allclose(got.numpy(), ops.roi_align(features, rois[order], 3).numpy(), atol=0)
    got64 = ops.roi_align(features.double(), rois, 3, 1.0, -1, True)
    want = roi_align_reference(features.numpy(), rois.numpy(), 3, 1.0, -1, True)
    assert got64.dtype == torch.float64
    np.testing.assert_allclose(got64.numpy(), want, atol=1e-12)
    assert ops.roi_align(features, torch.zeros(0, 5), 16).shape == (0, 3, 16, 16)
    with pytest.raises(ValueError):
        ops.roi_align(features[0], rois, 4)


def test_roi_align_1000_rois_is_fast():
    torch.manual_seed(0)
    features = torch.randn(1, 64, 64, 256)
    k = 1000
    x0 = torch.rand(k) * 1000
    y0 = torch.rand(k) * 300
    rois = torch.stack((torch.zeros(k), x0, y0, x0 + torch.rand(k) * 12 + 3, y0 + torch.rand(k) * 200 + 50), dim=1)
    ops.roi_align(features, rois, 16, (1 / 8, 1 / 4))
    t = time.perf_counter()
    out = ops.roi_align(features, rois, 16, (1 / 8, 1 / 4))
    assert out.shape == (1000, 64, 16, 16)
    assert time.perf_counter() - t < 3.0  # ~0.15 s on 2 idle cores; loose for shared CI machines
