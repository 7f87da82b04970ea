"""The GIXD detector's plan, run by the executor, against the PyTorch model it comes from.

One plan, several ways of running it: the torch runner and the ONNX Runtime runner with the host kernels, and the
device kernel set in its check mode (PyTorch CPU tensors as buffers). Each must give the detections of
:meth:`gixdrt.model.GixdDetector.forward` (the pure-PyTorch reference: topk, torchvision-style NMS and RoIAlign
written in PyTorch), matched one to one (never by index): boxes 1e-4 px and scores 1e-6 with the torch runner
(same arithmetic up to convolution summation order), 0.01 px and 1e-5 through ONNX Runtime (the tolerances of
test_detector.py). A small random model keeps every box (score threshold −1), so there are many detections.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from gixdrt.model.config import STAGES, DetectorConfig, Thresholds

torch = pytest.importorskip("torch")

from gixdrt.errors import DataWarning
from gixdrt.gixd import PeakDetector, RawInput, detector_plan
from gixdrt.testing import match_boxes


@pytest.fixture(scope="module")
def reference(keep_all, images):
    with torch.no_grad():
        dets = keep_all(torch.from_numpy(images)[:, None])
    return [(d["boxes"].numpy(), d["scores"].numpy()) for d in dets]


def _detector(model, backend, tmp_path, *, check_mode=False, **kw):
    det = PeakDetector(model, backend=backend, cache=tmp_path, threads=1, **kw)
    if check_mode:
        from gixdrt.engine import DeviceKernels

        det.runtime.kernels = DeviceKernels("cpu")
    return det


@pytest.mark.parametrize("backend, check_mode, tol_px, tol_score", [
    ("torch", False, 1e-4, 1e-6),
    ("torch", True, 1e-4, 1e-6),
    ("onnxruntime", False, 0.01, 1e-5),
])
def test_plan_matches_the_pytorch_model(keep_all, images, reference, tmp_path, backend, check_mode, tol_px, tol_score):
    det = _detector(keep_all, backend, tmp_path, check_mode=check_mode)
    got = det.boxes(images)
    assert set(det.last_timings) == set(STAGES)
    for g, w in zip(got, reference):
        assert len(w[1]) > 5
        assert g[0].dtype == np.float32 and np.all(g[1][:-1] >= g[1][1:])
        match_boxes(g, w, tol_px=tol_px, tol_score=tol_score)
    single = det.boxes(images[1])  # another batch size: another executor, the same detections
    match_boxes(single[0], got[1], tol_px=tol_px, tol_score=tol_score)
    again = det.boxes(images)  # the executor is reused: identical
    for a, b in zip(again, got):
        np.testing.assert_array_equal(a[0], b[0])


def test_plan_edge_cases(keep_all, images, tmp_path):
    det = _detector(keep_all, "torch", tmp_path)
    assert det.boxes(images[:0]) == []
    with pytest.warns(UserWarning, match="padded with zeros to 64×128"):  # the torch runner pads as the others
        (boxes, _), = det.boxes(images[:1, :60])
    assert len(boxes) and boxes[:, 3].max() <= 60
    with pytest.raises(ValueError, match="score_threshold must be a number in"):
        _detector(keep_all, "torch", tmp_path, score_threshold=2.0)
    none = _detector(keep_all, "torch", tmp_path, score_threshold=1.0)  # above every 2·sigmoid − 1 < 1
    assert all(b.shape == (0, 4) for b, _ in none.boxes(images))
    few = _detector(keep_all, "torch", tmp_path, max_detections=3)
    assert [len(s) for _, s in few.boxes(images)] == [3, 3]
    det.close()
    assert det._executors == {} and len(det.boxes(images[:1])) == 1  # reopens after close


def test_plan_is_written_once_and_checked():
    cfg = DetectorConfig()
    plan = detector_plan(cfg, Thresholds(), batch=2, height=64, width=128)
    assert plan.inputs == ("images",) and plan.outputs == ("boxes", "scores", "count")
    assert plan.graphs == ("dense", "head")
    sizes = {k: b.shape for k, b in plan.buffers.items()}
    assert sizes["logits"] == (2, sum(h * w for h, w in cfg.level_shapes(64, 128)) * 2)
    assert sizes["roi_features"] == (2000, 64, 16, 16) and sizes["boxes"] == (2, 250, 4)
    fused = plan.fused("roi_align")
    assert fused.artifacts["head"] == "head_pooled" and "roi_features" not in fused.buffers
    padded = detector_plan(cfg, Thresholds(), batch=1, height=60, width=126)  # padded to the strides' multiples
    assert padded.buffers["images"].shape == (1, 1, 60, 126) and padded.buffers["padded_images"].shape == (1, 1, 64, 128)
    assert [s.name for s in padded.stages][:2] == ["pad", "dense"] and padded.buffers["p2"].shape[2:] == (8, 32)
    with pytest.raises(ValueError, match="image size 0×128"):
        detector_plan(cfg, Thresholds(), batch=1, height=0, width=128)
    with pytest.raises(ValueError, match="unknown input kind"):
        detector_plan(cfg, Thresholds(), batch=1, height=64, width=128, input="sinogram")


# --- raw frames: remap, contrast and the detector in one plan ------------------------------------------------
def _raw_frames(config, n: int = 3):
    rows, cols = config.geometry.frame_shape
    rng = np.random.default_rng(11)
    frames = [rng.poisson(30.0, (rows, cols)).astype(np.uint16) for _ in range(n - 1)]
    frames.append(np.full((rows, cols), 9, np.uint16))  # constant: flagged, its image zeroed
    return frames


@pytest.mark.parametrize("check_mode", [False, True])
def test_raw_plan_matches_preprocessing_then_the_model(keep_all, small_config, tmp_path, check_mode):
    from gixdrt.geometry import load_config, polar_map
    from gixdrt.gixd.peaks import box_sums
    from gixdrt.gixd.preprocess import Preprocessor

    cfg = load_config(small_config)
    frames = np.stack(_raw_frames(cfg))
    det = _detector(keep_all, "torch", tmp_path, check_mode=check_mode)
    raw = RawInput(polar_map(cfg.geometry), "uint16")
    got = det.run(frames, input="raw", raw=raw, contrast=cfg.contrast, polar=True, timed=True)
    assert {"polar", "contrast", *STAGES} == set(det.last_timings)
    pre = Preprocessor(cfg)
    for frame, res in zip(frames[:2], got[:2]):
        polar = pre.polar(frame)
        np.testing.assert_array_equal(res.polar, polar)
        with torch.no_grad():
            want = keep_all(torch.from_numpy(np.asarray(pre.contrast(polar), np.float32))[None, None])[0]
        assert not res.constant and len(res.scores) > 5
        match_boxes((res.boxes, res.scores), (want["boxes"].numpy(), want["scores"].numpy()), tol_px=1e-4,
                    tol_score=1e-6)
        np.testing.assert_allclose(res.intensity, box_sums(polar, res.boxes), rtol=1e-12)
    assert got[2].constant  # its image is zeroed: the model's detections on zeros (none for a trained model)
    with torch.no_grad():
        zeros = keep_all(torch.zeros(1, 1, *got[2].polar.shape))[0]
    match_boxes((got[2].boxes, got[2].scores), (zeros["boxes"].numpy(), zeros["scores"].numpy()), tol_px=1e-4,
                tol_score=1e-6)
    # a group of two frames per image: summed by the remap
    pair = det.run(frames[None, :2], input="raw", raw=raw, contrast=cfg.contrast, polar=True)[0]
    np.testing.assert_array_equal(pair.polar, pre.polar(frames[:2]))


def test_pipeline_over_the_plan(keep_all, small_config, tmp_path):
    from gixdrt.geometry import load_config
    from gixdrt.gixd.pipeline import Pipeline
    from gixdrt.io import Frame

    cfg = load_config(small_config)
    raw = _raw_frames(cfg)
    raw.append(np.stack(raw[:2]))  # a group of two frames, summed by the remap; a second batch of one
    frames = [Frame(i, f"f{i}", d) for i, d in enumerate(raw)]
    det = _detector(keep_all, "torch", tmp_path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", DataWarning)
        batched = list(Pipeline(cfg, det, batch=3).iter_results(frames[:3]))
        single = list(Pipeline(cfg, det, batch=1).iter_results(frames[:3]))
    constant = [str(w.message) for w in seen if "constant frame" in str(w.message)]
    assert constant == ["f2: constant frame, no peaks can be found"] * 2
    for a, b in zip(batched, single):
        assert (a.frame, a.source) == (b.frame, b.source)
        np.testing.assert_array_equal(a.polar, b.polar)
        match_boxes((a.table.boxes, a.table.score), (b.table.boxes, b.table.score), tol_px=1e-4, tol_score=1e-6)
        assert np.isfinite(a.table.q).all() and np.isfinite(a.table.intensity).all()
    assert len(batched[2].table) == len(single[2].table)  # the constant frame: the model on a zero image
    grouped = list(Pipeline(cfg, det, batch=2).iter_results(frames[3:]))[0]
    assert grouped.polar.shape == (32, 64) and len(grouped.table) > 0
    assert all(r.polar is None for r in Pipeline(cfg, det, keep_polar=False).iter_results(frames[:2]))
