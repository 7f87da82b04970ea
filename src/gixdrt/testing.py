"""Reference detections and structural comparison of detections, for tests, benchmarks and users who
validate a backend or a model.

Detections are compared structurally (STYLE: match boxes, then compare coordinates and scores), never by
array index: each reference box is matched to the detection with the nearest centre, one to one.
"""
from __future__ import annotations

import numpy as np

#: The published default model's detections on the published real frame (shared/reference §5):
#: (x0, y0, x1, y1, score) in polar pixels, thresholds 0.6 / 0.1, polar image 512 × 1024.
PUBLISHED_REAL_FRAME_DETECTIONS = np.array(
    [
        (117.48, 186.08, 126.01, 503.33, 0.99821),
        (282.41, 5.95, 286.39, 505.07, 0.99997),
        (399.69, 17.04, 403.92, 500.39, 0.99997),
        (490.50, 126.96, 496.23, 464.18, 0.95091),
        (565.68, 7.30, 570.44, 477.59, 0.99998),
        (631.98, 14.76, 637.86, 472.70, 0.99998),
        (691.64, 9.12, 699.15, 458.71, 0.99998),
        (799.53, 12.45, 807.14, 443.77, 0.99999),
        (848.02, 14.20, 855.95, 441.58, 0.99998),
        (894.14, 69.05, 901.61, 473.27, 0.99872),
        (979.73, 157.81, 987.57, 429.74, 0.99978),
        (1018.60, 184.04, 1024.00, 446.57, 0.95867),
    ]
)


def match_detections(
    boxes: np.ndarray,
    scores: np.ndarray,
    reference: np.ndarray = PUBLISHED_REAL_FRAME_DETECTIONS,
    *,
    tol_px: float = 0.05,
    tol_score: float = 1e-3,
) -> np.ndarray:
    """Match each reference row (x0, y0, x1, y1, score) to the detection with the nearest box centre, one to
    one and exactly as many; raise AssertionError naming the first box off by more than ``tol_px`` (largest
    coordinate difference) or ``tol_score``. Returns, per reference row, the index of its detection."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    scores = np.asarray(scores, np.float64).reshape(-1)
    reference = np.asarray(reference, np.float64).reshape(-1, 5)
    if len(boxes) != len(reference):
        raise AssertionError(f"{len(boxes)} detections, expected {len(reference)}")
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    idx = np.empty(len(reference), np.int64)
    for i, row in enumerate(reference):
        j = int(np.argmin(np.hypot(*(centres - (row[:2] + row[2:4]) / 2).T))) if len(boxes) else -1
        err = np.abs(boxes[j] - row[:4]).max()
        if err > tol_px:
            raise AssertionError(f"reference box {row[:4]}: nearest detection {boxes[j]} is {err:.4f} px off")
        if abs(scores[j] - row[4]) > tol_score:
            raise AssertionError(f"reference box {row[:4]}: score {scores[j]} vs {row[4]}")
        idx[i] = j
    if len(set(idx.tolist())) != len(idx):
        raise AssertionError(f"two reference boxes matched the same detection: {idx.tolist()}")
    return idx
