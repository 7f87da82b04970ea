"""Time the detector on the published real frame, per stage and end to end (torch backend).

Stages: preprocess (remap + contrast, Numba), dense (backbone + FPN + RPN head), proposals, RoIAlign, head,
final filter; then end-to-end frames/s from the raw frame to the peak table. CPU always; CUDA too when
PyTorch sees a GPU.

    python benchmarks/bench_detect.py [--runs 20] [--model published] [--batch 1 8]

Prints a table and writes JSON under benchmarks/results/.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save, timeit


def _stats(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "runs": len(ms)}


def bench_device(device: str, backend: str, frame, cfg, model_spec: str, runs: int, batches: list[int]) -> dict:
    import torch

    from gixdrt.engine import Detector
    from gixdrt.pipeline import Pipeline
    from gixdrt.preprocess import Preprocessor

    det = Detector(model_spec, backend=backend, device=device)
    pre = Preprocessor(cfg)
    processed = pre.contrast(pre.polar(frame))
    out: dict = {"device": device, "backend": backend}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
    out["preprocess"] = timeit(lambda: pre.contrast(pre.polar(frame)), runs)
    for batch in batches:
        x = np.broadcast_to(processed, (batch,) + processed.shape).copy()
        for _ in range(2):  # warm-up (graphs exported/loaded, anchors cached, allocator warmed)
            det.boxes(x)
        per_stage: dict[str, list[float]] = {}
        for _ in range(runs):
            if backend == "torch":
                timings = det.model.trace(torch.from_numpy(x)[:, None].to(device)).timings
            else:
                det.boxes(x)
                timings = det.last_timings
            for k, v in timings.items():
                per_stage.setdefault(k, []).append(v)
        stages = {k: _stats(v) for k, v in per_stage.items()}
        total = sum(s["median_ms"] for s in stages.values())
        out[f"batch{batch}"] = {"stages": stages, "model_median_ms": total, "model_frames_per_s": batch / (total / 1e3)}
    pipe = Pipeline(cfg, det)
    n_peaks = len(pipe.detect(frame))
    e2e = timeit(lambda: pipe.detect(frame), runs, warmup=2,
                 sync=(torch.cuda.synchronize if device.startswith("cuda") else None))
    out["end_to_end"] = {**e2e, "frames_per_s": 1e3 / e2e["median_ms"], "peaks": n_peaks}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per measurement (default 20)")
    ap.add_argument("--model", default="published", help="model name or path (default published)")
    ap.add_argument("--batch", type=int, nargs="+", default=[1], help="batch sizes for the model stages (default 1)")
    ap.add_argument("--backends", nargs="+", default=["torch", "onnxruntime"], help="detector backends to time")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    import torch

    from gixdrt.geometry import load_config
    from gixdrt.io import fetch_published, read_frame

    assets = fetch_published()
    cfg = load_config(assets.config)
    frame = read_frame(assets.frame)
    results: dict = {"model": args.model, "frame": assets.frame.name, "torch": torch.__version__,
                     "torch_threads": torch.get_num_threads(), "devices": {}}
    from gixdrt.engine import backend_status

    status = backend_status()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        for backend in args.backends:
            why = status.get((backend, dev), "unknown backend")
            if why is not None:
                print(f"skipping {backend} on {dev}: {why}")
                continue
            t0 = time.perf_counter()
            key = f"{backend}/{dev}"
            results["devices"][key] = bench_device(dev, backend, frame, cfg, args.model, args.runs, args.batch)
            results["devices"][key]["bench_seconds"] = time.perf_counter() - t0
    results["environment"] = environment()

    for dev, r in results["devices"].items():
        print(f"== {dev} ({r.get('gpu', results['environment']['processor'])}, torch threads {results['torch_threads']})")
        print(f"  {'preprocess (remap + contrast)':32s} {r['preprocess']['median_ms']:9.2f} ms  p99 {r['preprocess']['p99_ms']:9.2f}")
        for batch in args.batch:
            b = r[f"batch{batch}"]
            for name, st in b["stages"].items():
                print(f"  batch {batch:<3d} {name:22s} {st['median_ms']:9.2f} ms  p99 {st['p99_ms']:9.2f}")
            print(f"  batch {batch:<3d} {'model total':22s} {b['model_median_ms']:9.2f} ms  ({b['model_frames_per_s']:.2f} frames/s)")
        e = r["end_to_end"]
        print(f"  end to end (raw frame → peaks)  {e['median_ms']:9.2f} ms  p99 {e['p99_ms']:9.2f}  "
              f"{e['frames_per_s']:.2f} frames/s, {e['peaks']} peaks")
    path = save("detect-" + "-".join(devices), results, args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
