"""Powder spot masking per stage and end to end on one generated frame, for three methods, each in its own process:

- ``unet``: our U-Net plan (:class:`gixdrt.powder.plan.PowderMasker`, the default model on ONNX Runtime, its own
  stage timings);
- ``classical``: the pixel mask search (:func:`gixdrt.powder.classical.pixel_mask_search`; the ring index is built
  once per geometry and reported apart);
- ``authors``: the published recipe (:func:`gixdrt.powder.authors.authors_mask`: disk equalisation, 484 tiles in
  one batch with BatchNorm in training mode) on the weights of our one-channel model (powder-unet-d3).

Stages per frame: read (the frame from a float32 TIFF, page cache warm), normalise (everything up to the network's
input, tile extraction included), network, stitch, threshold (for ``classical``: the whole ring search),
integrate (:func:`gixdrt.powder.integrate.integrate`, what ``gixdrt mask --integrate`` runs: the masked and the
unmasked pattern, 2000 bins in 2θ°, pyFAI's engine built once by a first call and reused, the spots as NaN; what a
changed ``mask=`` per frame would cost pyFAI, which rebuilds its engine, is measured too). End to end: read → mask → integrate, timed as a whole.
Median over the timed runs after a warm-up run (``authors``: warm-up on a 512² crop, 2 timed runs); peak RSS of
each method's process. With a CUDA GPU, the U-Net's frames/s on torch-cuda as well.

    python benchmarks/bench_powder.py [--size 2880] [--runs 5] [--authors-runs 2] [--methods unet,classical,authors]
                                      [--threads 2] [--seed 0] [--quick] [--out FILE.json] [--png FILE.png]

Prints a table and writes benchmarks/results/powder-cpu.json and powder-cpu.png (``--quick``: 1024², one run of
each, into a temporary directory unless --out/--png are given).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, environment, save  # noqa: E402

from gixdrt.powder.integrate import METHOD as PYFAI_METHOD  # noqa: E402

STAGES = ("read", "normalise", "network", "stitch", "threshold", "integrate")
METHODS = ("unet", "unet-bf16", "classical", "authors")  # unet-bf16: the plan on PyTorch, CPU autocast bfloat16
# stage names of each method's own timings → the common stages
PLAN_STAGES = {"normalize": "normalise", "ring": "normalise", "tiles": "normalise", "unet": "network",
               "stitch": "stitch", "mask": "threshold"}  # any other key of the plan's timings is reported as "other"
AUTHORS_STAGES = {"normalize": "normalise", "tiles": "normalise", "network": "network", "stitch": "stitch",
                  "threshold": "threshold"}
BINS = 2000
CROP = 512  # the authors' warm-up runs on this corner of the frame
LABELS = {"unet": "U-Net plan (ours, ONNX Runtime fp32)", "unet-bf16": "U-Net plan (ours, PyTorch bf16)",
          "classical": "pixel mask search", "authors": "published recipe"}
SHORT = {"unet": "U-Net plan\n(ours, fp32)", "unet-bf16": "U-Net plan\n(ours, bf16)", "classical": "pixel mask\nsearch",
         "authors": "published\nrecipe"}


# ------------------------------------------------------------------------------------------------
# child: one method in a fresh process
# ------------------------------------------------------------------------------------------------
def _maxrss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _mask_changed_s(geometry, detector_mask: np.ndarray, image: np.ndarray, spots: np.ndarray) -> float:
    """Seconds of pyFAI's ``integrate1d(image, mask=detector | spots)`` on an integrator whose engine was made for
    another mask (the detector's): what passing each frame's spots as ``mask=`` would cost per frame (pyFAI rebuilds
    its engine); :func:`gixdrt.powder.integrate.integrate` avoids it by marking the spots as NaN."""
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    g = geometry
    det = Detector(pixel1=g.pixel1, pixel2=g.pixel2, max_shape=g.shape)
    ai = AzimuthalIntegrator(dist=g.dist, poni1=g.poni1, poni2=g.poni2, rot1=g.rot1, rot2=g.rot2, rot3=g.rot3,
                             detector=det, wavelength=g.wavelength)
    mask = np.asarray(detector_mask) != 0
    ai.integrate1d(image, BINS, mask=mask, unit="2th_deg", method=PYFAI_METHOD)
    t0 = time.perf_counter()
    ai.integrate1d(image, BINS, mask=mask | spots, unit="2th_deg", method=PYFAI_METHOD)
    return time.perf_counter() - t0


def _quality(spots: np.ndarray, truth: np.ndarray, detector_mask: np.ndarray) -> dict[str, Any]:
    valid = np.asarray(detector_mask) == 0
    s, t = spots & valid, truth & valid
    tp = int((s & t).sum())
    fp = int((s & ~t).sum())
    q: dict[str, Any] = {"masked_px": int(s.sum()), "truth_px": int(t.sum()), "true_positive_px": tp,
                         "false_positive_px": fp, "recall": tp / max(int(t.sum()), 1),
                         "specificity": 1.0 - fp / max(int((valid & ~t).sum()), 1)}
    try:
        from scipy import ndimage

        lab, n = ndimage.label(s, structure=np.ones((3, 3), bool))
        sizes = np.bincount(lab.ravel())[1:]
        q["components"] = int(n)
        q["components_1px"] = int((sizes == 1).sum())
        q["components_1px_false"] = int(((sizes == 1) & (ndimage.maximum(t, lab, np.arange(1, n + 1)) == 0)).sum())
    except ImportError:
        pass
    return q


def run_child(method: str, workdir: Path, runs: int, threads: int) -> dict[str, Any]:
    """Time ``method`` on the frame in ``workdir`` → its result row."""
    from gixdrt.io import read_frame
    from gixdrt.powder.geometry import PowderGeometry

    meta = json.loads((workdir / "frame.json").read_text())
    geom = PowderGeometry(**{**meta["geometry"], "shape": tuple(meta["geometry"]["shape"])})
    dmask = np.load(workdir / "detector_mask.npy")
    truth = np.load(workdir / "spots.npy")
    path = workdir / "frame.tif"
    row: dict[str, Any] = {"method": method, "label": LABELS.get(method, method)}
    setup: dict[str, float] = {}

    if method == "unet-cuda":
        return _cuda_child(path, dmask, geom, runs)
    from gixdrt.powder.integrate import integrate

    def integ(img, spots):  # what gixdrt mask --integrate runs: the masked and the unmasked pattern
        return integrate(img, geom, spots=spots, detector_mask=dmask, npt=BINS, unit="2th_deg")

    t0 = time.perf_counter()
    image = read_frame(path)
    integ(image, np.zeros(image.shape, bool))  # builds and caches pyFAI's engine for this geometry and mask
    setup["integrator_build_s"] = time.perf_counter() - t0
    rss_before = _maxrss_mib()  # Python, the libraries, the frame and the integrator

    if method in ("unet", "unet-bf16"):
        from gixdrt.powder.plan import PowderMasker

        runtime, precision = ("torch", "bf16") if method == "unet-bf16" else ("onnxruntime", "fp32")
        # the geometry: a two-channel model's ring channel needs it (a one-channel one ignores it)
        masker = PowderMasker("default", detector_mask=dmask, threads=threads, geometry=geom, runtime=runtime,
                              precision=precision)
        row["settings"] = {"runtime": masker.runtime, "precision": masker.precision, "threads": threads,
                           **masker.settings.to_dict()}

        def mask(img):
            res = masker.run(img, timed=True)
            st = {s: 0.0 for s in ("normalise", "network", "stitch", "threshold")}
            for k, v in masker.timings.items():
                st[PLAN_STAGES.get(k, "other")] = st.get(PLAN_STAGES.get(k, "other"), 0.0) + float(v)
            return res["spots"], st, dict(masker.timings)

        def warm():
            mask(image)
    elif method == "classical":
        from gixdrt.powder.classical import RingIndex, pixel_mask_search

        t0 = time.perf_counter()
        index = RingIndex.from_geometry(geom, dmask)
        setup["ring_index_build_s"] = time.perf_counter() - t0
        row["settings"] = {"rings": index.n_rings, "n_mad": 3.0, "width_px": 2.0}

        def mask(img):
            t0 = time.perf_counter()
            spots = pixel_mask_search(img, index)
            return spots, {"normalise": None, "network": None, "stitch": None,
                                  "threshold": time.perf_counter() - t0}, {}

        def warm():
            mask(image)
    elif method == "authors":
        import torch

        from gixdrt.powder.authors import authors_mask
        from gixdrt.powder.model import load_unet

        torch.set_num_threads(threads)
        from gixdrt.powder.authors import ONE_CHANNEL

        net = load_unet(ONE_CHANNEL)  # the recipe feeds the frame alone: our one-channel model
        row["settings"] = {"torch": torch.__version__, "threads": threads, "batch": "all tiles",
                           "batch_norm": "training mode (batch statistics)"}

        def mask(img):
            t: dict[str, float] = {}
            spots = authors_mask(img, net, timings=t)
            st = {s: 0.0 for s in ("normalise", "network", "stitch", "threshold")}
            for k, v in t.items():
                st[AUTHORS_STAGES[k]] += v
            return spots, st, t

        def warm():
            c = min(CROP, *image.shape)
            authors_mask(image[:c, :c], net)
    else:
        raise ValueError(f"unknown method {method!r}")

    warm()
    integ(image, np.zeros(image.shape, bool))
    totals, stages, raw = [], [], []
    spots = None
    for _ in range(runs):
        t0 = time.perf_counter()
        img = read_frame(path)
        t1 = time.perf_counter()
        spots, st, own = mask(img)
        t2 = time.perf_counter()
        integ(img, spots)
        t3 = time.perf_counter()
        totals.append(t3 - t0)
        stages.append({"read": t1 - t0, **st, "integrate": t3 - t2})
        raw.append(own)
    peak = _maxrss_mib()
    assert spots is not None
    keys = list(STAGES) + sorted({k for s in stages for k in s} - set(STAGES))
    med = {k: (None if stages[0].get(k) is None else float(np.median([s.get(k, 0.0) for s in stages])))
           for k in keys}
    changed_s = _mask_changed_s(geom, dmask, image, spots)
    row.update({
        "runs": runs,
        "end_to_end_s": {"median": float(np.median(totals)), "min": float(np.min(totals)),
                         "all": [float(x) for x in totals]},
        "stages_s": med,
        "own_timings_median_s": {k: float(np.median([r[k] for r in raw])) for k in (raw[0] if raw[0] else {})},
        "setup_s": setup,
        "integrate_mask_changed_s": changed_s,
        "peak_rss_mib": peak,
        "rss_before_method_mib": rss_before,
        "quality": _quality(spots, truth, dmask),
    })
    return row


def _cuda_child(path: Path, dmask: np.ndarray, geom: Any, runs: int) -> dict[str, Any]:
    """frames/s of the U-Net plan (default model) on the GPU: PowderMasker(device="cuda") runs normalisation, the
    ring channel, the network (torch-cuda, fp32, tiles as on the CPU), stitching and the threshold on the device;
    one copy of the frame in and of the mask and log-odds out per frame."""
    row: dict[str, Any] = {"method": "unet-cuda"}
    try:
        import torch
    except ImportError:
        return {**row, "skipped": "PyTorch is not installed"}
    if not torch.cuda.is_available():
        return {**row, "skipped": "torch.cuda.is_available() is False"}
    from gixdrt.io import read_frame
    from gixdrt.powder.plan import PowderMasker

    img = read_frame(path)
    masker = PowderMasker("default", runtime="torch", device="cuda", detector_mask=dmask, geometry=geom)
    for _ in range(3):
        masker(img)
    torch.cuda.synchronize()
    times = []
    for _ in range(max(runs, 10)):
        t0 = time.perf_counter()
        masker(img)
        times.append(time.perf_counter() - t0)
    masker.run(img, timed=True)
    med = float(np.median(times))
    return {**row, "device": torch.cuda.get_device_name(0), "torch": torch.__version__, "runs": len(times),
            "median_s": med, "frames_per_s": 1.0 / med, "stages_s": dict(masker.timings),
            "what": "raw frame (host) → device, the whole plan on the GPU (fp32), mask and log-odds → host"}


# ------------------------------------------------------------------------------------------------
# parent
# ------------------------------------------------------------------------------------------------
def _write_frame(workdir: Path, size: int, seed: int) -> dict[str, Any]:
    import tifffile

    from gixdrt.sim.powder import PowderSimulator

    f = PowderSimulator(seed=seed, size=(size, size)).frame(0)
    tifffile.imwrite(workdir / "frame.tif", np.ascontiguousarray(f.image, np.float32))
    np.save(workdir / "detector_mask.npy", f.detector_mask)
    np.save(workdir / "spots.npy", f.spots)
    meta = {"geometry": f.geometry.to_dict(), "shape": list(f.image.shape), "dtype": "float32",
            "truth_spot_px": int(f.spots.sum()), "detector_masked_px": int((f.detector_mask != 0).sum())}
    (workdir / "frame.json").write_text(json.dumps(meta))
    return meta


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("gixdrt", "torch", "onnxruntime", "pyFAI", "scipy", "tifffile"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def _fmt(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ["method"] + list(STAGES) + ["end to end", "runs", "peak RSS MiB"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for m, r in rows.items():
        st = r["stages_s"]
        lines.append(" | ".join([r.get("label", m)] + [_fmt(st.get(s)) for s in STAGES]
                                + [_fmt(r["end_to_end_s"]["median"]), str(r["runs"]), f"{r['peak_rss_mib']:.0f}"]))
    return "\n".join(lines)


def plot(rows: dict[str, dict[str, Any]], path: Path, title: str) -> Path:
    """Stacked seconds per stage, one bar per method, at full scale and zoomed to the fast methods; peak RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(rows)
    colors = dict(zip(STAGES, ("#8c8c8c", "#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")))
    totals = [rows[m]["end_to_end_s"]["median"] for m in names]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.8), gridspec_kw={"width_ratios": [3, 3, 2]})
    small = sorted(totals)[:-1] if len(totals) > 1 else totals
    zoom = 1.3 * max(small) if small else None
    for ax, top in ((axes[0], None), (axes[1], zoom)):
        x = np.arange(len(names))
        bottom = np.zeros(len(names))
        for s in STAGES:
            v = np.array([rows[m]["stages_s"].get(s) or 0.0 for m in names])
            ax.bar(x, v, bottom=bottom, color=colors[s], label=s, width=0.6)
            bottom += v
        for i, t in enumerate(totals):
            y = t if top is None or t <= top else top * 0.97
            ax.text(i, y, f"{t:.2f} s" + ("" if top is None or t <= top else " ↑"), ha="center", va="bottom",
                    fontsize=9)
        ax.set_xticks(x, [SHORT.get(m, m) for m in names], fontsize=9)
        ax.set_ylabel("seconds per frame (median)")
        if top is not None:
            ax.set_ylim(0, top * 1.08)
            ax.set_title("zoom on the faster methods", fontsize=10)
        else:
            ax.set_title("per stage, end to end on top", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    rss = [rows[m]["peak_rss_mib"] / 1024 for m in names]
    axes[2].bar(np.arange(len(names)), rss, color="#937860", width=0.6)
    for i, v in enumerate(rss):
        axes[2].text(i, v, f"{v:.1f}", ha="center", va="bottom", fontsize=9)
    axes[2].set_xticks(np.arange(len(names)), [SHORT.get(m, m) for m in names], fontsize=7)
    axes[2].set_ylabel("peak RSS of the process (GiB)")
    axes[2].set_title("memory", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=None, help="frame side in px (default 2880; --quick: 1024)")
    ap.add_argument("--runs", type=int, default=None, help="timed runs of unet and classical (default 5)")
    ap.add_argument("--authors-runs", type=int, default=None, help="timed runs of the authors' recipe (default 2)")
    ap.add_argument("--methods", default=None,
                    help="comma-separated subset of " + ",".join(METHODS) + " (default: all; unet-bf16 only where the "
                         "CPU has AMX/AVX512-BF16)")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime / PyTorch threads (default 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 1024², one timed run each")
    ap.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/powder-cpu.json)")
    ap.add_argument("--png", type=Path, default=None, help="chart (default benchmarks/results/powder-cpu.png)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="method processes at once (default 1; more only for smoke runs: they compete for the cores)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per method's process")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(run_child(args.child, args.workdir, int(args.runs), args.threads)))
        return 0

    if args.methods is None:
        from gixdrt.engine.pyt import cpu_bf16_fast

        args.methods = ",".join(m for m in METHODS if m != "unet-bf16" or cpu_bf16_fast())
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad or not methods:
        ap.error(f"--methods: unknown {', '.join(bad) or '(none given)'}; choose from {', '.join(METHODS)}")
    size = args.size or (1024 if args.quick else 2880)
    if size < 256:
        ap.error(f"--size: the authors' recipe needs ≥ 256 px, got {size}")
    runs = args.runs or (1 if args.quick else 5)
    authors_runs = args.authors_runs or (1 if args.quick else 2)
    if runs < 1 or authors_runs < 1 or args.jobs < 1:
        ap.error("--runs, --authors-runs and --jobs must be ≥ 1")
    scratch = tempfile.TemporaryDirectory(prefix="bench-powder-")
    out = args.out or (Path(tempfile.mkdtemp(prefix="bench-powder-out-")) / "powder-cpu.json" if args.quick
                       else RESULTS / "powder-cpu.json")
    png = args.png or out.with_suffix(".png")

    load_start = [round(x, 2) for x in os.getloadavg()]
    t_start = time.perf_counter()
    rows: dict[str, dict[str, Any]] = {}
    gpu: dict[str, Any]
    with scratch:
        work = Path(scratch.name)
        meta = _write_frame(work, size, args.seed)
        me = str(Path(__file__).resolve())

        def launch(m: str) -> tuple[subprocess.Popen, float]:
            n = authors_runs if m == "authors" else runs
            cmd = [sys.executable, me, "--child", m, "--workdir", str(work), "--runs", str(n), "--threads",
                   str(args.threads)]
            return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), time.perf_counter()

        pending = list(methods)
        while pending:  # --jobs processes at a time (1: one after the other, for timings)
            batch, pending = pending[:args.jobs], pending[args.jobs:]
            procs = {m: launch(m) for m in batch}
            for m, (proc, t0) in procs.items():
                try:
                    stdout, stderr = proc.communicate(timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    for p, _ in procs.values():
                        p.kill()
                    raise SystemExit(f"bench_powder: the {m} process ran past --timeout {args.timeout:g} s") from None
                if proc.returncode != 0:
                    sys.stderr.write(stderr[-4000:])
                    for p, _ in procs.values():
                        p.kill()
                    raise SystemExit(f"bench_powder: the {m} process failed (exit {proc.returncode})")
                rows[m] = json.loads(stdout.strip().splitlines()[-1])
                rows[m]["process_wall_s"] = time.perf_counter() - t0
                print(f"{m}: {rows[m]['end_to_end_s']['median']:.3f} s end to end, peak RSS "
                      f"{rows[m]['peak_rss_mib']:.0f} MiB", flush=True)
        rows = {m: rows[m] for m in methods}
        from gixdrt.engine.base import cuda_gpu

        ok, why = cuda_gpu()
        if ok and "unet" in methods:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "unet-cuda", "--workdir", str(work),
                   "--runs", str(max(runs, 10)), "--threads", str(args.threads)]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
            gpu = (json.loads(res.stdout.strip().splitlines()[-1]) if res.returncode == 0
                   else {"skipped": f"the torch-cuda process failed: {res.stderr.strip()[-300:]}"})
        else:
            gpu = {"skipped": why if not ok else "unet not among --methods"}

    env = environment()
    env.update(_versions())
    env["load_average_1_5_15_start"] = load_start
    env["load_average_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    env["shared_machine"] = ("the cores were shared with other processes (among them a training job; see the load "
                             "averages); " + ("the methods ran one after the other at normal priority" if args.jobs == 1
                                              else f"{args.jobs} methods ran at once: a smoke run, not timings"))
    payload = {
        "benchmark": "powder",
        "frame": {"size": [size, size], "seed": args.seed, **{k: v for k, v in meta.items() if k != "geometry"},
                  "geometry": meta["geometry"]},
        "settings": {"runs": runs, "authors_runs": authors_runs, "threads": args.threads, "quick": args.quick,
                     "jobs": args.jobs,
                     "integrate": {"bins": BINS, "unit": "2th_deg", "method": list(PYFAI_METHOD),
                                   "patterns": "masked and unmasked (gixdrt.powder.integrate.integrate)",
                                   "spots": "NaN (engine cached for the detector mask)"}},
        "stages": list(STAGES),
        "notes": [
            "stages_s: median seconds per frame; null = not a stage of that method. unet: normalise = the plan's "
            "normalize + tiles, network = unet, threshold = mask (threshold and small components). authors: "
            "normalise = log, percentiles, disk equalisation and tiles; network = forward of all tiles and softmax. "
            "classical: threshold = the whole ring search (ring index built once per geometry, setup_s).",
            "end_to_end_s: read → mask → integrate timed as a whole; it includes work outside the named stages "
            "(copies, the plan's executor).",
            "integrate: gixdrt.powder.integrate.integrate (masked and unmasked patterns; spots as NaN, so pyFAI's CSR "
            "engine built for the detector mask is reused); integrate_mask_changed_s is one "
            "integrate1d(mask=detector|spots) whose engine was built for another mask, which pyFAI rebuilds: the "
            "per-frame cost of passing each frame's spots as mask=.",
            "peak_rss_mib: the process's high-water mark (Python, libraries, the frame, the integrator and the "
            "method); rss_before_method_mib: the same before the method was set up.",
            "authors: our depth-3 architecture with our one-channel model's weights (powder-unet-d3) (the published weights are not "
            "available), so its quality numbers say little about the published models; its time and memory are "
            "the recipe's.",
        ],
        "results": rows,
        "gpu": gpu,
        "wall_s": time.perf_counter() - t_start,
        "environment": env,
    }
    path = save("powder-cpu", payload, out)
    title = (f"powder spot masking, one {size}×{size} frame, {env.get('processor', '')} ({env.get('cpu_count')} "
             f"cores, shared; load {load_start[0]} at start)")
    png_path = plot(rows, png, title)
    print()
    print(table(rows))
    for m, r in rows.items():
        extra = ", ".join(f"{k} {v:.2f} s" for k, v in r["setup_s"].items())
        print(f"{m}: once per geometry: {extra}; integrate1d with a changed mask= (engine rebuilt) "
              f"{r['integrate_mask_changed_s']:.2f} s; spots {r['quality']['masked_px']} px, recall "
              f"{r['quality']['recall']:.3f}, {r['quality'].get('components_1px', '?')} one-pixel components")
    if "skipped" in gpu:
        print(f"torch-cuda: skipped ({gpu['skipped']})")
    else:
        print(f"torch-cuda on {gpu['device']}: {gpu['frames_per_s']:.2f} frames/s ({gpu['what']})")
    print(f"→ {path}\n→ {png_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
