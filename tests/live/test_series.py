"""The series state machine: every case a detector stream produces, with exact counters."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart
from gixdrt.live.series import MAX_GAPS, SeriesTracker

IMG = {"data": np.zeros((2, 2), np.uint16)}


def start(uid: str, n: int | None = None, sid: int = 1, t: float = 1.0) -> SeriesStart:
    return SeriesStart(sid, uid, number_of_images=n, received=t)


def frame(uid: str, i: int, sid: int = 1, t: float = 1.0) -> FrameEvent:
    return FrameEvent(sid, uid, i, IMG, received=t)


def end(uid: str, sid: int = 1, t: float = 1.0, reason: str = "end") -> SeriesEnd:
    return SeriesEnd(sid, uid, reason, received=t)


def run(tracker: SeriesTracker, events) -> list:
    out = []
    for ev in events:
        out.extend(tracker.feed(ev))
    return out


def kinds(actions) -> list[tuple[str, str]]:
    return [(a.kind, a.reason) for a in actions]


def closed(actions) -> list:
    return [a.series for a in actions if a.kind == "close"]


def test_a_complete_series():
    tr = SeriesTracker()
    acts = run(tr, [start("A", 4, t=10.0), *(frame("A", i, t=11.0 + i) for i in range(4)), end("A", t=20.0)])
    assert kinds(acts) == [("open", ""), *[("frame", "")] * 4, ("close", "end")]
    s = acts[-1].series
    assert acts[0].series is s and all(a.series is s for a in acts)
    d = s.as_dict()
    assert (d["expected"], d["received"], d["missed"], d["duplicates"], d["out_of_order"], d["stray"]) == (4, 4, 0, 0,
                                                                                                           0, 0)
    assert (d["opened"], d["first_frame"], d["last_frame"], d["closed"], d["end_reason"]) == (10.0, 11.0, 14.0, 20.0,
                                                                                              "end")
    assert d["gaps"] == [] and tr.current is None
    assert tr.totals["series_opened"] == tr.totals["series_closed"] == 1 and tr.totals["received"] == 4


def test_start_without_end_then_a_new_start_supersedes():
    tr = SeriesTracker()
    acts = run(tr, [start("A", 4), frame("A", 0), frame("A", 1), start("B", 3, sid=2)])
    assert kinds(acts)[-2:] == [("close", "superseded"), ("open", "")]
    a = closed(acts)[0]
    assert (a.series_unique_id, a.received, a.missed, a.gaps, a.end_reason) == ("A", 2, 2, [(2, 3)], "superseded")
    assert tr.current.series_unique_id == "B" and tr.current.expected == 3 and tr.current.received == 0
    acts = run(tr, [frame("B", i, sid=2) for i in range(3)] + [end("B", sid=2)])
    b = closed(acts)[0]
    assert (b.received, b.missed, b.end_reason) == (3, 0, "end")


def test_stray_frames_of_an_older_series_are_dropped_and_counted():
    tr = SeriesTracker()
    run(tr, [start("A", 2), frame("A", 0), start("B", 2, sid=2)])
    acts = run(tr, [frame("A", 1), frame("B", 0, sid=2), frame("old", 7, sid=0), frame("B", 1, sid=2)])
    assert kinds(acts) == [("drop", "stray"), ("frame", ""), ("drop", "stray"), ("frame", "")]
    b = tr.current
    assert (b.stray, b.received) == (2, 2)
    assert acts[0].series is b  # the stray is charged to the series it interrupted
    b_done = closed(run(tr, [end("B", sid=2)]))[0]
    assert (b_done.stray, b_done.missed) == (2, 0)
    # frames with no series open: stray on the source totals only
    acts = run(tr, [frame("B", 2, sid=2), frame("C", 0)])
    assert kinds(acts) == [("drop", "stray")] * 2 and all(a.series is None for a in acts)
    assert tr.totals["stray"] == 4 and tr.totals["received"] == 3


def test_missing_end_is_closed_incomplete_after_the_idle_timeout():
    now = [0.0]
    tr = SeriesTracker(idle_timeout=5.0, clock=lambda: now[0])
    run(tr, [start("A", 10, t=0.0), frame("A", 0, t=1.0), frame("A", 1, t=2.0), frame("A", 2, t=3.0)])
    assert tr.tick(7.9) == [] and tr.current is not None  # idle for 4.9 s
    now[0] = 8.0
    acts = tr.tick()  # idle for 5 s by the clock
    assert kinds(acts) == [("close", "incomplete")] and acts[0].event is None
    s = acts[0].series
    assert (s.received, s.missed, s.gaps, s.closed, s.end_reason) == (3, 7, [(3, 9)], 8.0, "incomplete")
    assert tr.current is None and tr.tick(100.0) == []
    # a decode error of the series also counts as activity
    run(tr, [start("B", None, t=10.0)])
    tr.feed(DecodeError("bad", series_unique_id="B", received=14.0))
    assert tr.tick(18.0) == [] and kinds(tr.tick(19.0)) == [("close", "incomplete")]


def test_duplicate_and_out_of_order_image_ids():
    tr = SeriesTracker()
    ids = [0, 2, 1, 2, 5, 3, 0]
    acts = run(tr, [start("A", 6), *(frame("A", i) for i in ids)])
    assert [a.kind for a in acts[1:]] == ["frame", "frame", "frame", "drop", "frame", "frame", "drop"]
    assert [a.reason for a in acts if a.kind == "drop"] == ["duplicate", "duplicate"]
    s = closed(run(tr, [end("A")]))[0]
    # accepted: 0, 2, 1 (below 2: out of order), 5, 3 (below 5: out of order); refused: the second 2 and 0
    assert (s.received, s.duplicates, s.out_of_order, s.missed, s.gaps) == (5, 2, 2, 1, [(4, 4)])
    assert s.highest_image_id == 5


def test_two_series_back_to_back():
    tr = SeriesTracker()
    acts = run(tr, [start("A", 2), frame("A", 0), frame("A", 1), end("A"),
                    start("B", 3, sid=2), frame("B", 0, sid=2), frame("B", 2, sid=2), end("B", sid=2)])
    a, b = closed(acts)
    assert (a.series_unique_id, a.received, a.missed, a.end_reason) == ("A", 2, 0, "end")
    assert (b.series_unique_id, b.series_id, b.received, b.missed, b.gaps) == ("B", 2, 2, 1, [(1, 1)])
    assert kinds(acts).count(("open", "")) == 2 and tr.totals["series_closed"] == 2


def test_source_restart_mid_series_continues_the_series():
    tr = SeriesTracker()
    acts = run(tr, [start("A", None), frame("A", 0), frame("A", 1), start("A", 4)])
    assert kinds(acts) == [("open", ""), ("frame", ""), ("frame", "")]  # the repeated start: no action
    s = tr.current
    assert (s.restarts, s.expected, s.received) == (1, 4, 2)  # the expected count taken from the repeated start
    acts = run(tr, [frame("A", 1), frame("A", 2), frame("A", 3), start("A", 9), end("A")])
    done = closed(acts)[0]
    assert done is s
    assert (done.received, done.duplicates, done.restarts, done.expected, done.missed) == (4, 1, 2, 4, 0)
    assert tr.totals["restarts"] == 2 and tr.totals["series_opened"] == 1
    # the same unique id after the series closed: a new series record, counters from zero
    acts = run(tr, [start("A", 1), frame("A", 0), end("A")])
    again = closed(acts)[0]
    assert again is not s and (again.received, again.restarts, again.missed) == (1, 0, 0)


def test_end_without_start_is_counted_and_ignored():
    tr = SeriesTracker()
    acts = run(tr, [end("A")])
    assert kinds(acts) == [("drop", "orphan_end")] and acts[0].series is None
    run(tr, [start("B", 1, sid=2), frame("B", 0, sid=2)])
    acts = run(tr, [end("A"), end("B", sid=2), end("B", sid=2)])  # another series' end; B's end twice
    assert kinds(acts) == [("drop", "orphan_end"), ("close", "end"), ("drop", "orphan_end")]
    assert tr.totals["orphan_ends"] == 3 and tr.totals["series_closed"] == 1


def test_decode_errors_are_counted_on_the_series_or_the_source():
    tr = SeriesTracker()
    tr.feed(DecodeError("garbage before any start"))
    run(tr, [start("A", 3), frame("A", 0)])
    acts = run(tr, [DecodeError("bad frame", series_unique_id="A", image_id=1), DecodeError("no series named"),
                    DecodeError("another series", series_unique_id="Z")])
    assert [a.reason for a in acts] == ["decode_error"] * 3
    assert [a.series is tr.current for a in acts] == [True, True, False]
    s = closed(run(tr, [frame("A", 2), end("A")]))[0]
    assert (s.decode_errors, s.received, s.missed) == (2, 2, 1)
    assert tr.totals["decode_errors"] == 4


def test_gaps_without_an_expected_count():
    tr = SeriesTracker()
    s = closed(run(tr, [start("A", None), *(frame("A", i) for i in (0, 1, 4, 7)), end("A")]))[0]
    assert (s.expected, s.missed, s.gaps) == (None, 4, [(2, 3), (5, 6)])
    # ids beyond the expected count are received but do not reduce the missed count
    s = closed(run(tr, [start("B", 3), *(frame("B", i) for i in (0, 1, 5)), end("B")]))[0]
    assert (s.received, s.missed, s.gaps) == (3, 1, [(2, 2)])


def test_many_gaps_are_listed_up_to_the_limit():
    tr = SeriesTracker()
    n = 2 * MAX_GAPS + 50
    s = closed(run(tr, [start("A", n), *(frame("A", i) for i in range(0, n, 2)), end("A")]))[0]
    assert s.missed == n // 2
    assert s.gaps == [(i, i) for i in range(1, 2 * MAX_GAPS, 2)]


def test_large_image_ids_and_a_series_with_no_frames():
    tr = SeriesTracker()
    big = 1 << 23  # beyond the byte map of received ids (kept in a set there)
    ids = [0, big + 5, big + 5, big + 2, 3]
    s = closed(run(tr, [start("A", None), *(frame("A", i) for i in ids), end("A")]))[0]
    assert (s.received, s.duplicates, s.out_of_order, s.highest_image_id) == (4, 1, 2, big + 5)
    assert s.missed == big + 6 - 4
    assert s.gaps == [(1, 2), (4, big + 1), (big + 3, big + 4)]
    s = closed(run(tr, [start("B", 3), end("B")]))[0]
    assert (s.received, s.missed, s.gaps) == (0, 3, [(0, 2)])


def test_close_and_orphan_adoption():
    tr = SeriesTracker(adopt_orphans=True)
    acts = run(tr, [frame("late-joiner", 5), frame("late-joiner", 6)])
    assert kinds(acts) == [("open", ""), ("frame", ""), ("frame", "")] and acts[0].event is None
    [a] = tr.close()
    assert (a.reason, a.series.received, a.series.expected, a.series.missed) == ("closed", 2, None, 5)
    assert tr.close() == []
    with pytest.raises(ValueError, match="reason"):
        tr.close("because")
    with pytest.raises(TypeError, match="not a live event"):
        tr.feed("frame")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="idle_timeout"):
        SeriesTracker(idle_timeout=0)


def test_end_reason_is_passed_on():
    tr = SeriesTracker()
    [_, a] = run(tr, [start("A", 0), end("A", reason="closed")])
    assert (a.kind, a.reason, a.series.end_reason, a.series.missed) == ("close", "closed", "closed", 0)
