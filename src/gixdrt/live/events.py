"""The event model every live source converts to (it mirrors DECTRIS Stream V2).

A series is ``SeriesStart``, any number of ``FrameEvent``, then ``SeriesEnd``; a source that cannot decode a
message yields a ``DecodeError`` instead (counted, never raised). Everything downstream of a source sees only
these four types, so a DECTRIS v2 stream, a v1 stream, a Jungfraujoch stream, a folder of files and a replayed
file are processed the same way.

Conventions:
- ``series_unique_id`` (a string) identifies a series; ``series_id`` (an integer) is what the detector numbers it.
  Sources without a unique id make one (e.g. ``f"{path}#{mtime_ns}"`` for a file).
- ``image_id`` is the 0-based index of the image within its series, as the detector numbers it (not necessarily
  monotonic or unique: the series tracker checks).
- Images are 2-D arrays ``[height, width]`` (rows = slow axis), one per channel, in the order of
  ``SeriesStart.channels``; a single-channel source names its channel ``"data"``.
- ``received`` is ``time.monotonic()`` when the message arrived (latencies are measured from it).
- ``pixel_mask``: channel → integer mask of the image's shape, nonzero = bad pixel (NeXus/DECTRIS convention);
  ``saturation_value``: values ≥ it are invalid (None: none given).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import numpy as np

__all__ = ["DecodeError", "Event", "FrameEvent", "SeriesEnd", "SeriesStart", "END_REASONS"]

#: why a series ended: the detector's end message; no frame for the idle timeout; a new series started before this
#: one ended (abort, detector restart); the source closed (file replay finished, stream stopped)
END_REASONS = ("end", "incomplete", "superseded", "closed")


@dataclass(frozen=True)
class SeriesStart:
    series_id: int
    series_unique_id: str
    number_of_images: int | None = None  # expected images (None: unknown, e.g. a file still being written)
    channels: tuple[str, ...] = ("data",)
    image_shape: tuple[int, int] | None = None  # (height, width)
    dtype: str | None = None  # e.g. "uint16"
    pixel_mask: Mapping[str, np.ndarray] = field(default_factory=dict)
    saturation_value: float | None = None
    meta: Mapping[str, Any] = field(default_factory=dict)  # everything else of the start message (geometry, energy…)
    source: str = ""  # the endpoint or file it came from
    received: float = 0.0


@dataclass(frozen=True)
class FrameEvent:
    series_id: int
    series_unique_id: str
    image_id: int
    data: Mapping[str, np.ndarray]  # channel → 2-D image
    meta: Mapping[str, Any] = field(default_factory=dict)  # start_time, stop_time, real_time, user_data, …
    received: float = 0.0
    nbytes: int = 0  # bytes as received (compressed)

    def image(self, channel: str | None = None) -> np.ndarray:
        """The image of ``channel`` (default: the first channel)."""
        if channel is None:
            return next(iter(self.data.values()))
        return self.data[channel]


@dataclass(frozen=True)
class SeriesEnd:
    series_id: int
    series_unique_id: str
    reason: str = "end"  # one of END_REASONS
    received: float = 0.0

    def __post_init__(self) -> None:
        if self.reason not in END_REASONS:
            raise ValueError(f"SeriesEnd.reason must be one of {END_REASONS}, got {self.reason!r}")


@dataclass(frozen=True)
class DecodeError:
    """A message that could not be decoded: counted as ``decode_errors`` (of its series when known)."""

    message: str  # one line: what was wrong
    source: str = ""
    series_id: int | None = None
    series_unique_id: str | None = None
    image_id: int | None = None
    received: float = 0.0


Event = Union[SeriesStart, FrameEvent, SeriesEnd, DecodeError]
