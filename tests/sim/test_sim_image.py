"""Images: dtype, range, sizes, dark regions."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.sim import SimConfig, Simulator, simulate

NO_MASKS = {"p_wedge": 0.0, "p_corner_inplane": 0.0, "p_corner_vertical": 0.0, "p_beamstop": 0.0, "p_holder": 0.0,
                "p_horizon": 0.0, "p_gaps": 0.0}


@pytest.mark.parametrize("size", [(512, 512), (512, 1024)])
def test_dtype_range_and_size(size):
    b = simulate(2, seed=3, size=size)
    assert b.images.shape == (2, *size) and b.images.dtype == np.float32
    assert b.size == size
    for img in b.images:
        assert np.isfinite(img).all()
        assert img.min() == 0.0 and img.max() == 1.0
    for boxes in b.boxes:
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 4


def test_other_sizes_and_bad_sizes():
    s = Simulator(seed=0, size=(64, 96)).sample(0)
    assert s.image.shape == (64, 96)
    with pytest.raises(ValueError):
        Simulator(size=(8, 512))
    with pytest.raises(ValueError):
        Simulator(size=(512,))  # type: ignore[arg-type]


def test_dark_regions_are_dark():
    sim = Simulator(seed=12, aux=True)
    checked = 0
    for i in range(12):
        s = sim.sample(i)
        dark = ~s.valid
        if not dark.any():
            continue
        checked += 1
        assert np.all(s.counts[dark] == 0.0)  # as the polar remap of real data gives
        values = np.unique(s.image[dark])
        assert len(values) == 1  # one grey level, like the real frame's
        assert np.mean(s.image[s.valid] < values[0]) < 0.25  # among the darkest pixels
    assert checked >= 8


def test_dark_is_black_without_read_noise():
    sim = Simulator(SimConfig(p_read_noise=0.0, p_wedge=1.0), seed=1, aux=True)
    for i in range(3):
        s = sim.sample(i)
        assert (~s.valid).any()
        assert s.counts.min() >= 0.0
        assert np.all(s.image[~s.valid] == 0.0)


def test_wedge_sits_near_90_degrees_and_grows_with_q():
    cfg = SimConfig(**{**NO_MASKS, "p_wedge": 1.0, "wedge_offset": (0.0, 0.0), "wedge_strength": (0.2, 0.2)})
    s = Simulator(cfg, seed=0, aux=True).sample(0)
    dark_rows = (~s.valid).sum(axis=0)  # per |Q| column, all at the bottom (φ → 90°)
    assert dark_rows[0] <= 1 and dark_rows[-1] > 40
    assert np.all(np.diff(dark_rows) >= 0)
    assert np.all(s.valid[: 512 - dark_rows[-1] - 1, :])


@pytest.mark.parametrize(
    "which, corner",
    [("p_corner_inplane", "top-right"), ("p_corner_vertical", "bottom-right"), ("p_beamstop", "left")],
)
def test_each_geometry_region(which, corner):
    cfg = SimConfig(**{**NO_MASKS, which: 1.0, "corner_inplane": (0.7, 0.7), "corner_vertical": (0.7, 0.7)})
    s = Simulator(cfg, seed=0, aux=True).sample(0)
    dark = ~s.valid
    if corner == "top-right":  # high |Q|, low φ (row 0 = 0°)
        assert dark[0, -1] and not dark[-1, -1] and not dark[0, 0]
    elif corner == "bottom-right":  # high |Q|, high φ
        assert dark[-1, -1] and not dark[0, -1] and not dark[-1, 0]
    else:  # low |Q|
        assert dark[:, 0].all() and not dark[:, -1].any()


def test_no_masks_means_all_visible():
    s = Simulator(SimConfig(**NO_MASKS), seed=3, aux=True).sample(0)
    assert s.valid.all()
