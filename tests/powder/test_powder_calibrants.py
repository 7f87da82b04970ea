"""Calibrant d-spacings from lattice constants and reflection conditions, against pyFAI's calibrant files."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.powder.calibrants import CALIBRANTS, Phase, d_spacings, random_phase

PYFAI_FILES = {
    "LaB6": "LaB6_SRM660c", "CeO2": "CeO2", "Si": "Si_SRM640e", "alpha_Al2O3": "alpha_Al2O3_SRM676a_2015",
    "Ni": "Ni", "Au": "Au", "Al": "Al", "NaCl": "NaCl",
}


def _pyfai_d(name: str, d_min: float) -> np.ndarray:
    pytest.importorskip("pyFAI")
    import pyFAI.calibrant

    d = np.array(pyFAI.calibrant.get_calibrant(name).get_dSpacing(), np.float64)
    return d[d >= d_min * (1 - 1e-9)]


@pytest.mark.parametrize("name", sorted(PYFAI_FILES))
def test_rings_equal_pyfai_calibrant_files(name):
    ref = _pyfai_d(PYFAI_FILES[name], 0.9)
    d_min = ref.min()  # some files stop above 0.9 Å
    d, mult = d_spacings(CALIBRANTS[name], d_min * (1 - 1e-6))
    assert d.shape == ref.shape
    np.testing.assert_allclose(d, ref, rtol=2e-6, atol=0)
    assert (mult > 0).all()


def test_hexagonal_rules_against_pyfai():
    # ZnO (P6_3mc): pyFAI's file also lists 0 0 5, which the 6_3 screw axis forbids; every ring of ours is in it
    ref = _pyfai_d("ZnO", 1.0)
    d, _ = d_spacings(CALIBRANTS["ZnO"], 1.0)
    assert all(np.abs(ref - x).min() < 1e-6 * x for x in d)
    assert len(ref) == len(d) + 1 and np.abs(d - 1.041306).min() > 1e-4
    # Cr2O3 (R-3c): every ring of pyFAI's file is among ours
    ref = _pyfai_d("Cr2O3", 1.0)
    d, _ = d_spacings(CALIBRANTS["Cr2O3"], 1.0)
    assert all(np.abs(d - x).min() < 1e-6 * x for x in ref)


def test_multiplicities_and_textbook_values():
    d, mult = d_spacings(CALIBRANTS["LaB6"], 2.0)
    a = 4.156826
    np.testing.assert_allclose(d, [a, a / np.sqrt(2), a / np.sqrt(3), a / 2], rtol=1e-12)
    assert mult.tolist() == [6, 12, 8, 6]  # {100}, {110}, {111}, {200}
    d, mult = d_spacings(CALIBRANTS["Si"], 1.5)  # 111, 220, 311 (200 and 222 forbidden)
    np.testing.assert_allclose(d, 5.431179 / np.sqrt([3, 8, 11]), rtol=1e-12)
    assert mult.tolist() == [8, 12, 24]


def test_scaled_phase_shifts_rings():
    d0, _ = d_spacings(CALIBRANTS["CeO2"], 1.2)
    d1, _ = d_spacings(CALIBRANTS["CeO2"].scaled(1.01), 1.2)
    np.testing.assert_allclose(d1[: len(d0)], d0 * 1.01, rtol=1e-12)


def test_random_phases_have_rings():
    rng = np.random.default_rng(0)
    for _ in range(20):
        ph = random_phase(rng)
        d, mult = d_spacings(ph, 1.0)
        assert d.size > 0 and np.all(np.diff(d) < 0) and mult.min() >= 1


def test_invalid_phase():
    with pytest.raises(ValueError, match="rule"):
        Phase("x", "cubic", 4.0, "Q")
    with pytest.raises(ValueError, match="needs c"):
        Phase("x", "hexagonal", 4.0)
    with pytest.raises(ValueError, match="d_min"):
        d_spacings(CALIBRANTS["Si"], 0.0)
