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
from .atomic import atomic_path

SUPPORTED_DTYPES = ("float32", "float64", "uint8", "uint16", "int16", "uint32", "int32")
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
NPY_SUFFIXES = frozenset({".npy"})
H5_SUFFIXES = frozenset({".h5", ".hdf5", ".nxs", ".hdf", ".nx5"})
_FABIO_SUFFIXES = {".edf", ".cbf", ".img", ".mccd", ".mar3450", ".sfrm", ".gfrm", ".esperanto", ".msk"}
FABIO_SUFFIXES = frozenset(_FABIO_SUFFIXES)
NEXUS_DEFAULT = "/entry/data/data"


def _split_h5(spec: str) -> tuple[str, str | None]:
    if "::" in spec:
        path, _, dataset = spec.partition("::")
        return path, dataset or None
    return spec, None


def _check_file(path: Path) -> None:
    """FrameError unless ``path`` is an existing, non-empty regular file."""
    if not path.exists():
        raise FrameError("file not found", path=path)
    if path.is_dir():
        raise FrameError("is a directory, expected a frame file", path=path)
    if path.stat().st_size == 0:
        raise FrameError("empty file", path=path)


def _format_of(path: Path) -> str:
    """'tiff', 'npy', 'h5' or 'fabio' from the suffix; FrameError for anything else."""
    suffix = path.suffix.lower()
    kinds = (("tiff", TIFF_SUFFIXES), ("npy", NPY_SUFFIXES), ("h5", H5_SUFFIXES), ("fabio", FABIO_SUFFIXES))
    for kind, suffixes in kinds:
        if suffix in suffixes:
            return kind
    raise FrameError(
        f"unknown frame format {suffix or '(no suffix)'}; expected .tif/.tiff, .npy, .h5::/dataset, "
        "or a detector format read by fabio (.edf, .cbf, ...)",
        path=path,
    )


def read_frame(spec: str | os.PathLike) -> np.ndarray:
    """Read a frame or a stack of frames from ``spec`` (a path, or ``file.h5::/dataset``)."""
    path_str, dataset = _split_h5(os.fspath(spec))
    path = Path(path_str)
    _check_file(path)
    kind = _format_of(path)
    try:
        if kind == "tiff":
            arr = _read_tiff(path)
        elif kind == "npy":
            arr = np.load(path, allow_pickle=False)
        elif kind == "h5":
            arr = _read_h5(path, dataset)
        else:
            arr = _read_fabio(path)
    except FrameError:
        raise
    except Exception as exc:  # the readers raise many kinds for corrupt files
        raise FrameError(f"not a readable image ({type(exc).__name__}: {exc})", path=path) from None
    return _check(arr, path)


def _check_dtype(dtype: np.dtype, path: Path | str | None) -> None:
    dtype = np.dtype(dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise FrameError(f"unsupported pixel dtype {dtype}; expected one of {', '.join(SUPPORTED_DTYPES)}", path=path)


def _check_shape(shape: tuple[int, ...], dtype: np.dtype, path: Path | str | None) -> None:
    """The checks of :func:`_check` that need only the shape and dtype (no pixel data)."""
    shape = tuple(int(n) for n in shape)
    _check_dtype(dtype, path)
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4:
        raise FrameError(f"looks like a colour image (shape {shape}); expected a detector frame", path=path)
    if len(shape) not in (2, 3):
        raise FrameError(f"expected a 2-D frame or a 3-D stack, got shape {shape}", path=path)
    if int(np.prod(shape)) == 0:
        raise FrameError(f"no pixels (shape {shape})", path=path)


def _check(arr: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(arr)
    _check_shape(arr.shape, arr.dtype, path)
    return arr


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    return tifffile.imread(path)


def _import_fabio(path: Path):
    try:
        import fabio
    except ImportError:
        raise FrameError("reading this format needs fabio: pip install fabio", path=path) from None
    return fabio


def _read_fabio(path: Path) -> np.ndarray:
    fabio = _import_fabio(path)
    img = fabio.open(str(path))
    if getattr(img, "nframes", 1) > 1:
        return np.stack([img.getframe(i).data for i in range(img.nframes)])
    return img.data


def _import_h5py(path: Path):
    try:
        import h5py
    except ImportError:
        raise FrameError("reading HDF5 needs h5py: pip install h5py", path=path) from None
    try:
        import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters of Eiger files)
    except ImportError:
        pass
    return h5py


def _h5_datasets(f, dataset: str | None, path: Path) -> list[str]:
    """The dataset(s) holding the frames of an open HDF5 file ``f``.

    A named ``dataset`` must exist. Without one: the NeXus default ``/entry/data/data``; else the
    ``/entry/data/data_NNNNNN`` links of an Eiger master file (all, in order); else the only 2-D/3-D
    dataset in the file; anything else is a FrameError listing the candidates.
    """
    import h5py

    if dataset is not None:
        if dataset not in f:
            raise FrameError(f"no dataset {dataset!r} in the file", path=path)
        if not isinstance(f[dataset], h5py.Dataset):
            raise FrameError(f"{dataset!r} is a group, not a dataset", path=path)
        return [dataset]
    if isinstance(f.get(NEXUS_DEFAULT), h5py.Dataset) and f[NEXUS_DEFAULT].ndim in (2, 3):
        return [NEXUS_DEFAULT]
    group = f.get("/entry/data")
    if isinstance(group, h5py.Group):
        eiger = sorted(k for k in group if k.startswith("data_") and k[5:].isdigit())
        if eiger:
            return [f"/entry/data/{k}" for k in eiger]
    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) else None)
    if len(found) != 1:
        raise FrameError(
            "name the dataset as FILE.h5::/path/to/data"
            + (f" (candidates: {', '.join(found[:5])})" if found else " (no 2-D/3-D dataset found)"),
            path=path,
        )
    return ["/" + found[0]]


def _read_h5(path: Path, dataset: str | None) -> np.ndarray:
    h5py = _import_h5py(path)
    with h5py.File(path, "r") as f:
        names = _h5_datasets(f, dataset, path)
        parts = [f[name][()] for name in names]
    return parts[0] if len(parts) == 1 else np.concatenate([p if p.ndim == 3 else p[None] for p in parts])


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
