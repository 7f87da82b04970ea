"""The per-format readers (gixdrt.io.readers) behind read_frame and iter_frames: one reader per format, header
checks before any pixel data is read, byte order, ranges of frames, and the messages of unusable files."""
from __future__ import annotations

import os
import stat
import struct
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gixdrt.errors import FrameError
from gixdrt.io import count_frames, iter_frames, read_frame, readers
from gixdrt.io.readers import MAX_FRAME_PIXELS, Stack, reader_for

h5py = pytest.importorskip("h5py")
try:
    import fabio
    from fabio.cbfimage import CbfImage
    from fabio.edfimage import EdfImage
except ImportError:
    fabio = None

needs_fabio = pytest.mark.skipif(fabio is None, reason="needs fabio")
H, W = 10, 14


def _frames(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, H, W)) * 1000).astype(dtype)


def _err(fn, *args, **kwargs) -> str:
    with pytest.raises(FrameError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def _stream(spec, **kwargs):
    return [fr.data for fr in iter_frames([str(spec)], **kwargs)]


def _write_edf(path, frames):
    img = EdfImage(data=frames[0])
    for frame in frames[1:]:
        img.append_frame(data=frame)
    img.write(str(path))


def _tiff_ifd_at_end(arr: np.ndarray, *, declared: tuple[int, int] | None = None) -> bytes:
    """A one-page float32 TIFF laid out as PerkinElmer detectors write it: pixels first, the IFD at the end.
    declared: the (H, W) written in the IFD (default: the array's)."""
    h, w = declared or arr.shape
    pixels = np.ascontiguousarray(arr, "<f4").tobytes()
    ifd_offset = 8 + len(pixels)
    tags = [  # tag, type (3 SHORT, 4 LONG), value
        (256, 4, w), (257, 4, h), (258, 3, 32), (259, 3, 1), (262, 3, 1), (273, 4, 8), (277, 3, 1),
        (278, 4, h), (279, 4, len(pixels)), (339, 3, 3),
    ]
    ifd = struct.pack("<H", len(tags))
    for tag, typ, value in tags:
        packed = struct.pack("<HH", value, 0) if typ == 3 else struct.pack("<I", value)
        ifd += struct.pack("<HHI", tag, typ, 1) + packed
    ifd += struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", ifd_offset) + pixels + ifd


@pytest.fixture
def files(tmp_path):
    """One small file of each format: {name: (spec, expected [N, H, W] or [H, W] array)}."""
    out = {}
    a = _frames(3, np.uint16, 1)
    tifffile.imwrite(tmp_path / "stack.tif", a, photometric="minisblack")
    out["tiff"] = (tmp_path / "stack.tif", a)
    b = _frames(4, np.float32, 2)
    np.save(tmp_path / "stack.npy", b)
    out["npy"] = (tmp_path / "stack.npy", b)
    c = _frames(5, np.int32, 3)
    with h5py.File(tmp_path / "scan.h5", "w") as f:
        f.create_dataset("entry/data/data", data=c, chunks=(2, H, W), compression="gzip")
    out["h5"] = (tmp_path / "scan.h5", c)
    if fabio is not None:
        d = _frames(2, np.float32, 4)
        _write_edf(tmp_path / "multi.edf", d)
        out["edf"] = (tmp_path / "multi.edf", d)
        e = _frames(1, np.int32, 5)[0]
        CbfImage(data=e).write(str(tmp_path / "one.cbf"))
        out["cbf"] = (tmp_path / "one.cbf", e)
    return out


# -------------------------------------------------------------------------------------------------
# One reader per format
# -------------------------------------------------------------------------------------------------
def test_reader_for_picks_the_format(files, tmp_path):
    kinds = {"tiff": readers.TiffReader, "npy": readers.NpyReader, "h5": readers.H5Reader,
             "edf": readers.EdfReader, "cbf": readers.CbfReader}
    for name, (path, _) in files.items():
        assert type(reader_for(path)) is kinds[name]
    img = tmp_path / "frame.img"
    img.write_bytes(b"\0" * 16)
    assert type(reader_for(img)) is readers.FabioReader
    msg = _err(reader_for, files["tiff"][0], dataset="/entry/data")
    assert "not an HDF5 file" in msg


def test_stacks_from_headers_without_pixels(files, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", forbidden)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    if fabio is not None:
        monkeypatch.setattr(fabio, "open", forbidden)
    for name, (path, want) in files.items():
        if name == "npy":
            continue  # the .npy map is made when the header has been checked
        with reader_for(path) as r:
            (stack,) = r.stacks
            label = f"{path}::/entry/data/data" if name == "h5" else str(path)
            assert stack == Stack(label, want.shape[0] if want.ndim == 3 else 1, (H, W), want.dtype, want.ndim == 3)
    assert count_frames([str(p) for name, (p, _) in files.items() if name != "npy"]) == 3 + 5 + (3 if fabio else 0)


def test_read_frame_and_iter_frames_agree(files):
    for name, (path, want) in files.items():
        whole = read_frame(path)
        assert whole.dtype == want.dtype and np.array_equal(whole, want), name
        streamed = _stream(path)
        assert np.array_equal(np.stack(streamed), want if want.ndim == 3 else want[None]), name
        with reader_for(path) as r:
            assert np.array_equal(r.read_all(), want)


def test_frame_ranges(files):
    for name, (path, want) in files.items():
        if want.ndim == 2:
            continue
        n = want.shape[0]
        with reader_for(path) as r:
            for start, stop in [(0, n), (1, n), (0, 1), (n - 1, n), (1, max(2, n - 1))]:
                got = list(r.frames(0, start, stop))
                assert len(got) == stop - start
                assert np.array_equal(np.stack(got), want[start:stop]), (name, start, stop)
                assert np.array_equal(r.read(0, start, stop), want[start:stop])
            for bad in [(0, n + 1), (-1, 2), (2, 2), (3, 1)]:
                with pytest.raises(IndexError, match="not a range"):
                    r.frames(0, *bad)


def test_h5_frame_range_reads_chunk_aligned_blocks(tmp_path, monkeypatch):
    data = _frames(16, np.float32, 6)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(4, H, W), compression="gzip")
    reads: list[tuple[int, int]] = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        reads.append((key.start, key.stop))
        return original(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    with reader_for(path) as r:
        got = list(r.frames(0, 5, 13))  # a work unit of frames 5…12, streamed
        assert np.array_equal(np.stack(got), data[5:13])
        assert reads == [(5, 8), (8, 12), (12, 13)]  # never a chunk row outside the range, each read once
        reads.clear()
        assert np.array_equal(r.read(0, 5, 13), data[5:13])  # the same range as one array: one read
        assert reads == [(5, 13)]


def test_eiger_master_stacks_and_read_all(tmp_path):
    for k in (1, 2):
        with h5py.File(tmp_path / f"m_data_{k:06d}.h5", "w") as f:
            f.create_dataset("entry/data/data", data=np.full((2, H, W), k, np.uint32))
    with h5py.File(tmp_path / "m_master.h5", "w") as f:
        for k in (1, 2):
            f[f"entry/data/data_{k:06d}"] = h5py.ExternalLink(f"m_data_{k:06d}.h5", "/entry/data/data")
    master = tmp_path / "m_master.h5"
    with reader_for(master) as r:
        assert [s.label for s in r.stacks] == [f"{master}::/entry/data/data_{k:06d}" for k in (1, 2)]
        assert [s.n for s in r.stacks] == [2, 2]
        assert list(r.read(1)[:, 0, 0]) == [2, 2]
    assert list(read_frame(master)[:, 0, 0]) == [1, 1, 2, 2]
    (tmp_path / "m_data_000002.h5").unlink()
    msg = _err(read_frame, master)
    assert str(master) in msg and "cannot open dataset /entry/data/data_000002" in msg


# -------------------------------------------------------------------------------------------------
# Declared shapes: expect_shape and the upper bound, before any pixel data is read
# -------------------------------------------------------------------------------------------------
def _forbid_pixel_reads(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", forbidden)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", forbidden)
    if fabio is not None:
        monkeypatch.setattr(fabio, "open", forbidden)


def test_expect_shape_checked_against_headers(files, monkeypatch):
    _forbid_pixel_reads(monkeypatch)
    for name, (path, want) in files.items():
        for reader in (read_frame, _stream):
            msg = _err(reader, path, expect_shape=(H + 1, W))
            assert str(path) in msg and str((H, W)) in msg and str((H + 1, W)) in msg, (name, msg)
            assert "does not match the expected" in msg


def _huge_files(tmp_path) -> dict[str, Path]:
    """Small files whose headers declare frames of 40000 × 50000 pixels (2 × 10^9 > 2^28)."""
    h, w = 40000, 50000
    out = {}
    out["tiff"] = tmp_path / "huge.tif"
    out["tiff"].write_bytes(_tiff_ifd_at_end(np.zeros((4, 4), np.float32), declared=(h, w)))
    out["npy"] = tmp_path / "huge.npy"
    with open(out["npy"], "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (2, h, w)})
        f.write(b"\0" * 64)
    out["h5"] = tmp_path / "huge.h5"
    with h5py.File(out["h5"], "w") as f:  # chunked, nothing written: a tiny file
        f.create_dataset("entry/data/data", shape=(3, h, w), dtype=np.float32, chunks=(1, 256, 256))
    out["edf"] = tmp_path / "huge.edf"
    header = (f"{{\nHeaderID = EH:000001:000000:000000 ;\nImage = 1 ;\nByteOrder = LowByteFirst ;\n"
              f"DataType = FloatValue ;\nDim_1 = {w} ;\nDim_2 = {h} ;\nSize = {4 * h * w} ;\n").encode()
    out["edf"].write_bytes(header.ljust(510) + b"}\n" + b"\0" * 64)
    if fabio is not None:
        small = tmp_path / "small.cbf"
        CbfImage(data=np.zeros((4, 4), np.int32)).write(str(small))
        data = small.read_bytes()
        data = data.replace(b"Fastest-Dimension: 4", f"Fastest-Dimension: {w}".encode())
        out["cbf"] = tmp_path / "huge.cbf"
        out["cbf"].write_bytes(data.replace(b"Second-Dimension: 4", f"Second-Dimension: {h}".encode()))
    return out


def test_huge_declared_frames_refused_before_allocation(tmp_path, monkeypatch):
    _forbid_pixel_reads(monkeypatch)
    for name, path in _huge_files(tmp_path).items():
        for reader in (read_frame, _stream, lambda p: count_frames([str(p)])):
            tracemalloc.start()
            try:
                msg = _err(reader, path)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            assert str(path) in msg, msg
            assert "40000×50000 = 2000000000 pixels" in msg, (name, msg)
            assert f"limit of {MAX_FRAME_PIXELS} (2^28)" in msg, (name, msg)
            assert peak < 32 * 2**20, (name, peak)  # nothing near the 7.5 GiB one frame would take


def test_frames_at_the_bound_pass_the_header_check(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "MAX_FRAME_PIXELS", H * W)
    np.save(tmp_path / "ok.npy", _frames(2, np.float32))
    assert read_frame(tmp_path / "ok.npy").shape == (2, H, W)
    monkeypatch.setattr(readers, "MAX_FRAME_PIXELS", H * W - 1)
    msg = _err(read_frame, tmp_path / "ok.npy")
    assert f"{H}×{W} = {H * W} pixels" in msg
    assert read_frame(tmp_path / "ok.npy", expect_shape=(H, W)).shape == (2, H, W)  # expect_shape replaces the bound


# -------------------------------------------------------------------------------------------------
# Byte order
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [">f4", ">u2", ">i4", ">f8"])
def test_big_endian_npy_and_h5_come_back_native(tmp_path, dtype):
    data = _frames(3, dtype, 7)
    np.save(tmp_path / "be.npy", data)
    np.save(tmp_path / "be2d.npy", data[0])
    with h5py.File(tmp_path / "be.h5", "w") as f:
        f.create_dataset("stack", data=data, chunks=(1, H, W))
        f.create_dataset("frame", data=data[0])
        assert f["stack"].dtype == np.dtype(dtype)
    native = np.dtype(dtype).newbyteorder("=")
    for spec, want in [(tmp_path / "be.npy", data), (tmp_path / "be2d.npy", data[0]),
                       (f"{tmp_path / 'be.h5'}::/stack", data), (f"{tmp_path / 'be.h5'}::/frame", data[0])]:
        got = read_frame(spec)
        assert got.dtype == native and got.dtype.isnative and np.array_equal(got, want), spec
        for frame in _stream(spec):
            assert frame.dtype == native and frame.flags.c_contiguous
        if want.ndim == 3:
            (group,) = [fr.data for fr in iter_frames([str(spec)], sum_n=3)]
            assert group.dtype == native and np.array_equal(group, want)


def test_big_endian_tiff_and_fortran_npy(tmp_path):
    data = _frames(2, np.float32, 8)
    tifffile.imwrite(tmp_path / "be.tif", data, byteorder=">", photometric="minisblack")
    got = read_frame(tmp_path / "be.tif")
    assert got.dtype.isnative and np.array_equal(got, data)
    np.save(tmp_path / "f.npy", np.asfortranarray(data))
    frames = _stream(tmp_path / "f.npy")
    assert all(f.flags.c_contiguous for f in frames) and np.array_equal(np.stack(frames), data)
    whole = read_frame(tmp_path / "f.npy")
    assert whole.flags.c_contiguous and np.array_equal(whole, data)


# -------------------------------------------------------------------------------------------------
# Unusable paths: one-line FrameErrors naming the file and the problem, before any input is read
# -------------------------------------------------------------------------------------------------
def _both(spec) -> list[str]:
    """The messages of read_frame, iter_frames (which checks every path when called) and count_frames."""
    return [_err(read_frame, spec), _err(iter_frames, [str(spec)]), _err(count_frames, [str(spec)])]


def _content(spec) -> list[str]:
    """The messages of read_frame and of streaming (a file's content is checked when it is reached)."""
    return [_err(read_frame, spec), _err(_stream, spec)]


def test_symlink_loop(tmp_path):
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    a.symlink_to(b.name)
    b.symlink_to(a.name)
    for msg in _both(a):
        assert str(a) in msg and "symbolic link loop" in msg and "not found" not in msg


def test_dangling_symlink(tmp_path):
    link = tmp_path / "frame.tif"
    link.symlink_to("moved_away.tif")
    for msg in _both(link):
        assert str(link) in msg and "dangling symbolic link" in msg and "moved_away.tif" in msg


def test_fifo_is_not_opened(tmp_path):
    fifo = tmp_path / "pipe.tif"
    os.mkfifo(fifo)
    t0 = time.monotonic()
    for msg in _both(fifo):
        assert str(fifo) in msg and "not a regular file" in msg and "FIFO" in msg
    assert time.monotonic() - t0 < 5  # opening a FIFO would block


def test_device_and_directory(tmp_path):
    dev = tmp_path / "null.npy"
    dev.symlink_to("/dev/null")
    for msg in _both(dev):
        assert str(dev) in msg and "not a regular file: a character device" in msg
    folder = tmp_path / "frames.tif"
    folder.mkdir()
    for msg in _both(folder):
        assert str(folder) in msg and "is a directory" in msg


def test_unreadable_file(tmp_path, monkeypatch):
    path = tmp_path / "secret.tif"
    tifffile.imwrite(path, _frames(1, np.uint16)[0])
    if os.geteuid() != 0:  # root reads anything: the check is then simulated below
        path.chmod(0)
        for msg in _both(path):
            assert str(path) in msg and "permission denied" in msg
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    monkeypatch.setattr(readers.os, "access", lambda *args, **kwargs: False)
    for msg in _both(path):
        assert str(path) in msg and "permission denied" in msg


def test_permission_error_while_opening(tmp_path, monkeypatch):
    path = tmp_path / "f.tif"
    tifffile.imwrite(path, _frames(1, np.uint16)[0])

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tifffile.TiffFile, "__init__", denied)
    msg = _err(read_frame, path)
    assert str(path) in msg and "permission denied" in msg


# -------------------------------------------------------------------------------------------------
# Truncated and corrupt files
# -------------------------------------------------------------------------------------------------
def test_truncated_perkinelmer_layout_tiff(tmp_path):
    frame = _frames(1, np.float32, 9)[0]
    whole = _tiff_ifd_at_end(frame)
    path = tmp_path / "pe.tif"
    path.write_bytes(whole)
    assert np.array_equal(read_frame(path), frame)  # the layout itself reads
    path.write_bytes(whole[: len(whole) // 2])
    for msg in _content(path):
        assert str(path) in msg and "truncated TIFF" in msg and "past the end of the file" in msg
        assert "no pages" not in msg


@pytest.mark.published
def test_truncated_published_perkinelmer_frame(published_assets, tmp_path):
    data = Path(published_assets.frame).read_bytes()
    path = tmp_path / "cut.tif"
    path.write_bytes(data[: len(data) // 2])
    msg = _err(read_frame, path)
    assert str(path) in msg and "truncated TIFF" in msg and "16777224" in msg and str(len(data) // 2) in msg


def test_truncated_tiff_pixel_data(tmp_path):
    path = tmp_path / "one.tif"
    tifffile.imwrite(path, _frames(1, np.uint16)[0])  # the image header first, then the pixels
    cut = tmp_path / "cut.tif"
    cut.write_bytes(path.read_bytes()[:-10])
    for msg in _content(cut):
        assert str(cut) in msg and "truncated TIFF: the pixel data of page 0 end at byte" in msg


def test_truncated_multipage_tiff_is_not_read_as_fewer_pages(tmp_path):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, _frames(3, np.uint16), photometric="minisblack")
    data = path.read_bytes()
    with tifffile.TiffFile(path) as tif:
        second_ifd = tif.pages[1].offset  # tifffile writes the later pages' image headers after all pixels
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: second_ifd - 4])  # tifffile alone sees one page here
    for msg in _content(cut) + [_err(count_frames, [str(cut)])]:
        assert str(cut) in msg and f"truncated TIFF: the image header (IFD) of page 1 at byte {second_ifd}" in msg


def test_truncated_npy(tmp_path):
    path = tmp_path / "s.npy"
    np.save(path, _frames(3, np.float32))
    path.write_bytes(path.read_bytes()[:-100])
    for msg in _content(path):
        assert str(path) in msg and "truncated .npy" in msg and "(3, 10, 14)" in msg


@needs_fabio
def test_truncated_and_corrupt_cbf(tmp_path):
    path = tmp_path / "f.cbf"
    CbfImage(data=_frames(1, np.int32)[0]).write(str(path))
    data = path.read_bytes()
    cut = tmp_path / "cut.cbf"
    cut.write_bytes(data[: len(data) - 50])
    for msg in _content(cut):
        assert str(cut) in msg and "truncated CBF" in msg and "AssertionError" not in msg
    start = data.index(b"\x0c\x1a\x04\xd5") + 4
    flipped = bytearray(data)
    flipped[start + 20] ^= 0x55
    bad = tmp_path / "bad.cbf"
    bad.write_bytes(bytes(flipped))
    assert "Content-MD5" in _err(read_frame, bad)
    no_start = tmp_path / "nostart.cbf"
    no_start.write_bytes(data.replace(b"\x0c\x1a\x04\xd5", b"...."))  # fabio would read forever
    assert "no start-of-data mark" in _err(read_frame, no_start)


@needs_fabio
def test_truncated_and_corrupt_edf(tmp_path):
    path = tmp_path / "m.edf"
    _write_edf(path, _frames(2, np.float32))
    data = path.read_bytes()
    cut = tmp_path / "cut.edf"
    cut.write_bytes(data[:-7])
    for msg in _content(cut):
        assert str(cut) in msg and "truncated EDF: the data of frame 1" in msg
    odd = tmp_path / "odd.edf"
    odd.write_bytes(data.replace(b"Dim_1 = ", b"Dim_4294967296 = ", 1))  # fabio spins for minutes on this
    t0 = time.monotonic()
    msg = _err(read_frame, odd)
    assert "not a 2-D frame" in msg and time.monotonic() - t0 < 5
    one = tmp_path / "one.edf"
    _write_edf(one, _frames(1, np.float32))
    head = one.read_bytes()[:512]
    assert b"Size = 560 " in head
    short = tmp_path / "short.edf"  # a data block declared (and stored) smaller than its pixels: fabio pads zeros
    short.write_bytes(head.replace(b"Size = 560 ", b"Size = 56  ") + b"\0" * 56)
    for msg in _content(short):
        assert str(short) in msg and "corrupt EDF: frame 0 declares 56 bytes of data" in msg and "need 560" in msg


@needs_fabio
def test_fabio_count_reads_headers_only(files, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(fabio, "open", forbidden)
    assert count_frames([str(files["edf"][0]), str(files["cbf"][0])]) == 3


def test_corrupt_h5_chunk_names_frame(tmp_path):
    data = _frames(3, np.uint16)
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=data, chunks=(1, H, W), compression="gzip")
        info = ds.id.get_chunk_info(1)
    raw = bytearray(path.read_bytes())
    for k in range(8):
        raw[info.byte_offset + 4 + k] ^= 0xFF
    path.write_bytes(bytes(raw))
    frames = iter_frames([str(path)])
    assert np.array_equal(next(frames).data, data[0])
    with pytest.raises(FrameError) as info_:
        next(frames)
    msg = str(info_.value)
    assert f"{path}::/data" in msg and "at frame 1" in msg and "hdf5plugin" not in msg


def test_h5_contiguous_dataset_declaring_too_little_storage(tmp_path):
    """A header edit that shrinks a contiguous dataset's storage size makes HDF5 return undefined pixels past it
    (and different ones for a whole read and a read per frame): refused at open, naming the sizes."""
    import h5py

    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("data", data=np.arange(3 * 8 * 12, dtype=np.uint16).reshape(3, 8, 12))
        offset, size = ds.id.get_offset(), ds.id.get_storage_size()
    raw = path.read_bytes()
    field = struct.pack("<QQ", offset, size)
    assert raw.count(field) == 1  # the layout message: address and size of the contiguous storage
    path.write_bytes(raw.replace(field, struct.pack("<QQ", offset, size - 64)))
    with pytest.raises(FrameError, match=r"c.h5::/data: corrupt dataset: its header declares 512 bytes of storage, "
                                         r"its 3×8×12 uint16 data need 576"):
        read_frame(path)
