"""Seeded mutation fuzzing of the frame readers (gixdrt.io.readers).

Small valid files of each format (.npy, TIFF, HDF5, EDF, CBF) are mutated (byte flips, truncations, inserted
and deleted bytes, header fields overwritten with edge values) and read through read_frame, iter_frames and
count_frames. Every outcome must be a FrameError or valid frames — never another exception type, never a hang —
and read_frame and iter_frames, which share one reader, must agree.

Everything is read in this process, HDF5 datasets compressed with bitshuffle-LZ4 and LZ4 included: their chunks
are checked and decoded by gixdrt.io.decode, not by the HDF5 filters (which crash the process with SIGSEGV on
a corrupt chunk header). Besides the whole-file mutations, test_compressed_chunks_in_process mutates the bytes
of one such chunk, mostly its header (uncompressed size, block size) and its blocks' compressed sizes.

Run this file as a script to fuzz more: ``python tests/test_readers_fuzz.py FORMAT [N] [SEED]`` (FORMAT: npy,
tiff, h5, edf, cbf, or bslz4 / lz4 for the chunk mutations).
"""
from __future__ import annotations

import io
import re
import signal
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gixdrt.errors import FrameError
from gixdrt.io import count_frames, iter_frames, read_frame
from gixdrt.io.readers import MAX_FRAME_PIXELS, SUPPORTED_DTYPES

N_MUTANTS = 600  # per format; each format's run takes about a second
CASE_SECONDS = 10.0  # one mutant taking longer than this counts as a hang
H, W = 8, 12


# -------------------------------------------------------------------------------------------------
# Valid seed files
# -------------------------------------------------------------------------------------------------
def _pixels(n, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.random((n, H, W)) * 200).astype(dtype)


def _npy_bytes(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


def _tiff_bytes(arr, **kwargs) -> bytes:
    buf = io.BytesIO()
    tifffile.imwrite(buf, arr, **kwargs)
    return buf.getvalue()


def seeds_npy(tmp: Path) -> list[tuple[str, bytes]]:
    return [
        (".npy", _npy_bytes(_pixels(3, np.uint16))),
        (".npy", _npy_bytes(_pixels(1, ">f4")[0])),
        (".npy", _npy_bytes(np.asfortranarray(_pixels(2, np.int32)))),
    ]


def seeds_tiff(tmp: Path) -> list[tuple[str, bytes]]:
    return [
        (".tif", _tiff_bytes(_pixels(3, np.uint16), photometric="minisblack")),
        (".tif", _tiff_bytes(_pixels(1, ">f4")[0], byteorder=">")),
        (".tif", _tiff_bytes(_pixels(2, np.float32), photometric="minisblack", compression="zlib")),
    ]


def _compression(kind: str) -> dict:
    """hdf5plugin's filter arguments for 'bslz4' (filter 32008 with LZ4) or 'lz4' (filter 32004)."""
    hdf5plugin = pytest.importorskip("hdf5plugin")
    return dict(hdf5plugin.Bitshuffle(cname="lz4") if kind == "bslz4" else hdf5plugin.LZ4())


def seeds_h5(tmp: Path) -> list[tuple[str, bytes]]:
    h5py = pytest.importorskip("h5py")
    out = []
    for name, kwargs, arr in (
        ("contiguous", {}, _pixels(3, np.uint16)),
        ("chunked", {"chunks": (1, H, W), "compression": "gzip", "shuffle": True}, _pixels(3, ">f4")),
        ("two_d", {}, _pixels(1, np.int32)[0]),
        ("bslz4", {"chunks": (1, H, W), **_compression("bslz4")}, _pixels(3, np.uint32)),
        ("lz4", {"chunks": (2, H, W), **_compression("lz4")}, _pixels(3, np.uint16)),
    ):
        path = tmp / f"seed_{name}.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("entry/data/data", data=arr, **kwargs)
        out.append((".h5", path.read_bytes()))
    return out


def seeds_edf(tmp: Path) -> list[tuple[str, bytes]]:
    pytest.importorskip("fabio")
    from fabio.edfimage import EdfImage

    multi = _pixels(2, np.float32)
    img = EdfImage(data=multi[0])
    img.append_frame(data=multi[1])
    img.write(str(tmp / "seed_multi.edf"))
    EdfImage(data=_pixels(1, np.uint16)[0]).write(str(tmp / "seed_one.edf"))
    return [(".edf", (tmp / f"seed_{n}.edf").read_bytes()) for n in ("multi", "one")]


def seeds_cbf(tmp: Path) -> list[tuple[str, bytes]]:
    pytest.importorskip("fabio")
    from fabio.cbfimage import CbfImage

    data = (_pixels(1, np.float64)[0] * 50).astype(np.int32)
    data[0, :3] = [70000, -40000, 1]  # large steps: the 2- and 4-byte escapes of the byte-offset code
    CbfImage(data=data).write(str(tmp / "seed.cbf"))
    return [(".cbf", (tmp / "seed.cbf").read_bytes())]


SEEDS = {"npy": seeds_npy, "tiff": seeds_tiff, "h5": seeds_h5, "edf": seeds_edf, "cbf": seeds_cbf}


# -------------------------------------------------------------------------------------------------
# Mutations
# -------------------------------------------------------------------------------------------------
EDGE_INTS = [0, 1, 2, 3, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000,
             0xFFFFFFFF, 2**40, 2**63 - 1, 2**64 - 1]
EDGE_NUMBERS = [b"0", b"-1", b"1", b"3", b"65536", b"99999999", b"4294967296", b"18446744073709551617", b"1e3",
                b"-0", b"", b"x", b"2.5"]
_NUMBER = re.compile(rb"\d+")


def _header_end(data: bytes) -> int:
    """Where a format's text or metadata header ends, roughly: mutations favour the bytes before it."""
    for mark in (b"\x0c\x1a\x04\xd5", b"}\n"):  # CBF start of binary data; EDF end of header
        pos = data.find(mark)
        if pos > 0:
            return pos + len(mark)
    return min(len(data), 512)


def mutate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random mutation of ``data`` and a description of it."""
    buf = bytearray(data)
    n = len(buf)
    head = _header_end(data)
    kind = rng.choice(["flip", "flip_header", "truncate", "int_header", "number", "insert", "delete", "append"])
    if kind in ("flip", "flip_header"):
        span = head if kind == "flip_header" else n
        spots = rng.integers(0, span, size=int(rng.integers(1, 5)))
        for p in spots:
            buf[p] ^= int(rng.integers(1, 256))
        return bytes(buf), f"{kind} {sorted(int(p) for p in spots)}"
    if kind == "truncate":
        cut = int(rng.integers(1, n))
        return bytes(buf[:cut]), f"truncate to {cut}"
    if kind == "int_header":
        width = int(rng.choice([1, 2, 4, 8]))
        pos = int(rng.integers(0, max(1, max(head, min(n, 4096)) - width)))
        value = int(rng.choice(EDGE_INTS)) % (1 << (8 * width))
        order = "little" if rng.random() < 0.5 else "big"
        buf[pos : pos + width] = value.to_bytes(width, order)
        return bytes(buf[:n]), f"int_header {value:#x} ({width} bytes, {order}) at {pos}"
    if kind == "number":
        numbers = [m for m in _NUMBER.finditer(data[:head])]
        if numbers:
            m = numbers[int(rng.integers(0, len(numbers)))]
            new = EDGE_NUMBERS[int(rng.integers(0, len(EDGE_NUMBERS)))]
            what = f"number {m.group().decode()} at {m.start()} -> {new.decode()!r}"
            return data[: m.start()] + new + data[m.end() :], what
        kind = "insert"
    if kind == "insert":
        pos, extra = int(rng.integers(0, n)), rng.bytes(int(rng.integers(1, 9)))
        return data[:pos] + extra + data[pos:], f"insert {len(extra)} bytes at {pos}"
    if kind == "delete":
        pos = int(rng.integers(0, n))
        k = int(rng.integers(1, 9))
        return data[:pos] + data[pos + k :], f"delete {k} bytes at {pos}"
    extra = rng.bytes(int(rng.integers(1, 64)))
    return data + extra, f"append {len(extra)} bytes"


# -------------------------------------------------------------------------------------------------
# Reading a mutant
# -------------------------------------------------------------------------------------------------
class Hang(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    """Hang inside Python code after ``seconds`` (a hang inside compiled code ends when it returns)."""
    if not hasattr(signal, "setitimer"):
        yield
        return

    def alarm(signum, frame):
        raise Hang(f"took more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _valid(arr: np.ndarray) -> str | None:
    if not isinstance(arr, np.ndarray):
        return f"returned {type(arr).__name__}"
    if arr.ndim not in (2, 3) or arr.size == 0:
        return f"returned shape {arr.shape}"
    if arr.dtype.name not in SUPPORTED_DTYPES or not arr.dtype.isnative:
        return f"returned dtype {arr.dtype.str}"
    if arr.shape[-2] * arr.shape[-1] > MAX_FRAME_PIXELS:
        return f"returned frames of {arr.shape[-2:]} pixels"
    return None


def exercise(path: Path) -> tuple[str, str | None]:
    """Read ``path`` every way; (outcome summary, problem or None)."""
    spec = str(path)
    results = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, fn in (
            ("read_frame", lambda: read_frame(spec)),
            ("iter_frames", lambda: [fr.data for fr in iter_frames([spec])]),
            ("count_frames", lambda: count_frames([spec])),
        ):
            try:
                with _deadline(CASE_SECONDS):
                    results.append((name, "ok", fn()))
            except FrameError as exc:
                if not str(exc).startswith(spec) or "\n" in str(exc):
                    return "error", f"{name}: FrameError not naming the file on one line: {exc!r}"
                results.append((name, "error", str(exc)))
            except Exception as exc:
                return "crash", f"{name}: {type(exc).__name__}: {exc}\n{traceback.format_exc(limit=-4)}"
    (_, s_read, whole), (_, s_iter, frames), (_, s_count, count) = results
    if s_read != s_iter:
        detail = whole if s_read == "error" else frames
        return "mismatch", f"read_frame {s_read}, iter_frames {s_iter}: {detail}"
    if s_read == "error":
        return "error", None
    problem = _valid(whole) or next((p for p in map(_valid, frames) if p), None)
    if problem:
        return "invalid", problem
    stacked = whole if whole.ndim == 3 else whole[None]
    if len(frames) != len(stacked) or not all(np.array_equal(a, b, equal_nan=True) for a, b in zip(stacked, frames)):
        return "mismatch", f"read_frame {whole.shape} differs from iter_frames' {len(frames)} frames"
    if s_count != "ok" or count != len(frames):
        return "mismatch", f"count_frames {count!r}, iter_frames {len(frames)} frames"
    return "ok", None


def fuzz(fmt: str, tmp: Path, n: int, seed: int) -> dict:
    """Mutate the seed files of ``fmt`` ``n`` times and read each mutant.

    Returns the counts of outcomes ('ok', 'error', and any problem) and the failures: (description, problem).
    """
    rng = np.random.default_rng(seed)
    seeds = SEEDS[fmt](tmp)
    mutants = []
    for j in range(n):
        suffix, data = seeds[j % len(seeds)]
        mutant, what = mutate(data, rng)
        path = tmp / f"mutant_{j}{suffix}"
        path.write_bytes(mutant)
        mutants.append((path, f"mutant {j} of seed {j % len(seeds)}: {what}"))
    return _tally(mutants)


def _tally(mutants: list[tuple[Path, str]]) -> dict:
    """Read each (path, description) mutant; the counts of outcomes and the failures: (description, problem)."""
    counts: dict[str, int] = {}
    failures = []
    for path, what in mutants:
        outcome, problem = exercise(path)
        counts[outcome] = counts.get(outcome, 0) + 1
        if problem is not None:
            failures.append((what, problem))
        path.unlink()
    return {"counts": counts, "failures": failures}


# -------------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------------
SEED_OF = {"npy": 101, "tiff": 202, "h5": 303, "edf": 404, "cbf": 505, "bslz4": 606, "lz4": 707}


@pytest.mark.parametrize("fmt", list(SEEDS))
def test_seed_files_are_valid(fmt, tmp_path):
    for j, (suffix, data) in enumerate(SEEDS[fmt](tmp_path)):
        path = tmp_path / f"valid_{j}{suffix}"
        path.write_bytes(data)
        assert exercise(path) == ("ok", None)


@pytest.mark.parametrize("fmt", list(SEEDS))
def test_mutants_give_frame_errors_or_frames(fmt, tmp_path):
    t0 = time.perf_counter()
    result = fuzz(fmt, tmp_path, N_MUTANTS, SEED_OF[fmt])
    elapsed = time.perf_counter() - t0
    counts = result["counts"]
    assert sum(counts.values()) == N_MUTANTS >= 300
    report = "\n".join(f"{what}\n    {problem}" for what, problem in result["failures"][:10])
    assert not result["failures"], f"{len(result['failures'])} of {N_MUTANTS} mutants failed ({counts}):\n{report}"
    assert counts["error"] > N_MUTANTS // 10 and counts["ok"] > 0  # the mutations reach the checks, and past them
    assert elapsed < 60, f"{fmt}: {N_MUTANTS} mutants took {elapsed:.0f} s"


N_CHUNK_MUTANTS = 400  # per encoding


def chunk_mutants(kind: str, tmp: Path, n: int, seed: int) -> list[tuple[Path, str]]:
    """A 3-frame dataset compressed with ``kind`` ('bslz4': one 64×64 uint32 frame per chunk, several LZ4 blocks;
    'lz4': two frames per chunk, in blocks of 1 KiB) with the bytes of its second chunk mutated: most often
    the chunk's header (uncompressed size, block size) and its first blocks' compressed sizes."""
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    seed_path = tmp / f"seed_{kind}.h5"
    frames = (np.random.default_rng(0).random((3, 64, 64)) * 2e5).astype(np.uint32 if kind == "bslz4" else np.uint16)
    rows, compression = (1, hdf5plugin.Bitshuffle(cname="lz4")) if kind == "bslz4" else (2, hdf5plugin.LZ4(1024))
    with h5py.File(seed_path, "w") as f:
        ds = f.create_dataset("entry/data/data", data=frames, chunks=(rows, 64, 64), **compression)
        chunk = ds.id.get_chunk_info(1)
    data = seed_path.read_bytes()
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        buf = bytearray(data)
        offset = int(rng.choice([0, 4, 8, 12, 16, int(rng.integers(0, 64)), int(rng.integers(0, chunk.size - 8))]))
        width = int(rng.choice([1, 2, 4, 8]))
        if rng.random() < 0.75:
            value = int(rng.choice(EDGE_INTS)) % (1 << (8 * width))
            new = value.to_bytes(width, "big")
            what = f"{value:#x} ({width} bytes)"
        else:
            old = buf[chunk.byte_offset + offset :][:width]
            new = bytes(b ^ int(x) for b, x in zip(old, rng.integers(1, 256, len(old))))
            what = f"{len(old)} bytes flipped"
        at = chunk.byte_offset + offset
        buf[at : at + width] = new
        path = tmp / f"chunk_{kind}_{j}.h5"
        path.write_bytes(bytes(buf))
        out.append((path, f"mutant {j}: {what} at byte {offset} of the second chunk"))
    return out


@pytest.mark.parametrize("kind", ["bslz4", "lz4"])
def test_compressed_chunks_in_process(kind, tmp_path):
    """Corrupt bitshuffle-LZ4 and LZ4 chunks, read in this process: each a FrameError or valid frames."""
    t0 = time.perf_counter()
    result = _tally(chunk_mutants(kind, tmp_path, N_CHUNK_MUTANTS, SEED_OF[kind]))
    counts = result["counts"]
    assert sum(counts.values()) == N_CHUNK_MUTANTS >= 300
    report = "\n".join(f"{what}\n    {problem}" for what, problem in result["failures"][:10])
    failed = len(result["failures"])
    assert not failed, f"{failed} of {N_CHUNK_MUTANTS} mutants failed ({counts}):\n{report}"
    assert counts["error"] > N_CHUNK_MUTANTS // 2 and counts.get("ok", 0) > 0, counts
    assert time.perf_counter() - t0 < 60


if __name__ == "__main__":
    import tempfile

    fmt = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else N_MUTANTS
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else SEED_OF.get(fmt, 0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        if fmt in ("bslz4", "lz4"):
            n = int(sys.argv[2]) if len(sys.argv) > 2 else N_CHUNK_MUTANTS
            result = _tally(chunk_mutants(fmt, Path(tmp), n, seed))
        else:
            result = fuzz(fmt, Path(tmp), n, seed)
        print(f"{fmt}: {result['counts']} in {time.perf_counter() - t0:.1f} s")
        for what, problem in result["failures"]:
            print(f"- {what}\n    {problem}")
