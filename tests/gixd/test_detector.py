"""The engine-side detector (PeakDetector): backend choice, graphs (shipped, cached, exported), batches, and the
published model and gixdrt's default on the real frame through every runtime of this machine.

Tolerances (detections are matched one to one, then compared; never by array index):
- ONNX Runtime fp32 vs torch: boxes 0.01 px, scores 1e-5 (the graphs agree to ~1e-6 relative; measured
  2.4e-4 px and 0 in score on the real frame).
- fp16 graphs vs torch: the same peaks one to one, |Q| centre x̄ within 0.1 px, IoU ≥ 0.9, scores within 1e-3.
  Not 0.05 px per coordinate: on the real frame every peak has runner-up candidates whose logits differ
  from the winner's by 1e-3–3e-2 and whose φ extent differs by 2–14 px, and fp16 weights alone (fc6 sums
  16,384 products) move the head logits by ~4e-3 and the deltas by ~2.7e-3, so the final NMS may keep a
  runner-up: measured x̄ 0.07 px, y up to 7.6 px, scores 2e-4.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from gixdrt.engine import PREFERENCE, EngineUnavailableError, available_backends, backend_status
from gixdrt.model.config import STAGES
from gixdrt.testing import match_boxes, match_detections

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

from gixdrt.gixd import PeakDetector
from gixdrt.model import GixdDetector

TOL_PX, TOL_SCORE = 0.01, 1e-5
FP16_CENTRE_PX, FP16_IOU, FP16_SCORE = 0.1, 0.9, 1e-3


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(5)
    return GixdDetector()


def _gpu_backend_here() -> bool:
    status = backend_status()
    return any(status[b, "cuda"] is None for b in ("tensorrt", "torch-cuda", "onnxruntime"))


# --- backend choice -----------------------------------------------------------------------------------
def test_backends_listed_in_preference_order():
    here = available_backends()
    assert list(here) == [b for b in PREFERENCE if b in here]
    assert {"onnxruntime", "torch"} <= set(here)


def test_auto_picks_onnxruntime_on_a_cpu_machine(small_model, tmp_path, caplog):
    if _gpu_backend_here():
        pytest.skip("a GPU backend is available here")
    with caplog.at_level(logging.INFO, logger="gixdrt.engine"):
        det = PeakDetector(small_model, cache=tmp_path)
    assert det.backend == "onnxruntime" and det.device == "cpu" and not det.kernels.on_device
    assert PeakDetector(small_model, device="cpu", cache=tmp_path).backend == "onnxruntime"
    with pytest.raises(EngineUnavailableError, match="no CUDA GPU"):
        PeakDetector(small_model, device="cuda", cache=tmp_path)


def test_named_backend_that_cannot_run_raises(small_model):
    for backend in ("tensorrt", "torch-cuda"):
        if backend_status()[backend, "cuda"] is not None:
            with pytest.raises(EngineUnavailableError, match=backend):
                PeakDetector(small_model, backend=backend)
    with pytest.raises(ValueError, match="onnx-foo"):
        PeakDetector(small_model, backend="onnx-foo")
    with pytest.raises(ValueError, match="precision"):
        PeakDetector(small_model, backend="onnxruntime", precision="int4")
    with pytest.raises(ValueError, match="fp16"):
        PeakDetector(small_model, backend="torch", precision="fp16")
    with pytest.raises(ValueError, match="invalid device"):
        PeakDetector(small_model, device="gpu0")


# --- graphs ---------------------------------------------------------------------------------------------
def test_exported_graphs_are_cached_and_serve_every_image_size(small_model, tmp_path):
    det = PeakDetector(small_model, backend="onnxruntime", threads=1, cache=tmp_path, score_threshold=0.0)
    image = np.random.default_rng(0).random((128, 256), dtype=np.float32)
    (boxes, scores), = det.boxes(image)
    assert boxes.dtype == np.float32 and boxes.shape[1:] == (4,) and scores.shape == boxes.shape[:1]
    assert list(det.last_timings) == list(STAGES)
    files = sorted(p.name for p in tmp_path.rglob("*.onnx"))
    assert files == ["dense-fp32.onnx", "head-fp32.onnx"]  # batch and image size dynamic: one file each
    det.boxes(np.random.default_rng(1).random((3, 64, 128), dtype=np.float32))  # another size and batch
    assert sorted(p.name for p in tmp_path.rglob("*.onnx")) == files
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")}
    again = PeakDetector(small_model, backend="onnxruntime", threads=1, cache=tmp_path, score_threshold=0.0)
    (b2, _), = again.boxes(image)
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.onnx")} == stamps  # loaded, not exported again
    np.testing.assert_array_equal(b2, boxes)
    torch.manual_seed(9)
    other = PeakDetector(GixdDetector(), backend="onnxruntime", threads=1, cache=tmp_path)
    other.boxes(image)  # other weights: their own folder
    assert len({p.parent for p in tmp_path.rglob("dense-fp32.onnx")}) == 2


def test_batches_and_empty_input(small_model, tmp_path):
    det = PeakDetector(small_model, backend="onnxruntime", threads=1, cache=tmp_path)
    images = np.random.default_rng(1).random((2, 64, 128), dtype=np.float32)
    out = det.boxes(images)
    assert len(out) == 2 and all(b.shape[1:] == (4,) for b, _ in out)
    assert det.boxes(np.zeros((0, 64, 128), np.float32)) == []
    with pytest.raises(ValueError, match=r"2 non-finite pixel\(s\)"):
        det.boxes(np.where(np.arange(64 * 128).reshape(64, 128) < 2, np.nan, images[0]))
    with pytest.raises(ValueError, match=r"values from -0\.49\d+ to 0\.49\d+; a processed image must hold values in \[0, 1\]"):
        det.boxes(images[0] - 0.5)
    with pytest.raises(ValueError, match=r"expected images \[N, H, W\]"):
        det.boxes(np.zeros((1, 1, 64, 128, 1), np.float32))
    det.close()
    assert len(det.boxes(images[:1])) == 1  # sessions reopen after close


def test_sizes_off_the_strides_are_padded_and_boxes_stay_in_the_image(keep_all, tmp_path):
    """60×126 is not a multiple of (32, 4): the plan pads it with zeros to 64×128 (a note says so) and clips boxes
    to the image. The same image padded by hand runs the same network: the boxes that lie inside 60×126 agree."""
    from gixdrt.gixd.detector import PaddingNote

    det = PeakDetector(keep_all, backend="onnxruntime", threads=1, cache=tmp_path)
    image = np.random.default_rng(7).random((60, 126), dtype=np.float32)
    with pytest.warns(PaddingNote, match="images of 60×126 are padded with zeros to 64×128"):
        (boxes, scores), = det.boxes(image)
    assert len(boxes) > 10
    assert (boxes[:, [0, 2]] <= 126).all() and (boxes[:, [1, 3]] <= 60).all() and (boxes >= 0).all()
    padded = np.zeros((64, 128), np.float32)
    padded[:60, :126] = image
    (pb, ps), = det.boxes(padded)
    inside = (pb[:, 2] < 125) & (pb[:, 3] < 59)
    top = pb[inside][:5]
    for box in top:  # the strongest boxes away from the padding are found in both runs
        assert np.abs(boxes - box).max(axis=1).min() < 1e-3


def test_default_model_runs_from_its_shipped_graphs(tmp_path):
    from gixdrt.model import zoo

    det = PeakDetector("default", backend="onnxruntime", cache=tmp_path)
    assert det.graphs.shipped == zoo.WEIGHTS / "default"
    image = np.random.default_rng(2).random((64, 128), dtype=np.float32)
    det.boxes(image)
    assert not list(tmp_path.rglob("*.onnx"))  # nothing exported


# --- the published model and the default on the real frame ------------------------------------------------
@pytest.fixture(scope="module")
def graph_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("graph-cache")


@pytest.fixture(scope="module")
def model_reference(published_model, real_image):
    """The pure-PyTorch model (GixdDetector.forward: PyTorch ops between the graphs), the model-side reference."""
    with torch.no_grad():
        d = published_model(torch.from_numpy(real_image)[None, None])[0]
    return d["boxes"].numpy(), d["scores"].numpy()


@pytest.fixture(scope="module")
def torch_result(published_model, real_image, graph_cache):
    return PeakDetector(published_model, backend="torch", cache=graph_cache).boxes(real_image)[0]


@pytest.mark.published
def test_real_frame_torch_backend_matches_the_pytorch_model(torch_result, model_reference):
    match_boxes(torch_result, model_reference, tol_px=TOL_PX, tol_score=TOL_SCORE)  # RoIAlign summed otherwise
    match_detections(*torch_result)  # the published 12 rings, 0.05 px


@pytest.mark.published
def test_real_frame_onnxruntime_fp32_matches_torch(published_model, real_image, torch_result, graph_cache):
    det = PeakDetector(published_model, backend="onnxruntime", threads=2, cache=graph_cache)
    got = det.boxes(real_image)[0]
    assert len(got[0]) == 12
    match_boxes(got, torch_result, tol_px=TOL_PX, tol_score=TOL_SCORE)
    match_detections(*got)
    assert set(det.last_timings) == set(STAGES)


@pytest.mark.published
def test_real_frame_onnxruntime_fp16(published_model, real_image, torch_result, graph_cache):
    det = PeakDetector(published_model, backend="onnxruntime", precision="fp16", threads=2, cache=graph_cache)
    got = det.boxes(real_image)[0]
    match_boxes(got, torch_result, centre_px=FP16_CENTRE_PX, min_iou=FP16_IOU, tol_score=FP16_SCORE)


@pytest.mark.published
def test_real_frame_torch_bf16_on_the_cpu(published_model, real_image, torch_result, graph_cache):
    """bf16 autocast of the dense graph (BN folded, channels-last) finds the same 12 rings as fp32."""
    det = PeakDetector(published_model, backend="torch", precision="bf16", cache=graph_cache)
    got = det.boxes(real_image)[0]
    assert len(got[0]) == 12 and det.describe().endswith("bf16")
    match_boxes(got, torch_result, centre_px=FP16_CENTRE_PX, min_iou=FP16_IOU, tol_score=FP16_SCORE)
    # the 12 published rings: |Q| (box centre in x) within 0.05 px; the φ ends of these boxes (up to 500 px long)
    # move by up to ~1.2 px
    idx = match_detections(*got, tol_px=2.0, tol_score=0.01)
    from gixdrt.testing import PUBLISHED_REAL_FRAME_DETECTIONS as ref

    x_got = (got[0][idx, 0] + got[0][idx, 2]) / 2
    np.testing.assert_allclose(x_got, (ref[:, 0] + ref[:, 2]) / 2, atol=0.05)


def test_bf16_runs_on_the_torch_backend_only():
    from gixdrt.engine.backends import Runtime

    with pytest.raises(ValueError, match="bf16 runs on the torch backend"):
        Runtime("onnxruntime", "cpu", "bf16")
    assert Runtime("torch", "cpu", "bf16").describe() == "torch on cpu, bf16"


@pytest.mark.published
def test_real_frame_512_by_512(published_model, real_image, graph_cache):
    crop = np.ascontiguousarray(real_image[:, :512])
    want = PeakDetector(published_model, backend="torch").boxes(crop)[0]
    got = PeakDetector(published_model, backend="onnxruntime", threads=2, cache=graph_cache).boxes(crop[None])[0]
    assert len(want[0]) >= 1
    match_boxes(got, want, tol_px=TOL_PX, tol_score=TOL_SCORE)


@pytest.mark.published
def test_default_model_shipped_graphs_match_its_weights(real_image):
    """The shipped ONNX graphs are the shipped weights: ONNX Runtime on them = the torch backend on the weights."""
    ort_det = PeakDetector("default", backend="onnxruntime", threads=2)
    torch_det = PeakDetector("default", backend="torch")
    got, want = ort_det.boxes(real_image)[0], torch_det.boxes(real_image)[0]
    assert len(want[0]) >= 12
    match_boxes(got, want, tol_px=TOL_PX, tol_score=TOL_SCORE)
    from gixdrt.export import model_digest

    assert ort_det.card["graphs"]["model_sha256"] == model_digest(torch_det.graphs.model())


@pytest.mark.published
def test_simulated_frames_onnxruntime_batch_matches_torch(published_model, graph_cache):
    """20 simulated 512×512 frames, ONNX Runtime in batches of 4 vs torch one by one: every peak 1:1."""
    from gixdrt.sim import simulate

    images = simulate(20, seed=2024).images
    det = PeakDetector(published_model, backend="onnxruntime", threads=2, cache=graph_cache)
    ref = PeakDetector(published_model, backend="torch", cache=graph_cache)
    n_peaks = 0
    for start in range(0, 20, 4):
        got = det.boxes(images[start : start + 4])
        for k, g in enumerate(got):
            want = ref.boxes(images[start + k])[0]
            match_boxes(g, want, tol_px=TOL_PX, tol_score=TOL_SCORE)
            n_peaks += len(want[0])
    assert n_peaks >= 50
