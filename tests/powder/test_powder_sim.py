"""The powder frame generator: determinism per (seed, index), the documented ground-truth rule recomputed here,
the detector model, the geometry it reports, texture symmetry and the shifted variant."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gixdrt.sim.powder import (
    MASK_BEAMSTOP,
    MASK_GAP,
    PowderSimConfig,
    PowderSimulator,
    _texture,
    powder_frame,
)

SIZE = (256, 320)


@pytest.fixture(scope="module")
def frames():
    sim = PowderSimulator(seed=5, size=SIZE)
    return [sim.frame(i, aux=True) for i in range(12)]


def test_deterministic_per_seed_and_index():
    a = PowderSimulator(seed=3, size=SIZE)
    b = PowderSimulator(seed=3, size=SIZE)
    f7 = a.frame(7)
    b.frame(2)  # another frame first: no shared state
    g7 = b.frame(7)
    assert np.array_equal(f7.image, g7.image) and np.array_equal(f7.spots, g7.spots)
    assert np.array_equal(f7.detector_mask, g7.detector_mask) and f7.geometry == g7.geometry
    batch = a.frames([6, 7, 8])
    assert np.array_equal(batch[1].image, f7.image)
    assert np.array_equal(powder_frame(7, seed=3, size=SIZE).image, f7.image)
    assert not np.array_equal(a.frame(8).image, f7.image)
    assert not np.array_equal(PowderSimulator(seed=4, size=SIZE).frame(7).image, f7.image)


def test_outputs_types_and_ranges(frames):
    cfg = PowderSimConfig()
    for f in frames:
        assert f.image.shape == SIZE and f.image.dtype == np.float32
        assert f.spots.dtype == np.bool_ and f.detector_mask.dtype == np.uint8
        assert f.image.min() >= 0 and f.image.max() <= cfg.full_scale
        assert np.array_equal(f.image, np.rint(f.image))  # ADU are integers
        assert not (f.spots & (f.detector_mask != 0)).any()
        gaps = (f.detector_mask & MASK_GAP) != 0
        assert (f.image[gaps] == 0).all()
        assert f.geometry.shape == SIZE


def test_ground_truth_is_the_documented_rule(frames):
    cfg = PowderSimConfig()
    n_spot_px = 0
    for f in frames:
        read_ph = f.info["read_noise"] / f.info["gain"]
        powder = f.powder.astype(np.float64)
        spot = f.spot_photons.astype(np.float64)
        want = (spot > cfg.mask_sigma * np.sqrt(powder + read_ph**2)) & (spot >= cfg.mask_min_photons)
        want &= f.detector_mask == 0
        # float32 rounding at the threshold may flip a pixel exactly on it; none should differ by more
        diff = want != f.spots
        thr = cfg.mask_sigma * np.sqrt(powder + read_ph**2)
        assert np.all(np.abs(spot[diff] - np.maximum(thr[diff], 1.0)) <= 1e-4 * np.maximum(thr[diff], 1.0))
        n_spot_px += int(f.spots.sum())
        assert f.info["spot_pixels"] == int(f.spots.sum())
    assert n_spot_px > 200  # the frames do have spots


def test_counts_follow_the_detector_model(frames):
    # (image − offset)/gain estimates the expected photons where nothing clips
    ratios = []
    for f in frames:
        ok = (f.detector_mask == 0) & (f.image > 0) & (f.image < 65535)
        photons = (f.image[ok] - f.info["offset"]) / f.info["gain"]
        expected = (f.powder + f.spot_photons)[ok]
        ratios.append(photons.sum() / expected.sum())
    np.testing.assert_allclose(ratios, 1.0, atol=0.01)


def test_beam_stop_and_reported_geometry(frames):
    seen = 0
    for f in frames:
        bs = (f.detector_mask & MASK_BEAMSTOP) != 0
        if not bs.any():
            continue
        seen += 1
        cy, cx = f.info["beam_center"]
        assert bs[int(round(cy)), int(round(cx))]  # the stop covers the direct beam
        by, bx = f.geometry.beam_center
        assert (by, bx) == pytest.approx((cy, cx), abs=1e-6)
        # the powder image is darkest (transmission ≤ 5 %) under the stop
        assert f.powder[bs].mean() <= 0.05 * f.powder[~bs].mean() + 1e-6
    assert seen >= 6


def test_rings_lie_at_the_phase_d_spacings():
    from gixdrt.powder.calibrants import CALIBRANTS, d_spacings

    cfg = PowderSimConfig(calibrants=("CeO2",), p_random_phase=0.0, p_second_phase=0.0, p_texture=0.0, strain=(0, 0),
                          p_no_spots=1.0, p_hump=0.0, p_beamstop=0.0, p_gaps=0.0, ring_height=(50, 50),
                          ring_spread=(1.0, 1.0), tilt_deg=(0.0, 0.0))
    f = PowderSimulator(cfg, seed=1, size=(512, 512)).frame(0, aux=True)
    g = f.geometry
    tth = g.tth()
    d, _ = d_spacings(CALIBRANTS["CeO2"], float(g.d_spacing(tth.max())))
    ring = g.tth_of_d(d)
    # the radial profile's local maxima (powder/(solid angle)) sit within half a pixel of the rings
    step = g.pixel1 / g.dist
    bins = np.floor(tth / step).astype(int)
    prof = np.bincount(bins.ravel(), f.powder.ravel()) / np.maximum(np.bincount(bins.ravel()), 1)
    centers = (np.arange(prof.size) + 0.5) * step
    for t in ring[ring < tth.max() * 0.9]:
        k = int(t / step)
        lo, hi = max(k - 3, 0), min(k + 4, prof.size)
        peak = centers[lo + int(np.argmax(prof[lo:hi]))]
        assert abs(peak - t) <= 1.01 * step


def test_texture_is_centre_symmetric():
    rng = np.random.default_rng(0)
    cfg = PowderSimConfig()
    for _ in range(5):
        t = _texture(rng, cfg, n=1025)  # χ on [−π, π] in steps of 2π/1024: +π is 512 steps
        np.testing.assert_allclose(t[:513], t[512:], atol=1e-12)
        assert t.min() >= 0 and t.max() == pytest.approx(1.0)
        assert t.max() - t.min() > 0.1


def test_shifted_config_differs():
    base, shifted = PowderSimConfig(), PowderSimConfig.shifted()
    assert not set(base.calibrants) & set(shifted.calibrants)
    assert shifted.spot_size[1] > base.spot_size[1] and shifted.spot_amp[1] > base.spot_amp[1]
    assert shifted.gain != base.gain
    f = PowderSimulator(shifted, seed=2, size=SIZE).frame(0)
    assert f.image.shape == SIZE
    assert PowderSimConfig.from_dict(shifted.to_dict()) == shifted


def test_config_validation():
    with pytest.raises(ValueError, match="calibrants"):
        PowderSimConfig(calibrants=("Unobtainium",))
    with pytest.raises(ValueError, match="p_on_ring"):
        PowderSimConfig(p_on_ring=1.5)
    with pytest.raises(ValueError, match="spot_size"):
        PowderSimConfig(spot_size=(5.0, 2.0))
    with pytest.raises(ValueError, match="unknown"):
        PowderSimConfig.from_dict({"nope": 1})
    with pytest.raises(ValueError, match="64"):
        PowderSimulator(size=(32, 32))


def test_varied_parameters(frames):
    # geometry, exposure and phases vary from frame to frame
    dists = {round(f.info["dist_m"], 6) for f in frames}
    pixels = {f.info["pixel_m"] for f in frames}
    assert len(dists) == len(frames) and len(pixels) >= 3
    assert len({tuple(f.info["phases"]) for f in frames}) >= 3
    assert max(f.info["n_textured"] for f in frames) > 0
    assert math.log10(max(f.info["exposure"] for f in frames) / min(f.info["exposure"] for f in frames)) > 1


@pytest.mark.parametrize("shape", ["gauss", "arc", "cluster"])
def test_spot_patch_is_large_enough(shape):
    """A smooth spot falls below one photon (the ground truth's floor) before its patch ends, however bright."""
    from gixdrt.sim.powder import _add_spot

    cfg = PowderSimConfig(spot_size=(15.0, 15.0), spot_aspect=(1.0, 1.0))
    for seed in range(3):
        spot = np.zeros((600, 600), np.float32)
        _add_spot(np.random.default_rng(seed), cfg, spot, 300.3, 299.6, 1e7, shape, 0.4)
        rows = np.flatnonzero(spot.any(axis=1))
        cols = np.flatnonzero(spot.any(axis=0))
        assert spot.max() == pytest.approx(1e7, rel=1e-6)
        edge = np.concatenate([spot[rows[0]], spot[rows[-1]], spot[:, cols[0]], spot[:, cols[-1]]])
        assert edge.max() < 1.0
