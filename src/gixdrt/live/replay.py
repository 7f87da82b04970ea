"""Play frames as a DECTRIS detector streams them: a PUSH socket sending start, images, end (Stream V2 or V1).

For testing live consumers (gixdrt's own :class:`~gixdrt.live.zmqsource.StreamSource`, or any DECTRIS client)
without a detector::

    summary = replay(frames, to="tcp://*:31001", rate=100.0)                  # any iterable of 2-D arrays
    summary = replay_files(["scan.h5::/entry/data/data"], to="tcp://*:31001")  # what `gixdrt replay` runs

Like a detector, the replayer binds and the consumer connects. Sending is lossless: every send blocks until
ZeroMQ has queued the message for a connected consumer. If no consumer connects within ``start_timeout`` the
start message is not sent and a :class:`ReplayError` says so (a detector with no puller stops with an error
too); if the consumer takes no message for ``send_timeout`` seconds, the replay stops with a ReplayError
naming how many images were sent. At the end the socket waits up to ``send_timeout`` for the queued messages
to leave.
"""
from __future__ import annotations

import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from ..errors import GixdrtError
from . import stream1, stream2
from .chunks import COMPRESSIONS

__all__ = ["DEFAULT_SNDHWM", "FORMATS", "ReplayError", "ReplaySummary", "Replayer", "replay", "replay_files"]

#: the stream formats the replayer sends
FORMATS = ("stream2", "stream1")
#: messages ZeroMQ queues on the sending side before a send blocks
DEFAULT_SNDHWM = 100


class ReplayError(GixdrtError, RuntimeError):
    """A replay could not go on: no consumer, a consumer that stopped taking frames, frames that differ."""


@dataclass(frozen=True)
class ReplaySummary:
    """What a replay sent. seconds: from the start message to the end message (wall clock)."""

    endpoint: str
    series: int
    images: int
    bytes: int
    seconds: float

    @property
    def rate(self) -> float:
        """Images per second (0 when no time passed)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def __add__(self, other: ReplaySummary) -> ReplaySummary:
        return ReplaySummary(self.endpoint, self.series + other.series, self.images + other.images,
                             self.bytes + other.bytes, self.seconds + other.seconds)

    def line(self) -> str:
        """One line for a user."""
        series = f"{self.series} series, " if self.series != 1 else ""
        return (f"sent {series}{self.images} images ({self.bytes / 1e6:.1f} MB) to {self.endpoint} in "
                f"{self.seconds:.2f} s ({self.rate:.1f} images/s)")


def _check_timeout(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class Replayer:
    """A bound PUSH socket that sends series the way a detector does (see the module docstring).

    to: where to bind, e.g. ``tcp://*:31001`` or ``tcp://127.0.0.1:*`` (a free port); :attr:`endpoint` is the
    address actually bound. format: ``stream2`` (CBOR) or ``stream1`` (legacy multipart JSON). compression:
    ``bslz4``, ``lz4`` or ``none``. start_timeout: seconds to wait for a consumer before the first start
    message. send_timeout: seconds any later send may block.
    """

    def __init__(self, to: str, *, format: str = "stream2", compression: str = "bslz4", start_timeout: float = 10.0,
                 send_timeout: float = 10.0, sndhwm: int = DEFAULT_SNDHWM):
        if format not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
        self.format = format
        self.compression = compression
        self.start_timeout = _check_timeout("start_timeout", start_timeout)
        self.send_timeout = _check_timeout("send_timeout", send_timeout)
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, int(sndhwm))
        try:
            self._socket.bind(to)
        except zmq.ZMQError as exc:
            self._socket.close(linger=0)
            self._context.term()
            raise ReplayError(f"{to}: cannot bind ({exc})") from None
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._started = False
        self._closed = False

    def __enter__(self) -> Replayer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Release the socket, waiting up to ``send_timeout`` for queued messages to be delivered."""
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=int(self.send_timeout * 1000))
        self._context.term()

    def _send(self, msg: bytes | list[bytes], timeout: float) -> int:
        """Send one message (a V2 bytes or a V1 list of parts), blocking up to ``timeout``; its size in bytes."""
        self._socket.setsockopt(zmq.SNDTIMEO, max(1, int(timeout * 1000)))
        if isinstance(msg, list):
            self._socket.send_multipart(msg, copy=False)
            return sum(len(p) for p in msg)
        self._socket.send(msg, copy=False)
        return len(msg)

    def series(self, frames: Iterable, *, rate: float | None = None, series_id: int = 1,
               series_unique_id: str | None = None, number_of_images: int | None = None,
               pixel_mask: np.ndarray | None = None, saturation_value: float | None = None,
               meta: Mapping[str, Any] | None = None) -> ReplaySummary:
        """Send one series: start, every frame of ``frames`` as an image, end.

        frames: 2-D arrays [height, width] (or :class:`gixdrt.io.sources.Frame`, whose label goes into each
        image's ``user_data``), all of the first one's shape and dtype. rate: images per second (None: as
        fast as the consumer takes them); image i leaves at ``i / rate`` s after the first (no drift).
        series_unique_id: default a fresh UUID. number_of_images: default ``len(frames)`` when it has one,
        else left out of the start message (unknown). pixel_mask: [height, width], nonzero = bad.
        meta: more start-message keys (V2) or detector-configuration keys (V1), e.g. ``beam_center_x``.
        """
        if self._closed:
            raise ReplayError(f"{self.endpoint}: the replayer is closed")
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"rate must be a positive number of images per second or None, got {rate!r}")
        if number_of_images is None and hasattr(frames, "__len__"):
            number_of_images = len(frames)  # a list, a tuple, a 3-D stack
        unique = series_unique_id or uuid.uuid4().hex
        it = iter(frames)
        first = next(it, None)
        if first is None:
            raise ReplayError("no frames to replay")
        image, _ = _unpack(first)
        shape, dtype = image.shape, image.dtype
        self._check_frame(image, 0, None, shape, dtype)
        start = self._start(series_id, unique, shape, dtype, number_of_images, pixel_mask, saturation_value, meta)
        sent = 0
        try:
            nbytes = self._send(start, self.start_timeout if not self._started else self.send_timeout)
        except zmq.Again:
            raise ReplayError(f"{self.endpoint}: no consumer connected within "
                              f"{self.start_timeout if not self._started else self.send_timeout:g} s; nothing was "
                              "sent") from None
        self._started = True
        t0 = time.perf_counter()
        item = first
        i = 0
        while item is not None:
            image, label = _unpack(item)
            self._check_frame(image, i, label, shape, dtype)
            if rate is not None:
                delay = t0 + i / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            elapsed_ns = int((time.perf_counter() - t0) * 1e9)
            msg = self._image(series_id, unique, i, image, label, elapsed_ns)
            try:
                nbytes += self._send(msg, self.send_timeout)
            except zmq.Again:
                raise ReplayError(f"{self.endpoint}: the consumer took no message for {self.send_timeout:g} s; "
                                  f"stopped after {sent} images of series {series_id}") from None
            sent += 1
            i += 1
            item = next(it, None)
        end = (stream2.encode_end(series_id=series_id, series_unique_id=unique) if self.format == "stream2"
               else stream1.encode_end(series=series_id))
        try:
            nbytes += self._send(end, self.send_timeout)
        except zmq.Again:
            raise ReplayError(f"{self.endpoint}: the consumer took no message for {self.send_timeout:g} s; the end "
                              f"of series {series_id} was not sent") from None
        return ReplaySummary(self.endpoint, 1, sent, nbytes, time.perf_counter() - t0)

    def _check_frame(self, image: np.ndarray, i: int, label: str | None, shape, dtype) -> None:
        what = f"frame {i}" + (f" ({label})" if label else "")
        if image.ndim != 2:
            raise ReplayError(f"{what}: a frame must be 2-D [height, width], got shape {image.shape}")
        if image.shape != shape or image.dtype != dtype:
            raise ReplayError(f"{what}: {image.dtype}{list(image.shape)} differs from the first frame's "
                              f"{dtype}{list(shape)}; a series has one image shape and type")
        if self.format == "stream1" and image.dtype.name not in stream1.PIXEL_TYPES:
            raise ReplayError(f"{what}: Stream V1 sends {', '.join(stream1.PIXEL_TYPES)} images, not {image.dtype}")
        if self.format == "stream2" and self.compression == "bslz4" and image.dtype.itemsize not in (1, 2, 4, 8):
            raise ReplayError(f"{what}: bslz4 compresses 1-, 2-, 4- or 8-byte pixels, not {image.dtype}")

    def _start(self, series_id, unique, shape, dtype, number, pixel_mask, saturation, meta):
        meta = dict(meta or {})
        if self.format == "stream2":
            if dtype.kind in "ui":
                meta.setdefault("bit_depth_image", dtype.itemsize * 8)
            return stream2.encode_start(series_id=series_id, series_unique_id=unique, image_shape=shape,
                                        number_of_images=number, pixel_mask=pixel_mask, saturation_value=saturation,
                                        compression=self.compression, meta=meta)
        config = {"x_pixels_in_detector": shape[1], "y_pixels_in_detector": shape[0],
                  "bit_depth_image": dtype.itemsize * 8, "compression": self.compression, **meta}
        if number is not None:
            config.update(nimages=int(number), ntrigger=1)
        if saturation is not None:
            config["countrate_correction_count_cutoff"] = saturation
        return stream1.encode_header(series=series_id, detail="basic" if pixel_mask is None else "all",
                                     config=config, pixel_mask=pixel_mask)

    def _image(self, series_id, unique, i, image, label, elapsed_ns):
        if self.format == "stream2":
            meta: dict[str, Any] = {"start_time": [elapsed_ns, 1_000_000_000],
                                    "stop_time": [elapsed_ns, 1_000_000_000]}
            if label:
                meta["user_data"] = {"source": label}
            return stream2.encode_image(series_id=series_id, series_unique_id=unique, image_id=i, data=image,
                                        compression=self.compression, meta=meta)
        return stream1.encode_image(series=series_id, frame=i, image=image, compression=self.compression,
                                    start_time=elapsed_ns, stop_time=elapsed_ns,
                                    appendix={"source": label} if label else None)


def _unpack(item) -> tuple[np.ndarray, str | None]:
    """A frame (array or io.sources.Frame) → (array, label or None)."""
    data = getattr(item, "data", None)
    if isinstance(data, np.ndarray):
        return data, getattr(item, "source", None)
    return np.asarray(item), None


def replay(frames: Iterable, *, to: str, rate: float | None = None, format: str = "stream2",
           compression: str = "bslz4", series_id: int = 1, series_unique_id: str | None = None,
           number_of_images: int | None = None, pixel_mask: np.ndarray | None = None,
           saturation_value: float | None = None, meta: Mapping[str, Any] | None = None,
           start_timeout: float = 10.0, send_timeout: float = 10.0,
           on_bound: Callable[[str], None] | None = None) -> ReplaySummary:
    """Bind ``to``, send ``frames`` as one series, close (see :meth:`Replayer.series` for the arguments).

    on_bound: called with the bound endpoint before waiting for a consumer (e.g. to start one on a port the
    system chose for ``tcp://127.0.0.1:*``).
    """
    with Replayer(to, format=format, compression=compression, start_timeout=start_timeout,
                  send_timeout=send_timeout) as replayer:
        if on_bound is not None:
            on_bound(replayer.endpoint)
        return replayer.series(frames, rate=rate, series_id=series_id, series_unique_id=series_unique_id,
                               number_of_images=number_of_images, pixel_mask=pixel_mask,
                               saturation_value=saturation_value, meta=meta)


def replay_files(inputs: Sequence[str], *, to: str, rate: float | None = None, format: str = "stream2",
                 compression: str = "bslz4", series_id: int = 1, repeat: int = 1, start_timeout: float = 10.0,
                 send_timeout: float = 10.0, on_bound: Callable[[str], None] | None = None) -> ReplaySummary:
    """Replay the frames of ``inputs`` (files as :func:`gixdrt.io.sources.iter_frames` reads them: TIFF, npy,
    HDF5 ``file.h5::/dataset``, CBF, ...) ``repeat`` times, as series ``series_id``, ``series_id + 1``, ...
    The number of images comes from the files' headers; frames are read one at a time while sending."""
    from ..io.sources import count_frames, iter_frames

    if int(repeat) < 1:
        raise ValueError(f"repeat must be ≥ 1, got {repeat!r}")
    number = count_frames(inputs)  # checks every input before anything is bound
    if number == 0:
        raise ReplayError(f"{', '.join(inputs)}: no frames")
    with Replayer(to, format=format, compression=compression, start_timeout=start_timeout,
                  send_timeout=send_timeout) as replayer:
        if on_bound is not None:
            on_bound(replayer.endpoint)
        total: ReplaySummary | None = None
        for k in range(int(repeat)):
            done = replayer.series(iter_frames(inputs), rate=rate, series_id=series_id + k, number_of_images=number)
            total = done if total is None else total + done
    assert total is not None
    return total
