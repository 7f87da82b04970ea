"""FolderWatch: files written slowly are read once complete, replaced files are new series, unreadable files are
reported once and skipped, and a restart with the state file processes every frame exactly once."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import numpy as np
import pytest

from gixdrt.live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart
from gixdrt.live.watch import FolderWatch

FAST = dict(settle=0.15, poll=0.03)
DEADLINE_S = 20.0  # no test may hang: a watchdog stops the watch after this


def run(watch: FolderWatch, on_event=None, deadline: float = DEADLINE_S) -> list:
    """All events of ``watch`` (until it ends by itself or ``on_event`` stops it), with a watchdog."""
    fired = []

    def watchdog():
        fired.append(True)
        watch.stop()

    timer = threading.Timer(deadline, watchdog)
    timer.start()
    events = []
    try:
        for ev in watch:
            events.append(ev)
            if on_event is not None:
                on_event(ev, watch)
    finally:
        timer.cancel()
    assert not fired, "the watchdog had to stop the watch"
    return events


def series(events) -> dict[str, dict]:
    """source file → {'start': SeriesStart, 'frames': {image_id: data}, 'end': SeriesEnd}."""
    out: dict[str, dict] = {}
    by_uid = {}
    for ev in events:
        if isinstance(ev, SeriesStart):
            by_uid[ev.series_unique_id] = out.setdefault(ev.source, {"starts": [], "frames": [], "ends": []})
            by_uid[ev.series_unique_id]["starts"].append(ev)
        elif isinstance(ev, FrameEvent):
            by_uid[ev.series_unique_id]["frames"].append(ev)
        elif isinstance(ev, SeriesEnd):
            by_uid[ev.series_unique_id]["ends"].append(ev)
    return out


def stack(n: int, seed: int, dtype=np.uint16, shape=(6, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 1000, (n, *shape)).astype(dtype)


def npy_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def tiff_bytes(arr: np.ndarray) -> bytes:
    import tifffile

    buf = io.BytesIO()
    with tifffile.TiffWriter(buf) as tif:
        for page in arr:
            tif.write(page, photometric="minisblack")
    return buf.getvalue()


def write_in_halves(path, data: bytes, pause: float) -> None:
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        time.sleep(pause)
        f.write(data[len(data) // 2:])


H5_WRITER = r"""
import sys, time
import h5py, numpy as np
path, n, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
data = np.random.default_rng(5).integers(0, 1000, (n, 6, 8)).astype(np.uint16)
with h5py.File(path, "w") as f:  # held open (and locked) while the frames are written one by one
    det = f.create_group("entry/instrument/detector")
    det.attrs["NX_class"] = "NXdetector"
    mask = np.zeros((6, 8), np.uint32); mask[1, 2] = 1; mask[5, 7] = 16
    det["pixel_mask"] = mask
    det["saturation_value"] = 900
    ds = f.create_dataset("entry/data/data", shape=(0, 6, 8), maxshape=(None, 6, 8), dtype="u2", chunks=(1, 6, 8))
    print("open", flush=True)
    for i in range(n):
        ds.resize((i + 1, 6, 8)); ds[i] = data[i]; f.flush()
        time.sleep(pause)
"""


def test_files_written_slowly_are_read_once_complete(tmp_path):
    """An HDF5 file written frame by frame by another process (its lock held, pauses longer than settle), a .npy
    and a TIFF written in two halves: each is one series with all its frames, read only once complete."""
    a, c = stack(4, 1), stack(3, 2, np.float32)
    h5 = tmp_path / "b.h5"
    proc = subprocess.Popen([sys.executable, "-c", H5_WRITER, str(h5), "4", "0.3"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "open"
    writers = [threading.Thread(target=write_in_halves, args=(tmp_path / "a.npy", npy_bytes(a), 0.6)),
               threading.Thread(target=write_in_halves, args=(tmp_path / "c.tif", tiff_bytes(c), 0.6))]
    for t in writers:
        t.start()
    watch = FolderWatch(tmp_path, pattern="*.*", until_idle=0.8, give_up=10, **FAST)
    try:
        events = run(watch)
    finally:
        for t in writers:
            t.join()
        proc.wait(timeout=10)
    assert not [e for e in events if isinstance(e, DecodeError)]
    got = series(events)
    assert sorted(got) == [str(tmp_path / name) for name in ("a.npy", "b.h5", "c.tif")]
    want = {"a.npy": a, "b.h5": np.random.default_rng(5).integers(0, 1000, (4, 6, 8)).astype(np.uint16), "c.tif": c}
    for name, arr in want.items():
        s = got[str(tmp_path / name)]
        assert len(s["starts"]) == 1 and len(s["ends"]) == 1 and s["ends"][0].reason == "end"  # one series each
        start = s["starts"][0]
        assert start.number_of_images == len(arr) and start.image_shape == (6, 8) and start.dtype == arr.dtype.name
        assert [f.image_id for f in s["frames"]] == list(range(len(arr)))
        for f in s["frames"]:
            assert np.array_equal(f.image(), arr[f.image_id])
    b = got[str(tmp_path / "b.h5")]["starts"][0]
    mask = b.pixel_mask["data"]
    assert mask.shape == (6, 8) and sorted(zip(*np.nonzero(mask))) == [(1, 2), (5, 7)]
    assert b.saturation_value == 900
    assert b.meta["path"] == "b.h5" and b.meta["first_image"] == 0
    assert got[str(tmp_path / "b.h5")]["frames"][2].meta["source"] == f"{tmp_path / 'b.h5'}::/entry/data/data[2]"
    assert watch.counters["files"] == 3 and watch.counters["frames"] == 11 and watch.counters["finished"] == 3
    assert watch.counters["not_ready"] >= 3  # each file was tried while incomplete (settled half, locked HDF5)


def test_replaced_file_is_a_new_series(tmp_path):
    np.save(tmp_path / "a.npy", stack(2, 1))
    new = stack(3, 9)

    def replace_after_first(ev, watch):
        if isinstance(ev, SeriesEnd):
            if watch.counters["finished"] == 0:  # the first series ended: replace the file
                np.save(tmp_path / ".a.tmp.npy", new)  # hidden: never read
                os.replace(tmp_path / ".a.tmp.npy", tmp_path / "a.npy")
            else:
                watch.stop()

    events = run(FolderWatch(tmp_path, pattern="*.npy", **FAST), replace_after_first)
    starts = [e for e in events if isinstance(e, SeriesStart)]
    assert len(starts) == 2 and starts[0].series_unique_id != starts[1].series_unique_id
    assert starts[1].series_id == starts[0].series_id + 1 and starts[1].number_of_images == 3
    second = [e for e in events if isinstance(e, FrameEvent) and e.series_unique_id == starts[1].series_unique_id]
    assert [e.image_id for e in second] == [0, 1, 2]
    assert all(np.array_equal(e.image(), new[e.image_id]) for e in second)


def test_unreadable_file_reported_once_and_skipped(tmp_path):
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage, not an array" * 4)
    (tmp_path / "notes.txt").write_text("not frames")
    np.save(tmp_path / "good.npy", stack(2, 3))
    state = tmp_path / "watch.json"  # in the folder and matching the pattern: never read
    watch = FolderWatch(tmp_path, pattern="*", give_up=0.3, until_idle=0.6, state_file=state, **FAST)
    events = run(watch)
    errors = [e for e in events if isinstance(e, DecodeError)]
    assert sorted(e.source for e in errors) == [str(tmp_path / "bad.npy"), str(tmp_path / "notes.txt")]
    for e in errors:
        assert len(e.message.splitlines()) == 1 and e.message.startswith(e.source) and "skipped" in e.message
    assert "unknown frame format .txt" in next(e.message for e in errors if e.source.endswith("notes.txt"))
    assert watch.counters["unreadable"] == 2
    assert [e.source for e in events if isinstance(e, SeriesStart)] == [str(tmp_path / "good.npy")]
    assert sum(isinstance(e, FrameEvent) for e in events) == 2


def _frames(events) -> list[tuple[str, int]]:
    return [(e.series_unique_id.split("#")[0], e.image_id) for e in events if isinstance(e, FrameEvent)]


def test_restart_processes_every_frame_exactly_once(tmp_path):
    """Stop after file 1 of 3, then in the middle of file 2, then run to the end: every frame once overall."""
    d = tmp_path / "in"
    d.mkdir()
    for k, name in enumerate(("f1.npy", "f2.npy", "f3.npy")):
        np.save(d / name, stack(4, k))
    state = tmp_path / "state.json"

    def stop_after_first_file(ev, watch):
        if isinstance(ev, SeriesEnd):
            watch.stop()

    first = run(FolderWatch(d, pattern="*.npy", state_file=state, **FAST), stop_after_first_file)
    doc = json.loads(state.read_text())
    assert [e["path"] for e in doc["finished"]] == ["f1.npy"] and doc["in_progress"] == []

    def stop_mid_file(ev, watch):
        if isinstance(ev, FrameEvent) and ev.image_id == 1:
            watch.stop()

    second = run(FolderWatch(d, pattern="*.npy", state_file=state, **FAST), stop_mid_file)
    assert isinstance(second[-1], SeriesEnd) and second[-1].reason == "closed"
    doc = json.loads(state.read_text())
    assert [(e["path"], e["next_frame"]) for e in doc["in_progress"]] == [("f2.npy", 2)]
    third = run(FolderWatch(d, pattern="*.npy", state_file=state, until_idle=0.4, **FAST))
    resumed = [e for e in third if isinstance(e, SeriesStart)][0]
    assert resumed.meta["first_image"] == 2 and resumed.number_of_images == 4
    assert resumed.series_unique_id == [e for e in second if isinstance(e, SeriesStart)][0].series_unique_id
    seen = Counter(_frames(first) + _frames(second) + _frames(third))
    want = {(os.path.abspath(d / name), i) for name in ("f1.npy", "f2.npy", "f3.npy") for i in range(4)}
    assert set(seen) == want and set(seen.values()) == {1}
    assert json.loads(state.read_text())["in_progress"] == []
    # a fourth run finds nothing to do
    assert run(FolderWatch(d, pattern="*.npy", state_file=state, until_idle=0.2, **FAST)) == []


def test_explicit_commits_redo_an_unfinished_file(tmp_path):
    """auto_commit=False: only what the consumer commits is done; an uncommitted file is redone from its start."""
    np.save(tmp_path / "a.npy", stack(3, 1))
    np.save(tmp_path / "b.npy", stack(3, 2))
    state = tmp_path / "s" / "state.json"

    def commit_ends_stop_in_b(ev, watch):
        if isinstance(ev, SeriesEnd):
            watch.commit(ev, {"output": "run_a.h5"})
        if isinstance(ev, FrameEvent) and ev.series_unique_id.split("#")[0].endswith("b.npy") and ev.image_id == 1:
            watch.stop()

    run(FolderWatch(tmp_path, pattern="*.npy", state_file=state, auto_commit=False, **FAST), commit_ends_stop_in_b)
    doc = json.loads(state.read_text())
    assert [(e["path"], e["output"], e["frames"]) for e in doc["finished"]] == [("a.npy", "run_a.h5", 3)]
    assert doc["in_progress"] == []
    again = run(FolderWatch(tmp_path, pattern="*.npy", state_file=state, until_idle=0.3, **FAST))
    assert [(s.split("/")[-1], i) for s, i in _frames(again)] == [("b.npy", 0), ("b.npy", 1), ("b.npy", 2)]


def test_state_file_of_another_folder_is_refused(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    state = tmp_path / "state.json"
    np.save(tmp_path / "a" / "x.npy", stack(1, 0))
    run(FolderWatch(tmp_path / "a", pattern="*.npy", state_file=state, until_idle=0.2, **FAST))
    with pytest.raises(ValueError, match=r"state\.json: records a watch of .*/a, not of .*/b"):
        FolderWatch(tmp_path / "b", state_file=state)
    state.write_text("{not json")
    with pytest.raises(ValueError, match="not readable as JSON"):
        FolderWatch(tmp_path / "a", state_file=state)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        FolderWatch(tmp_path / "nope")


def test_stop_from_another_thread_while_idle(tmp_path):
    watch = FolderWatch(tmp_path, pattern="*.npy", **FAST)
    threading.Timer(0.2, watch.stop).start()
    t0 = time.monotonic()
    assert list(watch) == []
    assert time.monotonic() - t0 < 2


def test_recursive_watch_skips_hidden_folders(tmp_path):
    for rel in ("top.npy", "sub/x.npy", ".hidden/y.npy", "sub/.z.npy"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        np.save(tmp_path / rel, stack(1, 0))
    flat = run(FolderWatch(tmp_path, pattern="*.npy", until_idle=0.2, **FAST))
    deep = run(FolderWatch(tmp_path, pattern="*.npy", recursive=True, until_idle=0.2, **FAST))
    assert [e.meta["path"] for e in flat if isinstance(e, SeriesStart)] == ["top.npy"]
    assert sorted(e.meta["path"] for e in deep if isinstance(e, SeriesStart)) == ["sub/x.npy", "top.npy"]
    with pytest.raises(ValueError, match="no folders"):
        FolderWatch(tmp_path, pattern="sub/*.npy")
