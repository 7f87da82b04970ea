"""The simulator: one polar GIXD image with its ground-truth boxes from (seed, index).

Image i of seed s draws all its randomness from ``np.random.default_rng(SeedSequence(s, spawn_key=(i,)))``
(the i-th child of ``SeedSequence(s)``), so it is the same whichever worker makes it and in whatever
order. Steps, in order (each optional step with its probability from :class:`SimConfig`):

1. geometry masks (visible region): missing wedge near φ = 90°, in-plane and vertical detector edges
   (dark corners at high |Q|), beam stop and its holder, sample horizon, detector module gaps;
2. background (relative units): constant floor, linear ramps, 2-D Perlin noise, broad Gaussian halos in
   |Q|, low-|Q| diffuse decay; normalised to mean 1;
3. peaks: 2-D Gaussians (radially pixel-averaged; optionally pseudo-Voigt), narrow in |Q|, full rings or
   Gaussian segments in φ, each angular profile multiplied by 1-D Perlin noise; log-uniform heights;
   centres uniform in |Q|, or (optional placements, off by default) cut by the last column or on a halo;
4. counts: λ = exposure·(background + peaks); Poisson noise (exact for λ < 12 by inversion with a
   counter-based splitmix64 stream keyed from the image's Generator, N(λ, λ) from its normals above),
   optional Gaussian read noise, optional low-|Q| angular oversampling (noise streaks along φ), hot
   pixels; dark regions set to exactly 0, as the polar remap of real data gives;
5. the real-data contrast chain (:func:`gixdrt.kernels.contrast`: min–max, log, 16-bit CLAHE, min–max),
   so the image is float32 in [0, 1] with min 0 and max 1.

Orientation as real polar images: row 0 is φ = 0° (in plane), row H − 1 is φ = 90°; column 0 is |Q| = 0.

Labels (one box per visible peak, (x0, y0, x1, y1) in pixel-centre coordinates, x = |Q| column,
y = φ row):

- x: true centre ± 1 σ_x; y: the angular extent (segment centre ± 2 σ_φ, or 0–90° for rings) clipped to
  the image and to the first / last visible row of the centre column (gaps inside the extent are spanned);
- peaks with fewer than ``min_rows`` visible rows there are dropped;
- overlap rule: a new peak's centre is redrawn up to ``close_retries`` times while it falls within
  ``merge_sep``·max(σ_x) of an earlier peak (so close pairs are rare but do occur); peaks whose centres
  are still closer than ``merge_sep``·max(σ_x) with overlapping φ extents (transitively) become one
  label: centre weighted by integrated intensity, σ from the combined second moment (so the box covers
  both), union of the φ extents;
- faint rule: a label is dropped (its peak stays in the image) when its box-sum SNR = S/√V is below
  ``min_snr`` or below ``min_row_snr``·√(visible rows), S = expected peak counts summed over the visible
  box pixels (the label's own peaks only), V = the summed variance of all counts there (λ + read noise²,
  ×H/m per column where the angular oversampling correlates the noise). The second condition keeps long,
  very faint rings that only a column average would reveal out of the labels.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

from .. import kernels
from . import _kernels as K
from .config import PEAK_FIELDS, SimConfig

__all__ = ["PEAK_FIELDS", "SimBatch", "SimDataset", "SimSample", "Simulator", "image_rng", "simulate"]


DEFAULT_SIZE = (512, 512)


def image_rng(seed: int, index: int) -> np.random.Generator:
    """The Generator of image ``index`` of ``seed``: the index-th child of ``SeedSequence(seed)``."""
    if index < 0:
        raise ValueError(f"image index must be ≥ 0, got {index}")
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index),)))


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"size must be (H, W), got {size!r}") from None
    if h < 16 or w < 16:
        raise ValueError(f"size must be at least 16×16, got {(h, w)}")
    return h, w


@dataclass
class SimSample:
    """One simulated image. ``counts`` / ``valid`` are filled only when asked for (``aux=True``)."""

    index: int
    image: np.ndarray  # float32[H, W] in [0, 1]
    boxes: np.ndarray  # float32[K, 4] (x0, y0, x1, y1)
    peaks: dict[str, np.ndarray]  # PEAK_FIELDS → [K]
    info: dict[str, Any]  # image-level parameters (exposure, which steps ran, ...)
    counts: np.ndarray | None = None  # float32[H, W] counts before the contrast chain (paper mode: before step 15)
    valid: np.ndarray | None = None  # bool[H, W]: False in the dark regions


@dataclass
class SimBatch:
    """n simulated images with their labels."""

    images: np.ndarray  # float32[n, H, W]
    boxes: list[np.ndarray]  # float32[K_i, 4] per image
    peaks: list[dict[str, np.ndarray]]  # PEAK_FIELDS → [K_i] per image
    info: list[dict[str, Any]]
    indices: np.ndarray  # int64[n]: the image indices within the seed's stream
    seed: int
    config: Any = field(default_factory=SimConfig)  # SimConfig or PaperSimConfig

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> SimSample:
        return SimSample(int(self.indices[i]), self.images[i], self.boxes[i], self.peaks[i], self.info[i])

    def __iter__(self) -> Iterator[SimSample]:
        return (self[i] for i in range(len(self)))

    @property
    def size(self) -> tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])

    @property
    def n_boxes(self) -> np.ndarray:
        return np.array([len(b) for b in self.boxes], np.int64)

    @classmethod
    def from_samples(cls, samples: Sequence[SimSample], seed: int, config: Any, size: tuple[int, int]) -> SimBatch:
        h, w = size
        images = np.empty((len(samples), h, w), np.float32)
        for k, s in enumerate(samples):
            images[k] = s.image
        return cls(
            images=images,
            boxes=[s.boxes for s in samples],
            peaks=[s.peaks for s in samples],
            info=[s.info for s in samples],
            indices=np.array([s.index for s in samples], np.int64),
            seed=int(seed),
            config=config,
        )


# -------------------------------------------------------------------------------------------------
# random helpers
# -------------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, r: Sequence[float]) -> float:
    return float(rng.uniform(r[0], r[1]))


def _lu(rng: np.random.Generator, r: Sequence[float]) -> float:
    return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))


def _ri(rng: np.random.Generator, r: Sequence[int]) -> int:
    return int(rng.integers(int(r[0]), int(r[1]) + 1))


def _p(rng: np.random.Generator, p: float) -> bool:
    return bool(rng.random() < p)


def _perlin1d(rng: np.random.Generator, n: int, freq: float, octaves: int) -> np.ndarray:
    """Multi-octave 1-D gradient noise on n samples, rescaled to [0, 1]."""
    out = np.zeros(n)
    amp = 1.0
    for o in range(octaves):
        f = freq * 2.0**o
        phase = float(rng.random())
        grads = rng.uniform(-1.0, 1.0, math.ceil(f + phase) + 2)
        tmp = np.zeros(n)
        K.perlin1d(n, f, phase, grads, tmp)
        out += amp * tmp
        amp *= 0.5
    lo, hi = out.min(), out.max()
    return (out - lo) / (hi - lo) if hi > lo else np.full(n, 0.5)


@dataclass(frozen=True)
class _Grid:
    h: int
    w: int
    x: np.ndarray  # float32[W] column index
    q: np.ndarray  # float32[W] x/(W − 1)
    rows: np.ndarray  # float64[H] row index
    cos: np.ndarray  # float32[H] cos φ
    sin: np.ndarray  # float32[H] sin φ


@lru_cache(maxsize=8)
def _grid(h: int, w: int) -> _Grid:
    phi = np.arange(h) * (np.pi / 2) / (h - 1)
    x = np.arange(w, dtype=np.float32)
    return _Grid(h, w, x, x / np.float32(w - 1), np.arange(h, dtype=np.float64),
                 np.cos(phi).astype(np.float32), np.sin(phi).astype(np.float32))


# -------------------------------------------------------------------------------------------------
# steps
# -------------------------------------------------------------------------------------------------
def _masks(cfg: SimConfig, rng: np.random.Generator, g: _Grid, info: dict) -> np.ndarray:
    """bool[H, W] visible region (False = dark)."""
    h, w = g.h, g.w
    dark = np.zeros((h, w), bool)
    u = g.cos[:, None] * g.x[None, :]  # detector-plane coordinates (column units) from the beam
    v = g.sin[:, None] * g.x[None, :]
    info["wedge"] = _p(rng, cfg.p_wedge)
    if info["wedge"]:
        s, c = _u(rng, cfg.wedge_strength), _u(rng, cfg.wedge_offset)
        dark |= g.cos[:, None] < (s * g.sin**2)[:, None] * g.q[None, :] + np.float32(c)
    info["corner_inplane"] = _p(rng, cfg.p_corner_inplane)
    if info["corner_inplane"]:
        dark |= u > np.float32(_u(rng, cfg.corner_inplane) * (w - 1))
    info["corner_vertical"] = _p(rng, cfg.p_corner_vertical)
    if info["corner_vertical"]:
        dark |= v > np.float32(_u(rng, cfg.corner_vertical) * (w - 1))
    info["beamstop"] = _p(rng, cfg.p_beamstop)
    if info["beamstop"]:
        r = _u(rng, cfg.beamstop_radius) * (w - 1)
        wob = 1.0 + 0.3 * (_perlin1d(rng, h, _lu(rng, (1.0, 4.0)), 2) - 0.5)
        dark |= g.x[None, :] < (r * wob).astype(np.float32)[:, None]
    info["holder"] = _p(rng, cfg.p_holder)
    if info["holder"]:
        half = _u(rng, cfg.holder_width) * (w - 1)
        theta = _u(rng, (0.0, np.pi / 2))
        s_rel = np.sin(np.arange(h) * (np.pi / 2) / (h - 1) - theta).astype(np.float32)
        dark |= np.abs(s_rel[:, None] * g.x[None, :]) < np.float32(half)
    info["horizon"] = _p(rng, cfg.p_horizon)
    if info["horizon"]:
        dark |= v < np.float32(_u(rng, cfg.horizon) * (w - 1))
    n_gaps = 0
    if _p(rng, cfg.p_gaps):
        n_gaps = _ri(rng, cfg.n_gaps)
        for _ in range(n_gaps):
            coord = u if _p(rng, 0.5) else v
            g0 = np.float32(_u(rng, cfg.gap_position) * (w - 1))
            gw = np.float32(_u(rng, cfg.gap_width))
            dark |= (coord >= g0) & (coord < g0 + gw)
    info["n_gaps"] = n_gaps
    return ~dark


def _background(cfg: SimConfig, rng: np.random.Generator, g: _Grid, info: dict) -> np.ndarray:
    """float32[H, W] ≥ 0, mean 1."""
    h, w = g.h, g.w
    bg = np.full((h, w), _u(rng, cfg.bg_floor), np.float32)
    yq = (g.rows / (h - 1)).astype(np.float32)
    info["ramp"] = _p(rng, cfg.p_ramp)
    if info["ramp"]:
        ax = _u(rng, cfg.ramp_amp) * (1 if _p(rng, 0.5) else -1)
        ay = _u(rng, cfg.ramp_amp) * (1 if _p(rng, 0.5) else -1)
        rx = (ax * g.q if ax >= 0 else -ax * (1 - g.q)).astype(np.float32)
        ry = (ay * yq if ay >= 0 else -ay * (1 - yq)).astype(np.float32)
        bg += rx[None, :]
        bg += ry[:, None]
    info["bg_noise"] = _p(rng, cfg.p_bg_noise)
    if info["bg_noise"]:
        amp = _lu(rng, cfg.bg_noise_amp)
        cy, cx = _lu(rng, cfg.bg_noise_cells), _lu(rng, cfg.bg_noise_cells)
        noise = np.zeros((h, w), np.float32)
        a = 1.0
        for o in range(_ri(rng, cfg.bg_noise_octaves)):
            fy, fx = cy * 2.0**o, cx * 2.0**o
            py, px = float(rng.random()), float(rng.random())
            angles = rng.uniform(0, 2 * np.pi, (math.ceil(fy + py) + 2, math.ceil(fx + px) + 2))
            K.perlin2d(noise, fy, fx, py, px, angles, a)
            a *= 0.5
        noise -= noise.min()
        top = float(noise.max())
        if top > 0:
            bg += noise * np.float32(amp / top)
    n_halo = 0
    halos: list[tuple[float, float]] = []
    if _p(rng, cfg.p_halo):
        n_halo = _ri(rng, cfg.n_halo)
        for _ in range(n_halo):
            xc = _u(rng, (0.0, w - 1.0))
            sig = _lu(rng, cfg.halo_sigma) * (w - 1)
            halos.append((xc, sig))
            amp = _lu(rng, cfg.halo_amp)
            slope = _u(rng, (-0.3, 0.3))
            prof = (amp * np.exp(-0.5 * ((g.x - xc) / sig) ** 2)).astype(np.float32)
            ang = (1.0 + slope * (2 * yq - 1)).astype(np.float32)
            bg += ang[:, None] * prof[None, :]
    info["n_halo"] = n_halo
    if halos:
        info["halos"] = [[round(xc, 3), round(sig, 3)] for xc, sig in halos]  # (centre, σ) in columns
    info["decay"] = _p(rng, cfg.p_decay)
    if info["decay"]:
        amp, ell = _lu(rng, cfg.decay_amp), _lu(rng, cfg.decay_length) * (w - 1)
        bg += (amp * np.exp(-g.x / ell)).astype(np.float32)[None, :]
    bg *= np.float32(1.0 / bg.mean(dtype=np.float64))
    return bg


@dataclass
class _Peaks:
    x: np.ndarray
    sigma: np.ndarray
    eta: np.ndarray
    amp: np.ndarray
    yc: np.ndarray  # NaN for rings
    sy: np.ndarray  # NaN for rings
    ring: np.ndarray
    ang: np.ndarray  # float32[K, H]
    spans: np.ndarray  # int64[K, 2]


def _draw_peaks(cfg: SimConfig, rng: np.random.Generator, g: _Grid, halos: Sequence[Sequence[float]] = ()) -> _Peaks:
    """Draw the peaks. The optional placements (``p_x_edge``, ``p_on_halo``) draw no random numbers when
    their probability is 0, so the default simulator's streams do not depend on them."""
    h, w = g.h, g.w
    n = _ri(rng, cfg.n_peaks)
    x = np.empty(n)
    sigma = np.empty(n)
    eta = np.zeros(n)
    amp = np.empty(n)
    yc = np.full(n, np.nan)
    sy = np.full(n, np.nan)
    ring = np.zeros(n, bool)
    ang = np.empty((n, h), np.float32)
    spans = np.empty((n, 2), np.int64)
    for k in range(n):
        s = _lu(rng, cfg.sigma_x)
        sigma[k] = s
        lo, hi = cfg.x_margin * s, w - 1 - cfg.x_margin * s
        if cfg.p_x_edge > 0 and _p(rng, cfg.p_x_edge):
            lo, hi = max(0.0, w - 1 - 2 * s), w - 1.0  # cut by the |Q| edge
        elif halos and cfg.p_on_halo > 0 and _p(rng, cfg.p_on_halo):
            xc, sig = halos[int(rng.integers(len(halos)))]
            lo, hi = max(lo, xc - sig), min(hi, xc + sig)  # on a bright halo
        for _ in range(cfg.close_retries + 1):
            x[k] = _u(rng, (lo, hi)) if hi > lo else min(max((lo + hi) / 2, 0.0), w - 1.0)
            if k == 0 or np.all(np.abs(x[:k] - x[k]) >= cfg.merge_sep * np.maximum(sigma[:k], s)):
                break
        if _p(rng, cfg.p_voigt):
            eta[k] = _u(rng, cfg.voigt_eta)
        amp[k] = _lu(rng, cfg.amplitude)
        ring[k] = _p(rng, cfg.p_ring)
        if ring[k]:
            prof = np.ones(h)
        else:
            sy[k] = _lu(rng, cfg.sigma_phi) * (h - 1)
            if _p(rng, cfg.p_phi_edge):
                yc[k] = 0.0 if _p(rng, 0.5) else h - 1.0
            else:
                yc[k] = _u(rng, (0.0, h - 1.0))
            prof = np.exp(-0.5 * ((g.rows - yc[k]) / sy[k]) ** 2)
        if _p(rng, cfg.p_modulation):
            depth = _u(rng, cfg.modulation_depth)
            freq = _lu(rng, cfg.modulation_freq)
            octv = _ri(rng, cfg.modulation_octaves)
            prof = prof * (1.0 - depth * _perlin1d(rng, h, freq, octv))
        ang[k] = prof
        # render out to where the profile falls below 1e-3 of the mean background (no visible cut-off)
        ratio = max(amp[k] / 1e-3, math.e)
        half = s * math.sqrt(2.0 * math.log(ratio))
        if eta[k] > 0:
            half = max(half, s * math.sqrt(2 * math.log(2)) * math.sqrt(eta[k] * ratio))
        spans[k] = max(0, math.floor(x[k] - half)), min(w, math.ceil(x[k] + half) + 1)
    return _Peaks(x, sigma, eta, amp, yc, sy, ring, ang, spans)


def _noise(cfg: SimConfig, rng: np.random.Generator, g: _Grid, lam: np.ndarray, info: dict):
    """Counts from the expected counts λ (float32[H, W]); returns (counts, read σ, rows per sample m)."""
    h, w = g.h, g.w
    read = 0.0
    if _p(rng, cfg.p_read_noise):
        read = _lu(rng, cfg.read_noise) * info["exposure"]
    info["read_noise"] = read
    z = rng.standard_normal((h, w), dtype=np.float32)
    key = np.uint64(rng.integers(0, 2**63, dtype=np.int64))
    counts = np.empty((h, w), np.float32)
    K.counting_noise(lam, z, float(read), key, counts)
    m = None
    info["oversample"] = _p(rng, cfg.p_oversample)
    if info["oversample"]:
        density = _u(rng, cfg.oversample_density)
        m = np.ceil(density * g.x.astype(np.float64) * (np.pi / 2)).astype(np.int64)
        K.resample_columns(counts, m)
    n_hot = 0
    if _p(rng, cfg.p_hot_pixels):
        n_hot = _ri(rng, cfg.n_hot_pixels)
        rr = rng.integers(0, h, n_hot)
        cc = rng.integers(0, w, n_hot)
        vals = np.exp(rng.uniform(math.log(cfg.hot_amp[0]), math.log(cfg.hot_amp[1]), n_hot)) * info["exposure"]
        counts[rr, cc] += vals.astype(np.float32)
    info["n_hot_pixels"] = n_hot
    return counts, read, m


def _labels(
    cfg: SimConfig, g: _Grid, pk: _Peaks, valid: np.ndarray, lam: np.ndarray, exposure: float, read: float,
    m: np.ndarray | None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    h, w = g.h, g.w
    n = len(pk.x)
    # 1. visible angular extent of each drawn peak at its centre column
    y0 = np.full(n, np.nan)
    y1 = np.full(n, np.nan)
    weight = np.zeros(n)
    keep = np.zeros(n, bool)
    for k in range(n):
        if pk.ring[k]:
            lo, hi = 0.0, h - 1.0
        else:
            lo, hi = max(0.0, pk.yc[k] - 2 * pk.sy[k]), min(h - 1.0, pk.yc[k] + 2 * pk.sy[k])
        r0, r1 = math.ceil(lo), math.floor(hi)
        if r1 < r0:
            continue
        col = min(max(round(pk.x[k]), 0), w - 1)
        vis = valid[r0 : r1 + 1, col]
        if int(vis.sum()) < cfg.min_rows:
            continue
        first = r0 + int(np.argmax(vis))
        last = r1 - int(np.argmax(vis[::-1]))
        y0[k] = lo if first == r0 else float(first)
        y1[k] = hi if last == r1 else float(last)
        weight[k] = pk.amp[k] * pk.sigma[k] * float(pk.ang[k, r0 : r1 + 1][vis].sum())
        keep[k] = True
    idx = np.nonzero(keep)[0]
    # 2. merge close peaks with overlapping φ extents (union-find)
    parent = {int(i): int(i) for i in idx}

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for ii, i in enumerate(idx):
        for j in idx[ii + 1 :]:
            if abs(pk.x[i] - pk.x[j]) < cfg.merge_sep * max(pk.sigma[i], pk.sigma[j]) and max(y0[i], y0[j]) <= min(
                y1[i], y1[j]
            ):
                a, b = find(int(i)), find(int(j))
                if a != b:
                    parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(find(int(i)), []).append(int(i))
    # 3. one label per group; SNR over its box; faint labels dropped
    rows_out: list[tuple] = []
    if m is not None:
        corr = np.maximum(1.0, h / np.maximum(m, 1)).astype(np.float64)
    else:
        corr = np.ones(w)
    buf = np.empty(w)
    for members in groups.values():
        mem = np.array(members)
        wts = np.maximum(weight[mem], 1e-30)
        xm = float(np.sum(wts * pk.x[mem]) / wts.sum())
        sm = float(math.sqrt(np.sum(wts * (pk.sigma[mem] ** 2 + (pk.x[mem] - xm) ** 2)) / wts.sum()))
        ly0, ly1 = float(y0[mem].min()), float(y1[mem].max())
        bx0, bx1 = max(0.0, xm - sm), min(w - 1.0, xm + sm)
        c0 = math.ceil(bx0)
        c1 = math.floor(bx1)
        if c1 < c0:
            c0 = c1 = min(max(round(xm), 0), w - 1)
        r0, r1 = math.ceil(ly0), math.floor(ly1)
        vbox = valid[r0 : r1 + 1, c0 : c1 + 1]
        signal = 0.0
        for k in mem:
            K.radial_profile(pk.x[k], pk.sigma[k], pk.eta[k], c0, c1 + 1, buf)
            rad = buf[: c1 - c0 + 1]
            signal += pk.amp[k] * float(np.sum(pk.ang[k, r0 : r1 + 1, None] * rad[None, :] * vbox))
        var = (lam[r0 : r1 + 1, c0 : c1 + 1].astype(np.float64) + read * read) * corr[None, c0 : c1 + 1]
        var_sum = float(np.sum(var * vbox))
        snr = exposure * signal / math.sqrt(var_sum) if var_sum > 0 else 0.0
        n_rows = max(1, int(np.count_nonzero(vbox.any(axis=1))))
        if snr < cfg.min_snr or snr < cfg.min_row_snr * math.sqrt(n_rows):
            continue
        single = len(mem) == 1
        k0 = int(mem[0])
        if single and not pk.ring[k0]:
            yv, syv = float(pk.yc[k0]), float(pk.sy[k0])
        else:
            yv, syv = (ly0 + ly1) / 2, float("nan")
        rows_out.append(
            (bx0, ly0, bx1, ly1, xm, sm, yv, syv, float(pk.amp[mem].max()), snr, bool(pk.ring[mem].any()), len(mem))
        )
    rows_out.sort(key=lambda r: r[4])
    boxes = np.array([r[:4] for r in rows_out], np.float32).reshape(-1, 4)
    peaks = {
        name: np.array([r[4 + i] for r in rows_out], dtype) for i, (name, dtype) in enumerate(PEAK_FIELDS.items())
    }
    return boxes, peaks


@contextlib.contextmanager
def _numba_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` Numba threads (None: leave the setting alone).

    One image is too small for the parallel contrast kernels to pay off: with more threads than free
    cores they are an order of magnitude slower. Parallelism comes from running several simulators
    (workers) instead.
    """
    try:
        import numba
    except ImportError:  # pragma: no cover - plain-Python kernels
        n = None
    if n is None:
        yield
        return
    old = numba.get_num_threads()
    n = max(1, min(int(n), numba.config.NUMBA_NUM_THREADS))
    if n == old:
        yield
        return
    numba.set_num_threads(n)
    try:
        yield
    finally:
        numba.set_num_threads(old)


def _simulate_one(
    cfg: SimConfig, rng: np.random.Generator, h: int, w: int, aux: bool, threads: int | None = 1
) -> tuple:
    g = _grid(h, w)
    info: dict[str, Any] = {}
    valid = _masks(cfg, rng, g, info)
    bg = _background(cfg, rng, g, info)
    pk = _draw_peaks(cfg, rng, g, info.get("halos", ()))
    info["n_peaks_drawn"] = len(pk.x)
    exposure = _lu(rng, cfg.exposure)
    info["exposure"] = exposure
    signal = bg  # reuse the buffer: λ = E·(bg + peaks)
    K.add_peaks(signal, pk.x, pk.sigma, pk.eta, pk.amp.astype(np.float64), pk.spans, pk.ang)
    signal *= np.float32(exposure)
    lam = signal
    counts, read, m = _noise(cfg, rng, g, lam, info)
    np.copyto(counts, np.float32(0), where=~valid)
    with _numba_threads(threads):
        image = kernels.contrast(
            counts, coef=cfg.contrast_coef, clip_limit=cfg.contrast_clip, log=cfg.contrast_log
        )
    image = np.asarray(image, np.float32)
    boxes, peaks = _labels(cfg, g, pk, valid, lam, exposure, read, m)
    info["n_labels"] = len(boxes)
    return image, boxes, peaks, info, (counts if aux else None), (valid if aux else None)


# -------------------------------------------------------------------------------------------------
# public API
# -------------------------------------------------------------------------------------------------
class Simulator:
    """Deterministic stream of simulated images: image ``i`` depends only on (seed, i, size, config).

    >>> sim = Simulator(SimConfig(), seed=7)
    >>> s = sim.sample(0)            # SimSample: image, boxes, peaks, info
    >>> s = sim.sample()             # the next index of this instance's counter (0, 1, 2, ...)
    >>> for s in sim.stream(start=worker_id, step=n_workers): ...   # a worker's share

    config: a :class:`SimConfig` (ours), a dict of its fields, or a :class:`gixdrt.sim.PaperSimConfig` (the
    ``paper`` mode, 512 × 512 only; see :mod:`gixdrt.sim.paper`).
    aux: also return the counts before the contrast chain (paper mode: the image before its final
    normalisation) and the visible-region mask.
    threads: Numba threads for the contrast kernels while simulating (default 1: one image is too small
    to gain from more; run several workers instead). None leaves the process setting alone.
    """

    def __init__(
        self,
        config: SimConfig | dict[str, Any] | None = None,
        seed: int = 0,
        *,
        size: Sequence[int] = DEFAULT_SIZE,
        aux: bool = False,
        threads: int | None = 1,
    ):
        from .paper import PaperSimConfig, check_paper_size

        if config is None:
            config = SimConfig()
        elif isinstance(config, dict):
            config = SimConfig.from_dict(config)
        elif not isinstance(config, (SimConfig, PaperSimConfig)):
            raise TypeError(f"config must be a SimConfig, a PaperSimConfig, a dict or None, got {type(config).__name__}")
        self.config: SimConfig | PaperSimConfig = config
        self.seed = int(seed)
        self.size = _check_size(size)
        self._paper = isinstance(config, PaperSimConfig)
        if self._paper:
            check_paper_size(self.size)
        self.aux = bool(aux)
        self.threads = threads
        self._next = 0

    def __repr__(self) -> str:
        return f"Simulator(seed={self.seed}, size={self.size}, next={self._next})"

    def sample(self, index: int | None = None, *, aux: bool | None = None) -> SimSample:
        """Image ``index`` (None: the next one of this instance's counter, which then advances)."""
        if index is None:
            index = self._next
            self._next += 1
        index = int(index)
        rng = image_rng(self.seed, index)
        h, w = self.size
        aux = self.aux if aux is None else aux
        if self._paper:
            from .paper import simulate_paper

            image, boxes, peaks, info, counts, valid = simulate_paper(self.config, rng, aux)
        else:
            image, boxes, peaks, info, counts, valid = _simulate_one(self.config, rng, h, w, aux, self.threads)
        return SimSample(index, image, boxes, peaks, info, counts, valid)

    def stream(self, start: int = 0, step: int = 1, stop: int | None = None) -> Iterator[SimSample]:
        """Images start, start + step, ... (< stop; endless without stop): one worker's share."""
        if step < 1:
            raise ValueError(f"step must be ≥ 1, got {step}")
        i = int(start)
        while stop is None or i < stop:
            yield self.sample(i)
            i += step

    def __iter__(self) -> Iterator[SimSample]:
        while True:
            yield self.sample()

    def batch(self, indices: Iterable[int]) -> SimBatch:
        """The images of ``indices`` as one :class:`SimBatch`."""
        return SimBatch.from_samples([self.sample(int(i)) for i in indices], self.seed, self.config, self.size)


class SimDataset:
    """Map-style dataset of ``length`` images (``ds[i]`` → :class:`SimSample`), usable directly by a
    ``torch.utils.data.DataLoader`` with any number of workers: items depend only on their index."""

    def __init__(
        self,
        length: int,
        seed: int = 0,
        *,
        size: Sequence[int] = DEFAULT_SIZE,
        config: SimConfig | dict[str, Any] | None = None,
        start: int = 0,
    ):
        self.sim = Simulator(config, seed, size=size)
        self.length = int(length)
        self.start = int(start)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> SimSample:
        i = int(i)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(i)
        return self.sim.sample(self.start + i)


def simulate(
    n: int,
    seed: int,
    *,
    size: Sequence[int] = DEFAULT_SIZE,
    config: SimConfig | dict[str, Any] | None = None,
    start: int = 0,
    progress: bool = False,
) -> SimBatch:
    """Images start … start + n − 1 of ``seed`` as a :class:`SimBatch`.

    images float32[n, H, W] in [0, 1] (the real-data contrast chain), boxes float32[K_i, 4]
    (x0, y0, x1, y1) in pixel-centre coordinates, per-label metadata (:data:`PEAK_FIELDS`) and
    per-image parameters (``info``).
    """
    if n < 0:
        raise ValueError(f"n must be ≥ 0, got {n}")
    sim = Simulator(config, seed, size=size)
    it: Iterable[int] = range(start, start + n)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=n, desc="simulate", unit="img")
    return SimBatch.from_samples([sim.sample(i) for i in it], sim.seed, sim.config, sim.size)
