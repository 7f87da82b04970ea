"""Compressed chunks as detectors send them: the encoders that :func:`gixdrt.io.decode.decode_chunk` inverts.

Both DECTRIS streams send bitshuffle-LZ4 (``bslz4``) and LZ4 (``lz4``) payloads in the HDF5-filter framing that
:mod:`gixdrt.io.decode` describes: a 12-byte header (uncompressed size, 8 bytes big-endian; block size in bytes,
4 bytes big-endian), then per block a 4-byte big-endian compressed size and the LZ4 block. The one exception is
the legacy Stream V1 ``lz4<`` encoding, which is one bare LZ4 block of the whole image with no header
(:func:`encode_lz4_raw` / :func:`decode_lz4_raw`).

Used by the replayer and the tests; a detector does this in its own firmware.
"""
from __future__ import annotations

import struct

import numpy as np

from ..io.decode import ChunkError

__all__ = [
    "BSLZ4_BLOCK_BYTES",
    "COMPRESSIONS",
    "LZ4_BLOCK_BYTES",
    "MAX_EXPANSION",
    "check_expansion",
    "declared_size",
    "decode_lz4_raw",
    "encode_chunk",
    "encode_lz4_raw",
]

#: compression names accepted by the stream encoders: bitshuffle-LZ4, LZ4 (HDF5 framing), none
COMPRESSIONS = ("bslz4", "lz4", "none")
#: bitshuffle block size in bytes, as DECTRIS detectors use it (the block holds 8192 / itemsize elements)
BSLZ4_BLOCK_BYTES = 8192
#: LZ4 block size in bytes of the HDF5 LZ4 framing (the HDF5 filter's default, 1 GiB: one block per image)
LZ4_BLOCK_BYTES = 1 << 30
#: LZ4 never expands a block by more than this factor (255 bytes of match length per extra byte), so a chunk
#: whose header declares more than MAX_EXPANSION × its length (+ 1 KiB) is corrupt; checked before any allocation.
MAX_EXPANSION = 255
_HEADER = struct.Struct(">QI")
_U32 = struct.Struct(">I")


def encode_chunk(array: np.ndarray, encoding: str) -> bytes:
    """``array`` (any shape, C order, its own byte order kept) → a ``bslz4`` or ``lz4`` chunk in the HDF5-filter
    framing, which ``decode_chunk(chunk, encoding=encoding, dtype=array.dtype, shape=array.shape)`` returns
    equal. bslz4 uses blocks of :data:`BSLZ4_BLOCK_BYTES` bytes (whole multiples of 8 elements), lz4 blocks of
    :data:`LZ4_BLOCK_BYTES`; an LZ4 block that would not shrink is stored as it is (compressed size = block size).
    """
    array = np.ascontiguousarray(array)
    if array.size == 0:
        raise ValueError("cannot compress an empty array")
    raw = array.view(np.uint8).reshape(-1)
    total = raw.size
    if encoding == "bslz4":
        import bitshuffle

        itemsize = array.dtype.itemsize
        per = max(8, (BSLZ4_BLOCK_BYTES // itemsize) // 8 * 8)  # elements per block, a multiple of 8
        # bitshuffle sees unsigned integers of the element size: the bytes are moved, never reinterpreted
        if itemsize not in (1, 2, 4, 8):
            raise ValueError(f"bslz4 compresses elements of 1, 2, 4 or 8 bytes, not {array.dtype}")
        elements = raw.view(np.dtype(f"u{itemsize}"))
        body = bitshuffle.compress_lz4(elements, per)
        return _HEADER.pack(total, per * itemsize) + body.tobytes()
    if encoding == "lz4":
        import lz4.block

        block = min(LZ4_BLOCK_BYTES, total)
        parts = [_HEADER.pack(total, block)]
        for start in range(0, total, block):
            piece = raw[start : start + block].tobytes()
            packed = lz4.block.compress(piece, store_size=False)
            if len(packed) >= len(piece):  # incompressible: stored as it is, which the size says
                packed = piece
            parts += [_U32.pack(len(packed)), packed]
        return b"".join(parts)
    raise ValueError(f"unknown encoding {encoding!r}; expected bslz4 or lz4")


def encode_lz4_raw(array: np.ndarray) -> bytes:
    """``array`` → one bare LZ4 block of its bytes (Stream V1 ``lz4<``: no header, no size prefix)."""
    import lz4.block

    return lz4.block.compress(np.ascontiguousarray(array).tobytes(), store_size=False)


def decode_lz4_raw(data, *, dtype, shape: tuple[int, ...]) -> np.ndarray:
    """One bare LZ4 block (Stream V1 ``lz4<``) → a new array of ``shape`` and ``dtype``.

    The block must decode to exactly shape × itemsize bytes; anything else (corrupt data, a block that ends
    early or too long) is a :class:`ChunkError`. The size is checked against what LZ4 can produce from the block
    before anything is allocated.
    """
    import lz4.block

    dtype = np.dtype(dtype)
    expected = int(np.prod(shape)) * dtype.itemsize
    if expected == 0:
        raise ChunkError(f"an LZ4 block cannot decode to the empty shape {tuple(shape)}")
    n = len(memoryview(data))
    if expected > MAX_EXPANSION * n + 1024:
        raise ChunkError(f"corrupt LZ4 block: {n} bytes cannot decode to the {expected} bytes the shape needs")
    try:
        out = lz4.block.decompress(data, uncompressed_size=expected, return_bytearray=True)
    except Exception as exc:  # LZ4BlockError: corrupt data, or more output than expected
        raise ChunkError(f"corrupt LZ4 block: it does not decode to {expected} bytes ({type(exc).__name__})") from None
    if len(out) != expected:
        raise ChunkError(f"corrupt LZ4 block: it decodes to {len(out)} bytes, the shape needs {expected}")
    return np.frombuffer(out, dtype).reshape(shape)


def declared_size(data) -> int | None:
    """The uncompressed size in bytes an HDF5-framed chunk's header declares (None: shorter than the header)."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        return None
    return _HEADER.unpack_from(view, 0)[0]


def check_expansion(data, expected: int) -> None:
    """ChunkError when ``expected`` uncompressed bytes cannot come out of the chunk ``data`` (see
    :data:`MAX_EXPANSION`): refuses absurd sizes before decompression allocates them."""
    n = len(memoryview(data))
    if expected > MAX_EXPANSION * n + 1024:
        raise ChunkError(f"corrupt chunk: {n} compressed bytes cannot hold the {expected} bytes declared")
