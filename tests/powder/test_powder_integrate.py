"""Masked azimuthal integration (gixdrt.powder.integrate) against pyFAI's own masked integration and against a
pattern known in advance; one-line errors; PONI text round trip.

What these tests can prove: that spots set to NaN are dropped exactly as pyFAI's ``mask=`` drops them, that the
geometry handed to pyFAI is ours (a frame built from our 2θ map integrates to the function it was built from), and
that shapes and errors are as documented. They cannot prove pyFAI's own splitting arithmetic, which is its tests'
business."""
from __future__ import annotations

import sys

import numpy as np
import pytest

pyFAI = pytest.importorskip("pyFAI")

from gixdrt.powder.geometry import PowderGeometry  # noqa: E402
from gixdrt.powder.integrate import (  # noqa: E402
    METHOD,
    IntegrationError,
    azimuthal_integrator,
    check_pyfai,
    integrate,
    xy_names,
)

GEOM = PowderGeometry.from_beam_center((96, 128), (40.0, 70.0), 0.05, pixel=150e-6, wavelength=0.7e-10,
                                       rot1=0.02, rot2=-0.01, rot3=0.3)


def _frame(rng, n=None):
    """A smooth frame in 2θ, the solid angle pyFAI corrects for applied, plus hot 'spots' (value, spots bool)."""
    tth = np.degrees(GEOM.tth())
    omega = azimuthal_integrator(GEOM).solidAngleArray(GEOM.shape)
    base = (100.0 + 10.0 * tth) * omega
    shape = GEOM.shape if n is None else (n, *GEOM.shape)
    spots = rng.random(shape) < 0.02
    img = np.broadcast_to(base, shape) + np.where(spots, 5000.0, 0.0)
    return img.astype(np.float32), spots, tth


def test_spots_as_nan_equal_pyfai_mask_and_remove_the_spots():
    rng = np.random.default_rng(0)
    img, spots, tth = _frame(rng)
    dmask = np.zeros(GEOM.shape, np.uint8)
    dmask[:, 60:63] = 1  # a gap
    p = integrate(img, GEOM, spots=spots, detector_mask=dmask, npt=60)
    assert p.radial.shape == (60,) and p.masked.shape == (60,) and p.unmasked.shape == (60,)
    ai = azimuthal_integrator(GEOM)
    want = ai.integrate1d(img, 60, mask=(dmask != 0) | spots, unit="2th_deg", method=METHOD)
    np.testing.assert_allclose(p.masked, want.intensity, rtol=1e-5)
    np.testing.assert_allclose(p.radial, want.radial, rtol=1e-12)
    want_u = ai.integrate1d(img, 60, mask=dmask, unit="2th_deg", method=METHOD)
    np.testing.assert_allclose(p.unmasked, want_u.intensity, rtol=1e-5)
    # the masked pattern is the function the frame was built from (mean of a linear function over each bin),
    # the unmasked one carries the spots
    inner = slice(2, -2)
    np.testing.assert_allclose(p.masked[inner], 100.0 + 10.0 * p.radial[inner], rtol=2e-3)
    assert np.all(p.unmasked[inner] >= p.masked[inner] - 1e-3) and np.median(p.unmasked - p.masked) > 50.0
    assert p.radial[0] >= tth.min() - 1e-6 and p.radial[-1] <= tth.max() + 1e-6


def test_stack_with_per_frame_spots_q_unit_and_sigma():
    rng = np.random.default_rng(1)
    img, spots, _ = _frame(rng, n=3)
    p = integrate(img, GEOM, spots=spots, npt=40, unit="q_A^-1", sigma=True)
    assert p.masked.shape == p.unmasked.shape == p.sigma_masked.shape == (3, 40)
    for k in range(3):
        one = integrate(img[k], GEOM, spots=spots[k], npt=40, unit="q_A^-1")
        np.testing.assert_array_equal(one.masked, p.masked[k])
    # q = 4π sin θ / λ of the frame's 2θ range, in Å⁻¹
    lo, hi = GEOM.tth_range()
    q = 4 * np.pi * np.sin(np.array([lo, hi]) / 2) / (GEOM.wavelength * 1e10)
    step = p.radial[1] - p.radial[0]
    assert q[0] - step < p.radial[0] < q[0] + step and q[1] - step < p.radial[-1] < q[1] + step
    assert np.all(p.sigma_masked[:, 2:-2] >= 0) and np.all(np.isfinite(p.sigma_masked))
    # one spot mask for every frame of the stack
    shared = integrate(img, GEOM, spots=spots[0], npt=40, unit="q_A^-1")
    np.testing.assert_array_equal(shared.masked[0], p.masked[0])


def test_no_spots_gives_equal_patterns_and_radial_range():
    img, _, _ = _frame(np.random.default_rng(2))
    p = integrate(img, GEOM, npt=25, radial_range=(10.0, 20.0))
    np.testing.assert_array_equal(p.masked, p.unmasked)
    assert 10.0 < p.radial[0] < p.radial[-1] < 20.0


@pytest.mark.parametrize("kwargs, text", [
    (dict(unit="chi_deg"), "unit 'chi_deg': unknown"),
    (dict(npt=0), "npt 0"),
    (dict(radial_range=(5.0, 1.0)), "radial_range"),
    (dict(spots=np.zeros((5, 5), bool)), "spots: shape (5, 5)"),
    (dict(spots=np.zeros((2, 96, 128), bool)), "spots: shape (2, 96, 128)"),
    (dict(detector_mask=np.zeros((2, 96, 128))), "detector_mask"),
])
def test_bad_arguments_are_one_line_errors(kwargs, text):
    img = np.zeros(GEOM.shape, np.float32)
    with pytest.raises(IntegrationError) as e:
        integrate(img, GEOM, **kwargs)
    assert text in str(e.value) and "\n" not in str(e.value)


def test_frame_shape_must_match_the_geometry():
    with pytest.raises(IntegrationError, match=r"shape \(10, 10\) differs from the geometry's"):
        integrate(np.zeros((10, 10)), GEOM)
    with pytest.raises(IntegrationError, match="frames: expected real"):
        integrate(np.zeros(GEOM.shape, complex), GEOM)


def test_missing_pyfai_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyFAI.detectors", None)
    with pytest.raises(IntegrationError, match=r"gixdrt\[powder\]"):
        check_pyfai()


def test_xy_names():
    one = xy_names("out/p.xy", 1)
    assert [tuple(str(x) for x in pair) for pair in one] == [("out/p.xy", "out/p_unmasked.xy")]
    many = xy_names("p.xy", 12)
    assert str(many[3][0]) == "p_03.xy" and str(many[11][1]) == "p_11_unmasked.xy"
