"""gixdrt.testing: the ring matching used to check a model on the published real frame."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.testing import PUBLISHED_REAL_FRAME_DETECTIONS, match_rings, published_ring_q


def test_published_ring_q_uses_w_minus_1():
    q = published_ring_q(3.0, width=1024)
    ref = PUBLISHED_REAL_FRAME_DETECTIONS
    assert q.shape == (12,)
    np.testing.assert_allclose(q[0], (ref[0, 0] + ref[0, 2]) / 2 * 3.0 / 1023)


def test_match_rings_one_to_one_with_tolerance():
    ref = np.array([1.0, 2.0, 3.0])
    # two detections near ring 2 (one extra), ring 3 just outside the tolerance, one stray peak
    res = match_rings([2.004, 1.0001, 2.001, 3.0101, 0.5], ref, tol_q=0.01)
    assert res["found"] == 2
    assert res["missing"] == [3.0]
    assert res["extra"] == 3
    assert res["max_dq"] == pytest.approx(0.001)
    assert res["pairs"] == [(1.0, 1.0001), (2.0, 2.001)]  # the nearer of the two candidates wins


def test_match_rings_empty():
    res = match_rings([], np.array([1.0, 2.0]))
    assert res["found"] == 0 and res["extra"] == 0 and np.isnan(res["max_dq"]) and res["missing"] == [1.0, 2.0]
