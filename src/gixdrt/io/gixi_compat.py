"""Peak files in the layout the authors' viewer (gixi 0.0.1) opens, for users who keep that viewer.

One HDF5 file with one group per frame (``frame_000000``, ``frame_000001``, ...), each marked as an image
dataset the way that viewer looks for them:

- group attributes ``IMAGE_DATASET = "IMAGE_DATASET"`` and ``paths`` (the frame's source);
- ``boxes``: float32[K, 4], (x0, y0, x1, y1) divided by (W, H, W, H) of the polar image, as the authors'
  files store them (note: their physical units divide by W and H, not W − 1 and H − 1; gixdrt's own
  tables use the exact pixel-centre axes);
- ``scores``: float32[K]; ``polar_img``: float32[H, W] (the uncorrected polar image);
  ``intensities``: float64[K], the sum of the polar image in each box (gixdrt's definition: pixels whose
  centres lie in the box).

The file is written under a temporary name and renamed when :meth:`GixiCompatWriter.close` completes.
"""
from __future__ import annotations

import os
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from ..gixd.peaks import PeakTable
from .atomic import atomic_path

IMAGE_DATASET_ATTR = "IMAGE_DATASET"


class GixiCompatWriter:
    """Write frames incrementally: ``with GixiCompatWriter(path) as w: w.add(table, polar)``."""

    def __init__(self, path: str | os.PathLike):
        import h5py

        self.path = Path(path)
        if self.path.suffix.lower() not in (".h5", ".hdf5", ".gixi"):
            raise ValueError(f"{self.path}: the gixi-compatible layout is HDF5: use .h5, .hdf5 or .gixi")
        self._stack = ExitStack()
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._file = self._stack.enter_context(h5py.File(tmp, "w"))
        self.frames = 0

    def add(self, frame: int, source: str, table: PeakTable, polar: np.ndarray | None) -> None:
        """One frame's peaks (all rows of ``table`` belong to frame ``frame``) and its polar image."""
        if polar is None:
            raise ValueError("the gixi-compatible layout stores the polar image: use raw or polar input")
        if len(table) and np.any(table.frame != frame):
            raise ValueError(f"the table holds frames {np.unique(table.frame).tolist()}, expected only {frame}")
        h, w = polar.shape
        group = self._file.create_group(f"frame_{int(frame):06d}")
        group.attrs[IMAGE_DATASET_ATTR] = IMAGE_DATASET_ATTR
        group.attrs["paths"] = source
        scale = np.array([w, h, w, h], np.float64)
        group.create_dataset("boxes", data=(table.boxes / scale).astype(np.float32).reshape(-1, 4))
        group.create_dataset("scores", data=table.score.astype(np.float32))
        group.create_dataset("polar_img", data=np.asarray(polar, np.float32), compression="gzip", compression_opts=1)
        group.create_dataset("intensities", data=table.intensity.astype(np.float64))
        self.frames += 1

    def close(self) -> None:
        """Finish the file and move it under its final name."""
        self._stack.close()

    def __enter__(self) -> GixiCompatWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # On an exception the temporary file is removed; a previous file under the final name stays.
        self._stack.__exit__(exc_type, exc, tb)
