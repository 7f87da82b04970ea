"""Peaks linked across frames into tracks (the paper's Methods IV E).

Peaks of consecutive frames are linked one to one by their boxes' IoU: all pairs (track end, new peak) with
IoU ≥ ``iou`` (0.3 in the paper) are taken greedily by decreasing IoU, each track end and each peak at most once;
a peak left unlinked starts a new track. A track's length is its duration, ``last − first + 1`` frames; tracks
shorter than ``min_length`` frames are likely artifacts or noise and can be dropped.

Definitions:

- **IoU** of boxes (x0, y0, x1, y1) in polar pixels (x along |Q|, y along φ) with continuous areas
  (x1 − x0)·(y1 − y0); a zero-area or non-finite box links to nothing.
- **Frames**: the ``frame`` column orders the frames. A frame with no rows in the table (no peaks found, or a frame
  that was never processed) is a gap. With ``max_gap = 0`` (the default, the paper's "adjacent time frames") a
  track only continues into the next frame, so one gap frame ends every track; with ``max_gap = g`` a track whose
  last peak is at most ``g`` frames before the previous frame may still continue (its candidates compete with the
  others by IoU; on equal IoU the track seen most recently wins, then the older id).
- **Track ids**: 0-based, in the order the tracks start: by frame, then by the peaks' order inside the frame
  (``peak``, i.e. decreasing score, in a table from the pipeline). Ties in IoU go to the lower track id, then
  to the earlier peak of the frame. :class:`TrackLinker` (frame by frame, for live data) and
  :func:`link_tracks` (a whole table) give the same ids on the same frames.
- **Short tracks**: :func:`link_tracks` with ``min_length = K`` sets the ``track`` of the peaks of tracks
  spanning fewer than K frames to −1 and keeps the rows (a detection is never thrown away); the other tracks keep
  their ids, so the ids of a filtered table have holes and still equal the live linker's.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..kernels.reference.boxes import iou_matrix as box_iou
from .peaks import PeakTable

__all__ = ["DEFAULT_IOU", "TrackLinker", "TrackSummary", "box_iou", "drop_short_tracks", "link_tracks", "track_summary"]

#: the paper's linking threshold ("an arbitrarily chosen value IoU = 0.3; the results are not sensitive to it")
DEFAULT_IOU = 0.3


def _check_iou(iou: float) -> float:
    iou = float(iou)
    if not 0.0 < iou <= 1.0:  # also refuses NaN
        raise ValueError(f"iou: {iou} is outside (0, 1]")
    return iou


def _check_int(name: str, value: int, low: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < low:
        raise ValueError(f"{name}: {value!r} must be an integer ≥ {low}")
    return int(value)


class TrackLinker:
    """Link peaks frame by frame: ``ids = linker.add(frame_index, boxes)``.

    iou: the smallest IoU that links two peaks (0.3, the paper's). max_gap: frames a track may skip (0: only
    consecutive frames link). Frames must come in increasing order of ``frame_index`` (a skipped index is a frame
    without peaks); the linker keeps only the tracks that can still continue, so memory stays bounded on endless
    series. Not thread-safe: one linker per series, fed in order.
    """

    def __init__(self, *, iou: float = DEFAULT_IOU, max_gap: int = 0):
        self.iou = _check_iou(iou)
        self.max_gap = _check_int("max_gap", max_gap, 0)
        self.n_tracks = 0  #: tracks started so far (the next new track's id)
        self.last_frame: int | None = None  #: the last frame index added
        self._ids = np.zeros(0, np.int64)  # open tracks: id, last frame, last box
        self._last = np.zeros(0, np.int64)
        self._boxes = np.zeros((0, 4), np.float64)
        self._new = np.zeros(0, bool)

    @property
    def new(self) -> np.ndarray:
        """bool[K] of the last :meth:`add`: which peaks started a track (linked to no earlier peak)."""
        return self._new

    def add(self, frame_index: int, boxes: np.ndarray | Sequence[Sequence[float]]) -> np.ndarray:
        """Link one frame's boxes float[K, 4] (x0, y0, x1, y1 in polar pixels, in the frame's peak order) to the
        open tracks → int64[K] track ids. ``frame_index`` must exceed the previous call's (ValueError)."""
        frame_index = int(frame_index)
        if self.last_frame is not None and frame_index <= self.last_frame:
            raise ValueError(f"frame {frame_index}: frames must be added in increasing order "
                             f"(the last one was {self.last_frame})")
        if frame_index < 0:
            raise ValueError(f"frame {frame_index}: frame indices are ≥ 0")
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        k = len(boxes)
        # the tracks that may continue into this frame: last peak at most max_gap frames before the previous one
        alive = self._last >= frame_index - 1 - self.max_gap
        ids, last, prev = self._ids[alive], self._last[alive], self._boxes[alive]
        out = np.full(k, -1, np.int64)
        if k and len(ids):
            overlap = box_iou(prev, boxes)  # [open tracks, K]
            t_idx, p_idx = np.nonzero(overlap >= self.iou)
            if len(t_idx):
                # greedy by decreasing IoU; ties: most recent track end, then lower id, then earlier peak
                order = np.lexsort((p_idx, ids[t_idx], -last[t_idx], -overlap[t_idx, p_idx]))
                used_t = np.zeros(len(ids), bool)
                for t, p in zip(t_idx[order].tolist(), p_idx[order].tolist()):
                    if used_t[t] or out[p] >= 0:
                        continue
                    used_t[t] = True
                    out[p] = ids[t]
        new = out < 0
        out[new] = np.arange(self.n_tracks, self.n_tracks + int(new.sum()), dtype=np.int64)
        self.n_tracks += int(new.sum())
        # open tracks after this frame: those continued or started here, and the unmatched ones that may still
        # continue into the next frame
        keep = (self._last >= frame_index - self.max_gap) & ~np.isin(self._ids, out)
        self._ids = np.concatenate([self._ids[keep], out])
        self._last = np.concatenate([self._last[keep], np.full(k, frame_index, np.int64)])
        self._boxes = np.concatenate([self._boxes[keep], boxes])
        self._new = new
        self.last_frame = frame_index
        return out

    def add_table(self, table: PeakTable) -> np.ndarray:
        """:meth:`add` with the boxes of a one-frame table (rows in table order) → int64[len(table)]; an empty
        table adds nothing (pass its frame to :meth:`add` with no boxes to mark a frame without peaks)."""
        if not len(table):
            return np.zeros(0, np.int64)
        frames = np.unique(table.frame)
        if len(frames) != 1:
            raise ValueError(f"add_table takes one frame's peaks; the table holds frames {frames.tolist()}")
        return self.add(int(frames[0]), table.boxes)


def _frame_groups(table: PeakTable) -> list[tuple[int, np.ndarray]]:
    """(frame, row indices in table order) for each frame of the table, in increasing frame order."""
    order = np.argsort(table.frame, kind="stable")
    frames = table.frame[order]
    cuts = np.flatnonzero(np.diff(frames)) + 1
    return [(int(frames[g[0]]), order[g]) for g in np.split(np.arange(len(order)), cuts) if len(g)]


def link_tracks(table: PeakTable, *, iou: float = DEFAULT_IOU, min_length: int = 1, max_gap: int = 0) -> PeakTable:
    """The table (same rows, same order) with a ``track`` column linking its peaks across frames.

    iou: smallest IoU that links peaks of consecutive frames (the paper's 0.3). min_length: tracks spanning fewer
    than this many frames get track −1 (their rows stay). max_gap: frames a track may skip (0: the paper's
    consecutive frames). Inside a frame the rows are taken in table order. See the module docstring.
    """
    min_length = _check_int("min_length", min_length, 1)
    linker = TrackLinker(iou=iou, max_gap=max_gap)
    track = np.full(len(table), -1, np.int64)
    boxes = table.boxes
    for frame, rows in _frame_groups(table):
        track[rows] = linker.add(frame, boxes[rows])
    return drop_short_tracks(table.with_tracks(track), min_length)


def drop_short_tracks(table: PeakTable, min_length: int) -> PeakTable:
    """A linked table with track −1 for the peaks of tracks spanning fewer than ``min_length`` frames
    (last − first + 1); rows and the other ids unchanged."""
    min_length = _check_int("min_length", min_length, 1)
    if not table.linked:
        raise ValueError("drop_short_tracks needs a linked table (run link_tracks first)")
    track = table.track
    valid = track >= 0
    if min_length == 1 or not valid.any():
        return table
    n = int(track[valid].max()) + 1
    first = np.full(n, np.iinfo(np.int64).max)
    last = np.full(n, -1)
    np.minimum.at(first, track[valid], table.frame[valid])
    np.maximum.at(last, track[valid], table.frame[valid])
    short = (last - first + 1) < min_length
    return table.with_tracks(np.where(valid & short[np.where(valid, track, 0)], -1, track))


@dataclass(frozen=True)
class TrackSummary:
    """One row per track (struct of arrays, ordered by track id); all arrays of length T.

    track: int64 ids; first, last: int64 first and last frame; duration: int64 frames spanned (last − first + 1);
    n_peaks: int64 peaks in the track (= duration without gaps); q, phi: float64 mean |Q| (Å⁻¹) and φ (degrees)
    of its peaks (NaN without a geometry); score: float64 mean score; intensity: float64 mean intensity.
    """

    track: np.ndarray
    first: np.ndarray
    last: np.ndarray
    duration: np.ndarray
    n_peaks: np.ndarray
    q: np.ndarray
    phi: np.ndarray
    score: np.ndarray
    intensity: np.ndarray

    NAMES = ("track", "first", "last", "duration", "n_peaks", "q", "phi", "score", "intensity")

    def __len__(self) -> int:
        return len(self.track)

    def to_records(self) -> np.ndarray:
        """A structured array (int64 and float64 fields named as the attributes), e.g. for HDF5 ``/tracks``."""
        dtype = [(n, "<i8") for n in self.NAMES[:5]] + [(n, "<f8") for n in self.NAMES[5:]]
        out = np.empty(len(self), dtype)
        for name in self.NAMES:
            out[name] = getattr(self, name)
        return out


def _group_mean(values: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    sums = np.zeros(len(counts))
    np.add.at(sums, inverse, values)
    return sums / np.maximum(counts, 1)


def track_summary(table: PeakTable) -> TrackSummary:
    """Per track of a linked table (rows with track −1 left out): first and last frame, duration, peak count,
    mean |Q|, φ, score and intensity. ValueError for a table without a track column."""
    if not table.linked:
        raise ValueError("track_summary needs a linked table (run link_tracks first)")
    keep = table.track >= 0
    track = table.track[keep]
    ids, inverse, counts = np.unique(track, return_inverse=True, return_counts=True)
    frame = table.frame[keep]
    first = np.full(len(ids), np.iinfo(np.int64).max, np.int64)
    last = np.full(len(ids), -1, np.int64)
    np.minimum.at(first, inverse, frame)
    np.maximum.at(last, inverse, frame)
    return TrackSummary(
        track=ids.astype(np.int64),
        first=first,
        last=last,
        duration=last - first + 1,
        n_peaks=counts.astype(np.int64),
        q=_group_mean(table.q[keep], inverse, counts),
        phi=_group_mean(table.phi[keep], inverse, counts),
        score=_group_mean(table.score[keep], inverse, counts),
        intensity=_group_mean(table.intensity[keep], inverse, counts),
    )
