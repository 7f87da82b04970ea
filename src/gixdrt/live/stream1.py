"""DECTRIS SIMPLON Stream V1 (legacy, ``format=legacy``): multipart JSON + binary messages → events, and back.

A message is a list of ZeroMQ frames ("parts"), the first a JSON header with ``htype``:

- ``dheader-1.0`` (global header, sent when the detector is armed): ``{"htype", "series", "header_detail"}``;
  ``header_detail`` ``none``: nothing more; ``basic``: + the detector configuration as JSON (``nimages``,
  ``ntrigger``, ``x_pixels_in_detector``, ``y_pixels_in_detector``, ``bit_depth_image``, ``beam_center_x/y``,
  ``wavelength``, ``photon_energy``, ``count_time``, ``frame_time``, ``detector_distance``, ...); ``all``: +
  pairs of a JSON part (``dflatfield-1.0``, ``dpixelmask-1.0``, ``dcountrate_table-1.0``, each with ``shape``
  and ``type``) and its binary blob. Parts after these are the ``header_appendix``.
- ``dimage-1.0`` (one per image): ``{"htype", "series", "frame", "hash"}``, then ``dimage_d-1.0``
  ``{"shape": [x, y], "type": "uint16", "encoding": "bs16-lz4<", "size": bytes}``, the blob, and ``dconfig-1.0``
  ``{"start_time", "stop_time", "real_time"}`` (nanoseconds); a fifth part is the ``image_appendix``.
- ``dseries_end-1.0``: ``{"htype", "series"}``.

**V1 ``shape`` is [x, y] = [width, height]**; images here are [height, width] (V2 ``dims`` order).
Encodings: ``<``/``>`` uncompressed (byte order), ``lz4<`` one bare LZ4 block of the whole image (not the HDF5
framing V2 uses), ``bs8-lz4<``/``bs16-lz4<``/``bs32-lz4<`` bitshuffle-LZ4 with the 12-byte HDF5 header.

V1 has no unique series id: ``series_unique_id`` is ``f"{source}#{series}"`` (the endpoint and the detector's
series number, which DECTRIS increments at every arm; after a detector restart numbers may repeat, so a
consumer that keeps series across restarts should also look at the start's ``received`` time).
:class:`~gixdrt.live.events.SeriesStart` gets ``number_of_images = nimages × ntrigger``, ``image_shape =
(y_pixels_in_detector, x_pixels_in_detector)``, ``dtype`` from ``bit_depth_image``, ``saturation_value`` from
``countrate_correction_count_cutoff``, the pixel mask of ``header_detail=all``; its ``meta`` holds the
configuration as sent, plus the V2 names ``incident_wavelength`` (= ``wavelength``, Å) and ``incident_energy``
(= ``photon_energy``, eV). The image ``hash`` (md5) is kept in ``meta``, not checked.

:func:`decode_message` never raises for bad input (a :class:`~gixdrt.live.events.DecodeError` instead).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..io.decode import ChunkError, decode_chunk
from .chunks import COMPRESSIONS, check_expansion, decode_lz4_raw, encode_chunk, encode_lz4_raw
from .events import DecodeError, Event, FrameEvent, SeriesEnd, SeriesStart
from .stream2 import Allocator

__all__ = ["PIXEL_TYPES", "decode_message", "encode_end", "encode_header", "encode_image", "unique_id"]

#: pixel types of a V1 image (``type`` of ``dimage_d-1.0``)
PIXEL_TYPES = ("uint8", "uint16", "uint32", "int32", "float32")
_ENCODING = re.compile(r"(?:(?P<bs>bs(?P<bits>8|16|32|64)-)?(?P<lz4>lz4))?(?P<order>[<>])")
_BLOBS = {"dflatfield-1.0": "flatfield", "dpixelmask-1.0": "pixel_mask", "dcountrate_table-1.0": "countrate_table"}


def unique_id(source: str, series: int) -> str:
    """The ``series_unique_id`` of V1 series ``series`` received from ``source``."""
    return f"{source}#{series}"


class _Bad(Exception):
    pass


class _Context:
    def __init__(self) -> None:
        self.kind: str | None = None
        self.series: int | None = None
        self.frame: int | None = None
        self.unique: str | None = None

    def where(self) -> str:
        series = "" if self.series is None else f" of series {self.series}"
        if self.kind == "image":
            return ("image" if self.frame is None else f"image {self.frame}") + series
        if self.kind in ("header", "end"):
            return f"{self.kind} message{series}"
        return "message"


def decode_message(parts: Sequence, *, received: float = 0.0, source: str = "",
                   buffers: Allocator | None = None) -> Event | None:
    """One V1 multipart message (a list of bytes-like parts) → SeriesStart, FrameEvent or SeriesEnd; None for an
    ``htype`` that is not ours; a DecodeError (never an exception) when it is malformed.

    received: ``time.monotonic()`` at arrival; source: the endpoint (part of ``series_unique_id``);
    buffers: where the pixels go (see :data:`gixdrt.live.stream2.Allocator`).
    """
    ctx = _Context()
    try:
        return _decode(parts, ctx, received, source, buffers)
    except (_Bad, ChunkError) as exc:
        problem = str(exc)
    except Exception as exc:  # unforeseen: still a DecodeError
        problem = f"{type(exc).__name__}: {exc}"
    text = " ".join(f"{ctx.where()}: {problem}".split())[:300]
    return DecodeError(message=text, source=source, series_id=ctx.series, series_unique_id=ctx.unique,
                       image_id=ctx.frame, received=received)


def _json(part, what: str) -> dict:
    try:
        value = json.loads(bytes(part))
    except Exception:
        raise _Bad(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise _Bad(f"{what} is not a JSON object")
    return value


def _int(obj: Mapping, key: str, what: str) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"{what}: '{key}' must be an integer, got {value!r}"[:200])
    return value


def _decode(parts, ctx: _Context, received: float, source: str, buffers) -> Event | None:
    if isinstance(parts, (bytes, bytearray, memoryview)) or not isinstance(parts, Sequence) or not parts:
        raise _Bad("a V1 message must be a non-empty list of parts")
    head = _json(parts[0], "part 1")
    htype = head.get("htype")
    if not isinstance(htype, str):
        raise _Bad("part 1 has no text 'htype'")
    kind = {"dheader-1.0": "header", "dimage-1.0": "image", "dseries_end-1.0": "end"}.get(htype)
    if kind is None:
        return None
    ctx.kind = kind
    ctx.series = _int(head, "series", "part 1")
    ctx.unique = unique_id(source, ctx.series)
    if kind == "image":
        ctx.frame = _int(head, "frame", "part 1")
        return _image(head, parts, ctx, received, buffers)
    if kind == "header":
        return _header(head, parts, ctx, received, source)
    return SeriesEnd(ctx.series, ctx.unique, reason="end", received=received)


def _dtype(name, what: str) -> np.dtype:
    if name not in PIXEL_TYPES:
        raise _Bad(f"{what}: type {name!r} is not one of {', '.join(PIXEL_TYPES)}"[:200])
    return np.dtype(name)


def _shape(value, what: str) -> tuple[int, int]:
    """V1 ``shape`` [x, y] (width, height) → (height, width)."""
    if not isinstance(value, list) or len(value) != 2 or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in value):
        raise _Bad(f"{what}: 'shape' must be [x, y], two integers > 0, got {value!r}"[:200])
    return value[1], value[0]


def _image(head: dict, parts, ctx: _Context, received: float, buffers) -> FrameEvent:
    if len(parts) < 3:
        raise _Bad(f"{len(parts)} parts, an image needs at least 3 (dimage, dimage_d, data)")
    info = _json(parts[1], "part 2 (dimage_d)")
    if info.get("htype") != "dimage_d-1.0":
        raise _Bad(f"part 2 is {str(info.get('htype'))[:40]!r}, not 'dimage_d-1.0'")
    shape = _shape(info.get("shape"), "dimage_d")
    dtype = _dtype(info.get("type"), "dimage_d")
    encoding = info.get("encoding")
    match = _ENCODING.fullmatch(encoding) if isinstance(encoding, str) else None
    if match is None:
        raise _Bad(f"dimage_d: unknown encoding {str(encoding)[:40]!r}")
    blob = memoryview(parts[2]).cast("B")
    size = info.get("size")
    if size is not None and size != blob.nbytes:
        raise _Bad(f"dimage_d declares {size!r} bytes of data, the data part holds {blob.nbytes}"[:200])
    order = np.dtype(dtype).newbyteorder(match["order"])
    need = math.prod(shape) * dtype.itemsize
    if match["bs"]:
        if int(match["bits"]) != dtype.itemsize * 8:
            raise _Bad(f"dimage_d: encoding {encoding!r} does not match type {dtype.name}")
        check_expansion(blob, need)
        image = decode_chunk(blob, encoding="bslz4", dtype=order, shape=shape)
    elif match["lz4"]:
        image = decode_lz4_raw(blob, dtype=order, shape=shape)
    else:
        if blob.nbytes != need:
            raise _Bad(f"{blob.nbytes} bytes of data, a {shape[1]}×{shape[0]} {dtype.name} image needs {need}")
        image = np.frombuffer(blob, order).reshape(shape)  # a read-only view of the received part
    if not image.dtype.isnative:
        image = image.astype(dtype) if not image.flags.writeable else image.byteswap(inplace=True).view(dtype)
    if buffers is not None:
        out = buffers("data", shape, dtype)
        if out is not None:
            if out.shape != shape or out.dtype != dtype:
                raise _Bad(f"the buffer given is {out.dtype}{list(out.shape)}, the image {dtype}{list(shape)}")
            np.copyto(out, image)
            image = out
    meta: dict[str, Any] = {}
    if "hash" in head:
        meta["hash"] = head["hash"]
    if len(parts) >= 4:
        times = _json(parts[3], "part 4 (dconfig)")
        meta.update({k: v for k, v in times.items() if k != "htype"})
    if len(parts) >= 5:
        meta["image_appendix"] = _appendix(parts[4:])
    nbytes = sum(memoryview(p).nbytes for p in parts)
    return FrameEvent(ctx.series, ctx.unique, ctx.frame, {"data": image}, meta=meta, received=received, nbytes=nbytes)


def _appendix(parts):
    """Appendix parts: JSON when they parse, else text, else bytes (one part: the value; more: a list)."""
    values = []
    for part in parts:
        raw = bytes(part)
        try:
            values.append(json.loads(raw))
        except Exception:
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                values.append(raw)
    return values[0] if len(values) == 1 else values


def _header(head: dict, parts, ctx: _Context, received: float, source: str) -> SeriesStart:
    detail = head.get("header_detail", "basic")
    if detail not in ("none", "basic", "all"):
        raise _Bad(f"header_detail {str(detail)[:20]!r} is not none, basic or all")
    meta: dict[str, Any] = {"header_detail": detail}
    config: dict = {}
    i = 1
    if detail != "none" and len(parts) > 1:
        config = _json(parts[1], "part 2 (detector configuration)")
        meta.update(config)
        i = 2
    arrays: dict[str, np.ndarray] = {}
    while detail == "all" and i < len(parts):
        try:
            info = json.loads(bytes(parts[i]))
        except Exception:
            break
        name = _BLOBS.get(info.get("htype")) if isinstance(info, dict) else None
        if name is None:
            break
        if i + 1 >= len(parts):
            raise _Bad(f"part {i + 1} ({info['htype']}) has no data part after it")
        shape = _shape(info.get("shape"), info["htype"])
        dtype = _dtype(info.get("type"), info["htype"])
        blob = memoryview(parts[i + 1]).cast("B")
        need = math.prod(shape) * dtype.itemsize
        if blob.nbytes != need:
            raise _Bad(f"{info['htype']}: {blob.nbytes} bytes, shape {info['shape']} of {dtype.name} needs {need}")
        arrays[name] = np.frombuffer(blob, dtype.newbyteorder("<")).reshape(shape).astype(dtype)
        i += 2
    if i < len(parts):
        meta["header_appendix"] = _appendix(parts[i:])
    mask = arrays.pop("pixel_mask", None)
    meta.update(arrays)
    for v1, v2 in (("wavelength", "incident_wavelength"), ("photon_energy", "incident_energy")):
        if v1 in config and v2 not in config:
            meta[v2] = config[v1]
    nimages, ntrigger = config.get("nimages"), config.get("ntrigger", 1)
    number = nimages * ntrigger if all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                                       for n in (nimages, ntrigger)) else None
    width, height = config.get("x_pixels_in_detector"), config.get("y_pixels_in_detector")
    shape = (height, width) if all(isinstance(n, int) and not isinstance(n, bool) and n > 0
                                   for n in (width, height)) else None
    if mask is not None and shape is not None and mask.shape != shape:
        raise _Bad(f"dpixelmask-1.0: shape {list(mask.shape[::-1])} is not the detector's {[width, height]}")
    bits = config.get("bit_depth_image")
    dtype = f"uint{bits}" if bits in (8, 16, 32) and not isinstance(bits, bool) else None
    saturation = config.get("saturation_value", config.get("countrate_correction_count_cutoff"))
    saturation = float(saturation) if isinstance(saturation, (int, float)) and not isinstance(
        saturation, bool) else None
    return SeriesStart(ctx.series, ctx.unique, number_of_images=number, channels=("data",), image_shape=shape,
                       dtype=dtype, pixel_mask={} if mask is None else {"data": mask}, saturation_value=saturation,
                       meta=meta, source=source, received=received)


# -------------------------------------------------------------------------------------------------
# Encoding
# -------------------------------------------------------------------------------------------------
def _dumps(obj) -> bytes:
    return json.dumps(obj, default=_json_default).encode()


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} in a V1 JSON part")


def encode_header(*, series: int, detail: str = "basic", config: Mapping[str, Any] | None = None,
                  pixel_mask: np.ndarray | None = None, flatfield: np.ndarray | None = None,
                  appendix: Any = None) -> list[bytes]:
    """A V1 global header (``dheader-1.0``) as a list of parts.

    detail: ``none`` (one part), ``basic`` (+ ``config``, the detector configuration JSON) or ``all`` (+ the
    flatfield (float32) and pixel mask (uint32) given, each a ``shape: [x, y]`` JSON part and its little-endian
    blob). appendix: a JSON-able value or bytes, sent as the last part (``header_appendix``).
    """
    if detail not in ("none", "basic", "all"):
        raise ValueError(f"header_detail must be none, basic or all, got {detail!r}")
    parts = [_dumps({"htype": "dheader-1.0", "series": int(series), "header_detail": detail})]
    if detail != "none":
        parts.append(_dumps(dict(config or {})))
    if detail == "all":
        for htype, array, dtype in (("dflatfield-1.0", flatfield, "<f4"), ("dpixelmask-1.0", pixel_mask, "<u4")):
            if array is None:
                continue
            array = np.asarray(array)
            if array.ndim != 2:
                raise ValueError(f"{htype}: a 2-D array is needed, got shape {array.shape}")
            parts.append(_dumps({"htype": htype, "shape": [array.shape[1], array.shape[0]],
                                 "type": np.dtype(dtype).name}))
            parts.append(np.ascontiguousarray(array, dtype=dtype).tobytes())
    if appendix is not None:
        parts.append(appendix if isinstance(appendix, bytes) else _dumps(appendix))
    return parts


def encode_image(*, series: int, frame: int, image: np.ndarray, compression: str = "bslz4",
                 start_time: int | None = None, stop_time: int | None = None, real_time: int | None = None,
                 appendix: Any = None) -> list[bytes]:
    """A V1 image (``dimage-1.0``, ``dimage_d-1.0`` with ``shape: [x, y]``, the data, ``dconfig-1.0``).

    image: [height, width] of one of :data:`PIXEL_TYPES`, sent little-endian. compression: ``bslz4`` →
    ``bsN-lz4<`` (N = bits per pixel, 12-byte HDF5 header), ``lz4`` → ``lz4<`` (one bare LZ4 block), ``none``
    → ``<``. Times in nanoseconds (0 when not given). The hash is the md5 of the data part.
    """
    image = np.asarray(image)
    if image.ndim != 2 or 0 in image.shape:
        raise ValueError(f"an image must be 2-D and not empty, got shape {image.shape}")
    if image.dtype.name not in PIXEL_TYPES:
        raise ValueError(f"Stream V1 sends {', '.join(PIXEL_TYPES)} images, not {image.dtype}")
    image = np.ascontiguousarray(image, dtype=image.dtype.newbyteorder("<"))
    if compression == "bslz4":
        encoding, blob = f"bs{image.dtype.itemsize * 8}-lz4<", encode_chunk(image, "bslz4")
    elif compression == "lz4":
        encoding, blob = "lz4<", encode_lz4_raw(image)
    elif compression == "none":
        encoding, blob = "<", image.tobytes()
    else:
        raise ValueError(f"unknown compression {compression!r}; expected one of {', '.join(COMPRESSIONS)}")
    parts = [
        _dumps({"htype": "dimage-1.0", "series": int(series), "frame": int(frame),
                "hash": hashlib.md5(blob).hexdigest()}),
        _dumps({"htype": "dimage_d-1.0", "shape": [image.shape[1], image.shape[0]], "type": image.dtype.name,
                "encoding": encoding, "size": len(blob)}),
        blob,
        _dumps({"htype": "dconfig-1.0", "start_time": int(start_time or 0), "stop_time": int(stop_time or 0),
                "real_time": int(real_time or 0)}),
    ]
    if appendix is not None:
        parts.append(appendix if isinstance(appendix, bytes) else _dumps(appendix))
    return parts


def encode_end(*, series: int) -> list[bytes]:
    """A V1 series end (``dseries_end-1.0``)."""
    return [_dumps({"htype": "dseries_end-1.0", "series": int(series)})]
