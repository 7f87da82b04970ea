"""The reference detector: anchors, RPN layout, shapes, edge cases, and the published detections on the real frame.

Tolerances for the real frame (§5 of shared/reference/published-detector.md): boxes within 0.05 px and
scores within 1e-3 of the published table (two independent torchvision re-runs agree to 0.005 px; the
table is rounded to 0.01 px and 1e-5). Batches vs single runs: 1e-3 px and 1e-5 in score (convolution may
pick other algorithms for other batch sizes).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gixdrt.model import STAGES, AnchorGenerator, DetectorConfig, GixdDetector, load_published
from gixdrt.model.network import flatten_rpn
from gixdrt.testing import PUBLISHED_REAL_FRAME_DETECTIONS

TOL_PX = 0.05
TOL_SCORE = 1e-3

PUBLISHED_DETECTIONS = PUBLISHED_REAL_FRAME_DETECTIONS.tolist()  # shared/reference §5


def match(det: dict, table, tol_px: float, tol_score: float) -> float:
    """Match detections to table rows one to one by nearest box; assert tolerances; return the max px error."""
    boxes, scores = det["boxes"].numpy().astype(np.float64), det["scores"].numpy().astype(np.float64)
    want = np.asarray(table, np.float64).reshape(-1, 5)
    assert len(boxes) == len(want), f"{len(boxes)} detections, expected {len(want)}"
    used: set[int] = set()
    worst = 0.0
    for row in want:
        dist = np.abs(boxes - row[:4]).max(axis=1)
        j = int(np.argmin(dist))
        assert j not in used, f"row {row} matched twice"
        used.add(j)
        assert dist[j] <= tol_px, f"box {boxes[j]} vs {row[:4]}: {dist[j]:.4f} px"
        assert abs(scores[j] - row[4]) <= tol_score, f"score {scores[j]} vs {row[4]}"
        worst = max(worst, float(dist[j]))
    return worst


def _as_table(det: dict) -> list[tuple[float, ...]]:
    return [tuple(b) + (s,) for b, s in zip(det["boxes"].tolist(), det["scores"].tolist())]


# --- anchors and layout ------------------------------------------------------------------------------
def test_anchors_published_layout():
    gen = AnchorGenerator()
    shapes = [(64, 256), (32, 256), (16, 256)]
    levels = gen((512, 1024), shapes)
    assert [len(a) for a in levels] == [64 * 256 * 2, 32 * 256 * 2, 16 * 256 * 2]
    assert sum(len(a) for a in levels) == 57344
    p2, p3, p4 = levels
    assert p2[0].tolist() == [-5.0, -25.0, 5.0, 25.0]  # cell (0, 0), anchor 50×10
    assert p2[1].tolist() == [-5.0, -50.0, 5.0, 50.0]  # anchor 100×10
    assert p2[2].tolist() == [-1.0, -25.0, 9.0, 25.0]  # column 1: x + 4
    assert p2[256 * 2].tolist() == [-5.0, -17.0, 5.0, 33.0]  # row 1: y + 8
    assert p3[256 * 2 + 3].tolist() == [-1.0, 16.0 - 150.0, 9.0, 16.0 + 150.0]  # row 1, col 1, 300×10
    assert p4[1].tolist() == [-5.0, -250.0, 5.0, 250.0]
    assert gen((512, 1024), shapes) is levels  # cached
    small = gen((512, 512), [(64, 128), (32, 128), (16, 128)])
    assert small is not levels and len(small[0]) == 64 * 128 * 2


def test_flatten_rpn_order():
    n, a, h, w = 2, 2, 3, 5
    logits = torch.randn(n, a, h, w)
    deltas = torch.randn(n, 4 * a, h, w)
    fl, fd = flatten_rpn(logits, deltas)
    for i in range(h):
        for j in range(w):
            for k in range(a):
                idx = (i * w + j) * a + k
                assert fl[1, idx] == logits[1, k, i, j]
                assert torch.equal(fd[1, idx], deltas[1, k * 4 : k * 4 + 4, i, j])


# --- the network with random weights ------------------------------------------------------------------
@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    return GixdDetector()


def test_shapes_and_stages(random_model):
    torch.manual_seed(1)
    images = torch.rand(1, 1, 512, 1024)
    trace = random_model.trace(images, score_threshold=-1.0)
    assert [tuple(f.shape) for f in trace.dense.features] == [(1, 64, 64, 256), (1, 64, 32, 256), (1, 64, 16, 256)]
    assert [tuple(t.shape) for t in trace.dense.logits] == [(1, 2, 64, 256), (1, 2, 32, 256), (1, 2, 16, 256)]
    assert [tuple(t.shape) for t in trace.dense.deltas] == [(1, 8, 64, 256), (1, 8, 32, 256), (1, 8, 16, 256)]
    p = trace.proposals.boxes[0]
    assert 0 < len(p) <= 1000 and trace.roi_features.shape == (len(p), 64, 16, 16)
    assert trace.logits.shape == (len(p),) and trace.deltas.shape == (len(p), 4)
    assert set(trace.timings) == set(STAGES) and all(t >= 0 for t in trace.timings.values())
    det = trace.detections[0]
    assert det["boxes"].dtype == torch.float32 and det["scores"].dtype == torch.float32
    assert 0 < len(det["boxes"]) <= 250
    assert torch.all(det["scores"][:-1] >= det["scores"][1:])
    b = det["boxes"]
    assert torch.all((b[:, 0] >= 0) & (b[:, 2] <= 1024) & (b[:, 1] >= 0) & (b[:, 3] <= 512))


def test_thresholds_per_call_and_as_attributes(random_model):
    torch.manual_seed(2)
    images = torch.rand(1, 1, 256, 256)
    many = random_model(images, score_threshold=-1.0, nms_iou=1.0)[0]
    assert len(many["boxes"]) == 250
    assert len(random_model(images, score_threshold=-1.0, max_detections=3)[0]["boxes"]) == 3
    none = random_model(images, score_threshold=1.5)[0]
    assert none["boxes"].shape == (0, 4) and none["scores"].shape == (0,)
    model = GixdDetector()
    model.load_state_dict(random_model.state_dict())
    model.score_threshold, model.max_detections = -1.0, 5
    assert len(model(images)[0]["scores"]) == 5


def test_input_checks(random_model):
    with pytest.raises(ValueError, match="multiple of 32"):
        random_model(torch.zeros(1, 1, 500, 1024))
    with pytest.raises(ValueError, match="multiple of 4"):
        random_model(torch.zeros(1, 1, 512, 1022))
    with pytest.raises(ValueError, match=r"\[N, 1, H, W\]"):
        random_model(torch.zeros(1, 512, 1024))


def test_no_proposals_gives_empty_tensors(random_model):
    model = GixdDetector()
    model.load_state_dict(random_model.state_dict())
    with torch.no_grad():
        dense = model.dense(torch.zeros(2, 1, 64, 64))
        for t in dense.deltas:
            t.fill_(-50.0)  # every proposal collapses below the minimum size
        props = model.proposals(dense)
        assert [b.shape for b in props.boxes] == [(0, 4), (0, 4)]
        feats = model.roi_features(dense, props)
        logits, deltas = model.head(feats)
        dets = model.postprocess(logits, deltas, props)
    assert feats.shape == (0, 64, 16, 16) and logits.shape == (0,) and deltas.shape == (0, 4)
    assert [d["boxes"].shape for d in dets] == [(0, 4), (0, 4)]
    assert [d["scores"].shape for d in dets] == [(0,), (0,)]


def test_config_round_trip():
    cfg = DetectorConfig(score_threshold=0.7)
    assert DetectorConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.height_multiple, cfg.width_multiple) == (32, 4)
    with pytest.raises(ValueError, match="unknown"):
        DetectorConfig.from_dict({"bogus": 1})
    assert GixdDetector().num_parameters() == 5_918_959


# --- the published models on the real frame -------------------------------------------------------------
@pytest.fixture(scope="module")
def real_image(published_frame, published_config):
    from gixdrt.gixd.preprocess import Preprocessor

    pre = Preprocessor(published_config)
    img = np.asarray(pre.contrast(pre.polar(published_frame)), dtype=np.float32)
    assert img.shape == (512, 1024)
    return torch.from_numpy(img)[None, None]


@pytest.fixture(scope="module")
def default_model(published_assets):
    return load_published(published_assets.default_checkpoint)


@pytest.fixture(scope="module")
def default_detections(default_model, real_image):
    return default_model(real_image)[0]


@pytest.mark.published
def test_real_frame_matches_published_detections(default_detections):
    worst = match(default_detections, PUBLISHED_DETECTIONS, TOL_PX, TOL_SCORE)
    assert worst <= TOL_PX


@pytest.mark.published
def test_real_frame_stage_outputs(default_model, real_image):
    trace = default_model.trace(real_image)
    assert len(trace.proposals.boxes[0]) == 1000  # the reference always yields exactly 1000 proposals
    assert trace.roi_features.shape == (1000, 64, 16, 16)
    match(trace.detections[0], PUBLISHED_DETECTIONS, TOL_PX, TOL_SCORE)


@pytest.mark.published
def test_second_checkpoint_runs_on_real_frame(published_assets, real_image, default_detections):
    model = load_published(published_assets.checkpoints["segments_detector_6"])
    det = model(real_image)[0]
    boxes, scores = det["boxes"], det["scores"]
    assert 5 <= len(boxes) <= 250
    assert torch.isfinite(boxes).all() and torch.all(scores >= 0.6) and torch.all(scores <= 1.0)
    assert torch.all(scores[:-1] >= scores[1:])
    assert torch.all((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    assert torch.all((boxes[:, 0] >= 0) & (boxes[:, 2] <= 1024) & (boxes[:, 1] >= 0) & (boxes[:, 3] <= 512))
    # the strong rings of the default model are found again (same |Q| centre within 2 px)
    centres = ((boxes[:, 0] + boxes[:, 2]) / 2).numpy()
    strong = default_detections["boxes"][default_detections["scores"] > 0.99]
    found = [np.abs(centres - float(c)).min() < 2.0 for c in (strong[:, 0] + strong[:, 2]) / 2]
    assert sum(found) >= 0.8 * len(found)


@pytest.mark.published
def test_batch_equals_single_runs(default_model, real_image, default_detections):
    images = torch.cat((real_image, real_image.flip(-1), torch.zeros_like(real_image)))
    batch = default_model(images)
    assert len(batch) == 3
    match(batch[0], _as_table(default_detections), 1e-3, 1e-5)
    flipped = default_model(images[1:2])[0]
    assert len(flipped["boxes"]) > 0
    match(batch[1], _as_table(flipped), 1e-3, 1e-5)
    assert batch[2]["boxes"].shape == (0, 4) and batch[2]["scores"].shape == (0,)
    assert default_model(images[2:3])[0]["boxes"].shape == (0, 4)


@pytest.mark.published
def test_512_by_512_input(default_model, real_image):
    det = default_model(real_image[..., :512].contiguous())[0]
    assert len(det["boxes"]) >= 1
    assert torch.all((det["boxes"][:, 2] <= 512) & (det["boxes"][:, 3] <= 512))
    # the rings well left of the new border are found again with the same |Q|
    full = [row for row in PUBLISHED_DETECTIONS if row[2] < 480]
    centres = ((det["boxes"][:, 0] + det["boxes"][:, 2]) / 2).numpy()
    for row in full:
        assert np.abs(centres - (row[0] + row[2]) / 2).min() < 0.5


@pytest.mark.published
def test_constant_frame_gives_no_detections(default_model, published_config):
    """A constant raw frame preprocesses to a zero image; constant inputs at 0 and at the normalisation
    mean 0.3 give nothing. (A constant input of 1.0 does give edge detections at x ≈ 1017: the published
    weights respond to the zero padding at the right border, so that is not asserted.)"""
    import warnings

    from gixdrt.gixd.preprocess import Preprocessor

    pre = Preprocessor(published_config)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        img = np.asarray(pre.contrast(pre.polar(np.zeros((2048, 2048), np.float32))), np.float32)
    images = torch.cat((torch.from_numpy(img)[None, None], torch.full((1, 1, 512, 1024), 0.3)))
    for det in default_model(images):
        assert det["boxes"].shape == (0, 4) and det["scores"].shape == (0,)


def test_dense_graph_flattens_like_flatten_rpn():
    """The dense graph module (what is exported and what the torch runners run) = the model's dense stage with
    its RPN outputs flattened level by level, BN folded or not, channels-last or not; the head graph = head."""
    import torch

    from gixdrt.export.fold import fold_batchnorm
    from gixdrt.model import GixdDetector
    from gixdrt.model.graphs import DenseGraph, HeadGraph

    torch.manual_seed(5)
    model = GixdDetector()
    images = torch.rand(2, 1, 64, 128)
    with torch.no_grad():
        want = model.dense(images)
        flat = [flatten_rpn(lg, dl) for lg, dl in zip(want.logits, want.deltas)]
        for net in (DenseGraph(model), DenseGraph(fold_batchnorm(model), channels_last=True)):
            p2, logits, deltas = net(images)
            assert p2.is_contiguous() and logits.is_contiguous() and deltas.is_contiguous()
            torch.testing.assert_close(p2, want.features[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(logits, torch.cat([f[0] for f in flat], 1), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(deltas, torch.cat([f[1] for f in flat], 1), atol=1e-4, rtol=1e-4)
        feats = torch.randn(7, 64, 16, 16)
        lg, dl = HeadGraph(model)(feats)
        want_lg, want_dl = model.head(feats)
        assert lg.shape == (7,) and dl.shape == (7, 4)
        torch.testing.assert_close(lg, want_lg)
        torch.testing.assert_close(dl, want_dl)
