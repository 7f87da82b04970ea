"""The series state machine: which frames belong to the series being acquired, and when a series ends.

A :class:`SeriesTracker` consumes the events of one source (:mod:`gixdrt.live.events`) in arrival order and
returns, per event, a list of :class:`Action` records that say what to do with it. Keyed on
``series_unique_id``:

- ``SeriesStart`` while no series is open → ``open``. While another series is open → ``close`` of the open one
  (reason ``"superseded"``: an abort, a detector restart, a lost end message), then ``open``. A start repeated with
  the unique id of the open series (the source or the detector restarted mid-series and sent its start again)
  **continues** the open series: its counters go on, ``restarts`` is incremented, and a missing
  ``number_of_images`` is taken from the repeated start. A start with the unique id of a series already closed
  opens a new series record under that id (its counters start from zero).
- ``FrameEvent`` of the open series → ``frame`` (accepted), unless its ``image_id`` was already received: a
  ``duplicate``, refused (``drop``). An image id below the highest one received so far is accepted and counted
  ``out_of_order``. A frame of any other series (an older one, or one whose start never came) is a ``stray``:
  dropped and counted (on the open series when there is one, and on the source totals always). With
  ``adopt_orphans=True`` a frame arriving while *no* series is open opens a series of unknown length for its
  unique id instead (a consumer that joined after the start message).
- ``SeriesEnd`` of the open series → ``close`` with the end's reason. An end of any other series (an end without
  a start, or a repeated end) is counted ``orphan_ends`` on the source totals and ignored.
- ``DecodeError`` → counted ``decode_errors``: on the open series when the error names it or names no series,
  and on the source totals always.
- :meth:`SeriesTracker.tick` closes the open series as ``"incomplete"`` when nothing of it arrived for
  ``idle_timeout`` seconds; :meth:`SeriesTracker.close` closes it as ``"closed"`` (the source finished).

On close, ``missed`` is computed from the image ids: with a known ``expected`` (the start's
``number_of_images``) it is the number of ids in ``[0, expected)`` never received; without it, the ids missing
below the highest id received. ``gaps`` lists the missing id ranges (the first :data:`MAX_GAPS`).

The tracker counts arrivals only (``received``, ``duplicates``, ``out_of_order``, ``stray``, ``decode_errors``,
``missed``); ``processed``, ``rejected``, ``failed`` and ``late`` of a :class:`SeriesCounters` are filled by
whoever processes the frames (:class:`gixdrt.live.engine.LiveEngine`). ``received`` counts the accepted frames
(distinct image ids), so once every accepted frame is accounted: ``received == processed + rejected + failed``.

The tracker is not thread-safe: one thread feeds it (the engine's :meth:`~gixdrt.live.engine.LiveEngine.feed`
serialises its callers).

>>> tracker = SeriesTracker(idle_timeout=10.0)
>>> for event in source:
...     for action in tracker.feed(event):
...         if action.kind == "frame":
...             handle(action.event, action.series)          # the FrameEvent and its SeriesCounters
...         elif action.kind == "close":
...             report(action.series.as_dict())              # the series' final counters
...     tracker.tick()                                      # idle timeout: an "incomplete" close
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .events import END_REASONS, DecodeError, Event, FrameEvent, SeriesEnd, SeriesStart

__all__ = ["ACTIONS", "MAX_GAPS", "Action", "SeriesCounters", "SeriesTracker"]

#: the kinds of :class:`Action`: a series opened; a frame accepted; a series closed; an event dropped (counted)
ACTIONS = ("open", "frame", "close", "drop")

#: at most this many missing-id ranges are listed in :attr:`SeriesCounters.gaps`
MAX_GAPS = 100

#: image ids kept in a byte map up to this value (beyond: in a set); 1 byte per id
_MAP_LIMIT = 1 << 22


class _IdSet:
    """The image ids received in a series: a growable byte map for ids in [0, _MAP_LIMIT), a set beyond."""

    def __init__(self, expected: int | None = None):
        self._map = bytearray(min(expected or 0, _MAP_LIMIT))
        self._other: set[int] = set()
        self.count = 0
        self.highest = -1

    def add(self, i: int) -> bool:
        """Record ``i``; False when it was already there."""
        if 0 <= i < _MAP_LIMIT:
            if i >= len(self._map):
                grown = min(max(i + 1, 2 * len(self._map)), _MAP_LIMIT)
                self._map.extend(bytes(grown - len(self._map)))
            if self._map[i]:
                return False
            self._map[i] = 1
        else:
            if i in self._other:
                return False
            self._other.add(i)
        self.count += 1
        self.highest = max(self.highest, i)
        return True

    def missing(self, upto: int) -> tuple[int, list[tuple[int, int]]]:
        """(how many ids in [0, upto) were not received, the first MAX_GAPS missing ranges [first, last])."""
        upto = max(int(upto), 0)
        n_map = min(upto, _MAP_LIMIT)
        seen = np.zeros(n_map, bool)
        have = min(n_map, len(self._map))
        if have:
            seen[:have] = np.frombuffer(self._map, np.uint8, count=have).astype(bool)
        missing = n_map - int(np.count_nonzero(seen))
        extra = [i for i in self._other if _MAP_LIMIT <= i < upto]
        missing += max(upto - _MAP_LIMIT, 0) - len(extra)
        gaps: list[tuple[int, int]] = []
        if n_map and missing:
            step = np.diff(np.concatenate(([0], (~seen).astype(np.int8), [0])))
            starts, stops = np.flatnonzero(step == 1), np.flatnonzero(step == -1)  # a gap is [start, stop)
            gaps = [(int(a), int(b) - 1) for a, b in zip(starts[:MAX_GAPS], stops[:MAX_GAPS])]
        if upto > _MAP_LIMIT:  # ids beyond the byte map: walk the sorted ones received
            nxt = _MAP_LIMIT
            for i in [*sorted(extra), upto]:
                if len(gaps) >= MAX_GAPS:
                    break
                if i > nxt:
                    if gaps and gaps[-1][1] == nxt - 1:  # a gap running across the map's end
                        gaps[-1] = (gaps[-1][0], i - 1)
                    else:
                        gaps.append((nxt, i - 1))
                nxt = i + 1
        return missing, gaps


@dataclass
class SeriesCounters:
    """Counters of one series (frames unless said otherwise).

    expected: ``number_of_images`` of the start (None: unknown). received: frames accepted (distinct image ids).
    processed / rejected / failed / late: filled by the engine (processed: results delivered; rejected: dropped
    by the engine's queue, monitor mode or shutdown; failed: processing raised; late: latency over the budget).
    missed: image ids never received (set on close). decode_errors: undecodable messages of this series.
    duplicates: frames refused because their image id had been received. out_of_order: accepted frames whose id
    was below the highest one received before. stray: frames of other series dropped while this one was open.
    restarts: starts repeated with this unique id while it was open. Times are the events' ``received`` clock
    (seconds, ``time.monotonic`` by default): opened, first_frame, last_frame, last_activity, closed.
    end_reason: one of :data:`gixdrt.live.events.END_REASONS` once closed, else None.
    """

    series_id: int
    series_unique_id: str
    expected: int | None = None
    received: int = 0
    processed: int = 0
    rejected: int = 0
    failed: int = 0
    missed: int = 0
    late: int = 0
    decode_errors: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    stray: int = 0
    restarts: int = 0
    opened: float = 0.0
    first_frame: float | None = None
    last_frame: float | None = None
    last_activity: float = 0.0
    closed: float | None = None
    end_reason: str | None = None
    gaps: list[tuple[int, int]] = field(default_factory=list)
    source: str = ""
    _ids: _IdSet = field(default_factory=_IdSet, repr=False, compare=False)

    @property
    def is_open(self) -> bool:
        return self.end_reason is None

    @property
    def accounted(self) -> int:
        """Accepted frames whose fate is known (processed + rejected + failed)."""
        return self.processed + self.rejected + self.failed

    @property
    def highest_image_id(self) -> int:
        """The highest image id received (−1: none)."""
        return self._ids.highest

    def as_dict(self) -> dict[str, Any]:
        """Every counter, the times and the end reason as plain Python values (JSON/CBOR-ready)."""
        return {
            "series_id": self.series_id, "series_unique_id": self.series_unique_id, "source": self.source,
            "expected": self.expected, "received": self.received, "processed": self.processed,
            "rejected": self.rejected, "failed": self.failed, "missed": self.missed, "late": self.late,
            "decode_errors": self.decode_errors, "duplicates": self.duplicates, "out_of_order": self.out_of_order,
            "stray": self.stray, "restarts": self.restarts, "opened": self.opened, "first_frame": self.first_frame,
            "last_frame": self.last_frame, "closed": self.closed, "end_reason": self.end_reason,
            "gaps": [list(g) for g in self.gaps],
        }


@dataclass(frozen=True)
class Action:
    """What to do with an event. kind: one of :data:`ACTIONS`. event: the event it concerns (None for a close
    caused by :meth:`SeriesTracker.tick` or :meth:`SeriesTracker.close`). series: the counters of the series
    concerned (None for a drop outside any series). reason: for ``close`` the end reason; for ``drop`` why
    (``"duplicate"``, ``"stray"``, ``"orphan_end"``, ``"decode_error"``)."""

    kind: str
    event: Event | None = None
    series: SeriesCounters | None = None
    reason: str = ""


#: the source totals kept by the tracker (across series)
TOTALS = ("series_opened", "series_closed", "received", "duplicates", "out_of_order", "stray", "decode_errors",
          "orphan_ends", "restarts")


class SeriesTracker:
    """The series state machine of one source (see the module docstring for every rule).

    idle_timeout: seconds without any event of the open series after which :meth:`tick` closes it as
        ``"incomplete"`` (None: never). adopt_orphans: a frame arriving while no series is open opens a series
        (unknown length) instead of being a stray. clock: the time source for :meth:`tick` and for events whose
        ``received`` is 0 (default ``time.monotonic``, the clock of ``FrameEvent.received``).
    """

    def __init__(self, *, idle_timeout: float | None = None, adopt_orphans: bool = False,
                 clock: Callable[[], float] = time.monotonic):
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be > 0 seconds or None, got {idle_timeout!r}")
        self.idle_timeout = idle_timeout
        self.adopt_orphans = adopt_orphans
        self.clock = clock
        self.current: SeriesCounters | None = None
        self.totals: dict[str, int] = dict.fromkeys(TOTALS, 0)

    # --- events -------------------------------------------------------------------------------------------
    def feed(self, event: Event) -> list[Action]:
        """Decide what happens to ``event`` (arrival order) → the actions, in the order to carry them out."""
        if isinstance(event, FrameEvent):
            return self._frame(event)
        if isinstance(event, SeriesStart):
            return self._start(event)
        if isinstance(event, SeriesEnd):
            return self._end(event)
        if isinstance(event, DecodeError):
            return self._decode_error(event)
        raise TypeError(f"not a live event: {type(event).__name__}")

    def tick(self, now: float | None = None) -> list[Action]:
        """Close the open series as ``"incomplete"`` when it has been idle for ``idle_timeout`` seconds at ``now``
        (default: the clock) → ``[close]`` or ``[]``."""
        cur = self.current
        if cur is None or self.idle_timeout is None:
            return []
        now = self.clock() if now is None else now
        if now - cur.last_activity >= self.idle_timeout:
            return [self._close("incomplete", now)]
        return []

    def close(self, reason: str = "closed", now: float | None = None) -> list[Action]:
        """The source finished: close the open series with ``reason`` → ``[close]`` or ``[]``."""
        if reason not in END_REASONS:
            raise ValueError(f"reason must be one of {END_REASONS}, got {reason!r}")
        if self.current is None:
            return []
        return [self._close(reason, self.clock() if now is None else now)]

    # --- rules --------------------------------------------------------------------------------------------
    def _when(self, event: Any) -> float:
        t = getattr(event, "received", 0.0)
        return t if t else self.clock()

    def _open(self, series_id: int, unique_id: str, expected: int | None, t: float,
              source: str = "") -> SeriesCounters:
        s = SeriesCounters(series_id, unique_id, expected, opened=t, last_activity=t, source=source,
                           _ids=_IdSet(expected))
        self.current = s
        self.totals["series_opened"] += 1
        return s

    def _start(self, ev: SeriesStart) -> list[Action]:
        t = self._when(ev)
        cur = self.current
        if cur is not None and cur.series_unique_id == ev.series_unique_id:
            cur.restarts += 1
            self.totals["restarts"] += 1
            cur.last_activity = t
            if cur.expected is None and ev.number_of_images is not None:
                cur.expected = ev.number_of_images
            return []
        actions = []
        if cur is not None:
            actions.append(self._close("superseded", t))
        s = self._open(ev.series_id, ev.series_unique_id, ev.number_of_images, t, ev.source)
        actions.append(Action("open", ev, s))
        return actions

    def _frame(self, ev: FrameEvent) -> list[Action]:
        t = self._when(ev)
        cur = self.current
        actions: list[Action] = []
        if cur is None and self.adopt_orphans:
            cur = self._open(ev.series_id, ev.series_unique_id, None, t)
            actions.append(Action("open", None, cur))
        if cur is None or cur.series_unique_id != ev.series_unique_id:
            self.totals["stray"] += 1
            if cur is not None:
                cur.stray += 1
            return [Action("drop", ev, cur, "stray")]
        cur.last_activity = t
        highest = cur._ids.highest
        if not cur._ids.add(int(ev.image_id)):
            cur.duplicates += 1
            self.totals["duplicates"] += 1
            return [*actions, Action("drop", ev, cur, "duplicate")]
        if ev.image_id < highest:
            cur.out_of_order += 1
            self.totals["out_of_order"] += 1
        cur.received += 1
        self.totals["received"] += 1
        if cur.first_frame is None:
            cur.first_frame = t
        cur.last_frame = t
        return [*actions, Action("frame", ev, cur)]

    def _end(self, ev: SeriesEnd) -> list[Action]:
        cur = self.current
        if cur is None or cur.series_unique_id != ev.series_unique_id:
            self.totals["orphan_ends"] += 1
            return [Action("drop", ev, None, "orphan_end")]
        return [self._close(ev.reason, self._when(ev), ev)]

    def _decode_error(self, ev: DecodeError) -> list[Action]:
        self.totals["decode_errors"] += 1
        cur = self.current
        if cur is not None and ev.series_unique_id in (None, cur.series_unique_id):
            cur.decode_errors += 1
            cur.last_activity = self._when(ev)
            return [Action("drop", ev, cur, "decode_error")]
        return [Action("drop", ev, None, "decode_error")]

    def _close(self, reason: str, t: float, event: Event | None = None) -> Action:
        s = self.current
        assert s is not None
        upto = s.expected if s.expected is not None else s._ids.highest + 1
        s.missed, s.gaps = s._ids.missing(upto)
        s.closed = t
        s.end_reason = reason
        self.current = None
        self.totals["series_closed"] += 1
        return Action("close", event, s, reason)
