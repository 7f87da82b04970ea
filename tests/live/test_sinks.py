"""Live sinks: per-series peak tables (SWMR while running, .part renamed at the end, counters and end reasons) and
result messages on ZeroMQ (PUSH/PUB round trips, PUB drops counted without blocking)."""
from __future__ import annotations

import csv
import json
import time

import numpy as np
import pytest

from gixdrt.gixd.peaks import COLUMNS, PeakTable
from gixdrt.io.writers import read_peaks, write_peaks
from gixdrt.live.events import SeriesEnd, SeriesStart
from gixdrt.live.sinks import ResultPublisher, SeriesTableSink, decode_result, series_path

h5py = pytest.importorskip("h5py")


def frame_table(image_id: int, n: int, seed: int = 0) -> PeakTable:
    """n peaks of one frame with awkward floats (the frame/source columns are the sink's to set)."""
    rng = np.random.default_rng(seed * 1000 + image_id)
    return PeakTable.from_boxes(rng.random((n, 4)) * 50, rng.random(n), frame=999, source="ignored",
                                image_shape=(32, 64), q_max=2.5, polar=rng.random((32, 64)))


def start(series_id: int = 1, uid: str = "uid-1", n: int | None = 4) -> SeriesStart:
    return SeriesStart(series_id=series_id, series_unique_id=uid, number_of_images=n, image_shape=(32, 64),
                       dtype="uint16", source="tcp://detector:31001")


def expected_table(uid: str, peaks_per_frame: dict[int, int], seed: int = 0, source: str | None = None) -> PeakTable:
    """What the sink should hold, built independently with PeakTable.from_boxes (frame = image id)."""
    tables = []
    for image_id, n in peaks_per_frame.items():
        t = frame_table(image_id, n, seed)
        cols = t.columns()
        cols["frame"] = np.full(n, image_id)
        cols["source"] = np.full(n, uid if source is None else source, dtype=object)
        tables.append(PeakTable(**cols))
    return PeakTable.concat(tables)


def assert_same(got: PeakTable, want: PeakTable) -> None:
    assert len(got) == len(want)
    for name in COLUMNS:
        a, b = getattr(got, name), getattr(want, name)
        if name == "source":
            assert list(a) == list(b)
        else:
            assert np.array_equal(a, b, equal_nan=True), name


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


COUNTERS = {"expected": 4, "received": 3, "processed": 3, "rejected": 0, "missed": 1, "late": 0, "decode_errors": 0}


def test_naming_rule(tmp_path):
    assert series_path(tmp_path / "run.h5", "7") == tmp_path / "run_7.h5"
    assert series_path(tmp_path / "run.csv", "scan/a b") == tmp_path / "run_scan_a_b.csv"
    assert series_path(str(tmp_path / "{series}" / "peaks.h5"), "x1") == tmp_path / "x1" / "peaks.h5"
    assert series_path(tmp_path / "run.h5", "x", single=True) == tmp_path / "run.h5"


def test_h5_series_readable_while_running_then_renamed(tmp_path):
    sink = SeriesTableSink(tmp_path / "run.h5", metadata={"model": "m1", "config": {"a": 1}}, flush_frames=2)
    final = sink.open_series(start())
    part = sink.part_path("uid-1")
    assert final == tmp_path / "run_1.h5" and part == tmp_path / "run_1.h5.part"
    peaks = {0: 3, 1: 0}
    for image_id, n in peaks.items():
        sink.add("uid-1", image_id, frame_table(image_id, n))
    # two frames: flushed; a SWMR reader sees the rows, the frames and the counts so far
    with h5py.File(part, "r", swmr=True) as f:
        rows = f["peaks"][()]
        assert rows["frame"].tolist() == [0, 0, 0]
        assert [s.decode() for s in rows["source"]] == ["uid-1"] * 3
        assert np.array_equal(rows["q"], expected_table("uid-1", peaks).q)
        assert f["image_ids"][()].tolist() == [0, 1]
        assert f["frame_counts"][()].tolist() == [3, 0]
        assert f["metadata"].attrs["series_unique_id"] == "uid-1"
        ds = f["peaks"]
        sink.add("uid-1", 3, frame_table(3, 2))  # image 2 missing
        sink.flush()
        ds.refresh()
        assert ds.shape == (5,) and ds[()]["frame"].tolist()[-2:] == [3, 3]
    assert not final.exists()
    path = sink.close_series(SeriesEnd(1, "uid-1", reason="end"), COUNTERS)
    assert path == final and files(tmp_path) == ["run_1.h5"]
    table, meta = read_peaks(final)
    assert_same(table, expected_table("uid-1", {0: 3, 1: 0, 3: 2}))
    assert meta["counters"] == COUNTERS
    assert meta["end_reason"] == "end" and meta["n_frames"] == 4 and meta["processed_frames"] == 3
    assert meta["frame_counts"].tolist() == [3, 0, 0, 2] and meta["image_ids"].tolist() == [0, 1, 3]
    assert meta["series_id"] == 1 and meta["number_of_images"] == 4 and meta["model"] == "m1"
    assert meta["series_source"] == "tcp://detector:31001"
    assert sink.written == [final]


def test_sink_output_matches_write_peaks(tmp_path):
    """A series written by the sink reads back like write_peaks' file of the same peaks (the detect layout)."""
    peaks = {0: 2, 1: 0, 2: 4}
    want = expected_table("file.h5", peaks, source="file.h5")
    ref = write_peaks(tmp_path / "ref.h5", want, n_frames=3)
    sink = SeriesTableSink(tmp_path / "run.h5", single=True)
    sink.open_series(start(n=3))
    for image_id, n in peaks.items():
        sink.add("uid-1", image_id, frame_table(image_id, n), source="file.h5")
    out = sink.close_series("uid-1", COUNTERS)
    assert out == tmp_path / "run.h5"
    got, meta = read_peaks(out)
    ref_table, ref_meta = read_peaks(ref)
    assert_same(got, ref_table)
    assert np.array_equal(meta["frame_counts"], ref_meta["frame_counts"])


def test_csv_series_with_sidecar_and_incomplete_reason(tmp_path):
    sink = SeriesTableSink(tmp_path / "run.csv", flush_frames=1)
    sink.open_series(start(series_id=5, uid="u5", n=10))
    sink.add("u5", 0, frame_table(0, 2))
    part = sink.part_path("u5")
    with open(part, newline="") as f:  # readable while running: the header and the rows so far
        rows = list(csv.reader(f))
    assert rows[0] == list(COLUMNS) and [r[0] for r in rows[1:]] == ["0", "0"]
    sink.add("u5", 1, frame_table(1, 1))
    out = sink.close_series("u5", {**COUNTERS, "expected": 10}, reason="incomplete")
    assert out == tmp_path / "run_5.csv"
    assert files(tmp_path) == ["run_5.csv", "run_5.csv.json"]
    assert_same(read_peaks(out)[0], expected_table("u5", {0: 2, 1: 1}))
    side = json.loads((tmp_path / "run_5.csv.json").read_text())
    assert side["end_reason"] == "incomplete" and side["counters"]["expected"] == 10
    assert side["series_unique_id"] == "u5" and side["processed_frames"] == 2 and side["table"] == "run_5.csv"


def test_incomplete_h5_series_is_written_with_reason(tmp_path):
    sink = SeriesTableSink(tmp_path / "run.h5")
    sink.open_series(start())
    sink.add("uid-1", 0, frame_table(0, 1))
    out = sink.close_series(SeriesEnd(1, "uid-1", reason="incomplete"), COUNTERS)
    table, meta = read_peaks(out)
    assert meta["end_reason"] == "incomplete" and len(table) == 1 and meta["counters"]["missed"] == 1
    # the live engine's series counters (a dict with the unique id and the end reason) close a series too
    sink.open_series(start(2, "uid-2"))
    engine_counters = {"series_unique_id": "uid-2", "end_reason": "superseded", "expected": 4, "received": 0,
                       "gaps": [[0, 4]]}
    out = sink.close_series(engine_counters)
    meta = read_peaks(out)[1]
    assert meta["end_reason"] == "superseded" and meta["counters"] == engine_counters and meta["n_frames"] == 0


def test_several_series_several_files_and_collisions(tmp_path):
    with SeriesTableSink(tmp_path / "run.h5", reserved=[tmp_path / "run_a.h5"]) as sink:
        a = sink.open_series(start(1, "u1"), name="a")  # run_a.h5 is reserved (an earlier run's): run_a-2.h5
        b = sink.open_series(start(2, "u2"))
        sink.add("u1", 0, frame_table(0, 1))
        sink.add("u2", 0, frame_table(0, 2, seed=1))
        c_uid_end = sink.close_series("u2", COUNTERS)
        sink.open_series(start(3, "u3"), name="a")
    assert (a, b, c_uid_end) == (tmp_path / "run_a-2.h5", tmp_path / "run_2.h5", tmp_path / "run_2.h5")
    # leaving the with block closes the open series with reason "closed"
    assert files(tmp_path) == ["run_2.h5", "run_a-2.h5", "run_a-3.h5"]
    assert read_peaks(tmp_path / "run_a-2.h5")[1]["end_reason"] == "closed"
    assert len(read_peaks(tmp_path / "run_2.h5")[0]) == 2
    assert sink.is_output(tmp_path / "run_a-3.h5") and sink.is_output(tmp_path / ".." / tmp_path.name / "run_x.h5.part")
    assert not sink.is_output(tmp_path / "run.h5") and not sink.is_output(tmp_path / "other_1.h5")


def test_nothing_left_on_error(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with SeriesTableSink(tmp_path / "run.h5") as sink:
            sink.open_series(start(1, "u1"))
            sink.open_series(start(2, "u2"))
            sink.add("u1", 0, frame_table(0, 3))
            sink.flush()
            assert len(files(tmp_path)) == 2
            raise RuntimeError("boom")
    assert files(tmp_path) == []
    sink = SeriesTableSink(tmp_path / "run.csv")
    sink.open_series(start())
    sink.abort()
    assert files(tmp_path) == []


def test_sink_refuses_bad_use(tmp_path):
    with pytest.raises(ValueError, match="unsupported peak table format .txt"):
        SeriesTableSink(tmp_path / "run.txt")
    with pytest.raises(ValueError, match="series_id"):
        SeriesTableSink(tmp_path / "run.h5", metadata={"series_id": 3})
    sink = SeriesTableSink(tmp_path / "run.h5", single=True)
    sink.open_series(start())
    with pytest.raises(ValueError, match="single series"):
        sink.open_series(start(2, "u2"))
    with pytest.raises(KeyError, match="nope"):
        sink.add("nope", 0, frame_table(0, 1))
    with pytest.raises(ValueError, match="reason must be one of"):
        sink.close_series("uid-1", reason="finished")
    sink.abort()


# --- result messages ------------------------------------------------------------------------------------------
def _recv(sock, timeout_ms: int = 2000):
    import zmq

    if not sock.poll(timeout_ms, zmq.POLLIN):
        raise AssertionError("no message within the timeout")
    return sock.recv_multipart()


@pytest.mark.parametrize("codec", ["cbor", "msgpack"])
def test_push_round_trip(codec):
    import zmq

    ctx = zmq.Context()
    pub = ResultPublisher(push="tcp://127.0.0.1:*", codec=codec, model="default", context=ctx)
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    try:
        pull.connect(pub.push_endpoint)
        table = frame_table(4, 3)
        pub.send_result(7, "uid-7", 4, table, latency_s=0.0125)
        pub.send_result(7, "uid-7", 5, PeakTable.empty(), latency_s=None)
        pub.send_metrics({"received": 2, "processed": 2}, queue_depth=0)
        pub.send_series_end(7, "uid-7", "end", COUNTERS)
        msgs = [decode_result(_recv(pull)) for _ in range(4)]
    finally:
        pull.close()
        pub.close()
        ctx.term()
    r = msgs[0]
    assert r["type"] == "result" and (r["series_id"], r["series_unique_id"], r["image_id"]) == (7, "uid-7", 4)
    assert r["n_peaks"] == 3 and r["hit"] is True and r["latency_s"] == 0.0125 and r["model"] == "default"
    for name in ("q", "phi", "score", "x0", "y1", "intensity"):
        assert r["peaks"][name] == getattr(table, name).tolist()
    assert msgs[1]["hit"] is False and msgs[1]["n_peaks"] == 0 and msgs[1]["peaks"]["q"] == []
    assert msgs[2]["type"] == "metrics" and msgs[2]["counters"] == {"received": 2, "processed": 2}
    assert msgs[2]["queue_depth"] == 0 and abs(msgs[2]["time"] - time.time()) < 60
    assert msgs[3] == {"type": "series_end", "series_id": 7, "series_unique_id": "uid-7", "reason": "end",
                       "counters": COUNTERS}
    assert pub.counters["push_sent"] == 4 and pub.counters["push_unsent"] == 0


def test_pub_round_trip_after_probe():
    import zmq

    ctx = zmq.Context()
    pub = ResultPublisher(pub="tcp://127.0.0.1:*", codec="msgpack", context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    try:
        sub.connect(pub.pub_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        deadline = time.monotonic() + 5
        while True:  # slow joiner: probe until the subscription has reached the publisher
            pub.probe()
            if sub.poll(50, zmq.POLLIN):
                break
            assert time.monotonic() < deadline, "the subscriber never received a probe"
        while sub.poll(100, zmq.POLLIN):  # the probes in flight
            assert decode_result(sub.recv_multipart())["type"] == "probe"
        pub.send_result(1, "u", 0, frame_table(0, 2))
        topic, payload = _recv(sub)
    finally:
        sub.close()
        pub.close()
        ctx.term()
    assert topic == b"result"
    msg = decode_result([topic, payload])
    assert msg["image_id"] == 0 and msg["n_peaks"] == 2 and msg["peaks"]["score"] == frame_table(0, 2).score.tolist()


def test_pub_drops_counted_without_blocking():
    """A subscriber that never reads: once its queue is full the publisher drops (counted) and never waits."""
    import zmq

    ctx = zmq.Context()
    pub = ResultPublisher(pub="tcp://127.0.0.1:*", pub_hwm=2, context=ctx)
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 2)
    sub.setsockopt(zmq.RCVBUF, 4096)
    try:
        sub.connect(pub.pub_endpoint)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        deadline = time.monotonic() + 5
        while not sub.poll(50, zmq.POLLIN):
            pub.probe()
            assert time.monotonic() < deadline
        big = PeakTable.concat([frame_table(i, 200) for i in range(3)])  # ~50 kB per message
        sends, t0 = 300, time.perf_counter()
        for i in range(sends):
            t = time.perf_counter()
            pub.send_result(1, "u", i, big)
            assert time.perf_counter() - t < 0.5  # never blocks
        elapsed = time.perf_counter() - t0
    finally:
        sub.close()
        pub.close()
        ctx.term()
    c = pub.counters
    assert c["pub_dropped"] > 0 and c["pub_sent"] + c["pub_dropped"] >= sends
    assert elapsed < 10


def test_push_without_consumer_costs_one_timeout():
    pub = ResultPublisher(push="tcp://127.0.0.1:*", push_timeout=0.2)
    try:
        t0 = time.perf_counter()
        for i in range(20):
            pub.send_result(1, "u", i, PeakTable.empty())
        elapsed = time.perf_counter() - t0
    finally:
        pub.close()
    assert pub.counters == {"push_sent": 0, "push_unsent": 20, "pub_sent": 0, "pub_dropped": 0}
    assert 0.15 < elapsed < 1.5


def test_decode_result_refuses_other_bytes():
    with pytest.raises(ValueError, match="not a result message"):
        decode_result(b"\x01\x02")
    with pytest.raises(ValueError, match="empty"):
        decode_result(b"")
    import cbor2

    with pytest.raises(ValueError, match="without a 'type'"):
        decode_result(cbor2.dumps({"a": 1}))
    with pytest.raises(ValueError, match="codec must be one of"):
        ResultPublisher(push="tcp://127.0.0.1:*", codec="json")


def test_watch_engine_sinks_end_to_end(tmp_path):
    """FolderWatch → LiveEngine → SeriesTableSink and ResultPublisher, wired as the sinks docstring shows: every
    frame of the file is in the table and on the PULL socket, with the engine's counters at the end."""
    import zmq

    from gixdrt.live.engine import LiveEngine
    from gixdrt.live.watch import FolderWatch

    src = tmp_path / "in"
    src.mkdir()
    frames = np.random.default_rng(1).random((5, 6, 8)).astype(np.float32)
    np.save(src / "scan.npy", frames)

    def process_batch(events):  # a stand-in detector: peaks = int(10 * mean of the frame) % 3
        return [frame_table(e.image_id, int(10 * e.image().mean()) % 3) for e in events]

    ctx = zmq.Context()
    sink = SeriesTableSink(tmp_path / "out" / "run.h5", flush_frames=2)
    pub = ResultPublisher(push="tcp://127.0.0.1:*", context=ctx, model="stand-in")
    pull = ctx.socket(zmq.PULL)
    pull.setsockopt(zmq.LINGER, 0)
    pull.connect(pub.push_endpoint)

    delivered = []

    def on_result(r):
        if r.ok:
            sink.add(r.series_unique_id, r.image_id, r.table)
            pub.send_result(r.series_id, r.series_unique_id, r.image_id, r.table, latency_s=r.latency)
        delivered.append(r.image_id)

    def on_series_end(counters):
        sink.close_series(counters)
        pub.send_series_end(counters["series_id"], counters["series_unique_id"], counters["end_reason"], counters)

    try:
        engine = LiveEngine(process_batch, on_series_start=sink.open_series, on_result=on_result,
                            on_series_end=on_series_end, keep_results=False)
        with engine:
            for event in FolderWatch(src, pattern="*.npy", settle=0.05, poll=0.02, until_idle=0.2):
                if isinstance(event, SeriesEnd):
                    # the engine (as of this writing) may call on_series_end before on_result of the series' last
                    # batch when the end is fed while that batch runs: let every result be delivered first
                    deadline = time.monotonic() + 5
                    while len(delivered) < len(frames) and time.monotonic() < deadline:
                        time.sleep(0.005)
                engine.feed(event)
        assert engine.counters()["callback_errors"] == 0, engine.counters()["callback_error"]
        msgs = [decode_result(_recv(pull)) for _ in range(6)]
    finally:
        pull.close()
        pub.close()
        ctx.term()
    want = {i: int(10 * frames[i].mean()) % 3 for i in range(5)}
    assert sorted(m["image_id"] for m in msgs if m["type"] == "result") == list(range(5))
    assert {m["image_id"]: m["n_peaks"] for m in msgs if m["type"] == "result"} == want
    end = [m for m in msgs if m["type"] == "series_end"]
    assert len(end) == 1 and end[0]["reason"] == "end" and end[0]["counters"]["processed"] == 5
    [out] = sink.written
    table, meta = read_peaks(out)
    uid = end[0]["series_unique_id"]
    assert_same(table, expected_table(uid, want))
    assert meta["end_reason"] == "end" and meta["counters"]["expected"] == 5 and meta["counters"]["missed"] == 0
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
