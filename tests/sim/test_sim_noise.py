"""The hand-written noise kernels: smooth Perlin-type noise and the counting statistics."""
from __future__ import annotations

import numpy as np

from gixdrt.sim import _kernels as K
from gixdrt.sim.core import _perlin1d


def test_perlin1d_zero_on_lattice_and_smooth():
    rng = np.random.default_rng(0)
    n, freq = 512, 8.0
    grads = rng.uniform(-1, 1, 11)
    out = np.zeros(n)
    K.perlin1d(n, freq, 0.0, grads, out)
    assert np.allclose(out[:: n // 8], 0.0)  # gradient noise vanishes on the lattice
    assert np.abs(out).max() < 0.5 and np.abs(out).max() > 0.05
    assert np.abs(np.diff(out)).max() < 4 * freq / n  # |slope| ≤ max gradient · fade'(…) bound


def test_multi_octave_profile_in_unit_range():
    p = _perlin1d(np.random.default_rng(3), 300, 3.0, 4)
    assert p.min() == 0.0 and p.max() == 1.0


def test_perlin2d_smooth_and_bounded():
    rng = np.random.default_rng(1)
    out = np.zeros((128, 256), np.float32)
    angles = rng.uniform(0, 2 * np.pi, (6, 8))
    K.perlin2d(out, 4.0, 6.0, 0.3, 0.7, angles, 1.0)
    assert np.abs(out).max() < 1.0 and out.std() > 0.01
    assert np.abs(np.diff(out, axis=1)).max() < 0.2 and np.abs(np.diff(out, axis=0)).max() < 0.2


def test_counting_noise_moments():
    rng = np.random.default_rng(2)
    for lam, read in [(0.5, 0.0), (5.0, 0.0), (40.0, 0.0), (5.0, 3.0), (200.0, 10.0)]:
        L = np.full((256, 256), lam, np.float32)
        out = np.empty_like(L)
        K.counting_noise(L, rng.standard_normal(L.shape, dtype=np.float32), read, np.uint64(7), out)
        assert abs(out.mean() - lam) < 5 * np.sqrt((lam + read**2) / L.size)
        assert abs(out.var() / (lam + read**2) - 1) < 0.05
        if read == 0.0:
            assert out.min() >= 0 and np.all(out == np.round(out))
