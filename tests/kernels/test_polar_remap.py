"""polar_remap: the three backends against the NumPy reference, OpenCV, and the input checks."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

import gixdrt.kernels as K
from gixdrt.errors import DataWarning, FrameError
from gixdrt.geometry import Geometry, polar_map
from gixdrt.kernels import registry

# The published geometry shrunk 16× (pixel 3.2 mm, 128 × 64 detector): small enough for the CUDA
# simulator, and it has undefined positions, positions off the detector and positions on it.
SMALL = Geometry(
    size_x=128, size_y=64, pixel_size=3.2, distance=809.0, wavelength=0.6888, incidence_angle=0.5,
    y0=34.0, z0=14.0, q_xy_max=2.7, q_z_max=2.7, n_phi=32, n_q=64, flip_y=True,
)
H, W = SMALL.frame_shape


@pytest.fixture(scope="module")
def pmap():
    pm = polar_map(SMALL)
    # the geometry exercises every case of the map
    assert pm.inside.any() and (~pm.defined).any() and (pm.defined & ~pm.inside).any()
    return pm


def _rng(seed=0):
    return np.random.default_rng(seed)


def _run(backend, frames, pm, **kw):
    """polar_remap through ``backend``; the cuda backend gets device arrays and returns host results."""
    if backend == "cuda":
        from numba import cuda

        out = K.polar_remap(cuda.to_device(np.ascontiguousarray(frames)), pm, impl="cuda", **kw)
        assert registry.is_device_array(out)
        return out.copy_to_host()
    return K.polar_remap(frames, pm, impl=backend, **kw)


BACKENDS = [
    "reference",
    "cpu",
    pytest.param("cuda", marks=pytest.mark.cudasim),
]


def _frames(kind):
    rng = _rng(1)
    if kind == "float32":
        return (rng.standard_normal((H, W)) * 100).astype(np.float32)
    if kind == "uint16-stack":
        return rng.integers(0, 4000, (3, H, W), dtype=np.uint16)
    if kind == "float64-stack":
        return rng.standard_normal((2, H, W)) * 1e3
    raise AssertionError(kind)


def _reference_by_hand(frames, pm):
    """The reference's specification, evaluated independently with float64 arithmetic."""
    stack = np.asarray(frames, dtype=np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
    f = np.nan_to_num(stack, nan=0.0, posinf=0.0, neginf=0.0).sum(axis=0)
    padded = np.zeros((H + 4, W + 4))
    padded[2:-2, 2:-2] = f  # index −2 … W+1 lands inside the padding
    y, x = pm.y0.astype(int) + 2, pm.x0.astype(int) + 2
    fy, fx = pm.fy.astype(np.float64), pm.fx.astype(np.float64)
    top = padded[y, x] * (1 - fx) + padded[y, x + 1] * fx
    bottom = padded[y + 1, x] * (1 - fx) + padded[y + 1, x + 1] * fx
    return top * (1 - fy) + bottom * fy


@pytest.mark.parametrize("kind", ["float32", "uint16-stack", "float64-stack"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_backend_matches_reference(backend, kind, pmap):
    frames = _frames(kind)
    ref = K.polar_remap(frames, pmap, impl="reference")
    assert ref.dtype == np.float32 and ref.shape == pmap.shape
    # the reference itself against its specification written out in float64
    expect = _reference_by_hand(frames, pmap)
    scale = np.abs(expect).max()
    assert np.abs(ref - expect).max() <= 1e-5 * scale
    out = _run(backend, frames, pmap)
    assert out.dtype == np.float32 and out.shape == pmap.shape
    # cpu and cuda follow the reference's float32 arithmetic operation by operation: bit-exact
    # on the CPU; the CUDA compiler may contract a·b + c into an FMA, so allow float32 rounding there.
    if backend == "cuda":
        np.testing.assert_allclose(out, ref, rtol=0, atol=4 * np.finfo(np.float32).eps * scale)
    else:
        assert np.array_equal(out, ref)


def test_resolve_none_picks_cpu_for_numpy(pmap):
    assert registry.resolve("polar_remap", None, np.zeros((H, W), np.float32))[0] == "cpu"
    frame = _frames("float32")
    np.testing.assert_array_equal(K.polar_remap(frame, pmap), K.polar_remap(frame, pmap, impl="cpu"))


@pytest.mark.cudasim
def test_resolve_none_picks_cuda_for_device_array(pmap):
    from numba import cuda

    frame = _frames("float32")
    dev = cuda.to_device(frame)
    assert registry.resolve("polar_remap", None, dev)[0] == "cuda"
    out = K.polar_remap(dev, pmap)
    assert registry.is_device_array(out)
    np.testing.assert_allclose(out.copy_to_host(), K.polar_remap(frame, pmap, impl="reference"), atol=1e-3)


def _cv2(frame, pm):
    mx, my = pm.opencv_maps()
    return cv2.remap(frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_opencv_random(backend, seed, pmap):
    frame = (_rng(seed).random((H, W)) * 1000 - 200).astype(np.float32)
    ours = K.polar_remap(frame, pmap, impl=backend)
    theirs = _cv2(frame, pmap)
    assert np.all(np.isfinite(theirs))
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(frame).max()


@pytest.mark.published
def test_matches_opencv_published_frame():
    from gixdrt.geometry import load_config
    from gixdrt.io import fetch_published, read_frame

    assets = fetch_published(quiet=True)
    g = load_config(assets.config).geometry
    frame = read_frame(assets.frame)
    assert frame.shape == g.frame_shape
    pm = polar_map(g)
    ours = K.polar_remap(frame, pm, impl="cpu")
    frame32 = frame.astype(np.float32)
    theirs = _cv2(frame32, pm)
    assert np.abs(ours - theirs).max() <= 1e-4 * np.abs(frame32).max()
    assert np.array_equal(ours, K.polar_remap(frame, pm, impl="reference"))
    # published-detector.md §4: polar image min −70.2231, max 1048.21, mean 19.2641
    assert abs(float(ours.min()) - (-70.2231)) < 2e-3
    assert abs(float(ours.max()) - 1048.21) < 2e-2
    assert abs(float(ours.mean(dtype=np.float64)) - 19.2641) < 1e-3


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint16, np.uint32, np.int32])
def test_dtypes_equal_float32_cast(backend, dtype, pmap):
    rng = _rng(3)
    if np.dtype(dtype).kind == "f":
        frame = (rng.standard_normal((H, W)) * 300).astype(dtype)
    elif np.dtype(dtype).kind == "u":
        frame = rng.integers(0, np.iinfo(np.uint16).max, (H, W)).astype(dtype)
    else:
        frame = rng.integers(-50_000, 50_000, (H, W)).astype(dtype)
    got = K.polar_remap(frame, pmap, impl=backend)
    want = K.polar_remap(frame.astype(np.float32), pmap, impl=backend)
    assert np.array_equal(got, want)
    assert np.abs(got).max() > 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_stack_equals_remap_of_sum(backend, pmap):
    stack = (_rng(4).random((4, H, W)) * 500).astype(np.float32)
    summed = stack[0].copy()
    for k in range(1, len(stack)):
        summed += stack[k]  # float32, in frame order, as the specification sums
    got = _run(backend, stack, pmap)
    want = K.polar_remap(summed, pmap, impl="reference")
    # The sum is formed per neighbour rather than per frame first; both are float32 sums in frame
    # order, so they agree to float32 rounding of the result (4 ulp of the largest value).
    tol = 4 * np.finfo(np.float32).eps * np.abs(want).max()
    np.testing.assert_allclose(got, want, rtol=0, atol=tol)


def _poisoned_frame(pm):
    frame = (_rng(5).random((H, W)) * 100 + 1).astype(np.float32)
    ins = np.argwhere(pm.inside & (pm.y0 >= 0) & (pm.x0 >= 0))
    assert len(ins) > 10
    for n, (i, j) in enumerate(ins[:: max(1, len(ins) // 10)]):
        frame[pm.y0[i, j], pm.x0[i, j]] = (np.nan, np.inf, -np.inf)[n % 3]
    frame[10, :] = np.nan  # a whole bad detector row
    return frame


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nonfinite_pixels_warn_and_count_zero(backend, pmap):
    frame = _poisoned_frame(pmap)
    with pytest.warns(DataWarning, match="non-finite"):
        out = K.polar_remap(frame, pmap, impl=backend)
    assert np.all(np.isfinite(out))
    clean = np.where(np.isfinite(frame), frame, np.float32(0))
    assert np.array_equal(out, K.polar_remap(clean, pmap, impl="reference"))


@pytest.mark.cudasim
def test_nonfinite_pixels_cuda(pmap):
    frame = _poisoned_frame(pmap)
    out = _run("cuda", frame, pmap)
    assert np.all(np.isfinite(out))
    clean = np.where(np.isfinite(frame), frame, np.float32(0))
    np.testing.assert_allclose(out, K.polar_remap(clean, pmap, impl="reference"), rtol=0, atol=1e-4)


def test_no_warning_for_finite_frames(pmap, recwarn):
    K.polar_remap(_frames("float32"), pmap, impl="reference")
    K.polar_remap(_frames("float32"), pmap, impl="cpu")
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_undefined_positions_are_zero(backend, pmap):
    frame = np.full((H, W), 7.0, np.float32)
    out = _run(backend, frame, pmap)
    assert np.all(out[~pmap.defined] == 0.0)
    assert np.all(out[~pmap.inside] == 0.0)
    # fully interior samples of a constant frame give the constant
    interior = pmap.inside & (pmap.y0 >= 0) & (pmap.y0 < H - 1) & (pmap.x0 >= 0) & (pmap.x0 < W - 1)
    assert interior.any()
    np.testing.assert_allclose(out[interior], 7.0, rtol=1e-6)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("shape", [(H, W + 1), (W, H), (2, H + 1, W), (H * W,), (1, 1, H, W)])
def test_wrong_shape(backend, shape, pmap):
    with pytest.raises(FrameError) as info:
        K.polar_remap(np.zeros(shape, np.float32), pmap, impl=backend)
    msg = str(info.value)
    assert str(shape) in msg and f"{H}×{W}" in msg, msg


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_unsupported_dtype(backend, dtype, pmap):
    with pytest.raises(FrameError, match="dtype"):
        K.polar_remap(np.zeros((H, W), dtype), pmap, impl=backend)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_out_buffer(backend, pmap):
    frame = _frames("float32")
    buf = np.full(pmap.shape, np.nan, np.float32)
    got = K.polar_remap(frame, pmap, out=buf, impl=backend)
    assert got is buf
    assert np.array_equal(buf, K.polar_remap(frame, pmap, impl="reference"))
    for bad in (
        np.empty(pmap.shape, np.float64),
        np.empty((pmap.shape[0], pmap.shape[1] + 1), np.float32),
        np.empty((pmap.shape[1], pmap.shape[0]), np.float32),
        np.empty((pmap.shape[0], 2 * pmap.shape[1]), np.float32)[:, ::2],  # not contiguous
    ):
        with pytest.raises(ValueError, match="out"):
            K.polar_remap(frame, pmap, out=bad, impl=backend)


@pytest.mark.cudasim
def test_out_buffer_cuda(pmap):
    from numba import cuda

    frame = _frames("float32")
    buf = cuda.to_device(np.full(pmap.shape, np.nan, np.float32))
    got = K.polar_remap(cuda.to_device(frame), pmap, out=buf, impl="cuda")
    np.testing.assert_allclose(buf.copy_to_host(), K.polar_remap(frame, pmap, impl="reference"), atol=1e-3)
    assert got.copy_to_host().tobytes() == buf.copy_to_host().tobytes()
    with pytest.raises(ValueError, match="out"):
        K.polar_remap(cuda.to_device(frame), pmap, out=cuda.to_device(np.empty((3, 3), np.float32)), impl="cuda")


def test_backend_errors(pmap):
    frame = _frames("float32")
    with pytest.raises(TypeError, match="device"):
        K.polar_remap(frame, pmap, impl="cuda")
    with pytest.raises(ValueError, match="unknown kernel implementation .opencl."):
        K.polar_remap(frame, pmap, impl="opencl")


def test_unavailable_backend(monkeypatch, pmap):
    entry = registry._REGISTRY["polar_remap"]["cuda"]
    monkeypatch.setattr(entry, "probe", lambda: "no CUDA GPU in this test")
    assert registry.available("polar_remap")["cuda"] == "no CUDA GPU in this test"
    with pytest.raises(registry.BackendUnavailableError, match="no CUDA GPU in this test"):
        K.polar_remap(_frames("float32"), pmap, impl="cuda")
    # the host backends are untouched
    assert registry.available("polar_remap")["reference"] is None


def test_numba_missing_falls_back_to_reference(monkeypatch, pmap):
    monkeypatch.setattr(registry._REGISTRY["polar_remap"]["cpu"], "probe", lambda: "numba is not importable")
    name, fn = registry.resolve("polar_remap", None, np.zeros((H, W), np.float32))
    assert name == "reference"
    with pytest.raises(registry.BackendUnavailableError, match="numba"):
        K.polar_remap(_frames("float32"), pmap, impl="cpu")
    frame = _frames("float32")
    assert np.array_equal(K.polar_remap(frame, pmap), K.polar_remap(frame, pmap, impl="reference"))
