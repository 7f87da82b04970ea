"""The embeddable live engine: frames in, results out, every frame accounted.

A DAQ process builds one :class:`LiveEngine`, warms it up, and hands it frames, either synchronously
(:meth:`LiveEngine.process`, lowest latency, thread-safe) or through a bounded queue served by one worker thread
(:meth:`LiveEngine.submit` / :meth:`LiveEngine.feed`, results from :meth:`LiveEngine.results`, :meth:`LiveEngine.get`
or an ``on_result`` callback). The engine knows no model: it calls ``process_batch(frames) -> outputs`` (one output
per :class:`~gixdrt.live.events.FrameEvent`, in order); :func:`pipeline_runner` adapts a
:class:`gixdrt.gixd.pipeline.Pipeline` to that contract, and a :class:`Pipeline` given directly is adapted the
same way. Calls into ``process_batch`` are serialised (a pipeline holds shared preallocated buffers).

Delivery modes (the ``mode`` argument, reported in every :meth:`LiveEngine.counters`):

- ``lossless``: when the queue is full (``queue_frames`` frames or ``queue_bytes`` bytes), :meth:`submit` blocks
  until there is room: backpressure on the producer (and through it on the detector's stream buffer); nothing is
  ever dropped. For writing and reprocessing.
- ``monitor``: **newest wins**: when the queue is full, the *oldest* queued frame is dropped to make room and
  counted ``rejected`` (reason ``queue_full``); :meth:`submit` never blocks. For screening GUIs at kHz.

Whatever happens, ``received == processed + rejected + failed + queued + in_flight`` (see :meth:`counters`); a
frame whose processing raises is counted ``failed`` (the first error's line is kept) and the engine goes on. The
worker takes up to ``max_batch`` frames per call when several are waiting, one when it is idle.

Latency is the time from ``FrameEvent.received`` (or from the submit/process call when it is 0) to the result,
measured with ``clock`` (``time.monotonic``, the clock of ``received``); p50/p99 over the last ``latency_window``
frames and the maximum since the start; frames slower than ``latency_budget`` are counted ``late``.

:meth:`LiveEngine.feed` takes any event of a source (start, frame, end, decode error): a
:class:`~gixdrt.live.series.SeriesTracker` decides what it means, frames it accepts are submitted, and when a
series has ended *and* all its accepted frames are accounted, its counters go to ``on_series_end(dict)``
(:meth:`SeriesCounters.as_dict <gixdrt.live.series.SeriesCounters.as_dict>`) and :meth:`series_history`.
Call :meth:`feed` from one thread per engine (the source's thread).

>>> engine = LiveEngine.from_config(LiveConfig.from_yaml("live.yaml"), on_series_end=print)
>>> with engine:                                  # close(drain=True) on exit
...     for event in source:                      # SeriesStart / FrameEvent / SeriesEnd / DecodeError
...         engine.feed(event)                    # lossless: blocks while the queue is full
...         for result in engine.drain_results():  # what is ready, without waiting
...             sink.write(result)                # result.table: the frame's PeakTable
>>> engine.counters()["rejected"]

Synchronous use, no queue (e.g. inside an areaDetector/LImA-like callback)::

    engine = LiveEngine(pipeline)                 # a gixdrt.gixd.pipeline.Pipeline (or any process_batch)
    engine.warmup()                               # the first real frame is not slow
    result = engine.process(frame_array)          # LiveResult; raises if processing fails (counted failed)

API at a glance:

- ``LiveEngine(processor, *, mode, queue_frames, queue_bytes, max_batch, latency_budget, idle_timeout,
  on_result, on_reject, on_series_start, on_series_end, on_metrics, metrics_interval, keep_results, clock)``;
  ``LiveEngine.from_config(cfg, *, detector=None, warmup=None, **kwargs)``
- ``warmup(frame=None, *, batches=None) -> seconds``; ``process(frame, meta=None) -> LiveResult``
- ``submit(frame_event, *, timeout=None) -> bool``; ``feed(event) -> list[Action]``; ``tick()``
- ``get(timeout) -> LiveResult | None``; ``results(timeout)``; ``drain_results()``; ``wait_idle(timeout)``
- ``counters()`` (= ``stats()``) ``-> dict``; ``series_history() -> list[dict]``; ``close(drain=True, timeout=None)``

Callbacks run in the worker thread (``on_series_end`` and ``on_reject`` may also run in the thread that fed or
closed): keep them short (hand the work to a sink's own queue); one that raises is counted ``callback_errors``.
The worker also does the housekeeping (idle timeout, metrics) a few times a second; an engine used only through
:meth:`~LiveEngine.process` has no worker: call :meth:`~LiveEngine.tick` or :meth:`~LiveEngine.counters` yourself.
"""
from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .config import MODES, LiveConfig
from .events import Event, FrameEvent
from .series import Action, SeriesCounters, SeriesTracker

__all__ = ["LiveConfig", "LiveEngine", "LiveResult", "PipelineRunner", "pipeline_runner"]

ProcessBatch = Callable[[Sequence[FrameEvent]], Sequence[Any]]

#: the counters copied into every result (cheap: no percentiles)
_SNAPSHOT = ("received", "processed", "rejected", "failed", "late")


@dataclass(frozen=True)
class LiveResult:
    """One frame's result.

    series_id / series_unique_id / image_id: the frame's (for an array given to :meth:`LiveEngine.process`:
    0, ``""`` and the call's running number). output: what ``process_batch`` returned for it (a
    :class:`gixdrt.gixd.pipeline.FrameResult` with :func:`pipeline_runner`; None when it failed). latency: seconds
    from the frame's arrival to this result; wait: seconds of it spent queued; batch: frames in the call that
    processed it. error: one line when processing failed (None: ok). counters: a snapshot of the engine's counters
    (received, processed, rejected, failed, late, queued) when the result was made. meta: the frame's meta.
    """

    series_id: int
    series_unique_id: str
    image_id: int
    output: Any
    latency: float
    wait: float = 0.0
    batch: int = 1
    error: str | None = None
    counters: Mapping[str, int] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def table(self) -> Any:
        """The frame's :class:`~gixdrt.gixd.peaks.PeakTable` (``output.table``; the output itself when it has no
        ``table``; None when processing failed)."""
        return getattr(self.output, "table", self.output)


# -------------------------------------------------------------------------------------------------------------
# The pipeline adapter
# -------------------------------------------------------------------------------------------------------------
class PipelineRunner:
    """``process_batch`` over a :class:`gixdrt.gixd.pipeline.Pipeline`: frame events → one
    :class:`~gixdrt.gixd.pipeline.FrameResult` per frame (``frame`` = the image id, ``source`` = the series'
    unique id), by one call of the pipeline for the whole batch. channel: the image channel to process (None:
    each frame's first). Not thread-safe (the engine serialises its calls)."""

    #: series whose masks are kept (frames of an older series still queued when a new one opens find theirs)
    KEEP_SERIES = 8

    def __init__(self, pipeline: Any, channel: str | None = None):
        self.pipeline = pipeline
        self.channel = channel
        self.base_masks = getattr(pipeline, "masks", None)  # the config's mask (raw input), kept for every series
        self._series_masks: dict[str, Any] = {}

    def open_series(self, start: Any) -> None:
        """A series starts: its ``pixel_mask`` (of the processed channel) and ``saturation_value`` join the
        config's masks for its frames (raw input only)."""
        if self.pipeline.input != "raw":
            return
        from ..io.masks import Masks

        masks = self.base_masks if self.base_masks is not None else Masks()
        channel = self.channel or (start.channels[0] if start.channels else "data")
        pixel_mask = start.pixel_mask.get(channel) if start.pixel_mask else None
        label = f"the start message of {start.series_unique_id}"
        if pixel_mask is not None:
            masks = masks.union(Masks((np.asarray(pixel_mask) != 0).astype(np.uint8), None, (f"pixel_mask of {label}",)))
        if start.saturation_value is not None:
            masks = masks.union(Masks(None, float(start.saturation_value), (f"saturation_value of {label}",)))
        self._series_masks[start.series_unique_id] = masks
        while len(self._series_masks) > self.KEEP_SERIES:
            self._series_masks.pop(next(iter(self._series_masks)))

    def masks_of(self, series_unique_id: str) -> Any:
        """The masks that apply to a series' frames (the config's when the series brought none)."""
        return self._series_masks.get(series_unique_id, self.base_masks)

    def __call__(self, frames: Sequence[FrameEvent]) -> list[Any]:
        from ..errors import FrameError

        out: list[Any] = []
        items: list[tuple[int, str, Any]] = []
        uid = None
        for ev in frames:
            if self.channel is not None and self.channel not in ev.data:
                raise FrameError(f"frame {ev.image_id} of {ev.series_unique_id or 'the series'} has no channel "
                                 f"{self.channel!r} (it has {', '.join(map(repr, ev.data)) or 'none'})")
            if items and ev.series_unique_id != uid:  # one pipeline call per series: masks differ between series
                out.extend(self._run(uid, items))
                items = []
            uid = ev.series_unique_id
            items.append((int(ev.image_id), ev.series_unique_id, ev.image(self.channel)))
        if items:
            out.extend(self._run(uid, items))
        return out

    def _run(self, uid: str | None, items: list[tuple[int, str, Any]]) -> list[Any]:
        if self.pipeline.input == "raw" and self._series_masks:
            masks = self.masks_of(uid or "")
            if masks is not None:
                self.pipeline.masks = masks
        return self.pipeline._detect_batch(items)

    def example_frame(self, dtype: Any = None) -> np.ndarray:
        """A frame the pipeline accepts (deterministic noise, not constant): a raw frame of the geometry's shape
        (``dtype``, default uint16), or a polar/processed image of the polar shape (float32)."""
        pipe = self.pipeline
        rng = np.random.default_rng(0)
        if pipe.input == "raw":
            shape = tuple(pipe.config.geometry.frame_shape)
            dt = np.dtype(dtype or np.uint16)
            return rng.integers(0, 100, shape).astype(dt)
        if pipe.config is None:
            raise ValueError("warmup needs a frame: the pipeline has no config to take the image shape from")
        shape = tuple(pipe.config.geometry.polar_shape)
        return rng.random(shape, dtype=np.float32) * (1.0 if pipe.input == "processed" else 100.0)


def pipeline_runner(pipeline: Any, channel: str | None = None) -> PipelineRunner:
    """The ``process_batch`` callable of a :class:`gixdrt.gixd.pipeline.Pipeline` (see :class:`PipelineRunner`)."""
    return PipelineRunner(pipeline, channel)


# -------------------------------------------------------------------------------------------------------------
# The engine
# -------------------------------------------------------------------------------------------------------------
@dataclass
class _Item:
    event: FrameEvent
    series: SeriesCounters | None
    t0: float  # latency origin
    queued_at: float
    nbytes: int


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _nbytes(ev: FrameEvent) -> int:
    """Bytes a queued frame holds (its decoded arrays)."""
    return int(sum(getattr(a, "nbytes", 0) for a in ev.data.values()))


_CLOSED = object()


class LiveEngine:
    """The embeddable engine (see the module docstring).

    processor: a ``process_batch(frames) -> outputs`` callable, or a :class:`~gixdrt.gixd.pipeline.Pipeline`
        (adapted by :func:`pipeline_runner`).
    mode: ``lossless`` or ``monitor``. queue_frames: frames queued at most (≥ 1). queue_bytes: bytes queued at most
        (None: no limit; a frame larger than it still enters an empty queue). max_batch: frames per call at most.
    latency_budget: seconds; slower frames are counted ``late`` (None: none). idle_timeout: seconds after which an
        open series with no events is closed as ``incomplete`` (None: never). adopt_orphans: see
        :class:`~gixdrt.live.series.SeriesTracker`.
    on_result(LiveResult): called in the worker thread for each queued frame's result (also kept for
        :meth:`results` unless ``keep_results=False``). on_reject(event, reason): a frame was dropped (reason
        ``queue_full`` or ``shutdown``). on_series_end(dict): a series ended and all its frames are accounted.
    on_metrics(dict): :meth:`counters` every ``metrics_interval`` seconds while the worker runs, and once at close.
    clock: the time source (seconds; ``time.monotonic``: the clock of ``FrameEvent.received``).
    latency_window: frames in the rolling latency window; rate_window: seconds the rate is measured over.
    example: a frame for :meth:`warmup` (default: the processor's ``example_frame()`` when it has one).
    """

    def __init__(self, processor: ProcessBatch | Any, *, mode: str = "lossless", queue_frames: int = 64,
                 queue_bytes: int | None = 1 << 30, max_batch: int = 1, latency_budget: float | None = None,
                 idle_timeout: float | None = None, adopt_orphans: bool = False,
                 on_result: Callable[[LiveResult], None] | None = None,
                 on_reject: Callable[[FrameEvent, str], None] | None = None,
                 on_series_end: Callable[[dict[str, Any]], None] | None = None,
                 on_series_start: Callable[[Any], None] | None = None,
                 on_metrics: Callable[[dict[str, Any]], None] | None = None, metrics_interval: float = 1.0,
                 keep_results: bool = True, clock: Callable[[], float] = time.monotonic,
                 latency_window: int = 10_000, rate_window: float = 5.0, example: Any = None):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        for name, value in (("queue_frames", queue_frames), ("max_batch", max_batch),
                            ("latency_window", latency_window)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer ≥ 1, got {value!r}")
        if queue_bytes is not None and (isinstance(queue_bytes, bool) or not isinstance(queue_bytes, int)
                                        or queue_bytes < 1):
            raise ValueError(f"queue_bytes must be an integer ≥ 1 or None, got {queue_bytes!r}")
        for name, value in (("latency_budget", latency_budget), ("metrics_interval", metrics_interval),
                            ("rate_window", rate_window)):
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise ValueError(f"{name} must be a number of seconds > 0, got {value!r}")
        if hasattr(processor, "_detect_batch"):
            processor = pipeline_runner(processor)
        if not callable(processor):
            raise TypeError(f"processor must be a process_batch callable or a Pipeline, got {type(processor).__name__}")
        self.process_batch: ProcessBatch = processor
        self.mode = mode
        self.queue_frames = queue_frames
        self.queue_bytes = queue_bytes
        self.max_batch = max_batch
        self.latency_budget = latency_budget
        self.metrics_interval = metrics_interval
        self.rate_window = rate_window
        self.keep_results = keep_results
        self.clock = clock
        self.example = example
        self.on_result, self.on_reject, self.on_series_end, self.on_metrics = (on_result, on_reject, on_series_end,
                                                                              on_metrics)
        self.on_series_start = on_series_start  # called with the SeriesStart of each series the tracker opens
        self.config: LiveConfig | None = None  # set by from_config
        self.tracker = SeriesTracker(idle_timeout=idle_timeout, adopt_orphans=adopt_orphans, clock=clock)

        self._lock = threading.Lock()  # counters, queue, series bookkeeping
        self._not_empty = threading.Condition(self._lock)
        self._not_full = threading.Condition(self._lock)
        self._idle = threading.Condition(self._lock)
        self._run_lock = threading.Lock()  # one call into process_batch at a time
        self._feed_lock = threading.Lock()  # the tracker
        self._queue: deque[_Item] = deque()
        self._qbytes = 0
        self._in_flight = 0
        self._c = dict.fromkeys(("received", "processed", "rejected", "failed", "late", "batches",
                                 "blocked_submits", "callback_errors"), 0)
        self._rejected_reasons: dict[str, int] = {"queue_full": 0, "shutdown": 0}
        self._blocked_s = 0.0
        self._first_error: str | None = None
        self._callback_error: str | None = None
        self._latencies: deque[float] = deque(maxlen=latency_window)
        self._latency_max = 0.0
        self._done_times: deque[float] = deque()
        self._t_start: float | None = None
        self._sync_count = 0
        self._pending_close: dict[int, SeriesCounters] = {}
        self._history: deque[dict[str, Any]] = deque(maxlen=1000)
        self._expected_closed = 0
        self._missed_closed = 0
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._closing = False
        self._stop = False
        self._closed = False
        self._next_metrics: float | None = None

    # --- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: LiveConfig, *, detector: Any = None, warmup: bool | None = None,
                    **kwargs: Any) -> LiveEngine:
        """The engine a :class:`LiveConfig` describes: its geometry config, a
        :class:`~gixdrt.gixd.detector.PeakDetector` (``detector`` given: that one), a
        :class:`~gixdrt.gixd.pipeline.Pipeline` over them, and the queue settings; warmed up when ``cfg.warmup``
        (or ``warmup``) says so. ``kwargs`` go to the constructor (callbacks, clock...)."""
        from ..gixd.pipeline import Pipeline

        cfg.validate()
        geometry = cfg.load_geometry()
        if detector is None:
            from ..gixd.detector import PeakDetector

            detector = PeakDetector(cfg.model, backend=cfg.backend, device=cfg.device, precision=cfg.precision,
                                    threads=cfg.threads, score_threshold=cfg.score_threshold, nms_iou=cfg.nms_iou,
                                    max_detections=cfg.max_detections)
        pipe = Pipeline(geometry, detector, input=cfg.input, batch=cfg.max_batch, keep_polar=False)
        settings = dict(mode=cfg.mode, queue_frames=cfg.queue_frames, queue_bytes=cfg.queue_bytes,
                        max_batch=cfg.max_batch, latency_budget=cfg.latency_budget, idle_timeout=cfg.idle_timeout,
                        metrics_interval=cfg.metrics_interval)
        engine = cls(pipeline_runner(pipe, cfg.channel), **{**settings, **kwargs})
        engine.config = cfg
        if cfg.warmup if warmup is None else warmup:
            engine.warmup()
        return engine

    # --- warm-up ------------------------------------------------------------------------------------------
    def warmup(self, frame: Any = None, *, batches: Sequence[int] | None = None) -> float:
        """Run a dummy frame through ``process_batch`` (once per batch size in ``batches``, default 1 and
        ``max_batch``) so the first real frame does not pay for building sessions and buffers → seconds taken.
        frame: an array or FrameEvent of the real frames' shape and dtype (default: ``example`` or the
        processor's ``example_frame()``). Counts nothing."""
        if frame is None:
            frame = self.example
        if frame is None:
            make = getattr(self.process_batch, "example_frame", None)
            if make is None:
                raise ValueError("warmup needs a frame of the real frames' shape (the processor has no example_frame)")
            frame = make()
        channel = getattr(self.process_batch, "channel", None) or "data"
        ev = frame if isinstance(frame, FrameEvent) else FrameEvent(-1, "warmup", 0, {channel: np.asarray(frame)})
        sizes = sorted(set(batches if batches is not None else (1, self.max_batch)))
        t = time.perf_counter()
        with self._run_lock:
            for n in sizes:
                self.process_batch([ev] * n)
        return time.perf_counter() - t

    # --- synchronous path ---------------------------------------------------------------------------------
    def process(self, frame: FrameEvent | Any, meta: Mapping[str, Any] | None = None) -> LiveResult:
        """Process one frame now, in the caller's thread (thread-safe; calls are serialised with the worker's)
        → its :class:`LiveResult`. frame: a FrameEvent, or an image array [H, W] (or a mapping channel → image)
        with ``meta``. A frame whose processing raises is counted ``failed`` and the exception propagates."""
        now = self.clock()
        with self._lock:
            self._check_open()
            if not isinstance(frame, FrameEvent):
                data = dict(frame) if isinstance(frame, Mapping) else {"data": np.asarray(frame)}
                frame = FrameEvent(0, "", self._sync_count, data, dict(meta or {}), received=0.0)
            self._sync_count += 1
            self._received(now)
            self._in_flight += 1
        item = _Item(frame, None, frame.received or now, now, 0)
        [(result, exc)], settle = self._run([item])
        self._settle(settle)
        if exc is not None:
            raise exc
        return result

    # --- queued path --------------------------------------------------------------------------------------
    def submit(self, event: FrameEvent, *, timeout: float | None = None, _series: SeriesCounters | None = None
               ) -> bool:
        """Queue a frame for the worker → True. ``lossless``: blocks while the queue is full (TimeoutError after
        ``timeout`` seconds, the frame not taken: nothing counted); if the engine closes meanwhile the frame is
        counted rejected (``shutdown``) → False. ``monitor``: never blocks; the oldest queued frames make room
        (rejected, ``queue_full``). RuntimeError when the engine is closed."""
        if not isinstance(event, FrameEvent):
            raise TypeError(f"submit takes a FrameEvent, got {type(event).__name__} (feed takes any event)")
        nbytes = _nbytes(event)
        dropped: list[tuple[_Item, str]] = []
        self._ensure_worker()
        with self._lock:
            self._check_open()
            if self.mode == "lossless":
                if self._full(nbytes):
                    self._c["blocked_submits"] += 1
                    t_block = time.perf_counter()
                    deadline = None if timeout is None else t_block + timeout
                    while self._full(nbytes) and not self._closing:
                        left = None if deadline is None else deadline - time.perf_counter()
                        if left is not None and left <= 0:
                            self._blocked_s += time.perf_counter() - t_block
                            raise TimeoutError(f"lossless queue still full after {timeout} s")
                        self._not_full.wait(left)
                    self._blocked_s += time.perf_counter() - t_block
            now = self.clock()
            self._received(now)
            item = _Item(event, _series, event.received or now, now, nbytes)
            taken = not self._closing
            if not taken:
                dropped.append((item, "shutdown"))
                self._reject(item, "shutdown")
            else:
                while self._full(nbytes):  # monitor: newest wins
                    old = self._queue.popleft()
                    self._qbytes -= old.nbytes
                    self._reject(old, "queue_full")
                    dropped.append((old, "queue_full"))
                self._queue.append(item)
                self._qbytes += nbytes
                self._not_empty.notify()
            ends = self._series_ready([d.series for d, _ in dropped])
        self._deliver(dropped, ends)
        return taken

    def feed(self, event: Event) -> list[Action]:
        """Any event of a source: the series tracker decides (see :mod:`gixdrt.live.series`); accepted frames
        are submitted (lossless: this blocks while the queue is full); ended series are reported once their
        frames are accounted → the tracker's actions. Call from one thread."""
        with self._feed_lock:
            self._check_open()
            actions = self.tracker.feed(event)
        self._ensure_worker()
        self._act(actions)
        return actions

    def tick(self) -> list[Action]:
        """Housekeeping now (the worker does it on its own every fraction of a second): close an idle series as
        ``incomplete``; call ``on_metrics`` when due. → the tracker's actions."""
        with self._feed_lock:
            actions = self.tracker.tick()
        self._act(actions)
        now = self.clock()
        if self.on_metrics is not None:
            if self._next_metrics is None:
                self._next_metrics = now + self.metrics_interval
            elif now >= self._next_metrics:
                self._next_metrics = now + self.metrics_interval
                self.on_metrics(self.counters())
        return actions

    def get(self, timeout: float | None = None) -> LiveResult | None:
        """The next result of a queued frame (in completion order; failed frames too, with ``error`` set) → None
        after ``timeout`` seconds without one, or once the engine is closed and every result was taken. Results
        are kept until taken (pass ``keep_results=False`` when only callbacks consume them)."""
        try:
            r = self._results.get(timeout=timeout)
        except queue.Empty:
            return None
        if r is _CLOSED:
            self._results.put(_CLOSED)  # for the other readers
            return None
        return r

    def results(self, timeout: float | None = None) -> Iterator[LiveResult]:
        """Results of queued frames until the engine is closed and drained (or nothing came for ``timeout``
        seconds)."""
        while True:
            r = self.get(timeout)
            if r is None:
                return
            yield r

    def drain_results(self) -> list[LiveResult]:
        """The results ready now, without waiting."""
        out = []
        while True:
            try:
                r = self._results.get_nowait()
            except queue.Empty:
                return out
            if r is _CLOSED:
                self._results.put(_CLOSED)
                return out
            out.append(r)

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until the queue is empty and no frame is being processed → False on timeout."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._queue and not self._in_flight, timeout)

    # --- counters -----------------------------------------------------------------------------------------
    def counters(self) -> dict[str, Any]:
        """Every counter now (thread-safe, cheap enough for a status line): mode; frames expected (sum of the
        series' ``number_of_images``), received, processed, rejected (+ ``rejected_reasons``), failed (+
        ``first_error``), late, missed (of ended series), decode_errors, duplicates, out_of_order, stray,
        orphan_ends; queued / queued_bytes / in_flight; latency_p50 / latency_p99 (rolling window) /
        latency_max (seconds, None before the first result); rate (frames/s over the last ``rate_window``
        seconds); batches, blocked_submits, blocked_seconds; callback_errors (+ callback_error: the first one's
        line: a callback that raised is counted, never stops the engine); series (the open series' counters or None),
        series_ended."""
        now = self.clock()
        with self._lock:
            c = dict(self._c)
            lat = np.fromiter(self._latencies, np.float64, len(self._latencies))
            lat_max = self._latency_max if self._c["processed"] else None
            c.update(mode=self.mode, rejected_reasons=dict(self._rejected_reasons), first_error=self._first_error,
                     callback_error=self._callback_error,
                     queued=len(self._queue), queued_bytes=self._qbytes, in_flight=self._in_flight,
                     blocked_seconds=self._blocked_s, rate=self._rate(now), series_ended=len(self._history))
            expected, missed = self._expected_closed, self._missed_closed
        totals = dict(self.tracker.totals)
        cur = self.tracker.current
        if cur is not None and cur.expected is not None:
            expected += cur.expected
        p50, p99 = (float(v) for v in np.percentile(lat, [50, 99])) if lat.size else (None, None)
        c.update(expected=expected, missed=missed, decode_errors=totals["decode_errors"],
                 duplicates=totals["duplicates"], out_of_order=totals["out_of_order"], stray=totals["stray"],
                 orphan_ends=totals["orphan_ends"], latency_p50=p50, latency_p99=p99,
                 latency_max=lat_max, series=None if cur is None else cur.as_dict())
        return c

    stats = counters

    def series_history(self) -> list[dict[str, Any]]:
        """The counters of the series that ended (and were fully accounted), oldest first (the last 1000)."""
        with self._lock:
            return list(self._history)

    # --- closing ------------------------------------------------------------------------------------------
    def close(self, drain: bool = True, timeout: float | None = None) -> None:
        """Stop: refuse new frames; with ``drain`` process every queued frame, otherwise drop them (counted
        rejected, ``shutdown``); close the open series (reason ``closed``); report it; call ``on_metrics`` a last
        time. ``timeout``: seconds to wait for the worker (None: as long as it takes)."""
        if self._closed:
            return
        dropped: list[tuple[_Item, str]] = []
        with self._lock:
            self._closing = True
            if not drain:
                while self._queue:
                    it = self._queue.popleft()
                    self._qbytes -= it.nbytes
                    self._reject(it, "shutdown")
                    dropped.append((it, "shutdown"))
            self._stop = True
            self._not_empty.notify_all()
            self._not_full.notify_all()
            ends = self._series_ready([it.series for it, _ in dropped])
        self._deliver(dropped, ends)
        if self._worker is not None and self._worker is not threading.current_thread():
            self._worker.join(timeout)
        with self._feed_lock:
            actions = self.tracker.close("closed")
        self._act(actions)
        self._closed = True
        self._results.put(_CLOSED)
        if self.on_metrics is not None:
            self.on_metrics(self.counters())

    def __enter__(self) -> LiveEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close(drain=exc[0] is None)

    # --- internals ----------------------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._closing or self._closed:
            raise RuntimeError("the live engine is closed")

    def _full(self, nbytes: int) -> bool:
        """Would a frame of ``nbytes`` overflow the queue? (An empty queue takes any frame.)"""
        if not self._queue:
            return False
        if len(self._queue) >= self.queue_frames:
            return True
        return self.queue_bytes is not None and self._qbytes + nbytes > self.queue_bytes

    def _received(self, now: float) -> None:
        self._c["received"] += 1
        if self._t_start is None:
            self._t_start = now

    def _reject(self, item: _Item, reason: str) -> None:
        self._c["rejected"] += 1
        self._rejected_reasons[reason] = self._rejected_reasons.get(reason, 0) + 1
        if item.series is not None:
            item.series.rejected += 1

    def _rate(self, now: float) -> float:
        w = self.rate_window
        while self._done_times and self._done_times[0] <= now - w:
            self._done_times.popleft()
        if self._t_start is None:
            return 0.0
        span = min(w, now - self._t_start)
        return len(self._done_times) / span if span > 0 else 0.0

    def _ensure_worker(self) -> None:
        if self._worker is None:
            with self._lock:
                if self._worker is None and not self._closing:
                    self._worker = threading.Thread(target=self._work, name="gixdrt-live-engine", daemon=True)
                    self._worker.start()

    def _period(self) -> float:
        p = min(0.25, self.metrics_interval)
        if self.tracker.idle_timeout is not None:
            p = min(p, self.tracker.idle_timeout / 4)
        return p

    def _work(self) -> None:
        period = self._period()
        while True:
            batch: list[_Item] = []
            with self._lock:
                if not self._queue:
                    if self._stop:
                        return
                    self._not_empty.wait(period)
                n = min(len(self._queue), self.max_batch)
                for _ in range(n):
                    it = self._queue.popleft()
                    self._qbytes -= it.nbytes
                    batch.append(it)
                self._in_flight += n
                if n:
                    self._not_full.notify_all()
            if batch:
                done, settle = self._run(batch)
                results = [r for r, _ in done if r is not None]
                for r in results:
                    if self.keep_results:
                        self._results.put(r)
                    if self.on_result is not None:
                        self._call(self.on_result, r)
                self._settle(settle)
            if not self._stop:
                try:
                    self.tick()
                except Exception as exc:  # a callback's failure must not stop the worker
                    self._note_error(exc)

    def _run(self, items: list[_Item]) -> tuple[list[tuple[LiveResult | None, BaseException | None]], list]:
        """Process ``items`` (one call; on failure, one call per frame to find the failing ones), count each
        → ((result, exception) per item, what :meth:`_settle` counts in the series once the results are out)."""
        events = [it.event for it in items]
        outcomes: list[tuple[Any, BaseException | None, float]] = []
        with self._run_lock:
            t_begin = self.clock()
            try:
                outputs = list(self.process_batch(events))
                if len(outputs) != len(events):
                    raise RuntimeError(f"process_batch returned {len(outputs)} results for {len(events)} frames")
                t = self.clock()
                outcomes = [(o, None, t) for o in outputs]
            except Exception as exc:
                if len(events) == 1:
                    outcomes = [(None, exc, self.clock())]
                else:
                    for ev in events:
                        try:
                            [o] = self.process_batch([ev])
                            outcomes.append((o, None, self.clock()))
                        except Exception as one:
                            outcomes.append((None, one, self.clock()))
        out: list[tuple[LiveResult | None, BaseException | None]] = []
        settle: list[tuple[SeriesCounters | None, bool, bool]] = []
        with self._lock:
            self._c["batches"] += 1
            for it, (o, exc, t) in zip(items, outcomes):
                lat = t - it.t0
                s = it.series
                if exc is None:
                    self._c["processed"] += 1
                    self._latencies.append(lat)
                    self._latency_max = max(self._latency_max, lat)
                    self._done_times.append(t)
                    late = self.latency_budget is not None and lat > self.latency_budget
                    if late:
                        self._c["late"] += 1
                    settle.append((s, True, late))
                else:
                    self._c["failed"] += 1
                    if self._first_error is None:
                        self._first_error = _one_line(exc)
                    settle.append((s, False, False))
                snap = {k: self._c[k] for k in _SNAPSHOT}
                snap["queued"] = len(self._queue)
                ev = it.event
                r = LiveResult(ev.series_id, ev.series_unique_id, ev.image_id, o, lat, max(t_begin - it.queued_at, 0.0),
                               len(items), None if exc is None else _one_line(exc), snap, ev.meta)
                out.append((r, exc))
        return out, settle

    def _settle(self, settle: list[tuple[SeriesCounters | None, bool, bool]]) -> None:
        """After the results of the last :meth:`_run` were delivered: count them in their series, report the
        series that are now fully accounted (so a series' end always comes after its last result), and wake
        :meth:`wait_idle`."""
        with self._lock:
            for s, ok, late in settle:
                if s is not None:
                    if ok:
                        s.processed += 1
                        s.late += late
                    else:
                        s.failed += 1
            self._in_flight -= len(settle)
            ends = self._series_ready([s for s, _, _ in settle])
            if not self._queue and not self._in_flight:
                self._idle.notify_all()
        self._deliver([], ends)

    def _series_ready(self, touched: list[SeriesCounters | None]) -> list[dict[str, Any]]:
        """Under the lock: the ended series among ``touched`` whose frames are now all accounted → their dicts."""
        ends = []
        for s in touched:
            if s is not None and id(s) in self._pending_close and s.accounted >= s.received:
                del self._pending_close[id(s)]
                ends.append(self._finish(s))
        return ends

    def _finish(self, s: SeriesCounters) -> dict[str, Any]:
        d = s.as_dict()
        self._history.append(d)
        return d

    def _act(self, actions: list[Action]) -> None:
        for a in actions:
            if a.kind == "open":
                opener = getattr(self.process_batch, "open_series", None)
                if opener is not None:
                    with self._run_lock:
                        self._call(opener, a.event)
                if self.on_series_start is not None:
                    self._call(self.on_series_start, a.event)
            elif a.kind == "frame":
                self.submit(a.event, _series=a.series)  # type: ignore[arg-type]
            elif a.kind == "close" and a.series is not None:
                with self._lock:
                    s = a.series
                    self._expected_closed += s.expected or 0
                    self._missed_closed += s.missed
                    ends = [self._finish(s)] if s.accounted >= s.received else []
                    if not ends:
                        self._pending_close[id(s)] = s
                self._deliver([], ends)

    def _deliver(self, dropped: list[tuple[_Item, str]], ends: list[dict[str, Any]]) -> None:
        """Callbacks, outside the lock."""
        if self.on_reject is not None:
            for it, reason in dropped:
                self._call(self.on_reject, it.event, reason)
        if self.on_series_end is not None:
            for d in ends:
                self._call(self.on_series_end, d)

    def _call(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as exc:  # a sink's failure is reported, never stops the engine
            self._note_error(exc)

    def _note_error(self, exc: BaseException) -> None:
        with self._lock:
            self._c["callback_errors"] += 1
            if self._callback_error is None:
                self._callback_error = _one_line(exc)
