"""Fixtures of the GIXD pipeline's tests: a small random model that keeps every box, and a batch of images."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def keep_all():
    """A small random model that keeps every box (score threshold −1): many detections to compare."""
    torch = pytest.importorskip("torch")
    from gixdrt.model import GixdDetector

    torch.manual_seed(5)
    model = GixdDetector()
    model.score_threshold = -1.0
    return model


@pytest.fixture(scope="module")
def images():
    """Two random 64×128 detector inputs in [0, 1]."""
    return np.random.default_rng(4).random((2, 64, 128), dtype=np.float32)
