"""Reading detector frames and writing images.

:func:`read_frame` returns every frame of one input, through the same per-format reader as the streaming
input of :func:`gixdrt.io.iter_frames` (:mod:`gixdrt.io.readers`): a NumPy array ``[H, W]`` (a file holding
one frame) or ``[N, H, W]`` (a stack) in the file's dtype, native byte order. Supported: TIFF (tifffile),
NumPy ``.npy``, EDF/CBF and other detector formats through fabio (optional), HDF5 datasets as
``file.h5::/path/to/dataset`` through h5py (optional; hdf5plugin is loaded when installed so bitshuffle-LZ4
Eiger data can be read). Every error is a FrameError naming the file and the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .readers import (  # noqa: F401  (the format tables, for importers of this module)
    FABIO_SUFFIXES,
    H5_SUFFIXES,
    MAX_FRAME_PIXELS,
    NEXUS_DEFAULT,
    NPY_SUFFIXES,
    SUPPORTED_DTYPES,
    TIFF_SUFFIXES,
    reader_for,
    split_spec,
)


def read_frame(spec: str | os.PathLike, *, expect_shape: tuple[int, int] | None = None,
               expect_note: str | None = None) -> np.ndarray:
    """Read a frame or a stack of frames from ``spec`` (a path, or ``file.h5::/dataset``).

    expect_shape: (H, W) every frame must have, checked against the file's header before pixel data is
    read; without it, a header declaring frames of more than ``MAX_FRAME_PIXELS`` pixels is refused.
    expect_note: where expect_shape comes from, quoted when the file differs (``Geometry.frame_shape_note``).
    Raises FrameError naming the file and the problem.
    """
    path, dataset = split_spec(os.fspath(spec))
    with reader_for(path, dataset=dataset, expect_shape=expect_shape,
                    expect_note=expect_note) as reader:
        return reader.read_all()


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a 2-D image as ``.npy``, ``.tif``/``.tiff`` (float32 kept) or ``.png`` (16-bit grey, scaled to its range).

    The file is written under a temporary name and renamed when complete, so an interrupted run never
    leaves a truncated file under the final name.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff", ".png"):
        raise ValueError(f"{path}: unsupported output format {suffix or '(no suffix)'}; use .npy, .tif or .png")
    with atomic_path(path) as tmp:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, image)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, image)
        else:
            _write_png16(tmp, image)
    return path


def _write_png16(path: Path, image: np.ndarray) -> None:
    """A 16-bit greyscale PNG, min–max scaled (the image's own range → 0…65535)."""
    import struct
    import zlib

    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    lo = float(img[finite].min()) if finite.any() else 0.0
    hi = float(img[finite].max()) if finite.any() else 0.0
    scaled = np.zeros(img.shape, np.float64) if hi <= lo else (np.where(finite, img, lo) - lo) / (hi - lo)
    data = np.round(scaled * 65535).astype(">u2")
    h, w = data.shape
    raw = b"".join(b"\x00" + data[r].tobytes() for r in range(h))

    def chunk(tag: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + tag + payload + struct.pack(">I", zlib.crc32(tag + payload) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
    path.write_bytes(png)
