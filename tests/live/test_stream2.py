"""DECTRIS Stream V2 (CBOR) decoding and encoding.

Messages are built two ways: with gixdrt's encoders (round trips), and by hand with cbor2, bitshuffle and lz4
directly, following the layout DECTRIS documents (tag 40 [dims, typed array tag 64–87 (tag 56500 [algorithm,
modifier, bytes])], the 12-byte HDF5 header inside bslz4/lz4), so the decoder is not only checked against our
own encoder. The mutation loop checks that no corruption of a valid message makes the decoder raise.
"""
from __future__ import annotations

import struct

import bitshuffle
import cbor2
import lz4.block
import numpy as np
import pytest

from gixdrt.live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart
from gixdrt.live.stream2 import decode_message, encode_end, encode_image, encode_start

T = cbor2.CBORTag


def _image(dtype: str, shape=(37, 53), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    hi = min(np.iinfo(dtype).max, 70_000)
    img = rng.integers(0, hi, shape, dtype=np.int64).astype(dtype)
    img[0, :5] = np.iinfo(dtype).max  # saturated / flag pixels survive too
    return img


def _bslz4(arr: np.ndarray) -> bytes:
    """bitshuffle-LZ4 as DECTRIS sends it: 12-byte header (total bytes, block bytes; big-endian) + blocks."""
    block = 8192 // arr.itemsize
    return struct.pack(">QI", arr.nbytes, block * arr.itemsize) + bitshuffle.compress_lz4(arr, block).tobytes()


def _lz4_hdf5(arr: np.ndarray, block: int) -> bytes:
    """HDF5 LZ4 framing: 12-byte header, then per block a big-endian compressed size and the LZ4 block (a block
    that LZ4 does not shrink is stored as it is, its size then equal to the block's)."""
    raw = arr.tobytes()
    out = [struct.pack(">QI", len(raw), block)]
    for i in range(0, len(raw), block):
        piece = raw[i : i + block]
        packed = lz4.block.compress(piece, store_size=False)
        if len(packed) >= len(piece):
            packed = piece
        out += [struct.pack(">I", len(packed)), packed]
    return b"".join(out)


# -------------------------------------------------------------------------------------------------
# Round trips
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("compression", ["bslz4", "lz4", "none"])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint32"])
def test_image_round_trip(dtype, compression):
    img = _image(dtype)
    msg = encode_image(series_id=7, series_unique_id="abc", image_id=12, data=img, compression=compression,
                       meta={"start_time": [5, 10], "user_data": {"k": 1}})
    ev = decode_message(msg, received=3.5, source="tcp://d:31001")
    assert isinstance(ev, FrameEvent), ev
    assert (ev.series_id, ev.series_unique_id, ev.image_id, ev.received, ev.nbytes) == (7, "abc", 12, 3.5, len(msg))
    assert list(ev.data) == ["data"]
    out = ev.image()
    assert out.dtype == np.dtype(dtype) and out.shape == img.shape
    np.testing.assert_array_equal(out, img)
    assert ev.meta == {"start_time": [5, 10], "user_data": {"k": 1}}
    if compression == "none":
        assert not out.flags.writeable  # a view of the message's bytes, not a second copy


def test_three_channels_keep_names_order_and_types():
    chans = {"threshold_1": _image("uint32", seed=1), "threshold_2": _image("uint32", seed=2),
             "difference": np.full((37, 53), 65535, np.uint32)}
    ev = decode_message(encode_image(series_id=1, series_unique_id="u", image_id=0, data=chans))
    assert list(ev.data) == ["threshold_1", "threshold_2", "difference"]
    for name, img in chans.items():
        np.testing.assert_array_equal(ev.data[name], img)
    assert ev.image() is ev.data["threshold_1"]


def test_start_with_pixel_mask_saturation_and_meta():
    h, w = 6, 9  # not square: image_size_x is the width
    mask = np.zeros((h, w), np.uint32)
    mask[2, 7] = 1
    mask[5, :] = 2
    flat = np.linspace(0.5, 1.5, h * w, dtype=np.float32).reshape(h, w)
    msg = encode_start(series_id=4, series_unique_id="s-4", image_shape=(h, w),
                       channels=["threshold_1", "threshold_2"], number_of_images=100, pixel_mask=mask,
                       saturation_value=123456, compression="bslz4",
                       meta={"beam_center_x": 4.5, "beam_center_y": 2.25, "incident_wavelength": 1.0332,
                             "incident_energy": 12000.0, "count_time": 0.01, "frame_time": 0.0101,
                             "goniometer": {"omega": {"start": 10.0, "increment": 0.1}},
                             "flatfield": {"threshold_1": flat}, "threshold_energy": {"threshold_1": 6000.0}})
    ev = decode_message(msg, received=1.0, source="src")
    assert isinstance(ev, SeriesStart)
    assert (ev.series_id, ev.series_unique_id, ev.number_of_images) == (4, "s-4", 100)
    assert ev.channels == ("threshold_1", "threshold_2")
    assert ev.image_shape == (6, 9)
    assert ev.saturation_value == 123456.0
    assert set(ev.pixel_mask) == {"threshold_1", "threshold_2"}
    for m in ev.pixel_mask.values():
        assert m.dtype == np.uint32
        np.testing.assert_array_equal(m, mask)
    assert ev.meta["beam_center_x"] == 4.5 and ev.meta["incident_energy"] == 12000.0
    assert ev.meta["goniometer"] == {"omega": {"start": 10.0, "increment": 0.1}}
    np.testing.assert_array_equal(ev.meta["flatfield"]["threshold_1"], flat)
    assert ev.meta["flatfield"]["threshold_1"].dtype == np.float32
    assert "pixel_mask" not in ev.meta and "series_id" not in ev.meta
    assert (ev.source, ev.received) == ("src", 1.0)


def test_start_without_optional_fields():
    msg = cbor2.dumps({"type": "start", "series_id": 2, "series_unique_id": "x"})
    ev = decode_message(msg, source="tcp://a:1")
    assert isinstance(ev, SeriesStart)
    assert ev.number_of_images is None and ev.image_shape is None and ev.channels == ("data",)
    assert ev.saturation_value is None and dict(ev.pixel_mask) == {}


def test_end():
    ev = decode_message(encode_end(series_id=3, series_unique_id="u3"), received=2.0)
    assert ev == SeriesEnd(3, "u3", reason="end", received=2.0)


# -------------------------------------------------------------------------------------------------
# Hand-built messages (independent of our encoder)
# -------------------------------------------------------------------------------------------------
def test_hand_built_bslz4_message():
    img = _image("uint16", shape=(514, 1030 // 10))
    msg = cbor2.dumps({
        "type": "image", "series_id": 9, "series_unique_id": "dectris-9", "image_id": 3,
        "real_time": [100000, 1000000000], "start_time": [0, 1], "stop_time": [100000, 1000000000],
        "data": {"threshold_1": T(40, [[514, 103], T(69, T(56500, ["bslz4", 2, _bslz4(img)]))])},
    })
    ev = decode_message(msg)
    assert isinstance(ev, FrameEvent) and ev.image_id == 3 and ev.series_unique_id == "dectris-9"
    assert ev.data["threshold_1"].dtype == np.uint16
    np.testing.assert_array_equal(ev.data["threshold_1"], img)
    assert ev.meta["real_time"] == [100000, 1000000000]


@pytest.mark.parametrize("dtype,tag", [("uint8", 64), ("uint32", 70)])
def test_hand_built_lz4_message(dtype, tag):
    img = _image(dtype, shape=(40, 30))
    chunk = _lz4_hdf5(img, block=1000)  # several blocks, the last shorter
    msg = cbor2.dumps({"type": "image", "series_id": 1, "series_unique_id": "u", "image_id": 0,
                       "data": {"data": T(40, [[40, 30], T(tag, T(56500, ["lz4", 0, chunk]))])}})
    ev = decode_message(msg)
    assert isinstance(ev, FrameEvent), ev
    np.testing.assert_array_equal(ev.image(), img)
    assert ev.image().dtype == np.dtype(dtype)


def test_our_encoder_writes_the_documented_layout():
    img = _image("uint16", shape=(20, 30))
    raw = cbor2.loads(encode_image(series_id=1, series_unique_id="u", image_id=0, data=img))
    outer = raw["data"]["data"]
    assert outer.tag == 40 and list(outer.value[0]) == [20, 30]
    typed = outer.value[1]
    assert typed.tag == 69
    comp = typed.value
    assert comp.tag == 56500 and comp.value[0] == "bslz4" and comp.value[1] == 2
    total, block = struct.unpack(">QI", comp.value[2][:12])
    assert (total, block) == (20 * 30 * 2, 8192)
    # the bytes after the header are what bitshuffle itself produces
    assert comp.value[2][12:] == bitshuffle.compress_lz4(img, 4096).tobytes()


@pytest.mark.parametrize("dtype,tag", [(">u2", 65), (">u4", 66), ("<i4", 78), ("<f4", 85), (">f8", 82)])
def test_typed_array_byte_orders(dtype, tag):
    img = (np.arange(24).reshape(4, 6) * 1000).astype(dtype)
    msg = cbor2.dumps({"type": "image", "series_id": 1, "series_unique_id": "u", "image_id": 0,
                       "data": {"data": T(40, [[4, 6], T(tag, img.tobytes())])}})
    ev = decode_message(msg)
    out = ev.image()
    assert out.dtype == np.dtype(dtype).newbyteorder("=")  # native order, same element type
    np.testing.assert_array_equal(out, img)


def test_big_endian_compressed():
    img = _image("uint16", shape=(12, 10)).astype(">u2")
    msg = cbor2.dumps({"type": "image", "series_id": 1, "series_unique_id": "u", "image_id": 0,
                       "data": {"data": T(40, [[12, 10], T(65, T(56500, ["bslz4", 2, _bslz4(img)]))])}})
    out = decode_message(msg).image()
    assert out.dtype == np.dtype("uint16") and out.dtype.isnative
    np.testing.assert_array_equal(out, img)


def test_column_major_tag_1040():
    img = np.arange(12, dtype=np.uint16).reshape(3, 4)
    msg = cbor2.dumps({"type": "image", "series_id": 1, "series_unique_id": "u", "image_id": 0,
                       "data": {"data": T(1040, [[3, 4], T(69, np.asfortranarray(img).tobytes(order="F"))])}})
    np.testing.assert_array_equal(decode_message(msg).image(), img)


def test_buffers_receive_the_pixels():
    img = _image("uint16", shape=(8, 9))
    slots = {}

    def alloc(channel, shape, dtype):
        slots[channel] = np.empty(shape, dtype)
        return slots[channel]

    ev = decode_message(encode_image(series_id=1, series_unique_id="u", image_id=0, data=img), buffers=alloc)
    assert ev.image() is slots["data"]
    np.testing.assert_array_equal(slots["data"], img)
    bad = decode_message(encode_image(series_id=1, series_unique_id="u", image_id=0, data=img),
                         buffers=lambda c, s, d: np.empty((2, 2), d))
    assert isinstance(bad, DecodeError) and "buffer" in bad.message


# -------------------------------------------------------------------------------------------------
# Jungfraujoch extras
# -------------------------------------------------------------------------------------------------
def test_unknown_keys_and_message_types_are_not_fatal():
    start = cbor2.dumps({"type": "start", "magic_number": 0x52320004, "series_id": 5, "series_unique_id": "jf",
                         "detector_distance": 0.1, "error_value": -1, "image_size_x": 4, "image_size_y": 3,
                         "unknown_tagged": T(33333, "kept")})
    ev = decode_message(start)
    assert isinstance(ev, SeriesStart) and ev.image_shape == (3, 4)
    assert ev.meta["magic_number"] == 0x52320004 and ev.meta["detector_distance"] == 0.1
    assert ev.meta["unknown_tagged"] == "kept"
    img = np.arange(12, dtype=np.uint32).reshape(3, 4)
    image = cbor2.dumps({"type": "image", "magic_number": 1, "series_id": 5, "series_unique_id": "jf", "image_id": 2,
                         "spots": [1.5, 2.5, 100.0], "data": {"default": T(40, [[3, 4], T(70, T(
                             56500, ["bslz4", 4, _bslz4(img)]))])}})
    ev = decode_message(image)
    assert isinstance(ev, FrameEvent) and ev.meta["spots"] == [1.5, 2.5, 100.0] and ev.meta["magic_number"] == 1
    np.testing.assert_array_equal(ev.data["default"], img)
    for kind in ("calibration", "metadata", "something_new"):
        assert decode_message(cbor2.dumps({"type": kind, "magic_number": 1, "data": b"\x00"})) is None


def test_image_number_and_missing_unique_id():
    img = np.ones((2, 3), np.uint16)
    msg = cbor2.dumps({"type": "image", "series_id": 8, "image_number": 4,
                       "data": {"data": T(40, [[2, 3], T(69, img.tobytes())])}})
    ev = decode_message(msg, source="tcp://jf:5500")
    assert ev.image_id == 4 and ev.series_unique_id == "tcp://jf:5500#8"


# -------------------------------------------------------------------------------------------------
# Malformed messages
# -------------------------------------------------------------------------------------------------
def _img_msg(data, **extra) -> bytes:
    return cbor2.dumps({"type": "image", "series_id": 3, "series_unique_id": "u", "image_id": 17, "data": data,
                        **extra})


_IMG = np.arange(48, dtype=np.uint16).reshape(6, 8)
_CHUNK = _bslz4(_IMG)
_corrupt_size = bytearray(_CHUNK)
_corrupt_size[12:16] = struct.pack(">I", 3)  # first block declares 3 compressed bytes: blocks no longer fill it

MALFORMED = {
    "not CBOR": (b"\xff\xfe\x00", "not a valid CBOR"),
    "empty": (b"", "empty"),
    "CBOR array": (cbor2.dumps([1, 2, 3]), "not a map"),
    "CBOR text": (cbor2.dumps("image"), "not a map"),
    "no type": (cbor2.dumps({"series_id": 1}), "'type'"),
    "no series id": (cbor2.dumps({"type": "image", "image_id": 1, "data": {}}), "series_id"),
    "series id text": (cbor2.dumps({"type": "end", "series_id": "1"}), "series_id"),
    "image without data": (cbor2.dumps({"type": "image", "series_id": 3, "image_id": 17}), "no image data"),
    "empty data": (_img_msg({}), "no image data"),
    "data not tag 40": (_img_msg({"data": _IMG.tobytes()}), "tag 40"),
    "corrupt bslz4 block size": (
        _img_msg({"data": T(40, [[6, 8], T(69, T(56500, ["bslz4", 2, bytes(_corrupt_size)]))])}), "bitshuffle-LZ4"),
    "truncated bslz4": (_img_msg({"data": T(40, [[6, 8], T(69, T(56500, ["bslz4", 2, _CHUNK[:-5]]))])}), "chunk"),
    "dims vs compressed size": (_img_msg({"data": T(40, [[6, 9], T(69, T(56500, ["bslz4", 2, _CHUNK]))])}), "header"),
    "dims vs raw size": (_img_msg({"data": T(40, [[6, 9], T(69, _IMG.tobytes())])}), "need"),
    "elem size": (_img_msg({"data": T(40, [[6, 8], T(69, T(56500, ["bslz4", 4, _CHUNK]))])}), "element size"),
    "zstd": (_img_msg({"data": T(40, [[6, 8], T(69, T(56500, ["bszstd", 2, _CHUNK]))])}), "not supported"),
    "reserved tag 76": (_img_msg({"data": T(40, [[6, 8], T(76, _IMG.tobytes())])}), "76"),
    "1-D image": (_img_msg({"data": T(40, [[48], T(69, _IMG.tobytes())])}), "2 non-zero dimensions"),
    "bad dims": (_img_msg({"data": T(40, [["6", 8], T(69, _IMG.tobytes())])}), "dimensions"),
    "trailing bytes": (encode_end(series_id=1, series_unique_id="u") + b"\x00", "after the end"),
    "truncated message": (encode_image(series_id=3, series_unique_id="u", image_id=17, data=_IMG)[:-7],
                          "not a valid CBOR"),
    "start mask shape": (encode_start(series_id=3, series_unique_id="u", image_shape=(6, 8),
                                      pixel_mask=np.zeros((8, 6), np.uint32)), "pixel_mask"),
}


@pytest.mark.parametrize("name", list(MALFORMED))
def test_malformed_messages_become_decode_errors(name):
    msg, fragment = MALFORMED[name]
    ev = decode_message(msg, received=9.0, source="tcp://d:31001")
    assert isinstance(ev, DecodeError), ev
    assert fragment in ev.message and "\n" not in ev.message and len(ev.message) <= 300
    assert (ev.source, ev.received) == ("tcp://d:31001", 9.0)
    if name in ("corrupt bslz4 block size", "dims vs raw size", "zstd"):
        assert (ev.series_id, ev.series_unique_id, ev.image_id) == (3, "u", 17)
        assert ev.message.startswith("image 17 of series 3: channel 'data': ")


def test_non_bytes_message():
    ev = decode_message(12345)
    assert isinstance(ev, DecodeError) and "bytes" in ev.message


def test_absurd_declared_size_is_refused_before_allocation():
    chunk = struct.pack(">QI", 40_000 * 40_000 * 4, 8192) + b"\x00\x00\x00\x05" + b"\x00" * 5
    ev = decode_message(_img_msg({"data": T(40, [[40_000, 40_000], T(70, T(56500, ["bslz4", 4, chunk]))])}))
    assert isinstance(ev, DecodeError) and "cannot hold" in ev.message


def test_mutations_never_raise():
    img = _image("uint16", shape=(16, 24), seed=5)
    good = encode_image(series_id=2, series_unique_id="m", image_id=1, data=img, compression="bslz4",
                        meta={"start_time": [1, 2]})
    rng = np.random.default_rng(20240601)
    kinds = {"frame": 0, "error": 0, "ignored": 0}
    for trial in range(300):
        msg = bytearray(good)
        if trial % 3 == 0:
            msg = msg[: int(rng.integers(0, len(good)))]  # truncation
        else:
            for _ in range(int(rng.integers(1, 4))):  # 1–3 byte flips
                pos = int(rng.integers(0, len(msg)))
                msg[pos] ^= int(rng.integers(1, 256))
        ev = decode_message(bytes(msg))
        if trial % 3 == 0:
            assert isinstance(ev, DecodeError), (len(msg), ev)  # no strict prefix of a message is a message
        if isinstance(ev, FrameEvent):
            kinds["frame"] += 1
            assert ev.image().shape == (16, 24) and ev.image().dtype == np.uint16  # dims/type damage is caught
        elif isinstance(ev, DecodeError):
            kinds["error"] += 1
            assert ev.message and "\n" not in ev.message
        else:
            assert ev is None or isinstance(ev, (SeriesStart, SeriesEnd))  # the 'type' text itself was hit
            kinds["ignored"] += 1
    # flips inside LZ4 literals decode to other pixel values (nothing in the format can tell); the rest are errors
    assert kinds["error"] >= 120 and kinds["frame"] >= 1, kinds


def test_encoder_rejects_bad_input():
    with pytest.raises(ValueError, match="2-D"):
        encode_image(series_id=1, series_unique_id="u", image_id=0, data=np.zeros((2, 3, 4), np.uint16))
    with pytest.raises(ValueError, match="compression"):
        encode_image(series_id=1, series_unique_id="u", image_id=0, data=np.zeros((2, 3), np.uint16),
                     compression="zstd")
    with pytest.raises(ValueError, match="meta key"):
        encode_image(series_id=1, series_unique_id="u", image_id=0, data=np.zeros((2, 3), np.uint16),
                     meta={"image_id": 5})
