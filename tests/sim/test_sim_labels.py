"""Ground-truth boxes: inside the image, on the true centres, on visible rows, on visible peaks."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.sim import PEAK_FIELDS, SimConfig, Simulator


@pytest.fixture(scope="module")
def samples():
    sim = Simulator(seed=21, aux=True)
    return [sim.sample(i) for i in range(10)]


@pytest.fixture(scope="module")
def wide_samples():
    sim = Simulator(seed=22, size=(512, 1024), aux=True)
    return [sim.sample(i) for i in range(3)]


def test_boxes_inside_with_positive_size(samples, wide_samples):
    n = 0
    for s in samples + wide_samples:
        h, w = s.image.shape
        b = s.boxes
        n += len(b)
        assert b.dtype == np.float32 and b.shape == (len(b), 4)
        assert np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= w - 1)
        assert np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= h - 1)
        assert np.all(b[:, 2] > b[:, 0]) and np.all(b[:, 3] > b[:, 1])
        assert np.all(np.diff(s.peaks["x"]) >= 0)  # sorted by |Q|
        for name, dtype in PEAK_FIELDS.items():
            assert s.peaks[name].dtype == dtype and len(s.peaks[name]) == len(b)
    assert n > 50


def test_box_x_is_centre_plus_minus_sigma(samples):
    for s in samples:
        x, sx, b = s.peaks["x"], s.peaks["sigma_x"], s.boxes
        np.testing.assert_allclose((b[:, 0] + b[:, 2]) / 2, x, atol=1e-3)
        np.testing.assert_allclose((b[:, 2] - b[:, 0]) / 2, sx, atol=1e-3)
        single = s.peaks["n_merged"] == 1
        assert np.all(sx[single] >= 0.5 - 1e-6) and np.all(sx[single] <= 4.0 + 1e-6)


def test_snr_and_visible_rows(samples):
    cfg = SimConfig()
    for s in samples:
        assert np.all(s.peaks["snr"] >= cfg.min_snr)
        for (x0, y0, x1, y1), x, merged in zip(s.boxes, s.peaks["x"], s.peaks["n_merged"]):
            if merged > 1:  # a merged label's φ extent is the union of its members', each at its own column
                continue
            col = round(float(x))
            # the box ends lie on rows that are visible at the centre column
            assert s.valid[int(np.ceil(y0)), col] and s.valid[int(np.floor(y1)), col]
            assert s.valid[int(np.ceil(y0)) : int(np.floor(y1)) + 1, col].sum() >= cfg.min_rows


def _isolated_strong(s, min_snr=100.0, sep=6.0):
    """Indices of single-peak labels well above the noise with no other label near in |Q|."""
    x, sx = s.peaks["x"], s.peaks["sigma_x"]
    out = []
    for k in range(len(x)):
        if s.peaks["n_merged"][k] != 1 or s.peaks["snr"][k] < min_snr:
            continue
        others = np.delete(np.arange(len(x)), k)
        if np.all(np.abs(x[others] - x[k]) > sep * (sx[others] + sx[k]) + 4):
            out.append(k)
    return out


def test_true_centre_is_the_radial_maximum(samples):
    checked = 0
    for s in samples:
        w = s.image.shape[1]
        for k in _isolated_strong(s):
            _x0, y0, _x1, y1 = s.boxes[k]
            r0, r1 = int(np.ceil(y0)), int(np.floor(y1))
            xc = float(s.peaks["x"][k])
            lo, hi = max(0, int(xc) - 12), min(w, int(xc) + 14)
            prof = np.where(s.valid[r0 : r1 + 1, lo:hi], s.counts[r0 : r1 + 1, lo:hi], 0).sum(axis=0)
            assert abs(lo + int(np.argmax(prof)) - xc) <= 1.0
            checked += 1
    assert checked >= 10


def test_box_core_brighter_than_radial_surroundings(samples, wide_samples):
    checked = 0
    for s in samples + wide_samples:
        w = s.image.shape[1]
        for k in _isolated_strong(s):
            _x0, y0, _x1, y1 = s.boxes[k]
            xc, sx = float(s.peaks["x"][k]), float(s.peaks["sigma_x"][k])
            r0, r1 = int(np.ceil(y0)), int(np.floor(y1))
            rows = slice(r0, r1 + 1)
            vis = s.valid[rows]
            core = [round(xc)]
            ring_cols = [c for d in (4, 5, 6) for c in (round(xc - d * sx - 2), round(xc + d * sx + 2))]
            ring_cols = [c for c in ring_cols if 0 <= c < w]
            if not ring_cols:
                continue
            img = s.image[rows]
            core_mean = img[:, core][vis[:, core]].mean()
            surround = img[:, ring_cols][vis[:, ring_cols]]
            assert core_mean > surround.mean() + 0.05
            checked += 1
    assert checked >= 10


def test_close_peaks_are_merged_into_one_label():
    cfg = SimConfig(n_peaks=(2, 2), p_ring=1.0, close_retries=0, sigma_x=(2.0, 2.0), amplitude=(50.0, 50.0),
                    merge_sep=1000.0, p_gaps=0.0, p_beamstop=0.0, p_holder=0.0)
    for i in range(3):
        s = Simulator(cfg, seed=5).sample(i)
        assert len(s.boxes) == 1 and s.peaks["n_merged"][0] == 2
        # the merged box spans both centres (combined second moment ≥ each σ)
        assert s.peaks["sigma_x"][0] >= 2.0 - 1e-6


def test_far_peaks_stay_separate_and_faint_peaks_unlabelled():
    far = SimConfig(n_peaks=(2, 2), merge_sep=0.0, close_retries=0, amplitude=(50.0, 50.0), p_ring=1.0,
                    p_gaps=0.0, p_beamstop=0.0, p_holder=0.0, p_corner_inplane=0.0, p_corner_vertical=0.0)
    s = Simulator(far, seed=1).sample(0)
    assert len(s.boxes) == 2 and np.all(s.peaks["n_merged"] == 1)
    faint = far.replace(amplitude=(1e-4, 1e-4))
    s = Simulator(faint, seed=1).sample(0)
    assert len(s.boxes) == 0 and s.info["n_peaks_drawn"] == 2


def test_segment_boxes_span_two_sigma_when_unclipped(samples):
    checked = 0
    for s in samples:
        h = s.image.shape[0]
        for k in range(len(s.boxes)):
            if s.peaks["ring"][k] or s.peaks["n_merged"][k] != 1:
                continue
            y, sy = float(s.peaks["y"][k]), float(s.peaks["sigma_y"][k])
            lo, hi = y - 2 * sy, y + 2 * sy
            _x0, y0, _x1, y1 = s.boxes[k]
            if lo >= 0 and hi <= h - 1 and s.valid[int(np.floor(lo)) : int(np.ceil(hi)) + 1, round(float(s.peaks["x"][k]))].all():
                np.testing.assert_allclose([y0, y1], [lo, hi], atol=1e-3)
                checked += 1
            else:
                assert y0 >= max(lo, 0) - 1e-3 and y1 <= min(hi, h - 1) + 1e-3
    assert checked >= 5


def test_edge_placement_cuts_peaks_with_the_last_column():
    # p_x_edge = 1: every peak's centre lies within 2σ_x inside the last column, so its label box reaches it
    cfg = SimConfig(p_x_edge=1.0, merge_sep=0.0, close_retries=0, amplitude=(30.0, 300.0), p_ring=1.0,
                    p_gaps=0.0, p_corner_inplane=0.0, p_corner_vertical=0.0)
    n = n_clipped = 0
    for i in range(4):
        s = Simulator(cfg, seed=8).sample(i)
        w = s.image.shape[1]
        x, sx = s.peaks["x"], s.peaks["sigma_x"]
        assert np.all(x <= w - 1) and np.all(x >= w - 1 - 2 * sx - 1e-4)
        np.testing.assert_allclose(s.boxes[:, 2], np.minimum(x + sx, w - 1), atol=1e-3)  # clipped by the edge
        np.testing.assert_allclose(s.boxes[:, 0], x - sx, atol=1e-3)
        n_clipped += int(np.sum(x + sx > w - 1))
        n += len(x)
    assert n > 10 and n_clipped > n // 4
    # the default simulator (p_x_edge 0) puts only a few peaks there
    s = Simulator(seed=8).sample(0)
    assert np.mean(s.boxes[:, 2] >= s.image.shape[1] - 1) < 0.5


def test_halo_placement_puts_peaks_on_halos():
    cfg = SimConfig(p_on_halo=1.0, p_halo=1.0, n_halo=(1, 1), merge_sep=0.0, close_retries=0,
                    amplitude=(30.0, 300.0))
    n = 0
    for i in range(4):
        s = Simulator(cfg, seed=9).sample(i)
        ((xc, sig),) = s.info["halos"]
        assert np.all(np.abs(s.peaks["x"] - xc) <= sig + 1e-3)
        n += len(s.boxes)
    assert n > 10
    # without halos the placement draws nothing: the image is the one without the option
    a = Simulator(SimConfig(p_halo=0.0, p_on_halo=1.0), seed=9).sample(0)
    b = Simulator(SimConfig(p_halo=0.0), seed=9).sample(0)
    assert "halos" not in a.info
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
