"""Time the preprocessing stages on the published real frame (2048×2048 float32 → 512×1024 polar).

Stages: map build (once per geometry), polar remap, contrast; backends side by side in one run:
``reference`` (NumPy), ``cpu`` (C++ in gixdrt._ext), and the OpenCV chain (cv2.remap + NumPy/cv2 contrast
chain: min–max, log10, uint16, cv2.createCLAHE(2000, (1, 1)), min–max). Also the first call of each ``cpu``
kernel in a fresh process (``first_call``: what a new ``gixdrt detect`` pays before its first frame). With a
CUDA GPU, also the ``cuda`` backend: correctness against the reference and frames/s for batches of raw uint16
frames uploaded once.

    python benchmarks/bench_preprocess.py [--runs 50] [--out FILE.json]

Prints a table and writes JSON under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save, timeit, timeit_interleaved


def opencv_chain(frame, mx, my, coef: float, clip: float):
    """The published chain written with OpenCV and NumPy (float32), as a user would without gixdrt."""
    import cv2

    # The row flip of the published pipeline is folded into the maps (no copy), as gixdrt does.
    polar = cv2.remap(frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    n = (polar - polar.min()) / (polar.max() - polar.min())
    a = np.log10(np.float32(coef) * n + np.float32(1))
    a = (a - a.min()) / (a.max() - a.min())
    u = (np.float32(coef) * a).astype(np.uint16)
    c = cv2.createCLAHE(clipLimit=clip, tileGridSize=(1, 1)).apply(u).astype(np.float32)
    return polar, (c - c.min()) / (c.max() - c.min())


#: run in a fresh process: the first call of each cpu kernel on the real frame (after loading it)
FIRST_CALL = """
import json, sys, time
import numpy as np
from gixdrt import kernels
from gixdrt.geometry import build_polar_map, load_config
from gixdrt.io import fetch_published, read_frame
assets = fetch_published(quiet=True)
cfg = load_config(assets.config)
frame = read_frame(assets.frame)
pmap = build_polar_map(cfg.geometry)
c = cfg.contrast
t0 = time.perf_counter()
polar = kernels.polar_remap(frame, pmap, impl="cpu")
t1 = time.perf_counter()
kernels.contrast(polar, coef=c.coef, clip_limit=c.limit, log=c.log, impl="cpu")
t2 = time.perf_counter()
print(json.dumps({"polar_remap_s": t1 - t0, "contrast_s": t2 - t1, "numba_imported": "numba" in sys.modules}))
"""


def first_call() -> dict:
    """Seconds of the first polar_remap and contrast call (cpu backend) in a fresh Python process."""
    proc = subprocess.run([sys.executable, "-c", FIRST_CALL], check=False, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=50, help="timed runs per stage (default 50, at least 50 for the p99)")
    ap.add_argument("--batch", type=int, default=64, help="GPU batch size (frames per launch series)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path (default benchmarks/results/...)")
    args = ap.parse_args(argv)

    from gixdrt import kernels
    from gixdrt.geometry import build_polar_map, load_config
    from gixdrt.io import fetch_published, read_frame

    assets = fetch_published()
    cfg = load_config(assets.config)
    g, c = cfg.geometry, cfg.contrast
    frame = read_frame(assets.frame)
    pmap = build_polar_map(g)

    results: dict = {"frame": assets.frame.name, "frame_shape": list(frame.shape), "polar_shape": list(g.polar_shape)}
    stages: dict = {}
    stages["map_build"] = timeit(lambda: build_polar_map(g), max(10, args.runs // 5), warmup=1)

    ref_polar = kernels.polar_remap(frame, pmap, impl="reference")
    ref_proc = kernels.contrast(ref_polar, coef=c.coef, clip_limit=c.limit, log=c.log, impl="reference")
    candidates: dict = {}
    buffers: dict = {}
    for backend in ("reference", "cpu"):
        polar = np.empty(g.polar_shape, np.float32)
        proc = np.empty(g.polar_shape, np.float32)
        buffers[backend] = (polar, proc)

        def remap(b=backend, o=polar):
            return kernels.polar_remap(frame, pmap, out=o, impl=b)

        def enhance(b=backend, p=polar, o=proc):
            return kernels.contrast(p, coef=c.coef, clip_limit=c.limit, log=c.log, out=o, impl=b)

        candidates[f"remap/{backend}"] = remap
        candidates[f"contrast/{backend}"] = enhance
        candidates[f"remap+contrast/{backend}"] = lambda r=remap, e=enhance: (r(), e())
    try:
        import cv2

        mx, my = pmap.opencv_maps()  # float32 maps, undefined positions moved off the frame
        cv_polar, cv_proc = opencv_chain(frame, mx, my, c.coef, c.limit)
        candidates["remap/opencv"] = lambda: cv2.remap(
            frame, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        candidates["remap+contrast/opencv"] = lambda: opencv_chain(frame, mx, my, c.coef, c.limit)
    except ImportError:  # pragma: no cover
        cv2 = None
        print("opencv not installed: skipping the OpenCV chain (pip install opencv-python-headless)")

    # Round-robin timing: on a shared machine, load from elsewhere falls on every candidate alike.
    stages.update(timeit_interleaved(candidates, args.runs))
    for backend, (polar, proc) in buffers.items():
        stages[f"remap/{backend}"]["max_abs_diff_vs_reference"] = float(np.abs(polar - ref_polar).max())
        stages[f"contrast/{backend}"]["max_abs_diff_vs_reference"] = float(np.abs(proc - ref_proc).max())
    if cv2 is not None:
        stages["remap+contrast/opencv"]["polar_max_abs_diff_vs_reference"] = float(np.abs(cv_polar - ref_polar).max())
        stages["remap+contrast/opencv"]["contrast_max_abs_diff_vs_reference"] = float(np.abs(cv_proc - ref_proc).max())
        ratio = stages["remap+contrast/cpu"]["median_ms"] / stages["remap+contrast/opencv"]["median_ms"]
        results["cpu_over_opencv"] = ratio
        results["goal"] = "remap+contrast/cpu ≤ 0.7 × remap+contrast/opencv (medians, interleaved runs)"
        results["goal_met"] = bool(ratio <= 0.7)

    results["first_call"] = first_call()
    gpu = _gpu_section(frame, pmap, ref_polar, ref_proc, c, args)
    if gpu:
        results["gpu"] = gpu
    results["stages"] = stages
    results["environment"] = environment()

    print(f"{'stage':34s} {'median ms':>10s} {'p99 ms':>10s} {'min ms':>10s}")
    for name, st in stages.items():
        print(f"{name:34s} {st['median_ms']:10.3f} {st['p99_ms']:10.3f} {st['min_ms']:10.3f}")
    print(f"first call in a fresh process (cpu): {results['first_call']}")
    if "cpu_over_opencv" in results:
        print(f"cpu / opencv (remap+contrast): {results['cpu_over_opencv']:.3f} (goal ≤ 0.7: {'met' if results['goal_met'] else 'NOT met'})")
    if gpu:
        for k, v in gpu.items():
            print(f"gpu {k}: {v}")
    path = save("preprocess-" + ("gpu" if gpu else "cpu"), results, args.out)
    print(f"saved {path}")
    return 0


def _gpu_section(frame, pmap, ref_polar, ref_proc, c, args):
    """CUDA backend: correctness against the reference and throughput for a batch (real GPU only)."""
    from gixdrt.kernels.registry import cuda_unavailable_reason, cudasim

    if cudasim() or cuda_unavailable_reason() is not None:
        return None
    try:
        import cupy as cp
    except ImportError:
        return {"skipped": "cupy not installed"}
    from gixdrt import kernels

    d_frame = cp.asarray(frame)
    d_polar = cp.empty(pmap.shape, cp.float32)
    d_proc = cp.empty(pmap.shape, cp.float32)
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        kernels.polar_remap(d_frame, pmap, out=d_polar, stream=stream)
        kernels.contrast(d_polar, coef=c.coef, clip_limit=c.limit, log=c.log, out=d_proc, stream=stream)
    stream.synchronize()
    out = {
        "device": cp.cuda.runtime.getDeviceProperties(0)["name"].decode(),
        "remap_max_abs_diff_vs_reference": float(cp.abs(d_polar - cp.asarray(ref_polar)).max()),
        "contrast_max_abs_diff_vs_reference": float(cp.abs(d_proc - cp.asarray(ref_proc)).max()),
    }
    # Batch: raw uint16 frames uploaded once, then remap + contrast per frame on one stream.
    raw16 = np.clip(frame, 0, 65535).astype(np.uint16)
    d_batch = cp.asarray(np.broadcast_to(raw16, (args.batch,) + raw16.shape).copy())
    d_out = cp.empty((args.batch,) + pmap.shape, cp.float32)

    def run_batch():
        for k in range(args.batch):
            kernels.polar_remap(d_batch[k], pmap, out=d_polar, stream=stream)
            kernels.contrast(d_polar, coef=c.coef, clip_limit=c.limit, log=c.log, out=d_out[k], stream=stream)

    st = timeit(run_batch, max(5, args.runs // 5), warmup=2, sync=stream.synchronize)
    out["batch"] = args.batch
    out["batch_median_ms"] = st["median_ms"]
    out["batch_p99_ms"] = st["p99_ms"]
    out["frames_per_s"] = args.batch / (st["median_ms"] / 1e3)
    return out


if __name__ == "__main__":
    sys.exit(main())
