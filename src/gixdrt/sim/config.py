"""Parameters of the polar GIXD image simulator (:class:`SimConfig`).

Every optional step has a probability ``p_*`` (drawn once per image) and its parameters are drawn from
the ranges below, so that no two images are alike. Conventions:

- ``(lo, hi)`` ranges are drawn **uniformly** unless the field's comment says *log-uniform*
  (uniform in log space, for scale-like quantities); integer ranges are inclusive;
- positions and sizes along |Q| are in pixels (σ_x) or in fractions of the image width W (geometry,
  backgrounds), along φ in fractions of the image height H (so 512×512 and 512×1024 look alike);
- intensities are relative to the mean background, which is normalised to 1 over the visible region
  before the exposure scale turns everything into expected counts.

``SimConfig`` is frozen and JSON-friendly: :meth:`SimConfig.to_dict` / :meth:`SimConfig.from_dict`
round-trip exactly (tuples become lists and back), and unknown keys are an error.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

__all__ = ["PEAK_FIELDS", "SimConfig"]

#: per-label metadata (arrays of length K, aligned with the boxes)
PEAK_FIELDS: dict[str, type] = {
    "x": np.float32,  # true |Q| centre (px); box centre
    "sigma_x": np.float32,  # radial σ (px); box half-width
    "y": np.float32,  # φ centre of the drawn angular profile (rows; may lie in a dark region); rings: box centre
    "sigma_y": np.float32,  # angular σ (rows); NaN for rings and merged labels
    "amplitude": np.float32,  # peak height relative to the mean background (merged: the largest)
    "snr": np.float32,  # box-sum SNR of the label
    "ring": np.bool_,  # full ring (0–90° before masking)
    "n_merged": np.int32,  # how many drawn peaks the label stands for
}


Range = tuple[float, float]
IntRange = tuple[int, int]


@dataclass(frozen=True)
class SimConfig:
    """All distributions of the simulator. Defaults are documented per field."""

    # ---- contrast processing (the same chain as real data: gixdrt.kernels.contrast) ----
    contrast_coef: float = 5000.0  # log scale coefficient of the published chain
    contrast_clip: float = 2000.0  # CLAHE clip limit (single 1×1 tile, 16 bit)
    contrast_log: bool = True

    # ---- peaks: 2-D Gaussians (optionally pseudo-Voigt in |Q|), narrow in |Q|, long in φ ----
    n_peaks: IntRange = (1, 40)  # peaks drawn per image (before labels are merged / dropped)
    sigma_x: Range = (0.5, 4.0)  # radial Gaussian σ in pixels, log-uniform; the box is centre ± 1σ
    x_margin: float = 0.0  # peak centres lie in [x_margin·σ, W − 1 − x_margin·σ] (0: rings cut by the |Q| edge occur,
    # as the last ring of the published real frame is)
    p_x_edge: float = 0.0  # a peak's centre is drawn within 2σ_x inside the last column, so the |Q| edge cuts it
    # (the 3.81 Å⁻¹ ring of the published real frame); with the uniform draw this happens for only ~σ_x/W of peaks
    p_on_halo: float = 0.0  # a peak is centred on a broad "amorphous" halo (within ±halo σ of its centre), where
    # it stands little above a bright background (the 1.84 Å⁻¹ ring of the real frame); needs a halo in the image
    p_ring: float = 0.35  # full ring: flat in φ over 0–90° (before modulation and masking)
    sigma_phi: Range = (0.004, 0.3)  # segment angular σ as a fraction of H, log-uniform; box ± 2σ_φ
    p_phi_edge: float = 0.2  # a segment is centred exactly at φ = 0° or 90° (half each), cut by the edge
    amplitude: Range = (0.03, 300.0)  # peak height relative to the mean background, log-uniform
    p_voigt: float = 0.25  # radial profile is a pseudo-Voigt (same FWHM) instead of a Gaussian
    voigt_eta: Range = (0.05, 0.6)  # Lorentzian fraction of the pseudo-Voigt
    p_modulation: float = 0.8  # the angular profile is multiplied by 1-D Perlin noise
    modulation_depth: Range = (0.1, 0.85)  # profile ∈ [1 − depth, 1] along φ
    modulation_freq: Range = (1.0, 8.0)  # base frequency, cycles over 0–90°, log-uniform
    modulation_octaves: IntRange = (1, 4)  # octaves (each doubles frequency, halves amplitude)

    # ---- labels ----
    merge_sep: float = 1.5  # peaks closer than merge_sep·max(σ_x) with overlapping φ extents → one label
    close_retries: int = 3  # redraws of a centre that falls within merge_sep·max(σ_x) of an earlier peak
    min_snr: float = 10.0  # labels whose box-sum SNR is below this are dropped (the peak stays in the image)
    min_row_snr: float = 0.15  # ... or whose SNR per visible box row (box-sum SNR / √rows) is below this. 0.15 keeps
    # long faint rings labelled: the published model detects rings on the real frame that stand only ~0.05 above
    # a contrast background of ~0.5 (|Q| = 0.45, 1.84, 3.35 Å⁻¹); with 0.5 they were unlabelled, i.e. negatives
    min_rows: int = 3  # labels with fewer visible rows (at the centre column) are dropped

    # ---- background (relative units; normalised to mean 1 over the visible region) ----
    bg_floor: Range = (0.05, 1.0)  # constant level
    p_ramp: float = 0.6  # linear ramp in |Q| and φ
    ramp_amp: Range = (0.0, 1.5)  # |slope| over the full width / height, each axis, random sign
    p_bg_noise: float = 0.5  # smooth 2-D Perlin noise
    bg_noise_amp: Range = (0.05, 1.0)  # amplitude, log-uniform
    bg_noise_cells: Range = (1.0, 8.0)  # lattice cells across the image (each axis), log-uniform
    bg_noise_octaves: IntRange = (1, 3)
    p_halo: float = 0.6  # broad Gaussian "amorphous" halos in |Q|
    n_halo: IntRange = (1, 3)
    halo_sigma: Range = (0.03, 0.25)  # σ as a fraction of W, log-uniform
    halo_amp: Range = (0.2, 4.0)  # amplitude, log-uniform (slowly varying in φ, ±30 %)
    p_decay: float = 0.4  # diffuse low-|Q| scattering amp·exp(−x/ℓ)
    decay_amp: Range = (0.5, 10.0)  # log-uniform
    decay_length: Range = (0.02, 0.2)  # ℓ as a fraction of W, log-uniform

    # ---- counting statistics and detector ----
    exposure: Range = (3.0, 3000.0)  # expected counts of the mean background per pixel, log-uniform
    p_read_noise: float = 0.5  # additive Gaussian read-out / dark-subtraction noise (values < 0 occur)
    read_noise: Range = (0.05, 1.0)  # σ relative to the mean background counts, log-uniform
    p_oversample: float = 0.5  # low-|Q| angular oversampling: noise streaks along φ (as the remap gives)
    oversample_density: Range = (1.0, 5.0)  # detector pixels per column; column x has density·x·π/2 samples
    p_hot_pixels: float = 0.2  # isolated very bright pixels (unlabelled)
    n_hot_pixels: IntRange = (1, 20)
    hot_amp: Range = (10.0, 1000.0)  # relative to the mean background, log-uniform

    # ---- geometry-dependent dark regions (pixels set to 0 counts, as the polar remap gives) ----
    # Detector-plane approximation: a polar pixel (x, φ) lies at u = x·cos φ, v = x·sin φ (column units)
    # from the beam; row 0 is φ = 0° (in plane), row H − 1 is φ = 90° (out of plane).
    p_wedge: float = 0.85  # missing wedge near φ = 90°: cos φ < s·q·sin²φ + c (q = x/(W − 1))
    wedge_strength: Range = (0.02, 0.3)  # s: wedge half-angle (rad) reached at the last column
    wedge_offset: Range = (0.0, 0.015)  # c (rad): wedge at |Q| = 0
    p_corner_inplane: float = 0.45  # detector edge in q_xy: dark where u > c·(W − 1) (high |Q|, low φ)
    corner_inplane: Range = (0.6, 1.0)
    p_corner_vertical: float = 0.3  # detector edge in q_z: dark where v > c·(W − 1) (high |Q|, high φ)
    corner_vertical: Range = (0.6, 1.0)
    p_beamstop: float = 0.4  # low-|Q| shadow: x < r·(1 + wobble(φ))
    beamstop_radius: Range = (0.005, 0.06)  # fraction of W
    p_holder: float = 0.1  # beam-stop holder: band |x·sin(φ − θ)| < w around an angle θ
    holder_width: Range = (0.003, 0.02)  # fraction of W
    p_horizon: float = 0.15  # sample horizon at low φ: dark where v < h
    horizon: Range = (0.002, 0.03)  # fraction of W
    p_gaps: float = 0.4  # detector module gaps: stripes u ∈ [g, g + w] or v ∈ [g, g + w]
    n_gaps: IntRange = (1, 4)
    gap_width: Range = (1.0, 8.0)  # pixels (columns)
    gap_position: Range = (0.05, 1.3)  # g as a fraction of W

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):  # accept lists (from JSON) and store tuples
                object.__setattr__(self, f.name, v := tuple(v))
            if f.name.startswith("p_"):
                if not (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
                    raise ValueError(f"SimConfig.{f.name} must be a probability in [0, 1], got {v!r}")
            elif isinstance(v, tuple):
                if len(v) != 2 or not all(isinstance(a, (int, float)) and math.isfinite(a) for a in v):
                    raise ValueError(f"SimConfig.{f.name} must be a (lo, hi) pair of numbers, got {v!r}")
                if v[0] > v[1]:
                    raise ValueError(f"SimConfig.{f.name}: lo > hi in {v!r}")
        positive = ("sigma_x", "sigma_phi", "amplitude", "modulation_freq", "bg_noise_amp", "bg_noise_cells",
                    "halo_sigma", "halo_amp", "decay_amp", "decay_length", "exposure", "read_noise",
                    "hot_amp", "beamstop_radius", "holder_width", "gap_width")
        for name in positive:
            if getattr(self, name)[0] <= 0:
                raise ValueError(f"SimConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("n_peaks", "modulation_octaves", "bg_noise_octaves", "n_halo", "n_hot_pixels", "n_gaps"):
            lo, hi = getattr(self, name)
            if int(lo) != lo or int(hi) != hi or lo < 0:
                raise ValueError(f"SimConfig.{name} must be non-negative integers, got {getattr(self, name)!r}")
        if self.n_peaks[0] < 0 or self.modulation_octaves[0] < 1 or self.bg_noise_octaves[0] < 1:
            raise ValueError("SimConfig: octave counts must be ≥ 1")
        if not 0.0 <= self.modulation_depth[0] <= self.modulation_depth[1] < 1.0:
            raise ValueError(f"SimConfig.modulation_depth must lie in [0, 1), got {self.modulation_depth!r}")
        if not 0.0 <= self.voigt_eta[0] <= self.voigt_eta[1] <= 1.0:
            raise ValueError(f"SimConfig.voigt_eta must lie in [0, 1], got {self.voigt_eta!r}")
        if self.min_rows < 1 or self.close_retries < 0 or self.merge_sep < 0 or self.min_snr < 0 or self.min_row_snr < 0 or self.x_margin < 0:
            raise ValueError("SimConfig: min_rows ≥ 1, close_retries ≥ 0 and merge_sep, min_snr, min_row_snr, x_margin ≥ 0 required")
        if self.contrast_coef <= 0 or self.contrast_coef > 65535 or self.contrast_clip < 0:
            raise ValueError("SimConfig: contrast_coef in (0, 65535] and contrast_clip ≥ 0 required")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SimConfig:
        """Inverse of :meth:`to_dict`; missing keys take the defaults, unknown keys raise ValueError."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown simulator parameter(s): {', '.join(unknown)}")
        return cls(**d)

    def replace(self, **changes: Any) -> SimConfig:
        """A copy with some fields changed (validated)."""
        return replace(self, **changes)

    @classmethod
    def shifted(cls) -> SimConfig:
        """The shifted simulator (``configs/sim-shifted.yaml``): every change moves a distribution away from the
        training defaults, for checking that a model generalises (the ``shifted`` simulator mode)."""
        return cls(**SHIFTED)


#: the shifted simulator's overrides of the defaults (the same values as ``configs/sim-shifted.yaml``)
SHIFTED: dict[str, Any] = {
    "n_peaks": (5, 60), "sigma_x": (0.7, 6.0), "sigma_phi": (0.01, 0.5), "p_ring": 0.6, "amplitude": (0.1, 100.0),
    "p_voigt": 0.5, "voigt_eta": (0.2, 0.9), "p_modulation": 0.95, "modulation_depth": (0.3, 0.95),
    "modulation_freq": (2.0, 16.0), "p_bg_noise": 0.8, "bg_noise_amp": (0.1, 2.0), "p_halo": 0.9,
    "halo_amp": (0.5, 8.0), "exposure": (5.0, 1000.0), "p_oversample": 0.8, "p_gaps": 0.7, "n_gaps": (2, 6),
    "p_beamstop": 0.7, "p_wedge": 1.0,
}
