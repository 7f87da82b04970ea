"""Generator of powder XRD detector frames with exact ground-truth spot masks (training and evaluation data of the
powder pipeline's U-Net and of the classical baseline).

>>> from gixdrt.sim.powder import PowderSimulator, PowderSimConfig
>>> sim = PowderSimulator(PowderSimConfig(), seed=0, size=(1024, 1024))
>>> f = sim.frame(7)           # frame 7 of seed 0: always the same, whoever asks and in whatever order
>>> f.image, f.spots, f.detector_mask, f.geometry   # float32 ADU, bool spot mask, uint8 (nonzero = excluded)
>>> shifted = PowderSimulator(PowderSimConfig.shifted(), seed=1, size=(2048, 2048))   # for honest evaluation

One frame, step by step (every random quantity from the frame's own Generator, ``image_rng(seed, index)``):

1. **Geometry** (:class:`gixdrt.powder.geometry.PowderGeometry`, pyFAI's PONI convention): pixel size, wavelength,
   beam centre (mostly central, sometimes near an edge), tilts ``rot1``, ``rot2`` and in-plane ``rot3``; the distance
   is chosen so that the farthest corner reaches a drawn d-spacing (``d_edge``), so frames of any size and pixel show
   a similar number of rings. 2θ and χ of every pixel are computed exactly from it.
2. **Powder** (expected photons per pixel, before the detector): one phase (a calibrant, or a made-up lattice) and
   optionally a second one, each with a small lattice strain; one pseudo-Voigt in 2θ per ring (FWHM from a drawn width
   in pixels, growing with 2θ); per-ring heights; *texture*: a ring's intensity multiplied by ``T(χ) ≥ 0`` built from
   harmonics of 2χ (so ``T(χ + π) = T(χ)``, preferred orientation is centre-symmetric); background = constant + air
   scatter ``1/(1 + (2θ/w)²)`` + amorphous humps (Gaussians in 2θ); all multiplied by the solid angle
   ``(dist/r)³`` and the polarisation factor (horizontal linear polarisation, fraction ``pol``).
3. **Spots** (single-crystal reflections, expected photons ``S``): on rings (χ random) or anywhere; 2–15 px; shapes
   ``gauss`` (elongated, rotated), ``arc`` (elongated along χ), ``cluster`` (2–6 sub-blobs), ``irregular`` (a blob
   times smooth noise, cut below a level) and ``pixels`` (a random-walk cluster of flat pixels); peak height = ``amp``
   times the local noise ``√B`` (weak, log-uniform) or, with ``p_saturate``, above the detector's full scale.
4. **Ground truth**: ``spots = (S > mask_sigma·√(B + (σ_read/gain)²)) & (S ≥ mask_min_photons) &
   (detector_mask == 0)`` with B the powder-only expected photons (after the beam-stop shadow), S the spots' expected
   photons and σ_read/gain the read noise in photons: a pixel is a spot pixel where the spot adds more than
   ``mask_sigma`` (2 by default) standard deviations of the powder-only noise and at least one photon. Computed from
   expected values, so it does not depend on the noise draw.
5. **Detector**: photons ~ Poisson(B + S); ADU = gain·photons + offset + read noise, rounded, clipped to
   [0, full_scale]; module gaps (0 ADU), dead pixels (0), hot pixels (near full scale), a beam stop (disc around the
   direct beam and its arm to a frame edge, transmitting a few per cent). ``detector_mask`` flags them as bits
   (:data:`MASK_GAP`, :data:`MASK_DEAD`, :data:`MASK_HOT`, :data:`MASK_BEAMSTOP`); nonzero = excluded, as pyFAI.

The frames depend only on (seed, index, size, config): image ``i`` of a seed is identical whether made alone or in a
batch. :meth:`PowderSimConfig.shifted` draws from other calibrants and wider ranges (spot size and intensity, gain,
noise) than the default; evaluate on it to see whether a model learned the physics or the generator.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from .._numba import njit
from ..powder.calibrants import CALIBRANTS, Phase, d_spacings, random_phase
from ..powder.geometry import PowderGeometry
from .core import image_rng

__all__ = [
    "MASK_BEAMSTOP",
    "MASK_DEAD",
    "MASK_GAP",
    "MASK_HOT",
    "PowderFrame",
    "PowderSimConfig",
    "PowderSimulator",
    "powder_frame",
]

MASK_GAP = 1  # module gap
MASK_DEAD = 2  # dead pixel
MASK_HOT = 4  # hot pixel
MASK_BEAMSTOP = 8  # beam stop and its arm

SPOT_SHAPES = ("gauss", "arc", "cluster", "irregular", "pixels")
Range = tuple[float, float]
IntRange = tuple[int, int]


@dataclass(frozen=True)
class PowderSimConfig:
    """Distributions of the powder frame generator. ``(lo, hi)`` ranges are uniform unless marked log-uniform."""

    # ---- geometry ----
    pixel_sizes: tuple[float, ...] = (75e-6, 100e-6, 139e-6, 150e-6, 172e-6, 200e-6)  # metres, one drawn
    wavelength: Range = (0.12, 0.8)  # Å, log-uniform (high-energy synchrotron to Mo Kα)
    d_edge: Range = (0.7, 2.2)  # Å: d-spacing reached at the farthest frame corner (sets the distance)
    center: Range = (0.35, 0.65)  # beam centre (row, column) as fractions of the frame
    p_offcenter: float = 0.2  # ... else drawn from off_center
    off_center: Range = (0.05, 0.95)
    tilt_deg: Range = (0.0, 3.0)  # |rot1|, |rot2| in degrees, random signs (rot3 uniform in (−180°, 180°])
    # ---- phases and rings ----
    calibrants: tuple[str, ...] = ("LaB6", "CeO2", "Si", "alpha_Al2O3")
    p_random_phase: float = 0.35  # the first phase is a made-up lattice instead of a calibrant
    p_second_phase: float = 0.4  # a second (made-up or calibrant) phase
    strain: Range = (-0.01, 0.01)  # relative lattice change per phase (rings shift)
    max_rings: int = 120  # per phase, the lowest-2θ ones
    ring_fwhm_px: Range = (1.0, 6.0)  # radial FWHM in pixels near the beam, log-uniform
    ring_broadening: Range = (0.0, 1.5)  # FWHM grows as (1 + b·tan θ)
    eta: Range = (0.0, 0.8)  # pseudo-Voigt Lorentzian fraction
    ring_height: Range = (1.0, 60.0)  # strongest ring's peak height relative to the mean background, log-uniform
    ring_spread: Range = (0.05, 1.0)  # per-ring height factor, log-uniform
    p_texture: float = 0.5  # a phase is textured ...
    p_ring_textured: float = 0.7  # ... and then each of its rings (up to max_textured per frame) is
    max_textured: int = 10
    texture_strength: Range = (0.3, 1.0)  # T(χ) ∈ [1 − s, 1] before normalisation
    texture_orders: IntRange = (1, 3)  # harmonics of 2χ
    # ---- background ----
    bg_floor: Range = (0.05, 1.0)
    air_amp: Range = (0.1, 5.0)  # log-uniform
    air_width_deg: Range = (1.0, 15.0)  # log-uniform
    p_hump: float = 0.6
    hump_d: Range = (2.0, 6.0)  # Å, amorphous hump centre
    hump_width_deg: Range = (1.0, 6.0)  # σ in 2θ
    hump_amp: Range = (0.1, 3.0)  # log-uniform
    polarization: Range = (0.0, 0.99)
    exposure: Range = (5.0, 3000.0)  # expected photons of the mean background per pixel, log-uniform
    # ---- spots ----
    p_no_spots: float = 0.1
    n_spots: IntRange = (2, 200)  # log-uniform in count
    p_on_ring: float = 0.4
    spot_size: Range = (2.0, 15.0)  # px, log-uniform (FWHM along the long axis for the smooth shapes)
    spot_aspect: Range = (1.0, 4.0)
    spot_amp: Range = (1.5, 3000.0)  # peak height in units of the local noise √B, log-uniform
    p_saturate: float = 0.1  # a spot's peak is 1–20× the full scale instead
    spot_shapes: tuple[float, ...] = (0.3, 0.15, 0.2, 0.2, 0.15)  # probabilities of SPOT_SHAPES
    mask_sigma: float = 2.0  # ground truth: spot adds > mask_sigma·σ(powder-only) ...
    mask_min_photons: float = 1.0  # ... and at least this many photons
    # ---- detector ----
    gain: Range = (0.3, 4.0)  # ADU per photon, log-uniform
    offset: Range = (0.0, 300.0)  # ADU
    read_noise: Range = (0.5, 15.0)  # ADU, log-uniform
    full_scale: float = 65535.0  # ADU (16 bit)
    p_gaps: float = 0.6
    modules: IntRange = (2, 4)  # modules along each axis
    gap_width: IntRange = (2, 12)  # px
    dead_fraction: Range = (0.0, 2e-4)
    hot_fraction: Range = (0.0, 1e-4)
    p_beamstop: float = 0.9
    beamstop_radius: Range = (0.01, 0.05)  # fraction of the frame's smaller side
    beamstop_arm: Range = (0.004, 0.02)  # arm width, same units
    beamstop_transmission: Range = (0.0, 0.05)

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, v := tuple(v))
            if f.name.startswith("p_") and not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                raise ValueError(f"PowderSimConfig.{f.name} must be a probability in [0, 1], got {v!r}")
            if isinstance(v, tuple) and f.type in ("Range", "IntRange"):
                if len(v) != 2 or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in v) or v[0] > v[1]:
                    raise ValueError(f"PowderSimConfig.{f.name} must be a (lo, hi) pair with lo ≤ hi, got {v!r}")
        unknown = [c for c in self.calibrants if c not in CALIBRANTS]
        if unknown or not self.calibrants:
            raise ValueError(f"PowderSimConfig.calibrants: unknown {unknown}; known: {', '.join(CALIBRANTS)}")
        if len(self.spot_shapes) != len(SPOT_SHAPES) or abs(sum(self.spot_shapes) - 1.0) > 1e-6:
            raise ValueError(f"PowderSimConfig.spot_shapes: {len(SPOT_SHAPES)} probabilities summing to 1 "
                             f"({', '.join(SPOT_SHAPES)}), got {self.spot_shapes!r}")
        for name in ("wavelength", "d_edge", "ring_fwhm_px", "ring_height", "ring_spread", "air_amp", "air_width_deg",
                     "hump_amp", "exposure", "spot_size", "spot_amp", "gain", "read_noise", "spot_aspect"):
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"PowderSimConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @classmethod
    def shifted(cls) -> PowderSimConfig:
        """Other calibrants, wider spot-size and intensity ranges, other gain, noise and geometry ranges."""
        return cls(
            calibrants=("Ni", "ZnO", "Cr2O3", "NaCl", "Au", "Al"),
            wavelength=(0.1, 1.0),
            d_edge=(0.6, 2.6),
            tilt_deg=(0.0, 5.0),
            ring_fwhm_px=(0.8, 9.0),
            texture_strength=(0.2, 1.0),
            texture_orders=(1, 4),
            spot_size=(1.5, 25.0),
            spot_aspect=(1.0, 6.0),
            spot_amp=(1.0, 10000.0),
            p_saturate=0.2,
            exposure=(2.0, 20000.0),
            gain=(0.1, 10.0),
            offset=(0.0, 2000.0),
            read_noise=(0.2, 40.0),
            gap_width=(1, 20),
            beamstop_radius=(0.005, 0.08),
        )

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> PowderSimConfig:
        d = dict(d or {})
        unknown = sorted(set(d) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown powder simulator parameter(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> PowderSimConfig:
        return replace(self, **changes)


@dataclass
class PowderFrame:
    """One generated frame.

    ``image`` float32[H, W] in ADU (integer values); ``spots`` bool[H, W] ground-truth spot mask (False where the
    detector mask is set); ``detector_mask`` uint8[H, W] bit flags, nonzero = excluded; ``powder`` / ``spot_photons``
    float32[H, W] the expected photons without / of the spots (only with ``aux=True``). ``info`` holds the draws
    (phases, gain, offset, read noise, ...) and every ring's 2θ and FWHM in 2θ (``ring_tth``, ``ring_fwhm``, radians)."""

    index: int
    image: np.ndarray
    spots: np.ndarray
    detector_mask: np.ndarray
    geometry: PowderGeometry
    info: dict[str, Any] = field(default_factory=dict)
    powder: np.ndarray | None = None
    spot_photons: np.ndarray | None = None


# -------------------------------------------------------------------------------------------------
# Numba kernels (no random numbers drawn inside: all randomness comes from the frame's Generator)
# -------------------------------------------------------------------------------------------------
@njit(cache=True)
def _ring_table(grid0, dgrid, n, centers, fwhm, eta, height, out):
    """out[n] += Σ_k height_k·pV((x − centre_k); fwhm_k, eta_k) on the grid x = grid0 + i·dgrid (peak height 1)."""
    c_g = 4.0 * math.log(2.0)
    for k in range(centers.shape[0]):
        g = fwhm[k]
        e = eta[k]
        h = height[k]
        for i in range(n):
            x = (grid0 + i * dgrid - centers[k]) / g
            x2 = x * x
            v = e / (1.0 + 4.0 * x2)
            if x2 < 40.0:
                v += (1.0 - e) * math.exp(-c_g * x2)
            out[i] += h * v


@njit(cache=True)
def _render(geo, h, w, grid0, dgrid, iso, tex_prof, tex_chi, pol, out, tth_out):
    """Expected powder photons per pixel: (iso(2θ) + Σ_k tex_prof[k](2θ)·tex_chi[k](χ)) · solid angle · polarisation.

    geo = (dist, poni1, poni2, pixel1, pixel2, r11, r12, r13, r21, r22, r23, r31, r32, r33): t = R·(p1, p2, L)
    with the PONI-convention rotation. tex_chi is sampled on 1024 points over [−π, π]."""
    L, poni1, poni2, px1, px2 = geo[0], geo[1], geo[2], geo[3], geo[4]
    n = iso.shape[0]
    nk = tex_prof.shape[0]
    nc = tex_chi.shape[1] if nk > 0 else 1
    cscale = (nc - 1) / (2.0 * math.pi)
    for i in range(h):
        p1 = (i + 0.5) * px1 - poni1
        for j in range(w):
            p2 = (j + 0.5) * px2 - poni2
            t1 = geo[5] * p1 + geo[6] * p2 + geo[7] * L
            t2 = geo[8] * p1 + geo[9] * p2 + geo[10] * L
            t3 = geo[11] * p1 + geo[12] * p2 + geo[13] * L
            rho2 = t1 * t1 + t2 * t2
            tth = math.atan2(math.sqrt(rho2), t3)
            tth_out[i, j] = tth
            u = (tth - grid0) / dgrid
            if u < 0.0:
                u = 0.0
            if u > n - 1.000001:
                u = n - 1.000001
            k0 = int(u)
            f = u - k0
            v = iso[k0] * (1.0 - f) + iso[k0 + 1] * f
            if nk > 0:
                chi = math.atan2(t1, t2)
                c = (chi + math.pi) * cscale
                c0 = int(c)
                if c0 > nc - 2:
                    c0 = nc - 2
                fc = c - c0
                for k in range(nk):
                    pk = tex_prof[k, k0] * (1.0 - f) + tex_prof[k, k0 + 1] * f
                    if pk != 0.0:
                        v += pk * (tex_chi[k, c0] * (1.0 - fc) + tex_chi[k, c0 + 1] * fc)
            # solid angle (dist / r)³ with r the sample–pixel distance; polarisation (horizontal, fraction pol)
            r2 = rho2 + t3 * t3
            cos_a = L / math.sqrt(p1 * p1 + p2 * p2 + L * L)
            sin2 = rho2 / r2
            cos_chi2 = (t2 * t2) / rho2 if rho2 > 0.0 else 0.0
            polf = 0.5 * (1.0 + 1.0 - sin2) - 0.5 * pol * (2.0 * cos_chi2 - 1.0) * sin2
            out[i, j] = v * cos_a * cos_a * cos_a * polf


# -------------------------------------------------------------------------------------------------
# random helpers
# -------------------------------------------------------------------------------------------------
def _u(rng: np.random.Generator, r) -> float:
    return float(rng.uniform(r[0], r[1]))


def _lu(rng: np.random.Generator, r) -> float:
    return float(math.exp(rng.uniform(math.log(r[0]), math.log(r[1]))))


def _ri(rng: np.random.Generator, r) -> int:
    return int(rng.integers(int(r[0]), int(r[1]) + 1))


def _rotation(rot1: float, rot2: float, rot3: float) -> np.ndarray:
    c1, s1 = math.cos(rot1), math.sin(rot1)
    c2, s2 = math.cos(rot2), math.sin(rot2)
    c3, s3 = math.cos(rot3), math.sin(rot3)
    return np.array(
        [
            [c2 * c3, c3 * s1 * s2 - c1 * s3, -(c1 * c3 * s2 + s1 * s3)],
            [c2 * s3, c1 * c3 + s1 * s2 * s3, -(-c3 * s1 + c1 * s2 * s3)],
            [s2, -c2 * s1, c1 * c2],
        ]
    )


def _texture(rng: np.random.Generator, cfg: PowderSimConfig, n: int = 1024) -> np.ndarray:
    """T(χ) on n points over [−π, π]: harmonics of 2χ (period π), rescaled to [1 − s, 1]."""
    chi = np.linspace(-math.pi, math.pi, n)
    t = np.zeros(n)
    for m in range(1, _ri(rng, cfg.texture_orders) + 1):
        t += rng.normal() / m * np.cos(2 * m * (chi - rng.uniform(0, math.pi)))
    if rng.random() < 0.5:  # sharp lobes: exponentiate
        t = np.exp(rng.uniform(1.0, 4.0) * (t - t.max()))
    lo, hi = t.min(), t.max()
    t = (t - lo) / (hi - lo) if hi > lo else np.ones(n)
    s = _u(rng, cfg.texture_strength)
    return 1.0 - s + s * t


class PowderSimulator:
    """Frames of one (config, seed, size): ``frame(i)`` is a pure function of i."""

    def __init__(self, config: PowderSimConfig | None = None, seed: int = 0, size: tuple[int, int] = (1024, 1024)):
        self.config = config or PowderSimConfig()
        self.seed = int(seed)
        h, w = (int(v) for v in size)
        if h < 64 or w < 64:
            raise ValueError(f"size must be at least 64×64, got {(h, w)}")
        self.size = (h, w)

    def frames(self, indices) -> list[PowderFrame]:
        return [self.frame(int(i)) for i in indices]

    def frame(self, index: int, *, aux: bool = False) -> PowderFrame:
        """Frame ``index`` (≥ 0) of this seed; ``aux`` also returns the expected photons (powder, spots)."""
        cfg = self.config
        rng = image_rng(self.seed + 0x9E3779B1, index)  # a stream apart from the GIXD simulator's
        h, w = self.size
        info: dict[str, Any] = {}

        # ---- 1. geometry ----
        pixel = float(rng.choice(cfg.pixel_sizes))
        lam = _lu(rng, cfg.wavelength)
        frac = cfg.off_center if rng.random() < cfg.p_offcenter else cfg.center
        cy, cx = _u(rng, frac) * (h - 1), _u(rng, frac) * (w - 1)
        far = max(math.hypot(cy - a, cx - b) for a in (0, h - 1) for b in (0, w - 1)) * pixel
        d_edge = _u(rng, cfg.d_edge)
        tth_far = min(2 * math.asin(min(lam / (2 * d_edge), 0.99)), math.radians(70.0))
        dist = far / math.tan(tth_far)
        rot1, rot2 = (math.radians(_u(rng, cfg.tilt_deg)) * (1 if rng.random() < 0.5 else -1) for _ in range(2))
        rot3 = float(rng.uniform(-math.pi, math.pi))
        # PONI such that the direct beam falls on (cy, cx) with these tilts
        g0 = PowderGeometry.from_beam_center((h, w), (cy, cx), dist, pixel=pixel, wavelength=lam * 1e-10,
                                             rot1=rot1, rot2=rot2, rot3=rot3)
        by, bx = g0.beam_center
        geom = g0.replace(poni1=g0.poni1 + (cy - by) * pixel, poni2=g0.poni2 + (cx - bx) * pixel)
        info.update(wavelength_A=lam, dist_m=dist, pixel_m=pixel, beam_center=(cy, cx))

        # 2θ range of the frame (corners and edges; the beam may lie inside)
        t1, t2, t3 = geom.positions(np.array([0, 0, h - 1, h - 1, 0, h // 2, h - 1, h // 2]),
                                    np.array([0, w - 1, 0, w - 1, w // 2, 0, w // 2, w - 1]))
        tth_max = float(np.arctan2(np.hypot(t1, t2), t3).max()) * 1.02 + 1e-3
        d_min = lam / (2 * math.sin(tth_max / 2))
        rad_per_px = pixel / dist  # 2θ per pixel near the beam

        # ---- 2. phases and rings ----
        phases: list[Phase] = []
        if rng.random() < cfg.p_random_phase:
            phases.append(random_phase(rng, "phase1"))
        else:
            phases.append(CALIBRANTS[str(rng.choice(cfg.calibrants))])
        if rng.random() < cfg.p_second_phase:
            phases.append(random_phase(rng, "phase2") if rng.random() < 0.5
                          else CALIBRANTS[str(rng.choice(cfg.calibrants))])
        n_grid = int(min(max(tth_max / (rad_per_px / 8.0), 2048), 200_000))
        dgrid = tth_max / (n_grid - 1)
        grid_x = np.arange(n_grid) * dgrid
        # background (relative units; the mean over the frame is normalised below)
        iso = np.full(n_grid, _u(rng, cfg.bg_floor))
        iso += _lu(rng, cfg.air_amp) / (1.0 + (grid_x / math.radians(_lu(rng, cfg.air_width_deg))) ** 2)
        if rng.random() < cfg.p_hump:
            for _ in range(_ri(rng, (1, 2))):
                c = 2 * math.asin(min(lam / (2 * _u(rng, cfg.hump_d)), 1.0))
                s = math.radians(_u(rng, cfg.hump_width_deg))
                iso += _lu(rng, cfg.hump_amp) * np.exp(-0.5 * ((grid_x - c) / s) ** 2)
        bg_mean = float(iso.mean())
        fwhm_px = _lu(rng, cfg.ring_fwhm_px)
        broad = _u(rng, cfg.ring_broadening)
        strongest = _lu(rng, cfg.ring_height) * bg_mean
        tex_rows: list[np.ndarray] = []
        tex_chi: list[np.ndarray] = []
        ring_tth: list[np.ndarray] = []
        ring_w: list[np.ndarray] = []
        for ph in phases:
            ph = ph.scaled(1.0 + _u(rng, cfg.strain))
            d, mult = d_spacings(ph, d_min)
            d, mult = d[: cfg.max_rings], mult[: cfg.max_rings]
            if d.size == 0:
                continue
            tth = 2 * np.arcsin(lam / (2 * d))
            fw = fwhm_px * rad_per_px * np.cos(tth) ** 2 * (1 + broad * np.tan(tth / 2))
            eta = np.full(d.size, _u(rng, cfg.eta))
            hts = np.sqrt(mult) * np.exp(rng.uniform(math.log(cfg.ring_spread[0]), math.log(cfg.ring_spread[1]),
                                                      d.size)) * np.exp(-rng.uniform(0, 2) * (1 / d) ** 2 / 4)
            hts *= strongest / hts.max() * (1.0 if not ring_tth else _lu(rng, (0.1, 1.0)))
            textured = np.zeros(d.size, bool)
            if rng.random() < cfg.p_texture:
                textured = rng.random(d.size) < cfg.p_ring_textured
            iso_k = ~textured
            _ring_table(0.0, dgrid, n_grid, tth[iso_k], fw[iso_k], eta[iso_k], hts[iso_k], iso)
            for k in np.flatnonzero(textured):
                if len(tex_rows) >= cfg.max_textured:
                    _ring_table(0.0, dgrid, n_grid, tth[k:k + 1], fw[k:k + 1], eta[k:k + 1], hts[k:k + 1], iso)
                    continue
                row = np.zeros(n_grid)
                _ring_table(0.0, dgrid, n_grid, tth[k:k + 1], fw[k:k + 1], eta[k:k + 1], hts[k:k + 1], row)
                row[row < 1e-6 * hts[k]] = 0.0  # far tails: skip the lookup
                tex_rows.append(row)
                tex_chi.append(_texture(rng, cfg))
            ring_tth.append(tth)
            ring_w.append(fw)
        all_tth = np.concatenate(ring_tth) if ring_tth else np.zeros(0)
        all_fw = np.concatenate(ring_w) if ring_w else np.zeros(0)
        info.update(phases=[p.name for p in phases], n_rings=int(all_tth.size), n_textured=len(tex_rows),
                    ring_fwhm_px=fwhm_px)
        # every ring's 2θ and FWHM in 2θ (radians, strain included): the truth the intensity evaluation integrates over
        info.update(ring_tth=all_tth.tolist(), ring_fwhm=all_fw.tolist())

        exposure = _lu(rng, cfg.exposure)
        scale = exposure / bg_mean
        iso *= scale
        tex_prof = np.array(tex_rows) * scale if tex_rows else np.zeros((0, n_grid))
        tex_tab = np.array(tex_chi) if tex_chi else np.zeros((0, 2))
        rmat = _rotation(rot1, rot2, rot3)
        geo = np.array([geom.dist, geom.poni1, geom.poni2, pixel, pixel, *rmat.ravel()])
        powder = np.empty((h, w), np.float32)
        tthmap = np.empty((h, w), np.float32)
        _render(geo, h, w, 0.0, dgrid, iso, np.ascontiguousarray(tex_prof), np.ascontiguousarray(tex_tab),
                _u(rng, cfg.polarization), powder, tthmap)

        # ---- detector parameters (needed by the spot amplitudes and the mask threshold) ----
        gain = _lu(rng, cfg.gain)
        offset = _u(rng, cfg.offset)
        read = _lu(rng, cfg.read_noise)
        # no saturated powder: the mean background stays below a quarter of the full scale and the brightest ring
        # below 80 % of it (only spots saturate)
        cap = min(0.25 * (cfg.full_scale - offset) / gain,
                  0.8 * (cfg.full_scale - offset) / gain * exposure / max(float(powder.max()), 1e-30))
        if exposure > cap:
            powder *= np.float32(cap / exposure)
            exposure = cap
        read_ph2 = (read / gain) ** 2
        info.update(gain=gain, offset=offset, read_noise=read, exposure=exposure)

        # ---- detector mask and beam stop shadow ----
        dmask = np.zeros((h, w), np.uint8)
        side = min(h, w)
        shadow = None
        if rng.random() < cfg.p_beamstop:
            r = _u(rng, cfg.beamstop_radius) * side
            aw = _u(rng, cfg.beamstop_arm) * side
            ang = float(rng.uniform(-math.pi, math.pi))
            y = np.arange(h, dtype=np.float32)[:, None] - np.float32(cy)
            x = np.arange(w, dtype=np.float32)[None, :] - np.float32(cx)
            ca, sa = np.float32(math.cos(ang)), np.float32(math.sin(ang))
            along = x * ca + y * sa
            across = np.abs(-x * sa + y * ca)
            bs = (x * x + y * y <= r * r) | ((along >= 0) & (across <= aw / 2))
            dmask[bs] |= MASK_BEAMSTOP
            shadow = bs
            powder[bs] *= np.float32(_u(rng, cfg.beamstop_transmission))
        if rng.random() < cfg.p_gaps:
            for axis, n_side in ((0, h), (1, w)):
                nm = _ri(rng, cfg.modules)
                gw = _ri(rng, cfg.gap_width)
                for m in range(1, nm):
                    g = int(round(m * n_side / nm)) - gw // 2
                    if axis == 0:
                        dmask[max(g, 0):g + gw, :] |= MASK_GAP
                    else:
                        dmask[:, max(g, 0):g + gw] |= MASK_GAP
        n_px = h * w
        dead = rng.choice(n_px, int(_u(rng, cfg.dead_fraction) * n_px), replace=False) if n_px else []
        hot = rng.choice(n_px, int(_u(rng, cfg.hot_fraction) * n_px), replace=False) if n_px else []
        dmask.ravel()[dead] |= MASK_DEAD
        dmask.ravel()[hot] |= MASK_HOT

        # ---- 3. spots ----
        spot = np.zeros((h, w), np.float32)
        n_spots = 0 if rng.random() < cfg.p_no_spots else int(round(_lu(rng, (cfg.n_spots[0], cfg.n_spots[1] + 0.49))))
        shape_counts = dict.fromkeys(SPOT_SHAPES, 0)
        if n_spots:
            cand_y = rng.uniform(0, h - 1, 4096)
            cand_x = rng.uniform(0, w - 1, 4096)
            on_ring = np.zeros(4096, bool)
            if all_tth.size:
                ct = tthmap[cand_y.astype(int), cand_x.astype(int)].astype(np.float64)
                idx = np.clip(np.searchsorted(np.sort(all_tth), ct), 1, all_tth.size - 1)
                srt = np.sort(all_tth)
                near = np.minimum(np.abs(ct - srt[idx - 1]), np.abs(ct - srt[idx]))
                on_ring = near < 0.5 * np.median(all_fw) + 0.5 * rad_per_px
            ring_cands = np.flatnonzero(on_ring)
            full = cfg.full_scale / gain
            for _ in range(n_spots):
                if ring_cands.size and rng.random() < cfg.p_on_ring:
                    c = int(ring_cands[rng.integers(ring_cands.size)])
                    sy, sx = cand_y[c] + rng.uniform(-0.5, 0.5), cand_x[c] + rng.uniform(-0.5, 0.5)
                else:
                    sy, sx = rng.uniform(0, h - 1), rng.uniform(0, w - 1)
                b_loc = float(powder[int(sy), int(sx)])
                if rng.random() < cfg.p_saturate:
                    peak = full * _lu(rng, (1.0, 20.0))
                else:
                    peak = _lu(rng, cfg.spot_amp) * math.sqrt(b_loc + read_ph2 + 1.0)
                shape = SPOT_SHAPES[int(rng.choice(len(SPOT_SHAPES), p=cfg.spot_shapes))]
                shape_counts[shape] += 1
                _add_spot(rng, cfg, spot, sy, sx, peak, shape, math.atan2(sy - cy, sx - cx))
        info.update(n_spots=n_spots, spot_shapes=shape_counts)
        if shadow is not None:
            spot[shadow] *= np.float32(0.0)

        # ---- 4. ground truth ----
        thr = np.float32(cfg.mask_sigma) * np.sqrt(powder + np.float32(read_ph2))
        spots = (spot > thr) & (spot >= np.float32(cfg.mask_min_photons)) & (dmask == 0)

        # ---- 5. counting and the detector ----
        lam_px = powder + spot
        counts = rng.poisson(lam_px).astype(np.float32)
        noise = rng.standard_normal((h, w), dtype=np.float32)
        img = counts * np.float32(gain)
        img += np.float32(offset)
        img += noise * np.float32(read)
        np.rint(img, out=img)
        np.clip(img, 0.0, cfg.full_scale, out=img)
        img.ravel()[dead] = 0.0
        img.ravel()[hot] = np.rint(cfg.full_scale * rng.uniform(0.5, 1.0, len(hot))).astype(np.float32)
        img[(dmask & MASK_GAP) != 0] = 0.0  # gaps last: no signal there whatever else was drawn
        info["saturated"] = int(np.count_nonzero(img >= cfg.full_scale))
        info["spot_pixels"] = int(np.count_nonzero(spots))
        return PowderFrame(index=int(index), image=img, spots=spots, detector_mask=dmask, geometry=geom, info=info,
                           powder=powder if aux else None, spot_photons=spot if aux else None)


def _add_spot(rng: np.random.Generator, cfg: PowderSimConfig, spot: np.ndarray, sy: float, sx: float, peak: float,
              shape: str, radial_angle: float) -> None:
    """Add one spot (expected photons, peak height ``peak``) centred at (sy, sx) into ``spot`` in place."""
    h, w = spot.shape
    size = _lu(rng, cfg.spot_size)
    sig = size / 2.3548
    # the patch reaches where a Gaussian of this peak falls below 1 photon (the ground truth needs ≥ 1): a bright
    # spot's mask is never cut by the patch edge; +2.5σ for the sub-blob offsets of "cluster"
    half = min(int(math.ceil(sig * (math.sqrt(2.0 * math.log(max(peak, math.e))) + 2.5) + 2)), 400)
    y0, y1 = max(int(sy) - half, 0), min(int(sy) + half + 2, h)
    x0, x1 = max(int(sx) - half, 0), min(int(sx) + half + 2, w)
    if y1 <= y0 or x1 <= x0:
        return
    yy = np.arange(y0, y1, dtype=np.float64)[:, None] - sy
    xx = np.arange(x0, x1, dtype=np.float64)[None, :] - sx

    def gauss(dy, dx, s_major, s_minor, ang):
        ca, sa = math.cos(ang), math.sin(ang)
        u = xx - dx
        v = yy - dy
        a = u * ca + v * sa
        b = -u * sa + v * ca
        return np.exp(-0.5 * ((a / s_major) ** 2 + (b / s_minor) ** 2))

    aspect = _u(rng, cfg.spot_aspect)
    if shape == "gauss":
        val = gauss(0, 0, sig, sig / aspect, rng.uniform(0, math.pi))
    elif shape == "arc":  # long axis along χ (perpendicular to the radius)
        val = gauss(0, 0, sig, sig / max(aspect, 2.0), radial_angle + math.pi / 2)
    elif shape == "cluster":
        val = np.zeros(yy.shape[0:1] + xx.shape[1:])
        for _ in range(_ri(rng, (2, 6))):
            s = sig * rng.uniform(0.25, 0.6)
            val += rng.uniform(0.3, 1.0) * gauss(*(rng.normal(0, sig * 0.6, 2)), s, s / rng.uniform(1, 2),
                                                  rng.uniform(0, math.pi))
    elif shape == "irregular":
        base = gauss(0, 0, sig, sig / aspect, rng.uniform(0, math.pi))
        ny, nx = base.shape
        coarse = rng.normal(0, 1, (4, 4))
        iy = np.linspace(0, 3, ny)
        ix = np.linspace(0, 3, nx)
        fy, fx = iy - np.floor(iy).clip(0, 2), ix - np.floor(ix).clip(0, 2)
        ky, kx = np.floor(iy).clip(0, 2).astype(int), np.floor(ix).clip(0, 2).astype(int)
        c00 = coarse[ky][:, kx]
        c01 = coarse[ky][:, kx + 1]
        c10 = coarse[ky + 1][:, kx]
        c11 = coarse[ky + 1][:, kx + 1]
        fy, fx = fy[:, None], fx[None, :]
        noise = (c00 * (1 - fy) * (1 - fx) + c01 * (1 - fy) * fx + c10 * fy * (1 - fx) + c11 * fy * fx)
        val = base * np.clip(1.0 + 0.7 * noise, 0.0, None)
        val[val < rng.uniform(0.05, 0.3) * val.max()] = 0.0
    else:  # "pixels": a random-walk cluster of flat-topped pixels
        val = np.zeros(yy.shape[0:1] + xx.shape[1:])
        cy, cx = int(sy) - y0, int(sx) - x0
        n = max(int(size * size * rng.uniform(0.2, 0.6)), 2)
        steps = rng.integers(-1, 2, (n, 2))
        pos = np.cumsum(steps, axis=0) + np.array([cy, cx])
        pos[:, 0] = pos[:, 0].clip(0, val.shape[0] - 1)
        pos[:, 1] = pos[:, 1].clip(0, val.shape[1] - 1)
        val[pos[:, 0], pos[:, 1]] = rng.uniform(0.3, 1.0, n)
    m = val.max()
    if m > 0:
        spot[y0:y1, x0:x1] += (val * (peak / m)).astype(np.float32)


def powder_frame(index: int, seed: int = 0, size: tuple[int, int] = (1024, 1024),
                 config: PowderSimConfig | None = None, *, aux: bool = False) -> PowderFrame:
    """Frame ``index`` of ``seed`` (a one-off :class:`PowderSimulator`)."""
    return PowderSimulator(config, seed, size).frame(index, aux=aux)
