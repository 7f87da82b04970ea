"""Output safety: atomic file writes, and outputs that can never replace an input.

:func:`atomic_path` writes under a temporary name next to the target and renames it onto the target only when
the write completed. :func:`check_output` is called by the commands before the first frame is read: it refuses
an output that is the same file as one of the inputs (through a symbolic link or a hard link too), an output
naming a directory (or, for a directory output, a file), and a location that cannot be written. Every file a
reader opened in this process is remembered (:func:`protect`), and :func:`atomic_path` refuses to replace one of
them, so a library caller that passes an input's name as an output gets an error rather than a lost file.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import GixdrtError

__all__ = ["OutputError", "atomic_path", "check_distinct", "check_output", "protect", "protected_input", "same_file", "split_spec"]


class OutputError(GixdrtError, ValueError):
    """An output path cannot be used: it is an input, a directory, or not writable. Names the path."""


#: (st_dev, st_ino) → the input's name as given, for files opened by a reader in this process (newest last)
_INPUTS: OrderedDict[tuple[int, int], str] = OrderedDict()
_MAX_INPUTS = 65536


def _key(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        st = os.stat(path)  # follows symbolic links: a link to an input is that input
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


def split_spec(spec: str) -> tuple[str, str | None]:
    """``'file.h5::/path/data'`` → ``('file.h5', '/path/data')``; a plain path → ``(path, None)``."""
    if "::" not in spec:
        return spec, None
    path, _, dataset = spec.partition("::")
    if not dataset:
        return path, None
    return path, dataset if dataset.startswith("/") else "/" + dataset


def protect(path: str | os.PathLike) -> None:
    """Remember ``path`` as an input of this process: :func:`atomic_path` will refuse to replace it."""
    key = _key(path)
    if key is None:
        return
    _INPUTS[key] = os.fspath(path)
    _INPUTS.move_to_end(key)
    while len(_INPUTS) > _MAX_INPUTS:
        _INPUTS.popitem(last=False)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when ``a`` and ``b`` are one file (same device and inode: symbolic and hard links included)."""
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def protected_input(path: str | os.PathLike) -> str | None:
    """The name of the input opened by this process that ``path`` is (also through a link), else None."""
    key = _key(path)
    if key is None or key not in _INPUTS:
        return None
    name = _INPUTS[key]
    return name if same_file(name, path) else None  # the inode may have been reused since


def _input_path(spec: str | os.PathLike) -> str:
    return split_spec(os.fspath(spec))[0]


def _link_note(output: Path, source: str) -> str:
    if output.is_symlink() or Path(source).is_symlink():
        return " (through a symbolic link)"
    if os.path.abspath(output) != os.path.abspath(source):
        return " (a hard link to it)"
    return ""


def _same_as_input(path: Path, inputs: Iterable[str | os.PathLike]) -> str | None:
    for spec in inputs:
        source = _input_path(spec)
        if same_file(path, source):
            return source
    return protected_input(path)


def _writable_location(path: Path, label: str) -> None:
    """The nearest existing folder at or above ``path``'s folder must be a writable, searchable directory."""
    folder = path.parent
    while not folder.exists():
        if folder.is_symlink():
            raise OutputError(f"{label}: {folder} is a dangling symbolic link")
        if folder.parent == folder:
            break
        folder = folder.parent
    if not folder.is_dir():
        raise OutputError(f"{label}: {folder} is not a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{label}: the directory {folder} is not writable")


def check_output(
    path: str | os.PathLike,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    option: str = "--out",
    suffixes: Iterable[str] | None = None,
    directory: bool = False,
) -> Path:
    """Check an output path before any work: raise :class:`OutputError` naming ``option`` and the path when

    - its suffix is not one of ``suffixes`` (lower case, with the dot; None: any);
    - it is the same file as one of ``inputs`` (paths or ``file.h5::/dataset`` specs), through a symbolic or a
      hard link too, or as a file a reader of this process opened;
    - it names an existing directory (a file output) or an existing non-directory (``directory=True``);
    - its folder (or the nearest existing folder above it, which will be created) is not a writable directory.

    Returns ``path`` as a Path. Nothing is created.
    """
    p = Path(path)
    label = f"{option} {p}" if option else str(p)
    if not os.fspath(p).strip():
        raise OutputError(f"{option}: empty path")
    if suffixes is not None:
        allowed = sorted(set(suffixes))
        if p.suffix.lower() not in allowed:
            raise OutputError(f"{label}: unsupported output format {p.suffix or '(no suffix)'}; use {', '.join(allowed)}")
    if directory:
        if p.exists() and not p.is_dir():
            raise OutputError(f"{label}: exists and is not a directory")
        if p.is_dir():
            if not os.access(p, os.W_OK | os.X_OK):
                raise OutputError(f"{label}: the directory is not writable")
        else:
            _writable_location(p, label)
        return p
    if p.is_dir():
        raise OutputError(f"{label}: is a directory; name a file")
    source = _same_as_input(p, inputs)
    if source is not None:
        raise OutputError(f"{label}: is the input file {source}{_link_note(p, source)}; gixdrt never replaces an "
                          "input: choose another output name")
    if p.exists() and not os.access(p, os.W_OK):
        raise OutputError(f"{label}: exists and is not writable")
    _writable_location(p, label)
    return p


def check_distinct(paths: dict[str, str | os.PathLike]) -> None:
    """Refuse two outputs of one run that are one file: ``{option: path}``."""
    items = [(opt, Path(p)) for opt, p in paths.items() if p is not None]
    for i, (opt_a, a) in enumerate(items):
        for opt_b, b in items[i + 1:]:
            if os.path.abspath(a) == os.path.abspath(b) or same_file(a, b):
                raise OutputError(f"{opt_b} {b}: is the same file as {opt_a} {a}; name two different files")


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block completes it is synced and renamed onto
    ``path``, otherwise removed. An interrupted or failed write never leaves a truncated file under the
    final name and never touches a previous file there. The suffix is kept so format writers that look
    at it (tifffile, matplotlib, h5py) behave as for the final name.

    Raises :class:`OutputError` before anything is written when ``path`` is a directory or a file that a
    reader of this process opened as an input.
    """
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{path}: is a directory; name a file")
    source = protected_input(path)
    if source is not None:
        raise OutputError(f"{path}: is the input file {source}{_link_note(path, source)}; gixdrt never replaces an "
                          "input: choose another output name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.part{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:  # on disk before the rename, so a crash never leaves a truncated file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
