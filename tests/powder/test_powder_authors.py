"""The published recipe (gixdrt.powder.authors): the disk equalisation against its NumPy specification, the tile
layout, the stitch weights, and BatchNorm in training mode."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.powder.authors import (
    BG_THRESHOLD,
    BORDER_WEIGHT,
    authors_mask,
    authors_normalize,
    disk_half_widths,
    equalize_disk,
    equalize_disk_reference,
    extract_tiles,
    stitch_tiles,
    tile_probabilities,
    tile_starts,
)


@pytest.mark.parametrize("shape,radius", [((40, 57), 5), ((40, 57), 32), ((70, 90), 32), ((1, 9), 3), ((33, 1), 4)])
def test_equalize_matches_reference(shape, radius):
    img = np.random.default_rng(sum(shape) + radius).integers(0, 256, shape).astype(np.uint8)
    np.testing.assert_array_equal(equalize_disk(img, radius), equalize_disk_reference(img, radius))


def test_equalize_by_hand():
    # constant image: every neighbour ≤ centre → 255; a single bright pixel in a 3×3 image with radius 1:
    # the centre's disk holds 5 pixels, all ≤ it → 255; a corner's disk holds 3, of which 3 ≤ 0 → 255 as well,
    # the edge middle (0, 1) holds 4 with the bright one above 0 → ⌊255·3/4⌋ = 191
    assert (equalize_disk(np.full((20, 30), 7, np.uint8), 4) == 255).all()
    img = np.zeros((3, 3), np.uint8)
    img[1, 1] = 200
    out = equalize_disk(img, 1)
    assert out[1, 1] == 255 and out[0, 0] == 255 and out[0, 1] == 191
    assert disk_half_widths(2).tolist() == [0, 1, 2, 1, 0]


def test_normalize_range():
    rng = np.random.default_rng(1)
    frame = rng.poisson(50.0, (96, 80)).astype(np.float32)
    out = authors_normalize(frame, radius=8)
    assert out.dtype == np.float32 and out.shape == frame.shape
    assert out.min() >= 0.0 and out.max() < 1.0
    assert set(np.unique(out * 256).astype(int)) <= set(range(256))  # uint8 levels / 256


def test_tile_layout():
    s = tile_starts(2880)
    assert len(s) ** 2 == 484 and s[-1] == 2880 - 256 and s[-2] == 2560
    assert all(b - a == 128 for a, b in zip(s[:-2], s[1:-1]))
    assert tile_starts(512) == [0, 128, 256]  # 3 × 3 = 9 tiles, the last one already flush
    assert tile_starts(576) == [0, 128, 256, 320]  # moved flush: 384 + 256 would pass the edge
    with pytest.raises(ValueError, match="256"):
        tile_starts(200)
    img = np.arange(576 * 512, dtype=np.float32).reshape(576, 512)
    tiles, ys, xs = extract_tiles(img)
    assert tiles.shape == (12, 1, 256, 256) and (ys, xs) == ([0, 128, 256, 320], [0, 128, 256])
    np.testing.assert_array_equal(tiles[3 * 3 + 2, 0], img[320:576, 256:512])


def test_stitch_weights():
    h, w = 576, 512
    ys, xs = tile_starts(h), tile_starts(w)
    vals = np.stack([np.full((256, 256), k + 1.0, np.float32) for k in range(len(ys) * len(xs))])
    out = stitch_tiles(vals, ys, xs, (h, w))
    tol = 4 * BORDER_WEIGHT * len(vals)
    for a, y in enumerate(ys[:2]):  # their centre lies in no other tile's centre part (the flush tile at 320
        # covers rows 352…544 with weight 1, so the centre 384 of the tile at 256 is shared)
        for b, x in enumerate(xs):
            assert abs(out[y + 128, x + 128] - vals[a * len(xs) + b, 0, 0]) <= tol
    # the frame's corners: covered by one tile's border only → exactly that tile's value
    assert out[0, 0] == 1.0 and out[h - 1, w - 1] == vals[-1, 0, 0]
    # (192, 100): row 192 lies in the centre parts of the tile rows starting at 0 (32…224) and 128 (160…352),
    # column 100 only in the first tile column (the next starts at 128): the mean of tiles (0, 0) and (1, 0)
    assert abs(out[192, 100] - (vals[0, 0, 0] + vals[3, 0, 0]) / 2) <= tol


@pytest.fixture(scope="module")
def net():
    torch = pytest.importorskip("torch")
    from gixdrt.model.unet import UNet

    torch.manual_seed(0)
    m = UNet(depth=3)
    with torch.no_grad():  # running statistics far from a batch's own
        m.train()
        for _ in range(3):
            m(torch.randn(2, 1, 32, 32) * 3 + 2.0)
    return m.eval()


def test_batchnorm_training_mode(net):
    import torch

    x = np.random.default_rng(2).random((5, 1, 32, 32), dtype=np.float32)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = tile_probabilities(x, net)
    assert not net.training  # the caller's module is left as it was
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    ref = {}
    for mode in (True, False):
        import copy

        m = copy.deepcopy(net).train(mode)
        with torch.no_grad():
            ref[mode] = torch.softmax(m(torch.from_numpy(x)), dim=1)[:, 0].numpy()
    np.testing.assert_allclose(got, ref[True], atol=1e-6)
    np.testing.assert_allclose(tile_probabilities(x, net, batch_norm="running"), ref[False], atol=1e-6)
    assert np.abs(ref[True] - ref[False]).max() > 1e-2  # the flag matters for these weights
    # batch statistics: the same tiles in batches of 2 give another answer
    assert np.abs(tile_probabilities(x, net, batch=2) - got).max() > 1e-4


def test_authors_mask_composes_the_steps(net):
    rng = np.random.default_rng(3)
    frame = rng.poisson(100.0, (256, 384)).astype(np.float32)  # 1 × 2 tiles (keeps the test short)
    frame[200:204, 300:303] += 5000.0
    t: dict[str, float] = {}
    spots = authors_mask(frame, net, timings=t)
    assert spots.shape == frame.shape and spots.dtype == np.bool_
    assert set(t) == {"normalize", "tiles", "network", "stitch", "threshold"} and all(v >= 0 for v in t.values())
    tiles, ys, xs = extract_tiles(authors_normalize(frame))
    assert tiles.shape[0] == 2
    p = stitch_tiles(tile_probabilities(tiles, net), ys, xs, frame.shape)
    np.testing.assert_array_equal(spots, p < BG_THRESHOLD)
