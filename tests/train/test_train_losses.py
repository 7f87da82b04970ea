"""Training forward and losses (gixdrt.train.losses) on simulated images."""
from __future__ import annotations

import math

import pytest
import torch

from gixdrt.model import GixdDetector
from gixdrt.sim import simulate
from gixdrt.train.losses import LOSS_TERMS, LossWeights, detector_losses, smooth_l1
from gixdrt.train.targets import TargetConfig

SIZE = (64, 256)


@pytest.fixture(scope="module")
def batch():
    b = simulate(2, seed=3, size=SIZE)
    return torch.from_numpy(b.images)[:, None], [torch.from_numpy(x) for x in b.boxes]


def test_smooth_l1_values():
    beta = 1 / 9
    d = torch.tensor([0.0, 0.05, 1.0, -2.0])
    got = smooth_l1(d, torch.zeros(4), beta)
    want = torch.tensor([0.0, 0.5 * 0.05**2 / beta, 1.0 - 0.5 * beta, 2.0 - 0.5 * beta])
    assert torch.allclose(got, want)


def test_losses_finite_positive_and_all_parameters_get_gradients(batch):
    images, boxes = batch
    assert all(len(b) for b in boxes)
    torch.manual_seed(0)
    model = GixdDetector().train()
    terms = detector_losses(model, images, boxes, TargetConfig(), LossWeights(), torch.Generator().manual_seed(0))
    for k in LOSS_TERMS:
        v = float(terms[k].detach())
        assert math.isfinite(v) and v > 0, (k, v)
    w = LossWeights()
    assert float(terms["total"].detach()) == pytest.approx(sum(getattr(w, k) * float(terms[k].detach()) for k in LOSS_TERMS), rel=1e-5)
    # untrained, the objectness terms sit near BCE at p = ½
    assert 0.3 < float(terms["rpn_obj"].detach()) < 1.5 and 0.3 < float(terms["roi_score"].detach()) < 1.5
    terms["total"].backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert missing == []
    assert model.training  # left in train mode: BN used batch statistics


def test_losses_image_without_targets(batch):
    images, _ = batch
    model = GixdDetector().train()
    terms = detector_losses(model, images, [torch.zeros(0, 4)] * 2, generator=torch.Generator().manual_seed(0))
    assert float(terms["rpn_box"].detach()) == 0 and float(terms["roi_box"].detach()) == 0
    assert float(terms["rpn_obj"].detach()) > 0 and float(terms["roi_score"].detach()) > 0
    terms["total"].backward()


def test_losses_bf16_autocast(batch):
    images, boxes = batch
    torch.manual_seed(0)
    model = GixdDetector().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = detector_losses(model, images, boxes, generator=torch.Generator().manual_seed(0))
    assert all(terms[k].dtype == torch.float32 and torch.isfinite(terms[k]) for k in LOSS_TERMS)
    terms["total"].backward()
