"""A live run: a source's events through the engine into the sinks, with tracks, hit flags and a status line.

:class:`LiveSession` is what ``gixdrt stream`` (and ``gixdrt demo --live``) run, and what a DAQ process can run
in a thread of its own: it owns a :class:`~gixdrt.live.engine.LiveEngine` and wires its callbacks to

- a :class:`~gixdrt.live.sinks.SeriesTableSink` (one peak table per series, written while it runs),
- per series, optionally, a CXI peak file (:class:`gixdrt.io.cxi.CxiWriter`) and a ``hits.lst``,
- a :class:`~gixdrt.live.sinks.ResultPublisher` (a result message per frame, metrics, series ends),
- a :class:`~gixdrt.gixd.tracks.TrackLinker` per series (``link=True``: the ``track`` column, incrementally)
  and a :class:`~gixdrt.gixd.screening.Screener` per series (the hit flag of every frame),

and reports each ended series (``on_series(summary)``) and the counters every ``status_interval`` seconds
(``on_status(counters)``). Frames reach the tracks and flags in the order they were processed; a frame whose image
id is not above the previous one of its series (out of order) gets no track (−1) and is flagged without "new
peaks" information.

>>> session = LiveSession(pipeline_runner(pipe), sink=SeriesTableSink("run.h5"), mode="lossless")
>>> with StreamSource("tcp://detector:31001", timeout=0.5) as source:
...     totals = session.run(source, resume=True, series=1)
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .engine import LiveEngine, LiveResult
from .events import Event, SeriesEnd, SeriesStart

__all__ = ["LiveSession", "SeriesReport"]


@dataclass
class SeriesReport:
    """What one ended series gave: its counters (the engine's, see
    :meth:`gixdrt.live.series.SeriesCounters.as_dict`), its outputs, peaks, hits and tracks."""

    counters: dict[str, Any]
    outputs: list[Path] = field(default_factory=list)
    peaks: int = 0
    hits: int = 0
    tracks: int = 0

    @property
    def series_unique_id(self) -> str:
        return str(self.counters.get("series_unique_id", ""))

    def line(self) -> str:
        """One line for a log: counts, end reason and outputs."""
        c = self.counters
        expected = c.get("expected")
        parts = [f"series {c.get('series_id')} ({self.series_unique_id}): {c.get('end_reason')}",
                 f"{c.get('received', 0)} received" + (f" of {expected}" if expected is not None else ""),
                 f"{c.get('processed', 0)} processed"]
        for key in ("rejected", "failed", "missed", "late", "decode_errors", "duplicates", "stray"):
            if c.get(key):
                parts.append(f"{c[key]} {key.replace('_', ' ')}")
        parts.append(f"{self.peaks} peaks")
        parts.append(f"{self.hits} hits")
        if self.tracks:
            parts.append(f"{self.tracks} tracks")
        text = ", ".join(parts)
        if self.outputs:
            text += " → " + ", ".join(str(p) for p in self.outputs)
        return text


@dataclass
class _SeriesState:
    start: SeriesStart
    linker: Any = None
    screener: Any = None
    cxi: Any = None
    flags: list = field(default_factory=list)
    last_image: int = -1
    peaks: int = 0


class LiveSession:
    """Source → engine → sinks (see the module docstring).

    processor: the engine's ``process_batch`` (e.g. :func:`gixdrt.live.engine.pipeline_runner`). sink: a
    :class:`~gixdrt.live.sinks.SeriesTableSink` or None. publisher: a :class:`~gixdrt.live.sinks.ResultPublisher`
    or None. link: link peaks into tracks (IoU ≥ ``link_iou``). screening: a
    :class:`gixdrt.gixd.screening.ScreeningConfig` (default: a frame with ≥ 1 peak is a hit). cxi / hits: output
    patterns for a CXI file and a hits list per series (named like the sink's tables, see
    :func:`gixdrt.live.sinks.series_path`), or None. engine: the remaining :class:`LiveEngine` settings (mode,
    queue_frames, queue_bytes, max_batch, latency_budget, idle_timeout, ...).
    """

    def __init__(self, processor: Any, *, sink: Any = None, publisher: Any = None, link: bool = False,
                 link_iou: float = 0.3, screening: Any = None, cxi: str | None = None, hits: str | None = None,
                 on_series: Callable[[SeriesReport], None] | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None, status_interval: float = 1.0,
                 metrics_interval: float = 1.0, **engine: Any):
        from ..gixd.screening import ScreeningConfig

        self.sink = sink
        self.publisher = publisher
        self.link = bool(link)
        self.link_iou = float(link_iou)
        self.screening = screening if screening is not None else ScreeningConfig()
        self.cxi = cxi
        self.hits = hits
        self.on_series = on_series
        self.on_status = on_status
        self.status_interval = float(status_interval)
        self.on_start: Callable[[SeriesStart], None] | None = None  # called first when a series starts
        self.reports: list[SeriesReport] = []
        self.errors: list[str] = []  # one line per sink/publisher failure (the first few)
        self._states: dict[str, _SeriesState] = {}
        self._lock = threading.Lock()
        self._ended = threading.Condition(self._lock)
        self.engine = LiveEngine(processor, on_result=self._on_result, on_series_start=self._on_start,
                                 on_series_end=self._on_end, on_metrics=self._on_metrics if publisher else None,
                                 metrics_interval=metrics_interval, keep_results=False, **engine)

    # --- callbacks (source thread for starts, worker thread for results and ends) ----------------------------
    def _on_start(self, start: SeriesStart) -> None:
        from ..gixd.screening import Screener
        from ..gixd.tracks import TrackLinker

        state = _SeriesState(start, TrackLinker(iou=self.link_iou) if self.link else None, Screener(self.screening))
        if self.on_start is not None:
            self.on_start(start)
        if self.sink is not None:
            self.sink.open_series(start)
        if self.cxi is not None:
            from ..io.cxi import CxiWriter

            state.cxi = CxiWriter(self._path(self.cxi, start), linked=self.link, screening=True,
                                  attrs={"series_unique_id": start.series_unique_id, "series_id": start.series_id})
        with self._lock:
            self._states[start.series_unique_id] = state

    def _path(self, pattern: str, start: SeriesStart) -> Path:
        """A per-series output named like the sink's tables (the series id; the pattern itself when the sink
        writes a single series)."""
        from .sinks import series_path

        return series_path(pattern, str(start.series_id), single=bool(getattr(self.sink, "single", False)))

    def _on_result(self, result: LiveResult) -> None:
        if not result.ok:
            return  # counted failed by the engine
        with self._lock:
            state = self._states.get(result.series_unique_id)
        if state is None:
            return  # processed synchronously, outside any series
        table = result.table
        image_id = int(result.image_id)
        in_order = image_id > state.last_image
        if state.linker is not None:
            ids = state.linker.add(image_id, table.boxes) if in_order else np.full(len(table), -1, np.int64)
            table = table.with_tracks(ids)
        flag = state.screener.add(image_id, table) if in_order else None
        state.last_image = max(state.last_image, image_id)
        state.peaks += len(table)
        if flag is not None:
            state.flags.append(flag)
        if self.sink is not None:
            self.sink.add(result.series_unique_id, image_id, table)
        if state.cxi is not None:
            state.cxi.add(image_id, table, flag)
        if self.publisher is not None:
            self.publisher.send_result(result.series_id, result.series_unique_id, image_id, table,
                                       latency_s=result.latency, hit=None if flag is None else bool(flag.hit))

    def _on_end(self, counters: dict[str, Any]) -> None:
        uid = str(counters.get("series_unique_id"))
        with self._lock:
            state = self._states.pop(uid, None)
        report = SeriesReport(dict(counters))
        if state is not None:
            report.peaks = state.peaks
            report.hits = sum(1 for f in state.flags if f.hit)
            if state.linker is not None:
                report.tracks = int(state.linker.n_tracks)
            reason = str(counters.get("end_reason") or "end")
            if self.sink is not None:
                report.outputs.append(self.sink.close_series(uid, counters, reason=reason))
            if state.cxi is not None:
                report.outputs.append(state.cxi.close())
            if self.hits is not None:
                from ..gixd.screening import FrameFlags, write_hits_list

                report.outputs.append(write_hits_list(self._path(self.hits, state.start),
                                                      FrameFlags.from_flags(state.flags)))
        if self.publisher is not None:
            self.publisher.send_series_end(counters.get("series_id", -1), uid, str(counters.get("end_reason")),
                                           counters)
        with self._lock:
            self.reports.append(report)
            self._ended.notify_all()
        if self.on_series is not None:
            self.on_series(report)

    def _on_metrics(self, counters: dict[str, Any]) -> None:
        self.publisher.send_metrics(counters)

    # --- running ------------------------------------------------------------------------------------------------
    def run(self, source: Iterable[Event], *, resume: bool = False, series: int | None = None,
            idle_exit: float | None = None, stop: threading.Event | None = None) -> dict[str, Any]:
        """Feed ``source``'s events to the engine until the source ends (``resume``: a source whose iteration
        ends when it is idle, like :class:`~gixdrt.live.zmqsource.StreamSource` with a short timeout, is iterated
        again), ``series`` series have ended, nothing arrived for ``idle_exit`` seconds, or ``stop`` is set. The
        engine is closed at the end (queued frames processed, an open series closed as ``closed`` and written with
        that reason); on an exception (Ctrl-C included) queued frames are dropped, counted ``rejected``, and the
        open series is still closed and written. → the final counters."""
        last = time.monotonic()
        next_status = last + self.status_interval
        ok = False
        try:
            while True:
                for event in source:
                    self.engine.feed(event)
                    now = time.monotonic()
                    last = now
                    if isinstance(event, SeriesEnd) and series is not None:
                        self.engine.wait_idle()  # the series' frames accounted: its end report is out
                    if now >= next_status:
                        next_status = now + self.status_interval
                        self._status()
                    if self._done(series, stop):
                        break
                now = time.monotonic()
                self.engine.tick()
                if now >= next_status:
                    next_status = now + self.status_interval
                    self._status()
                if self._done(series, stop) or not resume:
                    break
                if idle_exit is not None and now - last >= idle_exit:
                    break
            ok = True
        finally:
            self.engine.close(drain=ok)
            if self.sink is not None and not ok:
                self.sink.close()
        self._status()
        return self.engine.counters()

    def _done(self, series: int | None, stop: threading.Event | None) -> bool:
        if stop is not None and stop.is_set():
            return True
        if series is None:
            return False
        with self._lock:
            return len(self.reports) >= series

    def _status(self) -> None:
        if self.on_status is not None:
            self.on_status(self.engine.counters())


def status_line(c: Mapping[str, Any]) -> str:
    """One line of live counters: rate, latency, queue, and every frame accounted."""
    def ms(v: Any) -> str:
        return "–" if v is None else f"{1e3 * v:.1f}"

    return (f"{c.get('rate', 0) or 0:.1f} frames/s, latency p50 {ms(c.get('latency_p50'))} ms p99 "
            f"{ms(c.get('latency_p99'))} ms, queue {c.get('queued', 0)}, received {c.get('received', 0)}, "
            f"processed {c.get('processed', 0)}, rejected {c.get('rejected', 0)}, missed {c.get('missed', 0)}, "
            f"failed {c.get('failed', 0)}, decode errors {c.get('decode_errors', 0)}")
