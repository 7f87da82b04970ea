"""The live engine: delivery modes, batching, accounting, latency, failures, thread safety, series, the pipeline.

Fake processors make the timing deterministic: ``Gate`` holds the worker inside its first call until the test
releases it, so what is queued, dropped or blocked at that moment is known exactly.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from gixdrt.live.engine import LiveEngine, LiveResult, pipeline_runner
from gixdrt.live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart

WAIT = 5.0  # seconds: the most any test waits for a thread (never reached when things work)


def ev(i: int, uid: str = "S", value: float | None = None, received: float = 0.0, shape=(4, 4)) -> FrameEvent:
    img = np.full(shape, float(i if value is None else value), np.float32)
    return FrameEvent(1, uid, i, {"data": img}, {"n": i}, received=received)


class Recorder:
    """process_batch: each frame → (image_id, the image's sum); records the batch sizes; optional delay per call,
    failing image ids, and a clock to advance by a given amount per frame."""

    def __init__(self, delay: float = 0.0, fail: tuple[int, ...] = (), clock=None, step=None):
        self.delay, self.fail, self.clock, self.step = delay, set(fail), clock, step
        self.batches: list[int] = []
        self.active = 0
        self.overlaps = 0
        self._lock = threading.Lock()

    def __call__(self, frames):
        with self._lock:
            self.active += 1
            self.overlaps += self.active > 1
        try:
            self.batches.append(len(frames))
            if self.delay:
                time.sleep(self.delay)
            for f in frames:
                if f.image_id in self.fail:
                    raise ValueError(f"bad frame {f.image_id}\nsecond line")
            if self.clock is not None:
                for f in frames:
                    self.clock.t += self.step(f)
            return [(f.image_id, float(f.image().sum())) for f in frames]
        finally:
            with self._lock:
                self.active -= 1


class Gate(Recorder):
    """A Recorder whose first call waits until ``release()``: the worker holds one frame in flight."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.entered = threading.Event()
        self.opened = threading.Event()

    def __call__(self, frames):
        if not self.entered.is_set():
            self.entered.set()
            assert self.opened.wait(WAIT)
        return super().__call__(frames)

    def release(self):
        self.opened.set()


class Clock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def wait_until(cond, timeout: float = WAIT) -> None:
    t = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < t, "timed out"
        time.sleep(0.002)


def check_balance(c: dict) -> None:
    assert c["received"] == c["processed"] + c["rejected"] + c["failed"] + c["queued"] + c["in_flight"]


# --- delivery modes ---------------------------------------------------------------------------------------
def test_monitor_newest_wins_drops_are_counted_exactly():
    gate = Gate()
    rejected = []
    eng = LiveEngine(gate, mode="monitor", queue_frames=3, on_reject=lambda e, why: rejected.append((e.image_id, why)))
    assert eng.submit(ev(0))
    assert gate.entered.wait(WAIT)  # frame 0 is in flight, the queue is empty
    t = time.monotonic()
    for i in range(1, 10):
        assert eng.submit(ev(i))  # never blocks
    assert time.monotonic() - t < 1.0
    c = eng.counters()
    assert (c["received"], c["rejected"], c["queued"], c["in_flight"], c["blocked_submits"]) == (10, 6, 3, 1, 0)
    assert rejected == [(i, "queue_full") for i in range(1, 7)]  # the oldest went first
    check_balance(c)
    gate.release()
    eng.close()
    got = [r.image_id for r in eng.results(timeout=WAIT)]
    assert got == [0, 7, 8, 9]
    assert sorted(got + [i for i, _ in rejected]) == list(range(10))
    c = eng.counters()
    assert (c["received"], c["processed"], c["rejected"], c["rejected_reasons"]) == (10, 4, 6, {"queue_full": 6,
                                                                                               "shutdown": 0})
    check_balance(c)


def test_monitor_slow_processor_every_frame_accounted():
    rec = Recorder(delay=0.01)
    rejected = []
    eng = LiveEngine(rec, mode="monitor", queue_frames=4, max_batch=2, on_reject=lambda e, why: rejected.append(e))
    for i in range(60):
        eng.submit(ev(i))  # much faster than 10 ms per call
    eng.close()
    done = [r.image_id for r in eng.results(timeout=WAIT)]
    c = eng.counters()
    assert c["received"] == 60 == c["processed"] + c["rejected"] and c["failed"] == 0
    assert c["rejected"] == len(rejected) > 0 and c["processed"] == len(done) == sum(rec.batches)
    assert sorted(done + [e.image_id for e in rejected]) == list(range(60))
    assert done == sorted(done)  # newest wins keeps the order of what it keeps


def test_monitor_queue_bytes_limit():
    gate = Gate()
    eng = LiveEngine(gate, mode="monitor", queue_frames=100, queue_bytes=3 * 64)  # 4×4 float32: 64 bytes
    eng.submit(ev(0))
    assert gate.entered.wait(WAIT)
    for i in range(1, 6):
        eng.submit(ev(i))
    c = eng.counters()
    assert (c["queued"], c["queued_bytes"], c["rejected"]) == (3, 192, 2)
    big = ev(6, shape=(8, 8))  # 256 bytes: larger than the limit, still admitted into the emptied queue
    eng.submit(big)
    c = eng.counters()
    assert (c["queued"], c["queued_bytes"], c["rejected"]) == (1, 256, 5)
    gate.release()
    eng.close()
    assert [r.image_id for r in eng.results(timeout=WAIT)] == [0, 6]


def test_lossless_blocks_the_producer_and_drops_nothing():
    gate = Gate()
    eng = LiveEngine(gate, mode="lossless", queue_frames=3)
    eng.submit(ev(0))
    assert gate.entered.wait(WAIT)
    submitted = []

    def produce():
        for i in range(1, 8):
            eng.submit(ev(i))
            submitted.append(i)

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    wait_until(lambda: eng.counters()["blocked_submits"] == 1)
    time.sleep(0.05)
    assert submitted == [1, 2, 3] and producer.is_alive()  # frame 4 waits for room
    c = eng.counters()
    assert (c["queued"], c["in_flight"], c["rejected"], c["received"]) == (3, 1, 0, 4)
    with pytest.raises(TimeoutError):
        eng.submit(ev(99), timeout=0.05)  # a second producer gives up: nothing counted
    assert eng.counters()["received"] == 4
    gate.release()
    producer.join(WAIT)
    eng.close()
    assert [r.image_id for r in eng.results(timeout=WAIT)] == list(range(8))
    c = eng.counters()
    assert (c["received"], c["processed"], c["rejected"], c["failed"]) == (8, 8, 0, 0)
    assert c["blocked_submits"] >= 2 and c["blocked_seconds"] > 0.04


def test_lossless_slow_processor_slows_the_producer():
    n, delay = 20, 0.01
    rec = Recorder(delay=delay)
    eng = LiveEngine(rec, mode="lossless", queue_frames=2, max_batch=1)
    t = time.perf_counter()
    for i in range(n):
        eng.submit(ev(i))
    elapsed = time.perf_counter() - t
    # at most queue_frames + 1 frames ahead of the processor: the rest waited for a call each
    assert elapsed >= 0.7 * (n - 3) * delay
    eng.close()
    assert eng.counters()["processed"] == n and eng.counters()["rejected"] == 0


# --- batching -------------------------------------------------------------------------------------------
def test_batches_when_frames_wait_and_batch_one_when_idle():
    gate = Gate()
    eng = LiveEngine(gate, mode="lossless", queue_frames=10, max_batch=4)
    eng.submit(ev(0))
    assert gate.entered.wait(WAIT)
    for i in range(1, 6):
        eng.submit(ev(i))
    gate.release()
    assert eng.wait_idle(WAIT)
    assert gate.batches == [1, 4, 1]
    results = eng.drain_results()
    assert [(r.image_id, r.batch) for r in results] == [(0, 1), (1, 4), (2, 4), (3, 4), (4, 4), (5, 1)]
    assert [r.output for r in results] == [(i, 16.0 * i) for i in range(6)]
    for i in (6, 7):  # idle: each frame alone
        eng.submit(ev(i))
        assert eng.get(WAIT).image_id == i
    assert gate.batches[-2:] == [1, 1]
    eng.close()


# --- latency, rate, late ------------------------------------------------------------------------------------
def _percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (independent of NumPy)."""
    xs = sorted(values)
    pos = p / 100 * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def test_latency_percentiles_late_and_rate_from_a_fake_clock():
    clock = Clock(100.0)
    rng = np.random.default_rng(1)
    steps = [float(s) for s in rng.permutation(np.arange(1, 101)) * 1e-3]  # 1..100 ms, shuffled
    it = iter(steps)
    rec = Recorder(clock=clock, step=lambda f: next(it))
    eng = LiveEngine(rec, latency_budget=0.0905, clock=clock, rate_window=5.0)
    assert eng.counters()["latency_p50"] is None and eng.counters()["rate"] == 0.0
    results = [eng.process(np.ones((2, 2))) for _ in range(100)]
    assert [r.latency for r in results] == pytest.approx(steps, abs=1e-9)
    c = eng.counters()
    assert c["latency_p50"] == pytest.approx(_percentile(steps, 50)) == pytest.approx(0.0505)
    assert c["latency_p99"] == pytest.approx(_percentile(steps, 99)) == pytest.approx(0.09901)
    assert c["latency_max"] == pytest.approx(0.1)
    assert c["late"] == 10  # 91..100 ms
    # every frame finished within the 5.05 s since the first arrived; a 5 s window holds those after 100.05 s
    total = sum(steps)
    assert clock.t == pytest.approx(100.0 + total)
    done_times = np.cumsum(steps) + 100.0
    in_window = int(np.count_nonzero(done_times > clock.t - 5.0))
    assert c["rate"] == pytest.approx(in_window / 5.0)
    clock.t += 10.0
    assert eng.counters()["rate"] == 0.0
    assert [r.image_id for r in results] == list(range(100)) and results[-1].counters["late"] == 10


def test_latency_is_measured_from_the_frame_arrival():
    clock = Clock(50.0)
    rec = Recorder(clock=clock, step=lambda f: 0.5)
    eng = LiveEngine(rec, clock=clock)
    r = eng.process(ev(3, received=48.0))  # arrived 2 s before it reached the engine
    assert r.latency == pytest.approx(2.5) and r.wait == 0.0 and r.meta == {"n": 3}
    assert r.counters == {"received": 1, "processed": 1, "rejected": 0, "failed": 0, "late": 0, "queued": 0}


def test_queue_wait_is_reported():
    gate = Gate(delay=0.02)
    eng = LiveEngine(gate, queue_frames=4)
    eng.submit(ev(0))
    assert gate.entered.wait(WAIT)
    eng.submit(ev(1))
    gate.release()
    eng.close()
    r0, r1 = eng.results(timeout=WAIT)
    assert r0.wait < 0.02 <= r1.wait + 1e-3 and r1.latency >= r1.wait


# --- failures ---------------------------------------------------------------------------------------------
def test_a_failing_frame_is_counted_and_the_engine_goes_on():
    gate = Gate(fail=(3,))
    eng = LiveEngine(gate, queue_frames=10, max_batch=4)
    eng.submit(ev(0))
    assert gate.entered.wait(WAIT)
    for i in range(1, 8):
        eng.submit(ev(i))
    gate.release()
    eng.close()
    results = {r.image_id: r for r in eng.results(timeout=WAIT)}
    assert sorted(results) == list(range(8))
    bad = results.pop(3)
    assert not bad.ok and bad.error == "ValueError: bad frame 3" and bad.output is None and bad.table is None
    assert all(r.ok and r.output == (i, 16.0 * i) for i, r in results.items())
    c = eng.counters()
    assert (c["processed"], c["failed"], c["first_error"]) == (7, 1, "ValueError: bad frame 3")
    # the batch 1..4 failed as a whole, then ran frame by frame
    assert gate.batches == [1, 4, 1, 1, 1, 1, 3]


def test_process_raises_counts_failed_and_goes_on():
    eng = LiveEngine(Recorder(fail=(1,)))
    assert eng.process(ev(0)).output == (0, 0.0)
    with pytest.raises(ValueError, match="bad frame 1"):
        eng.process(ev(1))
    assert eng.process(ev(2)).output == (2, 32.0)
    c = eng.counters()
    assert (c["received"], c["processed"], c["failed"]) == (3, 2, 1)


def test_a_wrong_number_of_outputs_is_a_failure():
    eng = LiveEngine(lambda frames: [])
    with pytest.raises(RuntimeError, match="returned 0 results for 1 frames"):
        eng.process(np.zeros((2, 2)))
    assert eng.counters()["failed"] == 1


def test_a_failing_callback_does_not_stop_the_engine():
    def boom(result):
        raise OSError("disk full")

    eng = LiveEngine(Recorder(), on_result=boom)
    for i in range(3):
        eng.submit(ev(i))
    eng.close()
    c = eng.counters()
    assert (c["processed"], c["callback_errors"], c["callback_error"]) == (3, 3, "OSError: disk full")
    assert len(list(eng.results(timeout=WAIT))) == 3


# --- thread safety ----------------------------------------------------------------------------------------
def test_process_from_four_threads():
    rec = Recorder(delay=0.0005)
    eng = LiveEngine(rec)
    out: dict[int, list[LiveResult]] = {}

    def work(k: int):
        out[k] = [eng.process(ev(k * 1000 + i, value=k * 1000 + i)) for i in range(40)]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT * 4)
    assert rec.overlaps == 0  # calls into the processor never overlapped
    for k in range(4):
        assert [r.output for r in out[k]] == [(k * 1000 + i, 16.0 * (k * 1000 + i)) for i in range(40)]
    c = eng.counters()
    assert (c["received"], c["processed"], c["failed"], c["rejected"]) == (160, 160, 0, 0)


def test_process_and_the_worker_are_serialised():
    rec = Recorder(delay=0.001)
    eng = LiveEngine(rec, max_batch=2)
    stop = threading.Event()

    def produce():
        i = 0
        while not stop.is_set():
            eng.submit(ev(10_000 + i))
            i += 1

    t = threading.Thread(target=produce, daemon=True)
    t.start()
    sync = [eng.process(ev(i)) for i in range(30)]
    stop.set()
    t.join(WAIT)
    eng.close()
    assert rec.overlaps == 0 and [r.output[0] for r in sync] == list(range(30))
    c = eng.counters()
    assert c["received"] == c["processed"] and c["rejected"] == 0


# --- series -------------------------------------------------------------------------------------------------
def start(uid: str, n: int | None) -> SeriesStart:
    return SeriesStart(1, uid, number_of_images=n)


def test_feed_reports_each_series_once_its_frames_are_accounted():
    gate = Gate()
    ends = []
    eng = LiveEngine(gate, mode="monitor", queue_frames=2, on_series_end=ends.append)
    eng.feed(start("A", 8))
    for i in (0, 1, 2, 3, 3, 5, 4):  # 3 twice; 6 and 7 never come
        eng.feed(ev(i, "A"))
        if i == 0:
            assert gate.entered.wait(WAIT)
    eng.feed(DecodeError("bad message", series_unique_id="A"))
    eng.feed(SeriesEnd(1, "A"))
    assert ends == []  # frames of A are still queued / in flight
    eng.feed(ev(9, "A"))  # after its end: a stray
    eng.feed(SeriesEnd(1, "A"))  # twice: an orphan end
    gate.release()
    assert eng.wait_idle(WAIT)
    wait_until(lambda: len(ends) == 1)
    [a] = ends
    # 0 in flight, then 1..5 through a queue of 2 (newest wins): 1, 2, 3 dropped, then 5, 4 kept
    assert {k: a[k] for k in ("expected", "received", "processed", "rejected", "failed", "missed", "duplicates",
                              "out_of_order", "decode_errors", "end_reason")} == {
        "expected": 8, "received": 6, "processed": 3, "rejected": 3, "failed": 0, "missed": 2, "duplicates": 1,
        "out_of_order": 1, "decode_errors": 1, "end_reason": "end"}
    assert a["gaps"] == [[6, 7]]
    eng.feed(start("B", 2))
    eng.feed(ev(0, "B"))
    eng.close()  # B never ended: closed with the engine
    assert [d["series_unique_id"] for d in ends] == ["A", "B"]
    assert (ends[1]["end_reason"], ends[1]["processed"], ends[1]["missed"]) == ("closed", 1, 1)
    c = eng.counters()
    assert (c["expected"], c["missed"], c["stray"], c["orphan_ends"], c["decode_errors"], c["duplicates"]) == (
        10, 3, 1, 1, 1, 1)
    assert (c["received"], c["processed"], c["rejected"]) == (7, 4, 3)
    assert eng.series_history() == ends
    with pytest.raises(RuntimeError, match="closed"):
        eng.feed(start("C", 1))


def test_idle_series_is_closed_incomplete_by_the_engine():
    clock = Clock(0.0)
    ends = []
    eng = LiveEngine(Recorder(), idle_timeout=2.0, clock=clock, on_series_end=ends.append)
    eng.feed(SeriesStart(1, "A", number_of_images=3, received=0.0))
    eng.feed(FrameEvent(1, "A", 0, {"data": np.ones((2, 2))}, received=0.5))
    assert eng.wait_idle(WAIT)
    clock.t = 2.4
    assert eng.tick() == [] and ends == []
    clock.t = 2.5
    [action] = eng.tick()
    assert action.reason == "incomplete"
    assert [(d["end_reason"], d["received"], d["processed"], d["missed"]) for d in ends] == [("incomplete", 1, 1, 2)]
    eng.close()
    assert len(ends) == 1


def test_idle_timeout_fires_from_the_worker_thread():
    ends = []
    eng = LiveEngine(Recorder(), idle_timeout=0.05, on_series_end=ends.append)
    eng.feed(start("A", 2))
    eng.feed(ev(0, "A"))
    wait_until(lambda: len(ends) == 1)
    assert (ends[0]["end_reason"], ends[0]["processed"]) == ("incomplete", 1)
    eng.close()


def test_metrics_callback_every_interval():
    clock = Clock(0.0)
    seen = []
    eng = LiveEngine(Recorder(), clock=clock, on_metrics=seen.append, metrics_interval=1.0)
    eng.tick()  # arms the first period
    clock.t = 0.9
    eng.process(np.ones((2, 2)))
    eng.tick()
    assert seen == []
    clock.t = 1.0
    eng.tick()
    eng.tick()
    clock.t = 2.5
    eng.tick()
    assert [m["processed"] for m in seen] == [1, 1]
    eng.close()
    assert len(seen) == 3 and seen[-1]["mode"] == "lossless"


def test_close_without_drain_rejects_the_queue_as_shutdown():
    gate = Gate()
    rejected = []
    ends = []
    eng = LiveEngine(gate, queue_frames=10, on_reject=lambda e, why: rejected.append((e.image_id, why)),
                     on_series_end=ends.append)
    eng.feed(start("A", 5))
    for i in range(5):
        eng.feed(ev(i, "A"))
        if i == 0:
            assert gate.entered.wait(WAIT)
    threading.Timer(0.05, gate.release).start()
    eng.close(drain=False)
    assert rejected == [(i, "shutdown") for i in range(1, 5)]
    c = eng.counters()
    assert (c["processed"], c["rejected"], c["rejected_reasons"]["shutdown"]) == (1, 4, 4)
    assert [(d["processed"], d["rejected"], d["end_reason"]) for d in ends] == [(1, 4, "closed")]
    with pytest.raises(RuntimeError, match="closed"):
        eng.submit(ev(9))
    eng.close()  # twice: nothing more


def test_context_manager_drains():
    rec = Recorder(delay=0.002)
    with LiveEngine(rec, queue_frames=2) as eng:
        for i in range(10):
            eng.submit(ev(i))
    assert eng.counters()["processed"] == 10
    assert [r.image_id for r in eng.results(timeout=WAIT)] == list(range(10))
    assert eng.get(0.1) is None  # closed and drained: no waiting


def test_constructor_checks():
    with pytest.raises(ValueError, match="mode"):
        LiveEngine(Recorder(), mode="fast")
    with pytest.raises(ValueError, match="queue_frames"):
        LiveEngine(Recorder(), queue_frames=0)
    with pytest.raises(ValueError, match="latency_budget"):
        LiveEngine(Recorder(), latency_budget=-1.0)
    with pytest.raises(TypeError, match="process_batch"):
        LiveEngine(42)
    with pytest.raises(TypeError, match="FrameEvent"):
        LiveEngine(Recorder()).submit(np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="warmup needs a frame"):
        LiveEngine(Recorder()).warmup()


def test_warmup_counts_nothing():
    rec = Recorder()
    eng = LiveEngine(rec, max_batch=4)
    assert eng.warmup(np.ones((3, 3))) >= 0.0
    assert rec.batches == [1, 4] and eng.counters()["received"] == 0


# --- the real pipeline ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small_pipeline(small_config, tmp_path_factory):
    torch = pytest.importorskip("torch")
    from gixdrt.geometry import load_config
    from gixdrt.gixd.detector import PeakDetector
    from gixdrt.gixd.pipeline import Pipeline
    from gixdrt.model import GixdDetector

    torch.manual_seed(5)
    model = GixdDetector()
    model.score_threshold = -1.0  # a random model that keeps every box: many peaks to compare
    det = PeakDetector(model, backend="torch", cache=tmp_path_factory.mktemp("graphs"), threads=1)
    return Pipeline(load_config(small_config), det, keep_polar=False)


def test_the_pipeline_adapter_equals_pipeline_detect(small_pipeline):
    rng = np.random.default_rng(11)
    frames = [rng.poisson(30.0, (60, 80)).astype(np.uint16) for _ in range(3)]
    eng = LiveEngine(small_pipeline, max_batch=3)
    assert isinstance(eng.process_batch, type(pipeline_runner(small_pipeline)))
    assert eng.warmup() > 0.0
    want = [small_pipeline.detect(f, frame=i, source="scan-7") for i, f in enumerate(frames)]
    got = eng.process(FrameEvent(7, "scan-7", 0, {"data": frames[0]}))
    assert got.ok and len(want[0]) > 5
    np.testing.assert_array_equal(got.table.boxes, want[0].boxes)
    np.testing.assert_array_equal(got.table.score, want[0].score)
    assert set(got.table.frame.tolist()) == {0} and set(got.table.source.tolist()) == {"scan-7"}
    # queued, as one batch of three (the worker held on the gate of the first call)
    eng.close()
    gate = Gate()
    runner = pipeline_runner(small_pipeline)

    def gated(frames_):
        gate(frames_)
        return runner(frames_)

    eng = LiveEngine(gated, max_batch=3)
    eng.submit(FrameEvent(7, "scan-7", 99, {"data": frames[0]}))
    assert gate.entered.wait(WAIT)
    for i, f in enumerate(frames):
        eng.submit(FrameEvent(7, "scan-7", i, {"data": f}))
    gate.release()
    eng.close()
    results = [r for r in eng.results(timeout=WAIT) if r.image_id != 99]
    assert [r.batch for r in results] == [3, 3, 3]
    for r, w in zip(results, want):
        assert r.ok and len(r.table) == len(w)
        np.testing.assert_allclose(r.table.boxes, w.boxes, atol=1e-4)
        np.testing.assert_allclose(r.table.score, w.score, atol=1e-6)
        np.testing.assert_allclose(r.table.q, w.q, rtol=1e-5)
    # a missing channel: the frame fails with its reason, the engine goes on
    eng = LiveEngine(pipeline_runner(small_pipeline, channel="threshold_1"))
    with pytest.raises(ValueError, match="no channel 'threshold_1'"):
        eng.process(FrameEvent(7, "scan-7", 5, {"data": frames[0]}))
    assert eng.counters()["failed"] == 1
    assert eng.process(FrameEvent(7, "scan-7", 6, {"threshold_1": frames[1]})).table.boxes.shape == want[1].boxes.shape


@pytest.mark.parametrize("max_batch", [1, 2])
def test_a_series_end_is_reported_after_every_result_of_the_series(max_batch):
    """The end may be fed while the series' last batch is still being processed: its report must still come after
    that batch's results (a sink closes the series' file on it)."""
    order = []

    def slow(frames):
        time.sleep(0.05)
        return [ev.image_id for ev in frames]

    engine = LiveEngine(slow, max_batch=max_batch, keep_results=False,
                        on_result=lambda r: order.append(("result", r.image_id)),
                        on_series_end=lambda d: order.append(("series_end", d["processed"])))
    with engine:
        engine.feed(SeriesStart(1, "u", number_of_images=3))
        for i in range(3):
            engine.feed(FrameEvent(1, "u", i, {"data": np.zeros((2, 2))}))
        engine.feed(SeriesEnd(1, "u"))
        assert engine.wait_idle(5)
    assert order[-1] == ("series_end", 3)
    assert sorted(order[:-1]) == [("result", 0), ("result", 1), ("result", 2)]
