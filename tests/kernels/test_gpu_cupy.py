"""The CUDA kernels on a real GPU with CuPy arrays and a CuPy stream (skipped without a GPU).

These run the same kernels as the simulator tests, but through the zero-copy path users take:
CuPy device arrays in, a caller-provided CuPy output buffer, work ordered on a non-default stream.
"""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt import kernels
from gixdrt.geometry import Geometry, polar_map

pytestmark = pytest.mark.needs_gpu


@pytest.fixture(scope="module")
def cp():
    return pytest.importorskip("cupy")


def _geometry():
    return Geometry(size_x=512, size_y=384, pixel_size=0.2, distance=300, wavelength=1.0, incidence_angle=0.5,
                    y0=40, z0=30, q_xy_max=2.5, q_z_max=2.5, n_phi=128, n_q=256, flip_y=True)


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32])
def test_polar_remap_cupy_matches_reference(cp, dtype):
    pm = polar_map(_geometry())
    frame = (np.random.default_rng(1).random((384, 512)) * 1000).astype(dtype)
    want = kernels.polar_remap(frame, pm, impl="reference")
    stream = cp.cuda.Stream(non_blocking=True)
    out = cp.empty(pm.shape, cp.float32)
    with stream:
        res = kernels.polar_remap(cp.asarray(frame), pm, out=out, stream=stream)
    stream.synchronize()
    # fma contraction on the device may differ from the host in the last bits
    np.testing.assert_allclose(cp.asnumpy(out), want, rtol=0, atol=4 * np.finfo(np.float32).eps * float(frame.max()))
    assert res is not None


def test_contrast_and_clahe_cupy_match_reference(cp):
    img = (np.random.default_rng(2).gamma(1.5, 50.0, (256, 512))).astype(np.float32)
    want = kernels.contrast(img, impl="reference")
    stream = cp.cuda.Stream(non_blocking=True)
    out = cp.empty(img.shape, cp.float32)
    kernels.contrast(cp.asarray(img), out=out, stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(out), want)
    u16 = (img * 100).astype(np.uint16)
    got = kernels.clahe(cp.asarray(u16), 40.0, (8, 8), stream=stream)
    stream.synchronize()
    np.testing.assert_array_equal(cp.asnumpy(cp.asarray(got)), kernels.clahe(u16, 40.0, (8, 8), impl="reference"))


def test_real_frame_on_gpu(cp, published_config, published_frame):
    from gixdrt.gixd.preprocess import Preprocessor

    host = Preprocessor(published_config, impl="reference")
    want_polar = host.polar(published_frame)
    want = host.contrast(want_polar)
    dev = Preprocessor(published_config)
    d_polar = dev.polar(cp.asarray(published_frame))
    got = cp.asnumpy(cp.asarray(dev.contrast(d_polar)))
    assert np.abs(cp.asnumpy(cp.asarray(d_polar)) - want_polar).max() <= 1e-2
    assert np.abs(got - want).max() <= 5e-3
    assert abs(got.mean(dtype=np.float64) - 0.478479) <= 1e-5
