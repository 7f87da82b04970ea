"""Peak tables in physical units.

A :class:`PeakTable` holds one row per detected peak, as columns (struct of arrays)::

    frame, source, peak, q, phi, q_width, phi_width, score, x0, y0, x1, y1, intensity [, track]

- ``frame``: 0-based index of the (summed) frame in the order the inputs were given, across all files;
- ``source``: the file (and ``[index]`` inside a stack) the frame came from;
- ``peak``: 0-based index of the peak inside its frame, by decreasing score;
- ``x0, y0, x1, y1``: the box in polar pixels (x along |Q|, y along φ; pixel j's centre is at x = j);
- ``q``, ``phi``: the box centre in Å⁻¹ and degrees: |Q| = x̄·q_max/(W − 1), φ = ȳ·90°/(H − 1)
  (exact pixel-centre axes; the authors' files divide by W and H instead, a −0.1 % bias);
- ``q_width``, ``phi_width``: the box size in the same units;
- ``intensity``: the sum of the uncorrected polar image over the pixels whose centres lie in the box.

- ``track`` (only in a table whose peaks were linked across frames, :func:`gixdrt.gixd.tracks.link_tracks`):
  int64, the 0-based id of the peak's track, −1 for a peak of a track dropped as too short.

Without a geometry (polar or processed images given directly) ``q``, ``phi`` and the widths are NaN.
:data:`COLUMNS` are the columns of every table; a linked table has :data:`TRACK` appended (``table.names``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import numpy as np

from ..kernels.reference.layout import image_box_sums as box_sums

COLUMNS = ("frame", "source", "peak", "q", "phi", "q_width", "phi_width", "score", "x0", "y0", "x1", "y1", "intensity")
TRACK = "track"
_FLOAT = ("q", "phi", "q_width", "phi_width", "score", "x0", "y0", "x1", "y1", "intensity")


@dataclass
class PeakTable:
    """Detected peaks of one or more frames (see the module docstring for the columns)."""

    frame: np.ndarray
    source: np.ndarray
    peak: np.ndarray
    q: np.ndarray
    phi: np.ndarray
    q_width: np.ndarray
    phi_width: np.ndarray
    score: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray
    y1: np.ndarray
    intensity: np.ndarray
    track: np.ndarray | None = None  # int64 track ids of a linked table; None: not linked

    def __post_init__(self) -> None:
        n = len(self.frame)
        for f in fields(self):
            if getattr(self, f.name) is None and f.name == TRACK:
                continue
            col = np.asarray(getattr(self, f.name))
            if col.ndim != 1 or len(col) != n:
                raise ValueError(f"PeakTable column {f.name} has shape {col.shape}, expected ({n},)")
        self.frame = np.asarray(self.frame, np.int64)
        self.peak = np.asarray(self.peak, np.int64)
        if self.track is not None:
            track = np.asarray(self.track)
            if track.dtype.kind not in "iub" and len(track) and not np.array_equal(track, np.round(track)):
                raise ValueError("PeakTable column track must hold integers")
            self.track = track.astype(np.int64)
        self.source = np.asarray(self.source, dtype=object)
        for name in _FLOAT:
            setattr(self, name, np.asarray(getattr(self, name), np.float64))

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def boxes(self) -> np.ndarray:
        """float64[K, 4]: (x0, y0, x1, y1) in polar pixels."""
        return np.stack([self.x0, self.y0, self.x1, self.y1], axis=1) if len(self) else np.zeros((0, 4))

    @property
    def linked(self) -> bool:
        """True when the table has a ``track`` column."""
        return self.track is not None

    @property
    def names(self) -> tuple[str, ...]:
        """The table's columns: :data:`COLUMNS`, plus ``track`` when linked."""
        return (*COLUMNS, TRACK) if self.linked else COLUMNS

    def columns(self) -> dict[str, np.ndarray]:
        """{name: column} for :attr:`names` (``track`` included only when linked)."""
        return {name: getattr(self, name) for name in self.names}

    def select(self, mask: np.ndarray) -> PeakTable:
        """The rows picked by ``mask`` (a boolean mask or integer indices); the track column follows."""
        return PeakTable(**{name: col[mask] for name, col in self.columns().items()})

    def with_tracks(self, track: np.ndarray | None) -> PeakTable:
        """A copy of the table with ``track`` (int[K]) as its track column (None: without one)."""
        cols = {name: getattr(self, name) for name in COLUMNS}
        return PeakTable(**cols, track=None if track is None else np.asarray(track))

    def counts_per_frame(self, n_frames: int | None = None) -> np.ndarray:
        """int64[n_frames]: peaks found in each frame."""
        n = int(n_frames if n_frames is not None else (self.frame.max() + 1 if len(self) else 0))
        return np.bincount(self.frame, minlength=n).astype(np.int64)

    @classmethod
    def empty(cls, *, linked: bool = False) -> PeakTable:
        """A table without rows (with an empty ``track`` column when ``linked``)."""
        return cls(**{name: np.zeros(0) for name in COLUMNS}, track=np.zeros(0, np.int64) if linked else None)

    @classmethod
    def concat(cls, tables: Iterable[PeakTable]) -> PeakTable:
        """The rows of ``tables`` in order. The result is linked when any table with rows is linked; then every
        table with rows must be (ValueError otherwise: their track ids would be undefined)."""
        tables = list(tables)
        if not tables:
            return cls.empty()
        rows = [t for t in tables if len(t)]
        linked = [t.linked for t in rows] or [t.linked for t in tables]
        if any(linked) and not all(linked):
            raise ValueError("cannot concatenate peak tables with and without a track column")
        cols = {name: np.concatenate([getattr(t, name) for t in tables]) for name in COLUMNS}
        track = None
        if any(linked):
            track = np.concatenate([t.track if t.linked else np.zeros(0, np.int64) for t in tables])
        return cls(**cols, track=track)

    @classmethod
    def from_boxes(
        cls,
        boxes: np.ndarray,
        scores: np.ndarray,
        *,
        frame: int,
        source: str,
        image_shape: Sequence[int],
        q_max: float | None = None,
        polar: np.ndarray | None = None,
        intensity: np.ndarray | None = None,
    ) -> PeakTable:
        """Build the table of one frame.

        boxes: float[K, 4] (x0, y0, x1, y1) in polar pixels; scores: float[K] (sorted or not: rows are
        ordered by decreasing score). image_shape: (H, W) of the polar image. q_max: |Q| of the last
        column in Å⁻¹ (None: no geometry, physical columns are NaN). polar: the uncorrected polar image
        float[H, W] for the intensities (None: NaN). intensity: the intensities already summed elsewhere
        (float[K], in the order of ``boxes``; e.g. on the GPU, where the polar image stays), used instead
        of ``polar``.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        if len(boxes) != len(scores):
            raise ValueError(f"{len(boxes)} boxes but {len(scores)} scores")
        if intensity is not None:
            intensity = np.asarray(intensity, np.float64).reshape(-1)
            if len(intensity) != len(boxes):
                raise ValueError(f"{len(boxes)} boxes but {len(intensity)} intensities")
        order = np.argsort(-scores, kind="stable")
        boxes, scores = boxes[order], scores[order]
        h, w = int(image_shape[0]), int(image_shape[1])
        k = len(boxes)
        x0, y0, x1, y1 = boxes.T if k else (np.zeros(0),) * 4
        if q_max is not None:
            dq = q_max / (w - 1)
            dphi = 90.0 / (h - 1)
            q, phi = (x0 + x1) / 2 * dq, (y0 + y1) / 2 * dphi
            q_width, phi_width = (x1 - x0) * dq, (y1 - y0) * dphi
        else:
            q = phi = q_width = phi_width = np.full(k, np.nan)
        if intensity is not None:
            intensity = intensity[order]
        else:
            intensity = box_sums(polar, boxes) if polar is not None else np.full(k, np.nan)
        return cls(
            frame=np.full(k, frame, np.int64),
            source=np.full(k, source, dtype=object),
            peak=np.arange(k, dtype=np.int64),
            q=q,
            phi=phi,
            q_width=q_width,
            phi_width=phi_width,
            score=scores,
            x0=x0,
            y0=y0,
            x1=x1,
            y1=y1,
            intensity=intensity,
        )
