"""Reading detector frames and writing images.

Readers return NumPy arrays ``[H, W]`` (one frame) or ``[N, H, W]`` (a stack) in the file's dtype.
Supported: TIFF (tifffile), NumPy ``.npy``, EDF/CBF and other detector formats through fabio
(optional), HDF5 datasets as ``file.h5::/path/to/dataset`` through h5py (optional; hdf5plugin is loaded
when installed so bitshuffle-LZ4 Eiger data can be read). Every error names the file and the problem.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import FrameError

SUPPORTED_DTYPES = ("float32", "float64", "uint8", "uint16", "int16", "uint32", "int32")
_FABIO_SUFFIXES = {".edf", ".cbf", ".img", ".mccd", ".mar3450", ".sfrm", ".gfrm", ".esperanto", ".msk"}


def _split_h5(spec: str) -> tuple[str, str | None]:
    if "::" in spec:
        path, _, dataset = spec.partition("::")
        return path, dataset or None
    return spec, None


def read_frame(spec: str | os.PathLike) -> np.ndarray:
    """Read a frame or a stack of frames from ``spec`` (a path, or ``file.h5::/dataset``)."""
    path_str, dataset = _split_h5(os.fspath(spec))
    path = Path(path_str)
    if not path.exists():
        raise FrameError("file not found", path=path)
    if path.is_dir():
        raise FrameError("is a directory, expected a frame file", path=path)
    if path.stat().st_size == 0:
        raise FrameError("empty file", path=path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".tif", ".tiff"):
            arr = _read_tiff(path)
        elif suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix in (".h5", ".hdf5", ".nxs", ".hdf", ".nx5"):
            arr = _read_h5(path, dataset)
        elif suffix in _FABIO_SUFFIXES:
            arr = _read_fabio(path)
        else:
            raise FrameError(
                f"unknown frame format {suffix or '(no suffix)'}; expected .tif/.tiff, .npy, .h5::/dataset, "
                "or a detector format read by fabio (.edf, .cbf, ...)",
                path=path,
            )
    except FrameError:
        raise
    except Exception as exc:  # the readers raise many kinds for corrupt files
        raise FrameError(f"not a readable image ({type(exc).__name__}: {exc})", path=path) from None
    return _check(arr, path)


def _check(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.dtype.name not in SUPPORTED_DTYPES:
        raise FrameError(f"unsupported pixel dtype {arr.dtype}; expected one of {', '.join(SUPPORTED_DTYPES)}", path=path)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4) and arr.shape[0] > 4:
        raise FrameError(f"looks like a colour image (shape {arr.shape}); expected a detector frame", path=path)
    if arr.ndim not in (2, 3):
        raise FrameError(f"expected a 2-D frame or a 3-D stack, got shape {arr.shape}", path=path)
    if arr.size == 0:
        raise FrameError(f"no pixels (shape {arr.shape})", path=path)
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _read_fabio(path: Path) -> np.ndarray:
    try:
        import fabio
    except ImportError:
        raise FrameError("reading this format needs fabio: pip install fabio", path=path) from None
    img = fabio.open(str(path))
    if getattr(img, "nframes", 1) > 1:
        return np.stack([img.getframe(i).data for i in range(img.nframes)])
    return img.data


def _read_h5(path: Path, dataset: str | None) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise FrameError("reading HDF5 needs h5py: pip install h5py", path=path) from None
    try:
        import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters of Eiger files)
    except ImportError:
        pass
    with h5py.File(path, "r") as f:
        if dataset is None:
            found: list[str] = []
            f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) else None)
            if len(found) != 1:
                raise FrameError(
                    "name the dataset as FILE.h5::/path/to/data" + (f" (candidates: {', '.join(found[:5])})" if found else " (no 2-D/3-D dataset found)"),
                    path=path,
                )
            dataset = found[0]
        if dataset not in f:
            raise FrameError(f"no dataset {dataset!r} in the file", path=path)
        return f[dataset][()]


def write_image(path: str | os.PathLike, image: np.ndarray) -> Path:
    """Write a 2-D image as ``.npy``, ``.tif``/``.tiff`` (float32 kept) or ``.png`` (16-bit grey, scaled to its range).

    The file is written under a temporary name and renamed when complete, so an interrupted run never
    leaves a truncated file under the final name.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".tif", ".tiff", ".png"):
        raise ValueError(f"{path}: unsupported output format {suffix or '(no suffix)'}; use .npy, .tif or .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.part{suffix}")
    try:
        if suffix == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, image)
        elif suffix in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, image)
        else:
            _write_png16(tmp, image)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
