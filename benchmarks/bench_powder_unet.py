"""The powder U-Net plan on a generated 2880×2880 frame on the CPU: end-to-end time (normalisation, ring channel,
tiles, network, stitching, mask) per stage with 2 threads, for each runtime and tile size — ONNX Runtime fp32 with
tiles of 768 px (the default), 1024, 1472 px (2 × 2 tiles on 2880²) and the whole frame; PyTorch bf16 (CPU autocast,
channels-last weights) with tiles of 512–1472 px where the CPU has AMX/AVX512-BF16 — and each configuration's peak
resident memory, measured in a fresh process.

    python benchmarks/bench_powder_unet.py [--model default] [--runs 5] [--threads 2] [--out FILE.json]

Prints a table and writes JSON under benchmarks/results/ (powder-unet-cpu.json).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save

CHILD = r"""
import json, resource, sys, time
import numpy as np
from gixdrt.powder.plan import PowderMasker
from gixdrt.sim.powder import PowderSimulator
model, tile, threads, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runtime, precision = sys.argv[5], sys.argv[6]
f = PowderSimulator(seed=0, size=(2880, 2880)).frame(0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m = PowderMasker(model, detector_mask=f.detector_mask, geometry=f.geometry, threads=threads, tile=tile,
                 runtime=runtime, precision=precision)
m.run(f.image)                                       # warm-up: sessions, compiled kernels
totals, stages = [], []
for _ in range(runs):
    t0 = time.perf_counter(); m.run(f.image, timed=True); totals.append(time.perf_counter() - t0)
    stages.append(m.timings)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"runtime": runtime, "precision": precision, "tile": tile, "threads": threads, "median_s": float(np.median(totals)), "min_s": float(min(totals)),
                  "stages_median_s": {k: float(np.median([s[k] for s in stages])) for k in stages[0]},
                  "peak_rss_mib": peak / 1024, "rss_before_masker_mib": base / 1024}))
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/powder-unet-cpu.json")
    args = ap.parse_args(argv)
    from gixdrt.engine.pyt import cpu_bf16_fast

    configs = [("onnxruntime", "fp32", 768), ("onnxruntime", "fp32", 1024), ("onnxruntime", "fp32", 1472),
               ("onnxruntime", "fp32", 0)]
    if cpu_bf16_fast():
        configs += [("torch", "bf16", 512), ("torch", "bf16", 768), ("torch", "bf16", 1024), ("torch", "bf16", 1472)]
    rows = []
    for runtime, precision, tile in configs:
        res = subprocess.run([sys.executable, "-c", CHILD, args.model, str(tile), str(args.threads), str(args.runs),
                              runtime, precision], capture_output=True, text=True, check=True)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        stages = ", ".join(f"{k} {v:.3f}" for k, v in row["stages_median_s"].items())
        print(f"{runtime:>11} {precision} tile {tile or 'whole':>5}: {row['median_s']:.2f} s/frame (min "
              f"{row['min_s']:.2f}), peak RSS {row['peak_rss_mib']:.0f} MiB; stages [s]: {stages}")
    path = save("powder-unet-cpu", {"frame": [2880, 2880], "runs": args.runs, "model": args.model, "results": rows,
                                    "environment": environment()}, args.out)
    print(f"→ {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
