"""Everything gixdrt checks on a GPU, in one run of a few minutes: the GPU tests, then the GPU benchmarks.

    bash benchmarks/gpu_check.sh                         # on the GPU machine: unpack, build, run this, collect
    python benchmarks/gpu_check.py [--out DIR] [--skip-tests] [--runs 20] [--device cuda]
    python benchmarks/gpu_check.py --device cpu --runs 2 --batches 1 --skip-tests   # the same code, on a CPU

1. ``pytest -m needs_gpu`` (every GPU test: kernels on device arrays, the plan on torch-cuda/onnxruntime/TensorRT
   against the CPU, raw frames kept on the device, CUDA graphs, the TensorRT plugin where TensorRT exists);
   the counts and every failure go into the result.
2. Raw uint16 frames (the published real frame, uploaded once) → peaks with ``torch-cuda`` at batch 1, 16 and
   64, fp32 and fp16: median and p99 latency per batch, frames/s, and the host → device copy of a batch.
3. The dense graph alone (captured CUDA graph, CUDA events): its share of the GPU's dense fp16 tensor-core peak
   (87 GFLOP per 512×1024 frame: the convolutions and the FPN/RPN head, counted from the layer shapes).
4. Kernels against their references on the real frame: polar remap, contrast, decode_topk, nms_fixed,
   decode_final and RoIAlign on the device (time, and the largest difference from the host result).
5. The powder U-Net plan (default powder model) on a generated 2880² frame with ``PowderMasker(device=...)``:
   frames/s, the stages, and the log-odds and mask against the CPU plan.

Writes ``gpu-check-<gpu>.json`` into ``--out`` (default ``benchmarks/results/``) and prints a summary. Every part
has its own time limit so that the whole stays within about 8 minutes on an H100; a part that fails is recorded
with its error and the others still run.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment

ROOT = Path(__file__).resolve().parents[1]
#: dense graph floating-point operations per 512×1024 frame (multiply-adds × 2), scaling with H·W
DENSE_GFLOP_512X1024 = 87.0
#: dense fp16 tensor-core peak (TFLOP/s, no sparsity) by GPU name
FP16_PEAK_TFLOPS = {"H100 80GB HBM3": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H200": 989.0, "A100": 312.0,
                    "L40S": 362.0, "L4": 121.0}


def _peak(name: str) -> float | None:
    for key, value in FP16_PEAK_TFLOPS.items():
        if key in name:
            return value
    return None


def run_tests(out: Path, timeout: float) -> dict:
    xml = out / "gpu-tests.xml"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "needs_gpu", "-p", "no:cacheprovider",
                               f"--junitxml={xml}", str(ROOT / "tests")], capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        tail = proc.stdout.strip().splitlines()[-15:]
        code = proc.returncode
    except subprocess.TimeoutExpired as exc:
        tail, code = [f"timed out after {timeout} s", *(exc.stdout or b"").decode(errors="replace").splitlines()[-10:]], None
    summary = {"seconds": round(time.perf_counter() - t0, 1), "exit": code, "tail": tail}
    if xml.is_file():
        text = xml.read_text()
        m = re.search(r'tests="(\d+)".*?failures="(\d+)".*?skipped="(\d+)"', text) or \
            re.search(r'errors="(\d+)" failures="(\d+)" skipped="(\d+)" tests="(\d+)"', text)
        summary["junit"] = m.group(0) if m else None
        summary["failed"] = re.findall(r'<testcase classname="([^"]+)" name="([^"]+)"[^>]*>\s*<(?:failure|error)', text)
    return summary


def _frames(batch: int, frame: np.ndarray) -> np.ndarray:
    return np.array(np.broadcast_to(frame, (batch, 1, *frame.shape)))  # a writable copy


def bench_raw(device: str, batches: list[int], runs: int, precisions: list[str]) -> list[dict]:
    """Raw uint16 frames on the device → peaks with torch-cuda (torch on a CPU check run)."""
    import torch

    from gixdrt.geometry import load_config, polar_map
    from gixdrt.gixd import PeakDetector, RawInput
    from gixdrt.io import fetch_published, read_frame

    assets = fetch_published(quiet=True)
    cfg = load_config(assets.config)
    frame = np.clip(read_frame(assets.frame), 0, 65535).astype(np.uint16)  # the detector's integer counts
    pmap = polar_map(cfg.geometry)
    backend = "torch-cuda" if device.startswith("cuda") else "torch"
    rows = []
    for precision in precisions:
        if backend == "torch" and precision != "fp32":
            continue
        det = PeakDetector("default", backend=backend, device=device, precision=precision)
        for batch in batches:
            host = torch.from_numpy(_frames(batch, frame))
            pinned = host.pin_memory() if device.startswith("cuda") else host
            on_dev = pinned.to(device)
            raw = RawInput(pmap, "uint16", 1)
            run = lambda: det.run(on_dev, input="raw", raw=raw, contrast=cfg.contrast)
            found = run()  # builds the executor: graphs captured, kernels compiled
            for _ in range(3):
                run()
            times = []
            for _ in range(runs):
                t0 = time.perf_counter()
                run()
                times.append(time.perf_counter() - t0)
            stages = det.run(on_dev, input="raw", raw=raw, contrast=cfg.contrast, timed=True) and det.last_timings
            uploads = []
            for _ in range(runs):
                t0 = time.perf_counter()
                on_dev.copy_(pinned, non_blocking=True)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                uploads.append(time.perf_counter() - t0)
            med = float(np.median(times))
            rows.append({"backend": backend, "precision": precision, "batch": batch, "median_s": med,
                         "p99_s": float(np.percentile(times, 99)), "frames_per_s": batch / med,
                         "upload_median_s": float(np.median(uploads)), "peaks_frame0": len(found[0].scores),
                         "stage_s": stages})
            print(f"  raw → peaks {backend} {precision} batch {batch:3d}: {med * 1e3:8.2f} ms/batch, "
                  f"{batch / med:9.1f} frames/s, upload {np.median(uploads) * 1e3:.2f} ms, "
                  f"{len(found[0].scores)} peaks", flush=True)
        det.close()
    return rows


def bench_dense(device: str, batches: list[int], runs: int, precisions: list[str], gpu_name: str) -> list[dict]:
    """The dense graph alone (captured CUDA graph on a GPU), timed with CUDA events."""
    import torch

    from gixdrt.engine.pyt import TorchRunner
    from gixdrt.gixd.artifacts import ModelGraphs
    from gixdrt.model.config import DENSE_OUTPUTS

    graphs = ModelGraphs.open("default")
    h, w = 512, 1024
    gflop = DENSE_GFLOP_512X1024 * (h * w) / (512 * 1024)
    peak = _peak(gpu_name)
    cuda = device.startswith("cuda")
    rows = []
    for precision in precisions:
        if not cuda and precision != "fp32":
            continue
        for batch in batches:
            module = graphs.torch_module("dense", precision=precision, fold=True, channels_last=cuda and precision == "fp16")
            runner = TorchRunner(module, {"images": (np.float32, (batch, 1, h, w))}, DENSE_OUTPUTS, device=device,
                                 precision=precision, cuda_graph=cuda, cudnn_benchmark=cuda).activate()
            x = torch.rand(batch, 1, h, w, device=device)
            for _ in range(3):
                runner.infer({"images": x}, check=False)
            times = []
            for _ in range(runs):
                if cuda:
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    runner.infer({"images": x}, check=False)
                    end.record()
                    end.synchronize()
                    times.append(start.elapsed_time(end) / 1e3)
                else:
                    t0 = time.perf_counter()
                    runner.infer({"images": x}, check=False)
                    times.append(time.perf_counter() - t0)
            med = float(np.median(times))
            tflops = gflop * batch / med / 1e3
            rows.append({"precision": precision, "batch": batch, "median_s": med, "frames_per_s": batch / med,
                         "gflop_per_frame": gflop, "tflops": tflops, "fp16_peak_tflops": peak,
                         "share_of_fp16_peak": (tflops / peak) if peak else None,
                         "cuda_graph": getattr(runner, "graph_captured", False)})
            share = f", {100 * tflops / peak:.1f} % of the fp16 tensor-core peak" if peak else ""
            print(f"  dense {precision} batch {batch:3d}: {med * 1e3:8.2f} ms, {tflops:7.1f} TFLOP/s{share}", flush=True)
            runner.deactivate()
    return rows


def bench_kernels(device: str, runs: int) -> list[dict]:
    """Each kernel on the device against its host result on the real frame (time and largest difference)."""
    import torch

    from gixdrt import kernels as K
    from gixdrt.geometry import load_config, polar_map
    from gixdrt.gixd import PeakDetector
    from gixdrt.io import fetch_published, read_frame

    cuda = device.startswith("cuda")
    impl = "cuda" if cuda else "cpu"
    assets = fetch_published(quiet=True)
    cfg = load_config(assets.config)
    frame = read_frame(assets.frame).astype(np.float32)
    pmap = polar_map(cfg.geometry)
    dev = (lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device)) if cuda else (lambda a: np.ascontiguousarray(a))
    host = (lambda a: a.cpu().numpy() if hasattr(a, "cpu") else np.asarray(a))

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def timed(fn):
        fn()
        sync()
        ts = []
        for _ in range(runs):
            t0 = time.perf_counter()
            fn()
            sync()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    rows = []
    polar_ref = K.polar_remap(frame, pmap, impl="cpu")
    out = dev(np.zeros_like(polar_ref))
    d_frame = dev(frame)
    t = timed(lambda: K.polar_remap(d_frame, pmap, out=out, impl=impl))
    rows.append({"kernel": "polar_remap", "median_s": t, "max_abs_diff": float(np.abs(host(out) - polar_ref).max())})
    c = cfg.contrast
    img_ref = K.contrast(polar_ref, coef=c.coef, clip_limit=c.limit, log=c.log, impl="cpu")
    d_polar, img = dev(polar_ref), dev(np.zeros_like(img_ref))
    t = timed(lambda: K.contrast(d_polar, coef=c.coef, clip_limit=c.limit, log=c.log, out=img, impl=impl))
    rows.append({"kernel": "contrast", "median_s": t, "max_abs_diff": float(np.abs(host(img) - img_ref).max())})
    # the box stages on the real frame's own buffers: the host executor's state after one run
    det = PeakDetector("default", backend="torch", device="cpu")
    det.boxes(img_ref)
    ex = next(iter(det._executors.values()))
    b = {k: np.ascontiguousarray(np.asarray(v)) for k, v in ex.buffers.items() if hasattr(v, "shape")}
    plan = ex.plan
    for name in ("decode_topk", "rpn_nms", "roi_align", "decode_final", "final_nms"):
        stage = plan.stage(name)
        args = [dev(b[a]) if plan.buffers[a].role != "host" else b[a] for a in stage.args]
        kwargs = {k: dev(b[v]) for k, v in stage.kwargs.items()}
        outs = tuple(dev(np.zeros_like(b[o])) for o in stage.outputs)
        fn = K.registry.resolve(stage.op, impl)[1]
        extra = {"stream": torch.cuda.current_stream()} if cuda else {}
        t = timed(lambda: fn(*args, **kwargs, **stage.params, out=outs[0] if len(outs) == 1 else outs, **extra))
        diffs = {}
        for o, got in zip(stage.outputs, outs):
            want = b[o]
            if name == "roi_align":  # only the valid rows are specified
                counts = b["proposal_count"]
                r = plan.buffers["proposals"].shape[1]
                rows_ok = np.concatenate([np.arange(i * r, i * r + counts[i]) for i in range(len(counts))])
                diffs[o] = float(np.abs(host(got)[rows_ok] - want[rows_ok]).max())
            else:
                diffs[o] = float(np.abs(host(got).astype(np.float64) - want.astype(np.float64)).max())
        rows.append({"kernel": f"{stage.op} ({name})", "median_s": t, "max_abs_diff": diffs})
    for r in rows:
        print(f"  kernel {r['kernel']:<26} {r['median_s'] * 1e3:8.3f} ms  max |Δ| {r['max_abs_diff']}", flush=True)
    return rows


def bench_powder(device: str, runs: int) -> dict:
    """The powder plan on the device against the CPU plan on one generated 2880² frame."""
    from gixdrt.powder.plan import PowderMasker
    from gixdrt.sim.powder import PowderSimulator

    f = PowderSimulator(seed=0, size=(2880, 2880)).frame(0)
    cpu = PowderMasker("default", detector_mask=f.detector_mask, geometry=f.geometry).run(f.image)
    dev = "cpu-check" if device == "cpu" else device
    m = PowderMasker("default", runtime="torch", device=dev, detector_mask=f.detector_mask, geometry=f.geometry)
    m.run(f.image)
    times = []
    for _ in range(max(runs, 3)):
        t = time.perf_counter()
        got = m.run(f.image)
        times.append(time.perf_counter() - t)
    m.run(f.image, timed=True)
    med = float(np.median(times))
    return {"device": device, "runs": len(times), "median_s": med, "frames_per_s": 1.0 / med,
            "stages_s": dict(m.timings), "log_odds_max_abs_diff_vs_cpu": float(np.abs(got["log_odds"] - cpu["log_odds"]).max()),
            "mask_pixels_differing_vs_cpu": int(np.count_nonzero(got["spots"] != cpu["spots"])),
            "mask_pixels_cpu": int(cpu["spots"].sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=RESULTS, help="where the JSON goes (default benchmarks/results)")
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check of this script)")
    ap.add_argument("--runs", type=int, default=20, help="timed runs per measurement (default 20)")
    ap.add_argument("--batches", default="1,16,64", help="batch sizes (default 1,16,64)")
    ap.add_argument("--precisions", default="fp32,fp16")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the GPU tests")
    ap.add_argument("--test-timeout", type=float, default=300.0, help="seconds for the GPU tests (default 300)")
    args = ap.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]
    precisions = args.precisions.split(",")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    result: dict = {"benchmark": "gpu-check", "environment": environment(), "device": args.device}
    gpu_name = "cpu"
    try:
        import torch

        if args.device.startswith("cuda"):
            gpu_name = torch.cuda.get_device_name(0)
        result["torch"] = torch.__version__
    except Exception as exc:  # noqa: BLE001 - recorded, the rest still runs
        result["torch"] = f"unavailable: {exc}"
    result["gpu"] = gpu_name
    from gixdrt.engine import backend_status

    result["backends"] = {f"{b} on {d}": why or "available" for (b, d), why in backend_status().items()}
    print(f"gpu_check on {gpu_name}", flush=True)
    parts = [("tests", lambda: run_tests(args.out, args.test_timeout)) if not args.skip_tests else None,
             ("raw_to_peaks", lambda: bench_raw(args.device, batches, args.runs, precisions)),
             ("dense_roofline", lambda: bench_dense(args.device, batches, args.runs, precisions, gpu_name)),
             ("kernels", lambda: bench_kernels(args.device, args.runs)),
             ("powder", lambda: bench_powder(args.device, args.runs))]
    for part in filter(None, parts):
        name, fn = part
        t = time.perf_counter()
        print(f"{name} …", flush=True)
        try:
            result[name] = fn()
        except Exception as exc:  # noqa: BLE001 - one part's failure must not lose the others
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-3000:]}
            print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
        result.setdefault("seconds", {})[name] = round(time.perf_counter() - t, 1)
    result["total_seconds"] = round(time.perf_counter() - t0, 1)
    slug = re.sub(r"[^A-Za-z0-9]+", "-", gpu_name).strip("-").lower() or "gpu"
    path = args.out / f"gpu-check-{slug}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"→ {path} ({result['total_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
