"""``gixdrt detect``, ``gixdrt convert`` and the demo's peak table: files, metadata, errors, interruptions.

Real-frame runs (published model, ~0.8 s per forward on 2 CPU cores): the CSV run (shared by a module fixture),
the --sum 2 HDF5 run, the converted model's run and the demo. Error and interruption cases use a small
synthetic detector and a randomly initialised model saved in gixdrt's format, so they need no assets.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

import gixdrt
from gixdrt.cli import main
from gixdrt.testing import PUBLISHED_REAL_FRAME_DETECTIONS, match_detections

TOL_PX = 0.05
TOL_SCORE = 1e-3
HEADER = "frame,source,peak,q,phi,q_width,phi_width,score,x0,y0,x1,y1,intensity"  # ARCHITECTURE.md

#: shared/reference/published-detector.md §5: (x0, y0, x1, y1, score)
REFERENCE = PUBLISHED_REAL_FRAME_DETECTIONS  # shared/reference §5



def match(boxes, scores, reference=REFERENCE, tol_px=TOL_PX, tol_score=TOL_SCORE) -> np.ndarray:
    """Each reference row → the detection with the nearest centre (one to one, exactly as many); tolerances."""
    return match_detections(boxes, scores, reference, tol_px=tol_px, tol_score=tol_score)


def read_csv(path):
    """(header line, list of row dicts, PeakTable)."""
    from gixdrt.io import read_peaks

    text = path.read_text(encoding="utf-8")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return text.splitlines()[0], rows, read_peaks(path)[0]


def leftovers(directory, keep=()):
    """Files in ``directory`` other than ``keep`` (temporary .part files, half-written outputs)."""
    if not directory.exists():
        return []
    return sorted(p.name for p in directory.iterdir() if p.name not in keep)


# --- a small synthetic setup: fast, no assets ----------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory, small_config):
    """(config path, frame path, model directory) for a 60×80 detector → 32×64 polar images."""
    from gixdrt.model import GixdDetector, save_model

    d = tmp_path_factory.mktemp("small")
    cfg_path = small_config
    frame_path = d / "frame.npy"
    np.save(frame_path, np.random.default_rng(3).random((2, 60, 80)).astype(np.float32) * 100)
    import torch

    torch.manual_seed(0)
    model_dir = d / "random-model"
    save_model(GixdDetector(), model_dir)
    return cfg_path, frame_path, model_dir


def test_small_setup_runs(small, tmp_path):
    """The synthetic setup works end to end, so the error cases below fail for the reason they name."""
    cfg, frame, model = small
    out = tmp_path / "ok.csv"
    assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", str(out),
                 "--no-progress", "--score-threshold", "-1", "--max-detections", "3"]) == 0
    header, rows, table = read_csv(out)
    assert header == HEADER
    assert len(rows) == 6 and table.frame.tolist() == [0, 0, 0, 1, 1, 1]
    assert [r["source"] for r in rows[::3]] == [f"{frame}[0]", f"{frame}[1]"]
    assert all(r["q"] != "" and r["intensity"] != "" for r in rows)
    assert leftovers(tmp_path) == ["ok.csv"]


@pytest.mark.parametrize("option, value, expect", [
    ("--score-threshold", "2", "2 is outside [-1.0, 1.0]"),
    ("--score-threshold", "nan", "nan is outside"),
    ("--nms-iou", "-1", "-1 is outside [0.0, 1.0]"),
    ("--max-detections", "0", "0 is outside [1, 100000]"),
    ("--max-detections", "many", "'many' is not an integer"),
])
def test_detect_option_out_of_range_is_one_line(small, tmp_path, capsys, option, value, expect):
    cfg, frame, model = small
    out = tmp_path / "p.csv"
    assert main(["detect", str(frame), "--config", str(cfg), "--out", str(out), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gixdrt detect: error: {option}: {expect}") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    "case, expect",
    [
        ("no_config", "--config"),
        ("bad_suffix", "unsupported output format"),
        ("missing_input", "file not found"),
        ("wrong_shape", "does not match the detector size in the config, q_space.size_y × q_space.size_x = 60×80"),
        ("no_model", "no such model file"),
        ("corrupt_model", "not a readable PyTorch checkpoint"),
    ],
)
def test_detect_errors(small, tmp_path, capsys, case, expect):
    cfg, frame, model = small
    outdir = tmp_path / "out"
    out = outdir / "p.csv"
    named = frame
    config = ["--config", str(cfg)]
    if case == "no_config":
        config = []
    elif case == "bad_suffix":
        out = named = outdir / "p.txt"
    elif case == "missing_input":
        frame = named = tmp_path / "nope.tif"
    elif case == "wrong_shape":
        frame = named = tmp_path / "small.npy"
        np.save(frame, np.zeros((10, 10), np.float32))
    elif case == "no_model":
        model = named = "/nonexistent"
    elif case == "corrupt_model":
        model = named = tmp_path / "x.h5"
        model.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    code = main(["detect", str(frame), *config, "--model", str(model), "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2
    assert "error" in captured.err and expect in captured.err, captured.err
    if case != "no_config":
        assert str(named) in captured.err, captured.err
    if case == "wrong_shape":
        assert "(10, 10)" in captured.err
    assert not out.exists()
    assert leftovers(outdir) == []


@pytest.mark.parametrize("where", ["pipeline", "writer"])
def test_interrupted_run_keeps_previous_output(small, tmp_path, monkeypatch, capsys, where):
    from gixdrt.gixd import pipeline
    from gixdrt.io import writers

    cfg, frame, model = small
    frames_seen = []
    if where == "pipeline":
        def run(self, frames, progress=None):
            frames_seen.append(next(iter(frames)))  # the run has started: one frame was read
            raise KeyboardInterrupt

        monkeypatch.setattr(pipeline.Pipeline, "run", run)
    else:
        def write_csv(path, table):
            path.write_text(HEADER + "\n0,half")  # a partial file under the temporary name
            frames_seen.append(path)
            raise KeyboardInterrupt

        monkeypatch.setattr(writers, "_write_csv", write_csv)
    old = tmp_path / "p.csv"
    old.write_text("previous results\n")
    args = ["detect", str(frame), "--config", str(cfg), "--model", str(model), "--no-progress"]
    assert main(args + ["--out", str(old)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert frames_seen, "the interruption was not reached"
    assert old.read_text() == "previous results\n"
    assert leftovers(tmp_path) == ["p.csv"]
    fresh = tmp_path / "fresh.csv"
    assert main(args + ["--out", str(fresh)]) == 130
    assert not fresh.exists()
    assert leftovers(tmp_path) == ["p.csv"]


# --- the published real frame --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_csv(published_assets, tmp_path_factory):
    """The real frame through ``gixdrt detect`` with the published model → the CSV path."""
    out = tmp_path_factory.mktemp("real") / "p.csv"
    code = main(["detect", str(published_assets.frame), "--config", str(published_assets.config),
                 "--model", "published", "--backend", "torch", "--out", str(out)])
    assert code == 0
    return out


@pytest.mark.published
def test_detect_csv_real_frame(real_csv, published_assets, published_config):
    header, rows, table = read_csv(real_csv)
    assert header == HEADER
    assert len(rows) == 12
    match(table.boxes, table.score)
    assert all(r["source"] == str(published_assets.frame) and r["frame"] == "0" for r in rows)
    assert [int(r["peak"]) for r in rows] == list(range(12))
    q_max = published_config.geometry.q_max
    np.testing.assert_allclose(table.q, (table.x0 + table.x1) / 2 * q_max / 1023, rtol=1e-12)
    np.testing.assert_allclose(table.phi, (table.y0 + table.y1) / 2 * 90 / 511, rtol=1e-12)
    assert np.isfinite(table.intensity).all() and (table.intensity > 0).all()
    assert leftovers(real_csv.parent) == ["p.csv"]


@pytest.mark.published
def test_detect_h5_sum_of_two(real_csv, published_assets, published_frame, published_config, tmp_path):
    from gixdrt.io import read_peaks

    stack = tmp_path / "stack.npy"
    np.save(stack, np.stack([published_frame, published_frame]))
    out = tmp_path / "p.h5"
    code = main(["detect", str(stack), "--config", str(published_assets.config), "--model", "published",
                 "--sum", "2", "--out", str(out), "--no-progress"])
    assert code == 0
    table, meta = read_peaks(out)
    single = read_peaks(real_csv)[0]
    assert set(table.frame.tolist()) == {0} and len(table) == 12
    assert set(table.source.tolist()) == {f"{stack}[0:2]"}
    idx = match(table.boxes, table.score, np.column_stack([single.boxes, single.score]))
    match(table.boxes, table.score)
    np.testing.assert_allclose(table.intensity[idx], 2 * single.intensity, rtol=1e-5)  # the frames were summed
    np.testing.assert_array_equal(meta["frame_counts"], [12])
    assert meta["n_frames"] == 1
    assert meta["gixdrt_version"] == gixdrt.__version__
    cfg = yaml.safe_load(meta["config"])
    g = published_config.geometry
    assert cfg["q_space"]["distance"] == g.distance and cfg["q_space"]["size_x"] == g.size_x
    card = json.loads(meta["model_card"])
    assert card["name"] == "save_only_largest_2" and card["provenance"]["source"] == "published"
    assert meta["sum"] == 2 and meta["input"] == "raw" and meta["score_threshold"] == pytest.approx(0.6)
    assert leftovers(tmp_path) == ["p.h5", "stack.npy"]


@pytest.mark.published
def test_detect_processed_input_without_config(published_config, published_frame, published_assets, tmp_path):
    from gixdrt.gixd.preprocess import Preprocessor

    pre = Preprocessor(published_config)
    processed = np.asarray(pre.contrast(pre.polar(published_frame)), np.float32)
    crop = processed[:, 256:512]  # 512×256: the rings at x ≈ 284 and 402 px
    path = tmp_path / "processed.npy"
    np.save(path, np.stack([crop, crop[:, ::-1]]))
    out = tmp_path / "p.csv"
    assert main(["detect", str(path), "--input", "processed", "--model", "published", "--out", str(out),
                 "--batch", "2", "--no-progress"]) == 0
    header, rows, table = read_csv(out)
    assert header == HEADER
    assert set(table.frame.tolist()) == {0, 1}
    for name in ("q", "phi", "q_width", "phi_width", "intensity"):
        assert all(r[name] == "" for r in rows), name
    assert all(r["x0"] != "" and r["score"] != "" for r in rows)
    # the two rings are found in the crop and in its mirror image
    for frame, centres in ((0, (284.40 - 256, 401.81 - 256)), (1, (255 - (284.40 - 256), 255 - (401.81 - 256)))):
        t = table.select(table.frame == frame)
        x = (t.x0 + t.x1) / 2
        for c in centres:
            assert np.abs(x - c).min() < 1.0, (frame, c, x)


@pytest.mark.published
def test_convert_then_detect_with_converted_model(real_csv, published_assets, tmp_path):
    model_dir = tmp_path / "model"
    assert main(["convert", "published", "--out", str(model_dir)]) == 0
    assert (model_dir / "model.safetensors").stat().st_size > 20_000_000  # 5.9 M fp32 parameters
    card = json.loads((model_dir / "model.json").read_text())
    assert card["name"] == "save_only_largest_2"
    assert card["provenance"]["file"] == "save_only_largest_2.h5" and len(card["provenance"]["sha256"]) == 64
    out = tmp_path / "q.csv"
    # the same backend as the first run (torch), so the weights alone are compared, to 1e-4 px
    assert main(["detect", str(published_assets.frame), "--config", str(published_assets.config),
                 "--model", str(model_dir), "--backend", "torch", "--out", str(out)]) == 0
    _, _, table = read_csv(out)
    first = read_csv(real_csv)[2]
    match(table.boxes, table.score)
    assert len(table) == len(first) == 12
    np.testing.assert_allclose(table.boxes, first.boxes, rtol=0, atol=1e-4)
    np.testing.assert_allclose(table.score, first.score, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table.q, first.q, rtol=1e-6)


@pytest.mark.published
def test_demo_writes_peaks(tmp_path, published_assets, capsys):
    outdir = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(outdir)]) == 0
    out = capsys.readouterr().out
    header, rows, table = read_csv(outdir / "peaks.csv")
    assert header == HEADER and f"{len(rows)} peaks" in out
    from gixdrt.model import zoo

    if zoo.has_default_weights():  # the demo runs gixdrt's own model: the published rings, by |Q|
        from gixdrt.geometry import load_config
        from gixdrt.testing import match_rings, published_ring_q

        q_max = load_config(published_assets.config).geometry.q_max
        assert match_rings(table.q, published_ring_q(q_max))["found"] == 12
    else:  # the default is the published model: its exact boxes
        assert len(rows) == 12
        match(table.boxes, table.score)
    png = outdir / "peaks.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_gixi_compat_layout(small, tmp_path):
    """--gixi-compat writes one group per frame in the authors' layout, consistent with the peak table."""
    import h5py

    from gixdrt.io import read_peaks

    cfg, frame, model = small
    out, gixi = tmp_path / "p.h5", tmp_path / "p.gixi.h5"
    assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", str(out),
                 "--gixi-compat", str(gixi), "--score-threshold", "-1", "--max-detections", "3",
                 "--no-progress"]) == 0
    table, _ = read_peaks(out)
    with h5py.File(gixi) as f:
        assert sorted(f) == ["frame_000000", "frame_000001"]
        for i, name in enumerate(sorted(f)):
            g = f[name]
            assert g.attrs["IMAGE_DATASET"] == "IMAGE_DATASET" and g.attrs["paths"] == f"{frame}[{i}]"
            rows = table.select(table.frame == i)
            h, w = g["polar_img"].shape
            assert (h, w) == (32, 64) and g["boxes"].shape == (len(rows), 4)
            np.testing.assert_allclose(g["boxes"][()], rows.boxes / [w, h, w, h], rtol=1e-6)
            np.testing.assert_allclose(g["scores"][()], rows.score, rtol=1e-6)
            np.testing.assert_allclose(g["intensities"][()], rows.intensity)
    assert leftovers(tmp_path) == ["p.gixi.h5", "p.h5"]


def test_gixi_compat_interrupted_leaves_nothing(small, tmp_path, monkeypatch):
    from gixdrt.gixd import pipeline

    cfg, frame, model = small
    gixi = tmp_path / "p.gixi.h5"
    gixi.write_bytes(b"previous")

    def run(self, frames, progress=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline.Pipeline, "run", run)
    assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", str(tmp_path / "p.csv"),
                 "--gixi-compat", str(gixi), "--no-progress"]) == 130
    assert gixi.read_bytes() == b"previous"
    assert leftovers(tmp_path) == ["p.gixi.h5"]


# --- tracks, hits and CXI output ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repeated(small, tmp_path_factory):
    """(config, 4-frame stack: one random frame three times, then another one, model)."""
    cfg, frame, model = small
    stack = np.load(frame)
    path = tmp_path_factory.mktemp("repeated") / "frames.npy"
    np.save(path, np.stack([stack[0], stack[0], stack[0], stack[1]]))
    return cfg, path, model


def test_detect_link_cxi_hits_plot(repeated, tmp_path, capsys):
    """--link --min-track --cxi --hits --plot-tracks: every output consistent with the peak table."""
    import h5py

    from gixdrt.gixd.tracks import link_tracks, track_summary
    from gixdrt.io import read_peaks

    cfg, frames, model = repeated
    out, cxi, hits, png = tmp_path / "p.h5", tmp_path / "p.cxi", tmp_path / "hits.lst", tmp_path / "tracks.png"
    assert main(["detect", str(frames), "--config", str(cfg), "--model", str(model), "--out", str(out),
                 "--score-threshold", "-1", "--max-detections", "3", "--no-progress", "--link", "--min-track", "2",
                 "--cxi", str(cxi), "--hits", str(hits), "--min-peaks", "3", "--plot-tracks", str(png)]) == 0
    printed = capsys.readouterr().out
    table, meta = read_peaks(out)
    assert table.linked and table.counts_per_frame(4).tolist() == [3, 3, 3, 3]
    # the three identical frames: each peak one track over frames 0…2, ids by peak order
    for f in range(3):
        assert table.track[table.frame == f].tolist() == [0, 1, 2]
    want = link_tracks(table.with_tracks(None), min_length=2)
    assert table.track.tolist() == want.track.tolist()
    summary = track_summary(table)
    assert meta["tracks"]["track"].tolist() == summary.track.tolist()
    assert meta["tracks"]["duration"].tolist() == summary.duration.tolist()
    assert summary.first.tolist()[:3] == [0, 0, 0] and min(summary.duration) >= 2
    assert meta["link_iou"] == 0.3 and meta["min_track"] == 2
    dropped = len(np.unique(link_tracks(table.with_tracks(None)).track)) - len(summary)
    assert f"tracks: {len(summary)} track(s) (link IoU ≥ 0.3; {dropped} shorter than 2 frames dropped" in printed
    with h5py.File(cxi) as f:
        g = f["/entry_1/result_1"]
        assert g["nPeaks"][()].tolist() == [3, 3, 3, 3] and g["frame"][()].tolist() == [0, 1, 2, 3]
        for i in range(4):
            rows = table.select(table.frame == i)
            assert g["peakTrack"][i, :3].tolist() == rows.track.tolist()
            np.testing.assert_allclose(g["peakXPosRaw"][i, :3], (rows.x0 + rows.x1) / 2, rtol=1e-6)
    assert hits.read_text() == "".join(f"{frames} //{i}\n" for i in range(4))
    assert meta["frames"]["hit"].tolist() == [1, 1, 1, 1] and meta["screening"]["min_peaks"] == 3
    assert "hits: 4 of 4 frame(s) (peaks ≥ 3)" in printed
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert leftovers(tmp_path) == ["hits.lst", "p.cxi", "p.h5", "tracks.png"]


def test_detect_keep_misses_selects_cxi_frames(repeated, tmp_path, capsys):
    import h5py

    from gixdrt.gixd.screening import keep_draw
    from gixdrt.io import read_peaks

    cfg, frames, model = repeated
    out, cxi, hits = tmp_path / "p.csv", tmp_path / "p.cxi", tmp_path / "hits.txt"
    assert main(["detect", str(frames), "--config", str(cfg), "--model", str(model), "--out", str(out),
                 "--score-threshold", "-1", "--max-detections", "3", "--no-progress", "--cxi", str(cxi),
                 "--hits", str(hits), "--min-peaks", "4", "--keep-misses", "0.5"]) == 0
    table, _ = read_peaks(out)
    assert not table.linked and len(table) == 12  # the peak table keeps every frame
    assert hits.read_text() == ""  # 3 peaks per frame: no hit
    kept = np.flatnonzero(keep_draw(0, range(4)) < 0.5).tolist()
    with h5py.File(cxi) as f:
        g = f["/entry_1/result_1"]
        assert g["frame"][()].tolist() == kept and g["hit"][()].tolist() == [0] * len(kept)
        assert g["keptMiss"][()].tolist() == [1] * len(kept) and g.attrs["n_frames_seen"] == 4
        assert g.attrs["n_misses"] == 4 and g.attrs["n_kept_misses"] == len(kept)
    assert f"{len(kept)} of 4 miss(es) kept" in capsys.readouterr().out


@pytest.mark.parametrize("args, expect", [
    (["--min-track", "2"], "--min-track: needs --link"),
    (["--plot-tracks", "t.png"], "--plot-tracks: needs --link"),
    (["--link-iou", "0.5"], "--link-iou: needs --link"),
    (["--min-peaks", "2"], "--min-peaks: needs --hits or --keep-misses"),
    (["--keep-misses", "0.1", "--hits", "h.lst"], "--keep-misses: selects the frames of --cxi or --gixi-compat"),
    (["--link", "--link-iou", "0"], "--link-iou: 0 is outside [0.01, 1.0]"),
    (["--link", "--min-track", "0"], "--min-track: 0 is outside"),
    (["--hits", "h.lst", "--min-peaks", "-1"], "--min-peaks: -1 is outside"),
    (["--cxi", "c.cxi", "--keep-misses", "1.5"], "--keep-misses: 1.5 is outside [0.0, 1.0]"),
    (["--cxi", "c.txt"], "--cxi c.txt: unsupported output format .txt"),
    (["--hits", "h.csv"], "--hits h.csv: unsupported output format .csv"),
    (["--link", "--plot-tracks", "t.pdf"], "--plot-tracks t.pdf: unsupported output format .pdf"),
])
def test_detect_new_options_checked(small, tmp_path, capsys, monkeypatch, args, expect):
    cfg, frame, model = small
    monkeypatch.chdir(tmp_path)
    assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", "p.csv",
                 "--no-progress", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gixdrt detect: error: {expect}") and len(err.strip().splitlines()) == 1, err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("option, suffix", [("--cxi", ".h5"), ("--hits", ".lst"), ("--plot-tracks", ".png")])
def test_detect_new_outputs_never_replace_an_input(small, tmp_path, capsys, option, suffix):
    """An output that is an input (here the config, through a symbolic link) or another output is refused
    before any frame is read."""
    cfg, frame, model = small
    link = tmp_path / f"cfg{suffix}"
    link.symlink_to(cfg)
    extra = ["--link"] if option == "--plot-tracks" else []
    before = cfg.read_bytes()
    assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", str(tmp_path / "p.csv"),
                 "--no-progress", *extra, option, str(link)]) == 2
    err = capsys.readouterr().err
    assert f"{option} {link}: is the input file {cfg} (through a symbolic link)" in err, err
    assert cfg.read_bytes() == before and leftovers(tmp_path) == [link.name]
    if option == "--cxi":
        same = tmp_path / "p.h5"
        assert main(["detect", str(frame), "--config", str(cfg), "--model", str(model), "--out", str(same),
                     "--no-progress", "--cxi", str(same)]) == 2
        assert "is the same file as --out" in capsys.readouterr().err
        assert not same.exists()
