"""The torch-cuda backend (gixdrt.engine.torch_cuda): PyTorch CUDA graphs with gixdrt's CUDA kernels between them.

Runs everywhere: the availability probe and its reasons, the Detector's refusal and ``auto``'s choice without a
GPU, and the stage sequence itself on the host (``device="cpu"``: the same flattening, padded proposals, RoI
rows, gathers, device-side intensities and constant-frame flags, with the host kernels) against the PyTorch
model and the host Pipeline.

``needs_gpu`` (skipped without a GPU): torch-cuda against the torch CPU backend, detections matched one to one
(never by index). fp32: boxes 0.01 px, scores 1e-5. fp16: |Q| centre 0.1 px, IoU ≥ 0.9, scores 1e-3 (the
tolerances of the ONNX Runtime fp16 graphs, see test_engine_detector.py). Raw frames: the GPU's polar and
contrast images differ from the host's in the last bits (FMA; see tests/kernels/test_gpu_cupy.py), so the
detector part is compared on the GPU's own contrast image, and the end-to-end peaks against the published list.
"""
from __future__ import annotations

import copy
import logging
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gixdrt.engine import PREFERENCE, Detector, EngineUnavailableError, backend_status
from gixdrt.engine import torch_cuda as tc
from gixdrt.engine.torch_cuda import TorchCudaStages, benchmark_raw_frames, torch_cuda_status
from gixdrt.errors import DataWarning
from gixdrt.model import STAGES, GixdDetector

TOL_PX, TOL_SCORE = 0.01, 1e-5
FP16_CENTRE_PX, FP16_IOU, FP16_SCORE = 0.1, 0.9, 1e-3


def match(got, want, *, tol_px=None, centre_px=None, min_iou=None, tol_score):
    """Match the boxes of ``got`` to ``want`` one to one (nearest box); assert the tolerances; → the pairs
    (index in got, index in want)."""
    (gb, gs), (wb, ws) = [(np.asarray(b, np.float64).reshape(-1, 4), np.asarray(s, np.float64)) for b, s in (got, want)]
    assert len(gb) == len(wb), f"{len(gb)} detections, expected {len(wb)}"
    if not len(wb):
        return []
    dist = np.abs(gb[:, None, :] - wb[None, :, :]).max(axis=2)
    pick = dist.argmin(axis=0)
    assert len(set(pick.tolist())) == len(wb), "a detection matched two reference boxes"
    for j, i in enumerate(pick):
        a, b = gb[i], wb[j]
        if tol_px is not None:
            assert dist[i, j] <= tol_px, f"{a} vs {b}: {dist[i, j]:.4f} px"
        if centre_px is not None:
            assert abs((a[0] + a[2]) / 2 - (b[0] + b[2]) / 2) <= centre_px, f"{a} vs {b}: centre"
        if min_iou is not None:
            inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            assert inter / union >= min_iou, f"{a} vs {b}: IoU {inter / union:.3f}"
        assert abs(gs[i] - ws[j]) <= tol_score, f"score {gs[i]} vs {ws[j]}"
    return [(int(i), j) for j, i in enumerate(pick)]


def as_pair(det):
    return det["boxes"].numpy(), det["scores"].numpy()


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(5)
    return GixdDetector()


@pytest.fixture
def keep_all(small_model):
    """The small random model with every box kept (score threshold −1), restored afterwards."""
    small_model.score_threshold = -1.0
    yield small_model
    small_model.score_threshold = small_model.config.score_threshold


@pytest.fixture(scope="module")
def images():
    return torch.from_numpy(np.random.default_rng(4).random((2, 1, 64, 128), dtype=np.float32))


# --- availability (runs everywhere) --------------------------------------------------------------------
def test_status_lists_torch_cuda_with_a_reason():
    status = backend_status()
    assert "GPU only" in status["torch-cuda", "cpu"]
    assert PREFERENCE.index("tensorrt") < PREFERENCE.index("torch-cuda") < PREFERENCE.index("onnxruntime")
    if not torch.cuda.is_available():
        assert "PyTorch has no CUDA device" in status["torch-cuda", "cuda"]
    assert status["torch-cuda", "cuda"] == torch_cuda_status()


def test_status_names_every_missing_piece(monkeypatch):
    from numba import cuda as ncuda

    from gixdrt.kernels import roi_align as ra

    class NoCudaExt:  # an extension built without CUDA: no roi_align_cuda attribute
        pass

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(ra, "_ext", NoCudaExt())
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    why = torch_cuda_status()
    assert "PyTorch has no CUDA device" in why
    assert "gixdrt._ext was built without CUDA" in why
    assert "numba.cuda unavailable" in why and "simulator" in why
    monkeypatch.setattr(ra, "_ext", None)
    assert "gixdrt._ext is not built" in torch_cuda_status()
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "0")
    monkeypatch.setattr(ncuda, "is_available", lambda: False)
    assert "numba.cuda unavailable: Numba finds no CUDA GPU" in torch_cuda_status()
    # every piece present → available
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ra, "_ext", type("CudaExt", (), {"roi_align_cuda": None})())
    monkeypatch.setattr(ncuda, "is_available", lambda: True)
    assert torch_cuda_status() is None


def test_named_torch_cuda_that_cannot_run_raises_with_the_reason(small_model):
    why = backend_status()["torch-cuda", "cuda"]
    if why is None:
        pytest.skip("torch-cuda can run here")
    with pytest.raises(EngineUnavailableError, match="torch-cuda") as exc:
        Detector(copy.deepcopy(small_model), backend="torch-cuda")
    assert why in str(exc.value)
    with pytest.raises(EngineUnavailableError, match="GPU only"):
        Detector(small_model, backend="torch-cuda", device="cpu")
    with pytest.raises(EngineUnavailableError, match="cannot run here"):
        TorchCudaStages(small_model)
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        TorchCudaStages(small_model, device="cpu", precision="fp16")
    with pytest.raises(ValueError, match="precision"):
        TorchCudaStages(small_model, device="cpu", precision="int8")


def test_auto_does_not_choose_torch_cuda_without_a_gpu(small_model, tmp_path):
    status = backend_status()
    if status["torch-cuda", "cuda"] is None:
        pytest.skip("torch-cuda can run here")
    det = Detector(small_model, onnx_cache=tmp_path)
    assert det.backend != "torch-cuda"
    no_gpu_backend = status["tensorrt", "cuda"] is not None and status["onnxruntime", "cuda"] is not None
    if no_gpu_backend and status["onnxruntime", "cpu"] is None:
        assert det.backend == "onnxruntime" and det.device.type == "cpu"


# --- the stage sequence on the host (runs everywhere) -----------------------------------------------------
def test_dense_stage_flattens_like_flatten_rpn(small_model, images):
    from gixdrt.export.fold import fold_batchnorm
    from gixdrt.model.detector import flatten_rpn

    dense_cls, head_cls = tc._stage_modules()
    with torch.no_grad():
        want = small_model.dense(images)
        flat = [flatten_rpn(lg, dl) for lg, dl in zip(want.logits, want.deltas)]
        for channels_last in (False, True):
            net = dense_cls(fold_batchnorm(small_model), torch.float32, channels_last)
            p2, logits, deltas = net(images)
            assert p2.is_contiguous() and logits.is_contiguous() and deltas.is_contiguous()
            assert net.level_shapes == [tuple(lg.shape[-2:]) for lg in want.logits]
            torch.testing.assert_close(p2, want.features[0], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(logits, torch.cat([f[0] for f in flat], 1), atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(deltas, torch.cat([f[1] for f in flat], 1), atol=1e-4, rtol=1e-4)
        feats = torch.randn(7, 64, 16, 16)
        head = head_cls(fold_batchnorm(small_model), torch.float32)
        lg, dl = head(feats)
        want_lg, want_dl = small_model.head(feats)
        assert lg.shape == (7,) and dl.shape == (7, 4)
        torch.testing.assert_close(lg, want_lg)
        torch.testing.assert_close(dl, want_dl)


def test_host_stage_sequence_matches_the_model(keep_all, images):
    stages = TorchCudaStages(keep_all, device="cpu", precision="fp32", timed=True)
    assert not stages.cuda_graphs and stages.describe().startswith("torch-cuda on cpu")
    got = stages(images)
    assert list(stages.timings) == list(STAGES)
    with torch.no_grad():
        want = keep_all(images)
    for g, w in zip(got, want):
        assert len(w["scores"]) > 5
        assert g["boxes"].dtype == torch.float32 and g["boxes"].device.type == "cpu"
        assert torch.all(g["scores"][:-1] >= g["scores"][1:])
        match(as_pair(g), as_pair(w), tol_px=1e-4, tol_score=1e-6)
    # the plan is reused; one image of the batch on its own gives its detections; untimed → no timings
    again = stages(images, timed=False)
    assert stages.timings == {} and len(stages._dense) == 1
    for a, b in zip(again, got):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
    single = stages(images[1:])
    match(as_pair(single[0]), as_pair(got[1]), tol_px=1e-4, tol_score=1e-6)


def test_host_stage_sequence_edge_cases(keep_all, images):
    stages = TorchCudaStages(keep_all, device="cpu", precision="fp32")
    assert stages(images[:0]) == []
    with pytest.raises(ValueError, match="multiple of 32"):
        stages(torch.zeros(1, 1, 60, 128))
    keep_all.max_detections = 0
    try:
        assert all(len(d["scores"]) == 0 for d in stages(images))
    finally:
        keep_all.max_detections = keep_all.config.max_detections
    keep_all.score_threshold = 2.0  # above every 2·sigmoid − 1
    assert all(d["boxes"].shape == (0, 4) for d in stages(images))
    stages.close()
    assert stages._dense == {} and stages._head == {}


def test_take_pads_with_zeros():
    values = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    keep = torch.tensor([[2, 0, -1], [-1, -1, -1]], dtype=torch.int32)
    got = tc._take(values, keep)
    assert got.shape == (2, 3, 4)
    torch.testing.assert_close(got[0, 0], values[0, 2])
    torch.testing.assert_close(got[0, 1], values[0, 0])
    assert not got[0, 2].any() and not got[1].any()
    scores = tc._take(values[..., 0], keep)
    assert scores.tolist() == [[8.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert tc._take(values[:, :0], keep).shape == (2, 3, 4)
    assert tc._take(values, keep[:, :0]).shape == (2, 0, 4)


def test_box_sums_equal_peaks_box_sums():
    from gixdrt.peaks import box_sums

    rng = np.random.default_rng(7)
    img = (rng.random((2, 32, 64)) * 100).astype(np.float32)
    img[0, 3, 4], img[1, 5, 6], img[1, 7, 8] = np.nan, np.inf, -np.inf
    x0 = rng.uniform(-5, 70, (2, 9))
    y0 = rng.uniform(-5, 36, (2, 9))
    boxes = np.stack([x0, y0, x0 + rng.uniform(0, 20, (2, 9)), y0 + rng.uniform(0, 10, (2, 9))], -1).astype(np.float32)
    boxes[0, 0] = (2.0, 3.0, 2.0, 3.0)  # a single pixel centre on both edges
    got = tc._box_sums(torch.from_numpy(img), torch.from_numpy(boxes)).numpy()
    assert got.dtype == np.float64
    for i in range(2):
        np.testing.assert_allclose(got[i], box_sums(img[i], boxes[i]), rtol=1e-12, atol=1e-9)
    assert tc._box_sums(torch.from_numpy(img), torch.zeros(2, 0, 4)).shape == (2, 0)


def test_constant_frame_flags_follow_the_pipeline():
    from gixdrt.pipeline import _constant_frames

    rng = np.random.default_rng(3)
    cases = [
        np.full((6, 8), 7, np.uint16),
        np.full((6, 8), 60000, np.uint16),
        rng.integers(0, 65535, (6, 8)).astype(np.uint16),
        np.stack([np.full((6, 8), 1.0, np.float32), np.full((6, 8), 2.0, np.float32)]),  # each frame constant
        np.stack([np.full((6, 8), 1.0, np.float32), rng.random((6, 8), dtype=np.float32)]),
        np.where(np.arange(48).reshape(6, 8) == 5, np.nan, 1.0).astype(np.float32),
        np.full((6, 8), -3, np.int32),
    ]
    for frame in cases:
        assert bool(tc._frame_constant(torch.from_numpy(frame))) == _constant_frames(frame), frame
    inside = torch.zeros(4, 5, dtype=torch.bool)
    inside[1:3, 1:4] = True
    polar = torch.zeros(4, 5)
    polar[1:3, 1:4] = 2.5
    assert bool(tc._constant_inside(polar, inside))
    polar[2, 2] = 3.0
    assert not bool(tc._constant_inside(polar, inside))
    assert not bool(tc._constant_inside(polar, torch.zeros(4, 5, dtype=torch.bool)))


def test_minmax_matches_the_host_chain():
    from gixdrt.preprocess import _minmax

    rng = np.random.default_rng(5)
    for img in (rng.random((8, 16), dtype=np.float32) * 50, np.full((8, 16), 4.0, np.float32),
                np.full((8, 16), np.nan, np.float32)):
        img = img.copy()
        if np.isfinite(img).all() and img.std() > 0:
            img[0, 0] = np.nan
        out = torch.empty(img.shape)
        tc._minmax_into(torch.from_numpy(img), out)
        np.testing.assert_array_equal(out.numpy(), _minmax(img))


def test_math_settings_are_set_and_restored(small_model):
    """fp32 forces IEEE convolutions/matmuls (no TF32) while the stages run, fp16 no reduced-precision reductions;
    everything is restored afterwards. (Only the flags: they take effect on a GPU.)"""
    b = torch.backends
    stages = TorchCudaStages(small_model, device="cpu", precision="fp32", cudnn_benchmark=True)
    stages.on_gpu = True  # _math() is a no-op on the CPU
    before = (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.benchmark,
              b.cuda.matmul.allow_fp16_reduced_precision_reduction)
    with stages._math():
        assert b.cudnn.conv.fp32_precision == "ieee" and b.cuda.matmul.fp32_precision == "ieee"
        assert b.cudnn.benchmark is True
    stages.precision = "fp16"
    with stages._math():
        assert b.cuda.matmul.allow_fp16_reduced_precision_reduction is False
    with pytest.raises(KeyError), stages._math():
        raise KeyError("restored on errors too")
    assert before == (b.cudnn.conv.fp32_precision, b.cuda.matmul.fp32_precision, b.cudnn.benchmark,
                      b.cuda.matmul.allow_fp16_reduced_precision_reduction)


def test_numba_outputs_are_imported_without_their_stream():
    cai = {"shape": (3,), "typestr": "<f4", "data": (1234, False), "strides": None, "version": 3, "stream": 7}
    owner = type("Fake", (), {"__cuda_array_interface__": cai})()
    view = tc._StreamlessView(owner)
    assert view.owner is owner and "stream" not in view.__cuda_array_interface__
    assert view.__cuda_array_interface__["version"] == 2 and cai["stream"] == 7


def _raw_frames(config, n: int = 3):
    rows, cols = config.geometry.frame_shape
    rng = np.random.default_rng(11)
    frames = [rng.poisson(30.0, (rows, cols)).astype(np.uint16) for _ in range(n - 1)]
    frames.append(np.full((rows, cols), 9, np.uint16))  # constant: the Pipeline zeroes its image and warns
    return frames


def test_host_raw_path_matches_the_pipeline(keep_all, small_config):
    from gixdrt.geometry import load_config
    from gixdrt.io import Frame
    from gixdrt.pipeline import Pipeline

    cfg = load_config(small_config)
    raw = _raw_frames(cfg)
    raw.append(np.stack(raw[:2]))  # a group of two frames, summed by the remap; a second batch of one
    frames = [Frame(i, f"f{i}", d) for i, d in enumerate(raw)]
    with warnings.catch_warnings(record=True) as host_warnings:
        warnings.simplefilter("always", DataWarning)
        want = list(Pipeline(cfg, Detector(keep_all, backend="torch"), batch=3).iter_results(frames))
    det = Detector(keep_all, backend="torch")
    det.backend = "torch-cuda"  # the device path of the Pipeline, with the host check stages
    det._stages = TorchCudaStages(keep_all, device="cpu", precision="fp32", timed=True)
    pipe = Pipeline(cfg, det, batch=3)
    assert pipe._device_stages() is det._stages
    with warnings.catch_warnings(record=True) as dev_warnings:
        warnings.simplefilter("always", DataWarning)
        got = list(pipe.iter_results(frames))
    constant = [str(w.message) for w in dev_warnings if "constant frame" in str(w.message)]
    assert constant == [str(w.message) for w in host_warnings if "constant frame" in str(w.message)] == [
        "f2: constant frame, no peaks can be found"]
    assert {"upload", "polar", "contrast", *STAGES} == set(det.last_timings)
    for g, w in zip(got, want):
        assert (g.frame, g.source) == (w.frame, w.source)
        np.testing.assert_array_equal(g.polar, w.polar)
        gt, wt = g.table, w.table
        assert len(wt) > 0
        pairs = match((gt.boxes, gt.score), (wt.boxes, wt.score), tol_px=1e-4, tol_score=1e-6)
        gi, wi = (np.array(p) for p in zip(*pairs))
        np.testing.assert_allclose(gt.intensity[gi], wt.intensity[wi], rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(gt.q[gi], wt.q[wi], rtol=0, atol=1e-6)
        assert np.isfinite(gt.q).all() and np.isfinite(gt.intensity).all()
    # without keep_polar no image comes back; other kernel backends take the host path
    assert all(r.polar is None for r in Pipeline(cfg, det, batch=2, keep_polar=False).iter_results(frames[:2]))
    assert Pipeline(cfg, det, kernel_backend="reference")._device_stages() is None
    assert Pipeline(cfg, det, input="polar")._device_stages() is None


def test_from_raw_takes_a_stack_and_returns_images(keep_all, small_config):
    from gixdrt.geometry import load_config
    from gixdrt.preprocess import Preprocessor

    cfg = load_config(small_config)
    frames = np.stack(_raw_frames(cfg, 2)[:1] * 2)
    stages = TorchCudaStages(keep_all, device="cpu", precision="fp32")
    res = stages.from_raw(frames, cfg, polar=True, image=True)
    assert len(res) == 2 and not res[0]["constant"]
    pre = Preprocessor(cfg)
    polar = pre.polar(frames[0])
    np.testing.assert_array_equal(res[0]["polar"].numpy(), polar)
    np.testing.assert_array_equal(res[1]["image"].numpy(), pre.contrast(polar))
    with torch.no_grad():
        want = keep_all(torch.from_numpy(np.asarray(pre.contrast(polar), np.float32))[None, None])[0]
    match(as_pair(res[1]), as_pair(want), tol_px=1e-4, tol_score=1e-6)
    assert res[0]["intensity"].shape == res[0]["scores"].shape
    assert stages.from_raw([], cfg) == []
    one = stages.from_raw(frames[0], cfg)  # one [H, W] frame
    assert len(one) == 1
    match(as_pair(one[0]), as_pair(res[0]), tol_px=1e-4, tol_score=1e-6)  # batch 1 vs 2: CPU convs differ in ulps


# --- on a GPU (skipped here) ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cuda_ok():
    why = torch_cuda_status()
    if why:
        pytest.skip(f"torch-cuda cannot run here: {why}")


@pytest.fixture(scope="module")
def torch_result(published_model, real_image):
    return Detector(published_model, backend="torch").boxes(real_image)[0]


@pytest.mark.needs_gpu
@pytest.mark.parametrize("graphs", [True, False])
def test_gpu_small_model_fp32_matches_torch_cpu(cuda_ok, keep_all, images, graphs):
    stages = TorchCudaStages(keep_all, precision="fp32", cuda_graphs=graphs, timed=True)
    got = stages(images.cuda())
    assert list(stages.timings) == list(STAGES) and stages.graph_failures == []
    assert (stages.dense_plan(64, 128, 2).graph is not None) == graphs
    with torch.no_grad():
        want = keep_all(images)
    for g, w in zip(got, want):
        assert len(w["scores"]) > 5
        match(as_pair(g), as_pair(w), tol_px=TOL_PX, tol_score=TOL_SCORE)


@pytest.mark.needs_gpu
@pytest.mark.published
def test_gpu_real_frame_fp32_and_fp16_match_torch_cpu(cuda_ok, published_model, real_image, torch_result):
    from gixdrt.testing import match_detections

    det = Detector(copy.deepcopy(published_model), backend="torch-cuda", precision="fp32")
    assert det.backend == "torch-cuda" and det.device.type == "cuda"
    got = det.boxes(real_image)[0]
    assert len(got[0]) == 12
    match(got, torch_result, tol_px=TOL_PX, tol_score=TOL_SCORE)
    match_detections(*got)
    half = Detector(copy.deepcopy(published_model), backend="torch-cuda", precision="fp16")
    assert half.describe().endswith("fp16")
    match(half.boxes(real_image)[0], torch_result, centre_px=FP16_CENTRE_PX, min_iou=FP16_IOU, tol_score=FP16_SCORE)


@pytest.mark.needs_gpu
@pytest.mark.published
def test_gpu_auto_prefers_torch_cuda_over_onnxruntime(cuda_ok, published_model):
    if backend_status()["tensorrt", "cuda"] is None:
        pytest.skip("TensorRT comes first here")
    assert Detector(copy.deepcopy(published_model)).backend == "torch-cuda"


@pytest.mark.needs_gpu
@pytest.mark.published
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_gpu_cuda_graph_and_eager_give_identical_results(cuda_ok, published_model, real_image, precision):
    batch = torch.from_numpy(np.stack([real_image, np.ascontiguousarray(real_image[::-1])]))[:, None].cuda()
    graphed = TorchCudaStages(published_model, precision=precision, cuda_graphs=True)
    eager = TorchCudaStages(published_model, precision=precision, cuda_graphs=False)
    first, second, plain = graphed(batch), graphed(batch), eager(batch)
    assert graphed.graph_failures == [] and graphed.dense_plan(512, 1024, 2).graph is not None
    assert graphed.head_plan(2).graph is not None and eager.dense_plan(512, 1024, 2).graph is None
    for a, b, c in zip(first, second, plain):
        assert len(a["scores"]) > 0
        for key in ("boxes", "scores"):
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
            np.testing.assert_array_equal(a[key].numpy(), c[key].numpy())


@pytest.mark.needs_gpu
def test_gpu_failed_capture_runs_eagerly(cuda_ok, keep_all, images, monkeypatch, caplog):
    want = TorchCudaStages(keep_all, precision="fp32", cuda_graphs=False)(images.cuda())

    class Broken:
        def __init__(self, *args, **kwargs):
            raise RuntimeError("capture is not possible today")

    monkeypatch.setattr(torch.cuda, "CUDAGraph", Broken)
    stages = TorchCudaStages(keep_all, precision="fp32")
    with caplog.at_level(logging.WARNING, logger="gixdrt.engine.torch_cuda"):
        got = stages(images.cuda())
    assert "CUDA graph capture of the dense" in caplog.text and len(stages.graph_failures) == 2
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g["boxes"].numpy(), w["boxes"].numpy())


@pytest.mark.needs_gpu
@pytest.mark.published
def test_gpu_batch_of_16_simulated_frames_matches_torch_cpu(cuda_ok, published_model):
    from gixdrt.sim import simulate

    frames = simulate(16, seed=2024).images
    det = Detector(copy.deepcopy(published_model), backend="torch-cuda", precision="fp32")
    ref = Detector(published_model, backend="torch")
    got = det.boxes(frames)
    assert len(got) == 16
    n_peaks = 0
    for i, g in enumerate(got):
        want = ref.boxes(frames[i])[0]
        match(g, want, tol_px=TOL_PX, tol_score=TOL_SCORE)
        n_peaks += len(want[0])
    assert n_peaks >= 40


@pytest.mark.needs_gpu
@pytest.mark.published
def test_gpu_raw_frame_stays_on_the_device(cuda_ok, published_model, published_config, published_frame):
    """Raw uint16 frame → peaks on the GPU: the detector part equals torch on the CPU on the GPU's own contrast
    image; the preprocessing agrees with the host within the kernels' tolerances; the Pipeline takes this path."""
    from gixdrt.peaks import box_sums
    from gixdrt.pipeline import Pipeline
    from gixdrt.preprocess import Preprocessor
    from gixdrt.testing import match_detections

    stages = TorchCudaStages(published_model, precision="fp32", timed=True)
    frame = torch.from_numpy(np.ascontiguousarray(published_frame)).cuda()
    res = stages.from_raw([frame], stages.preprocessor(published_config), polar=True, image=True)[0]
    assert {"upload", "polar", "contrast", *STAGES} == set(stages.timings) and not res["constant"]
    image = res["image"].cpu().numpy()
    polar = res["polar"].cpu().numpy()
    host = Preprocessor(published_config)
    want_polar = host.polar(published_frame)
    assert np.abs(polar - want_polar).max() <= 1e-2
    assert np.abs(image - host.contrast(want_polar)).max() <= 5e-3
    want = Detector(published_model, backend="torch").boxes(image)[0]
    pairs = match(as_pair(res), want, tol_px=TOL_PX, tol_score=TOL_SCORE)
    assert len(pairs) == 12
    np.testing.assert_allclose(res["intensity"], box_sums(polar, res["boxes"].numpy()), rtol=1e-9)
    # end to end against the published list (0.05 px on the host; the GPU's contrast image differs in a few
    # pixels by up to 5e-3, so 0.1 px here)
    match_detections(*as_pair(res), tol_px=0.1)
    pipe = Pipeline(published_config, Detector(copy.deepcopy(published_model), backend="torch-cuda"))
    assert pipe._device_stages() is not None
    table = pipe.detect(published_frame, source="real.tif")
    match_detections(table.boxes, table.score, tol_px=0.1)
    np.testing.assert_allclose(np.sort(table.intensity), np.sort(res["intensity"]), rtol=1e-6)


@pytest.mark.needs_gpu
def test_gpu_benchmark_hook(cuda_ok, small_config):
    from gixdrt.geometry import load_config

    torch.manual_seed(0)
    res = benchmark_raw_frames(GixdDetector(), load_config(small_config), batch=2, runs=3, warmup=1)
    for key in ("median_s", "p99_s", "frames_per_s", "dense_median_s", "dense_p99_s", "dense_tflops",
                "upload_median_s"):
        assert res[key] > 0, key
    assert res["polar_shape"] == (32, 64) and res["graph_failures"] == []
    assert res["dense_gflop_per_frame"] == pytest.approx(87.0 * 32 * 64 / (512 * 1024))
    assert set(STAGES) <= set(res["stage_s"])
