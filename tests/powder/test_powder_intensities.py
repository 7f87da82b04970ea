"""The intensity evaluation: peak areas of known peaks, ring windows, the truth against itself, and masking with the
true spot mask against no spot mask on generated 512² frames (this one can fail: it is the point of masking)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

pytest.importorskip("pyFAI")
pytest.importorskip("scipy")

from gixdrt.powder.evaluate import (  # noqa: E402
    evaluate_methods,
    intensity_errors,
    peak_area,
    ring_windows,
    summarize_intensity_errors,
    truth_image,
)
from gixdrt.sim.powder import PowderSimulator  # noqa: E402


def test_peak_area_of_a_gaussian_on_a_sloped_background():
    x = np.linspace(10.0, 12.0, 401)
    sigma, amp = 0.05, 30.0
    y = 5.0 + 2.0 * (x - 10.0) + amp * np.exp(-0.5 * ((x - 11.0) / sigma) ** 2)
    i0, i1 = int(np.searchsorted(x, 11.0 - 6 * sigma)), int(np.searchsorted(x, 11.0 + 6 * sigma))
    area, height = peak_area(x, y, i0, i1)
    assert area == pytest.approx(amp * sigma * math.sqrt(2 * math.pi), rel=1e-3)
    assert height == pytest.approx(amp, rel=1e-3)


def test_ring_windows_merge_unresolved_rings_and_cut_at_midpoints():
    radial = np.arange(0.0, 40.0, 0.01) + 0.005  # bin centres, degrees
    fw = math.radians(0.2)
    rings = np.radians([10.0, 10.05, 11.0, 39.99])  # 10 and 10.05 unresolved; 39.99 at the pattern's end
    w = ring_windows(radial, rings, [fw] * 4, window=2.0)
    assert len(w) == 2
    (a0, a1, ca), (b0, b1, cb) = w
    assert ca == pytest.approx([10.0, 10.05]) and cb == pytest.approx([11.0])
    assert radial[a0] == pytest.approx(10.0 - 0.4, abs=0.011) and a1 < b0  # ± 2 FWHM, no shared bin
    mid = 0.5 * (10.05 + 11.0)
    assert radial[a1] < mid <= radial[b0] + 0.01 and radial[b1] == pytest.approx(11.4, abs=0.011)


@pytest.fixture(scope="module")
def frames():
    sim = PowderSimulator(seed=11, size=(512, 512))
    return [sim.frame(i, aux=True) for i in (1, 2, 6)]


def test_truth_against_itself_is_exact(frames):
    f = frames[0]
    clean = dataclasses.replace(f, image=truth_image(f).astype(np.float32), spots=np.zeros_like(f.spots))
    recs = intensity_errors(clean, {"nothing": np.zeros_like(f.spots)})
    assert len(recs) >= 3
    for r in recs:
        assert r["truth_area"] > 0
        assert max(r["error"].values()) < 1e-4  # float32 rounding of the image only


def test_reference_names_are_reserved(frames):
    with pytest.raises(ValueError, match="may not be named unmasked"):
        intensity_errors(frames[0], {"unmasked": frames[0].spots})


def test_true_mask_beats_no_mask(frames):
    recs = [r for f in frames for r in intensity_errors(f, {})]
    s = summarize_intensity_errors(recs, [])
    assert s["rings_with_spots"] >= 10
    ws = s["truth_mask"]["with_spots"], s["unmasked"]["with_spots"]
    assert ws[0]["median"] < 0.5 * ws[1]["median"] and ws[0]["p90"] < 0.5 * ws[1]["p90"]
    assert s["truth_mask"]["with_spots"]["median"] < 0.02
    # the spot pixels that lie in a window's 2θ range were counted from the truth mask and the 2θ map
    tth = np.degrees(frames[0].geometry.tth()[frames[0].spots])
    r0 = intensity_errors(frames[0], {})
    for r in r0:
        lo, hi = r["tth_deg"]
        assert r["spot_pixels"] == np.count_nonzero((tth >= lo) & (tth < hi))


def test_evaluate_methods_reports_intensities():
    methods = {"oracle": lambda f: f.spots, "nothing": lambda f: np.zeros_like(f.spots)}
    rep = evaluate_methods(methods, n=2, seed=11, size=256, start=1, intensities=True)
    s = rep["intensities"]["summary"]
    assert s["rings"] == len(rep["intensities"]["per_ring"]) >= 1
    for r in rep["intensities"]["per_ring"]:  # the oracle is the true mask, nothing is no mask
        assert r["error"]["oracle"] == r["error"]["truth_mask"]
        assert r["error"]["nothing"] == r["error"]["unmasked"]
    assert rep["methods"]["oracle"]["intensity_error"]["masked"] == s["oracle"]
    assert rep["methods"]["nothing"]["intensity_error"]["unmasked"] == s["unmasked"]
    plain = evaluate_methods(methods, n=1, seed=11, size=128)
    assert "intensities" not in plain and "intensity_error" not in plain["methods"]["oracle"]
