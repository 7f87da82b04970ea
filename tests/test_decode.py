"""The chunk decoder (gixdrt.io.decode) and the HDF5 reader's direct chunk reads built on it.

Chunks are written by hdf5plugin's filters (bitshuffle-LZ4: filter 32008, LZ4: filter 32004) and read back raw
with h5py's read_direct_chunk, so the decoder is checked against the bytes the HDF5 filters produce. Every check
of a chunk's framing is triggered on its own and named in the error; random mutations of chunks are decoded in
this process (a crash would end the test run).
"""
from __future__ import annotations

import struct
import sys
import warnings

import numpy as np
import pytest

from gixdrt.errors import FrameError
from gixdrt.io import decode, iter_frames, read_frame
from gixdrt.io.decode import ChunkError, check_chunk, decode_chunk, decode_chunks
from gixdrt.io.readers import H5Reader, reader_for

h5py = pytest.importorskip("h5py")
hdf5plugin = pytest.importorskip("hdf5plugin")
pytest.importorskip("bitshuffle")
pytest.importorskip("lz4.block")

H, W = 24, 40


def _frames(n, dtype, seed=0, shape=(H, W)):
    """Poisson counts with a few bright spots, as a detector frame holds them."""
    rng = np.random.default_rng(seed)
    data = rng.poisson(2.0, (n, *shape)).astype(np.float64)
    for frame in data:
        ys, xs = rng.integers(0, shape[0], 3), rng.integers(0, shape[1], 3)
        frame[ys, xs] += rng.integers(1000, 60000, 3)
    if np.dtype(dtype).kind == "f":
        data += rng.random(data.shape)
    return data.astype(dtype)


FILTERS = {
    "bslz4": lambda: hdf5plugin.Bitshuffle(cname="lz4"),
    "bslz4-small-blocks": lambda: hdf5plugin.Bitshuffle(nelems=64, cname="lz4"),
    "lz4": lambda: hdf5plugin.LZ4(),
    "lz4-small-blocks": lambda: hdf5plugin.LZ4(nbytes=512),
}
ENCODING = {"bslz4": "bslz4", "bslz4-small-blocks": "bslz4", "lz4": "lz4", "lz4-small-blocks": "lz4"}


def _write(path, data, rows, kind, name="data"):
    with h5py.File(path, "a") as f:
        chunks = (rows, *data.shape[1:]) if data.ndim == 3 else data.shape
        f.create_dataset(name, data=data, chunks=chunks, **FILTERS[kind]())
    return f"{path}::/{name}"


def _raw_chunks(path, name="data"):
    with h5py.File(path, "r") as f:
        ds = f[name]
        out = []
        for i in range(ds.id.get_num_chunks()):
            info = ds.id.get_chunk_info(i)
            mask, raw = ds.id.read_direct_chunk(info.chunk_offset)
            assert mask == 0
            out.append(raw)
        return out, ds.chunks, ds.dtype


def _forbid_h5py_reads(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("read through the HDF5 filter")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", forbidden)


# -------------------------------------------------------------------------------------------------
# Round trips against hdf5plugin's filters
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(FILTERS))
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32", ">f4"])
@pytest.mark.parametrize("rows", [1, 3])
def test_decode_chunk_round_trip(tmp_path, kind, dtype, rows):
    data = _frames(7, dtype, seed=rows)
    path = tmp_path / "rt.h5"
    _write(path, data, rows, kind)
    chunks, chunk_shape, stored = _raw_chunks(path)
    assert stored == np.dtype(dtype) and len(chunks) == -(-7 // rows)
    got = [decode_chunk(c, encoding=ENCODING[kind], dtype=stored, shape=chunk_shape) for c in chunks]
    assert all(g.dtype == stored and g.shape == chunk_shape and g.flags.writeable for g in got)
    assert np.array_equal(np.concatenate(got)[:7], data)  # the last chunk is partial: HDF5 pads it
    header = check_chunk(chunks[0], encoding=ENCODING[kind], dtype=stored, shape=chunk_shape)
    assert header.total == np.prod(chunk_shape) * stored.itemsize and header.stored == len(chunks[0])
    if "small" in kind:
        assert header.blocks > 1


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_decode_odd_sizes(tmp_path, encoding):
    """Element counts that are not a multiple of 8 (bitshuffle stores the last n % 8 elements as they are) and
    not a multiple of the block size, one and two bytes per element."""
    layouts = [((5, 7), "uint16"), ((3, 37), "uint8"), ((1, 9), "int32"), ((11, 13), "f8"), ((1, 5), "uint16")]
    for j, (shape, dtype) in enumerate(layouts):
        data = _frames(1, dtype, seed=j, shape=shape)[0]
        path = tmp_path / f"odd{j}.h5"
        kind = "bslz4-small-blocks" if encoding == "bslz4" else "lz4-small-blocks"
        _write(path, data, 1, kind)
        (chunk,), _, _ = _raw_chunks(path)
        assert np.array_equal(decode_chunk(chunk, encoding=encoding, dtype=dtype, shape=shape), data)


def test_decode_accepts_buffers():
    import bitshuffle

    data = _frames(1, np.uint32)[0]
    blob = struct.pack(">QI", data.nbytes, 8192) + bytes(bitshuffle.compress_lz4(data, 0))
    for buf in (blob, bytearray(blob), memoryview(blob), np.frombuffer(b"xyz" + blob, np.uint8)[3:]):
        assert np.array_equal(decode_chunk(buf, encoding="bslz4", dtype="uint32", shape=(H, W)), data)
    with pytest.raises(ValueError, match="unknown encoding"):
        decode_chunk(blob, encoding="zlib", dtype="uint32", shape=(H, W))
    with pytest.raises(ValueError, match="no elements"):
        decode_chunk(blob, encoding="bslz4", dtype="uint32", shape=(0, W))


# -------------------------------------------------------------------------------------------------
# Every check of the framing, each named
# -------------------------------------------------------------------------------------------------
def _bslz4_blob(shape=(H, W), dtype="uint32", block=0, seed=0):
    import bitshuffle

    data = _frames(1, dtype, seed=seed, shape=shape)[0]
    block = block or 8192 // np.dtype(dtype).itemsize
    blob = struct.pack(">QI", data.nbytes, block * data.itemsize) + bytes(bitshuffle.compress_lz4(data, block))
    return data, blob


def _lz4_blob(shape=(H, W), dtype="uint32", block=1024, seed=0):
    import lz4.block

    data = _frames(1, dtype, seed=seed, shape=shape)[0]
    raw = data.tobytes()
    out = struct.pack(">QI", len(raw), block)
    for i in range(0, len(raw), block):
        piece = raw[i : i + block]
        packed = lz4.block.compress(piece, store_size=False)
        if len(packed) >= len(piece):
            packed = piece  # stored as it is, as the HDF5 LZ4 filter does
        out += struct.pack(">I", len(packed)) + packed
    return data, out


def _set(blob: bytes, at: int, fmt: str, value) -> bytes:
    buf = bytearray(blob)
    struct.pack_into(fmt, buf, at, value)
    return bytes(buf)


def _block_starts(blob: bytes, n: int) -> list[int]:
    pos, out = 12, []
    for _ in range(n):
        out.append(pos)
        pos += 4 + struct.unpack_from(">I", blob, pos)[0]
    return out


def _expect(blob, encoding, match, *, shape=(H, W), dtype="uint32", framing=True):
    """decode_chunk raises a ChunkError matching ``match``; so does check_chunk where the framing is wrong (not
    where only the compressed data are)."""
    with pytest.raises(ChunkError, match=match) as info:
        decode_chunk(blob, encoding=encoding, dtype=dtype, shape=shape)
    assert isinstance(info.value, ValueError) and isinstance(info.value, FrameError)
    if framing:
        with pytest.raises(ChunkError, match=match):
            check_chunk(blob, encoding=encoding, dtype=dtype, shape=shape)
    else:
        check_chunk(blob, encoding=encoding, dtype=dtype, shape=shape)
    return str(info.value)


def test_bslz4_header_and_block_checks():
    data, blob = _bslz4_blob(block=64)  # 960 elements: 15 blocks of 64
    starts = _block_starts(blob, 15)
    assert check_chunk(blob, encoding="bslz4", dtype="uint32", shape=(H, W)).blocks == 15
    name = "bitshuffle-LZ4 chunk"
    _expect(blob[:7], "bslz4", rf"truncated {name}: 7 bytes, shorter than its 12-byte header")
    _expect(_set(blob, 0, ">Q", 2**63), "bslz4", rf"corrupt {name}: its header declares 9223372036854775808 "
            rf"uncompressed bytes, 24×40 uint32 \(4-byte elements\) need 3840")
    _expect(blob, "bslz4", "declares 3840 uncompressed bytes, 24×41 uint32", shape=(H, W + 1))
    _expect(blob, "bslz4", r"24×40 uint16 \(2-byte elements\) need 1920", dtype="uint16")
    for bad in (0, 7, 6, 4 * 12, 0xFFFFFFFF):
        _expect(_set(blob, 8, ">I", bad), "bslz4", rf"its header declares a block size of {bad} bytes, not a "
                "positive multiple of 8 elements of 4 bytes")
    _expect(_set(blob, starts[0], ">I", 0), "bslz4", r"block 1 of 15 \(at byte 12\) declares 0 compressed bytes")
    _expect(_set(blob, starts[3], ">I", 0xFFFFFFFF), "bslz4",
            rf"block 4 of 15 \(at byte {starts[3]}\) declares 4294967295 compressed bytes, more than LZ4 produces "
            "from 256 bytes")
    _expect(_set(blob, starts[14], ">I", 272), "bslz4", rf"truncated {name}: the data of block 15 of 15 end at byte")
    _expect(blob[: starts[5] + 2], "bslz4", rf"truncated {name}: the size of block 6 of 15 would be at byte "
            rf"{starts[5]}, past the end of the {starts[5] + 2}-byte chunk")
    _expect(blob[: starts[5] + 10], "bslz4", rf"truncated {name}: the data of block 6 of 15 end at byte")
    _expect(blob + b"\0\0\0", "bslz4", rf"corrupt {name}: 3 bytes after the end of its 15 blocks")
    # a huge block size is valid (one short block), as long as the blocks fit LZ4
    _expect(_set(blob, 8, ">I", 2**31), "bslz4", "bytes after the end of its 1 blocks")  # cut at 64, not 2**29
    # every size right, the LZ4 data corrupt: the decompressor's error, as a ChunkError
    bad = bytearray(blob)
    bad[starts[2] + 4 : starts[3]] = b"\xff" * (starts[3] - starts[2] - 4)
    _expect(bytes(bad), "bslz4", rf"corrupt {name}: its LZ4 data do not decode", framing=False)
    assert np.array_equal(decode_chunk(blob, encoding="bslz4", dtype="uint32", shape=(H, W)), data)


def test_bslz4_tail_and_last_block():
    # 5 × 7 = 35 uint16: one block of 16, one of 16, the last 3 elements stored as they are
    data, blob = _bslz4_blob(shape=(5, 7), dtype="uint16", block=16)
    header = check_chunk(blob, encoding="bslz4", dtype="uint16", shape=(5, 7))
    assert header.blocks == 2 and blob[-6:] == data.tobytes()[-6:]
    _expect(blob[:-2], "bslz4", r"truncated bitshuffle-LZ4 chunk: its last 6 uncompressed bytes end at byte",
            shape=(5, 7), dtype="uint16")
    _expect(blob + b"x", "bslz4", r"1 bytes after the end of its 2 blocks and 6 uncompressed bytes",
            shape=(5, 7), dtype="uint16")
    # 36 elements with a block of 32: one block of 32, no block of 4 (< 8), 4 elements stored as they are
    data, blob = _bslz4_blob(shape=(6, 6), dtype="uint16", block=32)
    assert check_chunk(blob, encoding="bslz4", dtype="uint16", shape=(6, 6)).blocks == 1
    assert np.array_equal(decode_chunk(blob, encoding="bslz4", dtype="uint16", shape=(6, 6)), data)


def test_lz4_header_and_block_checks():
    data, blob = _lz4_blob(block=1000)  # 3840 bytes: 3 blocks of 1000, one of 840
    starts = _block_starts(blob, 4)
    assert check_chunk(blob, encoding="lz4", dtype="uint32", shape=(H, W)).blocks == 4
    assert np.array_equal(decode_chunk(blob, encoding="lz4", dtype="uint32", shape=(H, W)), data)
    name = "LZ4 chunk"
    _expect(blob[:11], "lz4", rf"truncated {name}: 11 bytes, shorter than its 12-byte header")
    _expect(_set(blob, 0, ">Q", 3841), "lz4", rf"corrupt {name}: its header declares 3841 uncompressed bytes")
    _expect(_set(blob, 8, ">I", 0), "lz4", rf"corrupt {name}: its header declares a block size of 0 bytes")
    _expect(_set(blob, starts[1], ">I", 0), "lz4", r"block 2 of 4 \(at byte \d+\) declares 0 compressed bytes")
    _expect(_set(blob, starts[1], ">I", 1001), "lz4", r"block 2 of 4 .* declares 1001 compressed bytes, more than "
            "the block itself")
    _expect(_set(blob, starts[3], ">I", 840), "lz4", rf"truncated {name}: the data of block 4 of 4 end at byte")
    _expect(blob[: starts[2] + 3], "lz4", rf"truncated {name}: the size of block 3 of 4 would be at byte")
    _expect(blob + b"\0", "lz4", rf"corrupt {name}: 1 bytes after the end of its 4 blocks")
    bad = bytearray(blob)
    bad[starts[0] + 4 : starts[1]] = b"\xff" * (starts[1] - starts[0] - 4)
    _expect(bytes(bad), "lz4", rf"corrupt {name}: block 1 of 4 does not decode", framing=False)
    # valid LZ4 data of fewer bytes than the block: named, not padded
    import lz4.block

    short = lz4.block.compress(b"\0" * 999, store_size=False)
    one = struct.pack(">QII", 1000, 1000, len(short)) + short
    _expect(one, "lz4", rf"corrupt {name}: block 1 of 1 decodes to 999 bytes, expected 1000", shape=(250,),
            framing=False)
    # a block stored as it is (compressed size == block size)
    raw = np.arange(250, dtype=np.uint32)
    stored = struct.pack(">QII", 1000, 4096, 1000) + raw.tobytes()
    assert np.array_equal(decode_chunk(stored, encoding="lz4", dtype="uint32", shape=(250,)), raw)


@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_random_mutations_decode_or_raise(encoding):
    """Seeded mutations of valid chunks (bytes flipped, sizes overwritten with edge values, cut, extended),
    decoded here in this process: each is a ChunkError or an array of the asked shape, never a crash."""
    rng = np.random.default_rng(7 if encoding == "bslz4" else 8)
    make = _bslz4_blob if encoding == "bslz4" else _lz4_blob
    layouts = [((H, W), "uint32", 64), ((5, 7), "uint16", 16), ((16, 16), "f4", 512)]  # bslz4: elements; lz4: bytes
    seeds = [(shape, dtype, make(shape=shape, dtype=dtype, block=block, seed=j)[1])
             for j, (shape, dtype, block) in enumerate(layouts)]
    edges = [0, 1, 7, 8, 255, 256, 4096, 2**16, 2**31 - 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1]
    outcomes = {"ok": 0, "error": 0}
    for k in range(1500):
        shape, dtype, blob = seeds[k % len(seeds)]
        buf = bytearray(blob)
        what = rng.integers(0, 5)
        if what == 0:  # header or a block's size field overwritten
            at = int(rng.choice([0, 4, 8, 12, *range(12, min(len(buf) - 4, 80))]))
            width = int(rng.choice([1, 4, 8]))
            value = int(rng.choice(edges)) % (1 << (8 * width))
            buf[at : at + width] = value.to_bytes(width, "big")
        elif what == 1:
            for p in rng.integers(0, len(buf), int(rng.integers(1, 6))):
                buf[p] ^= int(rng.integers(1, 256))
        elif what == 2:
            del buf[int(rng.integers(0, len(buf))) :]
        elif what == 3:
            buf += rng.bytes(int(rng.integers(1, 40)))
        else:
            at = int(rng.integers(0, len(buf)))
            buf[at:at] = rng.bytes(int(rng.integers(1, 9)))
        try:
            out = decode_chunk(bytes(buf), encoding=encoding, dtype=dtype, shape=shape)
        except ChunkError as exc:
            assert "\n" not in str(exc)
            outcomes["error"] += 1
        else:
            assert out.shape == shape and out.dtype == np.dtype(dtype)
            outcomes["ok"] += 1
    assert outcomes["error"] > 500 and outcomes["ok"] > 0, outcomes


# -------------------------------------------------------------------------------------------------
# Several chunks: the thread pool
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoding", ["bslz4", "lz4"])
def test_decode_chunks_threads_equal_serial(encoding):
    make = _bslz4_blob if encoding == "bslz4" else _lz4_blob
    blobs = [make(shape=(64, 96), seed=j)[1] for j in range(9)]
    kwargs = dict(encoding=encoding, dtype="uint32", shape=(64, 96))
    serial = [decode_chunk(b, **kwargs) for b in blobs]
    for threads in (1, 2, 64, None):
        got = decode_chunks(blobs, threads=threads, **kwargs)
        assert len(got) == 9 and all(np.array_equal(a, b) for a, b in zip(got, serial))
    got = decode_chunks((b for b in blobs), threads=2, **kwargs)  # a generator, read while decoding
    assert all(np.array_equal(a, b) for a, b in zip(got, serial))
    bad = list(blobs)
    bad[3] = bad[3][:-1]
    bad[6] = bad[6][:5]
    for threads in (1, 2):
        with pytest.raises(ChunkError, match=r"^chunk 3: truncated") as info:
            decode_chunks(bad, threads=threads, **kwargs)
        assert info.value.chunk == 3
    with pytest.raises(ValueError, match="at least 1"):
        decode_chunks(blobs, threads=0, **kwargs)
    assert decode.resolve_threads(10**6) == decode.default_threads() >= 1


def test_map_chunks_order_and_source_errors():
    """Results come in order; an error while taking an item comes after the results of the items before it."""

    def source():
        yield from range(5)
        raise OSError("item 5 cannot be read")

    for threads in (1, 2):
        got = []
        with pytest.raises(OSError, match="item 5"):
            for value in decode.map_chunks(lambda i, x: (i, x * x), source(), threads=threads, ahead=3):
                got.append(value)
        assert got == [(i, i * i) for i in range(5)]


# -------------------------------------------------------------------------------------------------
# The HDF5 reader's direct chunk reads
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["bslz4", "lz4", "bslz4-small-blocks"])
@pytest.mark.parametrize("dtype", ["uint16", "uint32", "float32"])
def test_reader_direct_matches_hdf5_filter(tmp_path, monkeypatch, kind, dtype):
    data = _frames(10, dtype, seed=3)
    path = tmp_path / "stack.h5"
    spec1 = _write(path, data, 1, kind, "one")
    spec4 = _write(path, data, 4, kind, "four")  # 4 frames a chunk, the last chunk partial
    spec2d = _write(path, data[0], 1, kind, "frame")  # a 2-D dataset in one chunk
    with h5py.File(path, "r") as f:  # what the HDF5 filter makes of the same chunks
        want = {name: f[name][()] for name in ("one", "four", "frame")}
    _forbid_h5py_reads(monkeypatch)
    for spec, name in ((spec1, "one"), (spec4, "four")):
        assert np.array_equal(read_frame(spec), want[name]) and np.array_equal(want[name], data)
        assert np.array_equal(np.stack([fr.data for fr in iter_frames([spec])]), data)
        for threads in (1, 2):
            with reader_for(path, dataset=f"/{name}") as r:
                r.decode_threads = threads
                assert np.array_equal(r.read(0, 3, 9), data[3:9])
                assert np.array_equal(r.read(0, 5, 6), data[5:6])
                assert np.array_equal(np.stack(list(r.frames(0, 2, 10))), data[2:])
    assert np.array_equal(read_frame(spec2d), data[0])


def test_reader_direct_reads_are_lazy(tmp_path, monkeypatch):
    """Streaming reads chunk by chunk: with one decoding thread each chunk when its first frame is asked for;
    with more, two chunks per thread ahead of the consumer, but never more than block_bytes hold."""
    data = _frames(12, np.uint16)
    path = tmp_path / "lazy.h5"
    _write(path, data, 2, "bslz4")
    seen: list[int] = []
    original = H5Reader._raw_chunk

    def counting(self, ds, direct, c, frame):
        seen.append(c)
        return original(self, ds, direct, c, frame)

    monkeypatch.setattr(H5Reader, "_raw_chunk", counting)
    monkeypatch.setattr(H5Reader, "decode_threads", 1)
    frames = iter_frames([str(path)])
    next(frames)
    assert seen == [0]
    next(frames)
    assert seen == [0]
    next(frames)
    assert seen == [0, 1]
    rest = [fr.data for fr in frames]
    assert seen == list(range(6)) and len(rest) == 9
    if decode.default_threads() < 2:
        return
    monkeypatch.setattr(H5Reader, "decode_threads", 2)
    chunk_bytes = 2 * H * W * 2
    for block_bytes, ahead in ((2**20, 4), (2 * chunk_bytes, 2), (chunk_bytes, 1)):
        seen.clear()
        with reader_for(path, block_bytes=block_bytes) as r:
            it = r.frames(0, 3, 12)  # chunks 1…5
            first = next(it)
            assert seen == list(range(1, 1 + ahead))
            assert np.array_equal(np.stack([first, *it]), data[3:])
            assert seen == list(range(1, 6))


def test_reader_chunks_larger_than_a_read(tmp_path, monkeypatch):
    """Chunks of more frames than block_bytes hold are read piece by piece, each chunk decoded once."""
    data = _frames(10, np.uint32)
    path = tmp_path / "big_chunks.h5"
    _write(path, data, 4, "bslz4")
    seen: list[int] = []
    original = H5Reader._raw_chunk

    def counting(self, ds, direct, c, frame):
        seen.append(c)
        return original(self, ds, direct, c, frame)

    monkeypatch.setattr(H5Reader, "_raw_chunk", counting)
    with reader_for(path, block_bytes=2 * H * W * 4) as r:
        frames = list(r.frames(0, 1, 10))
        assert seen == [0, 1, 2]
        assert np.array_equal(np.stack(frames), data[1:])
        frames[0][:] = 0  # the frames are the caller's: the chunk kept for the next read is not changed
        assert np.array_equal(r.read(0, 1, 2)[0], data[1])


def test_reader_read_error_names_its_own_frame(tmp_path, monkeypatch):
    """With chunks read ahead of the consumer, a chunk that cannot be read is reported after the frames before
    it, at its own frame."""
    data = _frames(8, np.uint16)
    path = tmp_path / "ahead.h5"
    spec = _write(path, data, 1, "lz4")
    original = H5Reader._raw_chunk

    def failing(self, ds, direct, c, frame):
        if c == 5:
            raise self._error(OSError("can't read chunk"), f" at frame {frame}", direct.label)
        return original(self, ds, direct, c, frame)

    monkeypatch.setattr(H5Reader, "_raw_chunk", failing)
    for threads in (1, 2):
        monkeypatch.setattr(H5Reader, "decode_threads", threads)
        got = []
        with pytest.raises(FrameError, match=r"::/data: not a readable image at frame 5 \(OSError: can't read"):
            for fr in iter_frames([spec]):
                got.append(fr.data)
        assert np.array_equal(np.stack(got), data[:5])


def test_reader_corrupt_chunk_names_file_dataset_and_frame(tmp_path):
    data = _frames(6, np.uint32)
    path = tmp_path / "bad.h5"
    _write(path, data, 1, "bslz4", "one")
    _write(path, data, 3, "lz4", "three")
    with h5py.File(path, "r") as f:
        one = f["one"].id.get_chunk_info(4)
        three = f["three"].id.get_chunk_info(1)
    raw = bytearray(path.read_bytes())
    raw[one.byte_offset + 8 : one.byte_offset + 12] = (0xFFFFFFFF).to_bytes(4, "big")  # block size
    raw[three.byte_offset : three.byte_offset + 8] = (2**40).to_bytes(8, "big")  # uncompressed size
    path.write_bytes(bytes(raw))
    spec = f"{path}::/one"
    frames = iter_frames([spec])
    assert all(np.array_equal(next(frames).data, data[i]) for i in range(4))
    with pytest.raises(FrameError) as info:
        next(frames)
    msg = str(info.value)
    assert msg.startswith(f"{path}::/one: frame 4: corrupt bitshuffle-LZ4 chunk: its header declares a block size")
    assert "\n" not in msg
    with pytest.raises(FrameError, match=r"::/one: frame 4: corrupt bitshuffle-LZ4 chunk"):
        read_frame(spec)
    with reader_for(path, dataset="/one") as r:
        assert np.array_equal(r.read(0, 0, 4), data[:4])
    msg = str(pytest.raises(FrameError, read_frame, f"{path}::/three").value)
    assert msg.startswith(f"{path}::/three: frame 3 (chunk 1, frames 3…5): corrupt LZ4 chunk: its header declares "
                          "1099511627776 uncompressed bytes, 3×24×40 uint32")
    with reader_for(path, dataset="/three") as r:
        with pytest.raises(FrameError, match=r"frame 4 \(chunk 1, frames 3…5\)"):
            r.read(0, 4, 6)


def test_reader_unwritten_and_unfiltered_chunks(tmp_path, monkeypatch):
    """A chunk never written reads as the fill value; a chunk whose (optional) filter was skipped when it was
    written is read as it is stored; both as the HDF5 filter path reads them."""
    data = _frames(4, np.uint16)
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", shape=(4, H, W), dtype="uint16", chunks=(1, H, W), fillvalue=7,
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        ds[1] = data[1]
        ds.id.write_direct_chunk((2, 0, 0), data[2].tobytes(), filter_mask=1)
        want = ds[()]
    assert (want[0] == 7).all() and (want[3] == 7).all() and np.array_equal(want[1:3], data[1:3])
    _forbid_h5py_reads(monkeypatch)
    assert np.array_equal(read_frame(str(path)), want)
    assert np.array_equal(np.stack([fr.data for fr in iter_frames([str(path)])]), want)
    with h5py.File(path, "a") as f:
        f["data"].id.write_direct_chunk((2, 0, 0), data[2].tobytes()[:-2], filter_mask=1)
    with pytest.raises(FrameError, match=r"::/data: frame 2: an unfiltered chunk of 1918 bytes, expected 1920"):
        read_frame(str(path))


def test_reader_other_layouts_keep_the_hdf5_path(tmp_path):
    data = _frames(4, np.uint16)
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("tiles", data=data, chunks=(1, H // 2, W), **hdf5plugin.Bitshuffle(cname="lz4"))
        f.create_dataset("zstd", data=data, chunks=(1, H, W), **hdf5plugin.Bitshuffle(cname="zstd"))
        f.create_dataset("plain", data=data, chunks=(1, H, W), **hdf5plugin.Bitshuffle(cname="none"))
        f.create_dataset("gzip", data=data, chunks=(1, H, W), compression="gzip")
        f.create_dataset("two", data=data, chunks=(1, H, W), shuffle=True, **hdf5plugin.LZ4())
        f.create_dataset("contiguous", data=data)
    for name in ("tiles", "zstd", "plain", "gzip", "two", "contiguous"):
        with reader_for(path, dataset=f"/{name}") as r:
            assert not r._direct, name
            assert np.array_equal(r.read_all(), data)


def test_reader_refuses_bitshuffle_options_of_another_element_size(tmp_path):
    """The bitshuffle filter takes its element size from the dataset's filter options (and divides by it):
    options that disagree with the dtype are refused before any chunk is read, whatever the path."""
    data = _frames(2, np.uint32)
    for kind, cname in (("lz4", "lz4"), ("none", "none")):
        path = tmp_path / f"opts_{kind}.h5"
        with h5py.File(path, "w") as f:
            ds = f.create_dataset("entry/data/data", data=data, chunks=(1, H, W),
                                  **hdf5plugin.Bitshuffle(cname=cname))
            options = ds.id.get_create_plist().get_filter(0)[2]
        assert options[2] == 4
        stored = struct.pack(f"<{len(options)}I", *options)
        raw = path.read_bytes()
        assert raw.count(stored) == 1
        for size in (0, 2):
            changed = struct.pack(f"<{len(options)}I", *options[:2], size, *options[3:])
            bad = tmp_path / f"opts_{kind}_{size}.h5"
            bad.write_bytes(raw.replace(stored, changed))
            for direct in (True, False):  # also where the HDF5 filter would read it
                with pytest.raises(FrameError, match=rf"::/entry/data/data: corrupt bitshuffle filter options: "
                                   rf"{size}-byte elements, the dataset's uint32 elements have 4 bytes"):
                    r = reader_for(bad)
                    r.direct_reads = direct
                    r.open()


def test_missing_packages_fall_back_to_the_hdf5_filter(tmp_path, monkeypatch):
    data = _frames(3, np.uint32)
    path = tmp_path / "fallback.h5"
    _write(path, data, 1, "bslz4", "bs")
    _write(path, data, 1, "lz4", "lz")
    for module, name in (("bitshuffle", "bs"), ("lz4.block", "lz")):
        with monkeypatch.context() as m:
            m.setitem(sys.modules, module, None)  # import fails
            if module == "lz4.block":
                m.setitem(sys.modules, "lz4", None)
            assert decode.missing("bslz4" if name == "bs" else "lz4") == module.split(".")[0]
            with pytest.warns(RuntimeWarning) as record:
                with reader_for(path, dataset=f"/{name}") as r:
                    assert not r._direct
                    assert np.array_equal(r.read_all(), data)
            (w,) = record
            text = str(w.message)
            assert "\n" not in text and f"{module.split('.')[0]} is not installed" in text
            assert "decoded by the HDF5 filter" in text
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with reader_for(path, dataset="/bs") as r:
            assert r._direct
