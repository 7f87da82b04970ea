"""A detector and gixdrt on one machine: frames replayed as a DECTRIS stream on loopback into a live session.

Used by ``gixdrt demo --live`` and ``benchmarks/bench_live.py``: the replayer runs in a thread (it binds a
loopback port, waits for the consumer, sends start, images at ``rate`` and end), the session runs in the caller's
thread, exactly as ``gixdrt stream`` runs.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .replay import Replayer, ReplaySummary
from .session import LiveSession
from .zmqsource import StreamSource

__all__ = ["LoopbackRun", "run_loopback"]


@dataclass
class LoopbackRun:
    """What a loopback run gave: the replayer's summary, the engine's final counters, the series report(s), the
    wall time from the first message to the last result, and the latencies of the processed frames (seconds)."""

    replay: ReplaySummary | None
    counters: dict[str, Any]
    reports: list
    seconds: float
    latencies: np.ndarray
    stream_messages: int
    stream_bytes: int

    @property
    def rate(self) -> float:
        """Frames processed per second of the run."""
        return self.counters.get("processed", 0) / self.seconds if self.seconds > 0 else float("nan")


def run_loopback(frames: Sequence[np.ndarray], processor: Any, *, rate: float | None = None,
                 fmt: str = "stream2", compression: str = "bslz4", mode: str = "lossless", queue_frames: int = 64,
                 max_batch: int = 4, sink: Any = None, decode_threads: int | None = None,
                 on_status: Callable[[dict[str, Any]], None] | None = None, status_interval: float = 1.0,
                 warmup: bool = True, timeout: float = 60.0, pixel_mask: np.ndarray | None = None,
                 saturation_value: float | None = None) -> LoopbackRun:
    """Replay ``frames`` (one series) on a loopback port and run them through a :class:`LiveSession` over
    ``processor`` (the engine's ``process_batch``) → :class:`LoopbackRun`. ``timeout``: seconds without a message
    after which the run stops (a replayer that failed)."""
    latencies: list[float] = []
    t_first: list[float] = []
    session = LiveSession(processor, sink=sink, mode=mode, queue_frames=queue_frames, max_batch=max_batch,
                          on_status=on_status, status_interval=status_interval)
    user_result = session.engine.on_result

    def on_result(result) -> None:
        if result.ok:
            latencies.append(result.latency)
        user_result(result)

    session.engine.on_result = on_result
    if warmup:
        session.engine.warmup(np.asarray(frames[0]))
    rep = Replayer("tcp://127.0.0.1:*", format=fmt, compression=compression, start_timeout=timeout,
                   send_timeout=timeout)
    summary: list[ReplaySummary] = []
    failure: list[BaseException] = []

    def play() -> None:
        try:
            summary.append(rep.series(frames, rate=rate, series_id=1, number_of_images=len(frames),
                                      pixel_mask=pixel_mask, saturation_value=saturation_value))
        except BaseException as exc:  # reported below
            failure.append(exc)
        finally:
            rep.close()

    thread = threading.Thread(target=play, name="gixdrt-replay", daemon=True)
    source = StreamSource(rep.endpoint, format=fmt, timeout=0.25, decode_threads=decode_threads)

    class _Timed:
        def __iter__(self):
            for event in source:
                if not t_first:
                    t_first.append(time.monotonic())
                yield event

    thread.start()
    try:
        with source:
            counters = session.run(_Timed(), resume=True, series=1, idle_exit=timeout)
    finally:
        thread.join(timeout)
    t_end = time.monotonic()
    if failure:
        raise failure[0]
    seconds = t_end - t_first[0] if t_first else 0.0
    return LoopbackRun(summary[0] if summary else None, counters, list(session.reports), seconds,
                       np.asarray(latencies, np.float64), source.received, source.received_bytes)
