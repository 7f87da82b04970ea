"""The replayer (``gixdrt.live.replay`` and ``gixdrt replay``): what a consumer receives, the rate, the errors.

Consumers here are plain ZeroMQ PULL sockets decoding with the stream decoders, in a thread with timeouts.
"""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
import zmq

from gixdrt.cli import main
from gixdrt.live import stream1, stream2
from gixdrt.live.events import FrameEvent, SeriesEnd, SeriesStart
from gixdrt.live.replay import ReplayError, replay, replay_files

FRAMES = [np.random.default_rng(i).integers(0, 60000, (10, 14)).astype(np.uint16) for i in range(20)]


class Consumer:
    """A PULL socket in a thread that decodes every message until ``idle`` seconds pass without one."""

    def __init__(self, endpoint: str, fmt: str = "stream2", idle: float = 0.5):
        self.events: list = []
        self.times: list[float] = []
        self._sock = zmq.Context.instance().socket(zmq.PULL)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(endpoint)
        self._fmt, self._idle = fmt, idle
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while self._sock.poll(int(self._idle * 1000)):
                parts = self._sock.recv_multipart()
                self.times.append(time.monotonic())
                if self._fmt == "stream2":
                    self.events.append(stream2.decode_message(parts[0], source="t"))
                else:
                    self.events.append(stream1.decode_message(parts, source="t"))
        finally:
            self._sock.close()

    def join(self) -> list:
        self.thread.join(10)
        assert not self.thread.is_alive()
        return self.events


@pytest.mark.parametrize("fmt", ["stream2", "stream1"])
def test_replay_sends_a_series_at_the_rate(fmt):
    consumers: list[Consumer] = []
    mask = np.zeros((10, 14), np.uint32)
    mask[3, 11] = 1
    summary = replay(FRAMES, to="tcp://127.0.0.1:*", rate=200.0, format=fmt, compression="lz4", series_id=12,
                     pixel_mask=mask, saturation_value=50000, meta={"beam_center_x": 7.0}, start_timeout=5,
                     on_bound=lambda ep: consumers.append(Consumer(ep, fmt)))
    events = consumers[0].join()
    assert summary.images == 20 and summary.series == 1 and summary.endpoint.startswith("tcp://127.0.0.1:")
    assert 19 / 200 * 0.9 <= summary.seconds < 2.0  # 20 images at 200 Hz: image 19 leaves 95 ms after image 0
    assert summary.rate == pytest.approx(20 / summary.seconds)
    start, *images, end = events
    assert isinstance(start, SeriesStart) and isinstance(end, SeriesEnd)
    assert start.series_id == 12 and start.number_of_images == 20 and start.image_shape == (10, 14)
    assert start.saturation_value == 50000.0 and start.meta["beam_center_x"] == 7.0
    np.testing.assert_array_equal(start.pixel_mask["data"], mask)
    assert [e.image_id for e in images] == list(range(20))
    for e in images:
        assert isinstance(e, FrameEvent)
        np.testing.assert_array_equal(e.image(), FRAMES[e.image_id])
    gaps = np.diff(consumers[0].times[1:-1])
    assert np.median(gaps) > 0.5 / 200  # paced, not a burst


def test_no_consumer_is_a_one_line_error():
    t0 = time.monotonic()
    with pytest.raises(ReplayError, match="no consumer connected within 0.2 s") as info:
        replay(FRAMES, to="tcp://127.0.0.1:*", start_timeout=0.2)
    assert time.monotonic() - t0 < 2 and "\n" not in str(info.value)


def test_frames_must_agree():
    consumers: list[Consumer] = []
    frames = [FRAMES[0], FRAMES[1][:, :5]]
    with pytest.raises(ReplayError, match="frame 1: uint16\\[10, 5\\] differs"):
        replay(frames, to="tcp://127.0.0.1:*", start_timeout=5,
               on_bound=lambda ep: consumers.append(Consumer(ep, idle=0.5)))
    consumers[0].join()
    with pytest.raises(ReplayError, match="Stream V1 sends"):
        replay([np.zeros((3, 3))], to="tcp://127.0.0.1:*", format="stream1", start_timeout=5)
    with pytest.raises(ReplayError, match="no frames"):
        replay([], to="tcp://127.0.0.1:*")


def test_replay_files_repeats_as_new_series(tmp_path):
    path = tmp_path / "stack.npy"
    np.save(path, np.stack(FRAMES[:4]))
    consumers: list[Consumer] = []
    summary = replay_files([str(path)], to="tcp://127.0.0.1:*", series_id=5, repeat=2, start_timeout=5,
                           on_bound=lambda ep: consumers.append(Consumer(ep)))
    events = consumers[0].join()
    assert summary.series == 2 and summary.images == 8
    starts = [e for e in events if isinstance(e, SeriesStart)]
    assert [s.series_id for s in starts] == [5, 6] and starts[0].series_unique_id != starts[1].series_unique_id
    frames = [e for e in events if isinstance(e, FrameEvent)]
    assert [f.image_id for f in frames] == [0, 1, 2, 3] * 2
    assert frames[2].meta["user_data"] == {"source": f"{path}[2]"}
    for f in frames:
        np.testing.assert_array_equal(f.image(), FRAMES[f.image_id])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("fmt", ["stream2", "stream1"])
def test_cli_replay(tmp_path, capsys, fmt):
    path = tmp_path / "stack.npy"
    np.save(path, np.stack(FRAMES[:5]))
    port = _free_port()
    consumer = Consumer(f"tcp://127.0.0.1:{port}", fmt)
    rc = main(["replay", str(path), "--to", f"tcp://127.0.0.1:{port}", "--format", fmt, "--compression", "bslz4",
               "--rate", "500", "--series-id", "3", "--wait", "5"])
    events = consumer.join()
    out = capsys.readouterr()
    assert rc == 0, out.err
    assert out.out.startswith("gixdrt replay: sent 5 images") and f"127.0.0.1:{port}" in out.out
    assert [type(e) for e in events] == [SeriesStart] + [FrameEvent] * 5 + [SeriesEnd]
    assert events[0].series_id == 3
    for e in events[1:-1]:
        np.testing.assert_array_equal(e.image(), FRAMES[e.image_id])


def test_cli_replay_errors(tmp_path, capsys):
    path = tmp_path / "stack.npy"
    np.save(path, np.stack(FRAMES[:2]))
    assert main(["replay", str(path), "--to", "tcp://127.0.0.1:*", "--wait", "0.2"]) == 2
    assert "gixdrt replay: error: tcp://127.0.0.1:" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "missing.npy"), "--to", "tcp://127.0.0.1:*"]) == 2
    assert "missing.npy" in capsys.readouterr().err
    assert main(["replay", str(path), "--rate", "-1"]) == 2
    assert "--rate" in capsys.readouterr().err
