"""DECTRIS SIMPLON Stream V2: one CBOR map per ZeroMQ message → :mod:`gixdrt.live.events`, and back.

Messages (``type`` key): ``start`` (sent when the detector is armed), ``image`` (one per exposure), ``end``.
Jungfraujoch streams the same layout with extra keys (``magic_number``, ...) and extra message types
(``calibration``, ``metadata``, ...): unknown keys go into ``meta``, unknown message types are ignored
(:func:`decode_message` returns None), so one decoder serves both.

Arrays, as the stream writes them (innermost first):

- tag 56500 ``[algorithm, modifier, bytes]``: a compressed byte string; ``"bslz4"`` (modifier = element size in
  bytes) or ``"lz4"`` (modifier unused, 0), both in the HDF5-filter framing (:mod:`gixdrt.io.decode`);
- RFC 8746 typed arrays, tags 64–87: the element type and byte order of a byte string (or of a tag 56500):
  64 uint8, 65/69 uint16 big/little-endian, 66/70 uint32, 67/71 uint64, 72 int8, 73/77 int16, 74/78 int32,
  75/79 int64, 80/84 float16, 81/85 float32, 82/86 float64 (68 = uint8 "clamped"; 76, 83 and 87 unsupported);
- tag 40 ``[dims, elements]`` (row-major) or tag 1040 (column-major): a multi-dimensional array; image
  ``dims`` are ``(height, width)``.

Image data are ``data[channel]`` in the order of the start message's ``channels`` (DECTRIS: ``threshold_1``,
``threshold_2``, ``difference``). Decoded arrays are in native byte order with the element type the tag gives
(a big-endian uint16 image becomes a native uint16 image). Copies: cbor2 copies each byte string out of the
message; an uncompressed image is a read-only view of that copy (one copy in all; a byte-swapped image is a new
array instead), a compressed image is the decompressor's output (the compressed bytes are copied once by cbor2,
the pixels are written once). Tag 1040 arrays are column-major views (not C-contiguous).

:func:`decode_message` never raises for bad input: a message it cannot decode becomes a
:class:`~gixdrt.live.events.DecodeError` naming the series and image when they are known. Missing ids: an image
message may say ``image_number`` (older Jungfraujoch) for ``image_id``; a message without ``series_unique_id``
gets ``f"{source}#{series_id}"``.

:func:`encode_start`, :func:`encode_image` and :func:`encode_end` build the same messages (for the replayer
and the tests), compressing with ``bitshuffle``/``lz4`` (:mod:`gixdrt.live.chunks`).
"""
from __future__ import annotations

import io
import math
import sys
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import cbor2
import numpy as np

from ..io.decode import ChunkError, decode_chunk
from .chunks import COMPRESSIONS, check_expansion, declared_size, encode_chunk
from .events import DecodeError, Event, FrameEvent, SeriesEnd, SeriesStart

__all__ = [
    "TAG_COLUMN_MAJOR",
    "TAG_COMPRESSED",
    "TAG_ROW_MAJOR",
    "TYPED_ARRAY_TAGS",
    "Allocator",
    "decode_message",
    "encode_end",
    "encode_image",
    "encode_start",
    "typed_array_tag",
]

TAG_ROW_MAJOR = 40
TAG_COLUMN_MAJOR = 1040
TAG_COMPRESSED = 56500
#: compression algorithms decoded here (tag 56500); Jungfraujoch's bitshuffle+zstd is not among them
ALGORITHMS = ("bslz4", "lz4")

#: where the pixels of a channel go: ``(channel, (height, width), dtype) → array`` of that shape and dtype (or
#: None: a new array), e.g. a slot of a pinned staging buffer
Allocator = Callable[[str, tuple, np.dtype], "np.ndarray | None"]


def _typed_array_tags() -> dict[int, np.dtype]:
    """RFC 8746 tag → dtype. Tag bits ``010fsell``: f float, s signed, e little-endian, ll the size (integers
    1/2/4/8 bytes; floats 2/4/8/16 bytes)."""
    tags = {}
    for tag in range(64, 88):
        bits = tag - 64
        is_float, signed, little, ll = bits >> 4 & 1, bits >> 3 & 1, bits >> 2 & 1, bits & 3
        if tag == 76 or (is_float and ll == 3):  # reserved; 128-bit floats (no portable NumPy type)
            continue
        kind, size = ("f", 2 << ll) if is_float else ("i" if signed else "u", 1 << ll)
        tags[tag] = np.dtype(f"{'<' if little else '>'}{kind}{size}")
    return tags


#: RFC 8746 typed-array tags understood here → their element type and byte order
TYPED_ARRAY_TAGS = _typed_array_tags()
_START_KEYS = frozenset({"type", "series_id", "series_unique_id", "number_of_images", "channels", "image_size_x",
                         "image_size_y", "pixel_mask", "saturation_value"})
_IMAGE_KEYS = frozenset({"type", "series_id", "series_unique_id", "image_id", "data"})
_END_KEYS = frozenset({"type", "series_id", "series_unique_id"})
_MAX_DEPTH = 64


def typed_array_tag(dtype) -> int:
    """The RFC 8746 tag of ``dtype`` (its byte order kept; native order = this machine's)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "uif" or (dtype.kind == "f" and dtype.itemsize == 1):
        raise ValueError(f"no CBOR typed array holds {dtype}")
    for tag, known in TYPED_ARRAY_TAGS.items():
        if tag != 68 and known.kind == dtype.kind and known.itemsize == dtype.itemsize and (
                known.itemsize == 1 or _little(known) == _little(dtype)):
            return tag
    raise ValueError(f"no CBOR typed array holds {dtype}")


def _little(dtype: np.dtype) -> bool:
    return dtype.byteorder == "<" or (dtype.byteorder in "=|" and sys.byteorder == "little")


# -------------------------------------------------------------------------------------------------
# Decoding
# -------------------------------------------------------------------------------------------------
class _Bad(Exception):
    """The message is malformed: the text says where and what."""


class _Compressed(NamedTuple):  # tag 56500, contents not checked yet
    value: Any


class _Typed(NamedTuple):  # tags 64–87
    tag: int
    payload: Any


class _MultiDim(NamedTuple):  # tags 40 / 1040
    tag: int
    value: Any


def _tag_hook(tag: cbor2.CBORTag, immutable: bool):
    """cbor2 ≥ 6 calls tag hooks as ``(tag, immutable)``. Arrays are only wrapped here and decoded after the
    whole message has been parsed, so that every problem can name the series and image it belongs to."""
    number = tag.tag
    if number == TAG_COMPRESSED:
        return _Compressed(tag.value)
    if 64 <= number <= 87:
        return _Typed(number, tag.value)
    if number in (TAG_ROW_MAJOR, TAG_COLUMN_MAJOR):
        return _MultiDim(number, tag.value)
    return tag.value  # a tag we do not know: its content as it is


class _Context:
    """What is known of the message so far (for the DecodeError)."""

    def __init__(self) -> None:
        self.kind: str | None = None
        self.series_id: int | None = None
        self.series_unique_id: str | None = None
        self.image_id: int | None = None

    def where(self) -> str:
        if self.kind == "image":
            image = "image" if self.image_id is None else f"image {self.image_id}"
            return image + ("" if self.series_id is None else f" of series {self.series_id}")
        if self.kind in ("start", "end"):
            return f"{self.kind} message" + ("" if self.series_id is None else f" of series {self.series_id}")
        return "message"


def decode_message(msg, *, received: float = 0.0, source: str = "", buffers: Allocator | None = None) -> Event | None:
    """One Stream V2 message (bytes-like) → SeriesStart, FrameEvent or SeriesEnd; None for a message type that
    is not ours to process (Jungfraujoch ``calibration``, ``metadata``, ...); a DecodeError for a malformed
    message (never an exception).

    received: ``time.monotonic()`` when the message arrived. source: the endpoint it came from.
    buffers: where each channel's pixels are written (see :data:`Allocator`): the decoded image is copied
    into the array it returns, which must have the image's shape and dtype (else a DecodeError). Without it
    the images are the arrays decoding made.

    SeriesStart: ``image_shape = (image_size_y, image_size_x)``; ``channels`` (``("data",)`` when absent);
    ``pixel_mask`` channel → 2-D array (a single array applies to every channel); ``dtype`` from
    ``bit_depth_image`` when given; everything else of the message is in ``meta`` as plain Python values and
    NumPy arrays (``beam_center_x/y`` px, ``incident_wavelength`` Å, ``incident_energy`` eV, ``count_time``
    and ``frame_time`` s, ``goniometer``, ``flatfield``, ...). FrameEvent: ``data`` channel → 2-D array,
    ``meta`` every other key (``start_time``, ``stop_time``, ``real_time`` as the detector sends them, e.g.
    Rationals ``[numerator, denominator]``; ``user_data``; Jungfraujoch extras), ``nbytes = len(msg)``.
    """
    ctx = _Context()
    try:
        return _decode(msg, ctx, received, source, buffers)
    except (_Bad, ChunkError) as exc:
        problem = str(exc)
    except Exception as exc:  # anything the checks above did not foresee: still a DecodeError, never a crash
        problem = f"{type(exc).__name__}: {exc}"
    return DecodeError(message=_one_line(f"{ctx.where()}: {problem}"), source=source, series_id=ctx.series_id,
                       series_unique_id=ctx.series_unique_id, image_id=ctx.image_id, received=received)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decode(msg, ctx: _Context, received: float, source: str, buffers: Allocator | None) -> Event | None:
    try:
        view = memoryview(msg)
        size = view.nbytes
    except TypeError:
        raise _Bad(f"a message must be bytes, not {type(msg).__name__}") from None
    if size == 0:
        raise _Bad("empty message")
    stream = io.BytesIO(msg)
    try:
        obj = cbor2.CBORDecoder(stream, tag_hook=_tag_hook, max_depth=_MAX_DEPTH).decode()
    except Exception as exc:  # CBORDecodeError, or an error in a hook
        raise _Bad(f"not a valid CBOR message ({_one_line(str(exc), 120) or type(exc).__name__})") from None
    if stream.tell() != size:
        raise _Bad(f"{size - stream.tell()} bytes after the end of the CBOR item ({size} bytes in all)")
    if not isinstance(obj, Mapping):
        raise _Bad(f"a CBOR {_kind(obj)}, not a map")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise _Bad("a CBOR map without a text 'type' key")
    if kind not in ("start", "image", "end"):
        return None
    ctx.kind = kind
    ctx.series_id = _int(obj, "series_id")
    ctx.series_unique_id = _unique_id(obj, ctx.series_id, source)
    if kind == "image":
        return _image(obj, ctx, size, received, source, buffers)
    if kind == "start":
        return _start(obj, ctx, received, source)
    return SeriesEnd(ctx.series_id, ctx.series_unique_id, reason="end", received=received)


def _kind(obj) -> str:
    if isinstance(obj, (list, tuple)):
        return "array"
    if isinstance(obj, (bytes, bytearray)):
        return "byte string"
    if isinstance(obj, str):
        return "text string"
    return type(obj).__name__


def _int(obj: Mapping, key: str, *, required: bool = True, minimum: int | None = None) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad(f"no '{key}'")
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"'{key}' must be an integer, got {_kind(value)}")
    if minimum is not None and value < minimum:
        raise _Bad(f"'{key}' must be ≥ {minimum}, got {value}")
    return value


def _unique_id(obj: Mapping, series_id: int, source: str) -> str:
    value = obj.get("series_unique_id")
    if value is None:
        return f"{source}#{series_id}"
    if not isinstance(value, str):
        raise _Bad(f"'series_unique_id' must be a text string, got {_kind(value)}")
    return value


def _image(obj: Mapping, ctx: _Context, size: int, received: float, source: str,
           buffers: Allocator | None) -> FrameEvent:
    key = "image_id" if "image_id" in obj else "image_number"
    ctx.image_id = _int(obj, key) if key in obj else None
    if ctx.image_id is None:
        raise _Bad("no 'image_id'")
    data = obj.get("data")
    if not isinstance(data, Mapping) or not data:
        raise _Bad("no image data ('data' must be a map of channel → array)" if data is None or isinstance(
            data, Mapping) else f"'data' must be a map of channel → array, got {_kind(data)}")
    images: dict[str, np.ndarray] = {}
    for channel, value in data.items():
        if not isinstance(channel, str):
            raise _Bad(f"channel names must be text strings, got {_kind(channel)}")
        where = f"channel {channel!r}"
        if not isinstance(value, _MultiDim):
            raise _Bad(f"{where}: not a multi-dimensional array (tag 40)")
        image = _multidim(value, where)
        if image.ndim != 2 or 0 in image.shape:
            raise _Bad(f"{where}: an image must have 2 non-zero dimensions, got {image.shape}")
        images[channel] = _place(image, channel, buffers, where)
    meta = {k: _plain(v, k) for k, v in obj.items() if k not in _IMAGE_KEYS}
    meta.pop("image_number", None)
    return FrameEvent(ctx.series_id, ctx.series_unique_id, ctx.image_id, images, meta=meta, received=received,
                      nbytes=size)


def _place(image: np.ndarray, channel: str, buffers: Allocator | None, where: str) -> np.ndarray:
    if buffers is None:
        return image
    out = buffers(channel, image.shape, image.dtype)
    if out is None:
        return image
    if out.shape != image.shape or out.dtype != image.dtype:
        raise _Bad(f"{where}: the buffer given is {out.dtype}{list(out.shape)}, the image {image.dtype}"
                   f"{list(image.shape)}")
    np.copyto(out, image)
    return out


def _start(obj: Mapping, ctx: _Context, received: float, source: str) -> SeriesStart:
    number = _int(obj, "number_of_images", required=False, minimum=0)
    channels: tuple[str, ...] = ("data",)
    if obj.get("channels") is not None:
        raw = obj["channels"]
        if not isinstance(raw, (list, tuple)) or not raw or not all(isinstance(c, str) for c in raw):
            raise _Bad("'channels' must be a non-empty array of text strings")
        channels = tuple(raw)
    width = _int(obj, "image_size_x", required=False, minimum=1)
    height = _int(obj, "image_size_y", required=False, minimum=1)
    shape = (height, width) if width is not None and height is not None else None
    masks: dict[str, np.ndarray] = {}
    raw = obj.get("pixel_mask")
    if raw is not None:
        items = raw.items() if isinstance(raw, Mapping) else [(c, raw) for c in channels]
        for channel, value in items:
            where = f"pixel_mask[{channel!r}]"
            if not isinstance(value, _MultiDim):
                raise _Bad(f"{where}: not a multi-dimensional array (tag 40)")
            mask = _multidim(value, where)
            if mask.ndim != 2 or (shape is not None and mask.shape != shape):
                raise _Bad(f"{where}: shape {mask.shape} is not the image's {shape}")
            masks[str(channel)] = mask
    saturation = obj.get("saturation_value")
    if saturation is not None:
        if isinstance(saturation, bool) or not isinstance(saturation, (int, float)):
            raise _Bad(f"'saturation_value' must be a number, got {_kind(saturation)}")
        saturation = float(saturation)
    dtype = None
    bits = obj.get("bit_depth_image")
    if bits in (8, 16, 32, 64) and not isinstance(bits, bool):
        dtype = f"{'int' if obj.get('pixel_signed') is True else 'uint'}{bits}"
    meta = {k: _plain(v, k) for k, v in obj.items() if k not in _START_KEYS}
    return SeriesStart(ctx.series_id, ctx.series_unique_id, number_of_images=number, channels=channels,
                       image_shape=shape, dtype=dtype, pixel_mask=masks, saturation_value=saturation, meta=meta,
                       source=source, received=received)


def _plain(value, where: str):
    """Parsed CBOR → plain Python: maps → dict, arrays → list, tagged arrays → NumPy arrays."""
    if isinstance(value, _MultiDim):
        return _multidim(value, where)
    if isinstance(value, _Typed):
        return _typed(value, None, where)
    if isinstance(value, _Compressed):  # a compressed byte string on its own: its bytes
        return _decompress(value, np.dtype(np.uint8), None, where).tobytes()
    if isinstance(value, Mapping):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _multidim(md: _MultiDim, where: str) -> np.ndarray:
    """Tag 40/1040 → an array of its dims (row- or column-major)."""
    value = md.value
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise _Bad(f"{where}: a multi-dimensional array (tag {md.tag}) must hold [dimensions, elements]")
    dims, elements = value
    if not isinstance(dims, (list, tuple)) or not dims or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in dims):
        raise _Bad(f"{where}: dimensions must be an array of integers ≥ 0")
    dims = tuple(dims)
    count = math.prod(dims)
    if isinstance(elements, _Typed):
        flat = _typed(elements, count, where, dims)
    elif isinstance(elements, (list, tuple)):  # a plain CBOR array of numbers
        if len(elements) != count:
            raise _Bad(f"{where}: {len(elements)} elements, the dimensions {list(dims)} need {count}")
        try:
            flat = np.asarray(elements)
        except Exception:
            raise _Bad(f"{where}: the elements are not numbers") from None
        if flat.dtype.kind not in "biuf":
            raise _Bad(f"{where}: the elements are not numbers")
    else:
        raise _Bad(f"{where}: the elements must be a typed array (tags 64–87), got {_kind(elements)}")
    return flat.reshape(dims, order="C" if md.tag == TAG_ROW_MAJOR else "F")


def _typed(typed: _Typed, count: int | None, where: str, dims: tuple | None = None) -> np.ndarray:
    """A typed array → a 1-D array of ``count`` elements (None: as many as it holds), native byte order."""
    dtype = TYPED_ARRAY_TAGS.get(typed.tag)
    if dtype is None:
        raise _Bad(f"{where}: typed-array tag {typed.tag} is not supported")
    native = dtype.newbyteorder("=")
    payload = typed.payload
    if isinstance(payload, _Compressed):
        flat = _decompress(payload, native, count, where)  # a new, writable array
        if not dtype.isnative:
            flat.byteswap(inplace=True)
        return flat
    if not isinstance(payload, bytes):
        raise _Bad(f"{where}: typed-array tag {typed.tag} must hold a byte string, got {_kind(payload)}")
    if count is None:
        if len(payload) % dtype.itemsize:
            raise _Bad(f"{where}: {len(payload)} bytes are not a whole number of {dtype.name} elements")
        count = len(payload) // dtype.itemsize
    if len(payload) != count * dtype.itemsize:
        need = f"the dimensions {list(dims)} need" if dims is not None else "it needs"
        raise _Bad(f"{where}: {len(payload)} bytes of {dtype.name}, {need} {count * dtype.itemsize}")
    flat = np.frombuffer(payload, dtype)  # read-only: a view of the bytes cbor2 made
    return flat if dtype.isnative else flat.astype(native)


def _decompress(compressed: _Compressed, dtype: np.dtype, count: int | None, where: str) -> np.ndarray:
    value = compressed.value
    if not isinstance(value, (list, tuple)) or len(value) != 3:
        raise _Bad(f"{where}: a compressed byte string (tag {TAG_COMPRESSED}) must hold [algorithm, modifier, "
                   "bytes]")
    algorithm, modifier, data = value
    if not isinstance(data, bytes):
        raise _Bad(f"{where}: compressed data must be a byte string, got {_kind(data)}")
    if algorithm not in ALGORITHMS:
        raise _Bad(f"{where}: compression {algorithm!r} is not supported (only {', '.join(ALGORITHMS)})")
    if algorithm == "bslz4" and modifier != dtype.itemsize:
        if dtype.itemsize == 1 and count is None and isinstance(modifier, int) and modifier in (1, 2, 4, 8):
            dtype = np.dtype(f"u{modifier}")  # a bare compressed byte string: its own element size
        else:
            raise _Bad(f"{where}: bslz4 element size {modifier!r} does not match the {dtype.name} typed array")
    if count is None:
        total = declared_size(data)
        if total is None:
            raise _Bad(f"{where}: truncated {algorithm} chunk ({len(data)} bytes, shorter than its header)")
        if total % dtype.itemsize:
            raise _Bad(f"{where}: {algorithm} chunk of {total} bytes is not a whole number of {dtype.name} elements")
        count = total // dtype.itemsize
    if count == 0:
        raise _Bad(f"{where}: an empty array cannot be compressed")
    try:
        check_expansion(data, count * dtype.itemsize)
        return decode_chunk(data, encoding=algorithm, dtype=dtype, shape=(count,))
    except ChunkError as exc:
        raise _Bad(f"{where}: {exc}") from None


# -------------------------------------------------------------------------------------------------
# Encoding
# -------------------------------------------------------------------------------------------------
def _array_tag(array, compression: str) -> cbor2.CBORTag:
    """An array → tag 40 [dims, typed array] (tag 56500 inside when compressed)."""
    array = np.ascontiguousarray(array)
    tag = typed_array_tag(array.dtype)
    if compression == "none":
        payload: Any = array.tobytes()
    elif compression in ("bslz4", "lz4"):
        modifier = array.dtype.itemsize if compression == "bslz4" else 0
        payload = cbor2.CBORTag(TAG_COMPRESSED, [compression, modifier, encode_chunk(array, compression)])
    else:
        raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    return cbor2.CBORTag(TAG_ROW_MAJOR, [list(array.shape), cbor2.CBORTag(tag, payload)])


def _default(encoder: cbor2.CBOREncoder, value) -> None:
    """cbor2 ``default`` hook: NumPy arrays as typed arrays (uncompressed), NumPy scalars as numbers."""
    if isinstance(value, np.ndarray):
        encoder.encode(_array_tag(value, "none"))
    elif isinstance(value, np.generic):
        encoder.encode(value.item())
    else:
        raise cbor2.CBOREncodeTypeError(f"cannot encode {type(value).__name__} in a Stream V2 message")


def _check_compression(compression: str) -> None:
    if compression not in COMPRESSIONS:
        raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")


def _add_meta(msg: dict, meta: Mapping | None, reserved: frozenset) -> None:
    for key, value in (meta or {}).items():
        if key in reserved:
            raise ValueError(f"meta key {key!r} is set by the encoder's own arguments")
        msg[key] = value


def encode_start(*, series_id: int, series_unique_id: str, image_shape: tuple[int, int],
                 channels: tuple[str, ...] | list[str] = ("data",), number_of_images: int | None = None,
                 pixel_mask: np.ndarray | Mapping[str, np.ndarray] | None = None,
                 saturation_value: float | None = None, compression: str = "bslz4",
                 meta: Mapping[str, Any] | None = None) -> bytes:
    """A Stream V2 start message.

    image_shape: (height, width) → ``image_size_y``, ``image_size_x``. number_of_images: None leaves it out
    (unknown). pixel_mask: one array for every channel or channel → array (uint32 as DECTRIS sends it; any
    integer type is kept), compressed with ``compression``. meta: further keys (``beam_center_x``,
    ``incident_wavelength``, ``count_time``, ``goniometer``, Jungfraujoch's ``magic_number``, ...); NumPy
    arrays become uncompressed typed arrays.
    """
    _check_compression(compression)
    height, width = (int(n) for n in image_shape)
    msg: dict[str, Any] = {"type": "start", "series_id": int(series_id), "series_unique_id": str(series_unique_id),
                           "channels": list(channels), "image_size_x": width, "image_size_y": height}
    if number_of_images is not None:
        msg["number_of_images"] = int(number_of_images)
    if pixel_mask is not None:
        masks = pixel_mask if isinstance(pixel_mask, Mapping) else {c: pixel_mask for c in channels}
        msg["pixel_mask"] = {str(c): _array_tag(m, compression) for c, m in masks.items()}
    if saturation_value is not None:
        msg["saturation_value"] = saturation_value
    _add_meta(msg, meta, _START_KEYS)
    return cbor2.dumps(msg, default=_default)


def encode_image(*, series_id: int, series_unique_id: str, image_id: int,
                 data: np.ndarray | Mapping[str, np.ndarray], compression: str = "bslz4",
                 meta: Mapping[str, Any] | None = None) -> bytes:
    """A Stream V2 image message.

    data: one 2-D image [height, width] (channel ``"data"``) or channel → image, serialised in the mapping's
    order; each image keeps its dtype and byte order (typed-array tag chosen from it). compression: bslz4
    (bitshuffle-LZ4, 12-byte HDF5 header, 8 KiB blocks), lz4 (HDF5 LZ4 framing) or none. meta: further keys,
    e.g. ``start_time``, ``stop_time``, ``real_time`` (Rationals ``[numerator, denominator]``), ``user_data``.
    """
    _check_compression(compression)
    images = data if isinstance(data, Mapping) else {"data": data}
    if not images:
        raise ValueError("an image message needs at least one channel")
    encoded = {}
    for channel, image in images.items():
        image = np.asarray(image)
        if image.ndim != 2 or 0 in image.shape:
            raise ValueError(f"channel {channel!r}: an image must be 2-D and not empty, got shape {image.shape}")
        encoded[str(channel)] = _array_tag(image, compression)
    msg: dict[str, Any] = {"type": "image", "series_id": int(series_id), "series_unique_id": str(series_unique_id),
                           "image_id": int(image_id), "data": encoded}
    _add_meta(msg, meta, _IMAGE_KEYS)
    return cbor2.dumps(msg, default=_default)


def encode_end(*, series_id: int, series_unique_id: str, meta: Mapping[str, Any] | None = None) -> bytes:
    """A Stream V2 end message (DECTRIS sends nothing else: no image count)."""
    msg: dict[str, Any] = {"type": "end", "series_id": int(series_id), "series_unique_id": str(series_unique_id)}
    _add_meta(msg, meta, _END_KEYS)
    return cbor2.dumps(msg, default=_default)
