"""Throughput of the simulator (gixdrt.sim): images/s for 512×512 and 512×1024.

Two ways, each after a warm-up (Numba kernels compiled or loaded from cache):

- ``1 process``: one Simulator in this process (its contrast step runs on 1 Numba thread);
- ``N processes``: N spawned worker processes, each simulating its share of the indices, as
  ``simulate_to_file(..., workers=N)`` and training data loaders do (wall time of the whole set).

    python benchmarks/bench_sim.py [--n 200] [--workers 2] [--out FILE.json]

Prints a table and writes JSON under benchmarks/results/ (sim-cpu.json).
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save

_SIM = None


def _init(seed: int, size: tuple[int, int]) -> None:
    global _SIM
    from gixdrt.sim import Simulator

    _SIM = Simulator(seed=seed, size=size)
    _SIM.sample(10**9)  # warm-up: compile / load the kernels


def _work(indices: range) -> int:
    n = 0
    for i in indices:
        n += len(_SIM.sample(i).boxes)
    return n


def _ready(_: int) -> bool:
    return _SIM is not None


def bench_single(n: int, size: tuple[int, int], seed: int) -> dict:
    from gixdrt.sim import Simulator

    sim = Simulator(seed=seed, size=size)
    for i in range(3):
        sim.sample(10**9 + i)
    times = np.empty(n)
    boxes = 0
    t_all = time.perf_counter()
    for i in range(n):
        t0 = time.perf_counter()
        boxes += len(sim.sample(i).boxes)
        times[i] = time.perf_counter() - t0
    wall = time.perf_counter() - t_all
    return {
        "images": n,
        "images_per_s": n / wall,
        "median_ms": float(np.median(times) * 1e3),
        "p99_ms": float(np.percentile(times, 99) * 1e3),
        "boxes_per_image": boxes / n,
    }


def bench_pool(n: int, size: tuple[int, int], seed: int, workers: int) -> dict:
    chunk = 8
    chunks = [range(a, min(a + chunk, n)) for a in range(0, n, chunk)]
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                             initargs=(seed, size)) as ex:
        assert all(ex.map(_ready, range(workers * 2)))  # every worker started and warm
        t0 = time.perf_counter()
        boxes = sum(ex.map(_work, chunks))
        wall = time.perf_counter() - t0
    return {"images": n, "workers": workers, "images_per_s": n / wall, "boxes_per_image": boxes / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200, help="images per measurement (default 200)")
    ap.add_argument("--workers", type=int, default=2, help="processes for the pool measurement (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="JSON result path (default benchmarks/results/sim-cpu.json)")
    args = ap.parse_args(argv)

    results: dict = {}
    print(f"{'size':>10} {'mode':>14} {'images/s':>9} {'median ms':>10} {'boxes/img':>10}")
    for size in ((512, 512), (512, 1024)):
        key = f"{size[0]}x{size[1]}"
        single = bench_single(args.n, size, args.seed)
        pool = bench_pool(args.n, size, args.seed, args.workers)
        results[key] = {"single_process": single, f"{args.workers}_processes": pool}
        print(f"{key:>10} {'1 process':>14} {single['images_per_s']:9.1f} {single['median_ms']:10.1f} "
              f"{single['boxes_per_image']:10.1f}")
        print(f"{key:>10} {f'{args.workers} processes':>14} {pool['images_per_s']:9.1f} {'':>10} "
              f"{pool['boxes_per_image']:10.1f}")
    payload = {"benchmark": "sim", "environment": environment(), "results": results}
    path = save("sim-cpu", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
