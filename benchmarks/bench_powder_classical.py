"""The classical powder spot mask (GSAS-II's pixel mask search, gixdrt.powder.classical) on a generated 2880×2880
frame: the fast Numba version with a precomputed ring index at 1 and 2 threads, the ring index build (once per
geometry), and the NumPy specification once for scale; plus the generator's time per 1024² and 2880² frame.

    python benchmarks/bench_powder_classical.py [--runs 20] [--seed 0] [--out FILE.json]

Prints a table and writes JSON under benchmarks/results/ (powder-classical-cpu.json).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save, timeit


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed calls per measurement (default 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", type=int, default=10, help="generated frames timed per size (default 10)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON result path (default benchmarks/results/powder-classical-cpu.json)")
    args = ap.parse_args(argv)

    import numba

    from gixdrt.powder.classical import RingIndex, pixel_mask_search, pixel_mask_search_reference
    from gixdrt.sim.powder import PowderSimulator

    results: dict = {}
    # ---- generator ----
    gen = {}
    for size in ((1024, 1024), (2880, 2880)):
        sim = PowderSimulator(seed=args.seed, size=size)
        sim.frame(10**6)  # warm-up (Numba kernels compiled or loaded from the cache)
        n = args.frames if size[0] <= 1024 else max(args.frames // 3, 2)
        times = []
        for i in range(n):
            t0 = time.perf_counter()
            sim.frame(i)
            times.append(time.perf_counter() - t0)
        gen[f"{size[0]}x{size[1]}"] = {"frames": n, "median_s": float(np.median(times)), "max_s": float(np.max(times))}
    results["generator_1_thread"] = gen

    # ---- classical mask on one 2880² frame ----
    f = PowderSimulator(seed=args.seed, size=(2880, 2880)).frame(0)
    g = f.geometry
    t0 = time.perf_counter()
    tth = g.tth()
    index = RingIndex.build(tth, distance=g.dist, pixel=g.pixel1, mask=f.detector_mask)
    build_s = time.perf_counter() - t0
    out = np.zeros(f.image.shape, bool)
    per_thread = {}
    for threads in (1, 2):
        if threads > numba.config.NUMBA_NUM_THREADS:
            continue
        numba.set_num_threads(threads)
        per_thread[str(threads)] = timeit(lambda: pixel_mask_search(f.image, index, out=out), args.runs, warmup=3)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    t0 = time.perf_counter()
    ref = pixel_mask_search_reference(f.image, tth, distance=g.dist, pixel=g.pixel1, mask=f.detector_mask)
    ref_s = time.perf_counter() - t0
    fast = pixel_mask_search(f.image, index)
    results["classical_2880x2880"] = {
        "rings": index.n_rings,
        "pixels_in_rings": int(index.pixels.size),
        "ring_index_build_s": build_s,
        "fast_ms_by_threads": per_thread,
        "reference_numpy_s": ref_s,
        "identical_to_reference": bool(np.array_equal(ref, fast)),
        "masked_pixels": int(fast.sum()),
        "goal_ms_2_threads": 150.0,
    }

    print(f"{'what':<44} {'median':>10} {'p99':>10}")
    for k, v in gen.items():
        print(f"{'generate one frame ' + k:<44} {v['median_s'] * 1e3:8.1f}ms {v['max_s'] * 1e3:8.1f}ms (max)")
    print(f"{'ring index build (once per geometry)':<44} {build_s * 1e3:8.1f}ms")
    for t, st in per_thread.items():
        print(f"{'pixel_mask_search, ' + t + ' thread(s)':<44} {st['median_ms']:8.1f}ms {st['p99_ms']:8.1f}ms")
    print(f"{'NumPy specification (once)':<44} {ref_s * 1e3:8.1f}ms")
    print(f"identical masks: {results['classical_2880x2880']['identical_to_reference']}")
    env = environment()
    env["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]  # other processes on a shared machine
    payload = {"benchmark": "powder-classical", "environment": env, "results": results}
    path = save("powder-classical-cpu", payload, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
