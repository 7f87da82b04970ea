"""Reading an Eiger-like bitshuffle-LZ4 HDF5 stack: the HDF5 filter against gixdrt's direct chunk reads.

The stack is generated first (``--frames`` frames of ``--size`` × ``--size`` ``--dtype`` Poisson counts with a few
bright spots, written with hdf5plugin's Bitshuffle(lz4) filter, one frame per chunk, as an Eiger writes them) in
a temporary folder, then read whole, several times, from the page cache (this times decoding, not the disk):

- ``h5py + filter``: ``ds[i]`` frame by frame, the HDF5 filter decoding (hdf5plugin: one thread);
- ``reader, filter``: gixdrt's H5Reader with its direct reads switched off (``direct_reads = False``);
- ``reader, direct``: H5Reader's direct chunk reads (``read_direct_chunk`` + gixdrt.io.decode), with 1 and 2
  decoding threads (``decode_threads``).

Each reader way is timed streaming (``frames()``, as ``iter_frames`` reads) and in blocks of ``--block`` frames
(``read()``). The candidates are timed round-robin (one pass of each in turn) so that load from other
processes falls on all of them alike.

    python benchmarks/bench_decode.py [--frames 100] [--size 2048] [--dtype uint32] [--mean 0.5] [--runs 5]
                                      [--out FILE]

Prints a table and writes JSON under benchmarks/results/ (``decode-cpu.json``).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save, timeit_interleaved


def make_stack(path: Path, n: int, size: int, dtype: str, mean: float = 0.5, seed: int = 0) -> dict:
    """An Eiger-like stack: low Poisson counts (``mean`` a pixel), 300 bright 3×3 spots per frame, a dead column
    of zeros; bitshuffle-LZ4, one frame per chunk."""
    import h5py
    import hdf5plugin

    rng = np.random.default_rng(seed)
    limit = np.iinfo(dtype).max if np.dtype(dtype).kind == "u" else None
    t0 = time.perf_counter()
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("entry/data/data", shape=(n, size, size), dtype=dtype, chunks=(1, size, size),
                              **hdf5plugin.Bitshuffle(cname="lz4"))
        for i in range(n):
            frame = rng.poisson(mean, (size, size)).astype(np.int64)
            ys, xs = rng.integers(2, size - 2, 300), rng.integers(2, size - 2, 300)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    frame[ys + dy, xs + dx] += rng.integers(50, 5000, ys.size) // (1 + 3 * (abs(dy) + abs(dx)))
            frame[:, size // 3] = 0
            if limit is not None:
                np.minimum(frame, limit, out=frame)
            ds[i] = frame.astype(dtype)
        stored = sum(ds.id.get_chunk_info(i).size for i in range(ds.id.get_num_chunks()))
    raw = n * size * size * np.dtype(dtype).itemsize
    return {"frames": n, "shape": [size, size], "dtype": dtype, "mean_counts": mean, "chunks": [1, size, size],
            "filter": "bitshuffle-lz4",
            "raw_bytes": raw, "stored_bytes": int(stored), "ratio": round(raw / stored, 2),
            "write_s": round(time.perf_counter() - t0, 1)}


def candidates(path: Path, n: int, block: int) -> dict:
    import h5py

    from gixdrt.io.readers import H5Reader, reader_for

    f = h5py.File(path, "r")
    ds = f["entry/data/data"]

    def h5py_frames():
        for i in range(n):
            ds[i]

    def reader(direct: bool, threads: int, mode: str):
        def run():
            r = reader_for(path)
            r.direct_reads, r.decode_threads = direct, threads
            with r:
                assert bool(r._direct) == direct
                if mode == "stream":
                    for _ in r.frames(0):
                        pass
                else:
                    for a in range(0, n, block):
                        r.read(0, a, min(n, a + block))
        return run

    out = {("h5py + filter", "stream", 1): h5py_frames}
    for mode in ("stream", "block"):
        out[("reader, filter", mode, 1)] = reader(False, 1, mode)
        for threads in (1, 2):
            out[("reader, direct", mode, threads)] = reader(True, threads, mode)
    assert H5Reader.direct_reads  # the class default is unchanged
    return out, f


def check_same(path: Path, n: int) -> None:
    """The direct path returns what the HDF5 filter returns."""
    import h5py

    from gixdrt.io.readers import reader_for

    with h5py.File(path, "r") as f, reader_for(path) as r:
        for i in sorted({0, n // 2, n - 1}):
            assert np.array_equal(f["entry/data/data"][i], r.read(0, i, i + 1)[0]), i


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--dtype", default="uint32", choices=["uint16", "uint32"])
    parser.add_argument("--mean", type=float, default=0.5, help="mean Poisson counts a pixel")
    parser.add_argument("--block", type=int, default=10, help="frames per read() in the block mode")
    parser.add_argument("--runs", type=int, default=5, help="timed passes over the stack per candidate")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import bitshuffle
    import h5py
    import hdf5plugin
    import lz4

    from gixdrt.io import decode

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "eiger_bslz4.h5"
        print(f"writing {args.frames} frames of {args.size}×{args.size} {args.dtype} ...", flush=True)
        stack = make_stack(path, args.frames, args.size, args.dtype, args.mean)
        print(f"  {stack['raw_bytes'] / 1e6:.0f} MB of pixels stored in {stack['stored_bytes'] / 1e6:.0f} MB "
              f"({stack['ratio']}×) in {stack['write_s']} s", flush=True)
        check_same(path, args.frames)
        fns, f = candidates(path, args.frames, args.block)
        try:
            stats = timeit_interleaved({k: v for k, v in fns.items()}, runs=args.runs, warmup=1)
        finally:
            f.close()

    raw_mb = stack["raw_bytes"] / 1e6
    rows = []
    for (way, mode, threads), s in stats.items():
        seconds = s["median_ms"] / 1e3
        rows.append({"way": way, "mode": mode, "threads": threads, "pass_median_ms": round(s["median_ms"], 1),
                     "pass_min_ms": round(s["min_ms"], 1), "frames_per_s": round(args.frames / seconds, 1),
                     "mb_per_s": round(raw_mb / seconds, 1), "runs": s["runs"]})
    base = {mode: next(r for r in rows if r["way"] == "reader, filter" and r["mode"] == mode)["frames_per_s"]
            for mode in ("stream", "block")}
    for r in rows:
        r["vs_reader_filter"] = round(r["frames_per_s"] / base[r["mode"]], 2) if r["way"] != "h5py + filter" else None

    print(f"\n{args.frames} frames of {args.size}×{args.size} {args.dtype}, bitshuffle-LZ4 one frame a chunk "
          f"({stack['ratio']}× compressed); median of {args.runs} passes; MB/s of decoded pixels")
    print(f"{'way':<16} {'mode':<7} {'threads':>7} {'pass ms':>9} {'frames/s':>9} {'MB/s':>8} {'× filter':>9}")
    for r in rows:
        ratio = "" if r["vs_reader_filter"] is None else f"{r['vs_reader_filter']:.2f}"
        print(f"{r['way']:<16} {r['mode']:<7} {r['threads']:>7} {r['pass_median_ms']:>9.1f} "
              f"{r['frames_per_s']:>9.1f} {r['mb_per_s']:>8.1f} {ratio:>9}")

    env = environment()
    env.update({"h5py": h5py.__version__, "hdf5": h5py.version.hdf5_version, "hdf5plugin": hdf5plugin.version,
                "hdf5plugin_openmp": bool(hdf5plugin.get_config().build_config.openmp),
                "bitshuffle": bitshuffle.__version__, "lz4": lz4.__version__,
                "decode_cores": decode.default_threads()})
    payload = {
        "benchmark": "decode",
        "settings": {**vars(args), "out": None if args.out is None else str(args.out), "stack": stack,
                     "timing": "round-robin passes over the whole stack from the page cache, after one warm-up pass",
                     "modes": {"stream": "H5Reader.frames(): frame by frame, as iter_frames reads",
                               "block": f"H5Reader.read() of {args.block} frames at a time"}},
        "environment": env,
        "results": rows,
    }
    print(f"\nwrote {save('decode-cpu', payload, args.out)}")


if __name__ == "__main__":
    main()
