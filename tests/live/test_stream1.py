"""DECTRIS Stream V1 (legacy multipart JSON + binary) decoding and encoding.

Besides round trips through our encoders, messages are built by hand from JSON and bitshuffle/lz4 directly,
with V1's ``shape = [x, y]`` (width, height) on a non-square image, so a swapped axis order cannot pass.
"""
from __future__ import annotations

import hashlib
import json
import struct

import bitshuffle
import lz4.block
import numpy as np
import pytest

from gixdrt.live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart
from gixdrt.live.stream1 import decode_message, encode_end, encode_header, encode_image

SRC = "tcp://dcu:9999"


def _j(obj) -> bytes:
    return json.dumps(obj).encode()


def _image(dtype, shape=(21, 34), seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, min(np.iinfo(dtype).max, 5000), shape).astype(dtype)


@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_image_round_trip(dtype, compression):
    img = _image(dtype)
    parts = encode_image(series=5, frame=9, image=img, compression=compression, start_time=10, stop_time=20,
                         real_time=10)
    assert len(parts) == 4
    info = json.loads(parts[1])
    assert info["shape"] == [34, 21]  # [x, y]
    assert info["encoding"] == {"bslz4": f"bs{img.itemsize * 8}-lz4<", "lz4": "lz4<", "none": "<"}[compression]
    assert json.loads(parts[0])["hash"] == hashlib.md5(parts[2]).hexdigest()
    ev = decode_message(parts, received=4.0, source=SRC)
    assert isinstance(ev, FrameEvent), ev
    assert (ev.series_id, ev.series_unique_id, ev.image_id, ev.received) == (5, f"{SRC}#5", 9, 4.0)
    assert ev.nbytes == sum(len(p) for p in parts)
    assert ev.image().dtype == np.dtype(dtype)
    np.testing.assert_array_equal(ev.data["data"], img)
    assert (ev.meta["start_time"], ev.meta["stop_time"], ev.meta["real_time"]) == (10, 20, 10)


def _hand_image(blob: bytes, *, x: int, y: int, dtype: str, encoding: str, frame: int = 0) -> list[bytes]:
    return [_j({"htype": "dimage-1.0", "series": 1, "frame": frame, "hash": hashlib.md5(blob).hexdigest()}),
            _j({"htype": "dimage_d-1.0", "shape": [x, y], "type": dtype, "encoding": encoding, "size": len(blob)}),
            blob,
            _j({"htype": "dconfig-1.0", "start_time": 1, "stop_time": 2, "real_time": 1})]


def test_shape_is_x_then_y():
    img = np.arange(3 * 5, dtype=np.uint16).reshape(3, 5)  # 3 rows (y), 5 columns (x)
    ev = decode_message(_hand_image(img.tobytes(), x=5, y=3, dtype="uint16", encoding="<"))
    assert ev.image().shape == (3, 5)
    np.testing.assert_array_equal(ev.image(), img)
    assert ev.image()[0, 4] == 4 and ev.image()[2, 0] == 10  # first row runs along x


def test_hand_built_bslz4_and_raw_lz4():
    img = _image("uint32", shape=(7, 12))
    blob = struct.pack(">QI", img.nbytes, 8192) + bitshuffle.compress_lz4(img, 2048).tobytes()
    ev = decode_message(_hand_image(blob, x=12, y=7, dtype="uint32", encoding="bs32-lz4<"))
    np.testing.assert_array_equal(ev.image(), img)
    raw = lz4.block.compress(img.tobytes(), store_size=False)
    ev = decode_message(_hand_image(raw, x=12, y=7, dtype="uint32", encoding="lz4<"))
    np.testing.assert_array_equal(ev.image(), img)


def test_big_endian_uncompressed():
    img = _image("uint16", shape=(4, 6))
    ev = decode_message(_hand_image(img.astype(">u2").tobytes(), x=6, y=4, dtype="uint16", encoding=">"))
    assert ev.image().dtype == np.uint16 and ev.image().dtype.isnative
    np.testing.assert_array_equal(ev.image(), img)


CONFIG = {"nimages": 5, "ntrigger": 3, "x_pixels_in_detector": 34, "y_pixels_in_detector": 21,
          "bit_depth_image": 16, "beam_center_x": 17.5, "beam_center_y": 3.0, "wavelength": 1.0332,
          "photon_energy": 12000.0, "count_time": 0.01, "frame_time": 0.0101, "detector_distance": 0.2,
          "countrate_correction_count_cutoff": 54321}


def test_header_basic():
    parts = encode_header(series=7, detail="basic", config=CONFIG)
    assert len(parts) == 2
    ev = decode_message(parts, received=1.0, source=SRC)
    assert isinstance(ev, SeriesStart)
    assert (ev.series_id, ev.series_unique_id, ev.number_of_images) == (7, f"{SRC}#7", 15)
    assert ev.image_shape == (21, 34) and ev.dtype == "uint16" and ev.saturation_value == 54321.0
    assert ev.channels == ("data",) and dict(ev.pixel_mask) == {}
    assert ev.meta["beam_center_x"] == 17.5 and ev.meta["detector_distance"] == 0.2
    assert ev.meta["incident_wavelength"] == 1.0332 and ev.meta["incident_energy"] == 12000.0
    assert ev.meta["header_detail"] == "basic"


def test_header_all_with_pixel_mask_flatfield_and_appendix():
    mask = np.zeros((21, 34), np.uint32)
    mask[20, 33] = 1  # last row, last column: a swapped [x, y] would put it elsewhere
    mask[0, 1] = 4
    flat = np.linspace(0.9, 1.1, 21 * 34, dtype=np.float32).reshape(21, 34)
    parts = encode_header(series=2, detail="all", config=CONFIG, pixel_mask=mask, flatfield=flat,
                          appendix={"sample": "P3HT"})
    assert json.loads(parts[4])["shape"] == [34, 21]
    ev = decode_message(parts, source=SRC)
    assert isinstance(ev, SeriesStart)
    np.testing.assert_array_equal(ev.pixel_mask["data"], mask)
    np.testing.assert_array_equal(ev.meta["flatfield"], flat)
    assert ev.meta["header_appendix"] == {"sample": "P3HT"}


def test_header_none_and_end_and_unknown_htype():
    ev = decode_message(encode_header(series=3, detail="none"), source=SRC)
    assert isinstance(ev, SeriesStart) and ev.number_of_images is None and ev.image_shape is None
    assert decode_message(encode_end(series=3), source=SRC, received=2.0) == SeriesEnd(3, f"{SRC}#3", "end", 2.0)
    assert decode_message([_j({"htype": "dsomething-1.0", "series": 1})]) is None


def test_image_appendix():
    parts = encode_image(series=1, frame=0, image=_image("uint16"), appendix={"source": "a.tif"})
    assert decode_message(parts).meta["image_appendix"] == {"source": "a.tif"}


_IMG = _image("uint16", shape=(4, 6))
_BLOB = struct.pack(">QI", _IMG.nbytes, 8192) + bitshuffle.compress_lz4(_IMG, 4096).tobytes()

MALFORMED = {
    "not JSON": ([b"\x00\x01binary"], "not JSON"),
    "JSON list": ([b"[1, 2]"], "JSON object"),
    "no htype": ([_j({"series": 1})], "htype"),
    "no series": ([_j({"htype": "dimage-1.0", "frame": 1})], "series"),
    "too few parts": ([_j({"htype": "dimage-1.0", "series": 1, "frame": 2}), b"{}"], "parts"),
    "size mismatch": ([_hand_image(_BLOB, x=6, y=4, dtype="uint16", encoding="bs16-lz4<")[0],
                       _j({"htype": "dimage_d-1.0", "shape": [6, 4], "type": "uint16", "encoding": "bs16-lz4<",
                           "size": len(_BLOB) + 1}), _BLOB], "declares"),
    "unknown encoding": (_hand_image(_BLOB, x=6, y=4, dtype="uint16", encoding="zstd<"), "encoding"),
    "bits vs type": (_hand_image(_BLOB, x=6, y=4, dtype="uint32", encoding="bs16-lz4<"), "does not match"),
    "swapped shape": (_hand_image(_BLOB, x=4, y=7, dtype="uint16", encoding="bs16-lz4<"), "header"),
    "corrupt bslz4": (_hand_image(_BLOB[:12] + b"\x00\x00\x00\x01" + _BLOB[16:], x=6, y=4, dtype="uint16",
                                  encoding="bs16-lz4<"), "bitshuffle-LZ4"),
    "corrupt lz4": (_hand_image(b"\xff" * 20, x=6, y=4, dtype="uint16", encoding="lz4<"), "LZ4"),
    "raw size": (_hand_image(_IMG.tobytes()[:-2], x=6, y=4, dtype="uint16", encoding="<"), "needs"),
    "bad type": (_hand_image(_IMG.tobytes(), x=6, y=4, dtype="complex64", encoding="<"), "type"),
    "bad shape": (_hand_image(_IMG.tobytes(), x=6, y=0, dtype="uint16", encoding="<"), "shape"),
    "mask size": (encode_header(series=1, detail="all", config=CONFIG, pixel_mask=np.zeros((3, 3)))[:2] + [
        _j({"htype": "dpixelmask-1.0", "shape": [3, 3], "type": "uint32"}), b"\x00" * 4], "needs"),
    "not a list": (b'{"htype": "dseries_end-1.0", "series": 1}', "list of parts"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_messages_become_decode_errors(name):
    parts, fragment = MALFORMED[name]
    ev = decode_message(parts, received=5.0, source=SRC)
    assert isinstance(ev, DecodeError), ev
    assert fragment in ev.message and "\n" not in ev.message
    if name in ("unknown encoding", "corrupt bslz4", "raw size"):
        assert (ev.series_id, ev.series_unique_id, ev.image_id) == (1, f"{SRC}#1", 0)
        assert ev.message.startswith("image 0 of series 1: ")


def test_mutations_never_raise():
    img = _image("uint16", shape=(16, 24), seed=3)
    good = encode_image(series=4, frame=2, image=img, compression="bslz4")
    rng = np.random.default_rng(77)
    errors = 0
    for _ in range(240):
        parts = [bytearray(p) for p in good]
        k = int(rng.integers(0, len(parts)))
        if rng.random() < 0.4:
            parts[k] = parts[k][: int(rng.integers(0, len(parts[k])))]
        else:
            pos = int(rng.integers(0, len(parts[k])))
            parts[k][pos] ^= int(rng.integers(1, 256))
        ev = decode_message([bytes(p) for p in parts], source=SRC)
        assert ev is None or isinstance(ev, (FrameEvent, DecodeError, SeriesStart, SeriesEnd))
        if isinstance(ev, FrameEvent):
            assert ev.image().shape == (16, 24)
        errors += isinstance(ev, DecodeError)
    assert errors >= 100


def test_encoder_rejects_bad_input():
    with pytest.raises(ValueError, match="not float64"):
        encode_image(series=1, frame=0, image=np.zeros((2, 2)))
    with pytest.raises(ValueError, match="header_detail"):
        encode_header(series=1, detail="some")
