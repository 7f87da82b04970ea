"""Experiment geometry and the polar sampling map.

A GIXD frame is turned into a polar image ``P[i, j]`` with

- rows ``i = 0 … n_phi − 1``: the polar angle φ = i·90°/(n_phi − 1), from 0° (in the sample plane,
  q_z = 0) to 90° (along the surface normal, q_xy = 0);
- columns ``j = 0 … n_q − 1``: |Q| = j·q_max/(n_q − 1) in Å⁻¹, from 0 to q_max = √(q_xy_max² + q_z_max²).

For each polar pixel the detector position is (flat detector normal to the beam, sample tilted by the
incidence angle α; k = 2π/λ, d = distance/pixel size in pixels, a = q_xy/k, b = q_z/k)::

    L = d / (1 − (a² + b²)/2)
    z = (L·(b − sin α) + d·sin α) / cos α
    y = √(L² − z² − d²)            (undefined where L² − z² − d² < 0)
    column = y + y0,  row = z + z0

where (row z0, column y0) is the direct-beam position in the frame *after* the optional flips
(``flip_y`` reverses the rows, ``flip_x`` the columns; both are folded into the map, the frame is never
copied). The map is built once per geometry in float64 and cached (:func:`polar_map`).

Two config sources are read:

- the published gixi YAML as it is (sections ``q_space``, ``polar_config``, ``contrast``,
  ``postprocessing_config``; other sections are ignored): :func:`load_config`;
- a pyFAI PONI file plus an incidence angle: :meth:`Geometry.from_poni`.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from . import published
from .errors import ConfigError

__all__ = [
    "Config",
    "ContrastConfig",
    "Geometry",
    "PolarMap",
    "PostprocessConfig",
    "load_config",
    "polar_map",
]


def _number(section: Mapping[str, Any], key: str, prefix: str, path: str | None, *, default: Any = None) -> float:
    full = f"{prefix}.{key}"
    if key not in section or section[key] is None:
        if default is not None:
            return default
        raise ConfigError("missing key", path=path, key=full)
    value = section[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"expected a number, got {section[key]!r}", path=path, key=full) from None
    value = float(value)
    if not math.isfinite(value):
        raise ConfigError(f"must be finite, got {value}", path=path, key=full)
    return value


def _integer(section: Mapping[str, Any], key: str, prefix: str, path: str | None, *, default: Any = None) -> int:
    value = _number(section, key, prefix, path, default=default)
    if value != int(value):
        raise ConfigError(f"expected an integer, got {value}", path=path, key=f"{prefix}.{key}")
    return int(value)


def _flag(section: Mapping[str, Any], key: str, prefix: str, path: str | None, default: bool) -> bool:
    value = section.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}", path=path, key=f"{prefix}.{key}")
    return value


#: largest detector (rows × columns) and polar grid a config may describe: the bounds keep a typo in a config from
#: asking for terabytes (a 1e6 × 1e6 polar grid)
MAX_DETECTOR_PIXELS = 2**28
MAX_POLAR_SIDE = 16384
MAX_POLAR_PIXELS = 2**25


@dataclass(frozen=True)
class Geometry:
    """Detector and polar-grid geometry. Frozen and hashable: it is the key of the polar-map cache.

    Units: detector sizes in pixels, ``pixel_size`` and ``distance`` in mm, ``wavelength`` in Å,
    ``incidence_angle`` in degrees, q ranges in Å⁻¹. ``y0``/``z0``: direct-beam column/row in the frame
    after the flips. ``n_phi`` × ``n_q``: polar image rows × columns.
    """

    size_x: int  # detector columns
    size_y: int  # detector rows
    pixel_size: float
    distance: float
    wavelength: float
    incidence_angle: float
    y0: float
    z0: float
    q_xy_max: float
    q_z_max: float
    n_phi: int = 512
    n_q: int = 1024
    flip_x: bool = False
    flip_y: bool = False
    source: str | None = field(default=None, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key and the problem for impossible values."""
        p = self.source
        for key in ("size_x", "size_y"):
            if getattr(self, key) < 1:
                raise ConfigError(f"detector size must be ≥ 1 pixel, got {getattr(self, key)}", path=p, key=f"q_space.{key}")
        for key in ("pixel_size", "distance", "wavelength", "q_xy_max", "q_z_max"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"must be > 0, got {value}", path=p, key=f"q_space.{key}")
        if not (math.isfinite(self.incidence_angle) and -90.0 < self.incidence_angle < 90.0):
            raise ConfigError(
                f"must be in (−90°, 90°), got {self.incidence_angle}", path=p, key="q_space.incidence_angle"
            )
        if not (0 <= self.y0 <= self.size_x - 1):
            raise ConfigError(
                f"beam centre column {self.y0} is outside the detector (0 … {self.size_x - 1})", path=p, key="q_space.y0"
            )
        if not (0 <= self.z0 <= self.size_y - 1):
            raise ConfigError(
                f"beam centre row {self.z0} is outside the detector (0 … {self.size_y - 1})", path=p, key="q_space.z0"
            )
        if self.size_x * self.size_y > MAX_DETECTOR_PIXELS:
            raise ConfigError(f"a detector of {self.size_y}×{self.size_x} pixels is larger than the limit of "
                              f"{MAX_DETECTOR_PIXELS} (2^28) pixels", path=p, key="q_space.size_y × q_space.size_x")
        for key in ("n_phi", "n_q"):
            value = getattr(self, key)
            name = {"n_phi": "polar_config.angular_size", "n_q": "polar_config.q_size"}[key]
            if not 2 <= value <= MAX_POLAR_SIDE:
                raise ConfigError(f"polar size must be in [2, {MAX_POLAR_SIDE}], got {value}", path=p, key=name)
        if self.n_phi * self.n_q > MAX_POLAR_PIXELS:
            raise ConfigError(f"a polar image of {self.n_phi}×{self.n_q} = {self.n_phi * self.n_q} pixels is larger "
                              f"than the limit of {MAX_POLAR_PIXELS} (2^25; the published grid is 512×1024)", path=p,
                              key="polar_config.angular_size × polar_config.q_size")
        if 2 * math.pi / self.wavelength <= 0:  # pragma: no cover - guarded above
            raise ConfigError("wavelength gives no wave vector", path=p, key="q_space.wavelength")

    # -- derived quantities -----------------------------------------------------------------------
    @property
    def q_max(self) -> float:
        """Largest |Q| of the polar grid in Å⁻¹: √(q_xy_max² + q_z_max²)."""
        return math.hypot(self.q_xy_max, self.q_z_max)

    @property
    def frame_shape(self) -> tuple[int, int]:
        """(rows, columns) of a raw frame."""
        return (self.size_y, self.size_x)

    @property
    def polar_shape(self) -> tuple[int, int]:
        """(n_phi, n_q): rows = φ, columns = |Q|."""
        return (self.n_phi, self.n_q)

    def q_axis(self) -> np.ndarray:
        """float64[n_q]: |Q| of each polar column in Å⁻¹."""
        return np.arange(self.n_q, dtype=np.float64) * (self.q_max / (self.n_q - 1))

    def phi_axis(self) -> np.ndarray:
        """float64[n_phi]: φ of each polar row in degrees."""
        return np.arange(self.n_phi, dtype=np.float64) * (90.0 / (self.n_phi - 1))

    @property
    def frame_shape_note(self) -> str:
        """What a frame of another shape disagrees with: the config's keys and file, for error messages."""
        where = f" of {self.source}" if self.source else ""
        return (f"the detector size in the config, q_space.size_y × q_space.size_x = {self.size_y}×{self.size_x}"
                f"{where} (rows × columns): fix the config if the frames are right")

    def check_frame_shape(self, shape: tuple[int, ...], path: str | os.PathLike | None = None) -> None:
        """Raise :class:`~gixdrt.errors.FrameError` if a frame (or stack) does not fit this detector."""
        from .errors import FrameError

        if len(shape) not in (2, 3) or tuple(shape[-2:]) != self.frame_shape:
            raise FrameError(f"frame shape {tuple(shape)} does not match {self.frame_shape_note}", path=path)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source")
        return d

    # -- constructors ----------------------------------------------------------------------------
    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any], path: str | os.PathLike | None = None) -> Geometry:
        """Build from the published gixi YAML layout (``q_space`` and ``polar_config`` sections)."""
        p = None if path is None else os.fspath(path)
        if not isinstance(cfg, Mapping):
            raise ConfigError("expected a mapping of sections at the top level", path=p)
        qs = cfg.get("q_space")
        if qs is None:
            raise ConfigError("missing section", path=p, key="q_space")
        if not isinstance(qs, Mapping):
            raise ConfigError("expected a mapping", path=p, key="q_space")
        pc = cfg.get("polar_config") or {}
        if not isinstance(pc, Mapping):
            raise ConfigError("expected a mapping", path=p, key="polar_config")
        algorithm = pc.get("algorithm", 1)
        if algorithm not in (1, None):
            raise ConfigError(
                f"only bilinear interpolation (algorithm 1) is supported, got {algorithm!r}",
                path=p,
                key="polar_config.algorithm",
            )
        return cls(
            size_x=_integer(qs, "size_x", "q_space", p),
            size_y=_integer(qs, "size_y", "q_space", p),
            pixel_size=_number(qs, "pixel_size", "q_space", p),
            distance=_number(qs, "distance", "q_space", p),
            wavelength=_number(qs, "wavelength", "q_space", p),
            incidence_angle=_number(qs, "incidence_angle", "q_space", p),
            y0=_number(qs, "y0", "q_space", p),
            z0=_number(qs, "z0", "q_space", p),
            q_xy_max=_number(qs, "q_xy_max", "q_space", p),
            q_z_max=_number(qs, "q_z_max", "q_space", p),
            n_phi=_integer(pc, "angular_size", "polar_config", p, default=512),
            n_q=_integer(pc, "q_size", "polar_config", p, default=1024),
            flip_x=_flag(qs, "flip_x", "q_space", p, False),
            flip_y=_flag(qs, "flip_y", "q_space", p, False),
            source=p,
        )

    @classmethod
    def from_poni(
        cls,
        path: str | os.PathLike,
        incidence_angle: float,
        *,
        q_xy_max: float,
        q_z_max: float,
        shape: tuple[int, int] | None = None,
        n_phi: int = 512,
        n_q: int = 1024,
        flip_y: bool = True,
        flip_x: bool = False,
    ) -> Geometry:
        """Build from a pyFAI PONI file (versions 1 and 2) plus the incidence angle α in degrees.

        pyFAI gives distances in metres with the origin at the corner of the first pixel; pixel centres
        sit at (index + 0.5)·pixel, so the beam centre in pixel indices is ``poni / pixel − 0.5``. Only
        an untilted detector (rot1 = rot2 = rot3 = 0) and square pixels are supported. ``flip_y``
        (default True) reverses the rows so that q_z grows with the row index, as in the published
        configs; the beam row is converted accordingly. ``shape`` (rows, columns) is required when the
        PONI file does not carry the detector's ``max_shape``.
        """
        p = os.fspath(path)
        values = _read_poni(p)

        def need(key: str) -> float:
            for k, v in values.items():
                if k.lower() == key.lower():
                    try:
                        return float(v)
                    except (TypeError, ValueError):
                        raise ConfigError(f"expected a number, got {v!r}", path=p, key=key) from None
            raise ConfigError("missing key", path=p, key=key)

        distance_m = need("Distance")
        poni1, poni2 = need("Poni1"), need("Poni2")
        wavelength_m = need("Wavelength")
        for key in ("Rot1", "Rot2", "Rot3"):
            try:
                rot = need(key)
            except ConfigError:
                rot = 0.0
            if abs(rot) > 1e-9:
                raise ConfigError(f"tilted detectors are not supported (got {rot} rad)", path=p, key=key)
        det = values.get("Detector_config") or {}
        if isinstance(det, str):
            import json

            try:
                det = json.loads(det)
            except ValueError:
                raise ConfigError(f"not valid JSON: {det!r}", path=p, key="Detector_config") from None
        pixel1 = det.get("pixel1", values.get("PixelSize1"))
        pixel2 = det.get("pixel2", values.get("PixelSize2"))
        if pixel1 is None or pixel2 is None:
            raise ConfigError("missing key (pixel1/pixel2 or PixelSize1/PixelSize2)", path=p, key="Detector_config")
        pixel1, pixel2 = float(pixel1), float(pixel2)
        if pixel1 <= 0 or pixel2 <= 0:
            raise ConfigError(f"pixel sizes must be > 0, got {pixel1}, {pixel2}", path=p, key="Detector_config")
        if not math.isclose(pixel1, pixel2, rel_tol=1e-6):
            raise ConfigError(f"only square pixels are supported, got {pixel1} × {pixel2} m", path=p, key="Detector_config")
        if shape is None:
            max_shape = det.get("max_shape")
            if not max_shape:
                raise ConfigError("no detector shape: pass shape=(rows, columns)", path=p, key="Detector_config.max_shape")
            shape = (int(max_shape[0]), int(max_shape[1]))
        rows, cols = int(shape[0]), int(shape[1])
        row = poni1 / pixel1 - 0.5
        col = poni2 / pixel2 - 0.5
        if flip_y:
            row = rows - 1 - row
        if flip_x:
            col = cols - 1 - col
        return cls(
            size_x=cols,
            size_y=rows,
            pixel_size=pixel1 * 1e3,
            distance=distance_m * 1e3,
            wavelength=wavelength_m * 1e10,
            incidence_angle=float(incidence_angle),
            y0=col,
            z0=row,
            q_xy_max=float(q_xy_max),
            q_z_max=float(q_z_max),
            n_phi=int(n_phi),
            n_q=int(n_q),
            flip_x=flip_x,
            flip_y=flip_y,
            source=p,
        )


def _read_poni(path: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=path) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text PONI file", path=path) from None
    values: dict[str, Any] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise ConfigError(f"line {lineno}: expected 'key: value', got {line!r}", path=path)
        values[key.strip()] = value.strip()
    if not values:
        raise ConfigError("empty PONI file", path=path)
    return values


@dataclass(frozen=True)
class ContrastConfig:
    """The ``contrast`` section: coef (log scale), CLAHE clip limit, log on/off, disable."""

    coef: float = published.CONTRAST_COEF
    limit: float = published.CONTRAST_LIMIT
    log: bool = True
    disable: bool = False

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None, path: str | None = None) -> ContrastConfig:
        s = section or {}
        if not isinstance(s, Mapping):
            raise ConfigError("expected a mapping", path=path, key="contrast")
        coef = _number(s, "coef", "contrast", path, default=cls.coef)
        limit = _number(s, "limit", "contrast", path, default=cls.limit)
        if coef <= 0 or coef > 65535:
            raise ConfigError(f"must be in (0, 65535], got {coef}", path=path, key="contrast.coef")
        if limit < 0:
            raise ConfigError(f"must be ≥ 0, got {limit}", path=path, key="contrast.limit")
        return cls(
            coef=coef,
            limit=limit,
            log=_flag(s, "log", "contrast", path, True),
            disable=_flag(s, "disable", "contrast", path, False),
        )


@dataclass(frozen=True)
class PostprocessConfig:
    """The ``postprocessing_config`` section: NMS IoU and score threshold of the final filter."""

    nms_level: float = published.NMS_IOU
    score_level: float = published.SCORE_THRESHOLD

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any] | None, path: str | None = None) -> PostprocessConfig:
        s = section or {}
        if not isinstance(s, Mapping):
            raise ConfigError("expected a mapping", path=path, key="postprocessing_config")
        nms = _number(s, "nms_level", "postprocessing_config", path, default=cls.nms_level)
        score = _number(s, "score_level", "postprocessing_config", path, default=cls.score_level)
        for key, value in (("nms_level", nms), ("score_level", score)):
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"must be in [0, 1], got {value}", path=path, key=f"postprocessing_config.{key}")
        return cls(nms_level=nms, score_level=score)


@dataclass(frozen=True)
class MaskConfig:
    """The ``mask`` section: which detector pixels take no part in the polar image (see :mod:`gixdrt.io.masks`).

    ``mask: FILE`` or ``mask: {file: FILE, saturation_value: V, detector: true}``. file: an image of the detector's
    shape, nonzero = masked (relative paths are relative to the config's folder); saturation_value: pixel values at
    or above it are masked; detector: also use the ``pixel_mask`` and ``saturation_value`` of NeXus/Eiger HDF5
    inputs (default true). Non-finite pixels and the data type's flag value are always masked.
    """

    file: str | None = None
    saturation_value: float | None = None
    detector: bool = True

    @classmethod
    def from_mapping(cls, section: Any, path: str | None = None) -> MaskConfig:
        if section is None:
            return cls()
        if isinstance(section, str):
            section = {"file": section}
        if not isinstance(section, Mapping):
            raise ConfigError("expected a file name or a mapping (file, saturation_value, detector)", path=path,
                              key="mask")
        unknown = sorted(set(section) - {"file", "saturation_value", "detector"})
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(map(str, unknown))}; expected file, saturation_value, "
                              "detector", path=path, key="mask")
        file = section.get("file")
        if file is not None:
            if not isinstance(file, str) or not file.strip():
                raise ConfigError(f"expected a file name, got {file!r}", path=path, key="mask.file")
            if path is not None and not os.path.isabs(file):
                file = os.path.join(os.path.dirname(os.path.abspath(path)), file)
        saturation = None
        if section.get("saturation_value") is not None:
            saturation = _number(section, "saturation_value", "mask", path)
            if saturation <= 0:
                raise ConfigError(f"must be > 0, got {saturation}", path=path, key="mask.saturation_value")
        return cls(file=file, saturation_value=saturation, detector=_flag(section, "detector", "mask", path, True))


@dataclass(frozen=True)
class Config:
    """A whole config: geometry, contrast, postprocessing and the number of frames summed."""

    geometry: Geometry
    contrast: ContrastConfig = ContrastConfig()
    postprocessing: PostprocessConfig = PostprocessConfig()
    sum_images: int = 1
    mask: MaskConfig = MaskConfig()
    source: str | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The config in the published YAML layout (readable back by :func:`load_config`)."""
        g = self.geometry
        q_space = {f.name: getattr(g, f.name) for f in fields(g) if f.name not in ("n_phi", "n_q", "source")}
        return {
            "q_space": q_space,
            "polar_config": {"algorithm": 1, "angular_size": g.n_phi, "q_size": g.n_q},
            "contrast": asdict(self.contrast),
            "postprocessing_config": asdict(self.postprocessing),
            "general": {"sum_images": self.sum_images},
            **({"mask": asdict(self.mask)} if self.mask != MaskConfig() else {}),
        }


def load_config(path: str | os.PathLike) -> Config:
    """Read a published gixi YAML config (or ours, which uses the same sections) and validate it."""
    import yaml

    p = os.fspath(path)
    try:
        text = Path(p).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError("file not found", path=p) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, expected a YAML file", path=p) from None
    except UnicodeDecodeError:
        raise ConfigError("not a text file (expected YAML)", path=p) from None
    if not text.strip():
        raise ConfigError("empty file", path=p)
    try:
        cfg = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({exc})", path=p) from None
    return config_from_mapping(cfg, p)


def config_from_mapping(cfg: Mapping[str, Any], path: str | None = None) -> Config:
    """Validate an already parsed config mapping (the published YAML layout)."""
    geometry = Geometry.from_mapping(cfg, path)
    general = cfg.get("general") or {}
    if not isinstance(general, Mapping):
        raise ConfigError("expected a mapping", path=path, key="general")
    # The published configs set sum_images for their live mode; frames are summed only when asked
    # for (``--sum``), so it is kept as information rather than applied silently.
    sum_images = _integer(general, "sum_images", "general", path, default=1)
    if sum_images < 1:
        raise ConfigError(f"must be ≥ 1, got {sum_images}", path=path, key="general.sum_images")
    return Config(
        geometry=geometry,
        contrast=ContrastConfig.from_mapping(cfg.get("contrast"), path),
        postprocessing=PostprocessConfig.from_mapping(cfg.get("postprocessing_config"), path),
        sum_images=sum_images,
        mask=MaskConfig.from_mapping(cfg.get("mask"), path),
        source=path,
    )


# -------------------------------------------------------------------------------------------------
# The polar sampling map
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class PolarMap:
    """Where each polar pixel samples the raw frame, for one :class:`Geometry`.

    Arrays (shape (n_phi, n_q), rows = φ, columns = |Q|):

    - ``row``, ``col``: float64 source position in the *raw* frame (flips already applied), NaN where
      the geometry leaves it undefined;
    - ``defined``: bool, the position exists (L² − z² − d² ≥ 0);
    - ``inside``: bool, defined and at least partly on the detector (−1 < row < rows, −1 < col < cols), i.e.
      bilinear sampling with a zero border gives a contribution;
    - kernel form: ``y0``/``x0`` int32 top-left source pixel (−2 where undefined, so all four
      neighbours fall outside and sample 0), ``fy``/``fx`` float32 bilinear fractions in [0, 1). They
      describe the positions rounded to float32 in the config's (flipped) frame, as the published
      pipeline's float32 OpenCV maps did, so y0 + fy equals ``row`` to float32 precision (~1e-4 px).
    """

    geometry: Geometry
    row: np.ndarray
    col: np.ndarray
    defined: np.ndarray
    inside: np.ndarray
    y0: np.ndarray
    x0: np.ndarray
    fy: np.ndarray
    fx: np.ndarray
    _device: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.geometry.polar_shape

    @functools.cached_property
    def inside_count(self) -> int:
        """How many polar pixels sample the detector."""
        return int(np.count_nonzero(self.inside))

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.geometry.frame_shape

    def opencv_maps(self, undefined: float = -10.0) -> tuple[np.ndarray, np.ndarray]:
        """float32 (map_x, map_y) for ``cv2.remap``, undefined positions moved to ``undefined`` (off the frame)."""
        mx = np.where(self.defined, self.col, undefined).astype(np.float32)
        my = np.where(self.defined, self.row, undefined).astype(np.float32)
        return mx, my

    def device_arrays(self, stream: Any = None) -> tuple[Any, Any, Any, Any]:
        """The kernel arrays (y0, x0, fy, fx) on the current CUDA device, uploaded once and cached."""
        from numba import cuda

        from .kernels.registry import cudasim

        key = "sim" if cudasim() else cuda.get_current_device().id
        if key not in self._device:
            s = stream if stream is not None else 0
            self._device[key] = tuple(
                cuda.to_device(np.ascontiguousarray(a), stream=s) for a in (self.y0, self.x0, self.fy, self.fx)
            )
        return self._device[key]


def build_polar_map(geometry: Geometry) -> PolarMap:
    """Compute the sampling map of ``geometry`` (float64 math). Prefer :func:`polar_map`, which caches."""
    g = geometry
    q = g.q_axis()[None, :]
    phi = np.deg2rad(g.phi_axis())[:, None]
    k = 2.0 * math.pi / g.wavelength
    d = g.distance / g.pixel_size
    alpha = math.radians(g.incidence_angle)
    a = q * np.cos(phi) / k
    b = q * np.sin(phi) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = 1.0 - (a * a + b * b) / 2.0
        L = d / denom
        z = (L * (b - math.sin(alpha)) + d * math.sin(alpha)) / math.cos(alpha)
        y2 = L * L - z * z - d * d
        # |Q| ≥ 2k (denominator ≤ 0) cannot scatter at all; elsewhere y² < 0 means no detector point.
        defined = (denom > 0) & np.isfinite(y2) & (y2 >= 0)
        y = np.sqrt(np.where(defined, y2, 0.0))
    col = np.where(defined, y + g.y0, np.nan)
    row = np.where(defined, z + g.z0, np.nan)
    # The kernels sample at these positions rounded to float32 in the (flipped) frame of the config,
    # exactly as the published pipeline's float32 OpenCV maps did: with float64 positions the polar
    # image moves by ~1e-4 counts, enough to flip a few 16-bit levels of the contrast chain.
    row32 = row.astype(np.float32).astype(np.float64)
    col32 = col.astype(np.float32).astype(np.float64)
    # Fold the flips into the map: flipped-frame position → raw-frame position (exact in float64).
    if g.flip_y:
        row, row32 = (g.size_y - 1) - row, (g.size_y - 1) - row32
    if g.flip_x:
        col, col32 = (g.size_x - 1) - col, (g.size_x - 1) - col32
    with np.errstate(invalid="ignore"):
        inside = defined & (row32 > -1) & (row32 < g.size_y) & (col32 > -1) & (col32 < g.size_x)
    safe_row = np.where(inside, row32, -2.0)
    safe_col = np.where(inside, col32, -2.0)
    y0 = np.floor(safe_row)
    x0 = np.floor(safe_col)
    # The fractions of float32 positions are exact in float32.
    fy = (safe_row - y0).astype(np.float32)
    fx = (safe_col - x0).astype(np.float32)
    arrays = {"row": row, "col": col, "defined": defined, "inside": inside, "y0": y0.astype(np.int32),
              "x0": x0.astype(np.int32), "fy": fy, "fx": fx}
    for arr in arrays.values():
        arr.setflags(write=False)
    pmap = PolarMap(geometry=g, **arrays)
    _warn_poor_sampling(pmap)
    return pmap


#: a polar grid whose pixels fall on the detector less often than this, or that samples fewer distinct detector
#: pixels than its own pixels divided by this, is warned about (it cannot show peaks)
MIN_INSIDE_FRACTION = 0.05
MAX_REPEATS = 64


def _warn_poor_sampling(pmap: PolarMap) -> None:
    """A ConfigWarning when the config's q range maps the polar grid onto almost nothing of the detector."""
    import warnings

    from .errors import ConfigWarning

    g = pmap.geometry
    n = g.n_phi * g.n_q
    where = f" ({g.source})" if g.source else ""
    inside = int(np.count_nonzero(pmap.inside))
    if inside < MIN_INSIDE_FRACTION * n:
        warnings.warn(f"only {100 * inside / n:.1f} % of the {g.n_phi}×{g.n_q} polar grid falls on the detector"
                      f"{where}: check q_space.q_xy_max and q_space.q_z_max ({g.q_xy_max:g}, {g.q_z_max:g} Å⁻¹), "
                      "the beam centre and the distance", ConfigWarning, stacklevel=3)
        return
    # distinct detector pixels by marking them (np.unique hashes or sorts: ~20× slower on a 512×1024 grid)
    seen = np.zeros((g.size_y + 2) * (g.size_x + 2), bool)
    seen[(pmap.y0[pmap.inside].astype(np.int64) + 1) * (g.size_x + 2) + (pmap.x0[pmap.inside].astype(np.int64) + 1)] = True
    distinct = int(np.count_nonzero(seen))
    if distinct * MAX_REPEATS < inside:
        warnings.warn(f"the {g.n_phi}×{g.n_q} polar grid samples only {distinct} distinct detector pixels{where}: "
                      f"q_space.q_xy_max and q_space.q_z_max ({g.q_xy_max:g}, {g.q_z_max:g} Å⁻¹) span a tiny part "
                      "of the detector, where no peak can be resolved", ConfigWarning, stacklevel=3)


@functools.lru_cache(maxsize=16)
def polar_map(geometry: Geometry) -> PolarMap:
    """The cached :class:`PolarMap` of ``geometry`` (built once per distinct geometry)."""
    return build_polar_map(geometry)
