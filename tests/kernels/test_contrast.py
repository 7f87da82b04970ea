"""The published contrast chain: reference against an independent composition with cv2, the C++ CPU kernel
and CUDA (simulator) against the reference, degenerate inputs, ``out=`` handling."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from gixdrt import kernels
from gixdrt.errors import DataWarning
from gixdrt.kernels.reference import contrast as ref
from gixdrt.kernels.registry import cuda_unavailable_reason

# Allowed deviation of each backend from the reference: (max |difference|, max fraction of pixels,
# reason). All 0: every backend evaluates the same float32 operations; log10 is the correctly
# rounded float32 value in all of them (the C++ kernel's double log10 rounded to float32 and the CUDA
# series both equal NumPy's float64 log10 rounded to float32 on every float32 in [1, 65536], checked
# exhaustively), so u and the result are bit-identical.
TOLERANCE = {
    "cpu": (0.0, 0.0, "same float32 operations, double log10 rounded once, FMA contraction off"),
    "cuda": (0.0, 0.0, "same float32 operations through __f*_rn intrinsics, same log10 series"),
}


def _images(shape, seed=0):
    rng = np.random.default_rng(seed)
    h, w = shape
    yield "uniform", rng.random(shape).astype(np.float32)
    yield "heavy-tail", (rng.random(shape) ** 6 * 1e4 - 3.0).astype(np.float32)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    peaks = 50.0 * np.exp(-((x - w / 3) ** 2 + (y - h / 2) ** 2) / 20.0) + 5.0 * np.exp(-((x - 0.7 * w) ** 2) / 8.0)
    yield "peaks+background", (peaks + 0.01 * x + rng.normal(0, 0.05, shape)).astype(np.float32)


def _independent_contrast(p, coef, clip, log):
    """The chain written out directly with cv2's CLAHE (finite, non-constant input)."""
    import cv2

    f32 = np.float32

    def n(v):
        return (v - v.min()) / (v.max() - v.min())

    a = n(p)
    if log:
        a = np.log10((f32(coef) * a + f32(1)).astype(np.float64)).astype(np.float32)
    u = (f32(coef) * n(a)).astype(np.uint16)
    c = cv2.createCLAHE(clipLimit=clip, tileGridSize=(1, 1)).apply(u).astype(np.float32)
    return n(c)


def _assert_close(got, want, backend, what):
    max_abs, max_frac, reason = TOLERANCE[backend]
    assert got.dtype == np.float32 and got.shape == want.shape, what
    d = np.abs(got.astype(np.float64) - want)
    n_bad = int(np.count_nonzero(d))
    assert d.max(initial=0) <= max_abs and n_bad <= max_frac * d.size, (
        f"{what}: {n_bad} px differ (max {d.max()}), allowed {max_abs} on {max_frac:.0%} ({reason})"
    )


@pytest.mark.parametrize("log", [True, False])
def test_reference_matches_chain_with_cv2(log):
    pytest.importorskip("cv2")
    for name, img in _images((96, 160)):
        for coef, clip in [(5000.0, 2000.0), (5000.0, 2.0), (1000.0, 0.0), (65535.0, 40.0)]:
            got = ref.contrast(img, coef=coef, clip_limit=clip, log=log)
            want = _independent_contrast(img, coef, clip, log)
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {coef} {clip}")
            assert got.dtype == np.float32 and got.min() == 0.0 and got.max() == 1.0


@pytest.mark.parametrize("log", [True, False])
@pytest.mark.parametrize("clip", [0.0, 1.0, 2.0, 40.0, 2000.0])
def test_cpu_matches_reference(clip, log):
    for name, img in _images((200, 333), seed=1):
        for coef in (5000.0, 100.0, 65535.0):
            want = ref.contrast(img, coef=coef, clip_limit=clip, log=log)
            got = kernels.contrast(img, coef=coef, clip_limit=clip, log=log, impl="cpu")
            _assert_close(got, want, "cpu", f"{name} coef={coef} clip={clip} log={log}")


def test_cpu_default_and_full_size():
    img = np.random.default_rng(2).random((512, 1024)).astype(np.float32)
    want = ref.contrast(img)
    _assert_close(kernels.contrast(img), want, "cpu", "default backend, 512x1024")  # impl=None → cpu
    _assert_close(kernels.contrast(np.asfortranarray(img), impl="cpu"), want, "cpu", "Fortran-ordered input")


# ------------------------------------------------------------------------------------------------
# degenerate data (host backends warn; CUDA gives the same result silently)
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize("value", [0.0, 3.5, -1e30])
def test_constant_image_gives_zeros(backend, value):
    img = np.full((17, 23), value, np.float32)
    with pytest.warns(DataWarning, match="constant"):
        res = kernels.contrast(img, impl=backend)
    assert res.dtype == np.float32 and res.shape == img.shape and not res.any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_non_finite_pixels_count_as_minimum(backend):
    img = next(_images((40, 50), seed=3))[1]
    bad = img.copy()
    bad[1, 2], bad[5, 7], bad[30, 1], bad[39, 49] = np.nan, np.inf, -np.inf, np.nan
    filled = bad.copy()
    filled[~np.isfinite(bad)] = img[np.isfinite(bad)].min()
    with pytest.warns(DataWarning, match="4 non-finite"):
        res = kernels.contrast(bad, impl=backend)
    assert not np.isnan(res).any()
    assert res[1, 2] == res[5, 7] == res[30, 1] == res[39, 49] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite image warns nothing
        want = kernels.contrast(filled, impl=backend)
    np.testing.assert_array_equal(res, want)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_all_non_finite_gives_zeros(backend):
    img = np.full((9, 11), np.nan, np.float32)
    img[0, 0] = np.inf
    with pytest.warns(DataWarning, match="no finite pixel"):
        res = kernels.contrast(img, impl=backend)
    assert not res.any() and not np.isnan(res).any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_single_non_constant_pixel_and_overflowing_range(backend):
    one_spike = np.zeros((30, 30), np.float32)
    one_spike[3, 3] = 1.0
    res = kernels.contrast(one_spike, impl=backend)
    assert res[3, 3] == 1.0 and res.sum() == 1.0
    # max - min overflows float32: evaluated on halved values, no NaN
    huge = np.random.default_rng(4).uniform(-3e38, 3e38, (20, 25)).astype(np.float32)
    res = kernels.contrast(huge, impl=backend)
    assert np.isfinite(res).all() and res.min() == 0.0 and res.max() == 1.0
    np.testing.assert_array_equal(res, ref.contrast(huge))


def test_clahe_to_one_level_gives_zeros():
    # 199,999 zeros and one spike, no clipping: CLAHE maps both levels to 65535 → n(c) undefined → zeros
    img = np.zeros((400, 500), np.float32)
    img[0, 0] = 1.0
    for backend in ("reference", "cpu"):
        with pytest.warns(DataWarning, match="one level"):
            res = kernels.contrast(img, clip_limit=0.0, impl=backend)
        assert not res.any()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_out_and_argument_errors(backend):
    img = next(_images((21, 34), seed=5))[1]
    want = ref.contrast(img)
    out = np.full(img.shape, np.nan, np.float32)
    assert kernels.contrast(img, out=out, impl=backend) is out
    np.testing.assert_array_equal(out, want)
    strided = np.full((21, 68), np.nan, np.float32)[:, ::2]  # non-contiguous out
    assert kernels.contrast(img, out=strided, impl=backend) is strided
    np.testing.assert_array_equal(strided, want)
    with pytest.raises(TypeError, match="float32"):
        kernels.contrast(img, out=np.empty(img.shape, np.float64), impl=backend)
    with pytest.raises(ValueError, match="shape"):
        kernels.contrast(img, out=np.empty((21, 35), np.float32), impl=backend)
    with pytest.raises(TypeError, match="float32"):
        kernels.contrast(img.astype(np.float64), impl=backend)
    with pytest.raises(ValueError, match="2-D"):
        kernels.contrast(img[None], impl=backend)
    with pytest.raises(ValueError, match="coef"):
        kernels.contrast(img, coef=70000.0, impl=backend)
    with pytest.raises(ValueError, match="coef"):
        kernels.contrast(img, coef=0.0, impl=backend)


# ------------------------------------------------------------------------------------------------
# CPU kernel: the 16-bit levels u at and around every level boundary (see gixdrt.kernels.cpu.contrast)
# ------------------------------------------------------------------------------------------------
def _u_reference(img, coef, log):
    """u per pixel with the reference's float32 operations (NaN/±Inf count as the minimum)."""
    f32 = np.float32
    finite = np.isfinite(img)
    vmin, vmax = img[finite].min(), img[finite].max()
    p = np.where(finite, img, vmin).astype(np.float32)
    s = ref.span_scale(vmin, vmax)
    n = (p * s - vmin * s) / (vmax * s - vmin * s)
    a = ref.log10_f32(f32(coef) * n + f32(1.0)) if log else n
    amin, amax = a.min(), a.max()
    if int(f32(coef)) == 0:  # 0/0 when amax == amin; the reference's uint16(NaN) is 0 on x86
        return np.zeros(img.shape, np.uint16)
    return (f32(coef) * ((a - amin) / (amax - amin))).astype(np.uint16)


def _hard_images():
    rng = np.random.default_rng(11)
    f32 = np.float32
    yield "heavy-tail", (rng.random(4000) ** 6 * 1e3 - 70.0).astype(f32)
    yield "negative", -(10.0 ** rng.uniform(-3, 5, 4000)).astype(f32)
    yield "huge-range", rng.uniform(-3e38, 3e38, 4000).astype(f32)  # vmax - vmin overflows: s = 0.5
    tiny = np.concatenate([rng.uniform(-3e38, 3e38, 2000), [1e-45, 3e-39, -2e-44, 0.0]])
    yield "huge-range+subnormals", tiny.astype(f32)  # v·0.5 rounds on subnormals
    yield "decades", (10.0 ** rng.uniform(-30, 30, 4000)).astype(f32)
    yield "subnormal", (rng.random(4000) * 1e-39).astype(f32)
    one_up = np.nextafter(f32(1.0), f32(2.0))
    yield "few-ulps", np.array([1.0, one_up, np.nextafter(one_up, f32(2.0)), 1.0 + 2**-20], f32)  # u jumps
    bad = (rng.random(4000) * 50.0).astype(f32)
    bad[::97], bad[5], bad[7] = np.nan, np.inf, -np.inf
    yield "non-finite", bad


def _key(x):
    """Order-preserving int64 key of float32 values (consecutive floats, consecutive keys)."""
    b = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


def _unkey(k):
    k = np.asarray(k, np.int64)
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).astype(np.int32).view(np.float32)


def _thresholds(vmin, vmax, coef, log):
    """T_k, k = 1..trunc(coef): the smallest float32 in (vmin, vmax] whose level u is ≥ k, by bisection on the
    float keys with the reference's per-pixel u (monotone in the pixel value; u(vmin) = 0, u(vmax) = trunc(coef))."""
    umax = int(np.float32(coef))
    k = np.arange(1, umax + 1)
    lo = np.full(umax, _key(vmin), np.int64)  # u(lo) < k
    hi = np.full(umax, _key(vmax), np.int64)  # u(hi) ≥ k

    def u_at(keys):  # the extrema stay in the image, so the reference's extrema are vmin and vmax
        vals = np.concatenate([[vmin, vmax], _unkey(keys)]).astype(np.float32)
        return _u_reference(vals, coef, log)[2:].astype(np.int64)

    while (hi - lo > 1).any():
        mid = lo + (hi - lo) // 2
        up = u_at(mid) >= k
        hi = np.where(up, mid, hi)
        lo = np.where(up, lo, mid)
    return _unkey(hi)


def _around_thresholds(img, thr):
    """img plus every threshold and its two float32 neighbours (clipped to the finite range, so
    that the extrema and hence the thresholds stay the same)."""
    finite = img[np.isfinite(img)]
    lo, hi = finite.min(), finite.max()
    f32 = np.float32
    around = np.concatenate([thr, np.nextafter(thr, f32(-np.inf)), np.nextafter(thr, f32(np.inf))])
    return np.concatenate([img, np.clip(around, lo, hi)]).astype(f32)


@pytest.mark.parametrize("log", [True, False])
@pytest.mark.parametrize("coef", [300.0, 5000.0, 65535.0, 1000.5, 1.5, 0.5])
def test_cpu_thresholds_exact(coef, log):
    """The C++ kernel's levels u equal the reference's per-pixel u on values exactly at and one ulp around every
    level boundary T_k (the smallest float32 value of level k), and so does the whole chain."""
    from gixdrt.kernels.cpu import contrast as cpu

    f32 = np.float32
    umax = int(f32(coef))
    for name, base in _hard_images():
        finite = base[np.isfinite(base)]
        vmin, vmax = finite.min(), finite.max()
        thr = _thresholds(vmin, vmax, coef, log)
        assert thr.size == umax
        img = _around_thresholds(base, thr)
        want = _u_reference(img, coef, log)
        # T_k is the smallest value with u >= k
        if umax:
            k = np.arange(1, umax + 1)
            below = np.clip(np.nextafter(thr, f32(-np.inf)), vmin, vmax)
            u_at, u_below = want[base.size:base.size + umax], want[base.size + umax:base.size + 2 * umax]
            assert np.array_equal(img[base.size:base.size + 2 * umax], np.concatenate([thr, below])), name
            assert (u_at >= k).all(), f"{name}: u(T_k) < k"
            assert (u_below < k).all(), f"{name}: u just below T_k reaches k"
            assert (thr > vmin).all() and (thr <= vmax).all() and (np.diff(thr) >= 0).all(), name
        for threads in (1, 3):
            u = cpu.levels(img, coef=coef, log=log, threads=threads)
            np.testing.assert_array_equal(u, want, err_msg=f"{name} coef={coef} log={log} threads={threads}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DataWarning)
            got = kernels.contrast(img[None, :], coef=coef, log=log, impl="cpu")
            np.testing.assert_array_equal(got, ref.contrast(img[None, :], coef=coef, log=log), err_msg=name)


def test_cpu_threads_do_not_change_the_result():
    """Each pixel (and each tile) is computed by one worker the same way: 1, 2 or 3 threads give the same bits."""
    from gixdrt.kernels.cpu import contrast as cpu

    img = dict(_hard_images())["heavy-tail"].reshape(40, 100)
    one = cpu.contrast(img, threads=1)
    u16 = (np.random.default_rng(14).random((301, 517)) ** 4 * 5001).astype(np.uint16)
    clahe_one = cpu.clahe(u16, 2.0, (7, 3), threads=1)
    for threads in (2, 3, 0):
        np.testing.assert_array_equal(cpu.contrast(img, threads=threads), one)
        np.testing.assert_array_equal(cpu.clahe(u16, 2.0, (7, 3), threads=threads), clahe_one)
    np.testing.assert_array_equal(one, ref.contrast(img))


def test_cpu_full_size_cauchy_matches():
    """512x1024 with the default coef: u and the result equal the reference's, pixel for pixel."""
    from gixdrt.kernels.cpu import contrast as cpu

    rng = np.random.default_rng(12)
    img = (rng.standard_cauchy((512, 1024)) * 5.0 + 20.0).astype(np.float32)
    np.testing.assert_array_equal(cpu.levels(img), _u_reference(img.reshape(-1), 5000.0, True))
    np.testing.assert_array_equal(kernels.contrast(img, impl="cpu"), ref.contrast(img))


def test_cpu_levels_of_degenerate_images_are_none():
    from gixdrt.kernels.cpu import contrast as cpu

    assert cpu.levels(np.full(7, 2.5, np.float32)) is None
    assert cpu.levels(np.array([np.nan, np.inf, 1.0], np.float32)) is None
    assert cpu.levels(np.array([np.nan, 2.0, 1.0], np.float32)).tolist() == [0, 5000, 0]


# ------------------------------------------------------------------------------------------------
# CUDA (simulator without a GPU: tiny images)
# ------------------------------------------------------------------------------------------------
def _gpu():
    if cuda_unavailable_reason():
        pytest.skip(cuda_unavailable_reason())
    from numba import cuda

    from gixdrt.kernels.cuda import contrast as gpu

    return cuda, gpu


def _quiet_ref(img, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        return ref.contrast(img, **kw)


@pytest.mark.cudasim
@pytest.mark.parametrize(
    "kind,log,clip,coef",
    [("heavy-tail", True, 2000.0, 5000.0), ("peaks+background", False, 2.0, 5000.0), ("uniform", True, 0.0, 300.0)],
)
def test_cuda_matches_reference(kind, log, clip, coef):
    cuda, gpu = _gpu()
    img = dict(_images((24, 40), seed=6))[kind]
    img[2, 3] = np.nan  # non-finite pixel: minimum, no warning on the device
    stream = cuda.stream()
    d_out = cuda.device_array(img.shape, np.float32, stream=stream)
    d_img = cuda.to_device(img, stream=stream)
    res = gpu.contrast(d_img, coef=coef, clip_limit=clip, log=log, out=d_out, stream=stream)
    assert res is d_out
    got = res.copy_to_host(stream=stream)
    stream.synchronize()
    _assert_close(got, _quiet_ref(img, coef=coef, clip_limit=clip, log=log), "cuda", f"{kind} log={log} clip={clip}")


@pytest.mark.cudasim
def test_cuda_degenerate_inputs_give_zeros():
    cuda, gpu = _gpu()
    for img in (np.zeros((6, 10), np.float32), np.full((6, 10), 2.5, np.float32), np.full((6, 10), np.nan, np.float32)):
        got = gpu.contrast(cuda.to_device(img)).copy_to_host()
        assert got.dtype == np.float32 and not got.any() and not np.isnan(got).any()
        np.testing.assert_array_equal(got, _quiet_ref(img))


@pytest.mark.cudasim
def test_cuda_argument_errors():
    cuda, gpu = _gpu()
    img = np.zeros((4, 4), np.float32)
    with pytest.raises(TypeError, match="device array"):
        gpu.contrast(img)
    with pytest.raises(TypeError, match="float32"):
        gpu.contrast(cuda.to_device(img.astype(np.float64)))
    with pytest.raises(ValueError, match="shape"):
        gpu.contrast(cuda.to_device(img), out=cuda.device_array((4, 5), np.float32))


@pytest.mark.cudasim
def test_public_dispatch_picks_cuda_for_device_arrays():
    """kernels.contrast / kernels.clahe route a device array to the cuda backend (no host round trip)."""
    cuda, _ = _gpu()
    img = dict(_images((16, 24), seed=9))["heavy-tail"]
    res = kernels.contrast(cuda.to_device(img))
    assert hasattr(res, "copy_to_host")  # stayed on the device
    np.testing.assert_array_equal(res.copy_to_host(), _quiet_ref(img))
    u8 = (np.arange(16 * 24).reshape(16, 24) % 251).astype(np.uint8)
    got = kernels.clahe(cuda.to_device(u8), 2.0, (2, 2)).copy_to_host()
    np.testing.assert_array_equal(got, ref.clahe(u8, 2.0, (2, 2)))
