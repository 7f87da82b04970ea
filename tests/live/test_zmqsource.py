"""StreamSource over loopback ZeroMQ: order, both formats, the idle timeout, close(), detector restarts.

Every socket is on 127.0.0.1 with an ephemeral port; every blocking call has a timeout.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import zmq

from gixdrt.live import stream1, stream2
from gixdrt.live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart
from gixdrt.live.replay import Replayer
from gixdrt.live.zmqsource import StreamSource, detect_format

FRAMES = np.random.default_rng(11).integers(0, 4000, (20, 24, 40)).astype(np.uint16)


def _collect(source: StreamSource, into: list) -> threading.Thread:
    thread = threading.Thread(target=lambda: into.extend(source), daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("fmt,declared", [("stream2", "auto"), ("stream1", "auto"), ("stream2", "stream2"),
                                          ("stream1", "stream1")])
def test_replay_to_source_keeps_every_frame_in_order(fmt, declared, threads):
    got: list = []
    with Replayer("tcp://127.0.0.1:*", format=fmt, start_timeout=5, send_timeout=5) as rep:
        with StreamSource(rep.endpoint, format=declared, timeout=0.5, decode_threads=threads) as src:
            thread = _collect(src, got)
            summary = rep.series(FRAMES, series_id=6)
            thread.join(10)
            assert not thread.is_alive()
            assert src.received == 22 and src.decode_errors == 0
            assert src.received_bytes == summary.bytes
    assert summary.images == 20
    assert isinstance(got[0], SeriesStart) and isinstance(got[-1], SeriesEnd)
    assert got[0].number_of_images == 20 and got[0].image_shape == (24, 40)
    frames = got[1:-1]
    assert all(isinstance(e, FrameEvent) for e in frames)
    assert [e.image_id for e in frames] == list(range(20))
    for e in frames:
        assert e.series_id == 6 and e.series_unique_id == got[0].series_unique_id
        np.testing.assert_array_equal(e.image(), FRAMES[e.image_id])
        assert e.image().dtype == np.uint16


def test_idle_timeout_ends_iteration_and_iterating_again_resumes():
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        with StreamSource(f"tcp://127.0.0.1:{port}", timeout=0.2, decode_threads=1) as src:
            t0 = time.monotonic()
            assert list(src) == []
            assert 0.15 <= time.monotonic() - t0 < 1.5
            push.send(stream2.encode_end(series_id=1, series_unique_id="u"))
            events = list(src)  # a new iteration receives again, then stops when idle
            assert [type(e) for e in events] == [SeriesEnd]
    finally:
        push.close()


def test_close_from_another_thread_stops_an_endless_iteration():
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        src = StreamSource(f"tcp://127.0.0.1:{port}", timeout=None, poll_interval=0.05)
        got: list = []
        thread = _collect(src, got)
        time.sleep(0.1)
        t0 = time.monotonic()
        src.close()
        thread.join(2)
        assert not thread.is_alive() and time.monotonic() - t0 < 1.0
        assert src.closed and got == []
        with pytest.raises(RuntimeError, match="closed"):
            iter(src)
    finally:
        push.close()


def test_break_then_close_in_the_same_thread_releases_the_socket():
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        with StreamSource(f"tcp://127.0.0.1:{port}", timeout=2.0) as src:
            push.send(stream2.encode_end(series_id=1, series_unique_id="a"))
            push.send(stream2.encode_end(series_id=2, series_unique_id="b"))
            for event in src:
                assert event.series_id == 1
                break
        assert src.closed
    finally:
        push.close()


def test_reconnects_when_the_detector_restarts():
    """Bind a PUSH, send, close it; bind a new PUSH on the same port, send more: the PULL gets everything."""
    ctx = zmq.Context.instance()
    first = ctx.socket(zmq.PUSH)
    first.setsockopt(zmq.SNDTIMEO, 5000)
    port = first.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    with StreamSource(endpoint, timeout=0.5, decode_threads=1) as src:
        for i in range(3):
            first.send(stream2.encode_image(series_id=1, series_unique_id="a", image_id=i, data=FRAMES[i]))
        before = list(src)
        first.close(linger=1000)
        second = ctx.socket(zmq.PUSH)
        second.setsockopt(zmq.SNDTIMEO, 5000)
        second.setsockopt(zmq.LINGER, 1000)
        deadline = time.monotonic() + 5
        while True:  # the port can take a moment to be free again
            try:
                second.bind(endpoint)
                break
            except zmq.ZMQError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        try:
            for i in range(3, 6):
                second.send(stream2.encode_image(series_id=2, series_unique_id="b", image_id=i, data=FRAMES[i]))
            after = list(src)
        finally:
            second.close()
        assert src.received == 6
    assert [e.image_id for e in before] == [0, 1, 2] and [e.image_id for e in after] == [3, 4, 5]
    for e in before + after:
        np.testing.assert_array_equal(e.image(), FRAMES[e.image_id])


def test_auto_tells_formats_apart_and_survives_garbage():
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    push.setsockopt(zmq.SNDTIMEO, 5000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    try:
        with StreamSource(endpoint, timeout=0.5, decode_threads=2) as src:
            push.send_multipart(stream1.encode_image(series=3, frame=0, image=FRAMES[0]))
            push.send(b"\xff garbage")
            push.send(stream2.encode_image(series_id=4, series_unique_id="v2", image_id=1, data=FRAMES[1]))
            push.send_multipart([b"\xa1", b"\x00"])  # two parts, not JSON: a broken V1 message
            push.send(b'{"type": "calibration"}')  # looks like V1 JSON, has no htype
            import cbor2

            push.send(cbor2.dumps({"type": "calibration", "magic_number": 5}))  # Jungfraujoch: ignored
            events = list(src)
            assert src.received == 6 and src.ignored == 1 and src.decode_errors == 3
    finally:
        push.close()
    kinds = [type(e) for e in events]
    assert kinds == [FrameEvent, DecodeError, FrameEvent, DecodeError, DecodeError]
    assert events[0].series_unique_id == f"{endpoint}#3"
    np.testing.assert_array_equal(events[0].image(), FRAMES[0])
    np.testing.assert_array_equal(events[2].image(), FRAMES[1])
    assert all(e.source == endpoint for e in events if isinstance(e, DecodeError))


def test_stream2_format_refuses_multipart():
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 1000)
    port = push.bind_to_random_port("tcp://127.0.0.1")
    try:
        with StreamSource(f"tcp://127.0.0.1:{port}", format="stream2", timeout=0.5) as src:
            push.send_multipart(stream1.encode_end(series=1) * 2)
            events = list(src)
    finally:
        push.close()
    assert len(events) == 1 and isinstance(events[0], DecodeError) and "one part" in events[0].message


def test_detect_format():
    assert detect_format([b'  {"htype": "dseries_end-1.0"}']) == "stream1"
    assert detect_format([b"{}", b"x"]) == "stream1"
    assert detect_format([stream2.encode_end(series_id=1, series_unique_id="u")]) == "stream2"


def test_bad_arguments():
    with pytest.raises(ValueError, match="connects"):
        StreamSource("tcp://*:31001")
    with pytest.raises(ValueError, match="format"):
        StreamSource("tcp://127.0.0.1:5", format="cbor")
    with pytest.raises(ValueError, match="timeout"):
        StreamSource("tcp://127.0.0.1:5", timeout=0)
    with pytest.raises(ValueError, match="endpoint"):
        StreamSource("dcu:31001")
