"""Frame readers, image writers and the published-asset cache."""
from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import tifffile

import gixdrt.io.assets as assets_mod
from gixdrt.errors import AssetError, FrameError
from gixdrt.io import fetch_published, read_frame, write_image


def _frame(shape=(24, 40), dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(dtype)


# -------------------------------------------------------------------------------------------------
# read_frame
# -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.uint16, np.int32])
def test_read_tif(tmp_path, dtype):
    img = _frame(dtype=dtype)
    p = tmp_path / "f.tif"
    tifffile.imwrite(p, img)
    got = read_frame(p)
    assert got.dtype == img.dtype and got.shape == img.shape
    assert np.array_equal(got, img)
    assert np.array_equal(read_frame(str(p)), img)  # str paths too


def test_read_tiff_stack(tmp_path):
    stack = _frame((5, 24, 40), np.uint16)
    p = tmp_path / "stack.TIFF"
    tifffile.imwrite(p, stack)
    got = read_frame(p)
    assert got.shape == (5, 24, 40) and np.array_equal(got, stack)


@pytest.mark.parametrize("dtype", [np.float64, np.uint32, np.int16])
def test_read_npy(tmp_path, dtype):
    img = _frame(dtype=dtype)
    p = tmp_path / "f.npy"
    np.save(p, img)
    got = read_frame(p)
    assert got.dtype == img.dtype and np.array_equal(got, img)


def _err(spec) -> str:
    with pytest.raises(FrameError) as info:
        read_frame(spec)
    return str(info.value)


def test_read_errors_name_file_and_problem(tmp_path):
    missing = tmp_path / "missing.tif"
    msg = _err(missing)
    assert str(missing) in msg and "not found" in msg

    msg = _err(tmp_path)
    assert str(tmp_path) in msg and "directory" in msg

    empty = tmp_path / "empty.tif"
    empty.write_bytes(b"")
    msg = _err(empty)
    assert str(empty) in msg and "empty" in msg

    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n" * 20)
    msg = _err(text)
    assert str(text) in msg and "not a readable image" in msg

    text_npy = tmp_path / "notes.npy"
    text_npy.write_text("this is not an array\n")
    msg = _err(text_npy)
    assert str(text_npy) in msg and "not a readable image" in msg

    odd = tmp_path / "frame.xyz"
    odd.write_bytes(b"\x00" * 64)
    msg = _err(odd)
    assert str(odd) in msg and "unknown frame format" in msg and ".xyz" in msg


@pytest.mark.parametrize("dtype", [np.complex64, np.bool_])
def test_read_wrong_dtype(tmp_path, dtype):
    p = tmp_path / "bad.npy"
    np.save(p, np.zeros((8, 8), dtype))
    msg = _err(p)
    assert str(p) in msg and "dtype" in msg and np.dtype(dtype).name in msg


def test_read_rgb_tif(tmp_path):
    p = tmp_path / "photo.tif"
    tifffile.imwrite(p, np.zeros((32, 48, 3), np.uint8), photometric="rgb")
    msg = _err(p)
    assert str(p) in msg and "colour" in msg


@pytest.mark.parametrize("shape", [(100,), (2, 3, 4, 5)])
def test_read_wrong_ndim(tmp_path, shape):
    p = tmp_path / "line.npy"
    np.save(p, np.zeros(shape, np.float32))
    msg = _err(p)
    assert str(p) in msg and "2-D" in msg and str(shape) in msg


def test_read_h5(tmp_path):
    h5py = pytest.importorskip("h5py")
    img = _frame()
    p = tmp_path / "data.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("entry/data", data=img)
        f.create_dataset("entry/other", data=img[:5])
    assert np.array_equal(read_frame(f"{p}::/entry/data"), img)
    msg = _err(f"{p}::/entry/nothing")
    assert str(p) in msg and "no dataset" in msg
    msg = _err(p)  # two candidates: the dataset must be named
    assert "name the dataset" in msg


# -------------------------------------------------------------------------------------------------
# write_image
# -------------------------------------------------------------------------------------------------
def _no_part_files(d: Path):
    assert not [p.name for p in d.iterdir() if ".part" in p.name]


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".tiff"])
def test_write_round_trip(tmp_path, suffix):
    img = _frame((20, 30))
    p = write_image(tmp_path / "sub" / f"out{suffix}", img)
    assert p == tmp_path / "sub" / f"out{suffix}" and p.is_file()
    got = read_frame(p)
    assert got.dtype == np.float32 and np.array_equal(got, img)
    _no_part_files(p.parent)


def test_write_png16(tmp_path):
    img = np.linspace(-5.0, 10.0, 20 * 30, dtype=np.float32).reshape(20, 30)
    p = write_image(tmp_path / "out.png", img)
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, tag = struct.unpack(">I4s", data[8:16])
    assert tag == b"IHDR" and length == 13
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, colour) == (30, 20, 16, 0)
    _no_part_files(tmp_path)
    # decode it with an independent reader: min–max scaled to the full 16-bit range
    import cv2

    back = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
    assert back.dtype == np.uint16 and back.shape == (20, 30)
    assert back.min() == 0 and back.max() == 65535
    expect = np.round((img.astype(np.float64) + 5.0) / 15.0 * 65535)
    assert np.abs(back.astype(np.float64) - expect).max() <= 1


def test_write_unknown_suffix(tmp_path):
    with pytest.raises(ValueError, match="unsupported output format"):
        write_image(tmp_path / "out.jpg", _frame())
    assert not list(tmp_path.iterdir())


def test_write_failure_leaves_nothing(tmp_path):
    # an image tifffile cannot write: the temporary file is removed and no final file appears
    with pytest.raises(Exception):
        write_image(tmp_path / "bad.tif", np.zeros((2, 2), dtype=object))
    assert not list(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------------
# Published assets
# -------------------------------------------------------------------------------------------------
@pytest.mark.published
def test_fetch_published_checksums():
    a = fetch_published(quiet=True)
    files = {a.frame.name: a.frame, a.config.name: a.config, **{p.name: p for p in a.checkpoints.values()}}
    assert set(files) == set(assets_mod.FILES)
    for name, (_member, digest, size) in assets_mod.FILES.items():
        assert files[name].stat().st_size == size
        assert assets_mod.sha256(files[name]) == digest, name
    assert a.default_checkpoint.name == "save_only_largest_2.h5"


def _fail_pip(calls):
    def run(cmd, *args, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="ERROR: network down")

    return run


def test_fetch_published_download_failure(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("GIXDRT_CACHE", str(cache))
    calls: list = []
    monkeypatch.setattr(assets_mod.subprocess, "run", _fail_pip(calls))
    with pytest.raises(AssetError) as info:
        fetch_published(quiet=True)
    msg = str(info.value)
    assert "network down" in msg and "gixi==0.0.1" in msg and str(cache / "downloads") in msg
    assert len(calls) == 1 and calls[0][1:4] == ["-m", "pip", "download"]
    assert not (cache / "downloads" / assets_mod.ARCHIVE).exists()


def _cached_archive() -> Path:
    src = assets_mod.cache_dir() / "downloads" / assets_mod.ARCHIVE
    if not src.is_file():
        fetch_published(quiet=True)
    if not src.is_file():
        pytest.skip(f"no cached {assets_mod.ARCHIVE} to copy")
    return src


@pytest.mark.published
def test_corrupt_cached_archive_is_reverified(tmp_path, monkeypatch):
    good = _cached_archive()
    cache = tmp_path / "cache"
    (cache / "downloads").mkdir(parents=True)
    bad = cache / "downloads" / assets_mod.ARCHIVE
    data = bytearray(good.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    monkeypatch.setenv("GIXDRT_CACHE", str(cache))

    # 1. the corrupt archive is not trusted: gixdrt tries to download it again
    calls: list = []
    monkeypatch.setattr(assets_mod.subprocess, "run", _fail_pip(calls))
    with pytest.raises(AssetError, match="network down"):
        fetch_published(quiet=True)
    assert len(calls) == 1

    # 2. a "download" that delivers the good archive replaces the corrupt one and the files verify
    def fake_pip(cmd, *args, **kwargs):
        dest = Path(cmd[cmd.index("-d") + 1])
        shutil.copyfile(good, dest / assets_mod.ARCHIVE)
        return subprocess.CompletedProcess(cmd, 0, stdout="Saved", stderr="")

    monkeypatch.setattr(assets_mod.subprocess, "run", fake_pip)
    a = fetch_published(quiet=True)
    assert a.root == cache / "gixi-0.0.1"
    assert assets_mod.sha256(bad) == assets_mod.ARCHIVE_SHA256
    assert assets_mod.sha256(a.config) == assets_mod.FILES["test_config.yaml"][1]
    assert not [p for p in a.root.iterdir() if p.name.endswith(".part")]

    # 3. a corrupted extracted file is extracted again rather than trusted
    a.config.write_text("q_space: {}\n")
    monkeypatch.setattr(assets_mod.subprocess, "run", _fail_pip([]))  # the archive is good: no download
    a2 = fetch_published(quiet=True)
    assert assets_mod.sha256(a2.config) == assets_mod.FILES["test_config.yaml"][1]
