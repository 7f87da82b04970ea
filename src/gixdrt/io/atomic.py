"""Atomic file writes: a temporary name next to the target, renamed onto it only when complete."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block completes it is synced and renamed onto
    ``path``, otherwise removed. An interrupted or failed write never leaves a truncated file under the
    final name and never touches a previous file there. The suffix is kept so format writers that look
    at it (tifffile, matplotlib, h5py) behave as for the final name."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash never leaves a truncated file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
