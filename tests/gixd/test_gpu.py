"""The detector's plan on a GPU: torch-cuda (and onnxruntime's CUDA provider, TensorRT where they exist) against the
torch backend on the CPU. Skipped without a GPU (``needs_gpu``); ``benchmarks/gpu_check.py`` runs them.

Detections are matched one to one (never by index). fp32: boxes 0.01 px, scores 1e-5. fp16: |Q| centre 0.1 px,
IoU ≥ 0.9, scores 1e-3 (the tolerances of the ONNX Runtime fp16 graphs, see test_detector.py). Raw frames: the
GPU's polar and contrast images differ from the host's in the last bits (FMA; see tests/kernels/test_gpu_cupy.py),
so the detector part is compared on the GPU's own contrast image, and the end-to-end peaks against the published
list.
"""
from __future__ import annotations

import copy
import logging

import numpy as np
import pytest

from gixdrt.model.config import STAGES
from gixdrt.testing import match_boxes, match_detections

torch = pytest.importorskip("torch")

from gixdrt.engine import backend_status
from gixdrt.gixd import PeakDetector, RawInput

pytestmark = pytest.mark.needs_gpu

TOL_PX, TOL_SCORE = 0.01, 1e-5
FP16_CENTRE_PX, FP16_IOU, FP16_SCORE = 0.1, 0.9, 1e-3


@pytest.fixture(scope="module")
def cuda_ok():
    why = backend_status()["torch-cuda", "cuda"]
    if why:
        pytest.skip(f"torch-cuda cannot run here: {why}")


@pytest.fixture(scope="module")
def torch_result(published_model, real_image):
    return PeakDetector(published_model, backend="torch").boxes(real_image)[0]


@pytest.mark.parametrize("backend", ["torch", "torch-cuda"])
def test_gpu_small_model_fp32_matches_torch_cpu(cuda_ok, keep_all, images, backend, tmp_path):
    det = PeakDetector(keep_all, backend=backend, device="cuda", cache=tmp_path)
    assert det.kernels.on_device
    got = det.run(images, timed=True)
    assert set(det.last_timings) == set(STAGES)
    want = PeakDetector(keep_all, backend="torch", device="cpu", cache=tmp_path).boxes(images)
    for g, w in zip(got, want):
        assert len(w[1]) > 5
        match_boxes((g.boxes, g.scores), w, tol_px=TOL_PX, tol_score=TOL_SCORE)


@pytest.mark.published
@pytest.mark.parametrize("backend", ["torch-cuda", "onnxruntime", "tensorrt"])
def test_gpu_real_frame_fp32_and_fp16_match_torch_cpu(cuda_ok, published_model, real_image, torch_result, backend):
    if backend_status()[backend, "cuda"]:
        pytest.skip(f"{backend} cannot run on the GPU here: {backend_status()[backend, 'cuda']}")
    det = PeakDetector(copy.deepcopy(published_model), backend=backend, device="cuda", precision="fp32")
    got = det.boxes(real_image)[0]
    assert len(got[0]) == 12
    match_boxes(got, torch_result, tol_px=TOL_PX, tol_score=TOL_SCORE)
    match_detections(*got)
    half = PeakDetector(copy.deepcopy(published_model), backend=backend, device="cuda", precision="fp16")
    assert half.describe().endswith("fp16")
    match_boxes(half.boxes(real_image)[0], torch_result, centre_px=FP16_CENTRE_PX, min_iou=FP16_IOU,
                tol_score=FP16_SCORE)


@pytest.mark.published
def test_gpu_auto_prefers_a_gpu_backend(cuda_ok, published_model):
    det = PeakDetector(copy.deepcopy(published_model))
    assert det.kernels.on_device and det.backend in ("tensorrt", "torch-cuda")


@pytest.mark.published
def test_gpu_cuda_graphs_replay_identically(cuda_ok, published_model, real_image):
    batch = np.stack([real_image, np.ascontiguousarray(real_image[::-1])])
    det = PeakDetector(copy.deepcopy(published_model), backend="torch-cuda", precision="fp32")
    first, second = det.boxes(batch), det.boxes(batch)
    runners = list(det._runners.values())
    assert runners and all(r.graph_captured for r in runners), [r.graph_failure for r in runners]
    eager = PeakDetector(copy.deepcopy(published_model), backend="torch", device="cuda").boxes(batch)
    for a, b, c in zip(first, second, eager):
        assert len(a[1]) > 0
        np.testing.assert_array_equal(a[0], b[0])
        match_boxes(a, c, tol_px=TOL_PX, tol_score=TOL_SCORE)


def test_gpu_failed_capture_runs_eagerly(cuda_ok, keep_all, images, monkeypatch, caplog, tmp_path):
    want = PeakDetector(keep_all, backend="torch", device="cuda", cache=tmp_path).boxes(images)

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("capture is not possible today")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Broken)
    det = PeakDetector(keep_all, backend="torch-cuda", precision="fp32", cache=tmp_path)
    with caplog.at_level(logging.WARNING, logger="gixdrt.engine.pyt"):
        got = det.boxes(images)
    assert "CUDA graph capture failed" in caplog.text
    assert all(r.graph_failure for r in det._runners.values())
    for g, w in zip(got, want):
        match_boxes(g, w, tol_px=TOL_PX, tol_score=TOL_SCORE)


@pytest.mark.published
def test_gpu_batch_of_16_simulated_frames_matches_torch_cpu(cuda_ok, published_model):
    from gixdrt.sim import simulate

    frames = simulate(16, seed=2024).images
    det = PeakDetector(copy.deepcopy(published_model), backend="torch-cuda", precision="fp32")
    ref = PeakDetector(published_model, backend="torch")
    got = det.boxes(frames)
    assert len(got) == 16
    n_peaks = 0
    for i, g in enumerate(got):
        want = ref.boxes(frames[i])[0]
        match_boxes(g, want, tol_px=TOL_PX, tol_score=TOL_SCORE)
        n_peaks += len(want[0])
    assert n_peaks >= 40


@pytest.mark.published
def test_gpu_raw_frame_stays_on_the_device(cuda_ok, published_model, published_config, published_frame):
    """Raw uint16 frame → peaks on the GPU: the detector part equals torch on the CPU on the GPU's own contrast
    image; the preprocessing agrees with the host within the kernels' tolerances; the Pipeline takes this path."""
    from gixdrt.geometry import polar_map
    from gixdrt.gixd.peaks import box_sums
    from gixdrt.gixd.pipeline import Pipeline
    from gixdrt.gixd.preprocess import Preprocessor

    det = PeakDetector(copy.deepcopy(published_model), backend="torch-cuda", precision="fp32")
    frame = torch.from_numpy(np.ascontiguousarray(published_frame)).cuda()[None]  # already on the device
    raw = RawInput(polar_map(published_config.geometry), "uint16")
    res = det.run(frame, input="raw", raw=raw, contrast=published_config.contrast, polar=True, timed=True)[0]
    assert {"polar", "contrast", *STAGES} == set(det.last_timings) and not res.constant
    ex = next(iter(det._executors.values()))
    image = ex.kernels.to_host([ex.buffers["images"]])[0][0, 0]
    host = Preprocessor(published_config)
    want_polar = host.polar(published_frame)
    assert np.abs(res.polar - want_polar).max() <= 1e-2
    assert np.abs(image - host.contrast(want_polar)).max() <= 5e-3
    want = PeakDetector(published_model, backend="torch").boxes(image)[0]
    pairs = match_boxes((res.boxes, res.scores), want, tol_px=TOL_PX, tol_score=TOL_SCORE)
    assert len(pairs) == 12
    np.testing.assert_allclose(res.intensity, box_sums(res.polar, res.boxes), rtol=1e-9)
    # end to end against the published list (0.05 px on the host; the GPU's contrast image differs in a few
    # pixels by up to 5e-3, so 0.1 px here)
    match_detections(res.boxes, res.scores, tol_px=0.1)
    table = Pipeline(published_config, det).detect(published_frame, source="real.tif")
    match_detections(table.boxes, table.score, tol_px=0.1)
    np.testing.assert_allclose(np.sort(table.intensity), np.sort(res.intensity), rtol=1e-6)
