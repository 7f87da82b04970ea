"""``gixdrt replay`` → ``gixdrt stream`` on loopback: the peak table equals ``gixdrt detect`` on the same frames,
every frame accounted in both delivery modes, tracks/hits/CXI per series, result messages, clean stops."""
from __future__ import annotations

import threading

import h5py
import numpy as np
import zmq

from gixdrt.cli import main
from gixdrt.gixd.peaks import COLUMNS
from gixdrt.io.writers import read_peaks
from gixdrt.live.replay import Replayer
from gixdrt.live.sinks import decode_result

DETECT_OPTS = ["--score-threshold", "-1", "--max-detections", "3"]


def frames_of(n, seed=0, dtype=np.uint16):
    rng = np.random.default_rng(seed)
    return (rng.poisson(30.0, (n, 60, 80)) * rng.random((n, 1, 1)) * 3).astype(dtype)


class Detector:
    """A replayer in a thread: binds a loopback port, then plays ``series`` (lists of frames) once a consumer is
    connected."""

    def __init__(self, series, *, fmt="stream2", compression="bslz4", rate=None, masks=None):
        self.bound = threading.Event()
        self.error = None
        self.summaries = []
        self.rep = Replayer("tcp://127.0.0.1:*", format=fmt, compression=compression, start_timeout=20,
                            send_timeout=20)
        self.endpoint = self.rep.endpoint
        self.thread = threading.Thread(target=self._play, args=(series, rate, masks or {}), daemon=True)
        self.thread.start()

    def _play(self, series, rate, masks):
        try:
            for k, frames in enumerate(series):
                self.summaries.append(self.rep.series(list(frames), rate=rate, series_id=k + 1,
                                                      number_of_images=len(frames), **masks))
        except Exception as exc:  # reported by the test
            self.error = exc
        finally:
            self.rep.close()

    def join(self):
        self.thread.join(30)
        assert not self.thread.is_alive()
        assert self.error is None, self.error


def stream(endpoint, cfg, model, out, *extra):
    return main(["stream", endpoint, "--config", str(cfg), "--model", str(model), "--out", str(out),
                 "--timeout", "20", *DETECT_OPTS, *extra])


def test_a_replayed_series_gives_what_detect_gives(tmp_path, small_config, model_dir, capsys):
    frames = frames_of(100)
    np.save(tmp_path / "stack.npy", frames)
    ref = tmp_path / "ref.h5"
    assert main(["detect", str(tmp_path / "stack.npy"), "--config", str(small_config), "--model", str(model_dir),
                 "--out", str(ref), "--no-progress", *DETECT_OPTS]) == 0
    want, want_meta = read_peaks(ref)

    det = Detector([frames])
    out = tmp_path / "live" / "run.h5"
    code = stream(det.endpoint, small_config, model_dir, out, "--series", "1")
    det.join()
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert sorted(p.name for p in out.parent.iterdir()) == ["run.h5"]  # --series 1: the table is --out itself
    got, meta = read_peaks(out)
    assert len(got) == len(want) > 0
    for name in COLUMNS:
        if name != "source":  # detect names the file and index, stream the series
            assert np.array_equal(getattr(got, name), getattr(want, name), equal_nan=True), name
    assert np.array_equal(meta["frame_counts"], want_meta["frame_counts"])
    counters = meta["counters"]
    assert (counters["expected"], counters["received"], counters["processed"]) == (100, 100, 100)
    assert counters["rejected"] == counters["missed"] == counters["failed"] == counters["decode_errors"] == 0
    assert meta["end_reason"] == "end"
    assert "end, 100 received of 100, 100 processed" in captured.out


def test_monitor_mode_under_overload_accounts_for_every_frame(tmp_path, small_config, model_dir, capsys):
    n = 150
    det = Detector([frames_of(n, seed=3)], compression="lz4")
    out = tmp_path / "run.h5"
    code = stream(det.endpoint, small_config, model_dir, out, "--series", "1", "--mode", "monitor", "--queue", "2",
                  "--batch", "1")
    det.join()
    assert code == 0, capsys.readouterr().err
    table, meta = read_peaks(out)
    c = meta["counters"]
    processed_ids = np.asarray(meta["image_ids"])
    assert c["received"] == n and c["missed"] == 0
    assert c["processed"] + c["rejected"] + c["failed"] == c["received"]
    assert c["failed"] == 0 and len(processed_ids) == c["processed"] == len(set(processed_ids.tolist()))
    assert set(table.frame.tolist()) <= set(processed_ids.tolist())
    # the replay is far faster than the detector (~1000 vs ~50 frames/s): frames were dropped, and the newest
    # frame is never the one dropped
    assert c["rejected"] > 0 and n - 1 in processed_ids


def test_two_series_with_tracks_hits_cxi_and_result_messages(tmp_path, small_config, model_dir, capsys):
    ctx = zmq.Context.instance()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    pull.close(0)  # the port is free again for the stream to bind its PUSH socket
    a, b = frames_of(6, seed=1), frames_of(4, seed=2)
    mask = np.zeros((60, 80), np.uint32)
    mask[:5] = 1
    det = Detector([a, b], fmt="stream1", masks={"pixel_mask": mask})
    out = tmp_path / "run.csv"
    received = []

    def consume():
        sock = ctx.socket(zmq.PULL)
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.setsockopt(zmq.RCVTIMEO, 20000)
        try:
            while True:
                msg = decode_result(sock.recv())
                received.append(msg)
                if msg["type"] == "series_end" and msg["series_id"] == 2:
                    return
        except zmq.Again:
            return
        finally:
            sock.close(0)

    consumer = threading.Thread(target=consume, daemon=True)
    consumer.start()
    code = stream(det.endpoint, small_config, model_dir, out, "--series", "2", "--link", "--cxi",
                  str(tmp_path / "run.cxi"), "--hits", str(tmp_path / "run.lst"), "--push",
                  f"tcp://127.0.0.1:{port}")
    det.join()
    consumer.join(30)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    names = sorted(p.name for p in tmp_path.iterdir())
    for stem in ("run_1", "run_2"):
        assert {f"{stem}.csv", f"{stem}.csv.json", f"{stem}.cxi", f"{stem}.lst"} <= set(names), names
    assert not [n for n in names if n.endswith(".part")]
    for stem, frames in (("run_1", a), ("run_2", b)):
        table, meta = read_peaks(tmp_path / f"{stem}.csv")
        assert table.linked and set(table.frame.tolist()) <= set(range(len(frames)))
        assert (table.track >= 0).all()
        with h5py.File(tmp_path / f"{stem}.cxi", "r") as f:
            n_peaks = f["entry_1/result_1/nPeaks"][:]
            assert n_peaks.sum() == len(table)
        hits = (tmp_path / f"{stem}.lst").read_text().splitlines()
        assert len(hits) == len(set(table.frame.tolist()))  # --min-peaks 1: a frame with a peak is a hit
    results = [m for m in received if m["type"] == "result"]
    assert sorted((m["series_id"], m["image_id"]) for m in results) == [(1, i) for i in range(6)] + [
        (2, i) for i in range(4)]
    ends = [m for m in received if m["type"] == "series_end"]
    assert [(m["series_id"], m["counters"]["processed"]) for m in ends] == [(1, 6), (2, 4)]


def test_demo_live_replays_the_real_frame_through_the_stream(tmp_path, published_assets, capsys):
    code = main(["demo", "--live", "3", "--out-dir", str(tmp_path / "demo")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "processed  3 of 3 received (0 rejected, 0 missed, 0 failed, 0 decode errors)" in captured.out
    assert "12 of the published model's 12 rings found in each processed frame" in captured.out
    table, meta = read_peaks(tmp_path / "demo" / "live-peaks.h5")
    assert np.array_equal(np.bincount(table.frame), [12, 12, 12])
    assert meta["counters"]["processed"] == 3 and meta["end_reason"] == "end"


def test_a_stream_without_a_config_or_a_series_writes_nothing(tmp_path, capsys):
    """Polar input without a config: no warm-up (the shape comes with the stream); nothing arrives: a warning, no
    output file, exit 0."""
    sock = zmq.Context.instance().socket(zmq.PUSH)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    try:
        code = main(["stream", f"tcp://127.0.0.1:{port}", "--input", "polar", "--out", str(tmp_path / "r.h5"),
                     "--timeout", "0.5"])
    finally:
        sock.close(0)
    err = capsys.readouterr().err
    assert code == 0, err
    assert "no warm-up" in err and "warning: no series from" in err
    assert list(tmp_path.iterdir()) == []
