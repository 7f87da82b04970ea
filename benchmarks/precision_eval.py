"""Accuracy of reduced precisions against fp32: the paper's evaluation protocol on simulated images (score > 0.05,
NMS 0.1, ``gixdrt.train.evaluate.compare``) and the real frame's peaks, each precision on the runtime that runs it
(fp32 and int8: ONNX Runtime; bf16: PyTorch on the CPU, autocast).

    python benchmarks/precision_eval.py [--precisions fp32 bf16 int8] [--n 200] [--seed 777] [--out FILE.json]

Prints the side-by-side table and writes JSON (default benchmarks/results/precision-eval.json): per precision the
paper's metrics, the differences from fp32 in points, and on the published real frame the number of peaks and the
largest |Δq| (Å⁻¹) against fp32's peaks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import environment, save  # noqa: E402

RUNTIME = {"fp32": "onnxruntime", "fp16": "onnxruntime", "int8": "onnxruntime", "bf16": "torch"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "bf16", "int8"], choices=list(RUNTIME))
    ap.add_argument("--model", default="default")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--seed", type=int, default=777)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="default benchmarks/results/precision-eval.json")
    args = ap.parse_args(argv)
    if "fp32" not in args.precisions:
        args.precisions.insert(0, "fp32")

    from gixdrt.geometry import load_config
    from gixdrt.gixd import PeakDetector
    from gixdrt.gixd.pipeline import Pipeline
    from gixdrt.io import fetch_published, read_frame
    from gixdrt.train.evaluate import compare

    t0 = time.time()

    def detector(precision, **kw):
        return PeakDetector(args.model, backend=RUNTIME[precision], precision=precision, threads=args.threads, **kw)

    protocol = {"score_threshold": 0.05, "nms_iou": 0.1}  # the paper's (the card's thresholds otherwise)
    dets = {}
    for p in args.precisions:
        d = detector(p, **protocol)
        d.model_spec = f"{p} ({RUNTIME[p]})"
        dets[p] = d
    res = compare(list(dets.values()), n=args.n, seed=args.seed, batch=8, progress=False, print_table=True)
    models = dict(zip(args.precisions, (r.summary() for r in res.values())))
    keys = ("detected_pct", "fp_per_target_pct", "dq_p95_px")
    diff = {p: {k: models[p][k] - models["fp32"][k] for k in keys} for p in args.precisions if p != "fp32"}
    assets = fetch_published()
    cfg = load_config(assets.config)
    frame = read_frame(assets.frame)
    q = {p: sorted(float(v) for v in Pipeline(cfg, detector(p)).detect(frame).q) for p in args.precisions}
    real = {p: {"peaks": len(v), "max_abs_dq_vs_fp32": (max(abs(a - b) for a, b in zip(v, q["fp32"]))
                                                          if len(v) == len(q["fp32"]) else None)}
            for p, v in q.items()}
    payload = {"benchmark": "reduced precisions vs fp32 (the paper's protocol on simulated images; the real frame)",
               "model": args.model, "n_images": args.n, "seed": args.seed, "size": [512, 512], **protocol,
               "runtimes": {p: RUNTIME[p] for p in args.precisions}, "models": models,
               "difference_vs_fp32_points": diff, "real_frame": real, "seconds": round(time.time() - t0, 1),
               "environment": environment()}
    for p, d in diff.items():
        print(f"{p}: detected {d['detected_pct']:+.2f} points, false positives per target "
              f"{d['fp_per_target_pct']:+.2f}, |ΔQ| p95 {d['dq_p95_px']:+.3f} px; real frame {real[p]['peaks']} "
              f"peaks, max |Δq| {real[p]['max_abs_dq_vs_fp32']}")
    print(f"→ {save('precision-eval', payload, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
