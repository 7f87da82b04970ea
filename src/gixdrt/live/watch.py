"""A folder of frame files as a live source: each complete file is one series, resumable after a restart.

:class:`FolderWatch` polls a directory for files matching a pattern and yields the shared events
(:mod:`gixdrt.live.events`) for each file once it is complete: ``SeriesStart``, a ``FrameEvent`` per frame
(``image_id`` = the frame's index in the file, across the datasets of an Eiger master file), ``SeriesEnd("end")``.

**When is a file complete?** Its size, modification time and inode have not changed for ``settle`` seconds, and it
opens and reads: the reader checks its header (a truncated ``.npy``, TIFF or CBF is refused; an HDF5 file that
another process still holds open for writing is locked) and its last frame is read. A file that fails waits and is
tried again at each poll; one that still fails ``give_up`` seconds after it settled is reported once (a
``DecodeError`` event whose message names the file and the problem), counted (``counters["unreadable"]``) and
skipped until it changes. Polling is portable (local disks, NFS, SMB); inotify's close-write is not used, because it
is Linux-only and misses files written on another host of a network filesystem. Two limits follow: ``settle``
must exceed the writer's longest pause between writes where HDF5 file locking is off
(``HDF5_USE_FILE_LOCKING=FALSE``, common on network filesystems), and the filesystem's timestamp resolution.
A file that changes after it was processed (replaced or rewritten) is a new series: its ``series_unique_id`` is
made from the path, inode, size and modification time. Hidden files (names starting with ``.``, e.g. the part
files of outputs) are never read.

**Resume.** With ``state_file``, the watch records which files were finished (path relative to the folder, size,
modification time, inode, frames) and, for a file in progress, the next frame, written atomically after each
finished file and at most every ``state_interval`` seconds while a file is processed, and when the watch ends. A
restart with the same state file skips the finished files and resumes a file in progress at its next frame
(``SeriesStart.meta["first_image"]``), so after a clean stop (``stop()``, ``until_idle``, closing the iterator,
Ctrl-C) no frame is processed twice and none is skipped; after a crash, at most ``state_interval`` seconds of
frames are processed again.

What counts as done is what the consumer says: with ``auto_commit=True`` an event is done when the next one is
asked for (a consumer that handles each event before asking for the next); with ``auto_commit=False`` the consumer
calls :meth:`FolderWatch.commit` once an event's results are safe (written, sent). A ``SeriesEnd`` committed
marks the file finished. ``gixdrt watch`` commits only series ends, after the file's table is written, so a
restart redoes a file that was not finished (its partial table is removed when the watch stops).

One watch per state file: two processes sharing one would each redo the other's work.
"""
from __future__ import annotations

import json
import logging
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from ..errors import FrameError
from .events import DecodeError, Event, FrameEvent, SeriesEnd, SeriesStart

__all__ = ["FolderWatch", "STATE_VERSION"]

STATE_VERSION = 1


def _natural_key(name: str) -> list:
    return [(0, int(tok), tok) if tok.isdigit() else (1, 0, tok) for tok in re.split(r"(\d+)", name)]


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextmanager
def _quiet_libraries(names: tuple[str, ...] = ("tifffile", "fabio")):
    """Drop the log records of the readers' libraries while a possibly incomplete file is opened."""
    drop = _DropAll()
    loggers = [logging.getLogger(name) for name in names]
    for logger in loggers:
        logger.addFilter(drop)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop)


@dataclass
class _Candidate:
    rel: str
    path: Path
    sig: tuple[int, int, int]  # size, mtime_ns, inode
    changed: float  # monotonic time the signature was first seen
    settled: float | None = None  # monotonic time it was first tried
    error: str = ""


class FolderWatch:
    """Frame files in ``directory`` as series of events, each file once it is complete (see the module docstring).

    pattern: a glob pattern for the file names (``*.h5``, ``scan_*.tif``); recursive: also in subfolders.
    settle: seconds a file's size and modification time must stay unchanged before it is read.
    poll: seconds between scans of the folder.
    state_file: the JSON file that records finished files and the progress of a file in progress (None: no resume).
    dataset: the HDF5 dataset holding the frames (default: the NeXus default, Eiger data links or the only 2-D/3-D
    dataset; as ``gixdrt detect`` chooses).
    until_idle: stop after this many seconds without a new or changing file (None: run until :meth:`stop`).
    give_up: seconds a settled file may fail to open before it is reported and skipped.
    state_interval: seconds between state writes while a file is processed (0: after every committed frame).
    auto_commit: an event is done when the next one is asked for (else: :meth:`commit`).
    ignore: files never to read: glob patterns matched against the name and the path relative to ``directory``, or
    a callable taking the file's Path. The state file is always ignored.
    expect_shape, expect_note: (H, W) every frame must have and where it comes from (``Geometry.frame_shape_note``);
    a file of another shape is reported and skipped.

    ``counters``: ``files`` (series started), ``finished`` (files committed as finished), ``frames`` (frame events),
    ``not_ready`` (tries of a settled file that did not open yet: still written, locked or truncated),
    ``unreadable`` (files reported and skipped), ``decode_errors`` (frames that could not be read), ``resumed``
    (files resumed at a frame other than the first).
    """

    def __init__(self, directory: str | os.PathLike, *, pattern: str = "*.h5", recursive: bool = False,
                 settle: float = 1.0, poll: float = 0.2, state_file: str | os.PathLike | None = None,
                 dataset: str | None = None, until_idle: float | None = None, give_up: float = 30.0,
                 state_interval: float = 1.0, auto_commit: bool = True,
                 ignore: Iterable[str] | Callable[[Path], bool] = (), expect_shape: tuple[int, int] | None = None,
                 expect_note: str | None = None):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: not a directory")
        if not pattern or os.sep in pattern or (os.altsep and os.altsep in pattern):
            raise ValueError(f"pattern {pattern!r}: expected a file-name pattern such as '*.h5' (no folders)")
        for name, value in (("settle", settle), ("poll", poll), ("give_up", give_up),
                            ("state_interval", state_interval)):
            if not (value >= 0 and value != float("inf")):
                raise ValueError(f"{name} must be a number of seconds ≥ 0, got {value!r}")
        if poll <= 0:
            raise ValueError(f"poll must be > 0 seconds, got {poll!r}")
        if until_idle is not None and not until_idle >= 0:
            raise ValueError(f"until_idle must be ≥ 0 seconds, got {until_idle!r}")
        self.pattern = pattern
        self.recursive = bool(recursive)
        self.settle = float(settle)
        self.poll = float(poll)
        self.dataset = dataset
        self.until_idle = until_idle
        self.give_up = float(give_up)
        self.state_interval = float(state_interval)
        self.auto_commit = bool(auto_commit)
        self.expect_shape = None if expect_shape is None else tuple(int(n) for n in expect_shape)
        self.expect_note = expect_note
        if callable(ignore):
            self._ignore_fn, self._ignore = ignore, ()
        else:
            self._ignore_fn, self._ignore = None, tuple(ignore)
        self.state_file = None if state_file is None else Path(state_file)
        self._root = Path(os.path.abspath(self.directory))
        self._stop = threading.Event()
        self._lock = threading.RLock()
        self.counters = {"files": 0, "finished": 0, "frames": 0, "not_ready": 0, "unreadable": 0, "decode_errors": 0,
                         "resumed": 0}
        # state: finished files (history, in order), latest finished signature per path, files in progress
        self._finished: list[dict[str, Any]] = []
        self._done: dict[str, tuple[int, int, int]] = {}
        self._progress: dict[str, dict[str, Any]] = {}  # rel → entry with next_frame (committed)
        self._by_uid: dict[str, str] = {}  # series_unique_id → rel of files served in this run
        self._served: dict[str, tuple[int, int, int]] = {}
        self._skipped: dict[str, tuple[int, int, int]] = {}
        self._candidates: dict[str, _Candidate] = {}
        self._next_series_id = 1
        self._dirty = False
        self._last_write = 0.0
        self._iterating = False
        self._load_state()

    # ---- state --------------------------------------------------------------------------------------------------
    def _load_state(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        label = f"state file {self.state_file}"
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
        except (OSError, UnicodeError, ValueError) as exc:
            raise ValueError(f"{label}: not readable as JSON ({_one_line(exc)})") from None
        if not isinstance(doc, dict) or doc.get("kind") != "gixdrt-watch-state":
            raise ValueError(f"{label}: not a gixdrt watch state file")
        if doc.get("version") != STATE_VERSION:
            raise ValueError(f"{label}: version {doc.get('version')!r}, this gixdrt reads version {STATE_VERSION}")
        if doc.get("directory") != os.fspath(self._root):
            raise ValueError(f"{label}: records a watch of {doc.get('directory')}, not of {self._root}; "
                             "use another state file")
        try:
            for entry in doc.get("finished", []):
                sig = (int(entry["size"]), int(entry["mtime_ns"]), int(entry["inode"]))
                self._finished.append(dict(entry))
                self._done[str(entry["path"])] = sig
            for entry in doc.get("in_progress", []):
                entry = dict(entry)
                entry["next_frame"] = int(entry["next_frame"])
                (int(entry["size"]), int(entry["mtime_ns"]), int(entry["inode"]), int(entry["series_id"]))
                self._progress[str(entry["path"])] = entry
            self._next_series_id = int(doc.get("next_series_id", 1))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{label}: a malformed entry ({type(exc).__name__}: {_one_line(exc)})") from None

    def _state_doc(self) -> dict[str, Any]:
        return {
            "kind": "gixdrt-watch-state",
            "version": STATE_VERSION,
            "directory": os.fspath(self._root),
            "pattern": self.pattern,
            "next_series_id": self._next_series_id,
            "finished": self._finished,
            "in_progress": [e for e in self._progress.values() if e["next_frame"] > 0],
        }

    def save_state(self) -> None:
        """Write the state file now (atomically) when anything changed since the last write."""
        with self._lock:
            if self.state_file is None or not self._dirty:
                return
            from ..io.atomic import atomic_path

            text = json.dumps(self._state_doc(), indent=1) + "\n"
            with atomic_path(self.state_file) as tmp:
                tmp.write_text(text, encoding="utf-8")
            self._dirty = False
            self._last_write = time.monotonic()

    def _maybe_save(self) -> None:
        if time.monotonic() - self._last_write >= self.state_interval:
            self.save_state()

    @property
    def finished(self) -> list[dict[str, Any]]:
        """The finished files (this run and earlier runs recorded in the state file), oldest first."""
        with self._lock:
            return [dict(e) for e in self._finished]

    # ---- commits ------------------------------------------------------------------------------------------------
    def commit(self, event: Event, info: dict[str, Any] | None = None) -> None:
        """Mark ``event`` done: a FrameEvent's frame (and those before it) or, for a SeriesEnd with reason
        ``end``, the whole file (``info``: extra entries recorded with the finished file, e.g. the output it went
        to). Other events are ignored. Thread-safe."""
        with self._lock:
            rel = self._by_uid.get(getattr(event, "series_unique_id", None) or "")
            if rel is None:
                return
            entry = self._progress.get(rel)
            if entry is None or entry["series_unique_id"] != event.series_unique_id:
                return
            if isinstance(event, FrameEvent):
                if event.image_id + 1 > entry["next_frame"]:
                    entry["next_frame"] = event.image_id + 1
                    self._dirty = True
                    self._maybe_save()
            elif isinstance(event, SeriesEnd) and event.reason == "end":
                done = {k: entry[k] for k in ("path", "size", "mtime_ns", "inode", "series_id", "series_unique_id")}
                done["frames"] = entry["frames"]
                done.update(info or {})
                self._finished.append(done)
                self._done[rel] = (entry["size"], entry["mtime_ns"], entry["inode"])
                del self._progress[rel]
                self.counters["finished"] += 1
                self._dirty = True
                self.save_state()

    # ---- control ------------------------------------------------------------------------------------------------
    def stop(self) -> None:
        """Ask the watch to end (from any thread): a file in progress ends with ``SeriesEnd("closed")`` after the
        current frame, and the state is written."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Write the state (the iterator does so too when it ends)."""
        self.save_state()

    # ---- scanning -----------------------------------------------------------------------------------------------
    def _ignored(self, rel: str, path: Path) -> bool:
        if any(part.startswith(".") for part in rel.split("/")):
            return True
        if self.state_file is not None and os.path.abspath(path) == os.path.abspath(self.state_file):
            return True
        if self._ignore_fn is not None:
            return bool(self._ignore_fn(path))
        return any(fnmatch(path.name, pat) or fnmatch(rel, pat) for pat in self._ignore)

    def _scan(self, now: float) -> bool:
        """Update the candidates; True when a file appeared or changed (activity)."""
        activity = False
        seen = set()
        try:
            found = self.directory.rglob(self.pattern) if self.recursive else self.directory.glob(self.pattern)
            paths = list(found)
        except OSError:
            paths = []
        for path in paths:
            try:
                rel = path.relative_to(self.directory).as_posix()
            except ValueError:
                continue
            if self._ignored(rel, path):
                continue
            try:
                st = os.stat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            sig = (st.st_size, st.st_mtime_ns, st.st_ino)
            seen.add(rel)
            if sig in (self._done.get(rel), self._served.get(rel), self._skipped.get(rel)):
                self._candidates.pop(rel, None)
                continue
            cand = self._candidates.get(rel)
            if cand is None or cand.sig != sig:
                self._candidates[rel] = _Candidate(rel, path, sig, now)
                activity = True
        for rel in [r for r in self._candidates if r not in seen]:  # deleted
            del self._candidates[rel]
        return activity

    def _ready(self, now: float) -> list[_Candidate]:
        ready = [c for c in self._candidates.values() if now - c.changed >= self.settle]
        return sorted(ready, key=lambda c: _natural_key(c.rel))

    # ---- reading a file -----------------------------------------------------------------------------------------
    def _label(self, rel: str) -> str:
        return os.fspath(self.directory / rel)

    def _probe(self, cand: _Candidate):
        """(reader, masks) for a complete file, or raise FrameError/OSError saying why it is not (yet) readable."""
        from ..io.masks import detector_mask
        from ..io.readers import reader_for

        label = self._label(cand.rel)
        reader = reader_for(cand.path, label=label, dataset=self.dataset, expect_shape=self.expect_shape,
                            expect_note=self.expect_note)
        reader.open()
        try:
            stacks = reader.stacks
            k = len(stacks) - 1
            last = stacks[k]
            for _ in reader.frames(k, last.n - 1, last.n):  # the last frame reads: the file is whole
                pass
            shape = stacks[0].frame_shape
            masks = detector_mask(cand.path, shape)
            st = os.stat(cand.path)
            if (st.st_size, st.st_mtime_ns, st.st_ino) != cand.sig:
                raise FrameError("changed while it was being opened", path=label)
        except BaseException:
            reader.close()
            raise
        return reader, masks

    def _serve(self, cand: _Candidate, reader, masks) -> Iterator[Event]:
        rel, label = cand.rel, self._label(cand.rel)
        size, mtime_ns, inode = cand.sig
        n = sum(s.n for s in reader.stacks)
        with self._lock:
            resume = self._progress.get(rel)
            if resume is not None and (resume["size"], resume["mtime_ns"], resume["inode"]) == cand.sig:
                first = min(int(resume["next_frame"]), n)
                series_id, uid = int(resume["series_id"]), str(resume["series_unique_id"])
                self.counters["resumed"] += 1
            else:
                first = 0
                series_id = self._next_series_id
                self._next_series_id += 1
                uid = f"{os.path.abspath(cand.path)}#{inode}:{size}:{mtime_ns}"
            self._progress[rel] = {"path": rel, "size": size, "mtime_ns": mtime_ns, "inode": inode, "frames": n,
                                   "next_frame": first, "series_id": series_id, "series_unique_id": uid}
            self._by_uid[uid] = rel
            self._served[rel] = cand.sig
            self._dirty = True
            self.counters["files"] += 1
        stack0 = reader.stacks[0]
        start = SeriesStart(
            series_id=series_id,
            series_unique_id=uid,
            number_of_images=n,
            image_shape=stack0.frame_shape,
            dtype=None if stack0.dtype is None else stack0.dtype.name,
            pixel_mask={} if masks.pixels is None else {"data": masks.pixels},
            saturation_value=masks.saturation,
            meta={"path": rel, "file": label, "first_image": first, "stacks": [s.label for s in reader.stacks]},
            source=label,
            received=time.monotonic(),
        )
        yield start
        image_id = 0
        for k, stack in enumerate(reader.stacks):
            if image_id + stack.n <= first:
                image_id += stack.n
                continue
            i = max(0, first - image_id)
            frames = reader.frames(k, i)
            try:
                while i < stack.n:
                    if self._stop.is_set():
                        yield SeriesEnd(series_id, uid, reason="closed", received=time.monotonic())
                        return
                    try:
                        data = next(frames)
                    except StopIteration:
                        break
                    except FrameError as exc:  # a frame past a good header does not read: counted, go on
                        self.counters["decode_errors"] += 1
                        frames.close()
                        yield DecodeError(_one_line(exc), source=label, series_id=series_id, series_unique_id=uid,
                                          image_id=image_id + i, received=time.monotonic())
                        i += 1
                        if i < stack.n:
                            frames = reader.frames(k, i)
                        continue
                    self.counters["frames"] += 1
                    event = FrameEvent(series_id, uid, image_id + i, {"data": data},
                                       meta={"source": stack.frame_label(i)}, received=time.monotonic(),
                                       nbytes=int(data.nbytes))
                    yield event
                    if self.auto_commit:
                        self.commit(event)
                    i += 1
            finally:
                frames.close()
            image_id += stack.n
        end = SeriesEnd(series_id, uid, reason="end", received=time.monotonic())
        yield end
        if self.auto_commit:
            self.commit(end)

    # ---- the iterator -------------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Event]:
        with self._lock:
            if self._iterating:
                raise RuntimeError("this FolderWatch is already being iterated")
            self._iterating = True
        return self._events()

    def _events(self) -> Iterator[Event]:
        last_activity = time.monotonic()
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if self._scan(now):
                    last_activity = now
                for cand in self._ready(now):
                    if self._stop.is_set():
                        break
                    if cand.settled is None:
                        cand.settled = now
                    try:
                        with _quiet_libraries():  # an incomplete file is expected here: the libraries' logs are noise
                            reader, masks = self._probe(cand)
                    except (FrameError, OSError) as exc:
                        cand.error = _one_line(exc)
                        self.counters["not_ready"] += 1
                        if time.monotonic() - cand.settled >= self.give_up:
                            self._candidates.pop(cand.rel, None)
                            self._skipped[cand.rel] = cand.sig
                            self.counters["unreadable"] += 1
                            message = cand.error if self._label(cand.rel) in cand.error else \
                                f"{self._label(cand.rel)}: {cand.error}"
                            yield DecodeError(f"{message}; skipped (still unreadable {self.give_up:g} s after it "
                                              "stopped changing)", source=self._label(cand.rel),
                                              received=time.monotonic())
                        continue
                    self._candidates.pop(cand.rel, None)
                    try:
                        yield from self._serve(cand, reader, masks)
                    finally:
                        reader.close()
                    self._maybe_save()
                    last_activity = time.monotonic()
                now = time.monotonic()
                if self.until_idle is not None and not self._candidates and now - last_activity >= self.until_idle:
                    break
                self._stop.wait(self.poll)
        finally:
            with self._lock:
                self._iterating = False
            self.save_state()
