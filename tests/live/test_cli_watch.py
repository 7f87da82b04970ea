"""``gixdrt watch``: the same peaks as ``gixdrt detect`` on the same files, one table per file, resume after a
restart, a clean stop on Ctrl-C (finished tables kept, no part file, the unfinished file redone)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gixdrt.cli import main
from gixdrt.gixd.peaks import COLUMNS
from gixdrt.io.writers import read_peaks

WATCH_FAST = ["--idle-exit", "0.3", "--settle", "0.05", "--poll", "0.05"]
DETECT_OPTS = ["--score-threshold", "-1", "--max-detections", "3"]


def make_frames(directory, names, seed=0):
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for k, name in enumerate(names):
        np.save(directory / name, (rng.random((2 + k % 2, 60, 80)) * 100).astype(np.float32))


def make_masked_h5(path, seed=7):
    """An HDF5 file of 2 frames with a NeXus pixel_mask (a block of bad pixels) and a saturation_value."""
    import h5py

    data = (np.random.default_rng(seed).random((2, 60, 80)) * 100).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["entry/data/data"] = data
        det = f.create_group("entry/instrument/detector")
        det.attrs["NX_class"] = "NXdetector"
        mask = np.zeros((60, 80), np.uint32)
        mask[10:40, 20:60] = 1
        det["pixel_mask"] = mask
        det["saturation_value"] = 95.0
    return data


def detect(tmp_path, frame, cfg, model, suffix=".h5"):
    out = tmp_path / "ref" / f"{frame.stem}{suffix}"
    assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", str(out),
                 "--no-progress", *DETECT_OPTS]) == 0
    return read_peaks(out)


def assert_same_peaks(got, want):
    (table, meta), (ref, ref_meta) = got, want
    assert len(table) == len(ref) > 0
    for name in COLUMNS:
        a, b = getattr(table, name), getattr(ref, name)
        assert (list(a) == list(b)) if name == "source" else np.array_equal(a, b, equal_nan=True), name
    if "frame_counts" in ref_meta:
        assert np.array_equal(meta["frame_counts"], ref_meta["frame_counts"])


def test_watch_writes_what_detect_writes(tmp_path, small_config, model_dir, capsys):
    d = tmp_path / "in"
    make_frames(d, ["a.npy", "b.npy"])
    masked = make_masked_h5(d / "m.h5")
    out = tmp_path / "out" / "run.h5"
    code = main(["watch", str(d), "--pattern", "*", "--config", str(small_config), "--model", str(model_dir),
                 "--out", str(out), *DETECT_OPTS, *WATCH_FAST])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5.watch-state.json", "run_a.h5", "run_b.h5",
                                                           "run_m.h5"]
    # the HDF5 file's own pixel_mask and saturation_value apply, as in detect (the same frames unmasked differ)
    got = read_peaks(out.parent / "run_m.h5")
    assert_same_peaks(got, detect(tmp_path, d / "m.h5", small_config, model_dir))
    np.save(tmp_path / "m_unmasked.npy", masked)
    unmasked = detect(tmp_path, tmp_path / "m_unmasked.npy", small_config, model_dir)[0]
    assert not np.array_equal(unmasked.score, got[0].score)
    for name in ("a", "b"):
        got = read_peaks(out.parent / f"run_{name}.h5")
        assert_same_peaks(got, detect(tmp_path, d / f"{name}.npy", small_config, model_dir))
        assert got[1]["end_reason"] == "end" and got[1]["series_name"] == name
        n = 2 if name == "a" else 3
        assert got[1]["counters"] == {"expected": n, "received": n, "processed": n, "decode_errors": 0}
    lines = captured.out.strip().splitlines()
    assert lines[0].startswith(f"{d / 'a.npy'}: 2 frame(s), 6 peak(s)") and lines[0].endswith(f"→ {out.parent}/run_a.h5")
    assert lines[1].startswith(f"{d / 'b.npy'}: 3 frame(s), 9 peak(s)")
    assert lines[3].startswith("3 file(s), 7 frame(s), 21 peak(s) in ")
    state = json.loads((out.parent / "run.h5.watch-state.json").read_text())
    assert [(e["path"], e["frames"], e["output"]) for e in state["finished"]] == [
        ("a.npy", 2, str(out.parent / "run_a.h5")), ("b.npy", 3, str(out.parent / "run_b.h5")),
        ("m.h5", 2, str(out.parent / "run_m.h5"))]


def test_watch_resumes_and_skips_finished_files(tmp_path, small_config, model_dir, capsys):
    d = tmp_path / "in"
    make_frames(d, ["a.npy"])
    out = d / "run.csv"  # inside the watched folder: the tables and the state are never read as frames
    args = ["watch", str(d), "--pattern", "*", "--config", str(small_config), "--model", str(model_dir),
            "--out", str(out), "--state", str(tmp_path / "st.json"), *DETECT_OPTS, *WATCH_FAST]
    assert main(args) == 0
    capsys.readouterr()
    make_frames(d, ["a.npy", "c.npy"], seed=0)  # a.npy rewritten with the same bytes: a new file (mtime), c new
    assert main(args) == 0
    captured = capsys.readouterr()
    lines = captured.out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [str(d / "a.npy"), str(d / "c.npy")]
    assert lines[-1].startswith("2 file(s), 5 frame(s)")
    assert "warning" not in captured.err, captured.err
    # the rewritten a.npy did not replace the first table of a.npy
    names = sorted(p.name for p in d.iterdir())
    assert names == ["a.npy", "c.npy", "run_a-2.csv", "run_a-2.csv.json", "run_a.csv", "run_a.csv.json",
                     "run_c.csv", "run_c.csv.json"]
    assert_same_peaks(read_peaks(d / "run_c.csv"), detect(tmp_path, d / "c.npy", small_config, model_dir, ".csv"))
    capsys.readouterr()
    assert main(args) == 0  # nothing new: nothing done
    assert capsys.readouterr().out.strip().startswith("0 file(s), 0 frame(s)")


@pytest.mark.parametrize("signal_name", ["SIGINT", "SIGTERM"])
def test_stop_keeps_finished_tables_and_redoes_the_unfinished_file(tmp_path, small_config, model_dir, capsys,
                                                                   monkeypatch, signal_name):
    """Ctrl-C (KeyboardInterrupt) or SIGTERM (the CLI's Terminated) in the middle of the second file."""
    import signal

    from gixdrt.cli import Terminated
    from gixdrt.gixd.pipeline import Pipeline

    d = tmp_path / "in"
    make_frames(d, ["a.npy", "b.npy", "c.npy"])
    out = tmp_path / "out" / "run.h5"
    args = ["watch", str(d), "--pattern", "*.npy", "--config", str(small_config), "--model", str(model_dir),
            "--out", str(out), *DETECT_OPTS, *WATCH_FAST]
    original = Pipeline._detect_batch

    def interrupt_in_b(self, items):
        if any("b.npy[1]" in source for _, source, _ in items):
            raise KeyboardInterrupt if signal_name == "SIGINT" else Terminated(signal.SIGTERM)
        return original(self, items)

    monkeypatch.setattr(Pipeline, "_detect_batch", interrupt_in_b)
    assert main(args) == (130 if signal_name == "SIGINT" else 128 + signal.SIGTERM)
    err = capsys.readouterr().err
    assert f"stopped by {signal_name}: 1 file(s)" in err and f"{d / 'b.npy'} was not finished: it is redone on restart" in err
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5.watch-state.json", "run_a.h5"]
    state = json.loads((out.parent / "run.h5.watch-state.json").read_text())
    assert [e["path"] for e in state["finished"]] == ["a.npy"] and state["in_progress"] == []
    monkeypatch.setattr(Pipeline, "_detect_batch", original)
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split(":")[0] for line in lines[:-1]] == [str(d / "b.npy"), str(d / "c.npy")]
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5.watch-state.json", "run_a.h5", "run_b.h5",
                                                           "run_c.h5"]
    assert_same_peaks(read_peaks(out.parent / "run_b.h5"), detect(tmp_path, d / "b.npy", small_config, model_dir))


@pytest.mark.parametrize("case, expect", [
    ("no_dir", "no such directory"),
    ("no_config", "--config: raw frames need the experiment geometry"),
    ("state_suffix", "--state "),
    ("bad_suffix", "unsupported output format .txt"),
])
def test_watch_errors_are_one_line(tmp_path, small_config, capsys, case, expect):
    d = tmp_path / "in"
    d.mkdir()
    out = tmp_path / "run.h5"
    args = ["watch", str(d), "--config", str(small_config), "--out", str(out), "--idle-exit", "0"]
    if case == "no_dir":
        args[1] = str(tmp_path / "nope")
    elif case == "no_config":
        args[2:4] = []
    elif case == "state_suffix":
        args += ["--state", str(tmp_path / "state.txt")]
    elif case == "bad_suffix":
        args[args.index("--out") + 1] = str(tmp_path / "run.txt")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gixdrt watch: error: ") and expect in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]
