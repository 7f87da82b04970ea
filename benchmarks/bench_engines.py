"""Detector engines side by side on the published real frame: latency, frames/s, stages and peak memory.

Engines (``gixdrt.bench.ENGINES``): ``torch``, ``onnxruntime`` (fp32), ``onnxruntime-fp16`` and ``onnxruntime-int8``
(the dense graph quantised, :mod:`gixdrt.export.quantize`) on the CPU;
``torch-cuda``, ``onnxruntime-cuda``, ``onnxruntime-cuda-fp16`` and ``tensorrt`` on a GPU. An engine that
cannot run here is listed as "unavailable: <reason>". Input: the published real frame preprocessed to its
512×1024 contrast image; batch B is B copies. Batch sizes: 1 and 8 on the CPU, 1, 8, 32 and 64 on a GPU
(``--batches`` sets them for all). The measurement is ``gixdrt.bench.measure`` (as ``gixdrt bench``):
``--warmup`` untimed calls after a first one, then ``--runs`` timed calls; median and p99 latency per batch,
frames/s = B / median, per-stage medians (``Detector.last_timings``) and peak RSS. Each engine ×
batch runs in a fresh process, so its peak RSS (VmHWM of the timed runs) is its own; a measurement whose
first call had to export the ONNX graphs is run once more, with the graphs cached.

    python benchmarks/bench_engines.py [--runs 20] [--warmup 3] [--batches 1,8] [--backends torch,onnxruntime]
                                       [--model published] [--out FILE.json] [--no-readme]
    python benchmarks/bench_engines.py --render benchmarks/results/engines-cpu.json   # table + README only
    python benchmarks/bench_engines.py --baseline HEAD~1 --backends onnxruntime        # side by side with a revision

``--baseline REV`` installs git revision REV into a fresh environment (its ``[test]`` extra: what it needs to
export graphs) and measures every engine × batch there too, alternating with this checkout's measurement, so that
the load of a shared machine falls on both alike; the result holds both and their frames/s ratio.

Prints a Markdown table, writes JSON (default benchmarks/results/engines-cpu.json, engines-cpu-cuda.json
when GPU engines ran) and the table into benchmarks/README.md between ``<!-- engines:begin -->`` and
``<!-- engines:end -->``. Also the speed-up of ONNX Runtime over PyTorch at batch 1 (CPU goal: ≥ 1.5×), and of each
reduced precision over fp32 on the same runtime.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, remove_revision, revision_python, save

README = Path(__file__).resolve().parent / "README.md"
BEGIN, END = "<!-- engines:begin -->", "<!-- engines:end -->"
CPU_BATCHES, GPU_BATCHES = (1, 8), (1, 8, 32, 64)
#: the issue's CPU goal: ONNX Runtime frames/s over PyTorch's at batch 1
CPU_GOAL = 1.5


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers separated by commas, e.g. 1,8")
    return values


def _names(values: list[str]) -> list[str]:
    from gixdrt.bench import ENGINES

    names = [v for item in values for v in item.split(",") if v]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise SystemExit(f"bench_engines: unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    return names


def versions() -> dict[str, str | None]:
    import importlib.metadata as md

    out: dict[str, str | None] = {}
    for name in ("gixdrt", "torch", "onnxruntime", "numpy", "numba", "onnx", "tensorrt"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def device_info() -> dict:
    from _common import _cpu_name

    info = {"cpu": _cpu_name(), "cores": os.cpu_count(), "gpu": None}
    try:
        import torch

        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def run(args) -> dict:
    from gixdrt.bench import ENGINES, engine_status, published_image, run_isolated

    engines = _names(args.backends)
    image, label = published_image()
    results: dict = {
        "benchmark": "engines",
        "model": args.model,
        "input": f"{label}, contrast image {image.shape[0]}×{image.shape[1]}",
        "settings": {"runs": args.runs, "warmup": args.warmup, "batches": args.batches, "engines": engines,
                     "threads": args.threads, "isolation": "one fresh process per engine × batch"},
        "device": device_info(),
        "versions": versions(),
        "engines": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-engines-") as tmp:
        npy = Path(tmp) / "image.npy"
        np.save(npy, image)
        base_py = None
        if args.baseline:
            print(f"installing revision {args.baseline} for the side-by-side measurement …", file=sys.stderr)
            base_py = revision_python(args.baseline, Path(tmp), extras="[test]")
            results["baseline"] = {"revision": args.baseline, "engines": {}}
        for name in engines:
            backend, device, precision = ENGINES[name]
            entry: dict = {"backend": backend, "device": device, "precision": precision}
            results["engines"][name] = entry
            why = engine_status(name)
            if why:
                entry["unavailable"] = why
                print(f"{name}: unavailable: {why}", file=sys.stderr)
                continue
            batches = args.batches or (GPU_BATCHES if device == "cuda" else CPU_BATCHES)
            entry["batches"] = {}
            for batch in batches:
                t0 = time.perf_counter()
                kwargs = {"model": args.model, "backend": backend, "device": device, "precision": precision,
                          "threads": args.threads, "batch": batch, "runs": args.runs, "warmup": args.warmup,
                          "input_label": label}
                res = run_isolated(npy, timeout=args.timeout, **kwargs)
                if res.get("graphs_exported"):  # measure again with the graphs cached (see gixdrt.bench)
                    res = run_isolated(npy, timeout=args.timeout, **kwargs)
                res["bench_seconds"] = time.perf_counter() - t0
                entry["batches"][str(batch)] = res
                if base_py is not None:
                    base = run_isolated(npy, timeout=args.timeout, python=base_py, **kwargs)
                    if base.get("graphs_exported"):
                        base = run_isolated(npy, timeout=args.timeout, python=base_py, **kwargs)
                    results["baseline"]["engines"].setdefault(name, {})[str(batch)] = base
                    if "error" not in base and "error" not in res:
                        ratio = res["frames_per_s"] / base["frames_per_s"]
                        base["ratio_frames_per_s"] = ratio
                        print(f"{name} batch {batch}: {args.baseline} {base['frames_per_s']:.3f} frames/s, this "
                              f"checkout {res['frames_per_s']:.3f} frames/s ({ratio:.3f}×)", file=sys.stderr)
                if "error" in res:
                    print(f"{name} batch {batch}: failed: {res['error']}", file=sys.stderr)
                else:
                    print(f"{name} batch {batch}: median {res['latency']['median_ms']:.1f} ms, "
                          f"{res['frames_per_s']:.2f} frames/s ({res['bench_seconds']:.0f} s)", file=sys.stderr)
        if base_py is not None:
            remove_revision(args.baseline, Path(tmp))
    results["speedup"] = speedups(results)
    results["environment"] = environment()
    return results


def _ok(results: dict, name: str, batch: int) -> dict | None:
    res = results["engines"].get(name, {}).get("batches", {}).get(str(batch))
    return res if res and "error" not in res else None


def speedups(results: dict) -> dict:
    """ONNX Runtime engines' frames/s over PyTorch's on the same device, per batch; the CPU goal at batch 1."""
    out: dict = {}
    for name, entry in results["engines"].items():
        if entry["backend"] == "torch" and entry["precision"] == "bf16":  # bf16 on PyTorch over ONNX Runtime fp32
            for batch in entry.get("batches", {}):
                a, c = _ok(results, name, int(batch)), _ok(results, "onnxruntime", int(batch))
                if a and c:
                    out.setdefault(f"{name}/onnxruntime", {})[batch] = a["frames_per_s"] / c["frames_per_s"]
        if entry["backend"] != "onnxruntime":
            continue
        base = "torch" if entry["device"] == "cpu" else "torch-cuda"
        for batch in entry.get("batches", {}):
            a, b = _ok(results, name, int(batch)), _ok(results, base, int(batch))
            if a and b:
                out.setdefault(f"{name}/{base}", {})[batch] = a["frames_per_s"] / b["frames_per_s"]
            fp32 = "onnxruntime" if entry["device"] == "cpu" else "onnxruntime-cuda"
            c = _ok(results, fp32, int(batch))
            if entry["precision"] != "fp32" and a and c:  # reduced precision over fp32, same runtime
                out.setdefault(f"{name}/{fp32}", {})[batch] = a["frames_per_s"] / c["frames_per_s"]
    ratio = out.get("onnxruntime/torch", {}).get("1")
    out["cpu_goal"] = {"what": "onnxruntime (fp32, CPU) frames/s over torch's at batch 1", "goal": CPU_GOAL,
                       "speedup": ratio, "met": None if ratio is None else ratio >= CPU_GOAL}
    return out


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown(results: dict) -> str:
    """The results as a Markdown table with a heading line and the speed-ups."""
    from gixdrt.model.config import STAGES

    s, d = results["settings"], results["device"]
    env = results.get("environment", {})
    where = f"{d['cpu']}, {d['cores']} cores" + (f", {d['gpu']}" if d.get("gpu") else "")
    v = results["versions"]
    lines = [
        (f"Model `{results['model']}` on the {results['input']}; {where}; gixdrt {v.get('gixdrt')}, torch "
         f"{v.get('torch')}, onnxruntime {v.get('onnxruntime')}; {s['runs']} timed calls after {s['warmup']} warm-up "
         f"per row, each row in a fresh process{'; ' + env['date'] if env.get('date') else ''}."),
        "",
        "| engine | batch | median ms | p99 ms | frames/s | " + " | ".join(STAGES) + " | peak RSS MiB (Δ) |",
        "|---|--:|--:|--:|--:|" + "--:|" * len(STAGES) + "--:|",
    ]
    empty = " |" * (len(STAGES) + 4)
    for name, entry in results["engines"].items():
        if "unavailable" in entry:
            lines.append(f"| {name} | | unavailable: {_cell(entry['unavailable'])} |" + empty[:-2])
            continue
        for batch, res in entry.get("batches", {}).items():
            if "error" in res:
                lines.append(f"| {name} | {batch} | failed: {_cell(res['error'])} |" + empty[:-2])
                continue
            lat, mem = res["latency"], res["memory"]
            stages = " | ".join(f"{res['stages'][k]['median_ms']:.1f}" if k in res["stages"] else "–" for k in STAGES)
            peak, delta = mem.get("peak_rss_run_bytes"), mem.get("run_delta_bytes")
            rss = "–" if peak is None else f"{peak / 2**20:.0f}" + ("" if delta is None else f" ({delta / 2**20:+.0f})")
            lines.append(f"| {name} | {batch} | {lat['median_ms']:.1f} | {lat['p99_ms']:.1f} | "
                         f"{res['frames_per_s']:.2f} | {stages} | {rss} |")
    lines.append("")
    sp = results.get("speedup", {})
    for pair, per_batch in sp.items():
        if pair == "cpu_goal":
            continue
        text = ", ".join(f"batch {b} {r:.2f}×" for b, r in per_batch.items())
        lines.append(f"- frames/s of {pair.replace('/', ' over ')}: {text}")
    goal = sp.get("cpu_goal", {})
    base = results.get("baseline")
    model_torch = (base or {}).get("engines", {}).get("torch", {}).get("1") if base else None
    ort = _ok(results, "onnxruntime", 1)
    if model_torch and "error" not in model_torch and ort:
        # the goal was set against the PyTorch model (its own ops between the graphs), which the baseline's torch
        # backend ran; this checkout's torch backend runs the same C++ kernels as onnxruntime between the graphs
        ratio = ort["frames_per_s"] / model_torch["frames_per_s"]
        lines.append(f"- CPU goal, onnxruntime ≥ {CPU_GOAL}× the PyTorch model at batch 1 (revision {base['revision']}'s "
                     f"torch backend, PyTorch ops between the graphs): {ratio:.2f}× — {'met' if ratio >= CPU_GOAL else 'not met'}; "
                     f"over this checkout's torch backend, which runs the same kernels between the graphs: "
                     f"{goal['speedup']:.2f}×")
    elif goal.get("speedup") is not None:
        lines.append(f"- CPU goal, onnxruntime over torch at batch 1 ≥ {goal['goal']}×: {goal['speedup']:.2f}× — "
                     f"{'met' if goal['met'] else 'not met'}")
    else:
        lines.append(f"- CPU goal, onnxruntime over torch at batch 1 ≥ {goal.get('goal', CPU_GOAL)}×: not measured")
    if base:
        for name, per_batch in base["engines"].items():
            text = ", ".join(f"batch {b} {r['ratio_frames_per_s']:.3f}×" for b, r in per_batch.items()
                             if "ratio_frames_per_s" in r)
            lines.append(f"- {name} frames/s over revision {base['revision']}'s, measured side by side: {text}")
    lines.append("- stage columns: medians in ms (`PeakDetector.last_timings`; not timed on a GPU); latency is "
                 "the whole call. Peak RSS: the high-water mark over the timed calls, Δ over the process before the detector was "
                 "made (see `gixdrt/bench.py`).")
    return "\n".join(lines)


_README_HEAD = """# Benchmarks

"""


def update_readme(path: Path, table: str) -> Path:
    """Put ``table`` between the engines markers of ``path`` (the section is appended when absent)."""
    text = path.read_text(encoding="utf-8") if path.is_file() else _README_HEAD
    block = f"{BEGIN}\n{table}\n{END}"
    if BEGIN in text and END in text and text.index(BEGIN) < text.index(END):
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + f"\n\n## Engines\n\n{block}\n"
    path.write_text(text, encoding="utf-8")
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20, help="timed calls per engine and batch (default 20)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls after the first (default 3)")
    ap.add_argument("--batches", type=_ints, default=None,
                    help="batch sizes, e.g. 1,8 (default: 1,8 on the CPU, 1,8,32,64 on a GPU)")
    ap.add_argument("--backends", nargs="+", default=None, metavar="ENGINE",
                    help="engines, space- or comma-separated (default: all of gixdrt.bench.ENGINES)")
    ap.add_argument("--model", default="published", help="model name or path (default published)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime CPU threads (default: one per core)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per engine × batch process (default 3600)")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON result (default benchmarks/results/engines-cpu.json, engines-cpu-cuda.json with a GPU)")
    ap.add_argument("--readme", type=Path, default=README, help="Markdown file to update (default benchmarks/README.md)")
    ap.add_argument("--no-readme", action="store_true", help="do not touch the README")
    ap.add_argument("--baseline", metavar="REV", help="also measure this git revision, side by side (see above)")
    ap.add_argument("--render", type=Path, metavar="FILE.json",
                    help="measure nothing: print the table of a result file and update the README from it")
    args = ap.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        ap.error("--runs must be ≥ 1 and --warmup ≥ 0")

    if args.render:
        results = json.loads(args.render.read_text(encoding="utf-8"))
    else:
        from gixdrt.bench import ENGINES

        args.backends = args.backends or list(ENGINES)
        results = run(args)
        ran_gpu = any(e["device"] == "cuda" and e.get("batches") for e in results["engines"].values())
        out = args.out or RESULTS / f"engines-cpu{'-cuda' if ran_gpu else ''}.json"
        path = save("engines", results, out)
        print(f"saved {path}", file=sys.stderr)
    table = markdown(results)
    print(table)
    if not args.no_readme:
        print(f"updated {update_readme(args.readme, table)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
