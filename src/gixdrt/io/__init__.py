"""Frame readers, output writers and the cache of the published assets."""
from __future__ import annotations

from .assets import PublishedAssets, cache_dir, fetch_published
from .frames import read_frame, write_image

__all__ = ["PublishedAssets", "cache_dir", "fetch_published", "read_frame", "write_image"]
