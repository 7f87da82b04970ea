"""Streaming frame input (gixdrt.io.sources): order, labels, summing across files, bounded reads, errors."""
from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import tifffile

from gixdrt.errors import FrameError
from gixdrt.io import sources
from gixdrt.io.sources import Frame, count_frames, iter_frames

h5py = pytest.importorskip("h5py")
try:
    import hdf5plugin
except ImportError:  # plain HDF5 then; the bitshuffle path is what Eiger files need
    hdf5plugin = None
try:
    import fabio
except ImportError:
    fabio = None

H, W = 12, 16


def _frames(n, dtype, seed):
    rng = np.random.default_rng(seed)
    return (rng.random((n, H, W)) * 1000).astype(dtype)


def _h5_compression():
    return dict(hdf5plugin.Bitshuffle(cname="lz4")) if hdf5plugin is not None else {"compression": "gzip"}


@pytest.fixture
def mixed(tmp_path):
    """A 2-D tif, a 3-page tif, a 3-D npy and a compressed 3-D HDF5 dataset, with the expected frames."""
    a = _frames(1, np.uint16, 0)[0]
    b = _frames(3, np.uint16, 1)
    c = _frames(2, np.float32, 2)
    d = _frames(4, np.uint32, 3)
    tifffile.imwrite(tmp_path / "a.tif", a)
    tifffile.imwrite(tmp_path / "b.tif", b, photometric="minisblack")
    np.save(tmp_path / "c.npy", c)
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f.create_dataset("entry/data/data", data=d, chunks=(2, H, W), **_h5_compression())
        f.create_dataset("entry/instrument/mask", data=np.zeros((H, W), np.uint8))
    inputs = [str(tmp_path / n) for n in ("a.tif", "b.tif", "c.npy")] + [f"{tmp_path / 'd.h5'}::/entry/data/data"]
    labels = [inputs[0]] + [f"{inputs[1]}[{i}]" for i in range(3)] + [f"{inputs[2]}[{i}]" for i in range(2)]
    labels += [f"{inputs[3]}[{i}]" for i in range(4)]
    expected = [a, *b, *c, *d]
    return inputs, labels, expected


def test_order_indices_labels(mixed):
    inputs, labels, expected = mixed
    got = list(iter_frames(inputs))
    assert all(isinstance(fr, Frame) for fr in got)
    assert [fr.index for fr in got] == list(range(10))
    assert [fr.source for fr in got] == labels
    for fr, want in zip(got, expected):
        assert fr.data.shape == (H, W) and fr.data.dtype == want.dtype
        assert np.array_equal(fr.data, want)
    assert count_frames(inputs) == 10


def test_h5_default_dataset_without_path(mixed, tmp_path):
    # no ::/path: the NeXus default /entry/data/data is taken although the file holds a 2-D mask too
    got = list(iter_frames([str(tmp_path / "d.h5")]))
    assert [fr.source for fr in got] == [f"{tmp_path / 'd.h5'}::/entry/data/data[{i}]" for i in range(4)]
    assert np.array_equal(np.stack([fr.data for fr in got]), np.stack(mixed[2][6:]))


def test_sum_across_files(mixed):
    inputs, _, expected = mixed
    with pytest.warns(UserWarning, match=r"1 frame\(s\) left over .*d\.h5::/entry/data/data\[3\]"):
        got = list(iter_frames(inputs, sum_n=3))
    a, b, c, d = inputs
    assert [fr.index for fr in got] == [0, 1, 2]
    assert [fr.source for fr in got] == [f"{a}+{b}[0:2]", f"{b}[2]+{c}[0:2]", f"{d}[0:3]"]
    for k, fr in enumerate(got):
        want = np.stack(expected[3 * k : 3 * k + 3])
        assert fr.data.shape == (3, H, W)
        assert np.array_equal(fr.data, want)  # same values; a uint16 + float32 group is float32
    assert got[0].data.dtype == np.uint16 and got[1].data.dtype == np.float32 and got[2].data.dtype == np.uint32
    assert count_frames(inputs, 3) == 3


def test_sum_exact_groups_no_warning(mixed):
    inputs = mixed[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = list(iter_frames(inputs, sum_n=5))
        a, b, c, d = inputs
        assert [fr.source for fr in got] == [f"{a}+{b}[0:3]+{c}[0]", f"{c}[1]+{d}[0:4]"]
        assert next(iter_frames(inputs, sum_n=10)).data.shape == (10, H, W)
    with pytest.warns(UserWarning, match="10 frame"):
        assert list(iter_frames(inputs, sum_n=11)) == []


def test_count_matches_iteration(mixed):
    inputs = mixed[0]
    for n in (1, 2, 3, 4, 7, 10, 11):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert count_frames(inputs, n) == len(list(iter_frames(inputs, sum_n=n))) == 10 // n


def test_count_reads_no_pixels(mixed, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("pixel data read")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", forbidden)
    monkeypatch.setattr(h5py.Dataset, "__getitem__", forbidden)
    assert count_frames(mixed[0]) == 10


def test_long_group_label_is_shortened(tmp_path):
    names = [str(tmp_path / f"f_{i}.tif") for i in range(6)]
    for i, name in enumerate(names):
        tifffile.imwrite(name, np.full((H, W), i, np.uint16))
    (fr,) = iter_frames(names, sum_n=6)
    assert fr.source == f"{names[0]}+...+{names[5]} (6 pieces)"
    assert np.array_equal(fr.data[:, 0, 0], np.arange(6))


def test_glob_expansion(tmp_path):
    for i in (10, 2, 1):
        tifffile.imwrite(tmp_path / f"img_{i}.tif", np.full((H, W), i, np.uint16))
    got = list(iter_frames([str(tmp_path / "img_*.tif")]))
    # natural order: img_2 before img_10
    assert [fr.source for fr in got] == [str(tmp_path / f"img_{i}.tif") for i in (1, 2, 10)]
    assert [int(fr.data[0, 0]) for fr in got] == [1, 2, 10]
    assert count_frames([str(tmp_path / "img_?.tif")]) == 2

    # a name that exists literally is not a pattern
    tifffile.imwrite(tmp_path / "[x].tif", np.zeros((H, W), np.uint16))
    assert [fr.source for fr in iter_frames([str(tmp_path / "[x].tif")])] == [str(tmp_path / "[x].tif")]

    pattern = str(tmp_path / "nothing_*.tif")
    with pytest.raises(FrameError, match="no file matches") as info:
        iter_frames([str(tmp_path / "img_1.tif"), pattern])
    assert pattern in str(info.value)


def test_glob_with_h5_dataset(tmp_path):
    for i in range(2):
        with h5py.File(tmp_path / f"scan_{i}.h5", "w") as f:
            f.create_dataset("a/b", data=np.full((2, H, W), i, np.int32))
            f.create_dataset("a/c", data=np.zeros((2, H, W), np.int32))
    got = list(iter_frames([f"{tmp_path}/scan_*.h5::a/b"], sum_n=2))
    assert [fr.source for fr in got] == [f"{tmp_path}/scan_{i}.h5::/a/b[0:2]" for i in range(2)]
    assert [int(fr.data.sum()) for fr in got] == [0, 2 * H * W]


def test_h5_reads_chunk_blocks(tmp_path, monkeypatch):
    n, chunk = 40, 4
    data = _frames(n, np.float32, 5)
    path = tmp_path / "big.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=data, chunks=(chunk, H, W), compression="gzip")  # read by h5py in blocks
        f.create_dataset("contiguous", data=data)
    reads: list[int] = []
    original = h5py.Dataset.__getitem__

    def counting(self, key):
        out = original(self, key)
        reads.append(out.shape[0] if out.ndim == 3 else 1)
        return out

    monkeypatch.setattr(h5py.Dataset, "__getitem__", counting)
    it = iter_frames([f"{path}::/data"])
    first = next(it)
    assert reads == [chunk]  # lazy: only the first chunk row was read
    rest = list(it)
    assert np.array_equal(np.stack([first.data, *[fr.data for fr in rest]]), data)
    assert reads == [chunk] * (n // chunk)

    reads.clear()
    assert len(list(iter_frames([f"{path}::/contiguous"]))) == n
    assert reads == [1] * n  # unchunked: frame by frame

    reads.clear()
    monkeypatch.setattr(sources, "_H5_BLOCK_BYTES", 2 * H * W * 4)  # frames too large for a whole chunk row
    assert len(list(iter_frames([f"{path}::/data"]))) == n
    assert max(reads) == 2 and sum(reads) == n


def test_tiff_reads_page_by_page(tmp_path, monkeypatch):
    stack = _frames(5, np.uint16, 6)
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, stack, photometric="minisblack")

    def forbidden(*args, **kwargs):
        raise AssertionError("whole TIFF stack read")

    monkeypatch.setattr(tifffile, "imread", forbidden)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", forbidden)
    pages: list[int] = []
    original = tifffile.TiffPage.asarray

    def counting(self, *args, **kwargs):
        pages.append(self.index)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(tifffile.TiffPage, "asarray", counting)
    got = list(itertools.islice(iter_frames([str(path)]), 2))
    assert pages == [0, 1] and np.array_equal(got[1].data, stack[1])


def test_npy_is_memory_mapped(tmp_path, monkeypatch):
    stack = _frames(3, np.float64, 7)
    path = tmp_path / "s.npy"
    np.save(path, stack)
    modes = []
    original = np.load

    def spy(*args, **kwargs):
        modes.append(kwargs.get("mmap_mode"))
        return original(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    got = list(iter_frames([str(path)]))
    assert modes == ["r"]
    assert all(type(fr.data) is np.ndarray for fr in got)  # copies, not views of the map
    assert np.array_equal(np.stack([fr.data for fr in got]), stack)


def test_eiger_master_links(tmp_path):
    for k in (1, 2):
        with h5py.File(tmp_path / f"m_data_{k:06d}.h5", "w") as f:
            f.create_dataset("entry/data/data", data=np.full((2, H, W), k, np.uint32), **_h5_compression())
    with h5py.File(tmp_path / "m_master.h5", "w") as f:
        f.create_dataset("entry/instrument/detector/detectorSpecific/pixel_mask", data=np.zeros((H, W), np.uint32))
        for k in (2, 1):
            f[f"entry/data/data_{k:06d}"] = h5py.ExternalLink(f"m_data_{k:06d}.h5", "/entry/data/data")
    master = str(tmp_path / "m_master.h5")
    got = list(iter_frames([master]))
    assert [fr.source for fr in got] == [f"{master}::/entry/data/data_{k:06d}[{i}]" for k in (1, 2) for i in (0, 1)]
    assert [int(fr.data[0, 0]) for fr in got] == [1, 1, 2, 2]
    assert count_frames([master], 2) == 2


@pytest.mark.skipif(fabio is None, reason="needs fabio")
def test_fabio_edf_single_and_multi(tmp_path):
    from fabio.edfimage import EdfImage

    one, multi = _frames(1, np.float32, 8)[0], _frames(3, np.float32, 9)
    EdfImage(data=one).write(str(tmp_path / "one.edf"))
    img = EdfImage(data=multi[0])
    for frame in multi[1:]:
        img.append_frame(data=frame)
    img.write(str(tmp_path / "multi.edf"))
    inputs = [str(tmp_path / "one.edf"), str(tmp_path / "multi.edf")]
    got = list(iter_frames(inputs))
    assert [fr.source for fr in got] == [inputs[0]] + [f"{inputs[1]}[{i}]" for i in range(3)]
    assert np.array_equal(np.stack([fr.data for fr in got]), np.stack([one, *multi]))
    assert count_frames(inputs, 2) == 2


# -------------------------------------------------------------------------------------------------
# Errors
# -------------------------------------------------------------------------------------------------
def test_expect_shape_mismatch_names_file_and_shapes(mixed, tmp_path):
    inputs = mixed[0]
    np.save(tmp_path / "wrong.npy", np.zeros((2, H + 1, W), np.float32))
    assert len(list(iter_frames(inputs, expect_shape=(H, W)))) == 10
    it = iter_frames([inputs[0], str(tmp_path / "wrong.npy")], expect_shape=(H, W))
    assert next(it).index == 0
    with pytest.raises(FrameError) as info:
        next(it)
    msg = str(info.value)
    assert f"{tmp_path / 'wrong.npy'}[0]" in msg and str((H + 1, W)) in msg and str((H, W)) in msg


def test_sum_group_shape_mismatch(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.zeros((H, W), np.uint16))
    tifffile.imwrite(tmp_path / "b.tif", np.zeros((H, W + 2), np.uint16))
    with pytest.raises(FrameError, match=r"b\.tif.*\(12, 18\).*\(12, 16\)"):
        list(iter_frames([str(tmp_path / "a.tif"), str(tmp_path / "b.tif")], sum_n=2))


def test_errors_before_reading(tmp_path, mixed):
    missing = str(tmp_path / "missing.tif")
    # every input is checked when iter_frames is called, before the first frame is read
    with pytest.raises(FrameError, match="not found") as info:
        iter_frames([mixed[0][0], missing])
    assert missing in str(info.value)
    with pytest.raises(FrameError, match="not found"):
        count_frames([missing])
    odd = tmp_path / "x.jpg"
    odd.write_bytes(b"\xff" * 10)
    with pytest.raises(FrameError, match="unknown frame format"):
        iter_frames([str(odd)])
    with pytest.raises(FrameError, match="not an HDF5 file"):
        iter_frames([f"{mixed[0][0]}::/data"])
    with pytest.raises(FrameError, match="no input"):
        iter_frames([])
    with pytest.raises(ValueError, match="sum_n"):
        iter_frames(mixed[0], sum_n=0)


def _first_error(spec) -> str:
    with pytest.raises(FrameError) as info:
        list(iter_frames([spec]))
    return str(info.value)


def test_read_errors_name_file_and_problem(tmp_path):
    bad = tmp_path / "complex.npy"
    np.save(bad, np.zeros((2, H, W), np.complex64))
    msg = _first_error(str(bad))
    assert str(bad) in msg and "dtype" in msg and "complex64" in msg

    empty = tmp_path / "empty.npy"
    np.save(empty, np.zeros((0, H, W), np.float32))
    msg = _first_error(str(empty))
    assert str(empty) in msg and "no pixels" in msg

    text = tmp_path / "notes.tif"
    text.write_text("not a tiff\n" * 10)
    msg = _first_error(str(text))
    assert str(text) in msg and "not a readable image" in msg

    rgb = tmp_path / "photo.tif"
    tifffile.imwrite(rgb, np.zeros((H, W, 3), np.uint8), photometric="rgb")
    assert "colour" in _first_error(str(rgb))

    h5 = tmp_path / "e.h5"
    with h5py.File(h5, "w") as f:
        f.create_dataset("empty", shape=(0, H, W), dtype=np.uint16)
        f.create_dataset("one", data=np.zeros((2, H, W), np.float32))
        f.create_dataset("two", data=np.zeros((2, H, W), np.float32))
        f.create_dataset("bool", data=np.zeros((2, H, W), bool))
    msg = _first_error(f"{h5}::/empty")
    assert str(h5) in msg and "empty dataset /empty" in msg
    msg = _first_error(str(h5))
    assert "name the dataset" in msg and "one" in msg and "two" in msg
    assert "no dataset" in _first_error(f"{h5}::/nothing")
    assert "bool" in _first_error(f"{h5}::/bool")


def test_corrupt_frame_in_h5_names_file(tmp_path, monkeypatch):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("data", data=np.zeros((3, H, W), np.uint16))

    def broken(self, key):
        raise OSError("Can't synchronously read data (can't open directory: filter missing)")

    monkeypatch.setattr(h5py.Dataset, "__getitem__", broken)
    msg = _first_error(str(path))
    assert str(path) in msg and "not a readable image" in msg and "hdf5plugin" in msg
