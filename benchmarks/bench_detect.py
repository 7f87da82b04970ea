"""The detector's plan on the published real frame, from the raw frame to the peak table, per stage and per backend.

Stages (``PeakDetector.last_timings``): polar (remap), contrast, dense (backbone + FPN + RPN head), proposals,
roi_align, head, postprocess (final filter and intensities); then end to end: a ``Pipeline`` from the raw frame
to the peak table. Every backend that runs here (torch and onnxruntime on the CPU; torch-cuda, onnxruntime-cuda and
tensorrt too with a GPU), each through the same plan.

    python benchmarks/bench_detect.py [--runs 20] [--model default] [--backends torch onnxruntime]
                                      [--precisions fp32 bf16 int8] [--threads 2]

Prints a table and writes JSON under benchmarks/results/ (``detect-cpu.json``, ``detect-cpu-cuda.json``).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save, timeit  # noqa: E402

CHOICES = (("torch", "cpu"), ("onnxruntime", "cpu"), ("torch-cuda", "cuda"), ("onnxruntime", "cuda"),
           ("tensorrt", "cuda"))


def bench_backend(backend: str, device: str, frame, cfg, model_spec: str, runs: int, precision: str = "fp32",
                  threads: int | None = None) -> dict:
    from gixdrt.bench import summarize
    from gixdrt.geometry import polar_map
    from gixdrt.gixd import PeakDetector, Pipeline, RawInput

    det = PeakDetector(model_spec, backend=backend, device=device, precision=precision, threads=threads)
    raw = RawInput(polar_map(cfg.geometry), frame.dtype.name)
    stack = frame[None, None]
    out: dict = {"backend": backend, "device": device, "precision": precision, "kernels": det.kernels.name}
    for _ in range(2):  # warm-up: sessions, graphs, kernels
        det.run(stack, input="raw", raw=raw, contrast=cfg.contrast, timed=True)
    per_stage: dict[str, list[float]] = {}
    for _ in range(runs):
        det.run(stack, input="raw", raw=raw, contrast=cfg.contrast, timed=True)
        for k, v in det.last_timings.items():
            per_stage.setdefault(k, []).append(v)
    out["stages"] = {k: summarize(v) for k, v in per_stage.items()}
    pipe = Pipeline(cfg, det)
    n_peaks = len(pipe.detect(frame))
    e2e = timeit(lambda: pipe.detect(frame), runs, warmup=2)
    out["end_to_end"] = {**e2e, "frames_per_s": 1e3 / e2e["median_ms"], "peaks": n_peaks}
    det.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed runs per measurement (default 20)")
    ap.add_argument("--model", default="default", help="model name or path (default: default)")
    ap.add_argument("--backends", nargs="+", default=None, help="backends to time (default: all that run here)")
    ap.add_argument("--precisions", nargs="+", default=["fp32"], choices=["fp32", "fp16", "bf16", "int8"],
                    help="precisions to time, each where its backend runs it (default: fp32; torch: fp32 and bf16; "
                         "int8: onnxruntime)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: one per core)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args(argv)

    from gixdrt.engine import backend_status
    from gixdrt.geometry import load_config
    from gixdrt.io import fetch_published, read_frame

    assets = fetch_published()
    cfg = load_config(assets.config)
    frame = read_frame(assets.frame)
    results: dict = {"model": args.model, "frame": assets.frame.name, "backends": {}}
    status = backend_status()
    for backend, device in CHOICES:
        if args.backends and backend not in args.backends:
            continue
        why = status[backend, device]
        if why is not None:
            print(f"skipping {backend} on {device}: {why}")
            continue
        for precision in args.precisions:
            if (precision not in ("fp32", "bf16") and backend == "torch") or (precision == "int8" and backend != "onnxruntime") \
                    or (precision == "bf16" and backend != "torch"):
                continue
            t0 = time.perf_counter()
            key = f"{backend}/{device}" + ("" if precision == "fp32" else f"/{precision}")
            results["backends"][key] = bench_backend(backend, device, frame, cfg, args.model, args.runs, precision,
                                                     args.threads)
            results["backends"][key]["bench_seconds"] = time.perf_counter() - t0
    results["environment"] = environment()

    for key, r in results["backends"].items():
        print(f"== {key} ({r['kernels']}; {results['environment']['processor']})")
        for name, st in r["stages"].items():
            print(f"  {name:22s} {st['median_ms']:9.2f} ms  p99 {st['p99_ms']:9.2f}")
        e = r["end_to_end"]
        print(f"  end to end (raw frame → peak table) {e['median_ms']:9.2f} ms  p99 {e['p99_ms']:9.2f}  "
              f"{e['frames_per_s']:.2f} frames/s, {e['peaks']} peaks")
    devices = sorted({r["device"] for r in results["backends"].values()}, key=lambda d: d != "cpu")
    path = save("detect-" + "-".join(devices or ["cpu"]), results, args.out)
    print(f"saved {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
