"""One reader per frame-file format, shared by :func:`gixdrt.io.read_frame` and :func:`gixdrt.io.iter_frames`.

A reader opens one input file, reads and checks its header(s) without reading pixel data, describes the
stacks it holds (:class:`Stack`: frame count, frame shape, dtype), and then yields the frames of a stack, or
of a range of frames of a stack, one at a time::

    with reader_for("scan.h5", dataset="/entry/data/data", expect_shape=(2048, 2048)) as r:
        r.stacks                        # [Stack(label='scan.h5::/entry/data/data', n=100, ...)]
        for frame in r.frames(0, 10, 20):   # frames 10…19 of stack 0, [H, W] each
            ...
        block = r.read(0, 10, 20)       # the same frames as one [10, H, W] array
        everything = r.read_all()       # what read_frame returns: [H, W] or [N, H, W]

Formats: TIFF (tifffile), NumPy ``.npy`` (memory-mapped), HDF5 (h5py; bitshuffle-LZ4 and LZ4 chunks of whole
frames, as Eiger files hold them, are read raw and decoded by :mod:`gixdrt.io.decode`; hdf5plugin is loaded when
installed for the other compressed layouts), and the detector formats read by fabio (EDF and CBF with extra
checks of their headers, .img, .mccd, .sfrm, ...).

Checks (each a :class:`~gixdrt.errors.FrameError` naming the file and the problem, never another exception):

- the path is an existing, readable, non-empty regular file: not a directory, FIFO or device, not a
  dangling symbolic link or a symbolic-link loop (:func:`check_file`);
- HDF5 bitshuffle-LZ4 and LZ4 chunks are checked before they are decompressed (a corrupt chunk is a
  FrameError naming the frame, not a crash inside the HDF5 filter);
- every declared frame shape, taken from the header before any pixel data is read, equals ``expect_shape``
  when one is given, else holds at most :data:`MAX_FRAME_PIXELS` pixels;
- declared data sizes fit in the file where the format says how large they are (truncated .npy, TIFF,
  EDF and CBF files), and CBF data match their Content-MD5 checksum;
- frames come back 2-D, in a supported dtype, in native byte order and C order (big-endian ``>f4`` data
  are returned as native float32).

A new format is a :class:`Reader` subclass with ``_open`` (header → stacks) and ``_frames`` (frames
``start…stop-1`` of a stack); the checks and the error handling above are the base class's.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import math
import mmap
import os
import re
import stat
import struct
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import FrameError
from . import decode
from .atomic import split_spec

__all__ = [
    "MAX_FRAME_PIXELS",
    "CbfReader",
    "EdfReader",
    "FabioReader",
    "H5Reader",
    "NpyReader",
    "Reader",
    "Stack",
    "TiffReader",
    "check_file",
    "format_of",
    "reader_for",
    "split_spec",
]

SUPPORTED_DTYPES = ("float32", "float64", "uint8", "uint16", "int16", "uint32", "int32")
TIFF_SUFFIXES = frozenset({".tif", ".tiff"})
NPY_SUFFIXES = frozenset({".npy"})
H5_SUFFIXES = frozenset({".h5", ".hdf5", ".nxs", ".hdf", ".nx5"})
FABIO_SUFFIXES = frozenset({".edf", ".cbf", ".img", ".mccd", ".mar3450", ".sfrm", ".gfrm", ".esperanto", ".msk"})
NEXUS_DEFAULT = "/entry/data/data"

#: Largest frame (H × W pixels) read without an ``expect_shape``: 16384 × 16384, 1 GiB of float32. A header
#: declaring more is refused before any memory is allocated for it.
MAX_FRAME_PIXELS = 2**28
#: Upper bound of one HDF5 read: a block of whole chunk rows, but never more than this many bytes.
H5_BLOCK_BYTES = 256 * 2**20
#: HDF5 filters whose chunks the HDF5 reader decodes itself (:mod:`gixdrt.io.decode`): bitshuffle (with its LZ4
#: option) and LZ4.
H5_FILTER_BITSHUFFLE = 32008
H5_FILTER_LZ4 = 32004
_BITSHUFFLE_LZ4 = 2  # bitshuffle filter option (its 5th value): LZ4-compress the bit-shuffled blocks
_MAX_MESSAGE = 300  # characters of a library's error message quoted in a FrameError


# -------------------------------------------------------------------------------------------------
# Inputs: specs, files, formats
# -------------------------------------------------------------------------------------------------
_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _stat_problem(path: Path, exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    if exc.errno == errno.ENOENT:
        if os.path.islink(path):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            return f"dangling symbolic link: its target {target} does not exist"
        return "file not found"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a part of the path is not a directory)"
    if exc.errno == errno.EACCES:
        return "permission denied: cannot reach the file"
    return f"cannot access the file ({exc.strerror or type(exc).__name__})"


def check_file(path: str | os.PathLike, label: str | None = None) -> os.stat_result:
    """The file's stat if ``path`` is an existing, readable, non-empty regular file; else a FrameError.

    Never opens the file (opening a FIFO would block). ``label`` names the file in messages (default: path).
    """
    path = Path(path)
    label = os.fspath(path) if label is None else label
    try:
        st = os.stat(path)
    except OSError as exc:
        raise FrameError(_stat_problem(path, exc), path=label) from None
    except ValueError as exc:  # e.g. an embedded NUL byte
        raise FrameError(f"not a valid path ({exc})", path=repr(label)) from None
    if stat.S_ISDIR(st.st_mode):
        raise FrameError("is a directory, expected a frame file", path=label)
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _SPECIAL_FILES if test(st.st_mode)), "a special file")
        raise FrameError(f"not a regular file: {what}", path=label)
    if st.st_size == 0:
        raise FrameError("empty file", path=label)
    if not os.access(path, os.R_OK):
        raise FrameError("permission denied: the file is not readable", path=label)
    return st


def format_of(path: str | os.PathLike, label: str | None = None) -> str:
    """'tiff', 'npy', 'h5' or 'fabio' from the suffix; FrameError (naming ``label``, default the path) otherwise."""
    path = Path(path)
    suffix = path.suffix.lower()
    kinds = (("tiff", TIFF_SUFFIXES), ("npy", NPY_SUFFIXES), ("h5", H5_SUFFIXES), ("fabio", FABIO_SUFFIXES))
    for kind, suffixes in kinds:
        if suffix in suffixes:
            return kind
    raise FrameError(
        f"unknown frame format {suffix or '(no suffix)'}; expected .tif/.tiff, .npy, .h5::/dataset, "
        "or a detector format read by fabio (.edf, .cbf, ...)",
        path=os.fspath(path) if label is None else label,
    )


# -------------------------------------------------------------------------------------------------
# Checks of declared shapes and dtypes
# -------------------------------------------------------------------------------------------------
def check_dtype(dtype, label: str | None) -> np.dtype:
    """``dtype`` (any byte order) if it is a supported pixel dtype, else a FrameError."""
    dtype = np.dtype(dtype)
    if dtype.name not in SUPPORTED_DTYPES:
        raise FrameError(f"unsupported pixel dtype {dtype}; expected one of {', '.join(SUPPORTED_DTYPES)}", path=label)
    return dtype


def check_layout(shape: tuple[int, ...], label: str | None) -> tuple[int, ...]:
    """FrameError unless ``shape`` (a whole stored array) is one 2-D frame or a 3-D stack with pixels."""
    shape = tuple(int(n) for n in shape)
    if len(shape) == 3 and shape[-1] in (3, 4) and shape[0] > 4:
        raise FrameError(f"looks like a colour image (shape {shape}); expected a detector frame", path=label)
    if len(shape) not in (2, 3):
        raise FrameError(f"expected a 2-D frame or a 3-D stack, got shape {shape}", path=label)
    if math.prod(shape) == 0:
        raise FrameError(f"no pixels (shape {shape})", path=label)
    return shape


def _native(dtype) -> np.dtype:
    return np.dtype(dtype).newbyteorder("=")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if len(text) > _MAX_MESSAGE:
        text = text[: _MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _past_end(size: int) -> str:
    return f"past the end of the file ({size} bytes)"


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB"


@dataclass(frozen=True)
class Stack:
    """One stack of frames inside an input, as its header declares it (no pixel data read).

    label: names the stack in frame labels and messages: the input as given, or ``input::/dataset``.
    n: number of frames.
    frame_shape: (H, W) of every frame; None where the format's header does not say (checked per frame).
    dtype: dtype of the frames returned (native byte order); None where the header does not say.
    stacked: False when the input holds a single 2-D frame: its label then carries no ``[index]``.
    """

    label: str
    n: int
    frame_shape: tuple[int, int] | None
    dtype: np.dtype | None
    stacked: bool

    def frame_label(self, i: int) -> str:
        return f"{self.label}[{i}]" if self.stacked else self.label


# -------------------------------------------------------------------------------------------------
# The reader base class
# -------------------------------------------------------------------------------------------------
class Reader:
    """One input file of one format; a context manager (``with reader_for(...) as r:``).

    path: the file. label: names it in messages and frame labels (default: the path as given).
    dataset: an HDF5 dataset path (HDF5 only; None: the file's default, see :class:`H5Reader`).
    expect_shape: (H, W) every frame must have, checked against the header before pixel data is read;
    None: frames of at most :data:`MAX_FRAME_PIXELS` pixels.
    expect_note: where expect_shape comes from, for the message when a frame differs (e.g. the config keys).
    block_bytes: the most bytes one underlying read may return (HDF5 chunk-row blocks).
    """

    kind = ""

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        label: str | None = None,
        dataset: str | None = None,
        expect_shape: tuple[int, int] | None = None,
        block_bytes: int = H5_BLOCK_BYTES,
        expect_note: str | None = None,
    ):
        self.path = Path(path)
        self.label = os.fspath(path) if label is None else str(label)
        self.dataset = dataset
        self.expect_shape = None if expect_shape is None else tuple(int(n) for n in expect_shape)
        self.block_bytes = int(block_bytes)
        self.expect_note = expect_note
        self.size = 0  # bytes in the file, from open()
        self.stacks: list[Stack] = []
        self._is_open = False

    # ---- life cycle ------------------------------------------------------------------------------
    def __enter__(self) -> Reader:
        return self.open()

    def __exit__(self, *exc_info) -> None:
        self.close()

    def open(self) -> Reader:
        """Check the file, read its header(s) and describe its stacks (no pixel data read)."""
        if self._is_open:
            return self
        self.size = check_file(self.path, self.label).st_size
        from .atomic import protect

        protect(self.path)  # no output of this process may replace it
        try:
            stacks = self._open()
        except BaseException as exc:
            self._close_quietly()
            if isinstance(exc, FrameError) or not isinstance(exc, Exception):
                raise
            raise self._error(exc, "", self.label) from None
        self.stacks = list(stacks)
        self._is_open = True
        return self

    def close(self) -> None:
        self._is_open = False
        self._close_quietly()

    def _close_quietly(self) -> None:
        try:
            self._close()
        except Exception:  # closing a corrupt file can fail too; nothing is lost
            pass

    # ---- reading ---------------------------------------------------------------------------------
    def frames(self, k: int = 0, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
        """Frames ``start…stop-1`` (default: all) of stack ``k``, [H, W] each, one at a time.

        Each frame is checked (2-D, the declared shape and a supported dtype) and returned in native byte
        order and C order. Errors while reading are FrameErrors naming the stack and the frame.
        """
        if not self._is_open:
            raise RuntimeError("open the reader first (with reader_for(...) as r: ...)")
        stack = self.stacks[k]
        start, stop = _frame_range(stack, start, stop)
        return self._deliver(k, stack, start, stop)

    def read(self, k: int = 0, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Frames ``start…stop-1`` (default: all) of stack ``k`` as one [stop - start, H, W] array: in one read
        where the format allows (HDF5, .npy), else frame by frame into one array; checked as :meth:`frames`."""
        if not self._is_open:
            raise RuntimeError("open the reader first (with reader_for(...) as r: ...)")
        stack = self.stacks[k]
        start, stop = _frame_range(stack, start, stop)
        try:
            block = self._read(k, start, stop)
        except FrameError:
            raise
        except Exception as exc:
            raise self._error(exc, f" in frames {start}:{stop}", stack.label) from None
        if block is None:
            return self._gather([(k, start, stop)])
        block = np.asarray(block)
        if stack.frame_shape is None or block.shape != (stop - start, *stack.frame_shape):
            problem = f"frames {start}:{stop} have shape {block.shape}, the header declares {stack.frame_shape}"
            raise FrameError(problem, path=stack.label)
        check_dtype(block.dtype, stack.label)
        if not block.dtype.isnative or not block.flags.c_contiguous:
            block = np.ascontiguousarray(block, dtype=_native(block.dtype))
        return block

    def read_all(self) -> np.ndarray:
        """Every frame of the input: [H, W] for a file holding one frame, else [N, H, W] (stacks concatenated)."""
        if not self._is_open:
            raise RuntimeError("open the reader first (with reader_for(...) as r: ...)")
        if len(self.stacks) == 1:
            if self.stacks[0].stacked:
                return self.read(0)
            frames = self.frames(0)
            try:
                return next(frames)
            finally:
                frames.close()
        shapes = {s.frame_shape for s in self.stacks if s.frame_shape is not None}
        if len(shapes) > 1:
            first, other = self.stacks[0], next(s for s in self.stacks if s.frame_shape != self.stacks[0].frame_shape)
            problem = f"{other.label} has frames of shape {other.frame_shape}, {first.label} has {first.frame_shape}"
            raise FrameError(problem, path=self.label)
        return self._gather([(k, 0, s.n) for k, s in enumerate(self.stacks)])

    def _gather(self, parts: list[tuple[int, int, int]]) -> np.ndarray:
        """Frames of (stack, start, stop) parts copied into one preallocated [N, H, W] array."""
        total = sum(stop - start for _, start, stop in parts)
        out: np.ndarray | None = None
        j = 0
        declared = [self.stacks[k].dtype for k, _, _ in parts if self.stacks[k].dtype is not None]
        for k, start, stop in parts:
            for frame in self.frames(k, start, stop):
                if out is None:
                    out = self._allocate((total, *frame.shape), _common_dtype([frame.dtype, *declared]))
                elif frame.shape != out.shape[1:]:
                    raise FrameError(f"frame shape {frame.shape} differs from {out.shape[1:]}", path=self.label)
                elif frame.dtype != out.dtype and np.result_type(frame.dtype, out.dtype) != out.dtype:
                    out = out.astype(_common_dtype([frame.dtype, out.dtype]))
                out[j] = frame
                j += 1
        if out is None or j != total:  # cannot happen: every stack holds ≥ 1 frame and _deliver yields them all
            raise FrameError(f"read {j} frames, expected {total}", path=self.label)
        return out

    def _allocate(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        try:
            return np.empty(shape, dtype)
        except (MemoryError, ValueError):
            nbytes = math.prod(shape) * dtype.itemsize
            problem = f"not enough memory for {shape[0]} frames of {shape[1]}×{shape[2]} {dtype} ({_gib(nbytes)})"
            raise FrameError(problem, path=self.label) from None

    def _deliver(self, k: int, stack: Stack, start: int, stop: int) -> Iterator[np.ndarray]:
        raw = self._frames(k, start, stop)
        try:
            for i in range(start, stop):
                try:
                    frame = next(raw)
                except StopIteration:
                    problem = f"frame {i} is missing (the header declares {stack.n})"
                    raise FrameError(problem, path=stack.label) from None
                except FrameError:
                    raise
                except Exception as exc:  # corrupt data past a good header
                    raise self._error(exc, f" at frame {i}", stack.label) from None
                yield self._checked(frame, stack, i)
        finally:
            raw.close()

    def _checked(self, frame, stack: Stack, i: int) -> np.ndarray:
        frame = np.asarray(frame)
        if frame.ndim != 2:
            raise FrameError(f"frame {i} has shape {frame.shape}; expected a 2-D frame", path=stack.label)
        if stack.frame_shape is None:
            self._check_frame_shape(frame.shape, stack, i)
        elif frame.shape != stack.frame_shape:
            problem = f"frame {i} has shape {frame.shape}, the header declares {stack.frame_shape}"
            raise FrameError(problem, path=stack.label)
        check_dtype(frame.dtype, stack.label)
        if not frame.dtype.isnative or not frame.flags.c_contiguous:
            frame = np.ascontiguousarray(frame, dtype=_native(frame.dtype))
        return frame

    # ---- building stacks from headers ---------------------------------------------------------------
    def _stack(self, label: str, shape: tuple[int, ...], dtype) -> Stack:
        """Check what a header declares (``shape``: the stored array, [H, W] or [N, H, W]) and describe it."""
        shape = tuple(int(n) for n in shape)
        if dtype is not None:
            dtype = check_dtype(dtype, label)
        shape = check_layout(shape, label)
        stacked = len(shape) == 3
        stack = Stack(label, shape[0] if stacked else 1, shape[-2:], None if dtype is None else _native(dtype), stacked)
        self._check_frame_shape(stack.frame_shape, stack, 0)
        return stack

    def _check_frame_shape(self, shape: tuple[int, ...], stack: Stack, i: int) -> None:
        """``shape`` (frame i's, from the header or the frame) against expect_shape, else MAX_FRAME_PIXELS."""
        shape = tuple(int(n) for n in shape)
        if self.expect_shape is not None:
            if shape != self.expect_shape:
                problem = (f"frame shape {shape} does not match {self.expect_note}" if self.expect_note else
                           f"frame shape {shape} does not match the expected {self.expect_shape}")
                raise FrameError(problem, path=stack.frame_label(i))
            return
        pixels = math.prod(shape)
        if pixels > MAX_FRAME_PIXELS:
            problem = (
                f"declares frames of {'×'.join(map(str, shape))} = {pixels} pixels, more than the limit of "
                f"{MAX_FRAME_PIXELS} (2^28) pixels per frame; refused before reading"
            )
            raise FrameError(problem, path=stack.label)

    # ---- errors ----------------------------------------------------------------------------------
    def _error(self, exc: BaseException, where: str, label: str) -> FrameError:
        if isinstance(exc, PermissionError):
            return FrameError("permission denied: the file is not readable", path=label)
        if isinstance(exc, MemoryError):
            return FrameError(f"not enough memory to read it{where}", path=label)
        if isinstance(exc, RecursionError):
            return FrameError(f"not a readable image{where} (its structure nests too deeply)", path=label)
        problem = self._explain(exc)
        if problem is None:
            problem = f"not a readable image{where} ({_one_line(exc)})"
        return FrameError(problem, path=label)

    def _explain(self, exc: BaseException) -> str | None:
        """A format's own message for a library exception, or None for the generic one."""
        return None

    # ---- what a format implements ---------------------------------------------------------------------
    def _open(self) -> list[Stack]:
        raise NotImplementedError

    def _frames(self, k: int, start: int, stop: int) -> Iterator[np.ndarray]:
        raise NotImplementedError

    def _read(self, k: int, start: int, stop: int) -> np.ndarray | None:
        """Frames ``start…stop-1`` of stack ``k`` in one read, or None where the format reads frame by frame."""
        return None

    def _close(self) -> None:
        pass


def _frame_range(stack: Stack, start: int, stop: int | None) -> tuple[int, int]:
    stop = stack.n if stop is None else int(stop)
    start = int(start)
    if not 0 <= start < stop <= stack.n:
        raise IndexError(f"{stack.label}: frames {start}:{stop} are not a range inside its {stack.n} frames")
    return start, stop


def _common_dtype(dtypes) -> np.dtype:
    dtype = np.result_type(*[_native(d) for d in dtypes])
    return dtype if dtype.name in SUPPORTED_DTYPES else np.dtype(np.float64)  # e.g. uint32 with int32


# -------------------------------------------------------------------------------------------------
# TIFF
# -------------------------------------------------------------------------------------------------
class TiffReader(Reader):
    """TIFF pages, one frame each (any byte order). One page of S separate planes is S frames."""

    kind = "tiff"

    def _open(self) -> list[Stack]:
        import tifffile

        self._check_ifds(None)
        self._tif = tifffile.TiffFile(self.path)
        pages = self._tif.pages
        n = len(pages)
        if n == 0:
            raise FrameError("no pages in the TIFF", path=self.label)
        self._check_ifds(pages[n - 1].offset)
        first = pages[0]
        shape, dtype = tuple(first.shape), first.dtype
        if dtype is None:
            raise FrameError(f"unsupported TIFF sample format (page 0, {first.bitspersample} bits)", path=self.label)
        self._page_shape, self._dtype = shape, np.dtype(dtype)
        self._planes = n == 1 and len(shape) == 3 and first.planarconfig == 2
        if self._planes:
            # one page of S separate planes (tifffile's old default for a [3|4, H, W] array): S frames
            return [self._stack(self.label, shape, dtype)]
        if len(shape) == 3 and getattr(first, "samplesperpixel", 1) > 1:
            raise FrameError(f"looks like a colour image (shape {shape}); expected a detector frame", path=self.label)
        if len(shape) != 2:
            raise FrameError(f"page 0 has shape {shape}; expected 2-D pages", path=self.label)
        return [self._stack(self.label, (n, *shape) if n > 1 else shape, dtype)]

    def _check_ifds(self, last: int | None) -> None:
        """The chain of image headers (IFDs) of a classic or Big TIFF, where tifffile is lenient: a file cut
        short before or inside its first IFD (a PerkinElmer frame keeps it at the end) is named as truncated,
        not as a TIFF without pages; and where tifffile stopped early at a next-IFD offset it could not follow
        (a multi-page file cut short), the file is refused rather than read as fewer pages.

        last: the offset of the last IFD tifffile read (None: check the header and the first IFD only).
        """
        with open(self.path, "rb") as f:
            head = f.read(16)
            if head[:2] not in (b"II", b"MM") or len(head) < 8:
                return  # not a TIFF header this check understands: tifffile says what the file is
            order = "<" if head[:2] == b"II" else ">"
            (magic,) = struct.unpack(order + "H", head[2:4])
            if magic == 42:  # classic TIFF: 2-byte entry count, 12-byte entries, 4-byte offsets
                layout = (order + "H", 12, order + "I")
                first = struct.unpack(order + "I", head[4:8])[0]
            elif magic == 43 and len(head) == 16:  # BigTIFF: 8-byte count, 20-byte entries, 8-byte offsets
                layout = (order + "Q", 20, order + "Q")
                first = struct.unpack(order + "Q", head[8:16])[0]
            else:
                return
            if last is None:
                if first == 0:
                    raise FrameError("no pages in the TIFF", path=self.label)
                self._next_ifd(f, layout, first, f"its first image header (IFD) at byte {first}")
                return
            page = len(self._tif.pages)
            following = self._next_ifd(f, layout, last, f"the image header (IFD) of page {page - 1} at byte {last}")
            if following != 0:
                where = f"the image header (IFD) of page {page} at byte {following}"
                if following + struct.calcsize(layout[0]) > self.size:
                    raise FrameError(f"truncated TIFF: {where} is {_past_end(self.size)}", path=self.label)
                raise FrameError(f"corrupt TIFF: {where} cannot be read", path=self.label)

    def _next_ifd(self, f, layout: tuple[str, int, str], offset: int, where: str) -> int:
        """The next-IFD offset stored after the IFD at ``offset``; FrameError where the IFD is cut off."""
        count_fmt, entry, offset_fmt = layout
        f.seek(min(offset, self.size))
        raw = f.read(struct.calcsize(count_fmt))
        if len(raw) < struct.calcsize(count_fmt):
            raise FrameError(f"truncated TIFF: {where} is {_past_end(self.size)}", path=self.label)
        (count,) = struct.unpack(count_fmt, raw)
        f.seek(offset + len(raw) + count * entry)
        raw = f.read(struct.calcsize(offset_fmt))
        if len(raw) < struct.calcsize(offset_fmt):
            end = offset + struct.calcsize(count_fmt) + count * entry + struct.calcsize(offset_fmt)
            problem = f"truncated or corrupt TIFF: {where} has {count} entries ending at byte {end}"
            problem += f", {_past_end(self.size)}"
            raise FrameError(problem, path=self.label)
        return struct.unpack(offset_fmt, raw)[0]

    def _frames(self, k: int, start: int, stop: int) -> Iterator[np.ndarray]:
        pages = self._tif.pages
        if self._planes:
            planes = self._page_pixels(pages[0], 0)  # the whole page: bounded by one page
            yield from planes[start:stop]
            return
        for i in range(start, stop):
            page = pages[i]  # one page at a time: never the whole stack
            if tuple(page.shape) != self._page_shape:
                problem = f"page {i} has shape {tuple(page.shape)}, page 0 has {self._page_shape}"
                raise FrameError(problem, path=self.label)
            if page.dtype != self._dtype:
                raise FrameError(f"page {i} has dtype {page.dtype}, page 0 has {self._dtype}", path=self.label)
            yield self._page_pixels(page, i)

    def _page_pixels(self, page, i: int) -> np.ndarray:
        ends = [int(o) + int(c) for o, c in zip(page.dataoffsets, page.databytecounts) if c]
        end = max(ends, default=0)
        if end > self.size:
            problem = f"truncated TIFF: the pixel data of page {i} end at byte {end}, {_past_end(self.size)}"
            raise FrameError(problem, path=self.label)
        return page.asarray()

    def _close(self) -> None:
        tif = getattr(self, "_tif", None)
        if tif is not None:
            tif.close()


# -------------------------------------------------------------------------------------------------
# NumPy .npy
# -------------------------------------------------------------------------------------------------
class NpyReader(Reader):
    """A [H, W] or [N, H, W] ``.npy`` array, memory-mapped; frames are copied out one at a time."""

    kind = "npy"

    def _open(self) -> list[Stack]:
        fmt = np.lib.format
        with open(self.path, "rb") as f:
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(f)
            elif version in ((2, 0), (3, 0)):
                shape, _fortran, dtype = fmt.read_array_header_2_0(f)
            else:
                raise FrameError(f"unsupported .npy format version {version[0]}.{version[1]}", path=self.label)
            offset = f.tell()
        stack = self._stack(self.label, shape, dtype)  # before mapping: a clear message for odd arrays
        need = math.prod(shape) * dtype.itemsize
        if offset + need > self.size:
            problem = (
                f"truncated .npy: the header declares a {shape} {dtype} array ({need} bytes of data), the file "
                f"holds {self.size - offset} bytes after its header"
            )
            raise FrameError(problem, path=self.label)
        self._arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
        self._offset = offset
        return [stack]

    def _frames(self, k: int, start: int, stop: int) -> Iterator[np.ndarray]:
        arr = self._arr
        native = _native(arr.dtype)
        # copies, in native byte order and C order: no view of the map outlives the file
        if arr.ndim == 2:
            yield np.array(arr, dtype=native, order="C")
            return
        for i in range(start, stop):
            yield np.array(arr[i], dtype=native, order="C")

    def _read(self, k: int, start: int, stop: int) -> np.ndarray | None:
        arr = self._arr
        if arr.ndim == 2:
            return None
        if not arr.flags.c_contiguous:  # Fortran order: the frames are not contiguous in the file
            return np.array(arr[start:stop], dtype=_native(arr.dtype), order="C")
        per_frame = math.prod(arr.shape[1:])
        with open(self.path, "rb") as f:  # one read into the array: faster than copying out of the map
            f.seek(self._offset + start * per_frame * arr.dtype.itemsize)
            block = np.fromfile(f, dtype=arr.dtype, count=(stop - start) * per_frame)
        return block.reshape(stop - start, *arr.shape[1:])

    def _close(self) -> None:
        self._arr = None  # the map closes with its last reference: frames are copies


# -------------------------------------------------------------------------------------------------
# HDF5
# -------------------------------------------------------------------------------------------------
def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _import_h5py(label: str):
    try:
        import h5py
    except ImportError:
        raise FrameError("reading HDF5 needs h5py: pip install h5py", path=label) from None
    try:
        import hdf5plugin  # noqa: F401  (registers the bitshuffle/LZ4 filters of Eiger files)
    except ImportError:
        pass
    return h5py


def h5_datasets(f, dataset: str | None, label: str) -> list[str]:
    """The dataset(s) holding the frames of an open HDF5 file ``f``.

    A named ``dataset`` must exist. Without one: the NeXus default ``/entry/data/data``; else the
    ``/entry/data/data_NNNNNN`` links of an Eiger master file (all, in order); else the only 2-D/3-D
    dataset in the file; anything else is a FrameError listing the candidates.
    """
    import h5py

    if dataset is not None:
        if dataset not in f:
            raise FrameError(f"no dataset {dataset!r} in the file", path=label)
        if not isinstance(f[dataset], h5py.Dataset):
            raise FrameError(f"{dataset!r} is a group, not a dataset", path=label)
        return [dataset]
    default = f.get(NEXUS_DEFAULT)
    if isinstance(default, h5py.Dataset) and default.ndim in (2, 3):
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
            path=label,
        )
    return ["/" + found[0]]


@dataclass(frozen=True)
class _Direct:
    """How the HDF5 reader reads a dataset's chunks itself: raw (``read_direct_chunk``), decoded by
    :mod:`gixdrt.io.decode`. Chunks hold ``rows`` whole frames (a 2-D dataset: one chunk, rows 1)."""

    encoding: str
    rows: int
    chunk_shape: tuple[int, int, int]  # one chunk as decoded: [rows, H, W]
    dtype: np.dtype  # as stored (any byte order)
    fill: object  # the dataset's fill value: the pixels of a chunk never written
    label: str  # the stack's label: file::/dataset
    max_stored: int  # a stored chunk larger than this cannot be one of these chunks

    @property
    def chunk_bytes(self) -> int:
        return math.prod(self.chunk_shape) * self.dtype.itemsize


class H5Reader(Reader):
    """HDF5 datasets: the one named, or the file's default (:func:`h5_datasets`); one stack per dataset.

    A 3-D dataset is read a block of whole chunk rows at a time (each chunk decompressed once), never more
    than ``block_bytes`` per read. :meth:`_read_block` is the one place that reads pixel data through h5py's
    ``Dataset`` reads; :meth:`_raw_chunk` the one place that reads stored chunks for the direct path.

    Direct chunk reads: a dataset whose only filter is bitshuffle with LZ4 (filter 32008, Eiger's "bslz4") or
    LZ4 (filter 32004), chunked in whole frames (one or a few per chunk), is read chunk by chunk with h5py's
    ``read_direct_chunk`` and decoded by :func:`gixdrt.io.decode.decode_chunk`, up to ``decode_threads`` chunks
    at once (None: every core), instead of by the HDF5 filter: each chunk is checked before it is
    decompressed, so a corrupt chunk is a FrameError naming the frame, never a crash inside the filter. Where
    the package decoding it (bitshuffle, lz4) is missing, such a dataset is read through the HDF5 filter, with
    a warning. Any other layout is read through h5py as it is.
    """

    kind = "h5"
    #: Chunks decoded at once by the direct path (None: every core this process may use).
    decode_threads: int | None = None
    #: False: every dataset is read through h5py and the HDF5 filters (for comparisons).
    direct_reads: bool = True

    def _open(self) -> list[Stack]:
        h5py = _import_h5py(self.label)
        self._file = h5py.File(self.path, "r")
        self._datasets = []
        self._direct: dict[int, _Direct] = {}
        self._cached: tuple[int, int, np.ndarray] | None = None
        stacks = []
        for name in h5_datasets(self._file, self.dataset, self.label):
            label = f"{self.label}::{name}"
            try:
                ds = self._file[name]
            except (KeyError, OSError) as exc:  # e.g. an Eiger data file missing next to its master file
                raise FrameError(f"cannot open dataset {name} ({_one_line(exc)})", path=self.label) from None
            if not isinstance(ds, h5py.Dataset):
                raise FrameError(f"{name} is a group, not a dataset", path=self.label)
            if ds.shape is None or ds.size == 0:
                raise FrameError(f"empty dataset {name} (shape {ds.shape})", path=self.label)
            stacks.append(self._stack(label, ds.shape, ds.dtype))
            self._check_contiguous(ds, label)
            self._datasets.append(ds)
            direct = self._direct_plan(ds, label)
            if direct is not None:
                self._direct[id(ds)] = direct
        return stacks

    @staticmethod
    def _check_contiguous(ds, label: str) -> None:
        """A contiguous dataset must store all of its bytes (or none: never written, it reads as the fill value);
        a header declaring less storage than the data need would give partly undefined frames."""
        import h5py

        try:
            if ds.id.get_create_plist().get_layout() != h5py.h5d.CONTIGUOUS:
                return
            stored = ds.id.get_storage_size()
        except Exception:  # noqa: BLE001 - a layout h5py cannot describe: HDF5 reads it (or says why not)
            return
        need = ds.size * ds.dtype.itemsize
        if stored and stored != need:
            raise FrameError(f"corrupt dataset: its header declares {stored} bytes of storage, its "
                             f"{'×'.join(map(str, ds.shape))} {ds.dtype} data need {need}", path=label)

    def _direct_plan(self, ds, label: str) -> _Direct | None:
        """How to read ``ds`` chunk by chunk (:class:`_Direct`), or None to read it through h5py. FrameError for
        bitshuffle filter options the filter would crash on, whichever path reads the dataset."""
        import h5py

        try:
            plist = ds.id.get_create_plist()
            if plist.get_layout() != h5py.h5d.CHUNKED or not ds.chunks:
                return None
            filters = [plist.get_filter(i) for i in range(plist.get_nfilters())]
        except Exception:  # a pipeline h5py cannot describe: HDF5 reads it (or says why not)
            return None
        itemsize = ds.dtype.itemsize
        for fid, _flags, options, _name in filters:
            if fid == H5_FILTER_BITSHUFFLE and len(options) >= 3 and options[2] != itemsize:
                # the filter would shuffle with this element size (0 divides by zero inside it): refused here
                problem = (
                    f"corrupt bitshuffle filter options: {options[2]}-byte elements, the dataset's {ds.dtype} "
                    f"elements have {itemsize} bytes"
                )
                raise FrameError(problem, path=label)
        if not self.direct_reads or len(filters) != 1 or not hasattr(ds.id, "get_chunk_info_by_coord"):
            return None
        fid, _flags, options, _name = filters[0]
        if fid == H5_FILTER_BITSHUFFLE and len(options) >= 5 and options[4] == _BITSHUFFLE_LZ4:
            encoding = "bslz4"
        elif fid == H5_FILTER_LZ4:
            encoding = "lz4"
        else:
            return None
        shape, chunks = tuple(ds.shape), tuple(ds.chunks)
        if len(shape) == 3 and chunks[1:] == shape[1:]:
            rows = chunks[0]
        elif len(shape) == 2 and chunks == shape:
            rows = 1
        else:
            return None  # chunks that cut frames into tiles
        package = decode.missing(encoding)
        if package is not None:
            warnings.warn(
                f"{package} is not installed: {decode.ENCODING_NAMES[encoding]} HDF5 chunks are decoded by the "
                f"HDF5 filter, which does not check them (pip install {package})",
                RuntimeWarning,
                stacklevel=2,
            )
            return None
        chunk_shape = (rows, *shape[-2:])
        total = math.prod(chunk_shape) * itemsize
        # the header, then LZ4's worst case for every block (16 bytes more each) and its 4-byte size, with as
        # many blocks as bitshuffle's smallest ones (8 elements) make
        max_stored = decode.HEADER_BYTES + decode.lz4_bound(total) + 20 * (total // (8 * itemsize) + 1)
        return _Direct(encoding, rows, chunk_shape, np.dtype(ds.dtype), ds.fillvalue, label, max_stored)

    def _frames(self, k: int, start: int, stop: int) -> Iterator[np.ndarray]:
        ds = self._datasets[k]
        if ds.ndim == 2:
            yield self._read_block(ds, None, None)
            return
        frame_bytes = max(1, math.prod(ds.shape[1:]) * ds.dtype.itemsize)
        rows = ds.chunks[0] if ds.chunks else 1
        direct = self._direct.get(id(ds))
        if direct is not None and rows * frame_bytes <= self.block_bytes:
            yield from self._stream_direct(ds, direct, start, stop)
            return
        step = max(1, min(rows, self.block_bytes // frame_bytes))
        i = start
        while i < stop:
            end = min(stop, (i // step + 1) * step)  # blocks aligned to whole chunk rows
            yield from self._read_block(ds, i, end)
            i = end

    def _read(self, k: int, start: int, stop: int) -> np.ndarray | None:
        ds = self._datasets[k]
        return None if ds.ndim == 2 else self._read_block(ds, start, stop)  # the whole range is returned anyway

    def _read_block(self, ds, start: int | None, stop: int | None) -> np.ndarray:
        """Frames ``start…stop-1`` of dataset ``ds`` ([H, W] for a 2-D dataset: start is None): decoded here
        chunk by chunk where the dataset has a direct-read plan (:meth:`_direct_plan`), else through h5py.
        (Streaming such a dataset, :meth:`_frames` decodes its chunks with :meth:`_stream_direct`.)"""
        direct = self._direct.get(id(ds))
        if direct is None:
            return ds[()] if start is None else ds[start:stop]
        if start is None:
            return self._read_direct(ds, direct, 0, 1)[0]
        return self._read_direct(ds, direct, start, stop)

    def _stream_direct(self, ds, direct: _Direct, start: int, stop: int) -> Iterator[np.ndarray]:
        """Frames ``start…stop-1``, chunk by chunk: with several decoding threads, the next chunks are decoded
        while the frames of the current one are used (no more of them than ``block_bytes`` hold); each frame
        is a view of its decoded chunk, never copied."""
        rows = direct.rows
        threads = decode.resolve_threads(self.decode_threads)
        ahead = max(1, min(2 * threads, self.block_bytes // direct.chunk_bytes))

        def decode_one(_i: int, item) -> tuple[int, np.ndarray]:
            c, raw = item
            return c, self._chunk(direct, c, raw, max(start, c * rows))

        numbers = range(start // rows, (stop - 1) // rows + 1)
        chunks = ((c, self._raw_chunk(ds, direct, c, max(start, c * rows))) for c in numbers)  # read in this thread
        for c, chunk in decode.map_chunks(decode_one, chunks, threads=threads, ahead=ahead):
            lo = c * rows
            yield from chunk[max(start, lo) - lo : min(stop, lo + rows) - lo]

    def _read_direct(self, ds, direct: _Direct, start: int, stop: int) -> np.ndarray:
        rows = direct.rows
        first, last = start // rows, (stop - 1) // rows
        if first == last:  # one chunk: its frames, without a copy (unless the chunk is kept for the next read)
            lo = first * rows
            cached = self._cached
            if cached is not None and cached[0] == id(ds) and cached[1] == first:
                return cached[2][start - lo : stop - lo].copy()
            chunk = self._chunk(direct, first, self._raw_chunk(ds, direct, first, start), start)
            if stop - start < rows and direct.chunk_bytes > self.block_bytes:
                self._cached = (id(ds), first, chunk)  # a chunk larger than a read: read piece by piece
                return chunk[start - lo : stop - lo].copy()
            return chunk[start - lo : stop - lo]
        out = self._allocate((stop - start, *direct.chunk_shape[1:]), direct.dtype)

        def decode_into(_i: int, item) -> None:
            c, raw = item
            lo = c * rows
            a, b = max(start, lo), min(stop, lo + rows)
            out[a - start : b - start] = self._chunk(direct, c, raw, a)[a - lo : b - lo]

        chunks = (  # read in this thread, decoded (and copied into out) in the pool
            (c, self._raw_chunk(ds, direct, c, max(start, c * rows))) for c in range(first, last + 1)
        )
        for _ in decode.map_chunks(decode_into, chunks, threads=self.decode_threads):
            pass
        return out

    def _raw_chunk(self, ds, direct: _Direct, c: int, frame: int) -> tuple[int, bytes] | None:
        """(filter mask, stored bytes) of chunk ``c`` (frames c·rows…), or None where it was never written;
        ``frame`` (the first one asked for) names it in errors. The one place the direct path reads the file."""
        offsets = (c * direct.rows, 0, 0) if len(ds.shape) == 3 else (0, 0)
        try:
            info = ds.id.get_chunk_info_by_coord(offsets)
            if info.byte_offset is None:
                return None
            if info.size > direct.max_stored:
                problem = (
                    f"{self._where(direct, c, frame)}: corrupt chunk index: the chunk is stored in {info.size} bytes, "
                    f"more than {decode.ENCODING_NAMES[direct.encoding]} can take for its "
                    f"{'×'.join(map(str, direct.chunk_shape))} {direct.dtype.name} pixels ({direct.max_stored})"
                )
                raise FrameError(problem, path=direct.label)
            return ds.id.read_direct_chunk(offsets)
        except FrameError:
            raise
        except Exception as exc:  # an unreadable chunk index or chunk: named by its frame, not by a later one
            raise self._error(exc, f" at {self._where(direct, c, frame)}", direct.label) from None

    def _chunk(self, direct: _Direct, c: int, raw: tuple[int, bytes] | None, frame: int) -> np.ndarray:
        """Chunk ``c`` decoded, [rows, H, W]; ``frame`` (the first one asked for) names it in errors. Runs in
        the decoding threads: no HDF5 call here."""
        if raw is None:  # never written: the dataset's fill value, as HDF5 returns it
            return np.full(direct.chunk_shape, direct.fill, direct.dtype)
        mask, data = raw
        if mask & 1:  # the (optional) filter was skipped when this chunk was written: stored as it is
            if len(data) != direct.chunk_bytes:
                problem = (
                    f"{self._where(direct, c, frame)}: an unfiltered chunk of {len(data)} bytes, expected "
                    f"{direct.chunk_bytes}"
                )
                raise FrameError(problem, path=direct.label)
            return np.frombuffer(bytearray(data), direct.dtype).reshape(direct.chunk_shape)  # writable, as decoded
        try:
            return decode.decode_chunk(data, encoding=direct.encoding, dtype=direct.dtype, shape=direct.chunk_shape)
        except decode.ChunkError as exc:
            raise FrameError(f"{self._where(direct, c, frame)}: {exc.problem}", path=direct.label) from None

    @staticmethod
    def _where(direct: _Direct, c: int, frame: int) -> str:
        if direct.rows == 1:
            return f"frame {frame}"
        return f"frame {frame} (chunk {c}, frames {c * direct.rows}…{(c + 1) * direct.rows - 1})"

    def _error(self, exc: BaseException, where: str, label: str) -> FrameError:
        err = super()._error(exc, where, label)
        text = str(exc).lower()
        if "filter" in text and ("failure during read" not in text or not _importable("hdf5plugin")):
            # a compressed dataset whose filter is not available (a filter that failed on corrupt data is not
            # a missing plugin, unless hdf5plugin is missing too)
            err = FrameError(err.problem + " (is hdf5plugin installed?)", path=label)
        return err

    def _close(self) -> None:
        f = getattr(self, "_file", None)
        self._datasets = []
        self._direct = {}
        self._cached = None
        if f is not None:
            f.close()


# -------------------------------------------------------------------------------------------------
# fabio formats
# -------------------------------------------------------------------------------------------------
def _import_fabio(label: str):
    try:
        import fabio
    except ImportError:
        raise FrameError("reading this format needs fabio: pip install fabio", path=label) from None
    return fabio


class FabioReader(Reader):
    """A detector format read by fabio; one stack of the file's frames.

    The header is read with ``fabio.openheader`` (no pixel data); the frames with ``fabio.open`` when the
    first one is asked for. Formats whose header fabio does not describe have their frames' shapes checked
    as they are read.
    """

    kind = "fabio"

    def _open(self) -> list[Stack]:
        self._fabio = _import_fabio(self.label)
        self._img = None
        header = self._fabio.openheader(str(self.path))
        n = int(getattr(header, "nframes", 1) or 1)
        shape, dtype = _header_attr(header, "shape"), _header_attr(header, "dtype")
        if shape is None:  # fabio cannot tell without the pixel data: the frames are checked as they are read
            dtype = None if dtype is None else _native(check_dtype(dtype, self.label))
            return [Stack(self.label, n, None, dtype, n > 1)]
        shape = tuple(shape)
        if len(shape) != 2:
            raise FrameError(f"frame 0 has shape {shape}; expected a 2-D frame", path=self.label)
        return [self._stack(self.label, (n, *shape) if n > 1 else shape, dtype)]

    def _frames(self, k: int, start: int, stop: int) -> Iterator[np.ndarray]:
        if self._img is None:
            self._img = self._fabio.open(str(self.path))
            n = int(getattr(self._img, "nframes", 1) or 1)
            if n != self.stacks[0].n:
                raise FrameError(f"the header declares {self.stacks[0].n} frames, the file holds {n}", path=self.label)
        img = self._img
        for i in range(start, stop):
            # getframe(i) of a multi-frame file reads frame i of that file only
            yield img.data if i == 0 else img.getframe(i).data

    def _close(self) -> None:
        img = getattr(self, "_img", None)
        self._img = None
        close = getattr(img, "close", None)
        if close is not None:
            close()


def _header_attr(header, name: str):
    """``header.shape`` or ``header.dtype`` of a fabio image opened with openheader, or None where fabio cannot
    tell without the pixel data (some formats' properties then fail on the missing data)."""
    try:
        return getattr(header, name)
    except Exception:
        return None


class EdfReader(FabioReader):
    """ESRF data format. The headers are walked here (fabio pads a short data block with zeros, stops
    silently at a corrupt header, and loops for a very long time on a key such as ``Dim_4294967296``):
    every frame must be 2-D with its data block inside the file, holding its declared pixels."""

    def _open(self) -> list[Stack]:
        self._fabio = _import_fabio(self.label)
        self._img = None
        frames = _edf_frames(self.path, self.size, self.label)
        shapes = {fr.shape for fr in frames}
        if len(shapes) > 1:
            raise FrameError(f"EDF frames of different shapes: {sorted(shapes)}", path=self.label)
        (shape,) = shapes
        n = len(frames)
        stack = self._stack(self.label, (n, *shape) if n > 1 else shape, _common_dtype({fr.dtype for fr in frames}))
        for i, fr in enumerate(frames):
            if fr.external:  # data in another file (EDF_BinaryFileName): fabio checks it
                continue
            if fr.start + fr.size > self.size:
                end = fr.start + fr.size
                problem = f"truncated EDF: the data of frame {i} end at byte {end}, {_past_end(self.size)}"
                raise FrameError(problem, path=self.label)
            need = math.prod(fr.shape) * fr.dtype.itemsize
            if not fr.compressed and fr.size < need:
                problem = f"corrupt EDF: frame {i} declares {fr.size} bytes of data, its {fr.shape} {fr.dtype} pixels"
                problem += f" need {need}"
                raise FrameError(problem, path=self.label)
        return [stack]


@dataclass(frozen=True)
class _EdfFrame:
    shape: tuple[int, int]
    dtype: np.dtype
    start: int  # byte offset of the data block
    size: int  # bytes in the data block
    compressed: bool
    external: bool  # the data are in another file


_EDF_BLOCK = 512
_EDF_MAX_HEADER = 2**20
_EDF_HEADER_END = re.compile(rb"}\r?\n")
# EDF DataType names (case-sensitive, as fabio reads them) → dtype
_EDF_DTYPES = {
    "int8": ("SignedByte", "Signed8"),
    "uint8": ("UnsignedByte", "Unsigned8"),
    "int16": ("SignedShort", "Signed16"),
    "uint16": ("UnsignedShort", "Unsigned16", "UnsignedShortInteger"),
    "int32": ("SignedInteger", "Signed32", "SignedLong"),
    "uint32": ("UnsignedInteger", "Unsigned32", "UnsignedLong"),
    "int64": ("Signed64",),
    "uint64": ("Unsigned64",),
    "float32": ("FloatValue", "FLOATVALUE", "FLOAT", "Float", "FloatIEEE32", "Float32"),
    "float64": ("Double", "DoubleValue", "FloatIEEE64", "DoubleIEEE64"),
}
_EDF_DTYPE_OF = {name: np.dtype(dtype) for dtype, names in _EDF_DTYPES.items() for name in names}


def _edf_int(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        try:
            return int(float(value))
        except (ValueError, OverflowError):
            return None


def _edf_frames(path: Path, size: int, label: str) -> list[_EdfFrame]:
    """Every frame of an EDF file, as its header declares it; FrameError for a header fabio cannot read."""
    frames: list[_EdfFrame] = []
    pos = 0
    with open(path, "rb") as f:
        while pos < size:
            f.seek(pos)
            head = f.read(_EDF_BLOCK)
            brace = head.find(b"{")
            if brace < 0 and len(head) < _EDF_BLOCK and not head.strip():
                break  # blank padding at the end of the file
            where = f"frame {len(frames)}" if frames else "the first frame"
            if brace < 0 or head[:brace].strip():
                if not frames:
                    raise FrameError("not an EDF file: no header ({) at its start", path=label)
                raise FrameError(f"corrupt EDF: no header at byte {pos}, after frame {len(frames) - 1}", path=label)
            text, end = head, _EDF_HEADER_END.search(head, brace)
            while end is None and len(text) < _EDF_MAX_HEADER:
                more = f.read(_EDF_BLOCK)
                if not more:
                    break
                text += more
                end = _EDF_HEADER_END.search(text, max(brace, len(text) - len(more) - 2))
            if end is None:
                problem = f"truncated or corrupt EDF: the header of {where} at byte {pos} never ends"
                raise FrameError(problem, path=label)
            header: dict[str, str] = {}
            for item in text[brace + 1 : end.start()].split(b";"):
                key, sep, value = item.partition(b"=")
                if sep and (key + value).isascii():  # fabio drops a non-ASCII key or value
                    header.setdefault(key.strip(b" \t\r\n\x00").decode(), value.strip(b" \t\r\n\x00").decode())
            start = pos + end.end()
            caps = {k.upper(): v for k, v in reversed(header.items())}
            if "EDF_DataFormatVersion" in header:  # a general block: defaults for the frames, no frame itself
                pos = start + max(0, _edf_int(header.get("EDF_BinarySize")) or 0)
                continue
            dims = {}
            for key, value in caps.items():
                if key.startswith("DIM_") and key[4:].isdecimal():
                    dims[int(key[4:])] = _edf_int(value)
            rank = max(dims, default=0)
            if rank != 2 or any(d is None or d < 0 for d in dims.values()):
                listed = ", ".join(f"Dim_{k}={dims[k]}" for k in sorted(dims)[:4]) or "none"
                raise FrameError(f"{where} is not a 2-D frame (dimensions {listed})", path=label)
            shape = (dims.get(2, 1), dims.get(1, 0))
            name = caps.get("DATATYPE")
            dtype = np.dtype("uint16") if name is None else _EDF_DTYPE_OF.get(name)
            if dtype is None:
                raise FrameError(f"unsupported EDF DataType {name!r} in the header of {where}", path=label)
            if "BYTEORDER" not in caps:
                raise FrameError(f"corrupt EDF: no ByteOrder in the header of {where}", path=label)
            compression = caps.get("COMPRESSION", "NONE").upper()
            compressed = not (compression == "NONE" or compression.startswith("NO"))
            blob = _edf_int(caps.get("SIZE"))  # as fabio reads it: Size, else EDF_BinarySize, else the pixels' size
            if blob is None:
                blob = _edf_int(header.get("EDF_BinarySize"))
            if blob is None and not compressed:
                blob = shape[0] * shape[1] * dtype.itemsize
            if blob is None or blob < 0:
                raise FrameError(f"corrupt EDF: no valid data size (Size) in the header of {where}", path=label)
            frames.append(_EdfFrame(shape, dtype, start, blob, compressed, "EDF_BinaryFileName" in header))
            pos = start + blob
    if not frames:
        raise FrameError("no frames in the EDF file", path=label)
    return frames


_CBF_SECTION = b"--CIF-BINARY-FORMAT-SECTION--"
_CBF_START = b"\x0c\x1a\x04\xd5"
_CBF_BYTE_OFFSET = "x-CBF_BYTE_OFFSET"
_CBF_TYPES = {
    "signed 8-bit integer": "int8",
    "unsigned 8-bit integer": "uint8",
    "signed 16-bit integer": "int16",
    "unsigned 16-bit integer": "uint16",
    "signed 32-bit integer": "int32",
    "unsigned 32-bit integer": "uint32",
    "signed 64-bit integer": "int64",
    "unsigned 64-bit integer": "uint64",
    "signed 32-bit real IEEE": "float32",
    "signed 64-bit real IEEE": "float64",
}


class CbfReader(FabioReader):
    """Crystallographic binary file (byte-offset compressed, as Pilatus/Eiger write it).

    The binary section's header is parsed here: its dimensions are checked before decoding, its declared
    size against the file, the data against their Content-MD5; fabio decodes the pixels.
    """

    def _open(self) -> list[Stack]:
        self._fabio = _import_fabio(self.label)
        self._img = None
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            section = mm.find(_CBF_SECTION)
            if section < 0:
                raise FrameError("not a CBF image: no binary section (--CIF-BINARY-FORMAT-SECTION--)", path=self.label)
            if not mm[:section].isascii():
                raise FrameError("corrupt CBF header: non-ASCII bytes in its CIF header", path=self.label)
            start = mm.find(_CBF_START, section)
            if start < 0:
                problem = "truncated or corrupt CBF: its binary section has no start-of-data mark"
                raise FrameError(problem, path=self.label)
            fields = _cbf_fields(mm[section:start], self.label)
            shape = (
                self._cbf_int(fields, "X-Binary-Size-Second-Dimension"),
                self._cbf_int(fields, "X-Binary-Size-Fastest-Dimension"),
            )
            size = self._cbf_int(fields, "X-Binary-Size", minimum=0)
            conversion = fields.get("conversions")
            if conversion != _CBF_BYTE_OFFSET:
                what = f"compression {conversion!r}" if conversion else "no compression (conversions) field"
                raise FrameError(f"unsupported CBF: {what}; expected {_CBF_BYTE_OFFSET}", path=self.label)
            dtype = _CBF_TYPES.get(fields.get("X-Binary-Element-Type", ""))
            stack = self._stack(self.label, shape, dtype)
            begin = start + len(_CBF_START)
            if begin + size > self.size:
                problem = (
                    f"truncated CBF: the header declares {size} bytes of binary data from byte {begin}, the file "
                    f"ends at byte {self.size}"
                )
                raise FrameError(problem, path=self.label)
            digest = fields.get("Content-MD5")
            if digest:
                with memoryview(mm)[begin : begin + size] as blob:
                    got = base64.b64encode(hashlib.md5(blob).digest()).decode()
                if got != digest:
                    problem = "corrupt CBF: the binary data do not match their Content-MD5 checksum"
                    raise FrameError(problem, path=self.label)
        self._shape = shape
        return [stack]

    def _cbf_int(self, fields: dict[str, str], key: str, minimum: int = 1) -> int:
        try:
            value = int(fields[key])
        except (KeyError, ValueError):
            raise FrameError(f"corrupt CBF header: no valid {key}", path=self.label) from None
        if value < minimum:
            raise FrameError(f"corrupt CBF header: {key} is {value}", path=self.label)
        return value

    def _explain(self, exc: BaseException) -> str | None:
        if isinstance(exc, AssertionError):  # fabio's check of the decoded pixel count
            h, w = self._shape
            return f"corrupt CBF: the binary data do not decode to the {h}×{w} pixels of the header"
        return None


def _cbf_fields(header: bytes, label: str) -> dict[str, str]:
    """The ``key: value`` (or ``key=value``) lines of a CBF binary section's MIME header, read as fabio reads
    them (up to the first line shorter than 10 bytes); FrameError for a line fabio would fail on."""
    fields: dict[str, str] = {}
    for line in header.split(b"\n")[1:]:
        if len(line) < 10:
            break
        key, sep, value = line.partition(b":")
        if not sep:
            key, sep, value = line.partition(b"=")
        if not sep:
            raise FrameError(f"corrupt CBF header: the line {line[:40]!r} is not 'key: value'", path=label)
        try:
            fields[key.strip().decode("ascii")] = value.strip(b' "\n\r\t').decode("ascii")
        except UnicodeDecodeError:
            raise FrameError("corrupt CBF header: non-ASCII bytes in its binary section's header", path=label) from None
    return fields


# -------------------------------------------------------------------------------------------------
# Choosing a reader
# -------------------------------------------------------------------------------------------------
_READERS: dict[str, type[Reader]] = {"tiff": TiffReader, "npy": NpyReader, "h5": H5Reader, "fabio": FabioReader}
_FABIO_READERS: dict[str, type[FabioReader]] = {".edf": EdfReader, ".cbf": CbfReader}


def reader_for(
    path: str | os.PathLike,
    *,
    label: str | None = None,
    dataset: str | None = None,
    expect_shape: tuple[int, int] | None = None,
    block_bytes: int = H5_BLOCK_BYTES,
    expect_note: str | None = None,
) -> Reader:
    """The (unopened) reader of ``path``'s format, from its suffix; FrameError for a path that is not a
    readable regular file (:func:`check_file`), an unknown format, or a ``dataset`` named for a file that is
    not HDF5. Use it as a context manager: ``with reader_for(p) as r:``."""
    path = Path(path)
    label = os.fspath(path) if label is None else label
    check_file(path, label)  # a missing file or a directory is named so, whatever its suffix
    kind = format_of(path, label)
    if dataset is not None and kind != "h5":
        raise FrameError(f"'::{dataset}' names an HDF5 dataset but this is not an HDF5 file", path=label)
    cls = _FABIO_READERS.get(path.suffix.lower(), FabioReader) if kind == "fabio" else _READERS[kind]
    return cls(path, label=label, dataset=dataset, expect_shape=expect_shape, block_bytes=block_bytes,
               expect_note=expect_note)
