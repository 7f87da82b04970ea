"""Seeded mutation fuzzing of the frame readers (gixdrt.io.readers).

Small valid files of each format (.npy, TIFF, HDF5, EDF, CBF) are mutated (byte flips, truncations, inserted
and deleted bytes, header fields overwritten with edge values) and read through read_frame, iter_frames and
count_frames. Every outcome must be a FrameError or valid frames — never another exception type, never a hang —
and read_frame and iter_frames, which share one reader, must agree.

Kept out of the in-process fuzz: HDF5 datasets compressed with bitshuffle-LZ4 (hdf5plugin). A corrupt
bitshuffle-LZ4 chunk header (uncompressed size, block size) crashes the process with SIGSEGV inside the
compiled filter, which no Python code can catch; test_bitshuffle_corrupt_chunks_in_child_processes reads such
chunks in child processes, reports the crashes as a warning, and checks that every child that survives
reports a FrameError or valid frames.

Run this file as a script to fuzz more, each mutant in a child process of its own (crashes are reported,
not fatal): ``python tests/test_readers_fuzz.py FORMAT [N] [SEED]`` (FORMAT: npy, tiff, h5, edf, cbf).
"""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
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


def seeds_h5(tmp: Path) -> list[tuple[str, bytes]]:
    h5py = pytest.importorskip("h5py")
    out = []
    for name, kwargs, arr in (
        ("contiguous", {}, _pixels(3, np.uint16)),
        ("chunked", {"chunks": (1, H, W), "compression": "gzip", "shuffle": True}, _pixels(3, ">f4")),
        ("two_d", {}, _pixels(1, np.int32)[0]),
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


def fuzz(fmt: str, tmp: Path, n: int, seed: int, *, isolate: bool = False) -> dict:
    """Mutate the seed files of ``fmt`` ``n`` times and read each mutant (in a forked child with ``isolate``).

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
    results = run_isolated([p for p, _ in mutants]) if isolate else [exercise(p) for p, _ in mutants]
    counts: dict[str, int] = {}
    failures = []
    for (path, what), (outcome, problem) in zip(mutants, results):
        counts[outcome] = counts.get(outcome, 0) + 1
        if problem is not None:
            failures.append((what, problem))
        path.unlink()
    return {"counts": counts, "failures": failures}


def run_isolated(paths: list[Path], timeout: float = 60.0) -> list[tuple[str, str | None]]:
    """:func:`exercise` on each path in a child process of its own, forked from one helper process (so a crash
    inside compiled code is an outcome: ('process', 'killed by SIGSEGV'), and a hang is ('hang', ...))."""
    code = "import sys; sys.path.insert(0, sys.argv[1]); import test_readers_fuzz as t; t._serve(sys.argv[2:])"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent), str(timeout), *map(str, paths)],
        check=False, capture_output=True, text=True, timeout=timeout * len(paths) + 120,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or len(lines) != len(paths):
        raise RuntimeError(f"fuzz helper failed (status {proc.returncode}): {proc.stderr[-2000:]}")
    return [tuple(json.loads(line[7:])) for line in lines]


def _serve(args: list[str]) -> None:
    """In the helper process: fork a child per path, report each child's outcome on stdout."""
    import logging

    logging.disable(logging.CRITICAL)
    for module in ("h5py", "hdf5plugin", "fabio", "fabio.edfimage", "fabio.cbfimage"):  # once, not per child
        try:
            __import__(module)
        except ImportError:
            pass
    timeout, paths = float(args[0]), args[1:]
    for path in paths:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: read, report, exit without any clean-up of the parent's state
            os.close(read_end)
            try:
                result = exercise(Path(path))
            except BaseException as exc:  # noqa: BLE001  (reported, not raised)
                result = ("crash", f"{type(exc).__name__}: {exc}")
            os.write(write_end, json.dumps(result).encode())
            os._exit(0)
        os.close(write_end)
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.002)
        with os.fdopen(read_end, "rb") as f:
            payload = f.read()
        if status is None:
            result = ("hang", f"no result in {timeout} s")
        elif os.WIFSIGNALED(status):
            result = ("process", f"killed by {signal.Signals(os.WTERMSIG(status)).name}")
        elif not payload:
            result = ("process", f"exit status {os.WEXITSTATUS(status)} without a result")
        else:
            result = tuple(json.loads(payload))
        print("RESULT " + json.dumps(result), flush=True)


# -------------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------------
SEED_OF = {"npy": 101, "tiff": 202, "h5": 303, "edf": 404, "cbf": 505}


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


def _bitshuffle_mutants(tmp: Path, n: int, seed: int) -> list[tuple[Path, str]]:
    """A 2-frame bitshuffle-LZ4 dataset (one frame per chunk) with the bytes of its first chunk mutated, most
    often the chunk's bitshuffle header (uncompressed size, block size) and its blocks' compressed sizes."""
    h5py = pytest.importorskip("h5py")
    hdf5plugin = pytest.importorskip("hdf5plugin")
    seed_path = tmp / "seed_bslz4.h5"
    with h5py.File(seed_path, "w") as f:
        frames = (np.random.default_rng(0).random((2, 64, 64)) * 2e5).astype(np.uint32)  # several LZ4 blocks
        ds = f.create_dataset("entry/data/data", data=frames, chunks=(1, 64, 64), **hdf5plugin.Bitshuffle(cname="lz4"))
        chunk = ds.id.get_chunk_info(0)
    data = seed_path.read_bytes()
    rng = np.random.default_rng(seed)
    out = []
    for j in range(n):
        buf = bytearray(data)
        offset = int(rng.choice([0, 4, 8, 12, int(rng.integers(0, chunk.size - 8))]))
        width = int(rng.choice([1, 2, 4, 8]))
        value = int(rng.choice(EDGE_INTS)) % (1 << (8 * width))
        at = chunk.byte_offset + offset
        buf[at : at + width] = value.to_bytes(width, "big")
        path = tmp / f"bs_{j}.h5"
        path.write_bytes(bytes(buf))
        out.append((path, f"{value:#x} ({width} bytes) at byte {offset} of the first chunk"))
    return out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_bitshuffle_corrupt_chunks_in_child_processes(tmp_path):
    """Corrupt bitshuffle-LZ4 chunks, each read in a child process of its own.

    A child killed by a signal is a crash inside the compiled bitshuffle filter (seen: SIGSEGV for a corrupt
    uncompressed size or block size in the chunk's header); no Python code can catch that, so it is counted and
    reported as a warning, not failed. Every child that survives must report a FrameError or valid frames.
    """
    mutants = _bitshuffle_mutants(tmp_path, 40, 606)
    results = run_isolated([p for p, _ in mutants])
    outcomes: dict[str, int] = {}
    failures, crashes = [], []
    for (_, what), (outcome, problem) in zip(mutants, results):
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "process":
            crashes.append(f"{what}: {problem}")
        elif problem is not None:
            failures.append(f"{what}: {problem}")
    assert not failures, failures[:5]
    assert outcomes.get("error", 0) > 0
    if crashes:
        warnings.warn(
            f"bitshuffle-LZ4: {len(crashes)} of {len(mutants)} corrupt chunks crashed the reading process inside "
            f"the HDF5 filter, e.g. {crashes[0]}",
            stacklevel=1,
        )


if __name__ == "__main__":
    import tempfile

    fmt = sys.argv[1]
    n = int(sys.argv[2]) if len(sys.argv) > 2 else N_MUTANTS
    seed = int(sys.argv[3]) if len(sys.argv) > 3 else SEED_OF.get(fmt, 0)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = fuzz(fmt, Path(tmp), n, seed, isolate=True)
        print(f"{fmt}: {result['counts']} in {time.perf_counter() - t0:.1f} s")
        for what, problem in result["failures"]:
            print(f"- {what}\n    {problem}")
