"""fill_holes: the three backends against the NumPy reference, the reference against an independent
interpolation (np.interp), hand-checked values, and the input checks."""
from __future__ import annotations

import numpy as np
import pytest

import gixdrt.kernels as K
from gixdrt.kernels import registry

HOLE = 2

BACKENDS = [
    "reference",
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cudasim),
]


def _fill(backend, polar, codes):
    """fill_holes on a copy of ``polar`` through ``backend``; returns the filled host array."""
    if backend == "cuda":
        from numba import cuda

        d_polar = cuda.to_device(polar.copy())
        res = K.fill_holes(d_polar, cuda.to_device(codes), impl="cuda")
        assert res is d_polar
        return d_polar.copy_to_host()
    img = polar.copy()
    res = K.fill_holes(img, codes, impl=backend)
    assert res is img  # in place
    return img


def _by_interp(polar, codes):
    """The specification evaluated independently: per column, np.interp (float64) over the rows that are not
    holes (it extends the first and last of them as constants, like the specification's runs at the top and
    bottom); a column of holes only becomes 0."""
    out = polar.astype(np.float64)
    flat_p = out.reshape(-1, *out.shape[-2:])
    flat_c = codes.reshape(-1, *codes.shape[-2:])
    rows = np.arange(flat_p.shape[1])
    for img, code in zip(flat_p, flat_c):
        for j in range(img.shape[1]):
            hole = code[:, j] == HOLE
            if hole.all():
                img[:, j] = 0.0
            elif hole.any():
                img[hole, j] = np.interp(rows[hole], rows[~hole], img[~hole, j])
    return out


def _random_case(seed, shape, p_hole=0.35):
    rng = np.random.default_rng(seed)
    polar = (rng.standard_normal(shape) * 50 + 100).astype(np.float32)
    codes = rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=[(1 - p_hole) * 0.7, (1 - p_hole) * 0.3, p_hole])
    cols = codes.reshape(-1, *shape[-2:])
    cols[0, :, 0] = HOLE  # a whole column of holes
    cols[0, :3, 1] = HOLE  # a run at the top
    cols[0, 3:, 1] = 0
    cols[0, -4:, 2] = HOLE  # a run at the bottom
    cols[0, :-4, 2] = 1
    cols[0, :, 3] = [HOLE if i % 3 else 0 for i in range(shape[-2])]  # several runs in one column
    cols[0, :, 4] = 0  # no holes
    return polar, codes


def test_hand_checked_run():
    # one column, holes in rows 2..4 between L = 10 (row 1) and R = 18 (row 5): t = 1/4, 2/4, 3/4
    polar = np.array([[7.0], [10.0], [-1.0], [-2.0], [-3.0], [18.0], [5.0]], np.float32)
    codes = np.array([[0], [1], [2], [2], [2], [0], [0]], np.uint8)
    for backend in ("reference", "cpu"):
        out = _fill(backend, polar, codes)
        np.testing.assert_array_equal(out[:, 0], [7.0, 10.0, 12.0, 14.0, 16.0, 18.0, 5.0])
    # top run copies R, bottom run copies L, an all-hole column is 0
    polar = np.array([[1.0, 1.0, 1.0], [2.0, 2.0, 2.0], [3.0, 3.0, 3.0], [4.0, 4.0, 4.0]], np.float32)
    codes = np.array([[2, 0, 2], [2, 0, 2], [0, 2, 2], [0, 2, 2]], np.uint8)
    for backend in ("reference", "cpu"):
        out = _fill(backend, polar, codes)
        np.testing.assert_array_equal(out, [[3.0, 1.0, 0.0], [3.0, 2.0, 0.0], [3.0, 2.0, 0.0], [4.0, 2.0, 0.0]])


def test_formula_in_float32():
    # L = 0.1, R = 0.7 over a run of 5 rows: t = float32(k) / float32(6), L + (R − L)·t in float32
    polar = np.zeros((7, 1), np.float32)
    polar[0, 0], polar[6, 0] = np.float32(0.1), np.float32(0.7)
    codes = np.array([[0]] + [[2]] * 5 + [[0]], np.uint8)
    left, right = np.float32(0.1), np.float32(0.7)
    want = [left + (right - left) * (np.float32(k) / np.float32(6)) for k in range(1, 6)]
    assert all(isinstance(v, np.float32) for v in want)
    for backend in ("reference", "cpu"):
        np.testing.assert_array_equal(_fill(backend, polar, codes)[1:6, 0], want)


@pytest.mark.parametrize("shape", [(24, 16), (3, 24, 16), (1, 5, 7)])
def test_reference_against_interp(shape):
    polar, codes = _random_case(1, shape)
    out = _fill("reference", polar, codes)
    np.testing.assert_allclose(out, _by_interp(polar, codes), rtol=1e-6, atol=1e-4)
    keep = codes != HOLE
    assert np.array_equal(out[keep], polar[keep])  # pixels that are not holes are never changed
    assert (codes == HOLE).any() and not np.array_equal(out, polar)


@pytest.mark.parametrize("shape", [(24, 16), (3, 24, 16), (2, 9, 70)])
@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_backends_match_reference(backend, shape):
    polar, codes = _random_case(2, shape)
    polar[codes == 1] = np.nan  # values of pixels that are not holes are copied and read, never changed
    want = _fill("reference", polar, codes)
    got = _fill(backend, polar, codes)
    keep = codes != HOLE
    np.testing.assert_array_equal(got[keep], polar[keep])
    if backend == "cuda" and not registry.cudasim():
        # on a GPU L + (R − L)·t may be contracted into a fused multiply-add
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_holes_changes_nothing(backend):
    polar, _ = _random_case(3, (2, 12, 10))
    codes = np.ones(polar.shape, np.uint8)
    assert np.array_equal(_fill(backend, polar, codes), polar)


@pytest.mark.parametrize("backend", BACKENDS)
def test_after_polar_remap(backend):
    # the remap's holes (code 2) filled; its renormalised pixels (code 1) kept
    from gixdrt.geometry import Geometry, polar_map

    small = Geometry(  # the small geometry of test_polar_remap.py
        size_x=128, size_y=64, pixel_size=3.2, distance=809.0, wavelength=0.6888, incidence_angle=0.5,
        y0=34.0, z0=14.0, q_xy_max=2.7, q_z_max=2.7, n_phi=32, n_q=64, flip_y=True,
    )
    pm = polar_map(small)
    h, w = small.frame_shape
    frame = (np.random.default_rng(4).random((h, w)) * 100 + 1).astype(np.float32)
    frame[20:26, :] = np.nan  # a gap across the detector
    codes = np.zeros(pm.shape, np.uint8)
    polar = K.polar_remap(frame, pm, masked=codes, impl="reference")
    assert (codes == HOLE).any()
    out = _fill(backend, polar, codes)
    np.testing.assert_allclose(out, _by_interp(polar, codes), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_errors(backend):
    polar = np.zeros((4, 5), np.float32)
    codes = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="masked"):
        K.fill_holes(polar, np.zeros((5, 4), np.uint8), impl=backend)
    with pytest.raises(TypeError, match="masked"):
        K.fill_holes(polar, codes.astype(bool), impl=backend)
    with pytest.raises(TypeError, match="polar"):
        K.fill_holes(polar.astype(np.float64), codes, impl=backend)
    with pytest.raises(ValueError, match="polar"):
        K.fill_holes(np.zeros((2, 2, 4, 5), np.float32), np.zeros((2, 2, 4, 5), np.uint8), impl=backend)
    with pytest.raises(ValueError, match="in place"):
        K.fill_holes(np.zeros((5, 8), np.float32)[:, ::2], np.zeros((5, 4), np.uint8), impl=backend)
    ro = np.zeros((4, 5), np.float32)
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="in place"):
        K.fill_holes(ro, codes, impl=backend)


@pytest.mark.cudasim
def test_errors_cuda():
    from numba import cuda

    polar = cuda.to_device(np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match="masked"):
        K.fill_holes(polar, cuda.to_device(np.zeros((5, 4), np.uint8)), impl="cuda")
    with pytest.raises(TypeError, match="masked"):
        K.fill_holes(polar, cuda.to_device(np.zeros((4, 5), np.int32)), impl="cuda")
    with pytest.raises(TypeError, match="device"):
        K.fill_holes(np.zeros((4, 5), np.float32), np.zeros((4, 5), np.uint8), impl="cuda")


def test_registered():
    assert registry.registered()["fill_holes"] == ["cpu", "cuda", "reference"]
    assert "fill_holes" in K.__all__
    assert registry.resolve("fill_holes", None, np.zeros((2, 2), np.float32))[0] == "cpu"
