"""Powder diffraction geometry in pyFAI's PONI convention, and the exact 2θ and χ of every pixel.

A :class:`PowderGeometry` holds the six PONI parameters (``dist``, ``poni1``, ``poni2`` in metres; ``rot1``,
``rot2``, ``rot3`` in radians), the wavelength (metres), the pixel size (``pixel1`` along rows = dimension 1,
``pixel2`` along columns = dimension 2, metres) and the frame shape (rows, columns).

Pixel ``(i, j)`` (row, column) has its centre at ``p1 = (i + 0.5)·pixel1 − poni1``, ``p2 = (j + 0.5)·pixel2 −
poni2`` on the detector, ``L = dist`` in front of the sample. With the rotations applied (pyFAI's convention,
rotations about axes 1, 2 and 3 in that order; c_k = cos rot_k, s_k = sin rot_k)::

    t1 = p1·c2·c3 + p2·(c3·s1·s2 − c1·s3) − L·(c1·c3·s2 + s1·s3)
    t2 = p1·c2·s3 + p2·(c1·c3 + s1·s2·s3) − L·(−c3·s1 + c1·s2·s3)
    t3 = p1·s2 − p2·c2·s1 + L·c1·c2

the scattering angle is ``2θ = atan2(√(t1² + t2²), t3)`` and the azimuth ``χ = atan2(t1, t2)`` (radians, in
(−π, π]), as pyFAI's ``twoThetaArray`` and ``chiArray``. With no tilt the direct beam hits the detector at
``(poni1, poni2)``, i.e. at pixel index ``(poni1/pixel1 − 0.5, poni2/pixel2 − 0.5)``.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

__all__ = ["PowderGeometry", "read_poni"]


@dataclass(frozen=True)
class PowderGeometry:
    """A flat detector in pyFAI's PONI convention (lengths in metres, angles in radians).

    ``shape`` is (rows, columns) of the frame. ``wavelength`` is the X-ray wavelength in metres
    (1 Å = 1e-10 m).
    """

    dist: float
    poni1: float
    poni2: float
    rot1: float = 0.0
    rot2: float = 0.0
    rot3: float = 0.0
    wavelength: float = 1e-10
    pixel1: float = 150e-6
    pixel2: float = 150e-6
    shape: tuple[int, int] = (2880, 2880)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", (int(self.shape[0]), int(self.shape[1])))
        for name in ("dist", "wavelength", "pixel1", "pixel2"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"PowderGeometry.{name} must be a positive number, got {v!r}")
        for name in ("poni1", "poni2", "rot1", "rot2", "rot3"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"PowderGeometry.{name} must be finite, got {getattr(self, name)!r}")
        if self.shape[0] < 1 or self.shape[1] < 1:
            raise ValueError(f"PowderGeometry.shape must be positive, got {self.shape}")

    # ---- construction ----
    @classmethod
    def from_beam_center(
        cls,
        shape: tuple[int, int],
        center: tuple[float, float],
        dist: float,
        *,
        pixel: float | tuple[float, float] = 150e-6,
        wavelength: float = 1e-10,
        rot1: float = 0.0,
        rot2: float = 0.0,
        rot3: float = 0.0,
    ) -> PowderGeometry:
        """Place the PONI at pixel index ``center`` = (row, column) (the direct beam there when untilted)."""
        p1, p2 = (pixel, pixel) if np.isscalar(pixel) else pixel  # type: ignore[misc]
        return cls(
            dist=float(dist),
            poni1=(float(center[0]) + 0.5) * p1,
            poni2=(float(center[1]) + 0.5) * p2,
            rot1=rot1,
            rot2=rot2,
            rot3=rot3,
            wavelength=float(wavelength),
            pixel1=float(p1),
            pixel2=float(p2),
            shape=shape,
        )

    @classmethod
    def from_poni(cls, path: str | os.PathLike, shape: tuple[int, int] | None = None) -> PowderGeometry:
        """Read a pyFAI PONI file (versions 1 and 2). ``shape`` overrides the detector's ``max_shape``
        (needed when the file carries none)."""
        values = read_poni(path)
        p = str(path)

        def need(key: str) -> float:
            if key not in values:
                raise ConfigError("missing key", path=p, key=key)
            try:
                return float(values[key])
            except (TypeError, ValueError):
                raise ConfigError(f"not a number: {values[key]!r}", path=p, key=key) from None

        det = values.get("_detector_config", {})
        pixel1 = float(det.get("pixel1", values.get("PixelSize1", 0)) or 0)
        pixel2 = float(det.get("pixel2", values.get("PixelSize2", 0)) or 0)
        if pixel1 <= 0 or pixel2 <= 0:
            raise ConfigError("no pixel size (PixelSize1/2 or Detector_config pixel1/2)", path=p)
        if shape is None:
            ms = det.get("max_shape")
            if not ms:
                raise ConfigError("no detector max_shape; pass the frame shape", path=p)
            shape = (int(ms[0]), int(ms[1]))
        return cls(
            dist=need("Distance"),
            poni1=need("Poni1"),
            poni2=need("Poni2"),
            rot1=need("Rot1"),
            rot2=need("Rot2"),
            rot3=need("Rot3"),
            wavelength=need("Wavelength"),
            pixel1=pixel1,
            pixel2=pixel2,
            shape=tuple(shape),  # type: ignore[arg-type]
        )

    def replace(self, **changes: Any) -> PowderGeometry:
        return replace(self, **changes)

    def poni_text(self) -> str:
        """This geometry as a PONI file (version 2, as pyFAI writes it: a generic detector with the pixel sizes and
        ``max_shape``), which :meth:`from_poni` reads back exactly (floats written with ``repr``)."""
        import json

        det = json.dumps({"pixel1": self.pixel1, "pixel2": self.pixel2, "max_shape": list(self.shape)})
        return (f"# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis\n"
                f"poni_version: 2\nDetector: Detector\nDetector_config: {det}\n"
                f"Distance: {self.dist!r}\nPoni1: {self.poni1!r}\nPoni2: {self.poni2!r}\n"
                f"Rot1: {self.rot1!r}\nRot2: {self.rot2!r}\nRot3: {self.rot3!r}\nWavelength: {self.wavelength!r}\n")

    def write_poni(self, path: str | os.PathLike) -> Path:
        """Write :meth:`poni_text` to ``path`` (atomically; an existing file is replaced only when complete)."""
        from ..io.atomic import atomic_path

        out = Path(path)
        with atomic_path(out) as tmp:
            Path(tmp).write_text(self.poni_text(), encoding="utf-8")
        return out

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d

    # ---- derived quantities ----
    @property
    def beam_center(self) -> tuple[float, float]:
        """Pixel index (row, column) where the direct beam (2θ = 0) hits the detector."""
        # t1 and t2 are linear in the detector coordinates (p1, p2): solve t1 = t2 = 0
        t0 = np.array(self._rotate(0.0, 0.0)[:2])
        m = np.stack([np.array(self._rotate(1.0, 0.0)[:2]) - t0, np.array(self._rotate(0.0, 1.0)[:2]) - t0], axis=1)
        p1, p2 = np.linalg.solve(m, -t0)
        return float((p1 + self.poni1) / self.pixel1 - 0.5), float((p2 + self.poni2) / self.pixel2 - 0.5)

    def positions(self, rows: np.ndarray | None = None, cols: np.ndarray | None = None):
        """(t1, t2, t3) float64 in metres for the pixel centres (full frame by default, or given
        index arrays that broadcast together)."""
        if rows is None or cols is None:
            rows = np.arange(self.shape[0], dtype=np.float64)[:, None]
            cols = np.arange(self.shape[1], dtype=np.float64)[None, :]
        p1 = (np.asarray(rows, np.float64) + 0.5) * self.pixel1 - self.poni1
        p2 = (np.asarray(cols, np.float64) + 0.5) * self.pixel2 - self.poni2
        return self._rotate(p1, p2)

    def _rotate(self, p1, p2):
        """(t1, t2, t3) of detector coordinates (p1, p2) in metres relative to the PONI."""
        L = self.dist
        c1, s1 = math.cos(self.rot1), math.sin(self.rot1)
        c2, s2 = math.cos(self.rot2), math.sin(self.rot2)
        c3, s3 = math.cos(self.rot3), math.sin(self.rot3)
        t1 = p1 * (c2 * c3) + p2 * (c3 * s1 * s2 - c1 * s3) - L * (c1 * c3 * s2 + s1 * s3)
        t2 = p1 * (c2 * s3) + p2 * (c1 * c3 + s1 * s2 * s3) - L * (-c3 * s1 + c1 * s2 * s3)
        t3 = p1 * s2 - p2 * (c2 * s1) + L * (c1 * c2)
        return t1, t2, t3

    def tth(self) -> np.ndarray:
        """2θ of every pixel centre: float64[rows, cols] in radians."""
        t1, t2, t3 = self.positions()
        return np.arctan2(np.sqrt(t1 * t1 + t2 * t2), t3)

    def chi(self) -> np.ndarray:
        """Azimuth χ of every pixel centre: float64[rows, cols] in radians, (−π, π], pyFAI's convention."""
        t1, t2, _ = self.positions()
        return np.arctan2(t1, t2)

    def tth_range(self) -> tuple[float, float]:
        """(min, max) 2θ over the frame in radians."""
        t = self.tth()
        return float(t.min()), float(t.max())

    def d_spacing(self, tth: np.ndarray | float) -> np.ndarray | float:
        """d = λ / (2 sin θ) in ångström for 2θ in radians."""
        return self.wavelength * 1e10 / (2.0 * np.sin(np.asarray(tth) / 2.0))

    def tth_of_d(self, d: np.ndarray | float) -> np.ndarray:
        """2θ in radians of d-spacings (Å); NaN where λ > 2d (no reflection)."""
        s = self.wavelength * 1e10 / (2.0 * np.asarray(d, np.float64))
        with np.errstate(invalid="ignore"):
            return np.where(s <= 1.0, 2.0 * np.arcsin(np.minimum(s, 1.0)), np.nan)


def read_poni(path: str | os.PathLike) -> dict[str, Any]:
    """Key/value pairs of a PONI file; ``Detector_config`` (JSON, version 2) parsed into ``_detector_config``."""
    import json

    p = Path(path)
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise ConfigError("not a text PONI file", path=str(p)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", path=str(p)) from None
    values: dict[str, Any] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        values[key.strip()] = value.strip()
    if not values:
        raise ConfigError("empty PONI file", path=str(p))
    if "Detector_config" in values:
        try:
            values["_detector_config"] = json.loads(values["Detector_config"])
        except ValueError:
            raise ConfigError("Detector_config is not JSON", path=str(p)) from None
    return values
