"""Per-frame screening: is a frame a hit? Counts, new peaks, the best score, and a hits-only selection.

For each frame: ``n_peaks`` (peaks found), ``n_new`` (peaks that link to no peak of the previous frame: one-to-one
linking by IoU ≥ ``new_peak_iou``, exactly as :mod:`gixdrt.gixd.tracks` links with ``max_gap = 0``, so a new peak is
one that starts a track; every peak of the first frame, and of a frame after a frame that was never seen, is new),
``max_score`` (the highest peak score, NaN without peaks) and ``hit``::

    hit = min_peaks ≤ n_peaks  [and n_peaks ≤ max_peaks]  [and n_new ≥ min_new_peaks]  [and max_score ≥ min_score]

(bracketed terms only when set). OM's crystallography monitor uses ``min < n_peaks < max`` with strict bounds; here
both bounds are inclusive.

Hits-only selection (as facilities keep hits plus a random fraction of misses): a frame is **kept** when it is a
hit, or when its random draw u ∈ [0, 1) is below ``keep_misses``. The draw depends only on (``seed``, frame index)
(a SplitMix64 hash), so batch and frame-by-frame runs, and reruns, keep the same frames. Kept misses are flagged
(``kept_miss``) and every frame is counted (:meth:`FrameFlags.counts`): a statistic over misses estimated from the
kept ones weighs each by ``miss_weight = n_misses / n_kept_misses``.

:func:`screen` flags a whole table; :class:`Screener` flags frame by frame (live data) with the same result.
:func:`write_hits_list` writes the hit frames as an event list.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .peaks import PeakTable
from .tracks import DEFAULT_IOU, TrackLinker

__all__ = ["FrameFlag", "FrameFlags", "ScreeningConfig", "Screener", "event_line", "keep_draw", "screen",
           "write_hits_list"]


@dataclass(frozen=True)
class ScreeningConfig:
    """The hit criterion and the hits-only selection (see the module docstring).

    min_peaks: int ≥ 0; max_peaks: int ≥ min_peaks or None; min_new_peaks: int ≥ 0 or None; min_score: a finite
    score or None; new_peak_iou: (0, 1], the IoU that links a peak to the previous frame (0.3, as tracks);
    keep_misses: [0, 1], the fraction of misses kept by the hits-only selection; seed: int ≥ 0 of that draw.
    Invalid values raise :class:`gixdrt.errors.ConfigError` naming the key.
    """

    min_peaks: int = 1
    max_peaks: int | None = None
    min_new_peaks: int | None = None
    min_score: float | None = None
    new_peak_iou: float = DEFAULT_IOU
    keep_misses: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        def integer(key: str, value: Any, low: int, optional: bool) -> None:
            if value is None and optional:
                return
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ConfigError(f"{value!r} must be an integer ≥ {low}" + (" or null" if optional else ""),
                                  key=f"screening.{key}")

        integer("min_peaks", self.min_peaks, 0, False)
        integer("max_peaks", self.max_peaks, 0, True)
        integer("min_new_peaks", self.min_new_peaks, 0, True)
        integer("seed", self.seed, 0, False)
        if self.max_peaks is not None and self.max_peaks < self.min_peaks:
            raise ConfigError(f"{self.max_peaks} is below min_peaks {self.min_peaks}", key="screening.max_peaks")

        def number(key: str, value: Any, low: float, high: float, low_open: bool = False) -> None:
            ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (low < value if low_open else low <= value) and value <= high
            if not ok:
                raise ConfigError(f"{value!r} is outside {'(' if low_open else '['}{low}, {high}]",
                                  key=f"screening.{key}")

        if self.min_score is not None:
            number("min_score", self.min_score, -math.inf, math.inf)
        number("new_peak_iou", self.new_peak_iou, 0.0, 1.0, low_open=True)
        number("keep_misses", self.keep_misses, 0.0, 1.0)

    def is_hit(self, n_peaks: int, n_new: int, max_score: float) -> bool:
        """The criterion on one frame's numbers."""
        if n_peaks < self.min_peaks:
            return False
        if self.max_peaks is not None and n_peaks > self.max_peaks:
            return False
        if self.min_new_peaks is not None and n_new < self.min_new_peaks:
            return False
        if self.min_score is not None and not (max_score >= self.min_score):  # NaN (no peaks): not a hit
            return False
        return True

    def describe(self) -> str:
        """The criterion in words, e.g. ``peaks ≥ 1``."""
        parts = [f"peaks ≥ {self.min_peaks}"]
        if self.max_peaks is not None:
            parts.append(f"peaks ≤ {self.max_peaks}")
        if self.min_new_peaks is not None:
            parts.append(f"new peaks ≥ {self.min_new_peaks} (IoU {self.new_peak_iou})")
        if self.min_score is not None:
            parts.append(f"best score ≥ {self.min_score}")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> ScreeningConfig:
        """From a mapping with the field names (a ``screening:`` config section); unknown keys are errors."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}",
                              key="screening")
        return cls(**data)


# -------------------------------------------------------------------------------------------------
# the seeded per-frame draw
# -------------------------------------------------------------------------------------------------
_M64 = (1 << 64) - 1


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def keep_draw(seed: int, frames: int | Iterable[int]) -> np.ndarray:
    """float64 in [0, 1) per frame index: the hits-only selection's draw, a function of (seed, frame) only."""
    frames = np.atleast_1d(np.asarray(list(frames) if not np.isscalar(frames) else frames, np.int64))
    key = _splitmix64(np.array([int(seed) & _M64], np.uint64))
    z = _splitmix64(key ^ frames.astype(np.uint64))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


# -------------------------------------------------------------------------------------------------
# flags
# -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FrameFlag:
    """One frame's screening result: index, source label, peaks, new peaks, best score (NaN without peaks), hit,
    and whether the hits-only selection keeps it (every hit; misses drawn with probability keep_misses)."""

    frame: int
    source: str
    n_peaks: int
    n_new: int
    max_score: float
    hit: bool
    keep: bool

    @property
    def kept_miss(self) -> bool:
        return self.keep and not self.hit


@dataclass(frozen=True)
class FrameFlags:
    """Screening results of N frames (struct of arrays, in frame order): frame int64, source object (str),
    n_peaks int64, n_new int64, max_score float64 (NaN without peaks), hit bool, keep bool."""

    frame: np.ndarray
    source: np.ndarray
    n_peaks: np.ndarray
    n_new: np.ndarray
    max_score: np.ndarray
    hit: np.ndarray
    keep: np.ndarray

    NAMES = ("frame", "source", "n_peaks", "n_new", "max_score", "hit", "keep")

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, i: int) -> FrameFlag:
        return FrameFlag(int(self.frame[i]), str(self.source[i]), int(self.n_peaks[i]), int(self.n_new[i]),
                         float(self.max_score[i]), bool(self.hit[i]), bool(self.keep[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    @property
    def kept_miss(self) -> np.ndarray:
        """bool[N]: misses kept by the hits-only selection."""
        return self.keep & ~self.hit

    @classmethod
    def from_flags(cls, flags: Iterable[FrameFlag]) -> FrameFlags:
        flags = list(flags)
        return cls(
            frame=np.array([f.frame for f in flags], np.int64),
            source=np.array([f.source for f in flags] or [], dtype=object),
            n_peaks=np.array([f.n_peaks for f in flags], np.int64),
            n_new=np.array([f.n_new for f in flags], np.int64),
            max_score=np.array([f.max_score for f in flags], np.float64),
            hit=np.array([f.hit for f in flags], bool),
            keep=np.array([f.keep for f in flags], bool),
        )

    def counts(self) -> dict[str, Any]:
        """n_frames, n_hits, n_misses, n_kept_misses, hit_rate (hits / frames, NaN for no frames) and miss_weight
        (misses per kept miss: n_misses / n_kept_misses, NaN when no miss was kept)."""
        n = len(self)
        hits = int(self.hit.sum())
        kept = int(self.kept_miss.sum())
        return {
            "n_frames": n,
            "n_hits": hits,
            "n_misses": n - hits,
            "n_kept_misses": kept,
            "hit_rate": hits / n if n else math.nan,
            "miss_weight": (n - hits) / kept if kept else math.nan,
        }

    def to_records(self) -> np.ndarray:
        """A structured array (source as an object field; bools as uint8), e.g. for HDF5 ``/frames``."""
        dtype = [("frame", "<i8"), ("source", object), ("n_peaks", "<i8"), ("n_new", "<i8"), ("max_score", "<f8"),
                 ("hit", "u1"), ("keep", "u1")]
        out = np.empty(len(self), dtype)
        for name in self.NAMES:
            out[name] = getattr(self, name)
        return out


class Screener:
    """Flag frames one at a time: ``flag = screener.add(frame_index, table_of_frame)``.

    Frames come in increasing order (a skipped index counts as a frame never seen: the next frame's peaks are all
    new). Keeps running counts (:attr:`counts`) but not the flags, so memory stays bounded on endless series.
    """

    def __init__(self, config: ScreeningConfig | None = None):
        self.config = config if config is not None else ScreeningConfig()
        self._linker = TrackLinker(iou=self.config.new_peak_iou, max_gap=0)
        self.n_frames = 0
        self.n_hits = 0
        self.n_kept_misses = 0

    def add(self, frame_index: int, table: PeakTable, source: str | None = None) -> FrameFlag:
        """One frame's peaks (every row of ``table`` belongs to ``frame_index``; an empty table for a frame
        without peaks) → its :class:`FrameFlag`. source: the frame's label (default: the table's, else "")."""
        frame_index = int(frame_index)
        if len(table) and np.any(table.frame != frame_index):
            raise ValueError(f"frame {frame_index}: the table holds frames {np.unique(table.frame).tolist()}")
        self._linker.add(frame_index, table.boxes)
        n_new = int(self._linker.new.sum())
        n_peaks = len(table)
        max_score = float(np.max(table.score)) if n_peaks else math.nan
        hit = self.config.is_hit(n_peaks, n_new, max_score)
        keep_misses = self.config.keep_misses
        keep = hit or (keep_misses > 0 and bool(keep_draw(self.config.seed, frame_index)[0] < keep_misses))
        if source is None:
            source = str(table.source[0]) if n_peaks else ""
        self.n_frames += 1
        self.n_hits += hit
        self.n_kept_misses += keep and not hit
        return FrameFlag(frame_index, source, n_peaks, n_new, max_score, hit, keep)

    @property
    def counts(self) -> dict[str, int]:
        """n_frames, n_hits, n_misses, n_kept_misses so far."""
        return {"n_frames": self.n_frames, "n_hits": self.n_hits, "n_misses": self.n_frames - self.n_hits,
                "n_kept_misses": self.n_kept_misses}


def screen(
    table: PeakTable, n_frames: int, config: ScreeningConfig | None = None, *, sources: Sequence[str] | None = None
) -> FrameFlags:
    """Flags of frames 0 … n_frames − 1 of ``table`` (a frame without rows has no peaks).

    sources: each frame's label (length n_frames; default: the first row's source, "" for a frame without peaks).
    """
    n_frames = int(n_frames)
    if len(table) and (table.frame.min() < 0 or table.frame.max() >= n_frames):
        raise ValueError(f"frame indices {table.frame.min()}…{table.frame.max()} do not fit n_frames={n_frames}")
    if sources is not None and len(sources) != n_frames:
        raise ValueError(f"{len(sources)} sources for {n_frames} frames")
    screener = Screener(config)
    order = np.argsort(table.frame, kind="stable")
    bounds = np.searchsorted(table.frame[order], np.arange(n_frames + 1))
    flags = []
    for f in range(n_frames):
        rows = order[bounds[f]:bounds[f + 1]]
        flags.append(screener.add(f, table.select(rows), None if sources is None else str(sources[f])))
    return FrameFlags.from_flags(flags)


# -------------------------------------------------------------------------------------------------
# hits.lst
# -------------------------------------------------------------------------------------------------
_ONE_FRAME = re.compile(r"(?P<file>[^\[\]+]+?)(?:::(?P<dataset>/[^\[\]+]*))?\[(?P<index>\d+)\]")
_ONE_FILE = re.compile(r"(?P<file>[^\[\]+]+?)(?:::(?P<dataset>/[^\[\]+]*))?")


def event_line(source: str, frame: int) -> str:
    """One event-list line for a frame (see :func:`write_hits_list`)."""
    m = _ONE_FRAME.fullmatch(source)
    if m:
        return f"{m['file']} //{int(m['index'])}"
    m = _ONE_FILE.fullmatch(source)
    if source and m and not m["dataset"]:
        return source
    return source if source else f"//{int(frame)}"


def write_hits_list(path: str | os.PathLike, flags: FrameFlags) -> Path:
    """Write the hit frames of ``flags`` to ``path`` atomically, one line per hit, in frame order. Returns the path.

    Lines follow the event lists of CrystFEL and OM (``FILE //N``: frame N, 0-based, of the stack in FILE):

    - a frame of a stack (source ``stack.npy[3]``, ``scan.h5::/entry/data/data[12]``) → ``stack.npy //3``,
      ``scan.h5 //12`` (the HDF5 dataset path is left to the reader's geometry file, as CrystFEL expects);
    - a file holding one frame (``a.tif``) → ``a.tif``;
    - a summed frame or a group across files (``scan.h5::/data[12:15]``, ``a.tif+b.tif``) → the source label as it
      is (no single event matches a sum);
    - a frame without a known source → ``//F`` with F gixdrt's frame index.
    """
    from ..io.atomic import atomic_path

    path = Path(path)
    lines = [event_line(str(flags.source[i]), int(flags.frame[i])) for i in np.flatnonzero(flags.hit)]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path
