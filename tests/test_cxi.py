"""CXI-style peak lists (gixdrt.io.cxi): read back as CrystFEL reads them, frame-by-frame == one-shot, SWMR
reading while written, nothing left behind on errors, truncation, hits-only rows."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import gixdrt
from gixdrt.errors import DataWarning
from gixdrt.gixd.peaks import PeakTable
from gixdrt.gixd.screening import ScreeningConfig, screen
from gixdrt.gixd.tracks import link_tracks
from gixdrt.io.cxi import CxiWriter, write_cxi

h5py = pytest.importorskip("h5py")
R = "/entry_1/result_1"


@pytest.fixture
def table() -> PeakTable:
    """Frames 0, 1, 3 with 2, 3, 1 peaks (frame 2 and 4 without), linked."""
    rng = np.random.default_rng(1)
    tables = []
    for f, k in ((0, 2), (1, 3), (3, 1)):
        x0, y0 = rng.uniform(0, 900, k), rng.uniform(0, 400, k)
        boxes = np.stack([x0, y0, x0 + rng.uniform(2, 10, k), y0 + rng.uniform(10, 100, k)], axis=1)
        tables.append(PeakTable.from_boxes(boxes, rng.uniform(0.6, 1, k), frame=f, source=f"s.npy[{f}]",
                                           image_shape=(512, 1024), q_max=3.5, polar=rng.random((512, 1024))))
    return link_tracks(PeakTable.concat(tables))


def read(path) -> dict:
    with h5py.File(path, "r") as f:
        g = f[R]
        out = {name: g[name][()] for name in g}
        out["attrs"] = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in g.attrs.items()}
        out["cxi_version"] = f["cxi_version"][()]
    return out


def test_read_back_as_crystfel_does(tmp_path, table):
    path = write_cxi(tmp_path / "peaks.cxi", table, 5, max_peaks=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["peaks.cxi"]
    d = read(path)
    assert d["cxi_version"] == 150
    n = d["nPeaks"]
    assert n.dtype == np.int32 and n.tolist() == [2, 3, 0, 1, 0]
    assert d["frame"].tolist() == [0, 1, 2, 3, 4]
    for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakQ", "peakPhi", "peakScore"):
        assert d[name].dtype == np.float32 and d[name].shape == (5, 4), name
    assert d["peakTrack"].dtype == np.int32
    for f in range(5):
        rows = table.select(table.frame == f)
        k = n[f]
        assert k == len(rows)
        np.testing.assert_allclose(d["peakXPosRaw"][f, :k], (rows.x0 + rows.x1) / 2, rtol=1e-6)
        np.testing.assert_allclose(d["peakYPosRaw"][f, :k], (rows.y0 + rows.y1) / 2, rtol=1e-6)
        np.testing.assert_allclose(d["peakTotalIntensity"][f, :k], rows.intensity, rtol=1e-6)
        np.testing.assert_allclose(d["peakQ"][f, :k], rows.q, rtol=1e-6)
        np.testing.assert_allclose(d["peakPhiWidth"][f, :k], rows.phi_width, rtol=1e-6)
        np.testing.assert_allclose(d["peakScore"][f, :k], rows.score, rtol=1e-6)
        assert d["peakTrack"][f, :k].tolist() == rows.track.tolist()
        for name in ("peakXPosRaw", "peakYPosRaw", "peakTotalIntensity", "peakQ", "peakScore"):
            assert not d[name][f, k:].any(), name  # zero padding beyond nPeaks
        assert (d["peakTrack"][f, k:] == -1).all()
    a = d["attrs"]
    assert "add 0.5" in a["pixel_convention"] and "pixel (0, 0) is at (0, 0)" in a["pixel_convention"]
    assert a["gixdrt_version"] == gixdrt.__version__ and a["software"] == f"gixdrt {gixdrt.__version__}"
    units = json.loads(a["units"])
    assert units["peakQ"] == "1/angstrom" and units["peakPhi"] == "degree" and "polar pixel" in units["peakXPosRaw"]
    assert (a["max_peaks"], a["n_frames_written"], a["n_frames_seen"], a["truncated_frames"], a["complete"]) == \
        (4, 5, 5, 0, 1)


def test_unlinked_table_has_no_track_dataset(tmp_path, table):
    d = read(write_cxi(tmp_path / "p.h5", table.with_tracks(None), 4))
    assert "peakTrack" not in d and d["peakXPosRaw"].shape == (4, 1024)  # OM's default M
    with pytest.raises(ValueError, match="not linked"):
        with CxiWriter(tmp_path / "q.cxi", linked=True) as w:
            w.add(0, table.select(table.frame == 0).with_tracks(None))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.h5"]


def test_frame_by_frame_equals_one_shot(tmp_path, table):
    one = read(write_cxi(tmp_path / "one.cxi", table, 5, max_peaks=3))
    with CxiWriter(tmp_path / "inc.cxi", max_peaks=3, linked=True, flush_every=2) as w:
        for f in range(5):
            assert w.add(f, table.select(table.frame == f))
    inc = read(tmp_path / "inc.cxi")
    assert sorted(one) == sorted(inc)
    for name in one:
        if name != "attrs":
            assert np.array_equal(one[name], inc[name]), name
    assert one["attrs"] == inc["attrs"]


def test_readable_while_written(tmp_path, table):
    path = tmp_path / "live.cxi"
    w = CxiWriter(path, max_peaks=4, linked=True, flush_every=2)
    try:
        assert w.part_path.parent == tmp_path and w.part_path.name.endswith(".part.cxi") and not path.exists()
        w.add(0, table.select(table.frame == 0))
        w.add(1, table.select(table.frame == 1))  # the second frame flushes
        w.add(2, table.select(table.frame == 2))  # buffered
        with h5py.File(w.part_path, "r", swmr=True) as f:
            n = f[R]["nPeaks"]
            assert n[()].tolist() == [2, 3]
            w.flush()
            n.refresh()
            assert n[()].tolist() == [2, 3, 0]
            x = f[R]["peakXPosRaw"]
            x.refresh()
            np.testing.assert_allclose(x[1, :3], (table.x0 + table.x1)[2:5] / 2, rtol=1e-6)
        w.add(3, table.select(table.frame == 3))
    finally:
        w.close()
    assert [p.name for p in tmp_path.iterdir()] == ["live.cxi"]
    assert read(path)["nPeaks"].tolist() == [2, 3, 0, 1]


@pytest.mark.parametrize("where", ["add", "body", "close"])
def test_no_part_file_left_on_error(tmp_path, table, monkeypatch, where):
    path = tmp_path / "p.cxi"
    path.write_bytes(b"previous")
    if where == "close":
        def broken(self):
            raise OSError("disk full")

        monkeypatch.setattr(CxiWriter, "flush", broken)
    with pytest.raises((ValueError, RuntimeError, OSError)):
        with CxiWriter(path, flush_every=100 if where == "close" else 1) as w:  # "close": the final flush fails
            w.add(0, table.select(table.frame == 0))
            if where == "add":
                w.add(1, table.select(table.frame == 0))  # rows of frame 0 given as frame 1
            elif where == "body":
                raise RuntimeError("stop")
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["p.cxi"]
    w = CxiWriter(tmp_path / "q.cxi")
    w.abort()
    assert [p.name for p in tmp_path.iterdir()] == ["p.cxi"]


def test_more_peaks_than_max_peaks(tmp_path, table):
    with pytest.warns(DataWarning, match="frame 1 has 3 peaks"):
        d = read(write_cxi(tmp_path / "p.cxi", table, 4, max_peaks=2))
    assert d["nPeaks"].tolist() == [2, 2, 0, 1] and d["attrs"]["truncated_frames"] == 1
    rows = table.select(table.frame == 1)
    np.testing.assert_allclose(d["peakScore"][1], rows.score[:2], rtol=1e-6)  # the two best
    assert (np.diff(rows.score) <= 0).all()


def test_hits_only_rows(tmp_path, table):
    flags = screen(table, 6, ScreeningConfig(min_peaks=2, keep_misses=0.0))
    d = read(write_cxi(tmp_path / "hits.cxi", table, 6, flags=flags))
    assert d["frame"].tolist() == [0, 1] and d["nPeaks"].tolist() == [2, 3]
    assert d["hit"].tolist() == [1, 1] and d["keptMiss"].tolist() == [0, 0]
    a = d["attrs"]
    assert (a["n_frames_seen"], a["n_frames_written"], a["n_hits"], a["n_misses"], a["n_kept_misses"]) == \
        (6, 2, 2, 4, 0)
    flags = screen(table, 6, ScreeningConfig(min_peaks=2, keep_misses=1.0))
    d = read(write_cxi(tmp_path / "all.cxi", table, 6, flags=flags))
    assert d["frame"].tolist() == list(range(6)) and d["keptMiss"].tolist() == [0, 0, 1, 1, 1, 1]


def test_bad_arguments(tmp_path, table):
    with pytest.raises(ValueError, match="use .cxi"):
        CxiWriter(tmp_path / "p.txt")
    with pytest.raises(ValueError, match="max_peaks"):
        CxiWriter(tmp_path / "p.cxi", max_peaks=0)
    with pytest.raises(ValueError, match="n_frames=2"):
        write_cxi(tmp_path / "p.cxi", table, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_cxi(tmp_path / "empty.cxi", PeakTable.empty(), 0)
    assert read(tmp_path / "empty.cxi")["nPeaks"].shape == (0,)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.cxi"]
