"""A DECTRIS stream (V2 CBOR or V1 multipart JSON) received over ZeroMQ → :mod:`gixdrt.live.events`.

::

    with StreamSource("tcp://dcu:31001", timeout=5.0) as source:
        for event in source:          # SeriesStart, FrameEvent, SeriesEnd, DecodeError, in arrival order
            ...
        print(source.received)        # raw messages received

The detector binds a PUSH socket; gixdrt connects a PULL socket to it and must be its **only consumer**: PUSH
deals messages round-robin, so a second PULL client would get every other image and only one of the two would
see each start and end message. Run one source per detector stream and fan out inside the process.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

import zmq

from ..io.decode import resolve_threads
from . import stream1, stream2
from .events import DecodeError, Event

__all__ = ["DEFAULT_RCVHWM", "FORMATS", "StreamSource", "detect_format"]

#: ``format`` values: tell the stream version by each message, or insist on one
FORMATS = ("auto", "stream2", "stream1")
#: messages ZeroMQ queues for us before it stops reading from the detector (it then buffers on its side)
DEFAULT_RCVHWM = 100


def detect_format(parts) -> str:
    """'stream1' or 'stream2' from one received message (a list of parts): V1 messages are JSON parts (the first
    starts with ``{``), V2 messages are a single CBOR map (whose first byte is never ``{``)."""
    if len(parts) > 1:
        return "stream1"
    head = bytes(memoryview(parts[0])[:16]).lstrip() if parts else b""
    return "stream1" if head.startswith(b"{") else "stream2"


class StreamSource:
    """Events from a detector's ZeroMQ PUSH socket (see the module docstring: be its only consumer).

    endpoint: the detector's socket, e.g. ``tcp://dcu:31001`` (V2) or ``tcp://dcu:9999`` (V1); connected, never
    bound. ZeroMQ reconnects by itself when the detector restarts, so a source outlives detector restarts.
    format: ``auto`` (each message tells: multipart JSON = V1, one CBOR map = V2), ``stream2`` or ``stream1``.
    timeout: seconds without a message after which iteration stops (``idle``): the ``for`` loop ends after
    every decoded event has been yielded; the socket stays connected and iterating again resumes receiving.
    None: iterate until :meth:`close`.
    rcvhwm: ZeroMQ receive high-water mark (messages). When it is reached ZeroMQ stops reading and the
    detector's own buffer fills: lossless backpressure, never a silent drop on our side.
    decode_threads: messages decoded at once in a thread pool (decompression releases the GIL); events are
    still yielded in arrival order, each as soon as it and every earlier one are decoded. None: every core
    this process may use; 1: decode in the iterating thread.
    poll_interval: seconds between checks of :meth:`close` and the timeout while nothing arrives.

    Counters: ``received`` (raw messages), ``received_bytes``, ``ignored`` (message types not ours, e.g.
    Jungfraujoch calibration), ``decode_errors`` (DecodeError events yielded).
    Receiving happens in the iterating thread; :meth:`close` may be called from any thread and stops the
    iteration within ``poll_interval`` (messages already received are decoded and yielded first).
    """

    def __init__(self, endpoint: str, *, format: str = "auto", timeout: float | None = None,
                 rcvhwm: int = DEFAULT_RCVHWM, decode_threads: int | None = None, poll_interval: float = 0.1,
                 context: zmq.Context | None = None):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if not isinstance(endpoint, str) or "://" not in endpoint:
            raise ValueError(f"{endpoint!r}: expected a ZeroMQ endpoint such as tcp://dcu:31001")
        if "*" in endpoint:
            raise ValueError(f"{endpoint}: a stream source connects to the detector; give its host, e.g. "
                             "tcp://dcu:31001")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds or None, got {timeout!r}")
        if int(rcvhwm) < 0:
            raise ValueError(f"rcvhwm must be ≥ 0, got {rcvhwm!r}")
        if not poll_interval > 0:
            raise ValueError(f"poll_interval must be > 0 seconds, got {poll_interval!r}")
        self.endpoint = endpoint
        self.format = format
        self.timeout = timeout
        self.poll_interval = float(poll_interval)
        self.threads = resolve_threads(decode_threads)
        self.received = 0
        self.received_bytes = 0
        self.ignored = 0
        self.decode_errors = 0
        self._lock = threading.Lock()
        self._closing = False
        self._closed = False
        self._gen: Iterator[Event] | None = None
        self._owner: int | None = None  # the thread that iterates
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="gixdrt-stream") if self.threads > 1 else None
        self._ahead = 2 * self.threads
        self._socket = (context or zmq.Context.instance()).socket(zmq.PULL)
        try:
            self._socket.setsockopt(zmq.RCVHWM, int(rcvhwm))
            self._socket.setsockopt(zmq.LINGER, 0)
            self._socket.connect(endpoint)
        except zmq.ZMQError as exc:
            self._shutdown()
            raise ValueError(f"{endpoint}: cannot connect ({exc})") from None

    # ---------------------------------------------------------------------------------------------
    def __enter__(self) -> StreamSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            if self._closing:
                raise RuntimeError(f"stream source {self.endpoint} is closed")
            if self._gen is not None:
                raise RuntimeError(f"stream source {self.endpoint} is already being iterated")
            self._gen = gen = self._events()
            self._owner = threading.get_ident()
        return gen

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop receiving and release the socket (from any thread; an iteration in progress ends within
        ``poll_interval``, after yielding what was already received)."""
        with self._lock:
            self._closing = True
            gen = self._gen
        if gen is None:
            self._shutdown()
            return
        if self._owner == threading.get_ident() and not gen.gi_running:
            gen.close()  # suspended in this thread (e.g. a loop left with break): finish it here
        # else the iterating thread sees _closing within poll_interval and releases the socket

    def _shutdown(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._socket.close(linger=0)
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    # ---------------------------------------------------------------------------------------------
    def _decode(self, parts: list, received: float) -> Event | None:
        """One raw message → an event (never raises)."""
        try:
            fmt = detect_format(parts) if self.format == "auto" else self.format
            if fmt == "stream1":
                return stream1.decode_message(parts, received=received, source=self.endpoint)
            if len(parts) != 1:
                return DecodeError(f"message: a Stream V2 message is one part, got {len(parts)}", source=self.endpoint,
                                   received=received)
            return stream2.decode_message(parts[0], received=received, source=self.endpoint)
        except Exception as exc:  # the decoders do not raise; this keeps a bug from stopping the stream
            return DecodeError(f"message: {type(exc).__name__}: {exc}"[:300], source=self.endpoint,
                               received=received)

    def _count(self, event: Event | None) -> Event | None:
        if event is None:
            self.ignored += 1
        elif isinstance(event, DecodeError):
            self.decode_errors += 1
        return event

    def _events(self) -> Iterator[Event]:
        pending: deque[Future] = deque()
        last = time.monotonic()
        sock = self._socket
        try:
            while True:
                while pending and pending[0].done():
                    event = self._count(pending.popleft().result())
                    if event is not None:
                        yield event
                if self._closing:
                    break
                if len(pending) >= self._ahead:  # the pool is busy: wait for the oldest message
                    wait([pending[0]], timeout=self.poll_interval)
                    continue
                if pending:
                    wait_ms = 1  # decodes in flight: look back at them soon
                elif self.timeout is not None:
                    remaining = last + self.timeout - time.monotonic()
                    if remaining <= 0:
                        break  # idle
                    wait_ms = max(1, min(int(self.poll_interval * 1000), int(remaining * 1000) + 1))
                else:
                    wait_ms = max(1, int(self.poll_interval * 1000))
                if not sock.poll(wait_ms, zmq.POLLIN):
                    continue
                try:
                    parts = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    continue
                received = last = time.monotonic()
                self.received += 1
                self.received_bytes += sum(len(p) for p in parts)
                if self._pool is None:
                    event = self._count(self._decode(parts, received))
                    if event is not None:
                        yield event
                else:
                    pending.append(self._pool.submit(self._decode, parts, received))
            while pending:  # closing: what was received is still delivered
                event = self._count(pending.popleft().result())
                if event is not None:
                    yield event
        finally:
            for future in pending:
                future.cancel()
            with self._lock:
                self._gen = None
                closing = self._closing
            if closing:
                self._shutdown()
