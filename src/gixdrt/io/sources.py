"""Streaming frame input for ``gixdrt detect INPUTS...``.

:func:`iter_frames` walks the inputs in the order given and yields one :class:`Frame` at a time, holding at
most one frame (TIFF page, ``.npy`` row of a memory map, fabio frame), one HDF5 chunk row block, or one group of
``sum_n`` frames in memory. Inputs are paths (``a.tif``, ``stack.npy``, ``img.cbf``), HDF5 datasets
(``scan.h5::/entry/data/data``; without ``::/path`` the NeXus default, the ``data_NNNNNN`` links of an Eiger
master file, or the file's only 2-D/3-D dataset), or glob patterns (``scan_*.tif``; expanded in natural order,
so ``f_2`` comes before ``f_10``, when no file has that literal name). Each file is read by its format's
reader (:mod:`gixdrt.io.readers`, shared with :func:`gixdrt.io.read_frame`), which checks its header before
reading pixel data.

Frame labels (the peak table's ``source`` column): ``a.tif`` (a file holding one frame), ``stack.npy[3]`` (frame 3
of a stack), ``scan.h5::/entry/data/data[12:15]`` (frames 12, 13, 14 summed), ``a.tif+b.tif`` (a group across
files; more than four pieces are shortened to ``first+...+last (N pieces)``).
"""
from __future__ import annotations

import glob
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FrameError
from .readers import H5_BLOCK_BYTES, SUPPORTED_DTYPES, Stack, check_file, format_of, reader_for, split_spec

__all__ = ["Frame", "InputFile", "count_frames", "first_frame_shape", "input_files", "iter_frames", "iter_pieces",
           "resolve_inputs", "stack_sizes"]

# Upper bound of one HDF5 read: a block of whole chunk rows, but never more than this many bytes.
_H5_BLOCK_BYTES = H5_BLOCK_BYTES
_GLOB_MAGIC = re.compile(r"[*?[]")


@dataclass(frozen=True, eq=False)
class Frame:
    """One (summed) frame of the inputs.

    index: 0-based position of the (summed) frame across all inputs, in the order given.
    source: label naming the file(s) and the index or range inside a stack (see the module docstring).
    data: [H, W] (``sum_n == 1``) or [N, H, W] (N = ``sum_n`` frames to be summed by the remap kernel), in
    the file's dtype, native byte order (a group mixing dtypes gets their common type, float64 where that
    is not a pixel dtype).
    """

    index: int
    source: str
    data: np.ndarray


@dataclass(frozen=True)
class InputFile:
    """One input file as resolved from the inputs given (globs expanded; see :func:`resolve_inputs`)."""

    path: Path
    label: str  # the path as given (or as the glob returned it)
    kind: str  # 'tiff', 'npy', 'h5' or 'fabio'
    dataset: str | None


# -------------------------------------------------------------------------------------------------
# Inputs
# -------------------------------------------------------------------------------------------------
def _natural_key(name: str) -> list:
    return [(0, int(tok), tok) if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def _resolve(inputs: Sequence[str] | str | os.PathLike) -> list[InputFile]:
    """Expand globs and check that every file exists, is readable and has a known format (none is opened)."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    specs = [os.fspath(s) for s in inputs]
    if not specs:
        raise FrameError("no input files given")
    resolved: list[InputFile] = []
    for spec in specs:
        path_str, dataset = split_spec(spec)
        if not os.path.lexists(path_str) and _GLOB_MAGIC.search(path_str):
            matches = sorted(glob.glob(path_str, recursive=True), key=_natural_key)
            if not matches:
                raise FrameError("no file matches this pattern", path=path_str)
        else:
            matches = [path_str]
        for match in matches:
            path = Path(match)
            check_file(path, match)
            kind = format_of(path, match)
            if dataset is not None and kind != "h5":
                raise FrameError(f"'::{dataset}' names an HDF5 dataset but this is not an HDF5 file", path=match)
            resolved.append(InputFile(path=path, label=match, kind=kind, dataset=dataset))
    return resolved


def resolve_inputs(inputs: Sequence[str] | str | os.PathLike) -> list[InputFile]:
    """The input files ``inputs`` name, in order (globs expanded), each checked to exist with a known format; none
    is opened. Picklable: a worker process can read a range of frames of one with :func:`iter_pieces`."""
    return _resolve(inputs)


def input_files(inputs: Sequence[str] | str | os.PathLike) -> list[Path]:
    """The files ``inputs`` name (globs expanded), each checked to exist with a known format; none is opened."""
    return [inp.path for inp in _resolve(inputs)]


def _reader(inp: InputFile, expect: tuple[int, ...] | None = None, note: str | None = None):
    return reader_for(inp.path, label=inp.label, dataset=inp.dataset, expect_shape=expect, block_bytes=_H5_BLOCK_BYTES,
                      expect_note=note)


# -------------------------------------------------------------------------------------------------
# Public API
# -------------------------------------------------------------------------------------------------
def _check_sum(sum_n: int) -> int:
    if isinstance(sum_n, bool) or int(sum_n) != sum_n or sum_n < 1:
        raise ValueError(f"sum_n must be an integer ≥ 1, got {sum_n!r}")
    return int(sum_n)


def count_frames(inputs: Sequence[str], sum_n: int = 1, *, expect_shape: tuple[int, int] | None = None,
                 expect_note: str | None = None) -> int:
    """Number of (summed) frames :func:`iter_frames` will yield, from the files' headers (no pixel data read);
    with ``expect_shape``, every header's frame shape is checked against it. Raises FrameError like
    :func:`iter_frames`."""
    sum_n = _check_sum(sum_n)
    expect = None if expect_shape is None else tuple(int(n) for n in expect_shape)
    total = 0
    for inp in _resolve(inputs):
        with _reader(inp, expect, expect_note) as reader:
            total += sum(stack.n for stack in reader.stacks)
    return total // sum_n


def first_frame_shape(files: Sequence[InputFile]) -> tuple[int, int]:
    """(H, W) of the first frame of ``files`` (from :func:`resolve_inputs`): from its header, else from the frame
    itself. FrameError when no file holds a frame."""
    for inp in files:
        with reader_for(inp.path, label=inp.label, dataset=inp.dataset) as reader:
            for k, stack in enumerate(reader.stacks):
                if stack.n > 0:
                    if stack.frame_shape is not None:
                        return (int(stack.frame_shape[0]), int(stack.frame_shape[1]))
                    frames = reader.frames(k, 0, 1)
                    try:
                        first = next(frames)
                    finally:
                        frames.close()
                    return (int(first.shape[0]), int(first.shape[1]))
    raise FrameError(f"{files[0].label if files else 'FRAMES'}: no frames")


def stack_sizes(files: Sequence[InputFile], *, expect_shape: tuple[int, int] | None = None,
                expect_note: str | None = None) -> list[list[int]]:
    """Frames in each stack of each of ``files`` (from :func:`resolve_inputs`), from the headers (no pixel data
    read), checked against ``expect_shape`` as :func:`count_frames` does."""
    expect = None if expect_shape is None else tuple(int(n) for n in expect_shape)
    sizes = []
    for inp in files:
        with _reader(inp, expect, expect_note) as reader:
            sizes.append([stack.n for stack in reader.stacks])
    return sizes


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
    inputs: Sequence[str], *, sum_n: int = 1, expect_shape: tuple[int, int] | None = None,
    expect_note: str | None = None,
) -> Iterator[Frame]:
    """Yield the frames of ``inputs`` one (summed) frame at a time, in the order given.

    inputs: paths, ``file.h5::/dataset`` specs or glob patterns (see the module docstring). All inputs are
    resolved and checked for existence and format before the first frame is read.
    sum_n: group this many consecutive frames, across file boundaries; ``Frame.data`` is then [sum_n, H, W]
    (the remap kernel sums it). A trailing incomplete group is dropped with a warning.
    expect_shape: (H, W) every frame must have (e.g. the geometry's raw frame shape).
    expect_note: where expect_shape comes from, quoted when a frame differs (``Geometry.frame_shape_note``).
    Raises FrameError naming the file and the problem.
    """
    sum_n = _check_sum(sum_n)
    expect = None if expect_shape is None else tuple(int(n) for n in expect_shape)
    resolved = _resolve(inputs)
    return _iterate(_walk(resolved, expect, expect_note), sum_n)


def iter_pieces(
    pieces: Sequence[tuple[InputFile, int, int, int]], *, sum_n: int = 1, first_index: int = 0,
    expect_shape: tuple[int, int] | None = None, expect_note: str | None = None,
) -> Iterator[Frame]:
    """Yield the frames of a part of the inputs, as :func:`iter_frames` yields them for the whole.

    pieces: runs of consecutive frames ``(input, stack, start, stop)``: frames ``start…stop-1`` of stack ``stack``
    (index into the reader's stacks) of ``input`` (from :func:`resolve_inputs`), in the order of the whole run;
    only those frames are read. sum_n: group size as in :func:`iter_frames` (the pieces must hold whole groups).
    first_index: the (summed) frame index of the first frame yielded. Labels equal :func:`iter_frames`'s.
    """
    sum_n = _check_sum(sum_n)
    expect = None if expect_shape is None else tuple(int(n) for n in expect_shape)
    return _iterate(_walk_pieces(list(pieces), expect, expect_note), sum_n, int(first_index))


def _walk_pieces(pieces: list[tuple[InputFile, int, int, int]], expect: tuple[int, ...] | None,
                 note: str | None) -> Iterator[tuple[Stack, int, np.ndarray]]:
    """Like :func:`_walk` for the frames of ``pieces``; consecutive pieces of one input share one open reader."""
    i = 0
    while i < len(pieces):
        inp = pieces[i][0]
        j = i
        while j < len(pieces) and pieces[j][0] == inp:
            j += 1
        with _reader(inp, expect, note) as reader:
            for _, k, start, stop in pieces[i:j]:
                stack = reader.stacks[k]
                for offset, frame in enumerate(reader.frames(k, start, stop)):
                    yield stack, start + offset, frame
        i = j


def _walk(resolved: list[InputFile], expect: tuple[int, ...] | None,
          note: str | None = None) -> Iterator[tuple[Stack, int, np.ndarray]]:
    """(stack, index inside the stack, [H, W] frame) for every frame of every input, one file open at a time."""
    for inp in resolved:
        with _reader(inp, expect, note) as reader:
            for k, stack in enumerate(reader.stacks):
                for i, frame in enumerate(reader.frames(k)):
                    yield stack, i, frame


def _iterate(walk: Iterator[tuple[Stack, int, np.ndarray]], sum_n: int, index: int = 0) -> Iterator[Frame]:
    group: list[np.ndarray] = []
    group_labels: list[str] = []
    pieces: list[list] = []  # runs of consecutive frames of one part: [label, stacked, start, stop]
    for part, i, frame in walk:
        label = part.frame_label(i)  # the reader has checked the frame against expect (header and frame)
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
