"""RoIAlign through the registry (gixdrt.kernels.roi_align: reference, C++ cpu and CUDA backends) against the
float64 specification (gixdrt.kernels.reference.roi_align).

Tolerances (absolute and relative, both applied as in np.testing.assert_allclose):

| comparison                               | atol  | rtol  | why                                                       |
|------------------------------------------|-------|-------|-----------------------------------------------------------|
| C++ CPU vs float64 reference             | 1e-5  | 1e-5  | same geometry (double); float32 sums of ≤ a few hundred    |
|                                          |       |       | weighted taps of O(1) values: ~1e-7 observed              |
| C++ CPU vs torch op on float64 features  | 1e-5  | 1e-5  | the torch op in float64 is the same specification          |
| C++ CPU vs torch op on float32 features  | 5e-4  | 1e-4  | the torch op computes sample positions in float32: at x ≈ |
|                                          |       |       | 250 cells one ulp is 1.5e-5 cell, times neighbour         |
|                                          |       |       | differences of N(0, 1) data (≤ ~6) gives ~1e-4; the C++   |
|                                          |       |       | kernel stays at ~2e-7 of the float64 reference there      |
| CUDA vs C++ CPU                          | 1e-5  | 1e-5  | same double geometry, different float32 summation order   |
| C++ CPU, 1 vs N threads                  | 0     | 0     | each RoI is computed by one thread the same way           |
| reference (float32 result) vs C++ CPU    | 1e-5  | 1e-5  | float64 loops rounded once vs float32 sums                |
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

_ext = pytest.importorskip("gixdrt._ext", reason="gixdrt._ext is not built")

import gixdrt.kernels as K
from gixdrt.kernels import registry
from gixdrt.kernels.cpu import _ext as cpu_ext
from gixdrt.kernels.cpu.roi_align import roi_align as roi_align_cpu
from gixdrt.kernels.reference import roi_align as roi_align_spec
from gixdrt.kernels.roi_align import ExtensionUnavailableError, roi_align


def roi_align_reference(features, rois, output_size, spatial_scale=1.0, sampling_ratio=-1, aligned=False):
    """The float64 specification (gixdrt.kernels.reference.roi_align)."""
    return roi_align_spec.roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned, dtype=np.float64)


TOL_REFERENCE = {"atol": 1e-5, "rtol": 1e-5}
TOL_TORCH64 = {"atol": 1e-5, "rtol": 1e-5}
TOL_TORCH32 = {"atol": 5e-4, "rtol": 1e-4}
TOL_CUDA = {"atol": 1e-5, "rtol": 1e-5}

P2_SCALE = (1 / 8, 1 / 4)


def _features(rng, n=2, c=3, h=12, w=20):
    return rng.standard_normal((n, c, h, w)).astype(np.float32)


def _mixed_rois(rng, n_images, img_h, img_w):
    """RoIs in input pixels covering the edge cases: inside, partly outside, tiny, degenerate, entirely outside."""
    k = 24
    x0 = rng.uniform(-0.3 * img_w, 1.1 * img_w, k)
    y0 = rng.uniform(-0.3 * img_h, 1.1 * img_h, k)
    x1 = x0 + rng.uniform(0.0, 0.8 * img_w, k)
    y1 = y0 + rng.uniform(0.0, 0.8 * img_h, k)
    rows = [np.c_[rng.integers(0, n_images, k), x0, y0, x1, y1]]
    rows.append(
        [
            [0, 0.0, 0.0, img_w, img_h],  # the whole map
            [n_images - 1, 3.0, 2.0, 3.0, 2.0],  # zero size
            [0, 5.0, 5.0, 5.2, 5.1],  # tiny
            [n_images - 1, -3 * img_w, -3 * img_h, -2 * img_w, -2 * img_h],  # entirely outside, before
            [0, 2 * img_w, 2 * img_h, 3 * img_w, 3 * img_h],  # entirely outside, past the end
            [0, -0.9 * img_w, 0.2 * img_h, 0.1 * img_w, 0.5 * img_h],  # partly outside
            [n_images - 1, 0.9 * img_w, 0.9 * img_h, 1.05 * img_w, 1.02 * img_h],  # across the last row/column
            [0, 6.0, 7.0, 4.0, 3.0],  # inverted (x1 < x0, y1 < y0)
        ]
    )
    return np.concatenate([np.asarray(r, np.float64) for r in rows]).astype(np.float32)


CASES = [
    pytest.param(aligned, sampling, scale, id=f"aligned={aligned}-sr={sampling}-scale={scale}")
    for aligned in (False, True)
    for sampling in (-1, 2)
    for scale in (1.0, P2_SCALE, (0.5, 0.25))
]


@pytest.mark.parametrize(("aligned", "sampling_ratio", "scale"), CASES)
def test_cpu_matches_float64_reference(aligned, sampling_ratio, scale):
    rng = np.random.default_rng(0)
    f = _features(rng)
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    rois = _mixed_rois(rng, f.shape[0], f.shape[2] / sy, f.shape[3] / sx)
    got = roi_align(f, rois, (4, 5), scale, sampling_ratio, aligned)
    want = roi_align_reference(f, rois, (4, 5), scale, sampling_ratio, aligned)
    assert got.dtype == np.float32 and got.shape == (len(rois), 3, 4, 5)
    np.testing.assert_allclose(got, want, **TOL_REFERENCE)
    assert np.all(got[len(rois) - 5 : len(rois) - 3] == 0.0)  # the RoIs entirely outside pool to 0


@pytest.mark.parametrize(("aligned", "sampling_ratio", "scale"), CASES)
def test_cpu_matches_torch_op(aligned, sampling_ratio, scale):
    torch = pytest.importorskip("torch")
    from gixdrt.model.ops import roi_align as torch_roi_align

    rng = np.random.default_rng(1)
    f = _features(rng)
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    rois = _mixed_rois(rng, f.shape[0], f.shape[2] / sy, f.shape[3] / sx)
    got = roi_align(f, rois, (4, 5), scale, sampling_ratio, aligned)
    ft, rt = torch.from_numpy(f), torch.from_numpy(rois)
    want64 = torch_roi_align(ft.double(), rt.double(), (4, 5), scale, sampling_ratio, aligned).numpy()
    want32 = torch_roi_align(ft, rt, (4, 5), scale, sampling_ratio, aligned).numpy()
    np.testing.assert_allclose(got, want64, **TOL_TORCH64)
    np.testing.assert_allclose(got, want32, **TOL_TORCH32)


def _published_rois(rng, k=1000, img_h=512, img_w=1024):
    """Proposal-like boxes on a 512×1024 frame: tall and narrow, like the published anchors, clipped to the frame."""
    x0 = rng.uniform(0, img_w, k)
    y0 = rng.uniform(0, img_h, k)
    x1 = np.minimum(x0 + rng.uniform(1, 60, k), img_w)
    y1 = np.minimum(y0 + rng.uniform(10, 500, k), img_h)
    return np.c_[np.zeros(k), x0, y0, x1, y1].astype(np.float32)


def test_published_shape_matches_torch_op():
    """1000 RoIs, 64 channels, 16×16 bins from a [1, 64, 64, 256] P2 map at scale (1/8, 1/4)."""
    torch = pytest.importorskip("torch")
    from gixdrt.model.ops import roi_align as torch_roi_align

    rng = np.random.default_rng(2)
    f = rng.standard_normal((1, 64, 64, 256)).astype(np.float32)
    rois = _published_rois(rng)
    got = roi_align(f, rois)  # the defaults are the published detector's
    assert got.shape == (1000, 64, 16, 16)
    ft, rt = torch.from_numpy(f), torch.from_numpy(rois)
    np.testing.assert_allclose(got, torch_roi_align(ft.double(), rt.double(), 16, P2_SCALE).numpy(), **TOL_TORCH64)
    np.testing.assert_allclose(got, torch_roi_align(ft, rt, 16, P2_SCALE).numpy(), **TOL_TORCH32)
    # a few RoIs against the specification itself, on a few channels (the reference is slow)
    sel = rng.choice(len(rois), 6, replace=False)
    want = roi_align_reference(f[:, :4], rois[sel], 16, P2_SCALE)
    np.testing.assert_allclose(got[sel, :4], want, **TOL_REFERENCE)


def test_threads_do_not_change_the_result():
    rng = np.random.default_rng(3)
    f = _features(rng, n=3, c=5, h=16, w=24)
    rois = _mixed_rois(rng, 3, 16 * 8, 24 * 4)
    one = roi_align_cpu(f, rois, threads=1)
    for threads in (0, 2, 3, 64):
        np.testing.assert_array_equal(roi_align_cpu(f, rois, threads=threads), one)
    np.testing.assert_array_equal(roi_align(f, rois), one)


def test_several_batch_indices_read_their_own_image():
    rng = np.random.default_rng(4)
    f = _features(rng, n=3, c=2, h=8, w=8)
    box = [1.0, 1.0, 6.5, 5.5]
    rois = np.array([[b, *box] for b in (2, 0, 1, 2)], np.float32)
    got = roi_align(f, rois, 3, 1.0)
    for i, b in enumerate((2, 0, 1, 2)):
        np.testing.assert_array_equal(got[i], roi_align(f[b : b + 1], np.array([[0, *box]], np.float32), 3, 1.0)[0])


def test_empty_inputs():
    rng = np.random.default_rng(5)
    f = _features(rng)
    got = roi_align(f, np.zeros((0, 5), np.float32))
    assert got.shape == (0, 3, 16, 16) and got.dtype == np.float32
    zero_channels = roi_align(np.zeros((1, 0, 4, 4), np.float32), np.array([[0, 0, 0, 4, 4]], np.float32), 2)
    assert zero_channels.shape == (1, 0, 2, 2)
    empty_map = roi_align(np.zeros((1, 2, 0, 4), np.float32), np.array([[0, 0, 0, 4, 4]], np.float32), 2, 1.0)
    assert empty_map.shape == (1, 2, 2, 2) and np.all(empty_map == 0)


def test_out_buffer_is_written_and_returned():
    rng = np.random.default_rng(6)
    f = _features(rng)
    rois = _mixed_rois(rng, 2, 96, 80)
    out = np.full((len(rois), 3, 16, 16), np.nan, np.float32)
    assert roi_align(f, rois, out=out) is out
    np.testing.assert_array_equal(out, roi_align(f, rois))
    with pytest.raises(ValueError, match="out must have shape"):
        roi_align(f, rois, out=np.empty((len(rois), 3, 8, 16), np.float32))
    with pytest.raises(TypeError, match="out must be float32"):
        roi_align(f, rois, out=np.empty((len(rois), 3, 16, 16), np.float64))


def test_bad_inputs_raise_clear_errors():
    f = np.zeros((2, 3, 8, 8), np.float32)
    rois = np.array([[0, 1, 1, 5, 5], [1, 0, 0, 8, 8]], np.float32)
    with pytest.raises(ValueError, match=r"features must be \[N, C, H, W\], got shape \[3, 8, 8\]"):
        roi_align(f[0], rois)
    with pytest.raises(TypeError, match="features must be float32, got float64"):
        roi_align(f.astype(np.float64), rois)
    with pytest.raises(TypeError, match="rois must be float32, got float64"):
        roi_align(f, rois.astype(np.float64))
    with pytest.raises(ValueError, match="features must be C-contiguous"):
        roi_align(np.zeros((2, 3, 8, 16), np.float32)[..., ::2], rois)
    with pytest.raises(ValueError, match="rois must be C-contiguous"):
        roi_align(f, np.asfortranarray(rois))
    with pytest.raises(ValueError, match=r"rois must be \[K, 5\]"):
        roi_align(f, np.ascontiguousarray(rois[:, 1:]))
    with pytest.raises(ValueError, match=r"rois\[1\] .* batch index outside \[0, 2\)"):
        roi_align(f, np.array([[0, 1, 1, 5, 5], [2, 0, 0, 8, 8]], np.float32))
    with pytest.raises(ValueError, match=r"rois\[0\] .* batch index outside"):
        roi_align(f, np.array([[-1, 1, 1, 5, 5]], np.float32))
    with pytest.raises(ValueError, match="non-finite"):
        roi_align(f, np.array([[0, 1, np.nan, 5, 5]], np.float32))
    with pytest.raises(ValueError, match="output size must be"):
        roi_align(f, rois, 0)
    with pytest.raises(TypeError, match="features must be a NumPy array"):
        _ext.roi_align_cpu([1.0], rois, 2, 2, 1.0, 1.0, -1, False)
    with pytest.raises(ValueError, match=r"spatial_scale must be a number or a \(y, x\) pair"):
        roi_align(f, rois, 4, (1.0, 1.0, 1.0))


class _FakeDeviceArray:
    def __init__(self, shape):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": "<f4", "data": (0, False), "version": 3}


def test_device_and_host_arrays_cannot_mix():
    with pytest.raises(TypeError, match="both be NumPy arrays or both be device arrays"):
        roi_align(np.zeros((1, 1, 4, 4), np.float32), _FakeDeviceArray((1, 5)))


def test_device_arrays_without_cuda_build_raise(monkeypatch):
    monkeypatch.delattr(_ext, "roi_align_cuda", raising=False)
    assert "built without CUDA" in K.available("roi_align")["cuda"]
    with pytest.raises(registry.BackendUnavailableError, match="built without CUDA"):
        roi_align(_FakeDeviceArray((1, 1, 4, 4)), _FakeDeviceArray((1, 5)))
    from gixdrt.kernels.cuda.roi_align import roi_align as roi_align_cuda

    with pytest.raises(ExtensionUnavailableError, match="built without CUDA"):
        roi_align_cuda(_FakeDeviceArray((1, 1, 4, 4)), _FakeDeviceArray((1, 5)))


def test_missing_extension_falls_back_to_the_reference(monkeypatch):
    """Without gixdrt._ext the cpu backend is unavailable: impl=None takes the reference (as for every
    kernel), impl='cpu' raises, and the cpu function itself raises ExtensionUnavailableError (an ImportError)."""
    monkeypatch.setattr(cpu_ext, "_load", lambda: (None, "gixdrt._ext is not importable (blocked in this test)"))
    rng = np.random.default_rng(9)
    f = _features(rng, n=1, c=2, h=6, w=7)
    rois = np.array([[0, 1, 1, 12, 20], [0, 0, 0, 3, 3]], np.float32)
    assert registry.resolve("roi_align", None, f)[0] == "reference"
    got = roi_align(f, rois, 3, 0.25)
    np.testing.assert_allclose(got, roi_align_reference(f, rois, 3, 0.25), **TOL_REFERENCE)
    with pytest.raises(registry.BackendUnavailableError, match="gixdrt._ext is not importable"):
        roi_align(f, rois, 3, 0.25, impl="cpu")
    with pytest.raises(ImportError, match="gixdrt._ext is not importable"):
        roi_align_cpu(f, rois, 3, 0.25)
    assert issubclass(ExtensionUnavailableError, ImportError)


def test_callable_module_and_registry():
    """gixdrt.kernels.roi_align is the module the engines import from, and calling it is the entry point."""
    rng = np.random.default_rng(10)
    f = _features(rng)
    rois = _mixed_rois(rng, 2, 96, 80)
    assert sorted(K.registered()["roi_align"]) == ["cpu", "cuda", "reference"]
    assert K.available("roi_align")["cpu"] is None and K.available("roi_align")["reference"] is None
    np.testing.assert_array_equal(K.roi_align(f, rois), roi_align(f, rois))
    np.testing.assert_array_equal(K.roi_align(f, rois, impl="cpu"), roi_align_cpu(f, rois))
    assert K.roi_align._ext is _ext


@pytest.mark.parametrize(("aligned", "sampling_ratio", "scale"), CASES[::2])
def test_reference_backend_matches_cpu(aligned, sampling_ratio, scale):
    rng = np.random.default_rng(11)
    f = _features(rng)
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    rois = _mixed_rois(rng, f.shape[0], f.shape[2] / sy, f.shape[3] / sx)
    ref = K.roi_align(f, rois, (4, 5), scale, sampling_ratio, aligned, impl="reference")
    cpu = K.roi_align(f, rois, (4, 5), scale, sampling_ratio, aligned, impl="cpu")
    assert ref.dtype == np.float32 and ref.shape == cpu.shape
    np.testing.assert_allclose(cpu, ref, **TOL_REFERENCE)


def _grouped_rois(rng, n, per_image, img_h, img_w):
    """N groups of R rows, row i·R + j of image i; rows past each image's count are garbage (NaN, bad index)."""
    rows = []
    for i in range(n):
        x0 = rng.uniform(-0.1 * img_w, img_w, per_image)
        y0 = rng.uniform(-0.1 * img_h, img_h, per_image)
        rows.append(np.c_[np.full(per_image, i), x0, y0, x0 + rng.uniform(1, 40, per_image), y0 + rng.uniform(1, 80, per_image)])
    return np.concatenate(rows).astype(np.float32)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_valid_skips_rows(backend):
    rng = np.random.default_rng(12)
    f = _features(rng, n=3, c=2, h=10, w=12)
    r = 5
    rois = _grouped_rois(rng, 3, r, 10 * 8, 12 * 4)
    valid = np.array([5, 2, 0], np.int32)
    skipped = [i * r + j for i in range(3) for j in range(valid[i], r)]
    rois[skipped[0]] = [7, np.nan, 0, 1, 1]  # never read: neither checked nor computed
    rois[skipped[1], 0] = 0  # a batch index that is not its image's, in a skipped row
    out = np.full((15, 2, 16, 16), 123.0, np.float32)
    got = K.roi_align(f, rois, out=out, valid=valid, impl=backend)
    assert got is out
    computed = [i * r + j for i in range(3) for j in range(valid[i])]
    want = roi_align_reference(f, rois[computed], 16, P2_SCALE)
    np.testing.assert_allclose(got[computed], want, **TOL_REFERENCE)
    assert np.all(got[skipped] == 123.0)  # skipped rows are left as they were
    # parity with the other host backend on the computed rows
    other = K.roi_align(f, rois, valid=valid, impl="cpu" if backend == "reference" else "reference")
    np.testing.assert_allclose(got[computed], other[computed], **TOL_REFERENCE)
    # valid larger than R clamps to R; negative to 0
    all_rows = K.roi_align(f, _grouped_rois(np.random.default_rng(13), 3, r, 80, 48), valid=np.array([9, -1, 5], np.int32),
                           impl=backend)
    assert all_rows.shape == (15, 2, 16, 16)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_valid_errors(backend):
    rng = np.random.default_rng(14)
    f = _features(rng, n=2, c=1, h=6, w=6)
    rois = _grouped_rois(rng, 2, 3, 48, 24)
    with pytest.raises(ValueError, match=r"valid must be \[2\]"):
        K.roi_align(f, rois, valid=np.array([1, 1, 1], np.int32), impl=backend)
    with pytest.raises(ValueError, match="not a multiple of N"):
        K.roi_align(f, rois[:5], valid=np.array([1, 1], np.int32), impl=backend)
    bad = rois.copy()
    bad[4, 0] = 0  # row 1·3 + 1 belongs to image 1
    with pytest.raises(ValueError, match=r"rois\[4\] .* batch index"):
        K.roi_align(f, bad, valid=np.array([3, 3], np.int32), impl=backend)
    K.roi_align(f, bad, valid=np.array([3, 1], np.int32), impl=backend)  # the bad row is skipped


def test_build_info_reports_the_kernels():
    info = _ext.build_info()
    assert info["roi_align_cpu"] is True and info["cpu_kernels"] is True
    assert hasattr(_ext, "cuda_device_count") == info["cuda"]
    assert isinstance(info["cpu_threads"], int) and info["cpu_threads"] >= 1
    assert info["roi_align_cuda"] == info["cuda"] == hasattr(_ext, "roi_align_cuda")
    if shutil.which("nvcc"):  # a CUDA compiler was there to build the kernel (it needs no GPU to compile)
        assert info["roi_align_cuda"] is True


@pytest.mark.needs_gpu
@pytest.mark.parametrize(("aligned", "sampling_ratio", "scale"), CASES)
def test_cuda_matches_cpu(aligned, sampling_ratio, scale):
    import cupy

    if not _ext.build_info()["roi_align_cuda"]:
        pytest.skip("gixdrt._ext was built without CUDA")
    rng = np.random.default_rng(7)
    f = _features(rng, n=2, c=4, h=16, w=24)
    sy, sx = (scale, scale) if np.isscalar(scale) else scale
    rois = _mixed_rois(rng, 2, 16 / sy, 24 / sx)
    want = roi_align(f, rois, (4, 5), scale, sampling_ratio, aligned)
    stream = cupy.cuda.Stream(non_blocking=True)
    with stream:
        got = roi_align(cupy.asarray(f), cupy.asarray(rois), (4, 5), scale, sampling_ratio, aligned)
    stream.synchronize()
    assert isinstance(got, cupy.ndarray) and got.shape == want.shape
    np.testing.assert_allclose(cupy.asnumpy(got), want, **TOL_CUDA)


@pytest.mark.needs_gpu
def test_cuda_published_shape_out_and_bad_batch_index():
    import cupy

    if not _ext.build_info()["roi_align_cuda"]:
        pytest.skip("gixdrt._ext was built without CUDA")
    rng = np.random.default_rng(8)
    f = rng.standard_normal((1, 64, 64, 256)).astype(np.float32)
    rois = _published_rois(rng)
    want = roi_align(f, rois)
    out = cupy.full((1000, 64, 16, 16), cupy.nan, cupy.float32)
    stream = cupy.cuda.Stream(non_blocking=True)
    assert roi_align(cupy.asarray(f), cupy.asarray(rois), out=out, stream=stream) is out
    stream.synchronize()
    np.testing.assert_allclose(cupy.asnumpy(out), want, **TOL_CUDA)
    empty = roi_align(cupy.asarray(f), cupy.zeros((0, 5), cupy.float32))
    assert empty.shape == (0, 64, 16, 16)
    bad = rois[:2].copy()
    bad[1, 0] = 1  # the map has one image: the device kernel cannot raise and writes NaN
    got = cupy.asnumpy(roi_align(cupy.asarray(f), cupy.asarray(bad)))
    cupy.cuda.get_current_stream().synchronize()
    np.testing.assert_allclose(got[0], want[0], **TOL_CUDA)
    assert np.all(np.isnan(got[1]))


@pytest.mark.needs_gpu
def test_cuda_valid_rows_match_cpu():
    import cupy

    if not _ext.build_info()["roi_align_cuda"]:
        pytest.skip("gixdrt._ext was built without CUDA")
    rng = np.random.default_rng(15)
    f = _features(rng, n=2, c=4, h=16, w=24)
    rois = _grouped_rois(rng, 2, 6, 16 * 8, 24 * 4)
    valid = np.array([6, 3], np.int32)
    want = K.roi_align(f, rois, valid=valid, impl="cpu")
    got = K.roi_align(cupy.asarray(f), cupy.asarray(rois), valid=cupy.asarray(valid))
    cupy.cuda.get_current_stream().synchronize()
    computed = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    np.testing.assert_allclose(cupy.asnumpy(got)[computed], want[computed], **TOL_CUDA)
