"""PowderGeometry: 2θ and χ per pixel against pyFAI (the convention we promise), the beam centre, PONI files."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gixdrt.errors import ConfigError
from gixdrt.powder.geometry import PowderGeometry

GEOMS = [
    PowderGeometry(dist=0.3, poni1=0.11, poni2=0.09, rot1=0.03, rot2=-0.05, rot3=0.4, wavelength=0.7e-10,
                   pixel1=150e-6, pixel2=172e-6, shape=(300, 400)),
    PowderGeometry(dist=0.9, poni1=0.02, poni2=0.2, wavelength=0.15e-10, pixel1=100e-6, pixel2=100e-6, shape=(256, 128)),
]


def test_untilted_tth_is_the_textbook_formula():
    g = PowderGeometry.from_beam_center((64, 80), (20.0, 30.0), 0.2, pixel=100e-6)
    i, j = np.mgrid[0:64, 0:80]
    r = np.hypot(i - 20.0, j - 30.0) * 100e-6
    np.testing.assert_allclose(g.tth(), np.arctan(r / 0.2), rtol=0, atol=1e-12)
    assert g.beam_center == pytest.approx((20.0, 30.0), abs=1e-9)
    # χ: atan2 of (row offset, column offset) with no rotation
    np.testing.assert_allclose(g.chi(), np.arctan2((i - 20.0), (j - 30.0)), atol=1e-12)


@pytest.mark.parametrize("g", GEOMS)
def test_tth_chi_and_beam_centre_match_pyfai(g):
    pytest.importorskip("pyFAI")
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    ai = AzimuthalIntegrator(dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2, rot3=g.rot3,
                             wavelength=g.wavelength,
                             detector=Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=g.shape))
    # pyFAI computes positions in float32 internally: agreement to ~1e-7 rad
    np.testing.assert_allclose(g.tth(), ai.center_array(g.shape, unit="2th_rad"), rtol=0, atol=1e-6)
    dchi = np.angle(np.exp(1j * (g.chi() - ai.center_array(g.shape, unit="chi_rad"))))
    assert np.abs(dchi).max() < 1e-5
    fit2d = ai.getFit2D()  # pixel edges at integers: centre index + 0.5
    assert g.beam_center == pytest.approx((fit2d["centerY"] - 0.5, fit2d["centerX"] - 0.5), abs=1e-6)


def test_beam_centre_has_tth_zero_with_tilts():
    g = GEOMS[0]
    by, bx = g.beam_center
    t1, t2, t3 = g.positions(np.array(by), np.array(bx))
    assert math.atan2(math.hypot(float(t1), float(t2)), float(t3)) < 1e-12


def test_d_spacing_round_trip():
    g = GEOMS[0]
    d = np.array([4.0, 2.0, 1.0])
    np.testing.assert_allclose(g.d_spacing(g.tth_of_d(d)), d, rtol=1e-12)
    assert np.isnan(g.tth_of_d(0.3))  # λ/2d > 1: no reflection


def test_poni_file_v2(tmp_path):
    p = tmp_path / "det.poni"
    p.write_text(
        "# Nota: C-order, 1 refers to the Y axis, 2 to the X axis\nponi_version: 2\n"
        'Detector: Detector\nDetector_config: {"pixel1": 0.00015, "pixel2": 0.00016, "max_shape": [2880, 2881]}\n'
        "Distance: 0.75\nPoni1: 0.21\nPoni2: 0.22\nRot1: 0.01\nRot2: -0.02\nRot3: 0.0\nWavelength: 1.8e-11\n"
    )
    g = PowderGeometry.from_poni(p)
    assert (g.dist, g.poni1, g.poni2, g.rot1, g.rot2, g.wavelength) == (0.75, 0.21, 0.22, 0.01, -0.02, 1.8e-11)
    assert (g.pixel1, g.pixel2, g.shape) == (0.00015, 0.00016, (2880, 2881))
    p.write_text("Distance: 0.75\nPoni1: 0.21\n")
    with pytest.raises(ConfigError, match="det.poni"):
        PowderGeometry.from_poni(p, shape=(10, 10))


def test_invalid_values_are_rejected():
    with pytest.raises(ValueError, match="dist"):
        PowderGeometry(dist=0.0, poni1=0, poni2=0)
    with pytest.raises(ValueError, match="rot1"):
        PowderGeometry(dist=1.0, poni1=0, poni2=0, rot1=float("nan"))


def test_poni_round_trip(tmp_path):
    g = PowderGeometry(dist=0.3012, poni1=0.21234, poni2=0.19876, rot1=0.0123, rot2=-0.0071, rot3=0.0,
                       wavelength=1.7712e-11, pixel1=150e-6, pixel2=151e-6, shape=(2880, 2881))
    back = PowderGeometry.from_poni(g.write_poni(tmp_path / "det.poni"))
    assert back == g
    pyFAI = pytest.importorskip("pyFAI")
    ai = pyFAI.load(str(tmp_path / "det.poni"))
    assert ai.dist == pytest.approx(g.dist) and ai.rot1 == pytest.approx(g.rot1)
    assert ai.detector.pixel2 == pytest.approx(g.pixel2) and tuple(ai.detector.max_shape) == g.shape
