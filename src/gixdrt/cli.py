"""The ``gixdrt`` command. Thin over library functions: everything here is callable from Python."""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from . import __version__
from .errors import GixdrtError

# Statistics of the published chain on the real frame (shared/reference §4), printed by the demo.
REFERENCE_PROCESSED_MEAN = 0.478479
REFERENCE_POLAR = {"min": -70.2231, "max": 1048.21, "mean": 19.2641}


def _load_frames(path: str, index: int, n_sum: int, geometry) -> np.ndarray:
    """Frames ``index … index+n_sum-1`` of ``path`` (the shape checked against the geometry from the header)."""
    from .io.readers import reader_for, split_spec

    file, dataset = split_spec(path)
    with reader_for(file, label=path, dataset=dataset, expect_shape=geometry.frame_shape,
                    expect_note=geometry.frame_shape_note) as reader:
        n = sum(stack.n for stack in reader.stacks)
        if len(reader.stacks) > 1:
            raise GixdrtError(f"{path}: holds {len(reader.stacks)} datasets; name one as FILE.h5::/path")
        if n == 1 and not reader.stacks[0].stacked:
            if n_sum != 1 or index != 0:
                raise GixdrtError(f"{path}: holds a single frame; --sum and --index need a stack")
            return reader.read(0)[0]
        if index >= n:
            raise GixdrtError(f"--index {index}: outside the stack of {n} frames in {path} (0 … {n - 1})")
        if index + n_sum > n:
            raise GixdrtError(f"--sum {n_sum}: from --index {index} needs {index + n_sum} frames, {path} holds {n}")
        return reader.read(0, index, index + n_sum)


@contextmanager
def _naming(args: argparse.Namespace, **defaults):
    """Errors of the runtime or kernels chosen by options (``name=default``: --backend, --device, --kernels...)
    name the options the user set (all of them when none was set)."""
    from .errors import CheckpointError, ConfigError, FrameError
    from .io.atomic import OutputError
    from .kernels.registry import BackendUnavailableError

    try:
        yield
    except (ValueError, BackendUnavailableError) as exc:
        if isinstance(exc, (CheckpointError, ConfigError, FrameError, OutputError)):
            raise
        chosen = [n for n, default in defaults.items() if getattr(args, n, None) not in (None, default)]
        named = chosen or [n for n in defaults if getattr(args, n, None) is not None]
        given = " ".join(f"--{n.replace('_', '-')} {getattr(args, n)}" for n in named)
        raise GixdrtError(f"{given}: {exc}" if given else str(exc)) from None


def _to_gpu(impl: str | None, array: np.ndarray):
    """The frames where ``impl``'s kernels read them: a copy on the GPU for the CUDA kernels, else as they are."""
    if impl != "cuda":
        return array
    from .kernels.registry import BackendUnavailableError, cuda_unavailable_reason

    why = cuda_unavailable_reason()
    if why:
        raise BackendUnavailableError(f"the CUDA kernels cannot run here: {why}")
    from numba import cuda

    return cuda.to_device(np.ascontiguousarray(array))


def _host(array) -> np.ndarray:
    """A device array copied back to the host; a host array as it is."""
    return array.copy_to_host() if hasattr(array, "copy_to_host") else np.asarray(array)


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .geometry import load_config
    from .gixd.preprocess import Preprocessor
    from .io import write_image
    from .io.atomic import check_output
    from .io.masks import run_masks

    out = check_output(args.out, inputs=[args.frame, args.config, *args.mask],
                       suffixes=(".npy", ".tif", ".tiff", ".png"))
    cfg = load_config(args.config)
    masks = run_masks([args.frame], cfg.geometry.frame_shape, config_mask=cfg.mask, user_masks=args.mask)
    frames = _load_frames(args.frame, args.index, args.sum, cfg.geometry)
    t0 = time.perf_counter()
    with _naming(args, kernels=None):
        pre = Preprocessor(cfg, impl=args.kernels, masks=masks)
        image = _host(pre(_to_gpu(args.kernels, frames), args.stage))
    dt = time.perf_counter() - t0
    write_image(out, image)
    print(
        f"{args.stage} image {image.shape[0]}×{image.shape[1]} (rows φ 0–90°, columns |Q| 0–{cfg.geometry.q_max:.4f} Å⁻¹): "
        f"min {image.min():.6g}, max {image.max():.6g}, mean {image.mean(dtype=np.float64):.6g} "
        f"({dt * 1e3:.1f} ms) → {out}"
    )
    if not masks.empty:
        print(f"  masked: {masks.describe()}")
    return 0


def _demo_live(args: argparse.Namespace) -> int:
    """``gixdrt demo --live``: the real frame replayed N times as a DECTRIS stream on loopback through the live
    engine: rates, latency, drops."""
    from .geometry import load_config
    from .gixd.detector import PeakDetector
    from .gixd.pipeline import Pipeline
    from .io import fetch_published, read_frame
    from .io.atomic import check_output
    from .io.writers import read_peaks
    from .live.engine import pipeline_runner
    from .live.loopback import run_loopback
    from .live.memory import reuse_frame_memory
    from .live.session import status_line
    from .live.sinks import SeriesTableSink
    from .model import zoo
    from .testing import match_rings, published_ring_q

    outdir = check_output(args.out_dir, option="--out-dir", directory=True)
    reuse_frame_memory()
    assets = fetch_published()
    cfg = load_config(assets.config)
    frame = read_frame(assets.frame)
    cfg.geometry.check_frame_shape(frame.shape, assets.frame)
    detector = PeakDetector(args.model, score_threshold=cfg.postprocessing.score_level,
                            nms_iou=cfg.postprocessing.nms_level)
    pipe = Pipeline(cfg, detector, batch=args.batch, keep_polar=False)
    outdir.mkdir(parents=True, exist_ok=True)
    out = outdir / "live-peaks.h5"
    sink = SeriesTableSink(out, single=True, metadata={"model": args.model, "backend": detector.backend})
    show, end_status = _live_status("gixdrt demo --live")
    print(f"gixdrt demo --live: the published frame ({frame.shape[0]}×{frame.shape[1]} {frame.dtype}) replayed "
          f"{args.live} times as a DECTRIS stream v2 (bslz4) on loopback"
          + (f" at {args.rate:g} frames/s" if args.rate else ", as fast as it can be sent")
          + f", {args.mode} delivery, model {zoo.describe(args.model)} on {detector.describe()}, batch ≤ {args.batch}",
          file=sys.stderr, flush=True)
    try:
        run = run_loopback([frame] * args.live, pipeline_runner(pipe), rate=args.rate, mode=args.mode,
                           max_batch=args.batch, sink=sink, on_status=show)
    finally:
        end_status()
    c = run.counters
    table, meta = read_peaks(out)
    per_frame = np.bincount(table.frame, minlength=args.live) if len(table) else np.zeros(args.live, int)
    processed = np.asarray(meta.get("image_ids", []), np.int64)
    rings = [match_rings(table.q[table.frame == i], published_ring_q(cfg.geometry.q_max))["found"] for i in processed]
    lat = run.latencies
    print(f"gixdrt {__version__} demo --live")
    if run.replay is not None:
        print(f"  replay     {run.replay.line()}")
    print(f"  processed  {c['processed']} of {c['received']} received ({c['rejected']} rejected, {c['missed']} missed, "
          f"{c['failed']} failed, {c['decode_errors']} decode errors) in {run.seconds:.2f} s: "
          f"{run.rate:.2f} frames/s")
    if len(lat):
        print(f"  latency    arrival → peaks: p50 {1e3 * np.percentile(lat, 50):.0f} ms, "
              f"p99 {1e3 * np.percentile(lat, 99):.0f} ms, max {1e3 * lat.max():.0f} ms")
    if rings:
        def span(lo: int, hi: int) -> str:
            return f"{lo}" if lo == hi else f"{lo}–{hi}"

        print(f"  peaks      {span(int(per_frame[processed].min()), int(per_frame[processed].max()))} per frame; "
              f"{span(min(rings), max(rings))} of the published model's 12 rings found in each processed frame")
    print(f"  counters   {status_line(c)}")
    print(f"  wrote      {out.resolve()}")
    return 0


def _demo_powder(args: argparse.Namespace) -> int:
    """``gixdrt demo --powder``: one generated powder frame through the U-Net and the classical masks and the masked
    integration; a summary and one PNG (OUT_DIR/powder.png)."""
    from .io.atomic import check_output
    from .powder.demo import powder_demo
    from .powder.integrate import check_pyfai

    outdir = check_output(args.out_dir, option="--out-dir", directory=True)
    png = outdir / "powder.png"
    check_output(png, option="--out-dir")
    check_pyfai()
    existed = png.exists()
    print(f"gixdrt demo --powder: generating frame {args.index} of seed {args.seed} ({args.size}×{args.size}), "
          "masking with the U-Net and the classical search, integrating with pyFAI ...", file=sys.stderr, flush=True)
    s = powder_demo(png, size=args.size, seed=args.seed, index=args.index, model=args.model)
    sec = s["seconds"]
    print(f"gixdrt {__version__} demo --powder on generated frame {s['index']} of seed {s['seed']} "
          f"({s['size']}×{s['size']}, {', '.join(s['phases'])}; {sec['generate']:.1f} s to generate)")
    print(f"  truth      {s['spots']} spots, {s['truth_pixels']} spot pixels")
    for name, label in (("unet", "U-Net"), ("classical", "classical")):
        m = s["methods"][name]
        print(f"  {label:<10} {m['spots_found']} of {s['spots']} spots found, {m['pixels']} pixels masked "
              f"({m['tp']} true, {m['fp']} false, {m['fn']} missed), {sec[name]:.2f} s")
    ie = s["intensity_error"]
    print(f"  integrate  pyFAI {','.join(s['method'])}: {sec['integrate_one']:.2f} s for one pattern (engine cached)")
    print(f"  peak areas relative error against the spot-free truth, median / 90th percentile over {ie['rings']} "
          f"rings ({ie['rings_with_spots']} with a spot):")
    for name, label in (("unmasked", "no spot mask"), ("unet", "U-Net mask"), ("classical", "classical mask"),
                        ("truth_mask", "true mask")):
        print(f"    {label:<15} all {_percent(ie[name]['all'])}   with spots {_percent(ie[name]['with_spots'])}")
    print(f"  wrote      {Path(s['png']).resolve()}" + (" (replaced the existing file)" if existed else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.powder and args.live:
        raise GixdrtError("--powder and --live: choose one demo")
    if args.powder:
        return _demo_powder(args)
    if args.live:
        return _demo_live(args)
    from .geometry import load_config, polar_map
    from .gixd.preprocess import Preprocessor
    from .io import fetch_published, read_frame
    from .io.atomic import check_output
    from .plotting import plot_polar, plot_raw

    outdir = check_output(args.out_dir, option="--out-dir", directory=True)
    assets = fetch_published()
    cfg = load_config(assets.config)
    g = cfg.geometry
    frame = read_frame(assets.frame)
    g.check_frame_shape(frame.shape, assets.frame)
    t0 = time.perf_counter()
    polar_map(g)  # built once per geometry (timed apart from the remap)
    t1 = time.perf_counter()
    with _naming(args, kernels=None):
        pre = Preprocessor(cfg, impl=args.kernels)
        polar = pre.polar(_to_gpu(args.kernels, frame))
        t2 = time.perf_counter()
        processed = _host(pre.contrast(polar))
        polar = _host(polar)
    t3 = time.perf_counter()
    from .gixd.detector import PeakDetector
    from .gixd.peaks import PeakTable
    from .io import write_peaks
    from .model import zoo

    t3b = time.perf_counter()
    detector = PeakDetector(args.model, score_threshold=cfg.postprocessing.score_level,
                            nms_iou=cfg.postprocessing.nms_level)
    t4 = time.perf_counter()
    (boxes, scores), = detector.boxes(processed)
    t5 = time.perf_counter()
    peaks = PeakTable.from_boxes(boxes, scores, frame=0, source=assets.frame.name, image_shape=processed.shape,
                                 q_max=g.q_max, polar=polar)
    outdir.mkdir(parents=True, exist_ok=True)
    write_peaks(outdir / "peaks.csv", peaks, n_frames=1)
    paths = [
        plot_raw(frame, outdir / "raw.png", title=f"raw frame {assets.frame.name}"),
        plot_polar(polar, g, outdir / "polar.png", "polar image", "log10(counts − min + 1)", log=True),
        plot_polar(processed, g, outdir / "contrast.png", "contrast-enhanced (detector input)", "intensity"),
        plot_polar(processed, g, outdir / "peaks.png", f"{len(peaks)} peaks (labels: |Q| in Å⁻¹)", "intensity", peaks=peaks),
        outdir / "peaks.csv",
    ]
    from .io import write_image

    paths.append(write_image(outdir / "contrast.npy", processed))
    print(f"gixdrt {__version__} demo on the published real frame")
    print(f"  frame    {assets.frame}  {frame.shape[0]}×{frame.shape[1]} {frame.dtype}, counts {frame.min():.1f} … {frame.max():.1f}")
    print(f"  geometry {assets.config}: distance {g.distance} mm, λ {g.wavelength} Å, α {g.incidence_angle}°, "
          f"beam (row {g.z0}, col {g.y0}), flip_y={g.flip_y}")
    print(f"  polar    {g.n_phi}×{g.n_q}: rows φ 0–90°, columns |Q| 0–{g.q_max:.6f} Å⁻¹; "
          f"min {polar.min():.4f}, max {polar.max():.2f}, mean {polar.mean(dtype=np.float64):.4f} "
          f"(published: {REFERENCE_POLAR['min']}, {REFERENCE_POLAR['max']}, {REFERENCE_POLAR['mean']})")
    pm = float(processed.mean(dtype=np.float64))
    print(f"  contrast mean {pm:.6f}, std {processed.std(dtype=np.float64):.6f} "
          f"(published mean {REFERENCE_PROCESSED_MEAN}, difference {pm - REFERENCE_PROCESSED_MEAN:+.1e})")
    print(f"  time     map {1e3 * (t1 - t0):.1f} ms (once per geometry), remap {1e3 * (t2 - t1):.1f} ms, "
          f"contrast {1e3 * (t3 - t2):.1f} ms")
    from .testing import match_rings, published_ring_q

    rings = match_rings(peaks.q, published_ring_q(g.q_max))
    print(f"  detect   {len(peaks)} peaks with model {zoo.describe(args.model)} on {detector.describe()} "
          f"({1e3 * (t5 - t4):.0f} ms; {1e3 * (t4 - t3b):.0f} ms to open the model and runtime); "
          f"{rings['found']} of the published model's 12 rings within 0.01 Å⁻¹ in |Q|"
          + (f" (missing |Q| {', '.join(f'{q:.3f}' for q in rings['missing'])} Å⁻¹)" if rings["missing"] else "") + ":")
    for k in np.argsort(peaks.q):
        print(f"    |Q| {peaks.q[k]:.4f} Å⁻¹  φ {peaks.phi[k]:5.1f}°  width {peaks.q_width[k]:.4f} Å⁻¹ × {peaks.phi_width[k]:5.1f}°"
              f"  score {peaks.score[k]:.4f}")
    print("  wrote:")
    for p in paths:
        print(f"    {p.resolve()}")
    return 0


def _make_detector(args: argparse.Namespace, cfg):
    """The PeakDetector of ``gixdrt detect`` and ``gixdrt watch``: --model, --backend, --device, --precision,
    --threads, --max-detections, and the thresholds: the option, else the config's postprocessing_config, else the
    model card's."""
    from .gixd.detector import PeakDetector

    pp = cfg.postprocessing if cfg is not None else None
    with _naming(args, backend="auto", device=None, precision="fp32", threads=None):
        return PeakDetector(
            args.model,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            threads=args.threads,
            score_threshold=args.score_threshold if args.score_threshold is not None else (pp.score_level if pp else None),
            nms_iou=args.nms_iou if args.nms_iou is not None else (pp.nms_level if pp else None),
            max_detections=args.max_detections,
        )


def _detect_metadata(args: argparse.Namespace, cfg, detector) -> dict:
    """The peak table's metadata of ``gixdrt detect`` and ``gixdrt watch``."""
    return {
        "config": cfg,
        "model_card": detector.card,
        "model": args.model,
        "backend": detector.backend,
        "device": str(detector.device),
        "input": args.input,
        **detector.thresholds.to_dict(),
    }


def cmd_detect(args: argparse.Namespace) -> int:
    from .geometry import load_config
    from .gixd.pipeline import Pipeline
    from .io import count_frames, iter_frames
    from .io.atomic import check_distinct, check_output
    from .io.sources import input_files
    from .model import zoo

    if args.input == "raw" and not args.config:
        raise GixdrtError("--config: raw frames need the experiment geometry: pass --config CONFIG.yaml "
                          "(or --input polar|processed)")
    if args.gixi_compat and args.input == "processed":
        raise GixdrtError("--gixi-compat: stores the polar image: use --input raw or polar")
    from .scale.detect import refuse_options

    refuse_options(args)  # --cluster with options it cannot serve, and --unit/--retries/--fresh without it
    files = input_files(args.inputs)  # every input exists and has a known format; nothing read yet
    inputs = [*files, *([args.config] if args.config else []), *args.mask]
    if args.mask and args.input != "raw":
        raise GixdrtError("--mask: masks apply to raw frames (--input raw)")
    for option, needs in (("link_iou", "link"), ("min_track", "link"), ("plot_tracks", "link")):
        if getattr(args, option) is not None and not getattr(args, needs):
            raise GixdrtError(f"--{option.replace('_', '-')}: needs --link")
    if args.keep_misses is not None and not (args.cxi or args.gixi_compat):
        raise GixdrtError("--keep-misses: selects the frames of --cxi or --gixi-compat; give one of them")
    screening = args.hits is not None or args.keep_misses is not None
    if args.min_peaks is not None and not screening:
        raise GixdrtError("--min-peaks: needs --hits or --keep-misses")
    out = check_output(args.out, inputs=inputs, suffixes=(".csv", ".h5", ".hdf5"))
    extra = {"--gixi-compat": (args.gixi_compat, (".h5", ".hdf5")), "--cxi": (args.cxi, (".cxi", ".h5", ".hdf5")),
             "--hits": (args.hits, (".lst", ".txt")), "--plot-tracks": (args.plot_tracks, (".png",))}
    for option, (path, suffixes) in extra.items():
        if path:
            check_output(path, inputs=inputs, option=option, suffixes=suffixes)
    check_distinct({"--out": args.out, **{option: path for option, (path, _) in extra.items() if path}})
    cfg = load_config(args.config) if args.config else None
    geometry = cfg.geometry if (cfg is not None and args.input == "raw") else None
    n_frames = count_frames(args.inputs, args.sum, expect_shape=geometry and geometry.frame_shape,
                            expect_note=geometry and geometry.frame_shape_note)  # the headers, before any work
    masks = None
    if geometry is not None:
        from .io.masks import run_masks

        masks = run_masks(args.inputs, geometry.frame_shape, config_mask=cfg.mask, user_masks=args.mask)
    if n_frames == 0:
        raise GixdrtError(f"{args.inputs[0]}: no frames" + (f" (fewer than --sum {args.sum})" if args.sum > 1 else ""))
    if args.cluster is not None:
        from .scale.detect import detect_on_cluster

        return detect_on_cluster(args, out, cfg, geometry, masks, n_frames)
    frames = iter_frames(args.inputs, sum_n=args.sum, expect_shape=geometry and geometry.frame_shape,
                         expect_note=geometry and geometry.frame_shape_note)
    detector = _make_detector(args, cfg)
    pipe = Pipeline(cfg, detector, input=args.input, batch=args.batch, keep_polar=bool(args.gixi_compat), masks=masks)
    th = detector.thresholds
    print(f"gixdrt detect: {n_frames} frame(s), model {zoo.describe(args.model)}, backend {detector.describe()}, "
          f"thresholds score ≥ {th.score_threshold}, NMS IoU {th.nms_iou}", file=sys.stderr)
    if masks is not None and not masks.empty:
        print(f"gixdrt detect: masked: {masks.describe()}", file=sys.stderr)
    bar = None
    found = 0
    if n_frames > 1 and not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=n_frames, unit="frame", file=sys.stderr, dynamic_ncols=True)

    gixi = None
    if args.gixi_compat:
        from .io.gixi_compat import GixiCompatWriter

        gixi = GixiCompatWriter(Path(args.gixi_compat))

    masked = []  # per frame: the fraction of polar pixels that left out masked detector pixels, and holes filled
    screener = flags = None
    if screening:
        from .gixd.screening import Screener, ScreeningConfig

        screener = Screener(ScreeningConfig(min_peaks=1 if args.min_peaks is None else args.min_peaks,
                                            keep_misses=args.keep_misses or 0.0))
        flags = []

    def progress(result) -> None:
        nonlocal found
        found += len(result.table)
        masked.append((result.masked, result.filled))
        flag = None
        if screener is not None:
            flag = screener.add(result.frame, result.table, result.source)
            flags.append(flag)
        if gixi is not None and (flag is None or args.keep_misses is None or flag.keep):
            gixi.add(result.frame, result.source, result.table, result.polar)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(peaks=found, refresh=False)

    t0 = time.perf_counter()
    try:
        try:
            table = pipe.run(frames, progress=progress)
        finally:
            if bar is not None:
                bar.close()
        dt = time.perf_counter() - t0
        metadata = {**_detect_metadata(args, cfg, detector), "sum": args.sum,
                    "inputs": [str(x) for x in args.inputs]}
        from .gixd.outputs import detect_outputs

        table, notes = detect_outputs(args, out, table, n_frames, metadata, gixi, screener, flags)
    except BaseException as exc:
        if gixi is not None:
            gixi.__exit__(type(exc), exc, exc.__traceback__)
        raise
    done = len(np.unique(table.frame)) if len(table) else 0
    print(f"{len(table)} peak(s) in {n_frames} frame(s) ({done} with peaks), {dt:.2f} s "
          f"({n_frames / dt if dt > 0 else float('inf'):.2f} frames/s) → {out}")
    for note in notes:
        print(note)
    if masked and max(m for m, _ in masked) > 0:
        fractions = np.array([m for m, _ in masked])
        print(f"  masked: {100 * fractions.mean():.2f} % of the polar image sampled masked pixels on average "
              f"(at most {100 * fractions.max():.2f} % in one frame); {sum(f for _, f in masked)} polar pixel(s) "
              "with no valid sample filled along φ")
    return 0


def _watch_name(rel: str) -> str:
    """The part of a watched file's table name that names the file: its path in the folder without its suffix,
    ``/`` as ``__`` (``sub/scan_001.h5`` → ``sub__scan_001``)."""
    from pathlib import PurePosixPath

    return PurePosixPath(rel).with_suffix("").as_posix().replace("/", "__")


def cmd_watch(args: argparse.Namespace) -> int:
    from .geometry import load_config
    from .gixd.pipeline import Pipeline
    from .io.atomic import check_distinct, check_output
    from .io.masks import Masks, run_masks
    from .io.sources import Frame
    from .live.events import DecodeError, FrameEvent, SeriesEnd, SeriesStart
    from .live.sinks import SeriesTableSink
    from .live.watch import FolderWatch
    from .model import zoo

    directory = Path(args.directory)
    if not directory.is_dir():
        raise GixdrtError(f"{directory}: " + ("not a directory" if directory.exists() else "no such directory"))
    if args.input == "raw" and not args.config:
        raise GixdrtError("--config: raw frames need the experiment geometry: pass --config CONFIG.yaml "
                          "(or --input polar|processed)")
    if args.mask and args.input != "raw":
        raise GixdrtError("--mask: masks apply to raw frames (--input raw)")
    inputs = [*([args.config] if args.config else []), *args.mask]
    out = check_output(args.out, inputs=inputs, suffixes=(".csv", ".h5", ".hdf5"))
    state = Path(args.state) if args.state else out.with_name(out.name + ".watch-state.json")
    check_output(state, inputs=inputs, option="--state", suffixes=(".json",))
    check_distinct({"--out": out, "--state": state})
    cfg = load_config(args.config) if args.config else None
    geometry = cfg.geometry if (cfg is not None and args.input == "raw") else None
    base_masks = None
    if geometry is not None:
        base_masks = run_masks((), geometry.frame_shape, config_mask=cfg.mask, user_masks=args.mask)
    sink = None
    watch = FolderWatch(directory, pattern=args.pattern, recursive=args.recursive, settle=args.settle, poll=args.poll,
                        state_file=state, dataset=args.dataset, until_idle=args.idle_exit, give_up=args.give_up,
                        auto_commit=False, ignore=lambda path: sink is not None and sink.is_output(path),
                        expect_shape=geometry and geometry.frame_shape, expect_note=geometry and geometry.frame_shape_note)
    detector = _make_detector(args, cfg)
    pipe = Pipeline(cfg, detector, input=args.input, batch=args.batch, keep_polar=False, masks=base_masks)
    metadata = {**_detect_metadata(args, cfg, detector), "watch_directory": os.path.abspath(directory),
                "watch_pattern": args.pattern}
    earlier = [e["output"] for e in watch.finished if "output" in e]
    sink = SeriesTableSink(out, metadata=metadata, reserved=earlier)
    th = detector.thresholds
    print(f"gixdrt watch: {directory} ({args.pattern}{', recursive' if args.recursive else ''}), model "
          f"{zoo.describe(args.model)}, backend {detector.describe()}, thresholds score ≥ {th.score_threshold}, "
          f"NMS IoU {th.nms_iou}; {len(watch.finished)} file(s) already done ({state}); Ctrl-C stops",
          file=sys.stderr)
    if base_masks is not None and not base_masks.empty:
        print(f"gixdrt watch: masked: {base_masks.describe()} (and each HDF5 file's own pixel_mask)", file=sys.stderr)
    totals = {"files": 0, "frames": 0, "peaks": 0, "decode_errors": 0}
    current: list = []  # the series in progress: [SeriesStart]
    t_run = time.perf_counter()

    def warn(message: str) -> None:
        print(f"gixdrt watch: warning: {message}", file=sys.stderr)

    def summary() -> str:
        return (f"{totals['files']} file(s), {totals['frames']} frame(s), {totals['peaks']} peak(s) in "
                f"{time.perf_counter() - t_run:.1f} s; {watch.counters['unreadable']} unreadable file(s) skipped, "
                f"{totals['decode_errors']} unreadable frame(s); state → {state}")

    events = iter(watch)
    try:
        for event in events:
            if isinstance(event, DecodeError):
                warn(event.message)
                continue
            if not isinstance(event, SeriesStart):
                continue
            start = event
            current[:] = [start]
            final = sink.open_series(start, name=_watch_name(start.meta["path"]))
            if base_masks is not None:
                pixels = start.pixel_mask.get("data")
                own = Masks(None if pixels is None else (pixels != 0).astype(np.uint8), start.saturation_value,
                            (f"the detector mask of {start.source}",))
                pipe.masks = base_masks.union(own)
            ended: list[SeriesEnd] = []
            decode_errors = 0

            def frames():
                nonlocal decode_errors
                for e in events:
                    if isinstance(e, FrameEvent):
                        yield Frame(e.image_id, e.meta.get("source", start.source), e.image())
                    elif isinstance(e, SeriesEnd):
                        ended.append(e)
                        return
                    elif isinstance(e, DecodeError):
                        decode_errors += 1
                        warn(e.message)

            t0 = time.perf_counter()
            n = peaks = 0
            for result in pipe.iter_results(frames()):
                sink.add(start.series_unique_id, result.frame, result.table, source=result.source)
                n += 1
                peaks += len(result.table)
            if not ended or ended[0].reason != "end":  # stopped in the middle of the file: redone on restart
                sink.abort(start.series_unique_id)
                break
            counters = {"expected": start.number_of_images, "received": n + decode_errors, "processed": n,
                        "decode_errors": decode_errors}
            path = sink.close_series(ended[0], counters)
            watch.commit(ended[0], {"output": os.fspath(path), "peaks": peaks})
            current.clear()
            dt = time.perf_counter() - t0
            totals["files"] += 1
            totals["frames"] += n
            totals["peaks"] += peaks
            totals["decode_errors"] += decode_errors
            print(f"{start.source}: {n} frame(s), {peaks} peak(s), {dt:.2f} s "
                  f"({n / dt if dt > 0 else float('inf'):.2f} frames/s) → {final}", flush=True)
    except (KeyboardInterrupt, Terminated) as exc:
        sink.abort()
        events.close()
        watch.close()
        name = "SIGINT" if isinstance(exc, KeyboardInterrupt) else signal.Signals(exc.signum).name
        unfinished = f"; {current[0].source} was not finished: it is redone on restart" if current else ""
        print(f"gixdrt watch: stopped by {name}: {summary()}{unfinished}", file=sys.stderr)
        return 130 if isinstance(exc, KeyboardInterrupt) else 128 + exc.signum
    except BaseException:
        sink.abort()
        events.close()
        watch.close()
        raise
    events.close()
    print(summary())
    return 0


def _live_status(prefix: str):
    """A status callback: one line refreshed in place on a terminal, a line every 10 s in a log."""
    from .live.session import status_line

    tty = sys.stderr.isatty()
    last = [0.0]

    def show(counters: dict) -> None:
        now = time.monotonic()
        if tty:
            print(f"\r{prefix}: {status_line(counters)}\x1b[K", end="", file=sys.stderr, flush=True)
        elif now - last[0] >= 10.0:
            last[0] = now
            print(f"{prefix}: {status_line(counters)}", file=sys.stderr, flush=True)

    def end() -> None:
        if tty:
            print(file=sys.stderr)

    return show, end


def cmd_stream(args: argparse.Namespace) -> int:
    from .geometry import load_config
    from .gixd.pipeline import Pipeline
    from .gixd.screening import ScreeningConfig
    from .io.atomic import check_distinct, check_output
    from .io.masks import run_masks
    from .live.engine import pipeline_runner
    from .live.memory import reuse_frame_memory
    from .live.session import LiveSession
    from .live.sinks import ResultPublisher, SeriesTableSink
    from .live.zmqsource import StreamSource
    from .model import zoo

    if args.input == "raw" and not args.config:
        raise GixdrtError("--config: raw frames need the experiment geometry: pass --config CONFIG.yaml "
                          "(or --input polar|processed)")
    if args.mask and args.input != "raw":
        raise GixdrtError("--mask: masks apply to raw frames (--input raw)")
    reuse_frame_memory()
    if args.link_iou is not None and not args.link:
        raise GixdrtError("--link-iou: only with --link")
    inputs = [*([args.config] if args.config else []), *args.mask]
    out = check_output(args.out, inputs=inputs, suffixes=(".csv", ".h5", ".hdf5"))
    outputs = {"--out": out}
    if args.cxi:
        outputs["--cxi"] = check_output(args.cxi, inputs=inputs, option="--cxi", suffixes=(".cxi", ".h5"))
    if args.hits:
        outputs["--hits"] = check_output(args.hits, inputs=inputs, option="--hits", suffixes=(".lst", ".txt"))
    check_distinct(outputs)
    cfg = load_config(args.config) if args.config else None
    geometry = cfg.geometry if (cfg is not None and args.input == "raw") else None
    masks = None
    if geometry is not None:
        masks = run_masks((), geometry.frame_shape, config_mask=cfg.mask, user_masks=args.mask)
    detector = _make_detector(args, cfg)
    pipe = Pipeline(cfg, detector, input=args.input, batch=args.batch, keep_polar=False, masks=masks)
    runner = pipeline_runner(pipe, args.channel)
    single = args.series == 1
    sink = SeriesTableSink(out, metadata={**_detect_metadata(args, cfg, detector), "endpoint": args.endpoint,
                                          "mode": args.mode},
                           single=single, linked=args.link)
    publisher = None
    if args.publish or args.push:
        with _naming(args, publish=None, push=None):
            publisher = ResultPublisher(push=args.push, pub=args.publish, model=str(args.model),
                                        min_peaks_for_hit=args.min_peaks)
    screening = ScreeningConfig(min_peaks=args.min_peaks)
    show, end_status = _live_status("gixdrt stream")
    shape = geometry.frame_shape if geometry is not None else None

    def on_series(report) -> None:
        end_status()
        print(report.line(), flush=True)

    session = LiveSession(runner, sink=sink, publisher=publisher, link=args.link,
                          link_iou=args.link_iou if args.link_iou is not None else 0.3, screening=screening,
                          cxi=os.fspath(outputs["--cxi"]) if args.cxi else None,
                          hits=os.fspath(outputs["--hits"]) if args.hits else None, on_series=on_series,
                          on_status=show, mode=args.mode, queue_frames=args.queue, max_batch=args.batch,
                          latency_budget=args.latency_budget, idle_timeout=args.series_timeout)
    if shape is not None:
        def check_start(start) -> None:
            if start.image_shape is not None and tuple(start.image_shape) != tuple(shape):
                print(f"gixdrt stream: warning: series {start.series_unique_id}: images of "
                      f"{start.image_shape[0]}×{start.image_shape[1]} do not match {geometry.frame_shape_note}; "
                      f"its frames will fail", file=sys.stderr, flush=True)
        session.on_start = check_start
    if args.warmup and cfg is None:  # polar/processed images without a config: their shape comes with the stream
        print("gixdrt stream: note: no --config, so no warm-up: the first frame also builds the detector's sessions",
              file=sys.stderr)
        args.warmup = False
    t_warm = session.engine.warmup() if args.warmup else 0.0
    th = detector.thresholds
    print(f"gixdrt stream: {args.endpoint} ({args.format}), {args.mode} delivery, model {zoo.describe(args.model)}, "
          f"backend {detector.describe()}, thresholds score ≥ {th.score_threshold}, NMS IoU {th.nms_iou}"
          + (f"; warmed up in {t_warm:.2f} s" if args.warmup else "")
          + (f"; results on {', '.join(e for e in (publisher.push_endpoint, publisher.pub_endpoint) if e)}"
             if publisher is not None else "") + "; Ctrl-C stops", file=sys.stderr, flush=True)
    if masks is not None and not masks.empty:
        print(f"gixdrt stream: masked: {masks.describe()} (and each series' own pixel_mask)", file=sys.stderr)
    stopped = None
    source = StreamSource(args.endpoint, format=args.format, timeout=0.25, decode_threads=args.decode_threads)
    try:
        with source:
            counters = session.run(source, resume=True, series=args.series, idle_exit=args.timeout)
    except (KeyboardInterrupt, Terminated) as exc:
        stopped = exc
        counters = session.engine.counters()
    finally:
        end_status()
        if publisher is not None:
            publisher.close()
    from .live.session import status_line

    how = "" if stopped is None else (" (stopped by " + ("SIGINT" if isinstance(stopped, KeyboardInterrupt)
                                                         else signal.Signals(stopped.signum).name) + ")")
    print(f"gixdrt stream: {len(session.reports)} series{how}; {status_line(counters)}; "
          f"{source.received} messages ({source.received_bytes / 1e6:.1f} MB)", file=sys.stderr)
    if not session.reports and stopped is None:
        print(f"gixdrt stream: warning: no series from {args.endpoint}"
              + (f" in {args.timeout:g} s" if args.timeout is not None else ""), file=sys.stderr)
    if stopped is not None:
        return 130 if isinstance(stopped, KeyboardInterrupt) else 128 + stopped.signum
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .io import cache_dir, fetch_published
    from .model import convert_published

    if args.checkpoint == "published" or args.checkpoint.startswith("published:"):
        name = args.checkpoint.partition(":")[2] or "save_only_largest_2"
        checkpoints = fetch_published().checkpoints
        if name not in checkpoints:
            raise GixdrtError(f"no published checkpoint named {name!r}; known: {', '.join(sorted(checkpoints))}")
        src = checkpoints[name]
    else:
        src = Path(args.checkpoint)
    dst = Path(args.out) if args.out else cache_dir() / "models" / (src.stem + ("-fp16" if args.fp16 else ""))
    from .io.atomic import check_output

    check_output(dst, option="--out", directory=True)
    if Path(src).exists() and Path(src).resolve() in (dst.resolve(), *dst.resolve().parents):
        raise GixdrtError(f"--out {dst}: holds the checkpoint {src}; choose another directory")
    card = convert_published(src, dst, fp16=args.fp16)
    print(f"converted {src} → {card.parent} ({card.name} + weights); use it with --model {card.parent}")
    return 0


def _parse_size(text: str) -> tuple[int, int]:
    """An argparse type: '512x1024' → (512, 1024), each side 1 … 16384."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HxW, e.g. 512x512") from None
    if not (1 <= h <= 16384 and 1 <= w <= 16384):
        raise argparse.ArgumentTypeError(f"{text!r}: height and width must be in [1, 16384]")
    return h, w


def cmd_simulate(args: argparse.Namespace) -> int:

    from .sim import mode_config, simulate_to_file

    if args.sim_config:
        import yaml

        try:
            data = yaml.safe_load(Path(args.sim_config).read_text(encoding="utf-8")) or {}
            config = mode_config(args.mode, data.get("sim", data))
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError) as exc:
            raise GixdrtError(f"{args.sim_config}: {exc}") from None
    else:
        config = mode_config(args.mode)
    from .io.atomic import check_output

    check_output(args.out, inputs=[args.sim_config] if args.sim_config else (), suffixes=(".npz",))
    size = args.size
    t0 = time.perf_counter()
    try:
        out = simulate_to_file(args.n, args.seed, args.out, size=size, config=config,
                               progress=not args.no_progress, start=args.start, workers=args.workers)
    except ValueError as exc:
        raise GixdrtError(str(exc)) from None
    dt = time.perf_counter() - t0
    what = "" if args.mode == "ours" else f" {args.mode}-mode"
    print(f"{args.n} simulated{what} {size[0]}×{size[1]} images (seed {args.seed}) in {dt:.1f} s "
          f"({args.n / dt if dt > 0 else float('inf'):.1f} images/s) → {out}")
    if args.verbose:
        print(json.dumps({"mode": args.mode, **config.to_dict()}, indent=2))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .io.atomic import check_output
    from .train.loop import main_train

    if args.run_dir:
        check_output(args.run_dir, option="--run-dir", directory=True)
    overrides = {}
    for key in ("steps", "batch_size", "device", "amp", "num_workers", "seed"):
        value = getattr(args, key)
        if value is not None:
            overrides[key] = value
    try:
        result = main_train(args.config, args.run_dir, resume=args.resume, overrides=overrides or None,
                            progress=not args.no_progress)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise GixdrtError(str(exc)) from None
    model = result.model_path.parent if result.model_path else "(not saved: stopped before the last step)"
    losses = ", ".join(f"{k} {v:.4g}" for k, v in result.last_losses.items())
    print(f"trained {result.steps} steps in {result.wall_s:.0f} s → {result.run_dir}; model {model}; last losses: {losses}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .io.atomic import check_output
    from .train.evaluate import main_evaluate

    check_output(args.out_dir, option="--out-dir", directory=True)
    size = args.size
    try:
        main_evaluate(args.model, n=args.n, seed=args.seed, out_dir=args.out_dir, size=size, backend=args.backend,
                      batch=args.batch, progress=not args.no_progress, sim=args.sim, mode=args.mode)
    except ValueError as exc:
        raise GixdrtError(str(exc)) from None
    print(f"results → {Path(args.out_dir).resolve()}")
    return 0



def cmd_train_powder(args: argparse.Namespace) -> int:
    import json as _json

    from .io.atomic import check_output
    from .powder.train import PowderTrainConfig, train_powder

    run_dir = Path(args.run_dir)
    if not args.resume:
        check_output(run_dir, option="--run-dir", directory=True)
    cfg = None
    if args.config:
        text = Path(args.config).read_text(encoding="utf-8")
        if args.config.endswith(".json"):
            data = _json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise GixdrtError(f"{args.config}: a training config must be a mapping of PowderTrainConfig fields")
        cfg = PowderTrainConfig.from_dict(data)
    overrides = {k: getattr(args, k) for k in ("steps", "batch_size", "seed", "threads") if getattr(args, k) is not None}
    if overrides:
        if args.resume and cfg is None:
            saved = run_dir / "config.json"
            if not saved.is_file():
                raise GixdrtError(f"{run_dir}: no config.json to resume from")
            cfg = PowderTrainConfig.from_dict(_json.loads(saved.read_text(encoding="utf-8")))
        cfg = PowderTrainConfig.from_dict({**(cfg or PowderTrainConfig()).to_dict(), **overrides})
    try:
        result = train_powder(cfg, run_dir, resume=args.resume, progress=not args.no_progress)
    except (ValueError, FileExistsError, FileNotFoundError) as exc:
        raise GixdrtError(str(exc)) from None
    model = result.model_dir or "(not saved: stopped before the last step)"
    print(f"trained {result.steps} steps in {result.wall_s:.0f} s → {result.run_dir}; model {model}; "
          f"mean loss of the last steps {result.last_loss:.4g}")
    return 0


def _percent(stats: dict) -> str:
    """``{median, p90}`` of relative errors as 'M % / P %' (n/a when there were none)."""
    if stats.get("median") is None:
        return "n/a"
    return f"{100 * stats['median']:.2f} % / {100 * stats['p90']:.2f} %"


def cmd_evaluate_powder(args: argparse.Namespace) -> int:
    from .io.atomic import check_output
    from .powder.evaluate import main_evaluate_powder

    if args.out:
        check_output(args.out, option="--out", suffixes=(".json",))
    try:
        report = main_evaluate_powder(args.model, n=args.n, seed=args.seed, size=args.size, shifted=args.shifted,
                                      out=args.out, threshold=args.threshold, min_size=args.min_size,
                                      progress=not args.no_progress, intensities=args.intensities)
    except ValueError as exc:
        raise GixdrtError(str(exc)) from None
    for name, m in report["methods"].items():
        sr = m["spot_recall"]
        strong = sr.get("strong_bright_ring", {}).get("recall")
        print(f"{name:<10} pixel recall {m['pixel_recall']:.4f}  precision {m['pixel_precision']:.4f}  "
              f"FP px/frame {m['fp_pixels_per_frame']:.0f}  spot recall {sr['all']['recall']:.4f}  "
              f"strong on bright rings {'n/a' if strong is None else f'{strong:.4f}'}  "
              f"{m['seconds_per_frame']:.2f} s/frame")
    if report.get("fp_ratio_unet_over_classical") is not None:
        print(f"false positives U-Net / classical: {report['fp_ratio_unet_over_classical']:.3f}")
    if args.intensities:
        summary = report["intensities"]["summary"]
        print(f"integrated peak areas, relative error against the spot-free truth (median / 90th percentile; "
              f"{summary['rings']} rings, {summary['rings_with_spots']} with a spot):")
        for name in ("unmasked", "truth_mask", *report["methods"]):
            a, w = summary[name]["all"], summary[name]["with_spots"]
            label = {"unmasked": "no spot mask", "truth_mask": "true mask"}.get(name, f"{name} mask")
            print(f"  {label:<16} all rings {_percent(a)}   rings with spots {_percent(w)}")
    if args.out:
        print(f"report → {args.out}")
    return 0


def cmd_mask(args: argparse.Namespace) -> int:
    from .scale.mask import mask_on_cluster, refuse_options

    refuse_options(args)  # --work-unit/--retries/--fresh need --cluster
    if args.cluster is not None:
        return mask_on_cluster(args)

    from .io.atomic import check_distinct, check_output
    from .io.sources import count_frames, first_frame_shape, iter_frames, resolve_inputs
    from .powder.geometry import PowderGeometry
    from .powder.job import MaskEngine, MaskFile, check_options, combine_masks, output_attrs

    files = resolve_inputs(args.frames)
    inputs = [*(str(f.path) for f in files), *args.mask, *([args.poni] if args.poni else [])]
    out = check_output(args.out, inputs=inputs, option="--out", suffixes=(".npy", ".h5", ".hdf5"))
    methods = ["unet", "classical"] if args.method == "both" else [args.method]
    if len(methods) > 1 and out.suffix == ".npy":
        raise GixdrtError(f"--out {out}: --method both needs an HDF5 output (.h5), one dataset per method")
    integ = None
    if args.integrate:
        if not args.poni:
            raise GixdrtError("--integrate: the azimuthal integration needs the detector geometry (--poni FILE)")
        integ = check_output(args.integrate, inputs=inputs, option="--integrate", suffixes=(".h5", ".hdf5", ".xy"))
        check_distinct({"--out": out, "--integrate": integ})
        if integ.suffix == ".xy" and len(methods) > 1:
            raise GixdrtError(f"--integrate {integ}: .xy holds one spot mask per file; use .h5 with --method both")
        from .powder.integrate import check_pyfai

        check_pyfai()
    check_options(methods, args.model, args.poni)
    shape = first_frame_shape(files)
    note = f"the first frame's shape {shape} (all frames must have the same shape)"
    n_frames = count_frames(args.frames, expect_shape=shape, expect_note=note)
    if integ is not None and integ.suffix == ".xy":
        from .powder.integrate import xy_names

        for pair in xy_names(integ, n_frames):
            for name in pair:
                check_output(name, inputs=inputs, option="--integrate")
                check_distinct({"--out": out, "--integrate": name})
    overlays = None
    if args.overlays:
        overlays = Path(args.overlays)
        if overlays.exists() and not overlays.is_dir():
            raise GixdrtError(f"--overlays {overlays}: exists and is not a directory")
        overlays.mkdir(parents=True, exist_ok=True)
    mask = combine_masks(args.mask, shape)
    geom = PowderGeometry.from_poni(args.poni, shape=shape) if args.poni else None
    engine = MaskEngine(methods, shape, geometry=geom, detector_mask=mask, model=args.model, runtime=args.runtime,
                        precision=args.precision, threads=args.threads, threshold=args.threshold,
                        min_size=args.min_size)
    attrs = output_attrs(settings=engine.settings(), sources=args.frames, poni=args.poni, geometry=geom,
                         detector_masks=args.mask)
    curves: dict[str, list] = {m: [] for m in methods}
    labels: list[str] = []
    bar = None
    if not args.no_progress and sys.stderr.isatty() and n_frames > 1:
        from tqdm import tqdm

        bar = tqdm(total=n_frames, unit="frame", file=sys.stderr, dynamic_ncols=True)
    try:
        with MaskFile(out, methods, n_frames, shape, attrs=attrs) as mf:
            for frame in iter_frames(args.frames, expect_shape=shape, expect_note=note):
                masks = {m: engine(m, frame.data) for m in methods}
                mf.write(frame.index, masks)
                labels.append(frame.source)
                if overlays is not None:
                    from .powder.demo import plot_mask_overlay

                    plot_mask_overlay(overlays / f"frame_{frame.index:06d}.png", frame.data, masks, mask,
                                      title=f"{frame.source}: spot mask{'s' if len(masks) > 1 else ''}")
                if integ is not None:
                    from .powder.integrate import integrate

                    for m in methods:
                        curves[m].append(integrate(frame.data, geom, spots=masks[m], detector_mask=mask,
                                                   npt=args.npt, unit=args.unit))
                if bar is not None:
                    bar.update(1)
            mf.set_labels(labels)
    finally:
        engine.close()
        if bar is not None:
            bar.close()
    for name in methods:
        px = mf.spot_pixels[name]
        print(f"{name}: {px} spot pixels in {n_frames} frame(s) ({px / (n_frames * shape[0] * shape[1]) * 100:.3f} "
              "% of the pixels)")
    print(f"masks → {out}")
    if overlays is not None:
        print(f"overlays → {overlays}/frame_*.png ({n_frames})")
    if integ is not None:
        from .powder.integrate import stack_patterns, write_patterns

        patterns = {m: stack_patterns(curves[m]) for m in methods}
        written = write_patterns(integ, patterns, frames=labels, sources=args.frames, poni=str(args.poni),
                                 geometry=geom)
        first = patterns[methods[0]]
        where = str(written[0]) if len(written) == 1 else f"{len(written)} files {written[0]} … {written[-1]}"
        print(f"patterns ({n_frames} frame(s), {first.npt} bins in {first.unit}, masked ({', '.join(methods)} "
              f"spots) and unmasked; pyFAI {','.join(first.method)}) → {where}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from .live.replay import replay_files

    to = args.to or ("tcp://*:31001" if args.format == "stream2" else "tcp://*:9999")

    def bound(endpoint: str) -> None:
        print(f"gixdrt replay: {args.format} on {endpoint}; waiting up to {args.wait:g} s for a consumer",
              file=sys.stderr, flush=True)

    summary = replay_files(args.inputs, to=to, rate=args.rate, format=args.format, compression=args.compression,
                           series_id=args.series_id, repeat=args.repeat, start_timeout=args.wait,
                           send_timeout=args.wait, on_bound=bound)
    print(f"gixdrt replay: {summary.line()}")
    return 0


def _in_range(kind: type, lo: float, hi: float | None = None):
    """An argparse type: a number of ``kind`` in [lo, hi] (hi None: no upper bound; NaN refused), or a one-line
    error with the range."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (lo <= value and (hi is None or value <= hi)):  # False for NaN too
            bound = f"must be ≥ {lo}" if hi is None else f"is outside [{lo}, {hi}]"
            raise argparse.ArgumentTypeError(f"{text} {bound}" if hi is not None else f"{text}: {bound}")
        return value

    return parse


_DEVICE = re.compile(r"(cpu|cuda(:\d{1,2})?)")


def _device(text: str) -> str:
    """An argparse type: cpu, cuda or cuda:N."""
    if not _DEVICE.fullmatch(text.strip().lower()):
        raise argparse.ArgumentTypeError(f"{text!r}: expected cpu, cuda or cuda:N (e.g. cuda:1)")
    return text.strip().lower()


def _parse_batch_profile(text: str) -> int | tuple[int, int, int]:
    """'4' → 4; '1:4:8' → (1, 4, 8) (min:opt:max of the engine's batch profile)."""
    try:
        parts = tuple(int(v) for v in text.split(":"))
    except ValueError:
        parts = ()
    if len(parts) not in (1, 3) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected N or MIN:OPT:MAX (positive integers)")
    return parts[0] if len(parts) == 1 else parts


def cmd_build(args: argparse.Namespace) -> int:
    from .engine.base import EngineUnavailableError
    from .engine.trt import build_engine, read_sidecar, tensorrt_status
    from .io.atomic import check_output

    onnx = Path(args.onnx)
    if not onnx.is_file():
        raise GixdrtError(f"{onnx}: no such ONNX file")
    out = check_output(args.out, inputs=[onnx, *([args.timing_cache] if args.timing_cache else [])])
    check_output(f"{out}.json", inputs=[onnx], option="--out (sidecar)")
    why = tensorrt_status()
    if why:
        print(f"gixdrt build: error: TensorRT cannot run here: {why}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        out = build_engine(onnx, args.out, precision=args.precision, batch=args.batch_profile,
                           workspace_gib=args.workspace, timing_cache=args.timing_cache, plugins=not args.no_plugins,
                           progress=not args.no_progress)
    except EngineUnavailableError as exc:
        print(f"gixdrt build: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        raise GixdrtError(str(exc)) from None
    side = read_sidecar(out)
    gpu = side["gpu"]
    batch = side.get("batch") or {}
    print(f"built {out} ({side['precision']}, batch {batch.get('min')}..{batch.get('max')}, TensorRT "
          f"{side['tensorrt_version']}, {gpu['name']} sm {gpu['compute_capability']}) in "
          f"{time.perf_counter() - t0:.1f} s; sidecar {out}.json")
    return 0


def _export_paths(out: Path, graph: str) -> dict[str, Path]:
    """--out and --graph → {graph: file}. dense or head: OUT itself; both: X.onnx → X.dense.onnx, X.head.onnx."""
    if out.suffix.lower() != ".onnx":
        raise GixdrtError(f"{out}: --out must name an .onnx file")
    if graph != "both":
        return {graph: out}
    return {kind: out.with_name(f"{out.stem}.{kind}.onnx") for kind in ("dense", "head")}


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_dense, export_head
    from .io.atomic import check_output
    from .model import zoo

    shape = args.shape
    paths = _export_paths(Path(args.out), args.graph)
    model_files = [args.model] if os.path.exists(args.model) else []
    for path in paths.values():
        check_output(path, inputs=model_files)
    model = zoo.load(args.model)
    cfg = model.config
    if "dense" in paths and (shape[0] % cfg.height_multiple or shape[1] % cfg.width_multiple):
        raise GixdrtError(f"--shape {shape[0]}x{shape[1]}: this model needs H a multiple of {cfg.height_multiple} and W a "
                          f"multiple of {cfg.width_multiple} (e.g. 512x1024)")
    rois = args.rois if args.rois is not None else cfg.rpn_post_nms_top_n * args.batch
    fp16 = args.precision == "fp16"
    for kind, path in paths.items():
        t0 = time.perf_counter()
        try:
            if kind == "dense":
                export_dense(model, path, shape=shape, batch=args.batch, fp16=fp16)
                what = f"dense graph (batch {args.batch}, {shape[0]}×{shape[1]})"
            else:
                export_head(model, path, rois=rois, fp16=fp16)
                what = f"head graph ({rois} RoIs)"
        except ValueError as exc:
            raise GixdrtError(f"{path}: {exc}") from None
        line = f"{path}: {what}, {args.precision}, {path.stat().st_size / 1e6:.1f} MB, exported in {time.perf_counter() - t0:.1f} s"
        if args.no_check:
            print(f"{line}; not checked (--no-check)")
            continue
        from .export.check import GraphCheckError, check_graph

        try:
            report = check_graph(path)
        except GraphCheckError as exc:
            problems = exc.report.problems
            raise GixdrtError(f"{path}: written, but fails the graph checks for TensorRT: {len(problems)} problem(s), "
                              f"first: {problems[0]}") from None
        ops = ", ".join(f"{k}×{v}" for k, v in sorted(report.ops.items()))
        print(f"{line}; opset {report.opset}, {sum(report.ops.values())} nodes ({ops}); static shapes OK; "
              "TensorRT ops OK")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:

    from .bench import format_result, load_images, measure, published_image
    from .io.atomic import atomic_path, check_output

    if args.json:
        check_output(args.json, inputs=[*args.inputs, *([args.config] if args.config else [])], option="--json")
    if args.inputs:
        images, sources = load_images(args.inputs, config=args.config, input=args.input, sum_n=args.sum,
                                      limit=args.batch)
        label = sources[0] if len(sources) == 1 else f"{sources[0]} … {sources[-1]}"
    elif args.config or args.input != "raw":
        raise GixdrtError("--config and --input go with FRAMES; without frames the published real frame is used")
    else:
        images, label = published_image()
    with _naming(args, backend="auto", device=None, precision="fp32", threads=None, batch=1):
        res = measure(images, model=args.model, backend=args.backend, device=args.device, precision=args.precision,
                      threads=args.threads, batch=args.batch, runs=args.runs, warmup=args.warmup, input_label=label)
    print(f"gixdrt bench: {format_result(res)}")
    if args.json:
        out = Path(args.json)
        with atomic_path(out) as tmp:
            tmp.write_text(json.dumps({"gixdrt": __version__, **res}, indent=2) + "\n", encoding="utf-8")
        print(f"  result → {out}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import print_report

    print_report()
    return 0


#: --backend choices of the commands that run the detector (gixdrt.engine.PREFERENCE plus "auto")
from .engine.backends import PREFERENCE as _PREFERENCE

DETECTOR_BACKENDS = ["auto", *_PREFERENCE]
#: simulator modes (= gixdrt.sim.SIM_MODES, written out so that --help does not import the simulator)
SIM_MODES = ("ours", "shifted", "paper")


MASK_HELP = ("bad pixels: an image of the detector's shape in any format read here, nonzero = masked (repeatable; "
             "added to the config's mask, the NeXus/Eiger pixel_mask of HDF5 inputs, and the non-finite and flag "
             "pixels masked always)")


def _detector_options(p: argparse.ArgumentParser) -> None:
    """The detector options of ``gixdrt detect`` and ``gixdrt watch`` (read by :func:`_make_detector`)."""
    p.add_argument("--model", default="default", help="published[:NAME], default, or a checkpoint path (default: default)")
    p.add_argument("--backend", default="auto", choices=DETECTOR_BACKENDS,
                   help="detector backend (default auto: the first available of tensorrt, onnxruntime, torch)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: chosen with the backend)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default="fp32",
                   help="exported graphs' precision (box arithmetic stays fp32; int8: the dense graph quantised, "
                        "onnxruntime only; bf16: the dense graph under CPU autocast, --backend torch only)")
    p.add_argument("--threads", type=_in_range(int, 1, 1024), default=None, help="ONNX Runtime CPU threads (default: one per core)")
    p.add_argument("--score-threshold", type=_in_range(float, -1.0, 1.0), default=None,
                   help="keep peaks scoring ≥ this (default: the config's, else the model card's: 0.6)")
    p.add_argument("--nms-iou", type=_in_range(float, 0.0, 1.0), default=None,
                   help="final NMS IoU (default: the config's, else the model card's: 0.1)")
    p.add_argument("--max-detections", type=_in_range(int, 1, 100_000), default=None,
                   help="at most this many peaks per frame (default: the model card's: 250)")


class _Parser(argparse.ArgumentParser):
    """One line for a usage error: ``gixdrt <command>: error: <option>: <problem>`` (exit status 2)."""

    def error(self, message: str):
        message = re.sub(r"^argument ([^:]+): ", r"\1: ", message)
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cluster_options(p: argparse.ArgumentParser, unit_option: str) -> None:
    """--cluster, the work unit option (``unit_option``: detect's --unit, mask's --work-unit), --retries, --fresh."""
    p.add_argument("--cluster", metavar="local:N|ADDRESS", default=None,
                   help="run on a Dask cluster: local:N starts N worker processes here, tcp://HOST:8786 joins a "
                        "running scheduler (pip install 'gixdrt[dask]'); the same output as without, resumable "
                        "(see README: Reprocessing on a cluster)")
    p.add_argument(unit_option, metavar="file|files:K|frames:K", default=None,
                   help="with --cluster: work unit, one input file (default), K files, or at most K frames of a file")
    p.add_argument("--retries", type=_in_range(int, 0, 100), default=None, metavar="N",
                   help="with --cluster: times a failing unit is retried before it is reported (default 2)")
    p.add_argument("--fresh", action="store_true",
                   help="with --cluster: discard the finished units of an earlier unfinished run of this output "
                        "(default: resume it)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gixdrt", description="Real-time Bragg peak detection in GIXD detector frames.")
    parser.add_argument("--version", action="version", version=f"gixdrt {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def add(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kwargs)

    kernel_impls = ["reference", "cpu", "cuda"]

    p = add("preprocess", help="raw frame → polar or contrast-enhanced image")
    p.add_argument("frame", help="raw frame: .tif, .npy, .edf/.cbf (fabio), or FILE.h5::/dataset")
    p.add_argument("--config", required=True, help="geometry config (published gixi YAML)")
    p.add_argument("--stage", choices=["polar", "contrast"], default="contrast", help="where to stop (default contrast)")
    p.add_argument("--out", required=True, help="output image: .npy, .tif (float32) or .png (16-bit, scaled)")
    p.add_argument("--sum", type=_in_range(int, 1, 100_000), default=1, metavar="N", help="sum N consecutive frames of a stack (default 1)")
    p.add_argument("--index", type=_in_range(int, 0), default=0, help="first frame of a stack (default 0)")
    p.add_argument("--kernels", choices=kernel_impls, default=None,
                   help="the kernels' implementation (default: cpu, the compiled kernels; reference: NumPy)")
    p.add_argument("--mask", action="append", default=[], metavar="FILE", help=MASK_HELP)
    p.set_defaults(func=cmd_preprocess)

    p = add("detect", help="raw frames (or polar images) → peak table (.csv or .h5)")
    p.add_argument("inputs", nargs="+", metavar="INPUTS",
                   help="frames: .tif (multi-page ok), .npy stacks, .edf/.cbf (fabio), FILE.h5::/dataset, glob patterns")
    p.add_argument("--config", help="geometry config (published gixi YAML); required for raw frames")
    p.add_argument("--input", choices=["raw", "polar", "processed"], default="raw",
                   help="raw detector frames (default), polar images, or processed (contrast-enhanced) polar images")
    _detector_options(p)
    p.add_argument("--sum", type=_in_range(int, 1, 100_000), default=1, metavar="N", help="sum N consecutive frames (default 1)")
    p.add_argument("--batch", type=_in_range(int, 1, 4096), default=1, help="frames per detector call (default 1)")
    p.add_argument("--out", required=True, help="peak table: .csv or .h5")
    p.add_argument("--gixi-compat", metavar="FILE.h5",
                   help="also write the authors' per-frame-group HDF5 layout (normalized boxes, scores, polar image, "
                        "intensities) that their viewer opens")
    p.add_argument("--mask", action="append", default=[], metavar="FILE", help=MASK_HELP)
    p.add_argument("--link", action="store_true",
                   help="link peaks of consecutive frames into tracks (one to one by largest box IoU) and write a "
                        "track column (+ /tracks in .h5 output)")
    p.add_argument("--link-iou", type=_in_range(float, 0.01, 1.0), default=None, metavar="IOU",
                   help="with --link: smallest box IoU that links peaks of consecutive frames (default 0.3)")
    p.add_argument("--min-track", type=_in_range(int, 1, 1_000_000_000), default=None, metavar="K",
                   help="with --link: tracks spanning fewer than K frames get track -1 (default 1: keep all)")
    p.add_argument("--plot-tracks", metavar="PNG", help="with --link: plot each track's |Q| against frame")
    p.add_argument("--cxi", metavar="FILE.cxi",
                   help="also write a CXI-style peak list (/entry_1/result_1/nPeaks, peakXPosRaw, ...) as "
                        "CrystFEL and OM read it")
    p.add_argument("--hits", metavar="FILE.lst", help="screen the frames and list the hits (FILE //N per line)")
    p.add_argument("--min-peaks", type=_in_range(int, 0, 100_000), default=None, metavar="N",
                   help="with --hits or --keep-misses: a hit has at least N peaks (default 1)")
    p.add_argument("--keep-misses", type=_in_range(float, 0.0, 1.0), default=None, metavar="FRACTION",
                   help="hits only in --cxi and --gixi-compat: keep every hit and this random fraction of misses "
                        "(seeded, flagged; the peak table keeps all frames)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _cluster_options(p, "--unit")
    p.set_defaults(func=cmd_detect)

    p = add("stream", help="detect peaks in a live DECTRIS stream (SIMPLON v2 CBOR or v1 JSON) → a peak table per series",
            description="Connect to a detector's stream (gixdrt must be its only consumer: a PUSH socket hands each "
                        "message to one puller), run the detect pipeline on every frame and write one peak table "
                        "per series, readable while it runs (HDF5 in SWMR mode) and renamed from .part at the "
                        "series' end with its counters: expected, received, processed, rejected, missed, late, "
                        "decode errors. A live status line shows rate, latency, queue and drops.")
    p.add_argument("endpoint", metavar="ENDPOINT", help="the detector's stream, e.g. tcp://dcu:31001 (v2) or "
                                                         "tcp://dcu:9999 (v1)")
    p.add_argument("--format", choices=["auto", "stream2", "stream1"], default="auto",
                   help="message format (default auto: told from each message)")
    p.add_argument("--config", help="geometry config (published gixi YAML); required for raw frames")
    p.add_argument("--input", choices=["raw", "polar", "processed"], default="raw",
                   help="raw detector frames (default), polar images, or processed polar images")
    p.add_argument("--channel", default=None, help="the image channel to process (default: each frame's first)")
    p.add_argument("--mask", action="append", default=[], metavar="FILE", help=MASK_HELP)
    _detector_options(p)
    p.add_argument("--out", required=True, metavar="RUN.h5|RUN.csv",
                   help="peak tables: RUN_<series_id>.h5 per series (RUN.h5 itself with --series 1)")
    p.add_argument("--mode", choices=["lossless", "monitor"], default="lossless",
                   help="lossless: never drop, slow the stream down when behind (default); monitor: newest wins, "
                        "every dropped frame counted")
    p.add_argument("--queue", type=_in_range(int, 1, 1_000_000), default=64, metavar="N",
                   help="frames queued between the stream and the detector (default 64)")
    p.add_argument("--batch", type=_in_range(int, 1, 4096), default=4, metavar="B",
                   help="at most B frames per detector call when behind; 1 when idle (default 4)")
    p.add_argument("--latency-budget", type=_in_range(float, 0.0), default=None, metavar="S",
                   help="frames slower than S seconds from arrival to result are counted late")
    p.add_argument("--decode-threads", type=_in_range(int, 1, 256), default=None, metavar="N",
                   help="threads decompressing frames (default: every core)")
    p.add_argument("--publish", default=None, metavar="tcp://*:PORT",
                   help="publish a result message per frame on a PUB socket (viewers: never slows processing)")
    p.add_argument("--push", default=None, metavar="tcp://*:PORT",
                   help="send a result message per frame on a PUSH socket (lossless consumers)")
    p.add_argument("--series", type=_in_range(int, 1, 1_000_000), default=None, metavar="N",
                   help="exit after N series have ended (complete or not; each is reported)")
    p.add_argument("--timeout", type=_in_range(float, 0.0), default=None, metavar="S",
                   help="exit after S seconds without a message (default: run until stopped)")
    p.add_argument("--series-timeout", type=_in_range(float, 0.0), default=30.0, metavar="S",
                   help="a series with no frame for S seconds and no end message ends as incomplete (default 30)")
    p.add_argument("--link", action="store_true", help="link peaks of consecutive frames into tracks (track column)")
    p.add_argument("--link-iou", type=_in_range(float, 0.0, 1.0), default=None, help="IoU to link peaks (default 0.3)")
    p.add_argument("--min-peaks", type=_in_range(int, 0, 100_000), default=1, metavar="N",
                   help="a frame with at least N peaks is a hit (default 1)")
    p.add_argument("--cxi", default=None, metavar="RUN.cxi", help="also a CXI peak file per series (CrystFEL/OM layout)")
    p.add_argument("--hits", default=None, metavar="RUN.lst", help="also a list of the hit frames per series")
    p.add_argument("--no-warmup", dest="warmup", action="store_false",
                   help="do not run a dummy frame before connecting")
    p.set_defaults(func=cmd_stream)

    p = add("watch", help="process frame files as they appear in a folder → a peak table per file (resumable)",
            description="Watch DIR for frame files matching --pattern and run the gixdrt detect pipeline on each "
                        "file once it is complete (unchanged for --settle seconds and readable as a whole). Each file's "
                        "peaks go to their own table, named from --out (run.h5 → run_<file>.h5), written when the "
                        "file is done; one line per file, a summary at the end. The --state file records the "
                        "finished files: run the same command again to resume (finished files are skipped, an "
                        "unfinished one is redone). Ctrl-C or SIGTERM stops cleanly.")
    p.add_argument("directory", metavar="DIR", help="the folder to watch")
    p.add_argument("--pattern", default="*.h5", help="file-name pattern (default '*.h5'; e.g. 'scan_*.tif')")
    p.add_argument("--recursive", action="store_true", help="also watch the subfolders")
    p.add_argument("--dataset", default=None, metavar="/PATH",
                   help="HDF5 dataset of the frames (default: the NeXus default or Eiger data links, as detect)")
    p.add_argument("--config", help="geometry config (published gixi YAML); required for raw frames")
    p.add_argument("--input", choices=["raw", "polar", "processed"], default="raw",
                   help="raw detector frames (default), polar images, or processed (contrast-enhanced) polar images")
    _detector_options(p)
    p.add_argument("--batch", type=_in_range(int, 1, 4096), default=1, help="frames per detector call (default 1)")
    p.add_argument("--out", required=True, metavar="RUN.h5|RUN.csv",
                   help="peak tables, one per file: RUN_<file>.h5 (or .csv) beside RUN, <file> the file's path in "
                        "DIR without its suffix, / as __")
    p.add_argument("--state", metavar="FILE.json", help="resume state (default: OUT.watch-state.json)")
    p.add_argument("--idle-exit", type=_in_range(float, 0.0), default=None, metavar="S",
                   help="stop after S seconds without a new or changing file (default: run until stopped)")
    p.add_argument("--settle", type=_in_range(float, 0.0, 86400.0), default=1.0, metavar="S",
                   help="a file must be unchanged this long before it is read (default 1 s; more than the writer's "
                        "longest pause where HDF5 file locking is off)")
    p.add_argument("--poll", type=_in_range(float, 0.01, 3600.0), default=0.5, metavar="S",
                   help="seconds between scans of the folder (default 0.5)")
    p.add_argument("--give-up", type=_in_range(float, 0.0, 86400.0), default=30.0, metavar="S",
                   help="a complete-looking file that still does not open after S seconds is reported and skipped "
                        "(default 30)")
    p.add_argument("--mask", action="append", default=[], metavar="FILE", help=MASK_HELP)
    p.set_defaults(func=cmd_watch)

    p = add("convert", help="published checkpoint → gixdrt's format (safetensors + model card)")
    p.add_argument("checkpoint", nargs="?", default="published", help="published[:NAME] (default) or a .h5 path")
    p.add_argument("--out", help="output directory (default: the user cache, models/NAME)")
    p.add_argument("--fp16", action="store_true", help="store the weights as float16")
    p.set_defaults(func=cmd_convert)

    p = add("demo", help="the whole job on the published real frame: PNGs, peaks.csv, a summary")
    p.add_argument("--out-dir", default="gixdrt-demo", help="where to write the figures (default ./gixdrt-demo)")
    p.add_argument("--kernels", choices=kernel_impls, default=None,
                   help="the preprocessing kernels' implementation (default: cpu, the compiled kernels)")
    p.add_argument("--model", default="default", help="detector model (default: default)")
    p.add_argument("--live", type=_in_range(int, 1, 1_000_000), nargs="?", const=100, default=None, metavar="N",
                   help="replay the frame N times (default 100) as a DECTRIS stream on loopback through the live "
                        "engine and report rate, latency and drops")
    p.add_argument("--rate", type=_in_range(float, 0.001, 1e6), default=None, metavar="HZ",
                   help="--live: frames per second sent (default: as fast as possible)")
    p.add_argument("--mode", choices=["lossless", "monitor"], default="lossless",
                   help="--live: delivery mode (default lossless)")
    p.add_argument("--batch", type=_in_range(int, 1, 256), default=4, metavar="B",
                   help="--live: at most B frames per detector call when behind (default 4)")
    p.add_argument("--powder", action="store_true",
                   help="the powder pipeline instead: a generated frame, U-Net and classical spot masks, masked "
                        "azimuthal integration, peak-area errors; writes OUT_DIR/powder.png (--model: powder model)")
    p.add_argument("--size", type=_in_range(int, 128, 16384), default=2880, metavar="PX",
                   help="--powder: frame side in px (default 2880)")
    from .powder.demo import DEMO_INDEX, DEMO_SEED

    p.add_argument("--seed", type=_in_range(int, 0, 2**63 - 1), default=DEMO_SEED,
                   help=f"--powder: simulator seed (default {DEMO_SEED})")
    p.add_argument("--index", type=_in_range(int, 0), default=DEMO_INDEX,
                   help=f"--powder: frame index (default {DEMO_INDEX})")
    p.set_defaults(func=cmd_demo)

    p = add("simulate", help="simulated polar GIXD images with ground-truth boxes → .npz")
    p.add_argument("--n", type=_in_range(int, 1, 10_000_000), required=True, help="number of images")
    p.add_argument("--seed", type=_in_range(int, 0, 2**63 - 1), default=0, help="seed (image i of a seed is always the same)")
    p.add_argument("--start", type=_in_range(int, 0), default=0, help="index of the first image (default 0)")
    p.add_argument("--size", type=_parse_size, default="512x512", help="HxW: 512x512 (default) or 512x1024")
    p.add_argument("--sim-config", help="YAML with simulator parameters (a 'sim' section or the parameters)")
    p.add_argument("--mode", choices=SIM_MODES, default="ours",
                   help="simulator: ours (default), shifted, or paper (the authors' simulator from the published "
                        "facts; 512x512 only)")
    p.add_argument("--workers", type=_in_range(int, 1, 1024), default=1, help="processes (the result does not depend on it)")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--verbose", action="store_true", help="print the simulator configuration")
    p.set_defaults(func=cmd_simulate)

    p = add("train", help="train the detector on simulated images (the paper's recipe by default)")
    p.add_argument("--config", help="training YAML (e.g. configs/train-paper.yaml); omit with --resume to reuse the run's")
    p.add_argument("--run-dir", help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    p.add_argument("--steps", type=_in_range(int, 1), help="override the number of steps")
    p.add_argument("--batch-size", type=_in_range(int, 1, 4096), help="override the batch size")
    p.add_argument("--device", type=_device, help="override the device (cpu, cuda, cuda:N)")
    p.add_argument("--amp", help="override mixed precision (none, bf16, fp16)")
    p.add_argument("--num-workers", type=_in_range(int, 0, 1024), help="override the simulation worker processes")
    p.add_argument("--seed", type=_in_range(int, 0, 2**63 - 1), help="override the seed")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = add("train-powder", help="train the powder spot-masking U-Net on generated frames")
    p.add_argument("--run-dir", required=True, help="run directory (checkpoints, losses.csv, model/)")
    p.add_argument("--config", help="YAML or JSON with PowderTrainConfig fields (default: the built-in recipe)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's newest checkpoint")
    p.add_argument("--steps", type=_in_range(int, 1), help="override the number of steps")
    p.add_argument("--batch-size", type=_in_range(int, 1, 4096), help="override the batch size")
    p.add_argument("--seed", type=_in_range(int, 0, 2**63 - 1), help="override the seed")
    p.add_argument("--threads", type=_in_range(int, 1, 1024), help="PyTorch CPU threads")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_train_powder)

    p = add("evaluate-powder", help="U-Net and classical spot masks side by side on generated powder frames")
    p.add_argument("--model", default="default", help="powder model name or directory (default: default)")
    p.add_argument("--n", type=_in_range(int, 1, 100_000), default=24, help="frames (default 24)")
    p.add_argument("--seed", type=_in_range(int, 0, 2**63 - 1), default=777, help="seed of the set (default 777)")
    p.add_argument("--size", type=_in_range(int, 64, 16384), default=1024, help="frame side in px (default 1024)")
    p.add_argument("--shifted", action="store_true", help="the shifted generator settings (other calibrants, wider ranges)")
    p.add_argument("--threshold", type=_in_range(float, 1e-6, 1 - 1e-6), help="P(spot) threshold (default: the card's)")
    p.add_argument("--min-size", type=_in_range(int, 0, 1_000_000), help="drop smaller components (default: the card's)")
    p.add_argument("--out", help="report (.json)")
    p.add_argument("--intensities", action="store_true",
                   help="also integrate every frame (pyFAI) and report the error of the rings' peak areas against "
                        "the spot-free truth with each mask, the true mask and no spot mask")
    p.add_argument("--no-progress", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_evaluate_powder)

    p = add("mask", help="spot masks of powder frames (U-Net, classical pixel mask search, or both)")
    p.add_argument("frames", nargs="+", metavar="FRAMES", help="frames or stacks (.tif, .npy, .edf/.cbf, FILE.h5::/dataset)")
    p.add_argument("--out", required=True,
                   help="masks: .npy (one method, bool[N, H, W]) or .h5 (dataset masks bool[N, H, W], masks_<method> "
                        "for each with --method both, frames, and the settings as attributes)")
    p.add_argument("--method", choices=["unet", "classical", "both"], default="unet", help="default unet")
    p.add_argument("--poni", help="pyFAI PONI file of the detector (needed by the classical method, --integrate and "
                                  "U-Nets with a ring channel)")
    p.add_argument("--model", default="default", help="powder model name or directory (default: default)")
    p.add_argument("--mask", action="append", default=[], metavar="FILE",
                   help="detector mask image, nonzero = excluded (repeatable); never masked as spots")
    _cluster_options(p, "--work-unit")  # --unit is the integration's radial unit
    p.add_argument("--threshold", type=_in_range(float, 1e-6, 1 - 1e-6), help="P(spot) threshold (default: the card's)")
    p.add_argument("--min-size", type=_in_range(int, 0, 1_000_000), help="drop smaller components (default: the card's)")
    p.add_argument("--threads", type=_in_range(int, 1, 1024), default=None, help="ONNX Runtime / PyTorch CPU threads")
    p.add_argument("--runtime", choices=["auto", "onnxruntime", "torch"], default="auto",
                   help="the U-Net's runtime: auto (default: PyTorch in bfloat16 where it is installed and the CPU "
                        "has AMX/AVX512-BF16, 1.8× faster, else ONNX Runtime fp32), onnxruntime, or torch")
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                   help="the U-Net's precision on --runtime torch (bf16: CPU autocast; default fp32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--overlays", metavar="DIR",
                   help="also write one PNG per frame into DIR (created): the frame with its spot mask(s) over it, "
                        "frame_NNNNNN.png in input order")
    p.add_argument("--integrate", metavar="PATTERNS.h5|PATTERNS.xy",
                   help="also integrate every frame azimuthally (pyFAI; needs --poni): the pattern with the spots "
                        "masked and the one with the detector mask only. .h5: datasets radial, masked, unmasked "
                        "(N×npt); .xy: two columns per file, STEM.xy and STEM_unmasked.xy (one frame) or STEM_K.xy "
                        "and STEM_K_unmasked.xy (frame K of several)")
    p.add_argument("--npt", type=_in_range(int, 2, 1_000_000), default=2000, help="--integrate: bins (default 2000)")
    p.add_argument("--unit", choices=["2th_deg", "q_A^-1"], default="2th_deg",
                   help="--integrate: radial unit (default 2th_deg)")
    p.set_defaults(func=cmd_mask)

    p = add("evaluate", help="the paper's evaluation on a simulated set; several models side by side")
    p.add_argument("--model", nargs="+", default=["default"], help="model names or paths (default: default)")
    p.add_argument("--n", type=_in_range(int, 1, 10_000_000), default=1000, help="simulated images (default 1000)")
    p.add_argument("--seed", type=_in_range(int, 0, 2**63 - 1), default=12345, help="seed of the evaluation set (default 12345)")
    p.add_argument("--size", type=_parse_size, default="512x512", help="HxW of the simulated images (default 512x512)")
    p.add_argument("--backend", default="auto", choices=DETECTOR_BACKENDS)
    p.add_argument("--batch", type=_in_range(int, 1, 4096), default=8, help="images per detector call (default 8)")
    p.add_argument("--sim", default=None, metavar="YAML",
                   help="simulator settings overriding the mode's defaults (e.g. configs/sim-shifted.yaml)")
    p.add_argument("--mode", choices=SIM_MODES, default="ours",
                   help="simulator of the set: ours (default), shifted (= --sim configs/sim-shifted.yaml), or paper "
                        "(the authors' simulator from the published facts; 512x512 only)")
    p.add_argument("--out-dir", default="runs/evaluate", help="where metrics.json and the PNGs go")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = add("build", help="ONNX graph → TensorRT engine for this GPU (+ a .json sidecar)")
    p.add_argument("onnx", help="graph exported by gixdrt (static shapes)")
    p.add_argument("--out", required=True, help="engine file to write (the sidecar goes to OUT.json)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp32 (default) or fp16; on TensorRT 11 fp16 needs an fp16 graph")
    p.add_argument("--batch", dest="batch_profile", type=_parse_batch_profile, default=None, metavar="N|MIN:OPT:MAX",
                   help="batch profile (default: the graph's static batch)")
    p.add_argument("--workspace", type=_in_range(float, 0.0625, 1024.0), default=4.0, metavar="GiB", help="builder workspace limit (default 4)")
    p.add_argument("--timing-cache", default=None, metavar="FILE", help="TensorRT timing cache, read and updated")
    p.add_argument("--no-plugins", action="store_true", help="do not load gixdrt's TensorRT plugin library")
    p.add_argument("--no-progress", action="store_true", help="do not print the builder's phases")
    p.set_defaults(func=cmd_build)

    p = add("export", help="detector → ONNX graphs with static shapes (checked for a TensorRT build)",
                       description="Export the dense graph (images → RPN outputs and P2) and/or the box-head graph "
                                   "(RoI features → scores, deltas), then check each for TensorRT: supported ops, "
                                   "opset, static shapes. One line per written graph.")
    p.add_argument("--model", default="default", help="published[:NAME], default, or a checkpoint path (default: default)")
    p.add_argument("--shape", type=_parse_size, default="512x1024", help="HxW of the polar image (dense graph; default 512x1024)")
    p.add_argument("--batch", type=_in_range(int, 1, 4096), default=1, help="images per call, fixed in the dense graph (default 1)")
    p.add_argument("--graph", choices=["dense", "head", "both"], default="dense",
                   help="which graph (default dense); dense or head are written to --out, both to X.dense.onnx and "
                        "X.head.onnx next to --out X.onnx")
    p.add_argument("--rois", type=_in_range(int, 1, 1_000_000), default=None,
                   help="RoIs per head call, fixed in the head graph (default: the model's proposals per image × "
                        "--batch, 1000·B for the published model)")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp32 (default) or fp16 weights and activations (inputs and outputs stay float32)")
    p.add_argument("--out", required=True, metavar="X.onnx", help="graph file to write (see --graph)")
    p.add_argument("--no-check", action="store_true", help="do not run the TensorRT graph checks")
    p.set_defaults(func=cmd_export)

    p = add("bench", help="detector latency, frames/s, per-stage times and peak memory on one backend",
                       description="Time the detector on B copies of a processed polar image: the published real "
                                   "frame by default, or the first B frames of FRAMES (cycled when fewer). Prints "
                                   "median and p99 latency per batch, frames/s, per-stage medians and peak RSS. "
                                   "benchmarks/bench_engines.py runs the same measurement for every engine.")
    p.add_argument("inputs", nargs="*", metavar="FRAMES", help="frames as gixdrt detect takes them (default: the "
                                                              "published real frame)")
    p.add_argument("--config", help="geometry config (published gixi YAML); required for raw FRAMES")
    p.add_argument("--input", choices=["raw", "polar", "processed"], default="raw",
                   help="what FRAMES hold: raw detector frames (default), polar or processed polar images")
    p.add_argument("--sum", type=_in_range(int, 1, 100_000), default=1, metavar="N", help="sum N consecutive frames (default 1)")
    p.add_argument("--model", default="default", help="published[:NAME], default, or a checkpoint path (default: default)")
    p.add_argument("--backend", default="auto", choices=DETECTOR_BACKENDS,
                   help="detector backend (default auto, as gixdrt detect chooses)")
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:1, ... (default: chosen with the backend)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16", "int8"], default="fp32",
                   help="graph precision (int8: onnxruntime only; bf16: torch on the CPU only)")
    p.add_argument("--threads", type=_in_range(int, 1, 1024), default=None, help="ONNX Runtime CPU threads (default: one per core)")
    p.add_argument("--batch", type=_in_range(int, 1, 4096), default=1, help="images per detector call (default 1)")
    p.add_argument("--runs", type=_in_range(int, 1, 1_000_000), default=20, help="timed calls (default 20)")
    p.add_argument("--warmup", type=_in_range(int, 0, 1_000_000), default=3, help="untimed calls after the first (default 3)")
    p.add_argument("--json", metavar="FILE", help="also write the result as JSON")
    p.set_defaults(func=cmd_bench)

    p = add("replay", help="play frames as a DECTRIS detector stream (Stream V2 CBOR or V1) on a ZeroMQ PUSH socket",
            description="Bind a PUSH socket as a detector does and send the frames of FILES as one series (--repeat: "
                        "several): a start message, one image message per frame, an end message. Sends block until "
                        "a consumer takes them (nothing is dropped); with no consumer within --wait seconds it stops "
                        "with an error.")
    p.add_argument("inputs", nargs="+", metavar="FILES",
                   help="frames: .tif, .npy stacks, .edf/.cbf (fabio), FILE.h5::/dataset, glob patterns")
    p.add_argument("--to", default=None, metavar="ENDPOINT",
                   help="where to bind (default tcp://*:31001 for stream2, tcp://*:9999 for stream1)")
    p.add_argument("--rate", type=_in_range(float, 1e-3, 1e6), default=None, metavar="HZ",
                   help="images per second (default: as fast as the consumer takes them)")
    p.add_argument("--format", choices=["stream2", "stream1"], default="stream2",
                   help="DECTRIS Stream V2 (CBOR, default) or V1 (legacy multipart JSON)")
    p.add_argument("--compression", choices=["bslz4", "lz4", "none"], default="bslz4",
                   help="image compression (default bslz4, as detectors send)")
    p.add_argument("--series-id", type=_in_range(int, 0, 2**63 - 1), default=1, metavar="N",
                   help="series number of the first series (default 1)")
    p.add_argument("--repeat", type=_in_range(int, 1, 1_000_000), default=1, metavar="N",
                   help="send the frames N times, as N series (default 1)")
    p.add_argument("--wait", type=_in_range(float, 0.001, 86_400.0), default=10.0, metavar="S",
                   help="seconds to wait for a consumer to connect, and for any later send (default 10)")
    p.set_defaults(func=cmd_replay)

    p = add("doctor", help="print versions and which backends are available")
    p.set_defaults(func=cmd_doctor)
    return parser


class Terminated(BaseException):
    """SIGTERM or SIGHUP arrived: unwinds like KeyboardInterrupt, so temporary files are removed."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum, frame):
    raise Terminated(signum)


def _catch_termination() -> dict:
    """Turn SIGTERM and SIGHUP into :class:`Terminated` (main thread only); returns the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        sig = getattr(signal, name, None)
        if sig is not None:
            previous[sig] = signal.signal(sig, _raise_terminated)
    return previous


def _describe(exc: BaseException) -> str:
    """One line for a user-facing error."""
    if isinstance(exc, GixdrtError):
        text = str(exc)
    elif isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        text = f"{where}: {exc.strerror}" if where else exc.strerror
    elif isinstance(exc, MemoryError):
        text = f"not enough memory{': ' + str(exc) if str(exc) else ''}; try a smaller --batch or fewer frames"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


#: exceptions that mean bad input, options or environment: one line, exit status 2
USER_ERRORS = (GixdrtError, ValueError, OSError, MemoryError, UnicodeError)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit status: 0 done, 2 bad input or usage (one line naming the file, option or key),
    1 an internal error (one line; --debug shows the traceback), 130 interrupted, 128+N on signal N."""
    from .kernels.registry import BackendUnavailableError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # a usage error (printed, status 2), --help or --version (status 0)
        return exc.code if isinstance(exc.code, int) else 2
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = getattr(args, "debug", False)
    where = f"gixdrt {args.command}"
    previous = _catch_termination()
    try:
        with warnings.catch_warnings():
            if not debug:  # one line per warning, without the source line that raised it
                warnings.showwarning = lambda message, category, *_a, **_k: print(
                    f"{where}: warning: {message}", file=sys.stderr)
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{where}: interrupted; no output was written or replaced", file=sys.stderr)
        return 130
    except Terminated as exc:
        name = signal.Signals(exc.signum).name
        print(f"{where}: stopped by {name}; no output was written or replaced", file=sys.stderr)
        return 128 + exc.signum
    except (*USER_ERRORS, BackendUnavailableError) as exc:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{where}: error: {_describe(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:
        if debug:
            raise
        print(f"{where}: error: internal error ({type(exc).__name__}: {_describe(exc)}); run it again with --debug "
              "for the traceback and report it", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
