"""Streaming frame input for ``gixdrt detect INPUTS...``.

:func:`iter_frames` walks the inputs in the order given and yields one :class:`Frame` at a time, holding at
most one frame (TIFF page, ``.npy`` row of a memory map, fabio frame), one HDF5 chunk row block, or one group of
``sum_n`` frames in memory. Inputs are paths (``a.tif``, ``stack.npy``, ``img.cbf``), HDF5 datasets
(``scan.h5::/entry/data/data``; without ``::/path`` the NeXus default, the ``data_NNNNNN`` links of an Eiger
master file, or the file's only 2-D/3-D dataset), or glob patterns (``scan_*.tif``; expanded in natural order,
so ``f_2`` comes before ``f_10``, when no file has that literal name).

Frame labels (the peak table's ``source`` column): ``a.tif`` (a file holding one frame), ``stack.npy[3]`` (frame 3
of a stack), ``scan.h5::/entry/data/data[12:15]`` (frames 12, 13, 14 summed), ``a.tif+b.tif`` (a group across
files; more than four pieces are shortened to ``first+...+last (N pieces)``).
"""
from __future__ import annotations

import glob
import itertools
import os
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FrameError
from .frames import (
    SUPPORTED_DTYPES,
    _check_dtype,
    _check_file,
    _check_shape,
    _format_of,
    _h5_datasets,
    _import_fabio,
    _import_h5py,
    _split_h5,
)

__all__ = ["Frame", "count_frames", "iter_frames"]

# Upper bound of one HDF5 read: a block of whole chunk rows, but never more than this many bytes.
_H5_BLOCK_BYTES = 256 * 2**20
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True, eq=False)
class Frame:
    """One (summed) frame of the inputs.

    index: 0-based position of the (summed) frame across all inputs, in the order given.
    source: label naming the file(s) and the index or range inside a stack (see the module docstring).
    data: [H, W] (``sum_n == 1``) or [N, H, W] (N = ``sum_n`` frames to be summed by the remap kernel), in
    the file's dtype (a group mixing dtypes gets their common type, float64 where that is not a pixel dtype).
    """

    index: int
    source: str
    data: np.ndarray


@dataclass(frozen=True)
class _Input:
    path: Path
    label: str  # the path as given (or as the glob returned it)
    kind: str  # 'tiff', 'npy', 'h5' or 'fabio'
    dataset: str | None


@dataclass
class _Part:
    """One stack (or single frame) inside an input: an HDF5 dataset, a TIFF, a .npy, a fabio file."""

    label: str
    n: int
    stacked: bool  # False: the file holds a single 2-D frame and its label carries no [index]
    read: Callable[[], Iterator[np.ndarray]]  # yields the n frames, [H, W] each, in order


# -------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------
def _natural_key(name: str) -> list:
    return [(0, int(tok), tok) if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def _resolve(inputs: Sequence[str] | str | os.PathLike) -> list[_Input]:
    """Expand globs and check that every file exists and has a known format (no file is opened)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    specs = [os.fspath(s) for s in inputs]
    if not specs:
        raise FrameError("no input files given")
    resolved: list[_Input] = []
    for spec in specs:
        path_str, dataset = _split_h5(spec)
        if dataset is not None and not dataset.startswith("/"):
            dataset = "/" + dataset
        if not Path(path_str).exists() and _GLOB_MAGIC.search(path_str):
            matches = sorted(glob.glob(path_str, recursive=True), key=_natural_key)
            if not matches:
                raise FrameError("no file matches this pattern", path=path_str)
        else:
            matches = [path_str]
        for match in matches:
            path = Path(match)
            _check_file(path)
            kind = _format_of(path)
            if dataset is not None and kind != "h5":
                raise FrameError(f"'::{dataset}' names an HDF5 dataset but this is not an HDF5 file", path=path)
            resolved.append(_Input(path=path, label=match, kind=kind, dataset=dataset))
    return resolved


@contextmanager
def _open(inp: _Input) -> Iterator[list[_Part]]:
    """Open one input and describe its stacks from the headers (no pixel data read); FrameError if unusable."""
    opener = {"tiff": _open_tiff, "npy": _open_npy, "h5": _open_h5, "fabio": _open_fabio}[inp.kind]
    with ExitStack() as stack:
        try:
            parts = stack.enter_context(opener(inp))
        except (FrameError, MemoryError):
            raise
        except Exception as exc:  # the readers raise many kinds for corrupt files
            problem = f"not a readable image ({type(exc).__name__}: {exc}){_hint(inp.kind, exc)}"
            raise FrameError(problem, path=inp.label) from None
        yield parts  # errors of the caller's block pass through unchanged


def _hint(kind: str, exc: Exception) -> str:
    return " (is hdf5plugin installed?)" if kind == "h5" and "filter" in str(exc).lower() else ""


@contextmanager
def _open_tiff(inp: _Input) -> Iterator[list[_Part]]:
    import tifffile

    with tifffile.TiffFile(inp.path) as tif:
        pages = tif.pages
        n = len(pages)
        if n == 0:
            raise FrameError("no pages in the TIFF", path=inp.label)
        first = pages[0]
        shape, dtype = tuple(first.shape), np.dtype(first.dtype)
        if n == 1 and len(shape) == 3 and first.planarconfig == 2:
            # One page of S separate planes (tifffile's old default for a [3|4, H, W] array): S frames, as
            # read_frame sees them; reading the whole page is bounded by one page.
            _check_shape(shape, dtype, inp.label)
            yield [_Part(inp.label, shape[0], True, lambda: iter(_checked(first.asarray(), inp.label)))]
            return
        if len(shape) == 3 and getattr(first, "samplesperpixel", 1) > 1:
            raise FrameError(f"looks like a colour image (shape {shape}); expected a detector frame", path=inp.label)
        if len(shape) != 2:
            raise FrameError(f"page 0 has shape {shape}; expected 2-D pages", path=inp.label)
        _check_shape((n, *shape) if n > 1 else shape, dtype, inp.label)

        def read() -> Iterator[np.ndarray]:
            for i in range(n):
                page = pages[i]  # one page at a time: never the whole stack
                if tuple(page.shape) != shape:
                    raise FrameError(f"page {i} has shape {tuple(page.shape)}, page 0 has {shape}", path=inp.label)
                yield _checked(page.asarray(), inp.label)

        yield [_Part(inp.label, n, n > 1, read)]


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype]:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)


@contextmanager
def _open_npy(inp: _Input) -> Iterator[list[_Part]]:
    shape, _fortran, dtype = _npy_header(inp.path)
    _check_shape(shape, dtype, inp.label)  # before mapping: a clear message for empty or object arrays
    arr = np.load(inp.path, mmap_mode="r", allow_pickle=False)
    # Frames are copied out of the map one at a time, so no view of it outlives the file.
    if arr.ndim == 2:
        yield [_Part(inp.label, 1, False, lambda: iter([np.array(arr)]))]
    else:
        yield [_Part(inp.label, arr.shape[0], True, lambda: (np.array(arr[i]) for i in range(arr.shape[0])))]


@contextmanager
def _open_h5(inp: _Input) -> Iterator[list[_Part]]:
    h5py = _import_h5py(inp.path)
    with h5py.File(inp.path, "r") as f:
        parts = []
        for name in _h5_datasets(f, inp.dataset, inp.path):
            label = f"{inp.label}::{name}"
            try:
                ds = f[name]
            except (KeyError, OSError) as exc:  # e.g. an Eiger data file missing next to its master file
                raise FrameError(f"cannot open dataset {name} ({exc})", path=inp.label) from None
            if ds.shape is None or ds.size == 0:
                raise FrameError(f"empty dataset {name} (shape {ds.shape})", path=inp.label)
            _check_shape(ds.shape, ds.dtype, label)
            if ds.ndim == 2:
                parts.append(_Part(label, 1, False, lambda ds=ds: iter([ds[()]])))
            else:
                parts.append(_Part(label, ds.shape[0], True, lambda ds=ds: _h5_blocks(ds)))
        yield parts


def _h5_blocks(ds) -> Iterator[np.ndarray]:
    """Frames of a 3-D dataset, read a block of whole chunk rows at a time (each chunk decompressed once)."""
    n = ds.shape[0]
    frame_bytes = max(1, int(np.prod(ds.shape[1:])) * ds.dtype.itemsize)
    rows = ds.chunks[0] if ds.chunks else 1
    step = max(1, min(rows, _H5_BLOCK_BYTES // frame_bytes))
    for start in range(0, n, step):
        yield from ds[start : min(start + step, n)]


@contextmanager
def _open_fabio(inp: _Input) -> Iterator[list[_Part]]:
    fabio = _import_fabio(inp.path)
    img = fabio.open(str(inp.path))
    try:
        n = int(getattr(img, "nframes", 1) or 1)
        first = np.asarray(img.data)
        if first.ndim != 2:
            raise FrameError(f"frame 0 has shape {first.shape}; expected a 2-D frame", path=inp.label)
        _check_shape((n, *first.shape) if n > 1 else first.shape, first.dtype, inp.label)

        def read() -> Iterator[np.ndarray]:
            yield first
            for i in range(1, n):  # getframe(i) of a multi-frame file reads frame i of that file only
                yield _checked(np.asarray(img.getframe(i).data), inp.label)

        yield [_Part(inp.label, n, n > 1, read)]
    finally:
        close = getattr(img, "close", None)
        if close is not None:
            close()


def _checked(frame: np.ndarray, label: str) -> np.ndarray:
    _check_dtype(frame.dtype, label)
    return frame


# -------------------------------------------------------------------------------------------------
# Public API
# -------------------------------------------------------------------------------------------------
def _check_sum(sum_n: int) -> int:
    if isinstance(sum_n, bool) or int(sum_n) != sum_n or sum_n < 1:
        raise ValueError(f"sum_n must be an integer ≥ 1, got {sum_n!r}")
    return int(sum_n)


def count_frames(inputs: Sequence[str], sum_n: int = 1) -> int:
    """Number of (summed) frames :func:`iter_frames` will yield, from the files' headers (no pixel data read;
    fabio formats read their first frame when opened). Raises FrameError like :func:`iter_frames`."""
    sum_n = _check_sum(sum_n)
    total = 0
    for inp in _resolve(inputs):
        with _open(inp) as parts:
            total += sum(p.n for p in parts)
    return total // sum_n


def _label(pieces: list[list]) -> str:
    """pieces: [label, stacked, first index, stop] runs of consecutive frames → one source label."""
    names = []
    for label, stacked, start, stop in pieces:
        if not stacked:
            names.append(label)
        elif stop - start == 1:
            names.append(f"{label}[{start}]")
        else:
            names.append(f"{label}[{start}:{stop}]")
    if len(names) > 4:
        return f"{names[0]}+...+{names[-1]} ({len(names)} pieces)"
    return "+".join(names)


def _stack(frames: list[np.ndarray], labels: list[str]) -> np.ndarray:
    shape = frames[0].shape
    for frame, label in zip(frames, labels):
        if frame.shape != shape:
            problem = f"frame shape {frame.shape} differs from {shape} of {labels[0]}, summed with it"
            raise FrameError(problem, path=label)
    dtype = np.result_type(*{f.dtype for f in frames})
    if dtype.name not in SUPPORTED_DTYPES:  # e.g. uint32 with int32 → int64: float64 holds both exactly
        dtype = np.dtype(np.float64)
    return np.stack(frames).astype(dtype, copy=False)


def iter_frames(
    inputs: Sequence[str], *, sum_n: int = 1, expect_shape: tuple[int, int] | None = None
) -> Iterator[Frame]:
    """Yield the frames of ``inputs`` one (summed) frame at a time, in the order given.

    inputs: paths, ``file.h5::/dataset`` specs or glob patterns (see the module docstring). All inputs are
    resolved and checked for existence and format before the first frame is read.
    sum_n: group this many consecutive frames, across file boundaries; ``Frame.data`` is then [sum_n, H, W]
    (the remap kernel sums it). A trailing incomplete group is dropped with a warning.
    expect_shape: (H, W) every frame must have (e.g. the geometry's raw frame shape).
    Raises FrameError naming the file and the problem.
    """
    sum_n = _check_sum(sum_n)
    expect = None if expect_shape is None else tuple(int(n) for n in expect_shape)
    resolved = _resolve(inputs)
    return _iterate(resolved, sum_n, expect)


def _walk(resolved: list[_Input]) -> Iterator[tuple[_Part, int, np.ndarray]]:
    """(part, index inside the part, [H, W] frame) for every frame of every input, one file open at a time."""
    for inp in resolved:
        with _open(inp) as parts:
            for part in parts:
                frames = part.read()
                for i in itertools.count():
                    try:
                        frame = next(frames, None)
                    except (FrameError, MemoryError):
                        raise
                    except Exception as exc:  # corrupt data past a good header
                        problem = f"not a readable image at frame {i} ({type(exc).__name__}: {exc})"
                        raise FrameError(problem + _hint(inp.kind, exc), path=part.label) from None
                    if frame is None:
                        break
                    yield part, i, frame


def _iterate(resolved: list[_Input], sum_n: int, expect: tuple[int, ...] | None) -> Iterator[Frame]:
    index = 0
    group: list[np.ndarray] = []
    group_labels: list[str] = []
    pieces: list[list] = []  # runs of consecutive frames of one part: [label, stacked, start, stop]
    for part, i, frame in _walk(resolved):
        label = f"{part.label}[{i}]" if part.stacked else part.label
        if expect is not None and tuple(frame.shape) != expect:
            raise FrameError(f"frame shape {tuple(frame.shape)} does not match the expected {expect}", path=label)
        if sum_n == 1:
            yield Frame(index, label, frame)
            index += 1
            continue
        group.append(frame)
        group_labels.append(label)
        if pieces and pieces[-1][0] == part.label and pieces[-1][3] == i:
            pieces[-1][3] = i + 1
        else:
            pieces.append([part.label, part.stacked, i, i + 1])
        if len(group) == sum_n:
            data, source = _stack(group, group_labels), _label(pieces)
            group, group_labels, pieces = [], [], []
            yield Frame(index, source, data)
            index += 1
    if group:
        warnings.warn(
            f"{len(group)} frame(s) left over ({_label(pieces)}): the frames do not divide into groups of "
            f"{sum_n}; the incomplete last group is dropped",
            stacklevel=2,
        )
