"""The powder plan's kernels: the reference against values computed here from the specification, and the cpu (Numba)
and cuda (simulator without a GPU) implementations against the reference."""
from __future__ import annotations

import math

import numpy as np
import pytest

import gixdrt.kernels  # noqa: F401  (registers the ops)
from gixdrt.kernels.reference import powder as ref
from gixdrt.kernels.registry import resolve

CUDA = pytest.param("cuda", marks=pytest.mark.cudasim)


def _frames(n=2, h=37, w=45, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.poisson(50.0, (n, h, w)).astype(np.float32) * 1.7 + 20
    img[0, 3:6, 4:8] = 60000  # a saturated spot
    img[-1, 10, :] = np.nan
    mask = np.zeros((h, w), np.uint8)
    mask[:, 30:33] = 1
    return img, mask


def _run(op, impl, *arrays, out, **params):
    """Run ``op`` through ``impl`` on host arrays (copied to the device for cuda); returns the host result."""
    _, fn = resolve(op, impl)
    if impl != "cuda":
        return fn(*arrays, out=out, **params)
    from numba import cuda

    dev = [None if a is None else cuda.to_device(np.ascontiguousarray(a)) for a in arrays]
    d_out = cuda.to_device(out)
    fn(*dev, out=d_out, **params)
    return d_out.copy_to_host()


def test_normalize_reference_by_hand():
    img, mask = _frames(n=1)
    out = np.full((1, 1, 40, 48), 7.0, np.float32)
    ref.powder_normalize(img, mask, out=out)
    valid = np.isfinite(img[0]) & (mask == 0)
    x = np.log1p(img[0][valid].astype(np.float64)).astype(np.float32).astype(np.float64)
    q = np.floor(x * 1024).astype(int)
    srt = np.sort(q)
    m = srt[len(srt) // 2]  # the upper median's bin
    dev = np.sort(np.abs(q - m))
    d = dev[len(dev) // 2]  # bins m − d … m + d hold more than half of the pixels
    centre, scale = (m + 0.5) / 1024, 1.4826 * max(d / 1024, 0.01)
    want = np.zeros((40, 48), np.float32)
    want[:37, :45][valid] = np.arcsinh((x - centre) / scale)
    np.testing.assert_allclose(out[0, 0], want, rtol=1e-6, atol=1e-6)
    assert out[0, 0, 37:].max() == 0 and out[0, 0, :, 45:].max() == 0  # padding
    assert out[0, 0, 4, 5] > 4 and abs(np.median(out[0, 0][:37, :45][valid])) < 0.5


@pytest.mark.parametrize("impl", ["cpu", CUDA])
@pytest.mark.parametrize("dtype", [np.float32, np.uint16])
def test_normalize_matches_reference(impl, dtype):
    img, mask = _frames()
    if dtype == np.uint16:
        img = np.nan_to_num(img, nan=0).astype(np.uint16)
    want = ref.powder_normalize(img, mask, out=np.zeros((2, 1, 40, 48), np.float32))
    got = _run("powder_normalize", impl, img, mask, out=np.full((2, 1, 40, 48), 3.0, np.float32))
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=2e-6)
    nomask = ref.powder_normalize(img, None, out=np.zeros((2, 1, 37, 45), np.float32))
    np.testing.assert_allclose(_run("powder_normalize", impl, img, None, out=np.zeros((2, 1, 37, 45), np.float32)),
                               nomask, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize("impl", ["reference", "cpu", CUDA])
def test_normalize_frame_without_valid_pixels_is_zero(impl):
    img = np.full((1, 8, 8), np.nan, np.float32)
    got = _run("powder_normalize", impl, img, None, out=np.ones((1, 1, 8, 8), np.float32))
    assert not got.any()


@pytest.mark.parametrize("impl", ["reference", "cpu", CUDA])
def test_spot_mask(impl):
    rng = np.random.default_rng(1)
    lo = rng.normal(0, 2, (2, 9, 11)).astype(np.float32)
    mask = np.zeros((9, 11), np.uint8)
    mask[2] = 4
    got = _run("spot_mask", impl, lo, mask, out=np.zeros(lo.shape, bool), threshold=0.7)
    p = 1 / (1 + np.exp(-lo.astype(np.float64)))
    want = (p > 0.7) & (mask == 0)[None]
    np.testing.assert_array_equal(got, want)
    assert 0 < want.mean() < 1


def _components_by_flood(mask, connectivity):
    """Component sizes per pixel by a breadth-first flood fill written here (independent of the reference)."""
    h, w = mask.shape
    size = np.zeros((h, w), int)
    seen = np.zeros((h, w), bool)
    steps = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)
             and (connectivity == 8 or dy == 0 or dx == 0)]
    for i in range(h):
        for j in range(w):
            if mask[i, j] and not seen[i, j]:
                comp, todo = [], [(i, j)]
                seen[i, j] = True
                while todo:
                    y, x = todo.pop()
                    comp.append((y, x))
                    for dy, dx in steps:
                        yy, xx = y + dy, x + dx
                        if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not seen[yy, xx]:
                            seen[yy, xx] = True
                            todo.append((yy, xx))
                for y, x in comp:
                    size[y, x] = len(comp)
    return size


@pytest.mark.parametrize("impl", ["reference", "cpu", CUDA])
@pytest.mark.parametrize("connectivity", [4, 8])
def test_remove_small_components(impl, connectivity):
    rng = np.random.default_rng(2)
    masks = rng.random((2, 24, 31)) < 0.3
    masks[1, 5:15, 3] = True  # a long thin one
    masks[1, 5, 3:20] = True
    for k in (1, 3, 5):
        got = _run("remove_small_components", impl, masks, out=np.zeros(masks.shape, bool), min_size=k,
                   connectivity=connectivity)
        want = np.stack([(_components_by_flood(m, connectivity) >= max(k, 1)) & m for m in masks])
        np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < masks.sum()  # something was removed, something kept


def test_remove_small_components_hand_case():
    m = np.zeros((1, 6, 6), bool)
    m[0, 0, 0] = True  # single pixel
    m[0, 2, 2] = m[0, 3, 3] = True  # diagonal pair: one component with 8-connectivity, two with 4
    out = ref.remove_small_components(m, out=np.zeros_like(m), min_size=2, connectivity=8)
    assert out.sum() == 2 and out[0, 2, 2] and out[0, 3, 3]
    out4 = ref.remove_small_components(m, out=np.zeros_like(m), min_size=2, connectivity=4)
    assert not out4.any()


def test_tiles_round_trip():
    rng = np.random.default_rng(4)
    frame = rng.random((1, 1, 20, 28)).astype(np.float32)
    ys, xs = [0, 8], [0, 10, 16]
    tiles = ref.extract_tiles(frame, out=np.zeros((6, 1, 12, 12), np.float32), starts_y=ys, starts_x=xs)
    np.testing.assert_array_equal(tiles[4, 0], frame[0, 0, 8:20, 10:22])
    logits = np.concatenate([np.zeros_like(tiles), tiles], axis=1)  # spot − background = the tile itself
    cores_y, cores_x = [(0, 10), (10, 20)], [(0, 11), (11, 19), (19, 28)]
    out = ref.stitch_logits(logits, out=np.zeros((1, 19, 27), np.float32), starts_y=ys, starts_x=xs,
                            cores_y=cores_y, cores_x=cores_x)
    np.testing.assert_array_equal(out[0], frame[0, 0, :19, :27])


@pytest.mark.cudasim
def test_tile_ops_on_torch_tensors():
    torch = pytest.importorskip("torch")
    from gixdrt.kernels.cuda import powder as dev

    rng = np.random.default_rng(5)
    frame = rng.random((1, 1, 20, 28)).astype(np.float32)
    ys, xs = [0, 8], [0, 10, 16]
    want = ref.extract_tiles(frame, out=np.zeros((6, 1, 12, 12), np.float32), starts_y=ys, starts_x=xs)
    got = dev.extract_tiles(torch.from_numpy(frame), out=torch.zeros(6, 1, 12, 12), starts_y=ys, starts_x=xs)
    np.testing.assert_array_equal(got.numpy(), want)
    logits = rng.random((6, 2, 12, 12)).astype(np.float32)
    kw = dict(starts_y=ys, starts_x=xs, cores_y=[(0, 10), (10, 20)], cores_x=[(0, 11), (11, 19), (19, 28)])
    want = ref.stitch_logits(logits, out=np.zeros((1, 19, 27), np.float32), **kw)
    got = dev.stitch_logits(torch.from_numpy(logits), out=torch.zeros(1, 19, 27), **kw)
    np.testing.assert_array_equal(got.numpy(), want)


def test_logit_threshold_checks():
    assert ref.logit(0.5) == 0.0 and math.isclose(ref.logit(0.9), math.log(9))
    with pytest.raises(ValueError, match="threshold"):
        ref.logit(1.0)


# ---- ring channel --------------------------------------------------------------------------------------------------
def _ring_case():
    """A 6×7 frame with three rings given by hand: ring 0 = values 1…11 (median 6, MAD 3), ring 1 = 4 values
    (fewer than min_pixels: zero), ring 2 = twelve values, eleven of them 50 and one NaN and one 80 (MAD 0 →
    the floor min_scale)."""
    img = np.zeros((1, 6, 7), np.float32)
    flat = img.reshape(-1)
    r0 = np.arange(0, 11)
    flat[r0] = np.arange(1, 12)
    r1 = np.arange(11, 15)
    flat[r1] = [5, 6, 7, 8]
    r2 = np.arange(15, 28)
    flat[r2] = 50
    flat[r2[3]] = np.nan
    flat[r2[7]] = 80
    pixels = np.concatenate([r0, r1, r2]).astype(np.int32)
    ptr = np.array([0, 11, 15, 28], np.int64)
    return img, pixels, ptr


@pytest.mark.parametrize("impl", ["reference", "cpu"])
def test_ring_normalize_by_hand(impl):
    img, pixels, ptr = _ring_case()
    out = np.full((1, 2, 8, 9), 7.0, np.float32)
    got = _run("ring_normalize", impl, img, out=out, pixels=pixels, ptr=ptr, channel=1, min_pixels=10,
               min_scale=2.0)
    want = np.zeros((8, 9))
    z = want[:6, :7].reshape(-1)
    z[:11] = np.arcsinh((np.arange(1, 12) - 6.0) / (1.4826 * 3.0))
    z[15:28] = 0.0  # value 50 = the median
    z[15 + 7] = np.arcsinh(30.0 / 2.0)  # MAD 0: the floor
    want[:6, :7] = z.reshape(6, 7)
    np.testing.assert_allclose(got[0, 1], want, rtol=1e-6, atol=1e-6)
    assert (got[0, 0] == 7.0).all()  # the other channel is left as it is
    assert got[0, 1].reshape(-1)[15 + 3] == 0.0  # NaN pixel


def test_ring_normalize_even_count_median():
    img = np.array([[[1, 2, 3, 10]]], np.float32)
    out = ref.ring_normalize(img, out=np.zeros((1, 1, 1, 4), np.float32), pixels=np.arange(4), ptr=np.array([0, 4]),
                             channel=0, min_pixels=1, min_scale=0.1)
    med = 2.5
    mad = np.median(np.abs(np.array([1, 2, 3, 10]) - med))  # 0.5, 0.5, 1.5, 7.5 → 1.0
    np.testing.assert_allclose(out[0, 0, 0], np.arcsinh((np.array([1, 2, 3, 10]) - med) / (1.4826 * mad)),
                               rtol=1e-6)


def _ring_frame(dtype, seed=3):
    from gixdrt.powder.classical import RingIndex
    from gixdrt.sim.powder import PowderSimConfig, PowderSimulator

    f = PowderSimulator(PowderSimConfig(), seed=seed, size=(96, 112)).frame(1)
    idx = RingIndex.from_geometry(f.geometry, f.detector_mask)
    img = f.image[None].astype(np.float64 if dtype is float else dtype)
    if dtype is float:
        img = img * 0.37 + 0.1  # not integers: the selection path of the statistics
        img[0, 4, :30] = np.nan
    return img, idx


@pytest.mark.parametrize("dtype", [np.float32, np.uint16, float])
def test_ring_normalize_cpu_matches_reference(dtype):
    img, idx = _ring_frame(dtype)
    want = ref.ring_normalize(img, out=np.zeros((1, 2, 96, 112), np.float32), pixels=idx.pixels, ptr=idx.ptr)
    got = _run("ring_normalize", "cpu", img, out=np.full((1, 2, 96, 112), 5.0, np.float32), pixels=idx.pixels,
               ptr=idx.ptr)
    np.testing.assert_allclose(got[:, 1], want[:, 1], rtol=1e-6, atol=1e-6)
    assert np.abs(want[:, 1]).max() > 3 and (want[:, 1] != 0).mean() > 0.3  # spots and rings: not all zero


@pytest.mark.cudasim
@pytest.mark.parametrize("dtype", [np.float32, float])
def test_ring_normalize_device_version_on_torch_tensors(dtype):
    torch = pytest.importorskip("torch")
    from gixdrt.kernels.cuda import powder as dev

    img, idx = _ring_frame(dtype)
    want = ref.ring_normalize(img, out=np.zeros((1, 2, 100, 112), np.float32), pixels=idx.pixels, ptr=idx.ptr)
    got = dev.ring_normalize(torch.from_numpy(img), out=torch.full((1, 2, 100, 112), 5.0),
                             pixels=torch.from_numpy(idx.pixels), ptr=torch.from_numpy(idx.ptr))
    np.testing.assert_allclose(got[:, 1].numpy(), want[:, 1], rtol=1e-6, atol=1e-6)
    assert (got[:, 0] == 5.0).all()


def test_ring_normalize_checks():
    img, pixels, ptr = _ring_case()
    with pytest.raises(ValueError, match="channel 2"):
        ref.ring_normalize(img, out=np.zeros((1, 2, 6, 7), np.float32), pixels=pixels, ptr=ptr, channel=2)
    with pytest.raises(ValueError, match="min_scale"):
        ref.ring_normalize(img, out=np.zeros((1, 2, 6, 7), np.float32), pixels=pixels, ptr=ptr, min_scale=0)
