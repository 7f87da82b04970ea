"""Frame readers and streaming sources, peak-table writers, and the cache of the published assets."""
from __future__ import annotations

from .assets import PublishedAssets, cache_dir, fetch_published
from .frames import read_frame, write_image
from .sources import Frame, count_frames, iter_frames
from .writers import read_peaks, write_peaks

__all__ = [
    "Frame",
    "PublishedAssets",
    "cache_dir",
    "count_frames",
    "fetch_published",
    "iter_frames",
    "read_frame",
    "read_peaks",
    "write_image",
    "write_peaks",
]
