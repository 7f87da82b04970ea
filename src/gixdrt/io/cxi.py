"""CXI-style peak lists, the layout hit finders write (Cheetah, OM, pyFAI) and CrystFEL reads
(``peak_list = /entry_1/result_1``, ``peak_list_type = cxi``).

One row per written frame, M columns (``max_peaks``, default 1024 as OM), in ``/entry_1/result_1``:

- ``nPeaks``: int32[N], the peaks stored for the frame (at most M; a frame with more keeps its M best and a
  warning is given; the file attribute ``truncated_frames`` counts such frames);
- ``peakXPosRaw``, ``peakYPosRaw``: float32[N, M], the box centre in polar pixels: x = polar column (along |Q|),
  y = polar row (along φ), pixel (0, 0)'s centre at (0, 0);
- ``peakTotalIntensity``: float32[N, M], the sum of the uncorrected polar image in the box (counts);
- gixdrt's own: ``peakQ`` (Å⁻¹), ``peakPhi`` (degrees), ``peakQWidth`` (Å⁻¹), ``peakPhiWidth`` (degrees),
  ``peakScore`` (the detector's score), float32[N, M]; ``peakTrack`` int32[N, M] (track ids, padding −1) when the
  peaks were linked; ``frame`` int64[N], gixdrt's 0-based frame index of each row; ``hit`` and ``keptMiss``
  uint8[N] when screening flags were given (with a hits-only selection, rows exist only for kept frames).

Columns beyond ``nPeaks`` are 0 (``peakTrack``: −1). Peaks are in the frame's peak order (decreasing score).
Attributes of ``/entry_1/result_1``: ``pixel_convention``, ``units`` (JSON), ``software``, ``gixdrt_version``,
``max_peaks``, ``linked``; written at close: ``n_frames_written``, ``n_frames_seen`` (with the frames a hits-only
selection left out), ``n_hits``, ``n_misses``, ``n_kept_misses`` (screening), ``truncated_frames`` and
``complete = 1``. ``/cxi_version`` is 150.

Pixel convention: positions are pixel-centre indices of the polar image. CrystFEL measures peak positions as
distances from the panel corner, so a pixel's centre is at +0.5 there: add 0.5 to ``peakXPosRaw`` and
``peakYPosRaw`` to express them in that convention. The "panel" is the polar image (fs = |Q| column, ss = φ row),
not the detector.

:class:`CxiWriter` appends frames as they come, to chunked resizable datasets, in a file named ``.NAME.PID.part.cxi``
beside the target and renamed to it when :meth:`CxiWriter.close` completes; the file is opened in HDF5 SWMR mode
and flushed every ``flush_every`` frames, so ``h5py.File(writer.part_path, "r", swmr=True)`` can read it while it
is written (refresh the datasets to see new rows). An error or interruption removes the partial file.
:func:`write_cxi` writes a whole table at once through the same writer.
"""
from __future__ import annotations

import json
import os
import warnings
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataWarning
from ..gixd.peaks import TRACK, PeakTable
from .atomic import atomic_path

__all__ = ["CXI_SUFFIXES", "CxiWriter", "DEFAULT_MAX_PEAKS", "PIXEL_CONVENTION", "RESULT", "write_cxi"]

RESULT = "/entry_1/result_1"
DEFAULT_MAX_PEAKS = 1024
CXI_SUFFIXES = (".cxi", ".h5", ".hdf5")
PIXEL_CONVENTION = (
    "peakXPosRaw is the polar column (along |Q|), peakYPosRaw the polar row (along phi) of the peak box centre, "
    "in pixel-centre indices: the centre of pixel (0, 0) is at (0, 0). CrystFEL measures positions from the "
    "panel corner (pixel centres at +0.5): add 0.5 to both for that convention."
)
#: dataset → (table column or None, dtype, fill value, units)
_PEAK_FIELDS: dict[str, tuple[str, str, float, str]] = {
    "peakXPosRaw": ("x", "<f4", 0, "polar pixel (column, along |Q|)"),
    "peakYPosRaw": ("y", "<f4", 0, "polar pixel (row, along phi)"),
    "peakTotalIntensity": ("intensity", "<f4", 0, "counts (sum of the uncorrected polar image in the box)"),
    "peakQ": ("q", "<f4", 0, "1/angstrom"),
    "peakPhi": ("phi", "<f4", 0, "degree"),
    "peakQWidth": ("q_width", "<f4", 0, "1/angstrom"),
    "peakPhiWidth": ("phi_width", "<f4", 0, "degree"),
    "peakScore": ("score", "<f4", 0, "detector score"),
}
_TRACK = ("peakTrack", "<i4", -1, "track id (-1: none)")


def _chunk_rows(max_peaks: int) -> int:
    """Frames per chunk: about 128 KiB of float32 per chunk, between 1 and 256 frames."""
    return int(max(1, min(256, (128 * 1024) // (4 * max_peaks))))


class CxiWriter:
    """Append frames to a CXI peak file: ``with CxiWriter(path) as w: w.add(frame, table)``.

    max_peaks: M, the columns per frame (≥ 1). linked: store ``peakTrack`` (tables must have a track column).
    screening: store ``hit`` and ``keptMiss`` (each :meth:`add` then takes a flag). flush_every: frames buffered
    between writes to the file (each write is flushed, so SWMR readers see it). attrs: extra attributes of
    ``/entry_1/result_1`` (str, numbers), written at creation.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        max_peaks: int = DEFAULT_MAX_PEAKS,
        linked: bool = False,
        screening: bool = False,
        flush_every: int = 16,
        attrs: dict[str, Any] | None = None,
    ):
        import h5py

        from .. import __version__

        self.path = Path(path)
        if self.path.suffix.lower() not in CXI_SUFFIXES:
            raise ValueError(f"{self.path}: a CXI peak file is HDF5: use {', '.join(CXI_SUFFIXES)}")
        if isinstance(max_peaks, bool) or int(max_peaks) != max_peaks or max_peaks < 1:
            raise ValueError(f"max_peaks: {max_peaks!r} must be an integer ≥ 1")
        if isinstance(flush_every, bool) or int(flush_every) != flush_every or flush_every < 1:
            raise ValueError(f"flush_every: {flush_every!r} must be an integer ≥ 1")
        self.max_peaks = int(max_peaks)
        self.linked = bool(linked)
        self.screening = bool(screening)
        self.flush_every = int(flush_every)
        self.frames_written = 0  #: rows in the file (flushed or buffered)
        self.frames_seen = 0  #: frames given to add, kept or not
        self.truncated_frames = 0
        self.n_hits = 0
        self.n_kept_misses = 0
        self._pending: list[tuple[int, PeakTable, Any]] = []
        self._closed = False
        self._stack = ExitStack()
        try:
            self.part_path = self._stack.enter_context(atomic_path(self.path))
            self._file = h5py.File(self.part_path, "w", libver="latest")
            self._stack.callback(self._close_file)
            self._create(attrs or {}, __version__)
            self._file.swmr_mode = True
        except BaseException as exc:
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise

    def _close_file(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def _create(self, attrs: dict[str, Any], version: str) -> None:
        f = self._file
        f.create_dataset("cxi_version", data=np.int32(150))
        entry = f.create_group("entry_1")
        entry.attrs["NX_class"] = "NXentry"
        group = entry.create_group("result_1")
        m, rows = self.max_peaks, _chunk_rows(self.max_peaks)
        opts = {"compression": "gzip", "compression_opts": 1, "shuffle": True}
        self._ds: dict[str, Any] = {}

        def vector(name: str, dtype: str, units: str) -> None:
            ds = group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(max(rows, 64),),
                                      **opts)
            ds.attrs["units"] = units
            self._ds[name] = ds

        vector("nPeaks", "<i4", "peaks")
        vector("frame", "<i8", "gixdrt frame index (0-based, input order)")
        fields = dict(_PEAK_FIELDS)
        if self.linked:
            fields[_TRACK[0]] = (TRACK, *_TRACK[1:])
        for name, (_col, dtype, fill, units) in fields.items():
            ds = group.create_dataset(name, shape=(0, m), maxshape=(None, m), dtype=dtype, chunks=(rows, m),
                                      fillvalue=fill, **opts)
            ds.attrs["units"] = units
            self._ds[name] = ds
        if self.screening:
            vector("hit", "u1", "1: hit, 0: miss")
            vector("keptMiss", "u1", "1: a miss kept by the hits-only selection")
        self._fields = fields
        group.attrs["pixel_convention"] = PIXEL_CONVENTION
        group.attrs["units"] = json.dumps({name: ds.attrs["units"] for name, ds in self._ds.items()})
        group.attrs["software"] = f"gixdrt {version}"
        group.attrs["gixdrt_version"] = version
        group.attrs["max_peaks"] = np.int64(m)
        group.attrs["linked"] = np.int8(self.linked)
        for key, value in attrs.items():
            group.attrs[str(key)] = value

    # ---------------------------------------------------------------------------------------------
    def add(self, frame: int, table: PeakTable, flag: Any = None) -> bool:
        """One frame's peaks (all rows of ``table`` belong to ``frame``; an empty table for a frame without peaks).

        flag: with ``screening``, the frame's :class:`gixdrt.gixd.screening.FrameFlag` (its ``hit`` and ``keep``):
        a frame it does not keep is counted but not written. Returns True when the frame was written.
        """
        if self._closed:
            raise ValueError(f"{self.path}: the CXI writer is closed")
        frame = int(frame)
        if len(table) and np.any(table.frame != frame):
            raise ValueError(f"{self.path}: frame {frame}: the table holds frames {np.unique(table.frame).tolist()}")
        if self.linked and not table.linked:
            raise ValueError(f"{self.path}: frame {frame}: the writer stores tracks but the table is not linked")
        if self.screening and flag is None:
            raise ValueError(f"{self.path}: frame {frame}: a screening writer needs each frame's flag")
        self.frames_seen += 1
        if flag is not None:
            self.n_hits += bool(flag.hit)
            self.n_kept_misses += bool(flag.keep and not flag.hit)
            if not flag.keep:
                return False
        if len(table) > self.max_peaks:
            if not self.truncated_frames:
                warnings.warn(f"{self.path}: frame {frame} has {len(table)} peaks; the CXI layout keeps "
                              f"{self.max_peaks} per frame (max_peaks), the best ones (later frames alike)",
                              DataWarning, stacklevel=2)
            self.truncated_frames += 1
        self._pending.append((frame, table, flag))
        self.frames_written += 1
        if len(self._pending) >= self.flush_every:
            self.flush()
        return True

    def flush(self) -> None:
        """Write the buffered frames and flush the file (SWMR readers then see them)."""
        if not self._pending or self._closed:
            return
        pending, self._pending = self._pending, []
        b, m = len(pending), self.max_peaks
        start = self._ds["nPeaks"].shape[0]
        counts = np.array([min(len(t), m) for _, t, _ in pending], np.int32)
        for ds in self._ds.values():
            ds.resize(start + b, axis=0)
        self._ds["nPeaks"][start:] = counts
        self._ds["frame"][start:] = np.array([f for f, _, _ in pending], np.int64)
        if self.screening:
            self._ds["hit"][start:] = np.array([bool(fl.hit) for _, _, fl in pending], np.uint8)
            self._ds["keptMiss"][start:] = np.array([bool(fl.keep and not fl.hit) for _, _, fl in pending], np.uint8)
        for name, (col, dtype, fill, _units) in self._fields.items():
            block = np.full((b, m), fill, dtype)
            for i, (_, table, _) in enumerate(pending):
                k = counts[i]
                if k:
                    block[i, :k] = _column(table, col)[:k]
            self._ds[name][start:] = block
        self._file.flush()

    def close(self) -> Path:
        """Write what is buffered, the final attributes, and move the file under its final name."""
        if self._closed:
            return self.path
        try:
            self.flush()
            self._file.close()
            import h5py

            with h5py.File(self.part_path, "r+") as f:
                attrs = f[RESULT].attrs
                attrs["n_frames_written"] = np.int64(self.frames_written)
                attrs["n_frames_seen"] = np.int64(self.frames_seen)
                attrs["truncated_frames"] = np.int64(self.truncated_frames)
                if self.screening:
                    attrs["n_hits"] = np.int64(self.n_hits)
                    attrs["n_misses"] = np.int64(self.frames_seen - self.n_hits)
                    attrs["n_kept_misses"] = np.int64(self.n_kept_misses)
                attrs["complete"] = np.int8(1)
        except BaseException as exc:
            self._closed = True
            self._stack.__exit__(type(exc), exc, exc.__traceback__)
            raise
        self._closed = True
        self._stack.close()
        return self.path

    def abort(self) -> None:
        """Give up: remove the partial file (any earlier file under the final name stays)."""
        if not self._closed:
            self._closed = True
            self._stack.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> CxiWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif not self._closed:
            self._closed = True
            self._stack.__exit__(exc_type, exc, tb)



def _column(table: PeakTable, col: str) -> np.ndarray:
    if col == "x":
        return (table.x0 + table.x1) / 2
    if col == "y":
        return (table.y0 + table.y1) / 2
    return getattr(table, col)


def write_cxi(
    path: str | os.PathLike,
    table: PeakTable,
    n_frames: int,
    *,
    flags: Any = None,
    max_peaks: int = DEFAULT_MAX_PEAKS,
    attrs: dict[str, Any] | None = None,
) -> Path:
    """Write frames 0 … n_frames − 1 of ``table`` as a CXI peak file (atomically). Returns the path.

    flags: :class:`gixdrt.gixd.screening.FrameFlags` of the same frames (adds ``hit``/``keptMiss``; frames the
    hits-only selection does not keep are left out). ``peakTrack`` is written when the table is linked.
    """
    n_frames = int(n_frames)
    if len(table) and (table.frame.min() < 0 or table.frame.max() >= n_frames):
        raise ValueError(f"{path}: frame indices {table.frame.min()}…{table.frame.max()} do not fit "
                         f"n_frames={n_frames}")
    if flags is not None and len(flags) != n_frames:
        raise ValueError(f"{path}: {len(flags)} frame flags for {n_frames} frames")
    order = np.argsort(table.frame, kind="stable")
    bounds = np.searchsorted(table.frame[order], np.arange(n_frames + 1))
    with CxiWriter(path, max_peaks=max_peaks, linked=table.linked, screening=flags is not None,
                   flush_every=256, attrs=attrs) as writer:
        for f in range(n_frames):
            writer.add(f, table.select(order[bounds[f]:bounds[f + 1]]), None if flags is None else flags[f])
    return Path(path)
