"""The small ops between a plan's stages (gixdrt.kernels.reference.layout, the host path) against their device
versions (gixdrt.kernels.cuda.layout: PyTorch ops, run here on CPU tensors, which is the same code a GPU runs),
and against the definitions they replace (PeakTable's box sums, the pipeline's constant-frame test)."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.kernels.reference import layout as ref

torch = pytest.importorskip("torch")

from gixdrt.kernels.cuda import layout as dev


def both(fn_name, *args, out_shape, out_dtype, **kw):
    """Run the reference and the PyTorch version → (reference out, device out as NumPy)."""
    out = np.zeros(out_shape, out_dtype)
    getattr(ref, fn_name)(*args, out=out, **kw)
    t_out = torch.zeros(out_shape, dtype=getattr(torch, np.dtype(out_dtype).name))
    t_args = [torch.from_numpy(np.ascontiguousarray(a)) if isinstance(a, np.ndarray) else a for a in args]
    getattr(dev, fn_name)(*t_args, out=t_out, **kw)
    return out, t_out.numpy()


def test_gather_rows_pads_with_zeros():
    rng = np.random.default_rng(0)
    values = rng.random((2, 7, 4), dtype=np.float32)
    index = np.array([[3, 0, -1, -1], [6, 5, 4, -1]], np.int32)
    a, b = both("gather_rows", values, index, out_shape=(2, 4, 4), out_dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[0, 0], values[0, 3])
    np.testing.assert_array_equal(a[1, 2], values[1, 4])
    assert (a[0, 2:] == 0).all() and (a[1, 3] == 0).all()
    scores = rng.random((2, 7), dtype=np.float32)
    a, b = both("gather_rows", scores, index, out_shape=(2, 4), out_dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    assert a[0, 1] == scores[0, 0] and a[0, 2] == 0


def test_make_rois_numbers_the_images():
    boxes = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    a, b = both("make_rois", boxes, out_shape=(6, 5), out_dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    assert a[:, 0].tolist() == [0, 0, 0, 1, 1, 1]
    np.testing.assert_array_equal(a[4, 1:], boxes[1, 1])


def test_box_sums_equal_the_one_image_sums_and_honour_the_count():
    from gixdrt.gixd.peaks import box_sums

    rng = np.random.default_rng(1)
    images = rng.random((2, 20, 30)).astype(np.float32)
    images[0, 3, 4] = np.nan  # non-finite pixels count 0
    boxes = np.array([[[2.5, 1.0, 8.0, 6.2], [0, 0, 30, 20], [9, 9, 9, 9]],
                      [[-3, -3, 2, 2], [29.5, 19.5, 40, 40], [0, 0, 0, 0]]], np.float32)
    count = np.array([3, 2], np.int32)
    a, b = both("box_sums", images, boxes, count, out_shape=(2, 3), out_dtype=np.float64)
    np.testing.assert_allclose(a, b, rtol=1e-12)
    np.testing.assert_allclose(a[0], box_sums(images[0], boxes[0]), rtol=1e-12)
    np.testing.assert_allclose(a[1, :2], box_sums(images[1], boxes[1, :2]), rtol=1e-12)
    assert a[1, 2] == 0  # past the count
    assert a[0, 1] == pytest.approx(np.nansum(images[0].astype(np.float64)))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.float32])
def test_frame_constant_flags(dtype):
    rng = np.random.default_rng(2)
    frames = rng.integers(0, 50, (4, 2, 6, 8)).astype(dtype)
    frames[1] = 7  # every frame of group 1 constant
    frames[2, 0] = 3  # group 2: one frame constant, the other not
    polar = rng.random((4, 5, 9)).astype(np.float32)
    inside = np.ones((5, 9), bool)
    inside[:, 7:] = False
    polar[3, :, :7] = 1.5  # group 3: constant polar image where it samples the detector
    if dtype == np.float32:
        frames[0, :, 0, 0] = np.nan  # NaN makes a frame non-constant
    a, b = both("frame_constant", frames, polar, inside, out_shape=(4,), out_dtype=np.bool_)
    np.testing.assert_array_equal(a, b)
    assert a.tolist() == [False, True, False, True]


def test_threshold():
    x = np.array([[0.2, 0.5, 0.7]], np.float32)
    a, b = both("threshold", x, out_shape=x.shape, out_dtype=np.bool_, value=0.5)
    np.testing.assert_array_equal(a, b)
    assert a.tolist() == [[False, False, True]]


def test_pad_images_zero_fills_the_extra_rows_and_columns():
    rng = np.random.default_rng(3)
    images = rng.random((2, 1, 5, 7), dtype=np.float32)
    out_shape = (2, 1, 32, 8)
    a, b = both("pad_images", images, out_shape=out_shape, out_dtype=np.float32)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[..., :5, :7], images)
    assert not a[..., 5:, :].any() and not a[..., :, 7:].any()
    stale = np.full(out_shape, 9.0, np.float32)  # a reused buffer: the padding is written, not assumed
    np.testing.assert_array_equal(ref.pad_images(images, out=stale), a)
    with pytest.raises(ValueError, match="pad_images: out must be"):
        ref.pad_images(images, out=np.zeros((2, 1, 4, 8), np.float32))


def test_masked_counts():
    codes = np.random.default_rng(5).integers(0, 3, (3, 8, 16)).astype(np.uint8)
    a, b = both("masked_counts", codes, out_shape=(3, 2), out_dtype=np.int64)
    np.testing.assert_array_equal(a, b)
    for i in range(3):
        assert a[i].tolist() == [int((codes[i] == 1).sum()), int((codes[i] == 2).sum())]


def test_reference_refuses_a_wrong_output_buffer():
    with pytest.raises(ValueError, match=r"gather_rows: out must be float32\[1, 2\]"):
        ref.gather_rows(np.zeros((1, 3), np.float32), np.zeros((1, 2), np.int32), out=np.zeros((1, 3), np.float32))


def test_device_minmax_matches_the_host_chain():
    """contrast.disable: the device's min–max normalisation (PyTorch ops) equals the host's, bit for bit."""
    from gixdrt.kernels.batched import _minmax_device, minmax

    rng = np.random.default_rng(5)
    for img in (rng.random((8, 16), dtype=np.float32) * 50, np.full((8, 16), 4.0, np.float32),
                np.full((8, 16), np.nan, np.float32)):
        img = img.copy()
        if np.isfinite(img).all() and img.std() > 0:
            img[0, 0] = np.nan
        out = torch.empty(img.shape)
        _minmax_device(torch.from_numpy(img), out)
        np.testing.assert_array_equal(out.numpy(), minmax(img))
