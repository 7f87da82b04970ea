"""Peak-table files (gixdrt.io.writers): exact round trips, layout, metadata, atomic writes."""
from __future__ import annotations

import csv
import json
from datetime import datetime

import numpy as np
import pytest

import gixdrt
from gixdrt.gixd.peaks import COLUMNS, PeakTable
from gixdrt.io import writers
from gixdrt.io.writers import read_peaks, write_peaks

h5py = pytest.importorskip("h5py")
yaml = pytest.importorskip("yaml")


@pytest.fixture
def table():
    """Frames 0 and 2 with peaks (frame 1 and 3 empty): awkward floats, NaN physical columns, odd sources."""
    rng = np.random.default_rng(0)
    t0 = PeakTable.from_boxes(
        rng.random((3, 4)) * 100, [0.9, 1 / 3, 0.61], frame=0, source='scan.h5::/entry/data/data[0:3]',
        image_shape=(512, 1024), q_max=2.7, polar=rng.random((512, 1024)),
    )
    t2 = PeakTable.from_boxes(
        np.array([[1.0, 2.0, 3.5, 4.25], [0.1, 0.2, 1e-300, 123456789.123456789]]), [0.75, 0.8], frame=2,
        source='a, "quoted" ü.tif', image_shape=(64, 128),
    )
    t = PeakTable.concat([t0, t2])
    t.score[0] = np.nextafter(0.9, 1.0)  # needs all 17 digits
    return t


def _assert_same(got: PeakTable, want: PeakTable):
    assert len(got) == len(want)
    for name in COLUMNS:
        a, b = getattr(got, name), getattr(want, name)
        if name == "source":
            assert list(a) == list(b) and all(isinstance(s, str) for s in a)
        elif name in ("frame", "peak"):
            assert a.dtype == np.int64 and np.array_equal(a, b)
        else:
            assert a.dtype == np.float64 and np.array_equal(a, b, equal_nan=True), name


@pytest.mark.parametrize("suffix", [".csv", ".h5", ".hdf5"])
def test_round_trip_exact(tmp_path, table, suffix):
    assert np.isnan(table.q[3:]).all() and np.isnan(table.intensity[3:]).all()
    path = write_peaks(tmp_path / "sub" / f"peaks{suffix}", table, n_frames=4)
    assert path == tmp_path / "sub" / f"peaks{suffix}"
    got, meta = read_peaks(path)
    _assert_same(got, table)
    if suffix != ".csv":
        assert np.array_equal(meta["frame_counts"], [3, 0, 2, 0]) and meta["frame_counts"].dtype == np.int64


@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_empty_table(tmp_path, suffix):
    path = write_peaks(tmp_path / f"none{suffix}", PeakTable.empty(), n_frames=3)
    got, meta = read_peaks(path)
    _assert_same(got, PeakTable.empty())
    if suffix == ".csv":
        assert path.read_text() == ",".join(COLUMNS) + "\n"
    else:
        assert np.array_equal(meta["frame_counts"], [0, 0, 0])
        with h5py.File(path) as f:
            assert f["peaks"].shape == (0,) and f["peaks"].dtype.names == COLUMNS


def test_csv_layout(tmp_path, table):
    path = write_peaks(tmp_path / "p.csv", table, n_frames=3)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == ",".join(COLUMNS) and len(lines) == 1 + len(table)
    rows = list(csv.reader(lines[1:]))
    assert rows[3][1] == 'a, "quoted" ü.tif'
    assert '"a, ""quoted"" ü.tif"' in lines[4]  # quoted by the csv module
    assert rows[3][COLUMNS.index("q")] == "" and rows[3][COLUMNS.index("intensity")] == ""  # NaN → empty
    assert rows[0][COLUMNS.index("score")] == repr(float(table.score[0]))


def test_h5_layout_and_metadata(tmp_path, table):
    class Cfg:  # like gixdrt.geometry.Config: serialised through to_dict
        def to_dict(self):
            return {"q_space": {"q_xy_max": np.float64(2.7), "z0": 100}, "general": {"sum_images": 3}}

    card = {"architecture": "gixi", "score_threshold": 0.6}
    meta_in = {
        "config": Cfg(),
        "model_card": card,
        "input": "raw",
        "backend": "onnxruntime",
        "sum": 3,
        "nms_iou": 0.1,
        "inputs": ["a.tif", "b.h5::/entry/data/data"],
        "mask": np.arange(6, dtype=np.uint8),
        "skipped": None,
    }
    path = write_peaks(tmp_path / "p.h5", table, n_frames=5, metadata=meta_in)
    with h5py.File(path) as f:
        ds = f["peaks"]
        assert ds.dtype.names == COLUMNS
        assert h5py.check_string_dtype(ds.dtype["source"]).encoding == "utf-8"
        assert ds.dtype["frame"] == np.int64 and ds.dtype["q"] == np.float64
        assert f["frame_counts"].dtype == np.int64 and list(f["frame_counts"][()]) == [3, 0, 2, 0, 0]
        assert set(f["metadata"].attrs) >= {"gixdrt_version", "created", "config", "model_card"}
    _, meta = read_peaks(path)
    assert meta["gixdrt_version"] == gixdrt.__version__
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert meta["n_frames"] == 5
    assert yaml.safe_load(meta["config"]) == Cfg().to_dict()
    assert json.loads(meta["model_card"]) == card
    assert meta["input"] == "raw" and meta["backend"] == "onnxruntime" and meta["sum"] == 3 and meta["nms_iou"] == 0.1
    assert meta["inputs"] == meta_in["inputs"]
    assert np.array_equal(meta["mask"], meta_in["mask"])
    assert "skipped" not in meta

    # config given as YAML text or as the path of the YAML file is stored as that text
    text = "q_space:\n  q_xy_max: 2.7\n"
    (tmp_path / "c.yaml").write_text(text)
    for config in (text, tmp_path / "c.yaml"):
        write_peaks(path, table, n_frames=3, metadata={"config": config, "model_card": json.dumps(card)})
        _, meta = read_peaks(path)
        assert meta["config"] == text and json.loads(meta["model_card"]) == card


def test_bad_arguments(tmp_path, table):
    with pytest.raises(ValueError, match="unsupported peak table format") as info:
        write_peaks(tmp_path / "p.txt", table, n_frames=3)
    assert str(tmp_path / "p.txt") in str(info.value)
    with pytest.raises(ValueError, match="n_frames"):
        write_peaks(tmp_path / "p.csv", table, n_frames=2)  # frame 2 needs n_frames ≥ 3
    with pytest.raises(ValueError, match="reserved") as info:
        write_peaks(tmp_path / "p.h5", table, n_frames=3, metadata={"created": "yesterday"})
    assert str(info.value).startswith(f"{tmp_path / 'p.h5'}: metadata key 'created'")
    with pytest.raises(ValueError, match="cannot store"):
        write_peaks(tmp_path / "p.h5", table, n_frames=3, metadata={"thing": object()})
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a gixdrt peak table"):
        read_peaks(tmp_path / "x.csv")


def _fail_csv(monkeypatch):
    original = writers._write_csv

    def half_then_fail(path, table):
        original(path, table)  # the temporary file is complete …
        raise RuntimeError("disk full")  # … but the write fails before the rename

    monkeypatch.setattr(writers, "_write_csv", half_then_fail)


def _fail_h5(monkeypatch):
    def fail(self, *args, **kwargs):  # /peaks and /frame_counts are written, /metadata fails
        raise RuntimeError("disk full")

    monkeypatch.setattr(h5py.Group, "create_group", fail)


def _fail_replace(monkeypatch):
    def fail(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(writers.os, "replace", fail)


@pytest.mark.parametrize(
    "suffix, fail", [(".csv", _fail_csv), (".h5", _fail_h5), (".csv", _fail_replace), (".h5", _fail_replace)]
)
def test_atomic_failure_keeps_old_file(tmp_path, table, monkeypatch, suffix, fail):
    path = tmp_path / f"peaks{suffix}"
    old = PeakTable.concat([table.select(np.arange(len(table)) < 2)])
    write_peaks(path, old, n_frames=3)
    before = path.read_bytes()
    fail(monkeypatch)
    with pytest.raises((RuntimeError, OSError)):
        write_peaks(path, table, n_frames=3)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left
    monkeypatch.undo()
    _assert_same(read_peaks(path)[0], old)

    # without an old file, a failed write leaves nothing
    path.unlink()
    fail(monkeypatch)
    with pytest.raises((RuntimeError, OSError)):
        write_peaks(path, table, n_frames=3)
    assert list(tmp_path.iterdir()) == []


def test_overwrite(tmp_path, table):
    path = tmp_path / "p.h5"
    write_peaks(path, table, n_frames=3)
    write_peaks(path, PeakTable.empty(), n_frames=1)
    got, meta = read_peaks(path)
    assert len(got) == 0 and list(meta["frame_counts"]) == [0]
    assert [p.name for p in tmp_path.iterdir()] == ["p.h5"]
