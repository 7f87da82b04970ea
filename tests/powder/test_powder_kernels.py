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
