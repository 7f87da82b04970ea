"""CLAHE: reference and Numba CPU against OpenCV (cv2.createCLAHE(...).apply), CUDA (simulator) against
the reference."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt import kernels
from gixdrt.kernels.reference import contrast as ref
from gixdrt.kernels.registry import cuda_unavailable_reason

cv2 = pytest.importorskip("cv2")

# Allowed deviation per comparison: (max |difference| in grey levels, max fraction of pixels that may
# differ, reason). Every entry is 0: the implementations follow OpenCV's scalar order of float32
# operations (x·(1/tw) − 0.5, (L11·xa1 + L12·xa)·ya1 + (L21·xa1 + L22·xa)·ya, rint half-even), so no
# SIMD/FMA one-level flips were observed against OpenCV 5.0 (x86-64, AVX-512) on any tested image.
TOLERANCE = {
    ("reference", "cv2"): (0, 0.0, "the reference is written to OpenCV's exact integer/float32 operation order"),
    ("cpu", "cv2"): (0, 0.0, "same operations as the reference, Numba without fastmath (no FMA contraction)"),
    ("cuda", "reference"): (0, 0.0, "float32 ops through __f*_rn intrinsics (no FMA contraction) on a GPU"),
}

DTYPES = [np.uint8, np.uint16]
# (H, W): divisible; non-divisible both ways; one dimension divisible by 8 only (OpenCV still pads
# the other one by a full tile count: the "both directions" quirk); small.
SIZES = [(64, 64), (37, 53), (100, 130), (64, 37), (21, 64)]
GRIDS = [(1, 1), (2, 2), (8, 8), (3, 5)]
CLIPS = [0.0, 1.0, 2.0, 40.0, 2000.0]


def _images(dtype, shape, seed=0):
    """Random, smooth gradient + spikes (clipping matters), narrow-range (heavy clipping)."""
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max
    h, w = shape
    yield "random", rng.integers(0, top + 1, shape).astype(dtype)
    y, x = np.mgrid[0:h, 0:w]
    smooth = ((np.sin(x / 7.0) + np.cos(y / 11.0) + 2.0) / 4.0 * 0.3 + 0.2) * top
    smooth = smooth.astype(dtype)
    smooth.flat[rng.integers(0, h * w, 5)] = top
    yield "smooth+spikes", smooth
    yield "narrow", rng.integers(top // 3, top // 3 + 10, shape).astype(dtype)


def _assert_close(got, want, key, what):
    max_abs, max_frac, reason = TOLERANCE[key]
    assert got.dtype == want.dtype and got.shape == want.shape, what
    d = np.abs(got.astype(np.int64) - want.astype(np.int64))
    n_bad = int(np.count_nonzero(d))
    assert d.max(initial=0) <= max_abs and n_bad <= max_frac * d.size, (
        f"{what}: {n_bad} px differ (max {d.max()}), allowed {max_abs} on {max_frac:.0%} ({reason})"
    )


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0]}x{g[1]}")
@pytest.mark.parametrize("shape", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_clahe_matches_opencv(backend, dtype, shape, grid):
    for name, img in _images(dtype, shape):
        for clip in CLIPS:
            want = cv2.createCLAHE(clipLimit=clip, tileGridSize=grid).apply(img)
            got = kernels.clahe(img, clip, grid, impl=backend)
            _assert_close(got, want, (backend, "cv2"), f"{backend} {name} clip={clip} grid={grid}")


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_clahe_large_uint16(backend):
    # a realistic size: 16-bit, several tiles, non-divisible
    rng = np.random.default_rng(7)
    img = (rng.random((301, 517)) ** 4 * 5001).astype(np.uint16)
    for clip, grid in [(2.0, (8, 8)), (40.0, (7, 3)), (2000.0, (1, 1))]:
        want = cv2.createCLAHE(clip, grid).apply(img)
        _assert_close(kernels.clahe(img, clip, grid, impl=backend), want, (backend, "cv2"), f"{clip} {grid}")


def test_one_tile_output_is_the_lut():
    # With a 1x1 tile the interpolation reads four times the same LUT and rounds back to it exactly
    # (what the fast contrast path relies on).
    rng = np.random.default_rng(3)
    img = (rng.random((123, 77)) ** 3 * 5001).astype(np.uint16)
    for clip in CLIPS:
        lut = ref.clahe_luts(img, clip, 1, 1, 65536)[0, 0]
        np.testing.assert_array_equal(ref.clahe(img, clip, (1, 1)), lut[img])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_clahe_huge_clip_limit_means_no_clipping(backend):
    # OpenCV converts clipLimit*tileArea/bins to int: beyond INT_MAX that overflows (on x86-64 cv2 then
    # clips at 1, a platform-dependent accident). gixdrt treats such a limit as "no clipping".
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (40, 48)).astype(np.uint8)
    np.testing.assert_array_equal(
        kernels.clahe(img, 1e12, (2, 2), impl=backend), cv2.createCLAHE(0.0, (2, 2)).apply(img)
    )


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_clahe_out_and_errors(backend):
    img = np.random.default_rng(5).integers(0, 256, (30, 40)).astype(np.uint8)
    out = np.empty_like(img)
    res = kernels.clahe(img, 2.0, (2, 2), out=out, impl=backend)
    assert res is out
    np.testing.assert_array_equal(out, cv2.createCLAHE(2.0, (2, 2)).apply(img))
    with pytest.raises(TypeError, match="dtype"):
        kernels.clahe(img, 2.0, (2, 2), out=np.empty(img.shape, np.uint16), impl=backend)
    with pytest.raises(ValueError, match="shape"):
        kernels.clahe(img, 2.0, (2, 2), out=np.empty((30, 41), np.uint8), impl=backend)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        kernels.clahe(img.astype(np.float32), 2.0, (2, 2), impl=backend)
    with pytest.raises(TypeError, match="uint8 or uint16"):
        kernels.clahe(img.astype(np.int16), 2.0, (2, 2), impl=backend)
    with pytest.raises(ValueError, match="2-D"):
        kernels.clahe(img[None], 2.0, (2, 2), impl=backend)
    with pytest.raises(ValueError, match="tile_grid"):
        kernels.clahe(img, 2.0, (0, 2), impl=backend)


# ------------------------------------------------------------------------------------------------
# CUDA (simulator without a GPU: every thread is a Python thread, so images and tile counts are tiny)
# ------------------------------------------------------------------------------------------------
CUDA_CASES = [
    (np.uint8, (37, 53), 2.0, (2, 2), "random"),
    (np.uint8, (20, 30), 40.0, (3, 5), "smooth+spikes"),
    (np.uint8, (16, 24), 0.0, (1, 1), "narrow"),
    (np.uint16, (16, 24), 2.0, (1, 1), "smooth+spikes"),  # 65,536-bin LUT: slow in the simulator
]


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype,shape,clip,grid,kind", CUDA_CASES)
def test_clahe_cuda_matches_reference(dtype, shape, clip, grid, kind):
    if cuda_unavailable_reason():
        pytest.skip(cuda_unavailable_reason())
    from numba import cuda

    from gixdrt.kernels.cuda import contrast as gpu

    img = dict(_images(dtype, shape, seed=11))[kind]
    stream = cuda.stream()
    d_out = cuda.device_array(shape, dtype=dtype)
    res = gpu.clahe(cuda.to_device(img, stream=stream), clip, grid, out=d_out, stream=stream)
    assert res is d_out
    got = res.copy_to_host(stream=stream)
    stream.synchronize()
    _assert_close(got, ref.clahe(img, clip, grid), ("cuda", "reference"), f"{kind} clip={clip} grid={grid}")


@pytest.mark.cudasim
def test_clahe_cuda_rejects_host_arrays_and_bad_out():
    if cuda_unavailable_reason():
        pytest.skip(cuda_unavailable_reason())
    from numba import cuda

    from gixdrt.kernels.cuda import contrast as gpu

    img = np.zeros((8, 8), np.uint8)
    with pytest.raises(TypeError, match="device array"):
        gpu.clahe(img, 2.0, (1, 1))
    with pytest.raises(TypeError, match="dtype"):
        gpu.clahe(cuda.to_device(img), 2.0, (1, 1), out=cuda.device_array((8, 8), np.uint16))
