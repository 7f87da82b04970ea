"""Live sinks: a peak table per series written while it runs, and per-frame result messages on ZeroMQ.

:class:`SeriesTableSink` writes one peak table per series (``.csv`` or ``.h5``), under a ``.part`` name while the
series runs, renamed when it ends:

- **Naming**: ``out_pattern`` ``run.h5`` gives ``run_<name>.h5`` for every series, where ``<name>`` is the name
  given to :meth:`~SeriesTableSink.open_series` (default: the integer ``series_id``), reduced to the characters
  ``A-Z a-z 0-9 . _ -`` (others become ``_``). A pattern holding ``{series}`` (``out/{series}/peaks.h5``) puts the
  name there instead. ``single=True`` writes the one series to ``out_pattern`` itself. A name already used by this
  sink (or listed in ``reserved``) gets ``-2``, ``-3``, ... appended, so a file never replaces another series'.
- **While running**: rows are written to ``<final>.part`` in batches (every ``flush_frames`` frames, or when a
  frame is added ``flush_s`` seconds or more after the last write, and on :meth:`~SeriesTableSink.flush`). An HDF5 part file is opened with
  ``libver="latest"`` and switched to SWMR mode, its datasets resizable and chunked, so
  ``h5py.File(part, "r", swmr=True)`` reads the rows written so far (call ``refresh()`` on a dataset to see later
  ones). A CSV part file is its header and the rows written so far.
- **At the end** (:meth:`~SeriesTableSink.close_series`): the counters of the series (expected, received,
  processed, rejected, missed, late, decode_errors, … as given) and the end reason (``end``, ``incomplete``,
  ``superseded``, ``closed``) are written, the file is synced and renamed. An incomplete series is written like a
  complete one, with its reason: never dropped. :meth:`~SeriesTableSink.abort` (and leaving a ``with`` block on an
  exception) removes the part files instead: an error never leaves a half-written file.

With the live engine (:class:`gixdrt.live.engine.LiveEngine`)::

    sink = SeriesTableSink("run.h5", metadata={"model": "default"})
    engine = LiveEngine(pipeline, on_series_start=sink.open_series,
                        on_result=lambda r: r.ok and sink.add(r.series_unique_id, r.image_id, r.table),
                        on_series_end=sink.close_series)   # its counters and end reason go into the file

HDF5 layout (read by :func:`gixdrt.io.read_peaks`): ``/peaks`` as :func:`gixdrt.io.write_peaks` writes it
(``frame`` = the image id within the series), ``/frame_counts`` (int64, peaks per image id, up to the last id
processed), ``/image_ids`` (int64, the image ids processed in the order they came), ``/metadata`` with the caller's
``metadata`` and ``series_id``, ``series_unique_id``, ``series_name``, ``series_source``, ``number_of_images``
(-1: unknown), and at the end ``n_frames``, ``processed_frames``, ``end_reason`` and ``counters`` (JSON, decoded
by read_peaks). A CSV table carries no metadata: the same entries go to ``<final>.json`` beside it, written
before the table is renamed.

:class:`ResultPublisher` sends a message per frame on a PUSH socket (lossless consumers) and/or a PUB socket
(viewers); see its docstring for the messages. :func:`decode_result` decodes one.
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np

from ..gixd.peaks import COLUMNS, TRACK, PeakTable
from .events import END_REASONS, SeriesEnd, SeriesStart

__all__ = ["ResultPublisher", "SeriesTableSink", "decode_result", "series_path"]

_SUFFIXES = (".csv", ".h5", ".hdf5")
#: metadata entries the sink writes itself (the caller's metadata may not use them)
SERIES_KEYS = ("series_id", "series_unique_id", "series_name", "series_source", "number_of_images", "end_reason",
               "counters", "processed_frames", "n_frames")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str) -> str:
    name = _UNSAFE.sub("_", str(name)).strip("._") or "series"
    return name[:200]


def series_path(out_pattern: str | os.PathLike, name: str, *, single: bool = False) -> Path:
    """The final path of series ``name`` under ``out_pattern`` (the naming rule of the module docstring)."""
    text = os.fspath(out_pattern)
    if single:
        return Path(text)
    if "{series}" in text:
        return Path(text.replace("{series}", _safe(name)))
    p = Path(text)
    return p.with_name(f"{p.stem}_{_safe(name)}{p.suffix}")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unsupported peak table format {suffix or '(no suffix)'}; use .csv, .h5 or .hdf5")
    return "csv" if suffix == ".csv" else "h5"


@dataclass
class _Series:
    start: SeriesStart
    name: str
    final: Path
    part: Path
    kind: str
    handle: Any = None  # h5py.File or a text file
    writer: Any = None  # csv.writer
    pending: list[PeakTable] = field(default_factory=list)
    pending_ids: list[int] = field(default_factory=list)
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    dirty: tuple[int, int] | None = None  # range of counts not yet written
    frames: int = 0  # frames added
    rows: int = 0  # rows written
    frames_written: int = 0
    top: int = -1  # highest image id added
    last_flush: float = field(default_factory=time.monotonic)


class SeriesTableSink:
    """One peak table per series, readable while the series runs (see the module docstring).

    out_pattern: ``run.csv``, ``run.h5`` or ``run.hdf5`` (or a pattern with ``{series}``); metadata: entries for
    the HDF5 ``/metadata`` group (``config``, ``model_card``, … as :func:`gixdrt.io.write_peaks` takes them) and
    the CSV sidecar; single: write the one series to ``out_pattern`` itself (a second series is a ValueError);
    reserved: final paths not to use (e.g. written by an earlier run); flush_frames / flush_s: write the buffered
    rows every so many frames or seconds (whichever first); linked: the tables carry a ``track`` column (peaks
    linked into tracks, :class:`gixdrt.gixd.tracks.TrackLinker`), written as the last column. Thread-safe.
    """

    def __init__(self, out_pattern: str | os.PathLike, *, metadata: Mapping[str, Any] | None = None,
                 single: bool = False, reserved: Iterable[str | os.PathLike] = (), flush_frames: int = 64,
                 flush_s: float = 0.5, linked: bool = False):
        self.out_pattern = os.fspath(out_pattern)
        self.linked = bool(linked)
        self.names = (*COLUMNS, TRACK) if self.linked else COLUMNS
        self.kind = _kind(Path(self.out_pattern.replace("{series}", "x")))
        self.metadata = dict(metadata or {})
        clash = sorted(set(map(str, self.metadata)) & {*SERIES_KEYS, "json_keys", "gixdrt_version", "created"})
        if clash:
            raise ValueError(f"{self.out_pattern}: metadata keys {', '.join(clash)} are the sink's own")
        if isinstance(flush_frames, bool) or int(flush_frames) < 1:
            raise ValueError(f"flush_frames must be an integer ≥ 1, got {flush_frames!r}")
        self.single = bool(single)
        self.flush_frames = int(flush_frames)
        self.flush_s = float(flush_s)
        self._series: dict[str, _Series] = {}
        self._taken = {os.path.abspath(p) for p in reserved}
        self._lock = threading.RLock()
        self.written: list[Path] = []  #: final paths written, in order

    # ---- naming ------------------------------------------------------------------------------------------------
    def is_output(self, path: str | os.PathLike) -> bool:
        """True when ``path`` is (or could be) a file of this sink: a table, its ``.part`` or its ``.json``."""
        p = Path(os.path.abspath(path))
        name = p.name
        for extra in (".part", ".json"):
            if name.endswith(extra):
                name = name[: -len(extra)]
        if self.single:
            return p.with_name(name) == Path(os.path.abspath(self.out_pattern))
        pattern = Path(os.path.abspath(self.out_pattern.replace("{series}", "*")))
        if "{series}" not in self.out_pattern:
            pattern = pattern.with_name(f"{pattern.stem}_*{pattern.suffix}")
        return fnmatch(os.fspath(p.with_name(name)), os.fspath(pattern))

    def _final(self, name: str) -> Path:
        if self.single:
            if self.written or self._series:
                raise ValueError(f"{self.out_pattern}: holds a single series; a second one needs a pattern")
            return Path(self.out_pattern)
        base = series_path(self.out_pattern, name)
        path, k = base, 1
        while os.path.abspath(path) in self._taken:
            k += 1
            path = series_path(self.out_pattern, f"{_safe(name)}-{k}")
        return path

    # ---- life cycle of a series --------------------------------------------------------------------------------
    def open_series(self, start: SeriesStart, *, name: str | None = None) -> Path:
        """Start the table of ``start``'s series; returns its final path (the part file is ``final + ".part"``).
        name: names the file (default ``str(start.series_id)``)."""
        from ..io.atomic import OutputError, protected_input

        with self._lock:
            uid = start.series_unique_id
            if uid in self._series:
                raise ValueError(f"series {uid!r} is already open")
            name = str(start.series_id) if name is None else str(name)
            final = self._final(name)
            if final.is_dir():
                raise OutputError(f"{final}: is a directory; name a file")
            source = protected_input(final)
            if source is not None:
                raise OutputError(f"{final}: is the input file {source}; gixdrt never replaces an input")
            final.parent.mkdir(parents=True, exist_ok=True)
            part = final.with_name(final.name + ".part")
            s = _Series(start, name, final, part, _kind(final))
            try:
                if s.kind == "h5":
                    self._open_h5(s)
                else:
                    s.handle = open(part, "w", newline="", encoding="utf-8")
                    s.writer = csv.writer(s.handle, lineterminator="\n")
                    s.writer.writerow(self.names)
                    s.handle.flush()
            except BaseException:
                self._discard(s)
                raise
            self._taken.add(os.path.abspath(final))
            self._series[uid] = s
            return final

    def _series_meta(self, s: _Series) -> dict[str, Any]:
        st = s.start
        return {
            "series_id": int(st.series_id),
            "series_unique_id": st.series_unique_id,
            "series_name": s.name,
            "series_source": st.source,
            "number_of_images": -1 if st.number_of_images is None else int(st.number_of_images),
        }

    def _open_h5(self, s: _Series) -> None:
        import h5py

        from ..io.writers import UNITS, _h5_dtype, write_h5_metadata

        f = h5py.File(s.part, "w", libver="latest")
        s.handle = f
        ds = f.create_dataset("peaks", shape=(0,), maxshape=(None,), dtype=_h5_dtype(self.names), chunks=(1024,),
                              compression="gzip")
        ds.attrs["columns"] = ",".join(self.names)
        ds.attrs["units"] = json.dumps(UNITS)
        f.create_dataset("frame_counts", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,))
        f.create_dataset("image_ids", shape=(0,), maxshape=(None,), dtype="<i8", chunks=(4096,))
        meta = f.create_group("metadata")
        write_h5_metadata(meta, {**self.metadata, **self._series_meta(s)}, final=s.final)
        f.swmr_mode = True  # from here on: no new objects or attributes, readers may open it with swmr=True
        f.flush()

    def part_path(self, series_unique_id: str) -> Path:
        """The part file of an open series."""
        with self._lock:
            return self._get(series_unique_id).part

    def _get(self, uid: str) -> _Series:
        try:
            return self._series[uid]
        except KeyError:
            raise KeyError(f"series {uid!r} is not open in this sink") from None

    def add(self, series_unique_id: str, image_id: int, table: PeakTable, *, source: str | None = None) -> None:
        """The peaks of one frame (``table``: its rows, any ``frame`` and ``source``): stored with ``frame`` =
        ``image_id`` and ``source`` = ``source`` (default: the series' unique id). A frame without peaks counts."""
        with self._lock:
            s = self._get(series_unique_id)
            image_id = int(image_id)
            if image_id < 0:
                raise ValueError(f"image_id must be ≥ 0, got {image_id}")
            n = len(table)
            if n:
                cols = {name: getattr(table, name) for name in COLUMNS}
                if self.linked:
                    if not table.linked:
                        raise ValueError(f"series {series_unique_id!r}: this sink writes tracks but the table of "
                                         f"image {image_id} has no track column")
                    cols[TRACK] = table.track
                cols["frame"] = np.full(n, image_id, np.int64)
                cols["source"] = np.full(n, s.start.series_unique_id if source is None else source, dtype=object)
                s.pending.append(PeakTable(**cols))
            s.pending_ids.append(image_id)
            if image_id >= len(s.counts):
                grown = np.zeros(max(image_id + 1, 2 * len(s.counts)), np.int64)
                grown[: len(s.counts)] = s.counts
                s.counts = grown
            s.counts[image_id] += n
            lo, hi = (image_id, image_id + 1) if s.dirty is None else (min(s.dirty[0], image_id),
                                                                       max(s.dirty[1], image_id + 1))
            s.dirty = (lo, hi)
            s.frames += 1
            s.top = max(s.top, image_id)
            if len(s.pending_ids) >= self.flush_frames or time.monotonic() - s.last_flush >= self.flush_s:
                self._flush(s)

    def flush(self, series_unique_id: str | None = None) -> None:
        """Write the buffered rows of one series (default: all) to its part file, flushed to the OS."""
        with self._lock:
            for uid in [series_unique_id] if series_unique_id is not None else list(self._series):
                self._flush(self._get(uid))

    def _flush(self, s: _Series) -> None:
        table = PeakTable.concat(s.pending) if s.pending else PeakTable.empty(linked=self.linked)
        ids = np.asarray(s.pending_ids, np.int64)
        if s.kind == "h5":
            from ..io.writers import h5_rows

            f = s.handle
            if len(table):
                rows = h5_rows(table)
                ds = f["peaks"]
                ds.resize((s.rows + len(rows),))
                ds[s.rows:] = rows
                ds.flush()
            if len(ids):
                ds = f["image_ids"]
                ds.resize((s.frames_written + len(ids),))
                ds[s.frames_written:] = ids
                ds.flush()
            if s.dirty is not None:
                lo, hi = s.dirty
                ds = f["frame_counts"]
                if ds.shape[0] < hi:
                    ds.resize((hi,))
                ds[lo:hi] = s.counts[lo:hi]
                ds.flush()
            f.flush()
        else:
            from ..io.writers import csv_rows

            if len(table):
                s.writer.writerows(csv_rows(table))
            s.handle.flush()
        s.rows += len(table)
        s.frames_written += len(ids)
        s.pending, s.pending_ids, s.dirty = [], [], None
        s.last_flush = time.monotonic()

    def close_series(self, series: str | SeriesEnd | Mapping[str, Any], counters: Mapping[str, Any] | None = None,
                     reason: str | None = None) -> Path:
        """End a series: write its rows, ``counters`` and end ``reason``, sync and rename the part file. Returns the
        final path. ``series``: its unique id, its SeriesEnd (the reason), or the live engine's series counters
        (a mapping with ``series_unique_id`` and ``end_reason``, used as the counters too); reason default "end"."""
        with self._lock:
            if isinstance(series, Mapping):
                uid = str(series["series_unique_id"])
                counters = series if counters is None else counters
                reason = reason or series.get("end_reason") or "end"
            elif isinstance(series, SeriesEnd):
                uid, reason = series.series_unique_id, reason or series.reason
            else:
                uid, reason = str(series), reason or "end"
            if reason not in END_REASONS:
                raise ValueError(f"reason must be one of {END_REASONS}, got {reason!r}")
            s = self._get(uid)
            counters = {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in (counters or {}).items()}
            try:
                self._flush(s)
                s.handle.close()
                s.handle = None
                if s.kind == "h5":
                    self._finish_h5(s, reason, counters)
                else:
                    self._write_sidecar(s, reason, counters)
                with open(s.part, "rb+") as f:
                    os.fsync(f.fileno())
                os.replace(s.part, s.final)
            except BaseException:
                self._discard(s)
                if s.kind == "csv" and s.final.exists() is False:
                    s.final.with_name(s.final.name + ".json").unlink(missing_ok=True)
                del self._series[uid]
                raise
            del self._series[uid]
            self.written.append(s.final)
            return s.final

    def _finish_h5(self, s: _Series, reason: str, counters: dict) -> None:
        import h5py

        with h5py.File(s.part, "r+", libver="latest") as f:
            n = s.top + 1
            ds = f["frame_counts"]
            if ds.shape[0] != n:
                ds.resize((n,))
            meta = f["metadata"]
            meta.attrs["n_frames"] = np.int64(n)
            meta.attrs["processed_frames"] = np.int64(s.frames)
            meta.attrs["end_reason"] = reason
            meta.attrs["counters"] = json.dumps(counters)
            keys = json.loads(meta.attrs.get("json_keys", "[]"))
            meta.attrs["json_keys"] = json.dumps([*keys, "counters"])

    def _write_sidecar(self, s: _Series, reason: str, counters: dict) -> None:
        from .. import __version__
        from ..io.atomic import atomic_path
        from ..io.writers import _plain

        meta = {key: _config_plain(key, value) for key, value in self.metadata.items() if value is not None}
        doc = {
            "gixdrt_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "table": s.final.name,
            **self._series_meta(s),
            "n_frames": s.top + 1,
            "processed_frames": s.frames,
            "end_reason": reason,
            "counters": counters,
            **_plain(meta),
        }
        with atomic_path(s.final.with_name(s.final.name + ".json")) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, default=str, allow_nan=True) + "\n", encoding="utf-8")

    def _discard(self, s: _Series) -> None:
        try:
            if s.handle is not None:
                s.handle.close()
        except Exception:  # noqa: BLE001 - closing a broken file: it is removed anyway
            pass
        s.handle = None
        s.part.unlink(missing_ok=True)

    def abort(self, series_unique_id: str | None = None) -> None:
        """Drop one open series (default: all): their part files are removed, nothing is renamed."""
        with self._lock:
            for uid in [series_unique_id] if series_unique_id is not None else list(self._series):
                s = self._series.pop(uid, None)
                if s is not None:
                    self._discard(s)

    @property
    def open_series_ids(self) -> list[str]:
        with self._lock:
            return list(self._series)

    def close(self) -> None:
        """Write every series still open, with the end reason ``closed``."""
        with self._lock:
            for uid in list(self._series):
                self.close_series(uid, reason="closed")

    def __enter__(self) -> SeriesTableSink:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _config_plain(key: str, value: Any) -> Any:
    if key == "config" and isinstance(value, os.PathLike):
        return os.fspath(value)
    if key == "model_card" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# -------------------------------------------------------------------------------------------------
# Result messages on ZeroMQ
# -------------------------------------------------------------------------------------------------
#: the peak columns a result message carries (PeakTable columns; x/y in polar pixels, q in 1/Å, phi in degrees)
RESULT_PEAK_FIELDS = ("q", "phi", "q_width", "phi_width", "score", "x0", "y0", "x1", "y1", "intensity")
CODECS = ("cbor", "msgpack")


def _encoder(codec: str):
    if codec == "cbor":
        import cbor2

        return cbor2.dumps
    if codec == "msgpack":
        import msgpack

        return lambda obj: msgpack.packb(obj, use_bin_type=True)
    raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")


def _plain_msg(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain_msg(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain_msg(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_result(data: bytes | Sequence[bytes], codec: str | None = None) -> dict[str, Any]:
    """One message of :class:`ResultPublisher` → a dict. ``data``: the payload, or the frames of a PUB message
    (``[topic, payload]``: the last frame is decoded). codec: ``cbor`` or ``msgpack`` (None: from the first byte;
    every message is a map, which starts with 0xa0–0xbf in CBOR and 0x80–0x8f, 0xde or 0xdf in msgpack).
    Raises ValueError for bytes that are not such a map."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        data = list(data)[-1]
    data = bytes(data)
    if not data:
        raise ValueError("empty result message")
    if codec is None:
        first = data[0]
        if 0xA0 <= first <= 0xBF:
            codec = "cbor"
        elif 0x80 <= first <= 0x8F or first in (0xDE, 0xDF):
            codec = "msgpack"
        else:
            raise ValueError(f"not a result message: it starts with byte 0x{first:02x}, not a CBOR or msgpack map")
    try:
        if codec == "cbor":
            import cbor2

            obj = cbor2.loads(data)
        elif codec == "msgpack":
            import msgpack

            obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
        else:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {codec!r}")
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the decoders' own errors
        raise ValueError(f"not a readable {codec} result message ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, Mapping) or "type" not in obj:
        raise ValueError(f"not a result message: a {type(obj).__name__} without a 'type' entry")
    return _plain_msg(obj)


class ResultPublisher:
    """Per-frame result messages on ZeroMQ: a PUSH socket for lossless consumers and/or a PUB socket for viewers.

    push, pub: endpoints to bind (``tcp://*:5560``, ``tcp://127.0.0.1:*`` for a free port, ``ipc://...``); a
    leading ``>`` connects instead, a leading ``@`` binds explicitly. The bound endpoints (with the port chosen) are
    :attr:`push_endpoint` and :attr:`pub_endpoint`.

    - PUSH: every message is sent, blocking up to ``push_timeout`` seconds when the consumer's queue
      (``push_hwm`` messages) is full or no consumer is connected; a message not sent in that time is counted
      (``push_unsent``) and, until a send succeeds again, later messages are tried without waiting (counted the same
      way), so a vanished consumer costs one timeout, not one per frame.
    - PUB: never blocks. The socket (an XPUB with ``XPUB_NODROP``) refuses a message when a subscriber's queue of
      ``pub_hwm`` messages is full; the message is then dropped and counted (``pub_dropped``). ZeroMQ's queue
      limits are approximate and the kernel's socket buffers hold more, so a slow viewer may receive more than
      ``pub_hwm`` messages behind; gaps in ``image_id`` are the measure of what a viewer missed. A PUB message is
      two frames, the topic (the message type: ``result``, ``metrics``, ``series_end``, ``probe``) and the
      payload; PUSH messages are the payload alone.

    Messages (maps, encoded with ``codec``: ``cbor`` or ``msgpack``; arrays as lists of numbers, float64 with NaN
    where unknown, e.g. q and phi without a geometry):

    - ``{type: "result", series_id, series_unique_id, image_id, hit, n_peaks, peaks: {q, phi, q_width, phi_width,
      score, x0, y0, x1, y1, intensity}, latency_s, model, version}`` — one per frame; peaks as in the peak table
      (q in 1/Å, phi in degrees, x/y in polar pixels), by decreasing score; ``hit``: at least ``min_peaks_for_hit``
      peaks; ``latency_s``: seconds from the frame's arrival to the result (None: unknown).
    - ``{type: "metrics", time, counters, ...}`` — periodic counters (and anything else given);
      ``time``: Unix time in seconds.
    - ``{type: "series_end", series_id, series_unique_id, reason, counters}`` — a series' final counters.
    - ``{type: "probe", time}`` — sent by :meth:`probe` so a subscriber can tell it is connected.
    """

    def __init__(self, push: str | None = None, pub: str | None = None, *, codec: str = "cbor", pub_hwm: int = 2,
                 push_hwm: int = 1000, push_timeout: float = 1.0, model: str = "", version: str | None = None,
                 min_peaks_for_hit: int = 1, context: Any = None):
        import zmq

        from .. import __version__

        if push is None and pub is None:
            raise ValueError("ResultPublisher needs a push or a pub endpoint (or both)")
        for name, value in (("pub_hwm", pub_hwm), ("push_hwm", push_hwm)):
            if isinstance(value, bool) or int(value) < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        if not (push_timeout >= 0 and math.isfinite(push_timeout)):
            raise ValueError(f"push_timeout must be ≥ 0 seconds, got {push_timeout!r}")
        self.codec = codec
        self._encode = _encoder(codec)
        self.model = str(model)
        self.version = __version__ if version is None else str(version)
        self.min_peaks_for_hit = int(min_peaks_for_hit)
        self.push_timeout = float(push_timeout)
        self._ctx = context or zmq.Context.instance()
        self._lock = threading.Lock()
        self._stalled = False
        self.counters = {"push_sent": 0, "push_unsent": 0, "pub_sent": 0, "pub_dropped": 0}
        self._push = self._pub = None
        self.push_endpoint = self.pub_endpoint = None
        try:
            if push is not None:
                self._push = self._ctx.socket(zmq.PUSH)
                self._push.setsockopt(zmq.SNDHWM, int(push_hwm))
                self._push.setsockopt(zmq.SNDTIMEO, int(round(self.push_timeout * 1000)))
                self._push.setsockopt(zmq.LINGER, int(round(self.push_timeout * 1000)))
                self.push_endpoint = self._attach(self._push, push)
            if pub is not None:
                self._pub = self._ctx.socket(zmq.XPUB)
                self._pub.setsockopt(zmq.SNDHWM, int(pub_hwm))
                self._pub.setsockopt(zmq.XPUB_NODROP, 1)
                self._pub.setsockopt(zmq.LINGER, 0)
                self.pub_endpoint = self._attach(self._pub, pub)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _attach(sock, endpoint: str) -> str:
        import zmq

        try:
            if endpoint.startswith(">"):
                sock.connect(endpoint[1:])
                return endpoint[1:]
            sock.bind(endpoint[1:] if endpoint.startswith("@") else endpoint)
        except zmq.ZMQError as exc:
            raise ValueError(f"{endpoint}: cannot use this ZeroMQ endpoint ({exc})") from None
        last = sock.getsockopt(zmq.LAST_ENDPOINT)
        return last.decode() if isinstance(last, bytes) else str(last)

    # ---- messages --------------------------------------------------------------------------------------------
    def result_message(self, series_id: int, series_unique_id: str, image_id: int, table: PeakTable, *,
                       latency_s: float | None = None, hit: bool | None = None) -> dict[str, Any]:
        """The ``result`` message of one frame (see the class docstring)."""
        n = len(table)
        return {
            "type": "result",
            "series_id": int(series_id),
            "series_unique_id": str(series_unique_id),
            "image_id": int(image_id),
            "hit": bool(n >= self.min_peaks_for_hit) if hit is None else bool(hit),
            "n_peaks": n,
            "peaks": {name: np.asarray(getattr(table, name), np.float64).tolist() for name in RESULT_PEAK_FIELDS},
            "latency_s": None if latency_s is None else float(latency_s),
            "model": self.model,
            "version": self.version,
        }

    def send_result(self, series_id: int, series_unique_id: str, image_id: int, table: PeakTable, *,
                    latency_s: float | None = None, hit: bool | None = None) -> None:
        """Send the ``result`` message of one frame."""
        self.send(self.result_message(series_id, series_unique_id, image_id, table, latency_s=latency_s, hit=hit))

    def send_metrics(self, counters: Mapping[str, Any], **extra: Any) -> None:
        """Send a ``metrics`` message: ``counters`` and ``extra`` entries, with the Unix ``time``."""
        self.send({"type": "metrics", "time": time.time(), "counters": dict(counters), **extra})

    def send_series_end(self, series_id: int, series_unique_id: str, reason: str = "end",
                        counters: Mapping[str, Any] | None = None) -> None:
        """Send a ``series_end`` message with the series' final counters."""
        self.send({"type": "series_end", "series_id": int(series_id), "series_unique_id": str(series_unique_id),
                   "reason": str(reason), "counters": dict(counters or {})})

    def probe(self) -> None:
        """Send a ``probe`` message on the PUB socket only (a subscriber waits for one before the real messages:
        a SUB socket receives nothing sent before its subscription reached the publisher)."""
        if self._pub is not None:
            self._send_pub(b"probe", self._encode({"type": "probe", "time": time.time()}))

    def send(self, message: Mapping[str, Any]) -> None:
        """Encode ``message`` (a map with a ``type``) and send it on each socket."""
        if "type" not in message:
            raise ValueError("a result message needs a 'type' entry")
        payload = self._encode(_plain_msg(message))
        if self._push is not None:
            self._send_push(payload)
        if self._pub is not None:
            self._send_pub(str(message["type"]).encode(), payload)

    def _send_push(self, payload: bytes) -> None:
        import zmq

        with self._lock:
            try:
                self._push.send(payload, zmq.DONTWAIT if self._stalled else 0)
            except zmq.Again:
                self.counters["push_unsent"] += 1
                self._stalled = True
                return
            self._stalled = False
            self.counters["push_sent"] += 1

    def _send_pub(self, topic: bytes, payload: bytes) -> None:
        import zmq

        with self._lock:
            self._drain()
            try:
                self._pub.send_multipart([topic, payload], zmq.DONTWAIT)
            except zmq.Again:
                self.counters["pub_dropped"] += 1
                return
            self.counters["pub_sent"] += 1

    def _drain(self) -> None:
        """Read the subscription messages an XPUB receives (unread, they would fill its receive queue)."""
        import zmq

        while True:
            try:
                self._pub.recv(zmq.DONTWAIT)
            except zmq.Again:
                return

    def close(self) -> None:
        """Close the sockets (PUSH lingers up to ``push_timeout`` for queued messages; PUB drops them)."""
        for sock in (self._push, self._pub):
            if sock is not None:
                sock.close()
        self._push = self._pub = None

    def __enter__(self) -> ResultPublisher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
