"""Frame readers and streaming sources, the compressed-chunk decoder, peak-table writers, CXI peak lists, and the
cache of the published assets."""
from __future__ import annotations

from .assets import PublishedAssets, cache_dir, fetch_published
from .cxi import CxiWriter, write_cxi
from .decode import ChunkError, decode_chunk, decode_chunks
from .frames import read_frame, write_image
from .sources import Frame, count_frames, iter_frames
from .writers import read_peaks, write_peaks

__all__ = [
    "ChunkError",
    "CxiWriter",
    "Frame",
    "PublishedAssets",
    "cache_dir",
    "count_frames",
    "decode_chunk",
    "decode_chunks",
    "fetch_published",
    "iter_frames",
    "read_frame",
    "read_peaks",
    "write_cxi",
    "write_image",
    "write_peaks",
]
