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
def test_nonfinite_pixels_are_masked_without_warning(backend, pmap, recwarn):
    # NaN/±inf pixels are masked (no longer "counted as 0" with a warning): the same result as the frame with
    # ordinary values there and those pixels masked by the user
    frame = _poisoned_frame(pmap)
    bad = ~np.isfinite(frame)
    codes = np.full(pmap.shape, 9, np.uint8)
    out = K.polar_remap(frame, pmap, masked=codes, impl=backend)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]
    assert np.all(np.isfinite(out))
    clean = np.where(bad, np.float32(55.0), frame)
    want_codes = np.full(pmap.shape, 9, np.uint8)
    want = K.polar_remap(clean, pmap, mask=bad, masked=want_codes, impl="reference")
    assert np.array_equal(out, want) and np.array_equal(codes, want_codes)
    assert set(np.unique(codes)) <= {0, 1, 2} and (codes == 1).any()
    np.testing.assert_array_equal(codes != 0, _touches(pmap, bad))


@pytest.mark.cudasim
def test_nonfinite_pixels_cuda(pmap):
    frame = _poisoned_frame(pmap)
    bad = ~np.isfinite(frame)
    out, codes = _run_masked("cuda", frame, pmap)
    assert np.all(np.isfinite(out))
    want_codes = np.zeros(pmap.shape, np.uint8)
    want = K.polar_remap(np.where(bad, np.float32(55.0), frame), pmap, mask=bad, masked=want_codes, impl="reference")
    _assert_cuda_close(out, want)
    np.testing.assert_array_equal(codes, want_codes)


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


# ---- masked pixels ------------------------------------------------------------------------------------------

CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))


def _run_masked(backend, frames, pm, *, mask=None, saturation=None):
    """(out, codes) of polar_remap through ``backend`` with a ``masked`` buffer; cuda gets device arrays."""
    if backend == "cuda":
        from numba import cuda

        codes = cuda.to_device(np.full(pm.shape, 7, np.uint8))
        dmask = None if mask is None else cuda.to_device(np.ascontiguousarray(mask))
        out = K.polar_remap(cuda.to_device(np.ascontiguousarray(frames)), pm, mask=dmask, saturation=saturation,
                            masked=codes, impl="cuda")
        assert registry.is_device_array(out)
        return out.copy_to_host(), codes.copy_to_host()
    codes = np.full(pm.shape, 7, np.uint8)  # every element must be written
    out = K.polar_remap(frames, pm, mask=mask, saturation=saturation, masked=codes, impl=backend)
    return out, codes


def _assert_cuda_close(got, want):
    """The cuda path against the host reference. Under the simulator the kernels evaluate the same float32
    operations in the same order (NumPy scalars): bit for bit. On a GPU the compiler may contract a·b + c into a
    fused multiply-add, so allow float32 rounding (rtol 1e-6, plus a few ulp of the largest value for the
    cancellations of the interpolation)."""
    if registry.cudasim():
        np.testing.assert_array_equal(got, want)
    else:
        scale = float(np.abs(want).max()) or 1.0
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=4 * np.finfo(np.float32).eps * scale)


def _old_reference(frames, pm):
    """The remap before masked pixels, kept here as it was: float32 sums over the frames in order, bilinear
    interpolation with a constant border 0 (its non-finite handling left out: only finite frames without flag
    values are given to it)."""
    stack = np.asarray(frames)
    stack = stack[None] if stack.ndim == 2 else stack
    n, h, w = stack.shape
    corners = []
    for dy, dx in CORNERS:
        yy = pm.y0.astype(np.int64) + dy
        xx = pm.x0.astype(np.int64) + dx
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        flat = np.where(ok, yy * w + xx, 0)
        acc = np.zeros(pm.shape, np.float32)
        for k in range(n):
            v = stack[k].reshape(-1)[flat].astype(np.float32)
            acc += np.where(ok, v, np.float32(0.0))
        corners.append(acc)
    v00, v01, v10, v11 = corners
    one = np.float32(1.0)
    fx, fy = pm.fx, pm.fy
    top = v00 * (one - fx) + v01 * fx
    bottom = v10 * (one - fx) + v11 * fx
    return top * (one - fy) + bottom * fy


def _touches(pm, bad):
    """bool[n_phi, n_q]: polar pixels with an on-frame neighbour in ``bad`` [H, W]."""
    hit = np.zeros(pm.shape, bool)
    for dy, dx in CORNERS:
        yy, xx = pm.y0.astype(int) + dy, pm.x0.astype(int) + dx
        on = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        hit |= on & bad[np.clip(yy, 0, H - 1), np.clip(xx, 0, W - 1)]
    return hit


def _masked_by_hand(frames, pm, bad):
    """The masked remap's specification evaluated independently, pixel by pixel in float64: the weighted sum of
    the unmasked on-frame neighbours, scaled by (on-frame weight) / (unmasked on-frame weight) where a neighbour
    is masked. bad: bool[H, W], the masked pixels, derived by each test from how it built the frame.
    Returns (float64 values, uint8 codes)."""
    stack = np.asarray(frames, np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
    f = np.where(bad, 0.0, np.where(bad[None], 0.0, stack).sum(axis=0))
    out = np.zeros(pm.shape)
    codes = np.zeros(pm.shape, np.uint8)
    for i, j in np.ndindex(pm.shape):
        y, x = int(pm.y0[i, j]), int(pm.x0[i, j])
        fy, fx = float(pm.fy[i, j]), float(pm.fx[i, j])
        total = w_in = w_ok = 0.0
        any_bad = False
        for (dy, dx), wt in zip(CORNERS, ((1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy)):
            yy, xx = y + dy, x + dx
            if not (0 <= yy < H and 0 <= xx < W):
                continue
            w_in += wt
            if bad[yy, xx]:
                any_bad = True
                continue
            w_ok += wt
            total += wt * f[yy, xx]
        if not any_bad:
            out[i, j] = total
        elif w_ok > 0:
            out[i, j], codes[i, j] = total * w_in / w_ok, 1
        else:
            codes[i, j] = 2
    return out, codes


def _flag(dtype):
    """The flag value of ``dtype`` as the tests know it: 2^bits − 1 (unsigned), the largest finite float."""
    dt = np.dtype(dtype)
    if dt.kind == "u":
        return (1 << (8 * dt.itemsize)) - 1
    return {4: 3.4028235e38, 8: 1.7976931348623157e308}[dt.itemsize]


ALL_DTYPES = [np.uint8, np.uint16, np.uint32, np.int16, np.int32, np.float32, np.float64]


def _ordinary(dtype, shape, seed=6):
    """Finite values without the dtype's flag value: [1, 200) (uint8: [1, 200] < 255)."""
    rng = _rng(seed)
    if np.dtype(dtype).kind == "f":
        return (rng.random(shape) * 199 + 1).astype(dtype)
    return rng.integers(1, 200, shape).astype(dtype)


@pytest.mark.parametrize("dtype", ALL_DTYPES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unmasked_frames_give_the_old_result(backend, dtype, pmap):
    # finite frames without flag values, no mask and no saturation: the remap of before, bit for bit
    frames = _ordinary(dtype, (2, H, W))
    if np.dtype(dtype).kind == "f" or np.dtype(dtype).kind == "i":
        frames[0, ::3] = -frames[0, ::3]  # negative values too where the dtype has them
    want = _old_reference(frames, pmap)
    assert np.abs(want).max() > 0
    out, codes = _run_masked(backend, frames, pmap)
    assert not codes.any()
    if backend == "cuda":
        _assert_cuda_close(out, want)
    else:
        assert np.array_equal(out, want)
    # the public entry without ``masked`` (and one frame, the cpu's fast path) gives the same
    if backend != "cuda":
        assert np.array_equal(K.polar_remap(frames[1], pmap, impl=backend), _old_reference(frames[1], pmap))


def _group_with_flags(dtype, pm):
    """A G = 3 group of ``dtype`` frames where some pixels are flagged in only one frame of the group, plus a user
    mask and a saturation value (float frames also carry NaN and ±inf). Returns (frames, mask, saturation, bad):
    bad is the set of pixels the specification masks, built here from what was put where."""
    rng = _rng(7)
    frames = _ordinary(dtype, (3, H, W))
    bad = np.zeros((H, W), bool)
    flat = rng.permutation(H * W)
    picks = iter(np.array_split(flat[:600], 6))
    if np.dtype(dtype).kind == "i":
        frames[1].reshape(-1)[next(picks)] = np.iinfo(dtype).min  # signed integers have no flag value
    else:
        flag = _flag(dtype)
        for k, sign in ((0, 1), (2, -1)) if np.dtype(dtype).kind == "f" else ((1, 1),):
            where = next(picks)
            frames[k].reshape(-1)[where] = sign * flag  # the flag value in one frame of the group
            bad.reshape(-1)[where] = True
    if np.dtype(dtype).kind == "f":
        for k, value in ((1, np.nan), (0, np.inf), (2, -np.inf)):
            where = next(picks)
            frames[k].reshape(-1)[where] = value
            bad.reshape(-1)[where] = True
    where = next(picks)
    frames[2].reshape(-1)[where] = 250 if np.dtype(dtype) == np.uint8 else 5000  # saturated in one frame
    bad.reshape(-1)[where] = True
    saturation = 240.0 if np.dtype(dtype) == np.uint8 else 4000.0
    mask = np.zeros((H, W), bool)
    mask.reshape(-1)[flat[600:700]] = True
    mask[20:24, 30:50] = True  # a module gap
    bad |= mask
    return frames, mask, saturation, bad


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_reference_masks_by_hand(dtype, pmap):
    frames, mask, saturation, bad = _group_with_flags(dtype, pmap)
    codes = np.zeros(pmap.shape, np.uint8)
    with np.errstate(invalid="ignore", over="ignore"):
        out = K.polar_remap(frames, pmap, mask=mask, saturation=saturation, masked=codes, impl="reference")
        want, want_codes = _masked_by_hand(frames, pmap, bad)
    np.testing.assert_array_equal(codes, want_codes)
    assert (codes == 0).any() and (codes == 1).any() and (codes == 2).any()
    assert np.all(np.isfinite(out)) and np.all(out[codes == 2] == 0)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)


def _cuda(*values):
    return pytest.param("cuda", *values, marks=pytest.mark.cudasim)


# every dtype with both mask dtypes on the cpu; on cuda (the simulator is slow) every dtype with a uint8 mask
# and two with a bool device mask
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the simulator casts ±max to f32
@pytest.mark.parametrize(
    ("backend", "dtype", "mask_dtype"),
    [("cpu", dt, m) for dt in ALL_DTYPES for m in (np.bool_, np.uint8)]
    + [_cuda(dt, np.uint8) for dt in ALL_DTYPES]
    + [_cuda(np.uint16, np.bool_), _cuda(np.float32, np.bool_)],
)
def test_backends_match_reference_with_masks(backend, dtype, mask_dtype, pmap):
    frames, mask, saturation, _ = _group_with_flags(dtype, pmap)
    mask = mask.astype(mask_dtype) * (3 if mask_dtype is np.uint8 else True)  # nonzero, not only 1, masks
    want_codes = np.zeros(pmap.shape, np.uint8)
    want = K.polar_remap(frames, pmap, mask=mask, saturation=saturation, masked=want_codes, impl="reference")
    out, codes = _run_masked(backend, frames, pmap, mask=mask, saturation=saturation)
    np.testing.assert_array_equal(codes, want_codes)
    if backend == "cuda":
        _assert_cuda_close(out, want)
    else:
        assert np.array_equal(out, want)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@pytest.mark.parametrize(
    ("backend", "dtype"),
    [(b, dt) for b in ("reference", "cpu") for dt in ALL_DTYPES]
    + [_cuda(dt) for dt in (np.uint16, np.uint32, np.int32, np.float64)],  # the simulator is slow
)
def test_flag_values_are_masked_like_a_user_mask(backend, dtype, pmap):
    # a pixel holding the dtype's flag value in one frame of a group gives what the user mask gives there
    frames = _ordinary(dtype, (3, H, W), seed=8)
    where = np.zeros((H, W), bool)
    where[5:9, 10:40] = True
    where.reshape(-1)[_rng(9).permutation(H * W)[:150]] = True
    flagged = frames.copy()
    kind = np.dtype(dtype).kind
    if kind == "i":
        flagged[1][where] = np.iinfo(dtype).max  # signed integers have no flag value: nothing is masked
        out, codes = _run_masked(backend, flagged, pmap)
        assert not codes.any()
        want = K.polar_remap(flagged, pmap, impl="reference")
        _assert_cuda_close(out, want) if backend == "cuda" else np.testing.assert_array_equal(out, want)
        return
    flagged[1][where] = _flag(dtype)
    if kind == "f":
        flagged[2][where & (np.arange(W) % 2 == 0)] = -_flag(dtype)
    out, codes = _run_masked(backend, flagged, pmap)
    want, want_codes = _run_masked("reference", frames, pmap, mask=where)
    np.testing.assert_array_equal(codes, want_codes)
    assert (codes == 1).any()
    _assert_cuda_close(out, want) if backend == "cuda" else np.testing.assert_array_equal(out, want)
    # one below the flag value is an ordinary value
    if kind == "u":
        below = frames.copy()
        below[1][where] = _flag(dtype) - 1
        out, codes = _run_masked(backend, below, pmap)
        assert not codes.any()


@pytest.mark.parametrize("backend", BACKENDS)
def test_saturation(backend, pmap):
    frames = _ordinary(np.float32, (2, H, W), seed=10)
    frames[1, 30:34, 60:90] = 1000.0  # saturated in the second frame only
    frames[0, 40, 10:20] = 999.0  # just below
    out, codes = _run_masked(backend, frames, pmap, saturation=1000)
    sat = np.zeros((H, W), bool)
    sat[30:34, 60:90] = True
    want, want_codes = _run_masked("reference", frames, pmap, mask=sat)
    np.testing.assert_array_equal(codes, want_codes)
    assert (codes != 0).any()
    _assert_cuda_close(out, want) if backend == "cuda" else np.testing.assert_array_equal(out, want)


def _interior_pixel(pm, avoid=None):
    """(i, j) of a polar pixel whose four neighbours are on the frame, with both fractions well inside (0, 1)."""
    ok = (pm.y0 >= 0) & (pm.y0 < H - 1) & (pm.x0 >= 0) & (pm.x0 < W - 1)
    ok &= (pm.fx > 0.2) & (pm.fx < 0.8) & (pm.fy > 0.2) & (pm.fy < 0.8)
    cand = np.argwhere(ok)
    assert len(cand)
    return tuple(cand[len(cand) // 2])


@pytest.mark.parametrize("masked_corner", range(4))
@pytest.mark.parametrize("backend", BACKENDS)
def test_one_masked_neighbour_by_hand(backend, masked_corner, pmap):
    frame = _ordinary(np.float32, (H, W), seed=11)
    i, j = _interior_pixel(pmap)
    y, x = int(pmap.y0[i, j]), int(pmap.x0[i, j])
    fy, fx = float(pmap.fy[i, j]), float(pmap.fx[i, j])
    weights = [(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy]
    values = [float(frame[y + dy, x + dx]) for dy, dx in CORNERS]
    dy, dx = CORNERS[masked_corner]
    mask = np.zeros((H, W), np.uint8)
    mask[y + dy, x + dx] = 1
    # the weighted mean of the other three neighbours (their weights sum to 1 − w_masked)
    keep = [k for k in range(4) if k != masked_corner]
    expect = sum(weights[k] * values[k] for k in keep) / sum(weights[k] for k in keep)
    out, codes = _run_masked(backend, frame, pmap, mask=mask)
    assert codes[i, j] == 1
    assert abs(float(out[i, j]) - expect) <= 1e-5 * abs(expect)
    # masking a pixel changes exactly the polar pixels that sample it; the others keep the unmasked result
    np.testing.assert_array_equal(codes != 0, _touches(pmap, mask != 0))
    plain = _old_reference(frame, pmap)
    if backend == "cuda":
        _assert_cuda_close(np.where(codes == 0, out, 0), np.where(codes == 0, plain, 0))
    else:
        assert np.array_equal(out[codes == 0], plain[codes == 0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_all_on_frame_neighbours_masked_is_a_hole(backend, pmap):
    frame = _ordinary(np.float32, (H, W), seed=12)
    i, j = _interior_pixel(pmap)
    y, x = int(pmap.y0[i, j]), int(pmap.x0[i, j])
    mask = np.zeros((H, W), bool)
    mask[y:y + 2, x:x + 2] = True
    out, codes = _run_masked(backend, frame, pmap, mask=mask)
    assert codes[i, j] == 2 and out[i, j] == 0.0
    # an edge pixel with two neighbours off the frame and both on-frame ones masked is a hole too
    edge = np.argwhere(pmap.inside & (pmap.x0 == W - 1) & (pmap.y0 >= 0) & (pmap.y0 < H - 1))
    assert len(edge)
    ei, ej = edge[0]
    mask2 = np.zeros((H, W), bool)
    mask2[pmap.y0[ei, ej]:pmap.y0[ei, ej] + 2, W - 1] = True
    out, codes = _run_masked(backend, frame, pmap, mask=mask2)
    assert codes[ei, ej] == 2 and out[ei, ej] == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_off_frame_neighbours_are_not_masked(backend, pmap):
    frame = _ordinary(np.float32, (H, W), seed=13)
    # polar pixels with some (not all) neighbours off the frame: code 0 and the old result without a mask
    partly = pmap.inside & ((pmap.y0 == -1) | (pmap.y0 == H - 1) | (pmap.x0 == -1) | (pmap.x0 == W - 1))
    assert partly.any()
    out, codes = _run_masked(backend, frame, pmap)
    assert not codes[partly].any() and not codes[~pmap.inside].any()
    plain = _old_reference(frame, pmap)
    _assert_cuda_close(out, plain) if backend == "cuda" else np.testing.assert_array_equal(out, plain)
    # one of two on-frame neighbours masked: W_in is the two on-frame weights, W_ok the other one, so the result
    # is the other value scaled by the on-frame weight (the border still fades to 0)
    cand = np.argwhere(pmap.inside & (pmap.x0 == W - 1) & (pmap.y0 >= 0) & (pmap.y0 < H - 1) & (pmap.fy > 0.1)
                       & (pmap.fy < 0.9))
    assert len(cand)
    i, j = cand[0]
    y = int(pmap.y0[i, j])
    fy, fx = float(pmap.fy[i, j]), float(pmap.fx[i, j])
    mask = np.zeros((H, W), bool)
    mask[y + 1, W - 1] = True  # (y0 + 1, x0) masked, (y0, x0) kept, (·, x0 + 1) off the frame
    out, codes = _run_masked(backend, frame, pmap, mask=mask)
    w00, w10 = (1 - fx) * (1 - fy), (1 - fx) * fy
    expect = float(frame[y, W - 1]) * w00 * (w00 + w10) / w00
    assert codes[i, j] == 1
    assert abs(float(out[i, j]) - expect) <= 1e-5 * abs(expect)


@pytest.mark.parametrize("dtype", [np.float32, np.uint32])
@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_region_values_do_not_matter(backend, dtype, pmap):
    ordinary = _ordinary(dtype, (H, W), seed=14)
    region = np.zeros((H, W), bool)
    region[12:20, 50:80] = True
    hot = ordinary.copy()
    hot[region] = 4e9  # e.g. a module that reads nonsense
    out_hot, codes_hot = _run_masked(backend, hot, pmap, mask=region)
    out_ord, codes_ord = _run_masked(backend, ordinary, pmap, mask=region)
    np.testing.assert_array_equal(codes_hot, codes_ord)
    assert np.array_equal(out_hot, out_ord)  # masked values never enter the arithmetic
    # against the unmasked ordinary frame: unchanged wherever no neighbour is masked
    out_plain, _ = _run_masked(backend, ordinary, pmap)
    changed = codes_hot != 0
    assert changed.any() and np.array_equal(changed, _touches(pmap, region))
    assert np.array_equal(out_hot[~changed], out_plain[~changed])
    assert np.abs(out_hot).max() < 1e4  # 4e9 never leaks in
    # saturation instead of the mask gives the same
    out_sat, codes_sat = _run_masked(backend, hot, pmap, saturation=1e9)
    np.testing.assert_array_equal(codes_sat, codes_hot)
    assert np.array_equal(out_sat, out_hot)


def _extreme_count(stack, pm, bad):
    """How many values beyond ±1e12 the remap samples from unmasked on-frame neighbours (per polar pixel,
    neighbour and frame), counted here from the frames."""
    per_pixel = (np.abs(stack.astype(np.float64)) > 1e12).sum(axis=0) * ~bad
    count = 0
    for dy, dx in CORNERS:
        yy, xx = pm.y0.astype(int) + dy, pm.x0.astype(int) + dx
        on = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
        count += int(per_pixel[yy[on], xx[on]].sum())
    return count


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_extreme_values_warn_with_the_count(backend, dtype, pmap, recwarn):
    stack = _ordinary(dtype, (2, H, W), seed=15)
    stack[0, 25:29, 70:90] = 5e12
    stack[1, 26:31, 80:100] = -2e13
    stack[1, 40, 5] = 1e12  # not beyond
    n = _extreme_count(stack, pmap, np.zeros((H, W), bool))
    assert n > 0
    with pytest.warns(DataWarning) as info:
        K.polar_remap(stack, pmap, impl=backend)
    messages = [str(w.message) for w in info if issubclass(w.category, DataWarning)]
    assert messages == [
        (f"polar_remap: {n} sampled pixel value(s) beyond ±1e12 and no saturation value: if they are flags or "
         "saturated pixels, set saturation_value (or a mask) so they are masked")
    ]
    recwarn.clear()
    # a saturation value switches the count off, even one that masks none of them
    K.polar_remap(stack, pmap, saturation=1e30, impl=backend)
    # masked values are not counted
    region = np.abs(stack).max(axis=0) > 1e12
    K.polar_remap(stack, pmap, mask=region, impl=backend)
    # nor are NaN and ±inf (masked) or the flag values
    flagged = _ordinary(dtype, (H, W), seed=16)
    flagged[3:6, 3:40] = np.nan
    flagged[8, :] = np.inf
    flagged[9, :] = _flag(dtype)
    K.polar_remap(flagged, pmap, impl=backend)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]
    # only part of the region masked: the rest is counted
    part = np.zeros((H, W), bool)
    part[25:27] = True
    with pytest.warns(DataWarning, match=f"polar_remap: {_extreme_count(stack, pmap, part)} sampled"):
        K.polar_remap(stack, pmap, mask=part, impl=backend)


@pytest.mark.cudasim
def test_extreme_values_counted_on_the_device(pmap):
    from numba import cuda

    from gixdrt.kernels.cuda.polar import polar_remap as remap_cuda

    stack = _ordinary(np.float32, (2, H, W), seed=15)
    stack[0, 25:29, 70:90] = 5e12
    counter = cuda.to_device(np.full(1, 5, np.int64))  # accumulates
    dev = cuda.to_device(stack)
    remap_cuda(dev, pmap, extreme=counter)
    assert int(counter.copy_to_host()[0]) == 5 + _extreme_count(stack, pmap, np.zeros((H, W), bool))
    remap_cuda(dev, pmap, saturation=1e30, extreme=counter)  # not counted with a saturation value
    assert int(counter.copy_to_host()[0]) == 5 + _extreme_count(stack, pmap, np.zeros((H, W), bool))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_mask_and_masked_errors(backend, pmap):
    frame = _frames("float32")
    for bad, what in (
        (np.zeros((H, W + 1), bool), "shape"),
        (np.zeros((W, H), np.uint8), "shape"),
        (np.zeros((1, H, W), bool), "shape"),
        (np.zeros((H, W), np.float32), "dtype"),
        (np.zeros((H, W), np.int32), "dtype"),
        ([[0] * W] * H, "NumPy"),
    ):
        with pytest.raises(ValueError, match="mask") as info:
            K.polar_remap(frame, pmap, mask=bad, impl=backend)
        assert what in str(info.value)
    for bad in (np.zeros(pmap.shape, bool), np.zeros(pmap.shape[::-1], np.uint8), np.zeros(pmap.shape, np.int8)):
        with pytest.raises(ValueError, match="masked"):
            K.polar_remap(frame, pmap, masked=bad, impl=backend)
    for sat in (float("nan"), "high"):
        with pytest.raises(ValueError, match="saturation"):
            K.polar_remap(frame, pmap, saturation=sat, impl=backend)


@pytest.mark.cudasim
def test_mask_errors_cuda(pmap):
    from numba import cuda

    dev = cuda.to_device(_frames("float32"))
    for bad in (np.zeros((H, W + 1), np.uint8), np.zeros((H, W), np.float32)):
        with pytest.raises(ValueError, match="mask"):
            K.polar_remap(dev, pmap, mask=cuda.to_device(bad), impl="cuda")
    with pytest.raises(TypeError, match="mask"):
        K.polar_remap(dev, pmap, mask=np.zeros((H, W), np.uint8), impl="cuda")  # a host mask
    with pytest.raises(ValueError, match="masked"):
        K.polar_remap(dev, pmap, masked=cuda.to_device(np.zeros((3, 3), np.uint8)), impl="cuda")
    with pytest.raises(ValueError, match="saturation"):
        K.polar_remap(dev, pmap, saturation=float("nan"), impl="cuda")


def test_bool_mask_is_viewed_not_copied():
    from gixdrt.kernels._checks import check_mask

    mask = np.zeros((H, W), bool)
    view = check_mask(mask, (H, W))
    assert view.dtype == np.uint8 and np.shares_memory(view, mask)
    u8 = np.zeros((H, W), np.uint8)
    assert check_mask(u8, (H, W)) is u8


def test_masked_is_not_written_when_none(pmap, monkeypatch):
    # without ``masked`` the cpu kernel gets no codes buffer at all
    from gixdrt.kernels.cpu import _ext as ext_module

    calls = []
    real = ext_module.ext()

    class Spy:
        def __getattr__(self, name):
            return getattr(real, name)

        def polar_remap_cpu(self, *args, **kw):
            calls.append(kw.get("masked"))
            return real.polar_remap_cpu(*args, **kw)

    monkeypatch.setattr("gixdrt.kernels.cpu.polar.ext", lambda: Spy())
    K.polar_remap(_frames("float32"), pmap, mask=np.ones((H, W), bool), impl="cpu")
    assert calls == [None]


# ---- polar_remap_batch ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_with_mask_matches_per_image(backend, pmap):
    from gixdrt.kernels.batched import polar_remap_batch

    n, g = 3, 2
    frames = _ordinary(np.float32, (n, g, H, W), seed=17)
    frames[0, 1, 10:14, 20:40] = np.nan
    frames[1, 0, 30:33, 90:100] = 5000.0  # saturated
    frames[2, 1, 50:52, :] = _flag(np.float32)
    mask = np.zeros((H, W), np.uint8)
    mask[40:44, 60:70] = 1
    if backend == "cuda":
        from numba import cuda

        d_out = cuda.to_device(np.full((n, *pmap.shape), np.nan, np.float32))
        d_codes = cuda.to_device(np.full((n, *pmap.shape), 9, np.uint8))
        polar_remap_batch(cuda.to_device(frames), pmap, mask=cuda.to_device(mask), saturation=4000.0, out=d_out,
                          masked=d_codes, impl="cuda")
        out, codes = d_out.copy_to_host(), d_codes.copy_to_host()
    else:
        out = np.full((n, *pmap.shape), np.nan, np.float32)
        codes = np.full((n, *pmap.shape), 9, np.uint8)
        res = polar_remap_batch(frames, pmap, mask=mask, saturation=4000.0, out=out, masked=codes, impl=backend)
        assert res is out
    for i in range(n):
        want_codes = np.zeros(pmap.shape, np.uint8)
        want = K.polar_remap(frames[i], pmap, mask=mask, saturation=4000.0, masked=want_codes, impl="reference")
        np.testing.assert_array_equal(codes[i], want_codes)
        assert (want_codes != 0).any()
        _assert_cuda_close(out[i], want) if backend == "cuda" else np.testing.assert_array_equal(out[i], want)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_batch_without_mask_and_one_warning(backend, pmap, recwarn):
    from gixdrt.kernels import registry as reg

    frames = _ordinary(np.float32, (2, 1, H, W), seed=18)
    out = np.empty((2, *pmap.shape), np.float32)
    fn = reg.resolve("polar_remap_batch", backend)[1]
    fn(frames, pmap, out=out)  # the registry wrapper, as plans call it (no mask, no codes)
    for i in range(2):
        assert np.array_equal(out[i], _old_reference(frames[i], pmap))
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]
    frames[:, 0, 20:24, 60:80] = 3e12
    n = sum(_extreme_count(frames[i], pmap, np.zeros((H, W), bool)) for i in range(2))
    with pytest.warns(DataWarning) as info:
        fn(frames, pmap, out=out)
    assert len([w for w in info if issubclass(w.category, DataWarning)]) == 1
    assert f"polar_remap: {n} sampled" in str(info[0].message)
    with pytest.raises(ValueError, match="masked"):
        fn(frames, pmap, out=out, masked=np.zeros((3, *pmap.shape), np.uint8))


@pytest.mark.filterwarnings("ignore::gixdrt.errors.DataWarning")  # the values kept are beyond ±1e12
@pytest.mark.parametrize("backend", BACKENDS)
def test_float64_beyond_float32_range(backend, pmap):
    # float64 values that float32 rounds to ±inf are masked (they would sum to ±inf); those it rounds to a finite
    # value, float32's largest among them, are ordinary values
    frame = _ordinary(np.float64, (H, W), seed=19)
    overflow = float.fromhex("0x1.ffffffp+127")  # 2^128 − 2^103: the smallest magnitude float32 rounds to inf
    bad = np.zeros((H, W), bool)
    for (y, x), value, masked in (
        ((10, 20), 1e39, True),
        ((12, 40), -overflow, True),
        ((30, 70), overflow, True),
        ((40, 90), np.nextafter(overflow, 0), False),  # rounds to float32's largest value
        ((45, 100), -3.4028234663852886e38, False),  # float32's largest value: not a flag of float64 frames
    ):
        frame[y, x] = value
        bad[y, x] = masked
    out, codes = _run_masked(backend, frame, pmap)
    want_codes = np.zeros(pmap.shape, np.uint8)
    with np.errstate(over="ignore"):
        want = K.polar_remap(frame, pmap, masked=want_codes, impl="reference")
    np.testing.assert_array_equal(codes != 0, _touches(pmap, bad))
    np.testing.assert_array_equal(codes, want_codes)
    if backend == "cuda":
        _assert_cuda_close(out, want)
    else:
        assert np.array_equal(out, want)
