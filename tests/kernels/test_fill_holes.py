"""fill_holes: hand-checked values of the φ/|Q| blend and its fallbacks, the reference against a per-pixel loop
written here from the specification, the cpu and cuda backends against the reference, and the input checks."""
from __future__ import annotations

import numpy as np
import pytest

import gixdrt.kernels as K
from gixdrt.kernels import registry

HOLE = 2
f32 = np.float32

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


def _lerp(left, right, pos, span):
    """L + (R − L)·t with t = float32(pos) / float32(span), in float32."""
    left, right = f32(left), f32(right)
    return left + (right - left) * (f32(pos) / f32(span))


def _blend(v_phi, span_phi, v_q, span_q):
    return (f32(v_phi) * f32(span_q) + f32(v_q) * f32(span_phi)) / f32(span_phi + span_q)


def _by_loop(polar, codes):
    """The specification written out pixel by pixel: every hole's value from the untouched input ``src`` (so no
    filled value is ever read), in float32 scalars."""
    src = polar.reshape(-1, *polar.shape[-2:])
    cod = codes.reshape(src.shape)
    out = src.copy()
    _, h, w = src.shape
    for k in range(src.shape[0]):
        for i in range(h):
            for j in range(w):
                if cod[k, i, j] != HOLE:
                    continue
                a = next((r for r in range(i - 1, -1, -1) if cod[k, r, j] != HOLE), None)
                b = next((r for r in range(i + 1, h) if cod[k, r, j] != HOLE), None)
                c = next((q for q in range(j - 1, -1, -1) if cod[k, i, q] != HOLE), None)
                d = next((q for q in range(j + 1, w) if cod[k, i, q] != HOLE), None)
                two_phi = a is not None and b is not None
                two_q = c is not None and d is not None
                if two_phi:
                    v_phi = _lerp(src[k, a, j], src[k, b, j], i - a, b - a)
                if two_q:
                    v_q = _lerp(src[k, i, c], src[k, i, d], j - c, d - c)
                if two_phi and two_q:
                    v = _blend(v_phi, b - a, v_q, d - c)
                elif two_phi:
                    v = v_phi
                elif two_q:
                    v = v_q
                elif a is not None:
                    v = src[k, a, j]
                elif b is not None:
                    v = src[k, b, j]
                elif c is not None:
                    v = src[k, i, c]
                elif d is not None:
                    v = src[k, i, d]
                else:
                    v = f32(0.0)
                out[k, i, j] = v
    return out.reshape(polar.shape)


def _random_case(seed, shape, p_hole=0.3):
    """Random values and codes (0/1/2) with some structure in the first image: a column and a row of holes only,
    long thin runs along φ and along |Q|, a block of holes in two corners, a column and a row without holes."""
    rng = np.random.default_rng(seed)
    polar = (rng.standard_normal(shape) * 50 + 100).astype(np.float32)
    codes = rng.choice(np.array([0, 1, 2], np.uint8), size=shape, p=[(1 - p_hole) * 0.7, (1 - p_hole) * 0.3, p_hole])
    c = codes.reshape(-1, *shape[-2:])[0]
    h, w = c.shape
    c[:, 0] = HOLE  # a whole column of holes
    c[h // 2, :] = HOLE  # a whole row of holes
    c[1:h - 1, 3] = HOLE  # a long thin run along φ ...
    c[1:h - 1, 2] = 0  # ... with valid columns on both sides
    c[1:h - 1, 4] = 1
    c[2, 1:w - 1] = HOLE  # a long thin run along |Q| ...
    c[1, 1:w - 1] = 0  # ... with valid rows above and below
    c[3, 1:w - 1] = 1
    c[:3, -3:] = HOLE  # a corner block
    c[-3:, -3:] = HOLE  # another one
    c[:, -5] = 0  # a column without holes
    c[-2, 1:-3] = 0  # a row without holes
    return polar, codes


@pytest.mark.cudasim
def test_blend_hand_checked():
    # a run of three holes along φ (rows 1..3 of column 2, between rows 0 and 4: span_φ = 4) crossed by rows in
    # which only column 2 is a hole (span_q = 2): the |Q| estimate weighs twice as much as the φ one
    polar = np.array(
        [
            [0, 0, 10, 0, 0],
            [0, 60, -1, 100, 0],
            [0, 100, -1, 200, 0],
            [0, -4, -1, 6, 0],
            [0, 0, 50, 0, 0],
        ],
        np.float32,
    )
    codes = np.zeros(polar.shape, np.uint8)
    codes[1:4, 2] = HOLE
    # row 1: vφ = 10 + 40·1/4 = 20, vq = (60 + 100)/2 = 80 → (20·2 + 80·4)/6 = 60
    # row 2: vφ = 10 + 40·2/4 = 30, vq = 150 → (30·2 + 150·4)/6 = 110 (equal weights would give 90, swapped 70)
    # row 3: vφ = 10 + 40·3/4 = 40, vq = 1 → (40·2 + 1·4)/6 = 14
    for backend in ("reference", "cpu", "cuda"):
        out = _fill(backend, polar, codes)
        np.testing.assert_array_equal(out[1:4, 2], [60.0, 110.0, 14.0])
        keep = codes != HOLE
        np.testing.assert_array_equal(out[keep], polar[keep])


@pytest.mark.cudasim
def test_blend_in_float32():
    # values that float32 does not hold exactly: each step rounds to float32 (t, the lerp, the blend)
    polar = np.zeros((6, 7), np.float32)
    polar[0, 3], polar[5, 3] = f32(0.1), f32(0.7)  # column 3: holes in rows 1..4, span_φ = 5
    polar[2, 1], polar[2, 4] = f32(1.3), f32(-0.37)  # row 2: holes in columns 2..3, span_q = 3
    codes = np.zeros(polar.shape, np.uint8)
    codes[1:5, 3] = HOLE
    codes[2, 2] = HOLE
    v_phi = f32(0.1) + (f32(0.7) - f32(0.1)) * (f32(2) / f32(5))
    v_q = f32(1.3) + (f32(-0.37) - f32(1.3)) * (f32(2) / f32(3))
    want = (v_phi * f32(3) + v_q * f32(5)) / f32(8)
    assert isinstance(want, np.float32)
    for backend in ("reference", "cpu"):
        assert _fill(backend, polar, codes)[2, 3] == want
    if registry.cudasim():  # on a GPU the lerps and the blend may be contracted into fused multiply-adds
        assert _fill("cuda", polar, codes)[2, 3] == want


@pytest.mark.cudasim
def test_one_direction_two_sided():
    # at the image edges only one direction has both bounds; the one-sided neighbour of the other is ignored
    polar = np.arange(20, dtype=np.float32).reshape(4, 5) * 4
    codes = np.zeros(polar.shape, np.uint8)
    codes[0, 2] = HOLE  # top row: φ has only row 1 below, |Q| has columns 1 and 3
    codes[2, 0] = HOLE  # left column: |Q| has only column 1, φ has rows 1 and 3
    codes[3, 3:] = HOLE  # bottom right: (3, 3) has |Q| one-sided (column 2) and φ one-sided (row 2): neither
    want = polar.copy()
    want[0, 2] = (polar[0, 1] + polar[0, 3]) / 2  # 4 + (12 − 4)·1/2 = 8
    want[2, 0] = (polar[1, 0] + polar[3, 0]) / 2  # 20 + (60 − 20)·1/2 = 40
    want[3, 3] = polar[2, 3]  # neither two-sided: the nearest along φ (52), not along |Q|
    want[3, 4] = polar[2, 4]  # 56
    assert (want[0, 2], want[2, 0], want[3, 3], want[3, 4]) == (8, 40, 52, 56)
    for backend in ("reference", "cpu", "cuda"):
        np.testing.assert_array_equal(_fill(backend, polar, codes), want)


@pytest.mark.cudasim
def test_neither_two_sided_corners():
    # 4 × 5; holes: the top-left 2 × 2 block, column 4 entirely, and row 3 in columns 2..4
    polar = np.arange(1, 21, dtype=np.float32).reshape(4, 5)
    codes = np.zeros(polar.shape, np.uint8)
    codes[:2, :2] = HOLE
    codes[:, 4] = HOLE
    codes[3, 2:] = HOLE
    want = polar.copy()
    want[0, 0] = want[1, 0] = polar[2, 0]  # φ: row 2 below only (|Q| has column 2 right only): 11
    want[0, 1] = want[1, 1] = polar[2, 1]  # 12
    want[:3, 4] = polar[:3, 3]  # column 4 all holes: φ none, |Q| column 3 on the left only (4, 9, 14)
    want[3, 2] = polar[2, 2]  # φ above only, |Q| left only: φ first (13)
    want[3, 3] = polar[2, 3]  # 14
    want[3, 4] = polar[3, 1]  # φ none (column 4 all holes), |Q|: column 1 on the left (17)
    assert (want[0, 0], want[3, 2], want[3, 4], want[1, 4]) == (11, 13, 17, 9)
    for backend in ("reference", "cpu", "cuda"):
        np.testing.assert_array_equal(_fill(backend, polar, codes), want)


@pytest.mark.cudasim
def test_row_and_column_all_holes_give_zero():
    polar = np.full((3, 4), 7.0, np.float32)
    codes = np.zeros(polar.shape, np.uint8)
    codes[1, :] = HOLE
    codes[:, 2] = HOLE
    want = polar.copy()
    want[1, :] = 7.0  # row 1 all holes: each from φ (rows 0 and 2)
    want[:, 2] = 7.0  # column 2 all holes: each from |Q|
    want[1, 2] = 0.0  # its row and its column are all holes
    for backend in ("reference", "cpu", "cuda"):
        np.testing.assert_array_equal(_fill(backend, polar, codes), want)
    codes[:] = HOLE  # all holes: all 0
    for backend in ("reference", "cpu", "cuda"):
        np.testing.assert_array_equal(_fill(backend, polar, codes), np.zeros_like(polar))


@pytest.mark.cudasim
def test_several_images():
    # the same hole in three images with different surroundings: no image reads another
    polar = np.stack([np.full((3, 3), v, np.float32) for v in (1.0, 2.0, 3.0)])
    polar[1, 0, 1], polar[1, 2, 1] = 2.0, 6.0  # image 1: φ neighbours 2 and 6 (span 2), |Q| neighbours 2 and 2
    codes = np.zeros(polar.shape, np.uint8)
    codes[:, 1, 1] = HOLE
    codes[2, :, 1] = HOLE  # image 2: column 1 all holes → |Q| only (in images 0 and 1 rows 0 and 2 are valid)
    polar[2, 1, 2] = 9.0
    want = polar.copy()
    want[0, 1, 1] = 1.0
    want[1, 1, 1] = (4.0 * 2 + 2.0 * 2) / 4  # vφ = 4, vq = 2, equal spans: 3
    want[2, :, 1] = [3.0, 6.0, 3.0]  # rows 0 and 2: |Q| from 3 and 3; row 1: from 3 and 9
    for backend in ("reference", "cpu", "cuda"):
        np.testing.assert_array_equal(_fill(backend, polar, codes), want)
        np.testing.assert_array_equal(_fill(backend, polar[1], codes[1]), want[1])  # one image on its own


@pytest.mark.parametrize("shape", [(24, 16), (3, 24, 16), (1, 9, 11), (16, 40)])
def test_reference_against_loop(shape):
    polar, codes = _random_case(1, shape)
    out = _fill("reference", polar, codes)
    np.testing.assert_array_equal(out, _by_loop(polar, codes))
    keep = codes != HOLE
    assert np.array_equal(out[keep], polar[keep])  # pixels that are not holes are never changed
    assert not np.array_equal(out, polar)


@pytest.mark.parametrize("p_hole", [0.1, 0.5, 0.9])
def test_reference_against_loop_densities(p_hole):
    polar, codes = _random_case(5, (2, 13, 17), p_hole)
    np.testing.assert_array_equal(_fill("reference", polar, codes), _by_loop(polar, codes))


@pytest.mark.parametrize("backend", BACKENDS)
def test_transpose_symmetry(backend):
    # with a border of pixels that are not holes every hole is two-sided both ways, and the blend is symmetric in
    # φ and |Q|: filling the transposed image gives the transposed result, bit for bit
    polar, codes = _random_case(6, (14, 18), p_hole=0.5)
    codes[[0, -1], :] = 0
    codes[:, [0, -1]] = 0
    out = _fill(backend, polar, codes)
    out_t = _fill(backend, np.ascontiguousarray(polar.T), np.ascontiguousarray(codes.T))
    if backend == "cuda" and not registry.cudasim():  # a fused multiply-add rounds one of the two products
        np.testing.assert_allclose(out_t, out.T, rtol=1e-6, atol=1e-4)
    else:
        np.testing.assert_array_equal(out_t, out.T)
    assert not np.array_equal(out, polar)


@pytest.mark.parametrize("shape", [(24, 16), (3, 24, 16), (2, 9, 70), (40, 9)])
@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_backends_match_reference(backend, shape):
    polar, codes = _random_case(2, shape)
    polar[codes == 1] = np.nan  # values of pixels that are not holes are read, never changed
    want = _fill("reference", polar, codes)
    got = _fill(backend, polar, codes)
    keep = codes != HOLE
    np.testing.assert_array_equal(got[keep], polar[keep])
    if backend == "cuda" and not registry.cudasim():
        # on a GPU the interpolations and the blend may be contracted into fused multiply-adds
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("p_hole", [0.05, 0.6, 0.97])
@pytest.mark.parametrize("backend", ["cpu", pytest.param("cuda", marks=pytest.mark.cudasim)])
def test_backends_match_reference_densities(backend, p_hole):
    polar, codes = _random_case(7, (2, 12, 20), p_hole)
    want = _fill("reference", polar, codes)
    got = _fill(backend, polar, codes)
    if backend == "cuda" and not registry.cudasim():
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
    else:
        np.testing.assert_array_equal(got, want)


def test_cpu_large_and_threads():
    # 4.5 M pixels (the C++ kernel fills them in two groups of images), long arcs of holes, any thread count
    rng = np.random.default_rng(8)
    h, w = 1000, 1500
    yy, xx = np.mgrid[0:h, 0:w]
    codes = np.zeros((3, h, w), np.uint8)
    for k, (x0, r) in enumerate([(400, 1200), (1500, 900), (-300, 1600)]):
        ring = np.abs(np.hypot(xx - x0, (yy + 200) * 1.5) - r) < 10 + 5 * k
        codes[k][ring] = HOLE
        codes[(k + 1) % 3][ring] = 1
    codes[1, :, 1000] = HOLE  # a column of holes only
    polar = rng.standard_normal((3, h, w)).astype(np.float32)
    want = _fill("reference", polar, codes)
    from gixdrt.kernels.cpu.polar import fill_holes as cpu_fill

    for threads in (1, 2, 7):
        img = polar.copy()
        cpu_fill(img, codes, threads=threads)
        np.testing.assert_array_equal(img, want)


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
    want = _by_loop(polar, codes)
    if backend == "cuda" and not registry.cudasim():
        np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-4)
    else:
        np.testing.assert_array_equal(out, want)


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


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    for shape in ((0, 4), (3, 0), (0, 2, 3)):
        polar = np.zeros(shape, np.float32)
        assert _fill(backend, polar, np.zeros(shape, np.uint8)).shape == shape


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
