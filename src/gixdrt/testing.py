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


def match_boxes(got, want, *, tol_px: float | None = None, centre_px: float | None = None,
                min_iou: float | None = None, tol_score: float) -> list[tuple[int, int]]:
    """Match the detections ``got`` = (boxes [K, 4], scores [K]) to ``want`` one to one (each wanted box takes the
    got box nearest in its largest coordinate difference) and assert the tolerances: ``tol_px`` per coordinate,
    ``centre_px`` on the |Q| centre x̄, ``min_iou``, ``tol_score``. → the pairs (index in got, index in want).
    Raises AssertionError naming the first pair off, or different counts."""
    (gb, gs), (wb, ws) = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64).reshape(-1))
                          for b, s in (got, want)]
    if len(gb) != len(wb):
        raise AssertionError(f"{len(gb)} detections, expected {len(wb)}")
    if not len(wb):
        return []
    dist = np.abs(gb[:, None, :] - wb[None, :, :]).max(axis=2)
    pick = dist.argmin(axis=0)
    if len(set(pick.tolist())) != len(wb):
        raise AssertionError("a detection matched two reference boxes")
    for j, i in enumerate(pick):
        a, b = gb[i], wb[j]
        if tol_px is not None and dist[i, j] > tol_px:
            raise AssertionError(f"{a} vs {b}: {dist[i, j]:.4f} px")
        if centre_px is not None and abs((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) > centre_px:
            raise AssertionError(f"{a} vs {b}: |Q| centres differ by more than {centre_px} px")
        if min_iou is not None:
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if inter / union < min_iou:
                raise AssertionError(f"{a} vs {b}: IoU {inter / union:.3f} < {min_iou}")
        if abs(gs[i] - ws[j]) > tol_score:
            raise AssertionError(f"{a}: score {gs[i]} vs {ws[j]}")
    return [(int(i), j) for j, i in enumerate(pick)]


def published_ring_q(q_max: float, width: int = 1024) -> np.ndarray:
    """|Q| (Å⁻¹) of the 12 published real-frame rings: box centres of :data:`PUBLISHED_REAL_FRAME_DETECTIONS`,
    column x ↦ x · q_max / (W − 1) as :meth:`gixdrt.gixd.peaks.PeakTable.from_boxes` converts them."""
    ref = PUBLISHED_REAL_FRAME_DETECTIONS
    return (ref[:, 0] + ref[:, 2]) / 2 * (q_max / (width - 1))


def match_rings(q: np.ndarray, reference_q: np.ndarray, tol_q: float = 0.01) -> dict:
    """Match detected |Q| values to reference rings one to one (greedy by distance, nearest pairs first).

    → {"found": rings with a detection within ``tol_q``, "max_dq": the largest |Δq| over found rings (NaN when
    none), "extra": detections not matched to any ring, "missing": the reference |Q| of rings not found,
    "pairs": [(reference q, detected q)]}."""
    q = np.asarray(q, np.float64).reshape(-1)
    ref = np.asarray(reference_q, np.float64).reshape(-1)
    d = np.abs(ref[:, None] - q[None, :]) if len(q) else np.zeros((len(ref), 0))
    pairs: list[tuple[int, int]] = []
    used_r: set[int] = set()
    used_q: set[int] = set()
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = divmod(int(flat), d.shape[1])
        if d[i, j] > tol_q:
            break
        if i in used_r or j in used_q:
            continue
        pairs.append((i, j))
        used_r.add(i)
        used_q.add(j)
    dq = [float(d[i, j]) for i, j in pairs]
    return {
        "found": len(pairs),
        "max_dq": max(dq) if dq else float("nan"),
        "extra": int(len(q) - len(pairs)),
        "missing": [float(ref[i]) for i in range(len(ref)) if i not in used_r],
        "pairs": [(float(ref[i]), float(q[j])) for i, j in sorted(pairs)],
    }


def real_frame_rings(model="default", *, backend: str = "auto", tol_q: float = 0.01) -> dict:
    """Run ``model`` (a name, a path or a GixdDetector) on the published real frame with the published config
    (downloaded once, :func:`gixdrt.io.fetch_published`) and match its peaks to the 12 published rings by |Q|
    (:func:`match_rings`); the result also lists every detected |Q| and score."""
    from .geometry import load_config
    from .gixd.detector import PeakDetector
    from .gixd.pipeline import Pipeline
    from .io import fetch_published, read_frame

    assets = fetch_published(quiet=True)
    config = load_config(assets.config)
    pipe = Pipeline(config, PeakDetector(model, backend=backend))
    table = pipe.detect(read_frame(assets.frame), source=str(assets.frame))
    res = match_rings(table.q, published_ring_q(config.geometry.q_max), tol_q)
    res["q"] = [float(v) for v in table.q]
    res["score"] = [float(v) for v in table.score]
    return res
