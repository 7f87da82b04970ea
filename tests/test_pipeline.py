"""Pipeline: raw frames → peak tables with the published model on the published real frame (reference §5).

Real-frame forwards of the published model (~0.8 s each on 2 CPU cores) are shared through module-scoped
fixtures: the real frame once, the batch of three once, the flipped and zero frames once each, the constant
frame, the polar-input run, a 512×512 processed crop and the second checkpoint.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from gixdrt.errors import DataWarning, FrameError
from gixdrt.gixd import PeakDetector
from gixdrt.gixd.pipeline import Pipeline
from gixdrt.gixd.preprocess import Preprocessor
from gixdrt.io import Frame
from gixdrt.testing import PUBLISHED_REAL_FRAME_DETECTIONS, match_detections

TOL_PX = 0.05
TOL_SCORE = 1e-3

REFERENCE = PUBLISHED_REAL_FRAME_DETECTIONS  # shared/reference §5
POLAR_SHAPE = (512, 1024)


def match_reference(boxes: np.ndarray, scores: np.ndarray, reference: np.ndarray = REFERENCE,
                    tol_px: float = TOL_PX, tol_score: float = TOL_SCORE) -> np.ndarray:
    """For each reference row, the index of its detection (one to one, nearest centre; tolerances asserted)."""
    return match_detections(boxes, scores, reference, tol_px=tol_px, tol_score=tol_score)


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return fn(*args, **kwargs)


# --- shared runs ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def detector(published_assets):
    return PeakDetector("published")


@pytest.fixture(scope="module")
def pipe(published_config, detector):
    return Pipeline(published_config, detector)


@pytest.fixture(scope="module")
def real_table(pipe, published_frame):
    return pipe.detect(published_frame, source="real.tif")


@pytest.fixture(scope="module")
def real_polar(published_config, published_frame):
    """(uncorrected polar image, processed image) of the real frame, computed without the Pipeline."""
    pre = Preprocessor(published_config)
    polar = np.asarray(pre.polar(published_frame), np.float32)
    return polar, np.asarray(pre.contrast(polar), np.float32)


@pytest.fixture(scope="module")
def flipped_frame(published_frame):
    return np.ascontiguousarray(published_frame[:, ::-1])


@pytest.fixture(scope="module")
def zero_frame(published_frame):
    return np.zeros_like(published_frame)


@pytest.fixture(scope="module")
def single_flipped(pipe, flipped_frame):
    return pipe.detect(flipped_frame, frame=1, source="flipped")


@pytest.fixture(scope="module")
def single_zero(pipe, zero_frame):
    return _quiet(pipe.detect, zero_frame, frame=2, source="zero")


# --- the real frame ------------------------------------------------------------------------------------
@pytest.mark.published
def test_real_frame_gives_the_published_boxes(real_table):
    assert len(real_table) == 12
    match_reference(real_table.boxes, real_table.score)
    assert np.all(np.diff(real_table.score) <= 0), "rows are not ordered by decreasing score"
    assert real_table.peak.tolist() == list(range(12))
    assert set(real_table.frame.tolist()) == {0} and set(real_table.source.tolist()) == {"real.tif"}


@pytest.mark.published
def test_real_frame_physical_columns(real_table, published_config):
    q_max = published_config.geometry.q_max
    t = real_table
    dq, dphi = q_max / 1023, 90.0 / 511
    np.testing.assert_allclose(t.q, (t.x0 + t.x1) / 2 * dq, rtol=1e-12)
    np.testing.assert_allclose(t.phi, (t.y0 + t.y1) / 2 * dphi, rtol=1e-12)
    np.testing.assert_allclose(t.q_width, (t.x1 - t.x0) * dq, rtol=1e-12)
    np.testing.assert_allclose(t.phi_width, (t.y1 - t.y0) * dphi, rtol=1e-12)
    # and against the reference boxes: centres within 0.05 px in both units
    idx = match_reference(t.boxes, t.score)
    ref = REFERENCE
    assert np.all(np.abs(t.q[idx] - (ref[:, 0] + ref[:, 2]) / 2 * dq) <= TOL_PX * dq)
    assert np.all(np.abs(t.phi[idx] - (ref[:, 1] + ref[:, 3]) / 2 * dphi) <= TOL_PX * dphi)
    assert np.all(np.abs(t.q_width[idx] - (ref[:, 2] - ref[:, 0]) * dq) <= 2 * TOL_PX * dq)
    assert np.all(np.abs(t.phi_width[idx] - (ref[:, 3] - ref[:, 1]) * dphi) <= 2 * TOL_PX * dphi)
    # the strongest ring, x ≈ 284.4 px, lies at |Q| ≈ 1.0615 Å⁻¹; φ spans the whole 0–90° range
    assert np.all((t.q > 0) & (t.q <= q_max)) and np.all((t.phi >= 0) & (t.phi <= 90))


@pytest.mark.published
def test_real_frame_intensity(real_table, real_polar):
    polar, _ = real_polar
    assert polar.shape == POLAR_SHAPE
    h, w = polar.shape
    rows, cols = np.arange(h), np.arange(w)
    # every box by masks of the integer pixel centres inside it
    for k in range(len(real_table)):
        x0, y0, x1, y1 = real_table.boxes[k]
        r = (rows >= y0) & (rows <= y1)
        c = (cols >= x0) & (cols <= x1)
        want = polar[np.ix_(r, c)].astype(np.float64).sum()
        assert real_table.intensity[k] == pytest.approx(want, rel=1e-9, abs=1e-6)
    # two boxes by a plain loop: the widest-φ ring and the box that touches the right border (x1 = 1024)
    for k in (int(np.argmax(real_table.y1 - real_table.y0)), int(np.argmax(real_table.x1))):
        x0, y0, x1, y1 = real_table.boxes[k]
        total = 0.0
        for i in range(int(np.floor(y0)) - 1, int(np.ceil(y1)) + 2):
            for j in range(int(np.floor(x0)) - 1, int(np.ceil(x1)) + 2):
                if 0 <= i < h and 0 <= j < w and y0 <= i <= y1 and x0 <= j <= x1:
                    total += float(polar[i, j])
        assert real_table.intensity[k] == pytest.approx(total, rel=1e-9, abs=1e-6)
    assert real_table.x1.max() == 1024.0  # the border case was really exercised


@pytest.mark.published
def test_second_published_checkpoint_runs(published_config, published_frame):
    det = PeakDetector("published:segments_detector_6")
    assert det.card["name"] == "segments_detector_6"
    t = Pipeline(published_config, det).detect(published_frame)
    assert len(t) >= 1
    b = t.boxes
    assert np.isfinite(b).all() and np.isfinite(t.q).all() and np.isfinite(t.intensity).all()
    assert np.all((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= 1024) & (b[:, 3] <= 512))
    assert np.all((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1]))
    assert np.all((t.score >= 0.6) & (t.score <= 1.0))


# --- batches -----------------------------------------------------------------------------------------
@pytest.mark.published
def test_batch_equals_single_calls(published_config, detector, published_frame, flipped_frame, zero_frame,
                                   real_table, single_flipped, single_zero):
    frames = [Frame(0, "real.tif", published_frame), Frame(1, "flipped", flipped_frame), Frame(2, "zero", zero_frame)]
    seen = []
    batched = _quiet(Pipeline(published_config, detector, batch=3).run, frames, progress=lambda result: seen.append(result.table))
    assert len(seen) == 3 and [len(s) for s in seen] == [len(real_table), len(single_flipped), len(single_zero)]
    assert len(single_flipped) > 0 and len(single_zero) == 0
    for i, single in enumerate((real_table, single_flipped, single_zero)):
        got = batched.select(batched.frame == i)
        assert len(got) == len(single), f"frame {i}: {len(got)} peaks in the batch, {len(single)} alone"
        np.testing.assert_array_equal(got.boxes, single.boxes)
        np.testing.assert_array_equal(got.score, single.score)
        np.testing.assert_array_equal(got.intensity, single.intensity)
        np.testing.assert_array_equal(got.q, single.q)
        assert set(got.source.tolist()) <= {frames[i].source}
    # the flipped frame is not the real one: its peaks differ
    assert not (len(single_flipped) == len(real_table) and np.allclose(single_flipped.boxes, real_table.boxes))


# --- degenerate frames -----------------------------------------------------------------------------------
@pytest.mark.published
def test_constant_frame_warns_and_gives_no_peaks(pipe, published_frame):
    frame = np.full(published_frame.shape, 100.0, np.float32)
    with pytest.warns(DataWarning, match="constant frame"):
        t = pipe.detect(frame, source="const.tif")
    assert len(t) == 0 and t.boxes.shape == (0, 4)


@pytest.mark.published
def test_zero_frame_gives_no_peaks(single_zero):
    assert len(single_zero) == 0 and single_zero.boxes.shape == (0, 4)


# --- other inputs --------------------------------------------------------------------------------------
@pytest.mark.published
def test_processed_input_512_without_config(detector, real_polar):
    _, processed = real_polar
    crop = np.ascontiguousarray(processed[:, :512])
    t = Pipeline(None, detector, input="processed").detect(crop)
    assert len(t) >= 1
    assert np.isnan(t.q).all() and np.isnan(t.phi).all() and np.isnan(t.q_width).all() and np.isnan(t.phi_width).all()
    assert np.isnan(t.intensity).all()  # no polar image given
    assert np.all((t.x1 <= 512) & (t.y1 <= 512) & (t.x0 >= 0) & (t.y0 >= 0))
    # the rings well left of the crop's border are found again at the same |Q| pixel
    centres = (t.x0 + t.x1) / 2
    for row in REFERENCE[REFERENCE[:, 2] < 480]:
        assert np.abs(centres - (row[0] + row[2]) / 2).min() < 0.5


@pytest.mark.published
def test_polar_input_reproduces_raw_input(detector, real_polar, real_table):
    polar, _ = real_polar
    t = Pipeline(None, detector, input="polar").detect(polar, source="polar.npy")
    assert len(t) == len(real_table) == 12
    np.testing.assert_array_equal(t.boxes, real_table.boxes)
    np.testing.assert_array_equal(t.score, real_table.score)
    np.testing.assert_allclose(t.intensity, real_table.intensity, rtol=1e-12)
    assert np.isnan(t.q).all() and np.isnan(t.phi).all()


# --- errors --------------------------------------------------------------------------------------------
@pytest.mark.published
def test_wrong_raw_frame_shape_names_source_and_shapes(pipe):
    with pytest.raises(FrameError) as info:
        pipe.detect(np.zeros((100, 200), np.float32), source="bad_frame.tif")
    msg = str(info.value)
    assert info.value.path == "bad_frame.tif"
    assert "bad_frame.tif" in msg and "(100, 200)" in msg and "2048×2048" in msg


def test_raw_input_needs_a_config():
    with pytest.raises(ValueError, match="config"):
        Pipeline(None, detector=None, input="raw")  # checked before the detector is used


def test_pipeline_argument_checks():
    with pytest.raises(ValueError, match="unknown input kind"):
        Pipeline(None, detector=None, input="sinogram")
    with pytest.raises(ValueError, match="batch"):
        Pipeline(None, detector=None, input="processed", batch=0)


def test_detector_unknown_backend():
    with pytest.raises(ValueError, match="onnx-foo"):
        PeakDetector("default", backend="onnx-foo")  # checked before any model is loaded


def test_detector_cuda_without_cuda():
    from gixdrt.engine import EngineUnavailableError, cuda_gpu

    if cuda_gpu()[0]:
        pytest.skip("this machine has a CUDA GPU")
    with pytest.raises(EngineUnavailableError, match="no CUDA GPU"):
        PeakDetector("default", device="cuda")
    with pytest.raises(ValueError, match="invalid device"):
        PeakDetector("default", device="tpu:banana")


def test_constancy_checks_look_at_every_block():
    """The constancy checks stop at the first block that varies, so a difference in the last block (or
    between blocks) must still be seen."""
    from gixdrt.kernels.reference.layout import _BLOCK, frame_constant

    def _constant_frames(data):
        d = np.asarray(data)
        frames = d[None, None] if d.ndim == 2 else d[None]
        out = np.zeros(1, bool)
        polar = np.arange(6, dtype=np.float32).reshape(1, 2, 3)  # varies: only the raw frames decide
        return bool(frame_constant(frames, polar, np.ones((2, 3), bool), out=out)[0])

    def _constant_inside(polar, inside):
        out = np.zeros(1, bool)
        frames = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)  # varies: only the polar image decides
        return bool(frame_constant(frames, polar[None], inside, out=out)[0])

    frame = np.full((600, 300), 100.0, np.float32)  # > 2 blocks
    assert frame.size > 2 * _BLOCK
    assert _constant_frames(frame) and _constant_frames(np.stack([frame, frame + 1]))
    last = frame.copy()
    last[-1, -1] = 99.0
    assert not _constant_frames(last) and not _constant_frames(np.stack([frame, last]))
    step = frame.copy()
    step[300:] = 50.0  # every block constant on its own, different from each other
    assert not _constant_frames(step)

    polar = np.zeros((512, 1024), np.float32)
    inside = np.zeros_like(polar, bool)
    inside[10:500, 5:900] = True
    polar[inside] = 3.0
    assert _constant_inside(polar, inside)
    polar[499, 899] = 4.0
    assert not _constant_inside(polar, inside)
    polar[499, 899] = 3.0
    polar[511, 1023] = 8.0  # outside the detector: ignored
    assert _constant_inside(polar, inside)
