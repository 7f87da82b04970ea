"""The paper mode (gixdrt.sim.paper): determinism, the §8 label facts, the image's range and dark areas, I/O."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gixdrt.sim import PaperSimConfig, Simulator, load_npz, save_npz, simulate
from gixdrt.sim.paper import _blur, _draw_labels, _hist_eq, render_peaks

N_IMAGES = 12  # ~1 s in all


@pytest.fixture(scope="module")
def samples():
    sim = Simulator(PaperSimConfig(), seed=31)
    return [sim.sample(i) for i in range(N_IMAGES)]


def _limits(r: float, slope: float, ratio: float) -> tuple[float, float]:
    """§8 angle limits, written out per radius (independent of the vectorised code)."""
    X = 512 * math.sin(math.pi / 4 - ratio)
    Y = 512 * math.cos(math.pi / 4 - ratio)
    upper = 512.0 if r <= Y else 512 * math.asin(Y / r) / (math.pi / 2)
    lower = max(r * slope, (512 * math.acos(X / r) / (math.pi / 2)) if r > X else 0.0)
    return lower, upper


def test_deterministic_per_seed_and_index():
    a = Simulator(PaperSimConfig(), seed=5)
    b = Simulator(PaperSimConfig(), seed=5)
    s3 = a.sample(3)
    for i in range(3):  # another instance, another order: image 3 is the same
        b.sample(i)
    t3 = b.sample(3)
    assert np.array_equal(s3.image, t3.image) and np.array_equal(s3.boxes, t3.boxes)
    assert s3.info == t3.info
    assert not np.array_equal(s3.image, a.sample(4).image)
    assert not np.array_equal(s3.image, Simulator(PaperSimConfig(), seed=6).sample(3).image)


def test_image_is_network_input_in_unit_range(samples):
    for s in samples:
        assert s.image.shape == (512, 512) and s.image.dtype == np.float32
        assert float(s.image.min()) == 0.0 and float(s.image.max()) == 1.0
        assert np.isfinite(s.image).all()


def test_labels_follow_the_facts(samples):
    cfg = PaperSimConfig()
    for s in samples:
        b, p = s.boxes, s.peaks
        k = len(b)
        assert 1 <= k <= 200 and s.info["n_peaks_drawn"] <= 200
        x, sig, y, sa = (p[n].astype(np.float64) for n in ("x", "sigma_x", "y", "sigma_y"))
        assert np.all((x >= 70) & (x <= 500))
        assert np.all(np.diff(x) >= 0)  # sorted by x
        # radial ±1σ; σ = Poisson(50·w_c)/50 is a multiple of 1/50
        np.testing.assert_allclose(b[:, 0], x - sig, atol=1e-3)
        np.testing.assert_allclose(b[:, 2], x + sig, atol=1e-3)
        np.testing.assert_allclose(sig * 50, np.round(sig * 50), atol=1e-3)
        assert np.all((sa >= 40) & (sa <= 500)) and np.all((y >= -20) & (y <= 532))
        # angular ±2σ_a clipped to the angle limits at the centre's q, then the keep rule
        for j in range(k):
            lo, up = _limits(x[j], s.info["limit_slope"], s.info["limit_ratio"])
            y0, y1 = max(y[j] - 2 * sa[j], lo), min(y[j] + 2 * sa[j], up)
            assert b[j, 1] == pytest.approx(y0, abs=2e-3) and b[j, 3] == pytest.approx(y1, abs=2e-3)
            h = y1 - y0
            assert h >= 40 - 1e-3 and y[j] - y0 > -h / 2 and y[j] < y1
        assert np.all(b[:, 1] >= 0) and np.all(b[:, 3] <= 512) and np.all(b[:, 0] >= 0) and np.all(b[:, 2] <= 511)
        # no two kept peaks overlap: IoU of the NMS boxes [x ± 2.5σ, y ± 2σ_a] ≤ 0.001
        nb = np.stack([x - 2.5 * sig, y - 2 * sa, x + 2.5 * sig, y + 2 * sa], 1)
        for i in range(k):
            for j in range(i + 1, k):
                iw = max(0.0, min(nb[i, 2], nb[j, 2]) - max(nb[i, 0], nb[j, 0]))
                ih = max(0.0, min(nb[i, 3], nb[j, 3]) - max(nb[i, 1], nb[j, 1]))
                inter = iw * ih
                union = np.prod(nb[i, 2:] - nb[i, :2]) + np.prod(nb[j, 2:] - nb[j, :2]) - inter
                assert inter / union <= cfg.nms_iou + 1e-9
        # intensities: U(5, 20), × 2.5 near q = 0 or for narrow peaks
        amp = p["amplitude"].astype(np.float64)
        boosted = (x < 160) | (sig < 2)
        assert np.all((amp[boosted] >= 12.5 - 1e-4) & (amp[boosted] <= 50 + 1e-4))
        assert np.all((amp[~boosted] >= 5 - 1e-4) & (amp[~boosted] <= 20 + 1e-4))


def test_labels_per_image_match_the_paper_on_average():
    # The paper: 175,344 peaks on 10,000 images, 17.5 per image. 300 label draws: standard error ≈ 0.6.
    cfg = PaperSimConfig()
    rng = np.random.default_rng(2)
    n = []
    for _ in range(300):
        slope, ratio = rng.uniform(0, 0.1), rng.uniform(-0.05, 0.05)
        n.append(int(_draw_labels(cfg, rng, slope, ratio).kept.sum()))
    assert 15.0 < float(np.mean(n)) < 20.0 and min(n) >= 1


def test_dark_areas_are_zero_before_normalisation():
    # blur, histogram equalisation and clipping act after the dark step and may lift zeros: switch them off
    cfg = PaperSimConfig(p_blur=0, p_hist_eq=0, p_clip=0, p_gaps=0)
    sim = Simulator(cfg, seed=9, aux=True)
    for i in range(4):
        s = sim.sample(i)
        slope, ratio = s.info["limit_slope"], s.info["limit_ratio"]
        lims = np.array([_limits(float(r), slope, ratio) for r in range(512)])
        rows = np.arange(512)[:, None]
        outside = (rows < lims[None, :, 0]) | (rows > lims[None, :, 1])
        assert outside.any() and (~outside).any()
        np.testing.assert_array_equal(s.valid, ~outside)
        assert np.all(s.counts[outside] == 0) and np.all(s.image[outside] == 0)
        assert s.counts.min() == 0  # so the final min–max keeps them at exactly 0


def test_detector_gaps_are_bands_of_constant_qz():
    cfg = PaperSimConfig(p_gaps=1.0, p_blur=0, p_hist_eq=0, p_clip=0)
    sim = Simulator(cfg, seed=4, aux=True)
    seen = 0
    for i in range(6):
        s = sim.sample(i)
        xs, ys = np.meshgrid(np.arange(512.0), np.arange(512.0))
        qz = xs * np.cos((511 - ys) * np.pi / 1024)  # the row-flipped grid
        assert 1 <= len(s.info["gaps"]) <= 2
        if len(s.info["gaps"]) == 2:
            assert abs(s.info["gaps"][0][0] - s.info["gaps"][1][0]) >= 100
        for centre, half in s.info["gaps"]:
            assert 130 <= centre <= 280 and 3 <= half <= 6
            band = np.abs(qz - centre) < half
            assert not s.valid[band].any() and np.all(s.counts[band] == 0)
            seen += int(band.sum())
    assert seen > 0


@pytest.mark.parametrize("power", [2, 4])
def test_peaks_against_the_formula(power):
    rng = np.random.default_rng(power)
    k = 5
    x, sig, inten = rng.uniform(70, 500, k), rng.uniform(0.8, 5, k), rng.uniform(5, 20, k)
    y, sa = rng.uniform(-20, 532, k), rng.uniform(40, 500, k)
    xx, yy = np.meshgrid(np.arange(512.0), np.arange(512.0))  # [row = y, column = x]
    ref = sum(inten[j] * np.exp(-np.abs(xx - x[j]) ** power / (2 * sig[j] ** power) - (yy - y[j]) ** 2 / (2 * sa[j] ** 2))
              for j in range(k))
    np.testing.assert_allclose(render_peaks(x, sig, inten, y, sa, power), ref, rtol=1e-9, atol=1e-10 * ref.max())


def test_blur_and_histogram_equalisation_against_naive_references():
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, size=(20, 30))
    kernel = np.ones((3, 3))
    kernel[1, 1] = 0.3
    pad = np.pad(img, 1)
    ref = sum(kernel[a, b] * pad[a : a + 20, b : b + 30] for a in range(3) for b in range(3))
    np.testing.assert_allclose(_blur(img, 0.3), ref, rtol=1e-12)
    hist, edges = np.histogram(img, 1000, range=(img.min(), img.max()))
    cdf = np.cumsum(hist) / hist.sum()
    np.testing.assert_allclose(_hist_eq(img, 1000), np.interp(img, (edges[:-1] + edges[1:]) / 2, cdf), atol=1e-12)


def test_other_sizes_are_refused():
    with pytest.raises(ValueError, match="512x512 images only"):
        Simulator(PaperSimConfig(), seed=0, size=(512, 1024))


def test_config_round_trip_and_validation():
    cfg = PaperSimConfig(n_peaks=[3, 9], p_blur=0.1)
    assert cfg.n_peaks == (3, 9)
    assert PaperSimConfig.from_dict(cfg.to_dict()) == cfg
    assert PaperSimConfig().n_peaks == (2, 200) and PaperSimConfig().min_height == 40.0
    with pytest.raises(ValueError, match="unknown paper-mode simulator parameter"):
        PaperSimConfig.from_dict({"n_peak": (1, 2)})
    with pytest.raises(ValueError, match="p_blur"):
        PaperSimConfig(p_blur=1.5)
    with pytest.raises(ValueError, match="sigma_angle"):
        PaperSimConfig(sigma_angle=(10.0, 5.0))


def test_npz_round_trip_keeps_the_mode(tmp_path):
    batch = simulate(2, seed=3, config=PaperSimConfig(n_peaks=(2, 10)))
    back = load_npz(save_npz(tmp_path / "p.npz", batch))
    assert back.config == batch.config and isinstance(back.config, PaperSimConfig)
    assert np.array_equal(back.images, batch.images) and back.info == batch.info
