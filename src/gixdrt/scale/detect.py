"""``gixdrt detect ... --cluster local:N|ADDRESS``: the detect command's run cut into units on a Dask cluster.

The client plans the units from the files' headers, hands them to the workers (:mod:`gixdrt.scale.runner`),
records each finished unit in the manifest, and at the end merges the part files in unit order into the one output
(the same table as a serial run; tracks, hits and the CXI file are computed from the merged table), written
atomically. Then the part folder and the manifest are removed: the output is the record of the run.

Next to the output ``OUT``: ``OUT.parts/`` (the units' part files and the run's mask) and ``OUT.manifest.json``
(the run's state; the flow is shared with ``gixdrt mask --cluster``: :mod:`gixdrt.scale.flow`). A run that stops
(a unit failed, Ctrl-C, a lost client) keeps both; the same command again resumes and processes only the units not
finished. Exit status: 0 done; 2 when units failed with bad input (a corrupt file: one line per
unit) or on bad options; 1 when a unit failed otherwise (e.g. its worker died more often than the scheduler allows).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from ..errors import GixdrtError

__all__ = ["detect_on_cluster", "merge_parts", "refuse_options"]


def refuse_options(args: argparse.Namespace) -> None:
    """The options of ``gixdrt detect`` that do not go with --cluster, and the cluster options without it."""
    from .flow import check_cluster_options

    check_cluster_options(args.cluster, args.unit, args.retries, args.fresh)
    if args.cluster is not None and args.gixi_compat:
        raise GixdrtError("--gixi-compat: not available with --cluster (it stores every polar image); run it "
                          "without --cluster")


def _mask_digest(masks) -> str | None:
    if masks is None or masks.empty:
        return None
    h = hashlib.sha256()
    if masks.pixels is not None:
        h.update(repr(masks.pixels.shape).encode())
        h.update(np.ascontiguousarray(masks.pixels, np.uint8).tobytes())
    h.update(repr(masks.saturation).encode())
    return h.hexdigest()


def merge_parts(units, parts: Path):
    """The part files of ``units`` in unit order → (table, frame labels, masked float64[N], filled int64[N])."""
    from ..gixd.peaks import PeakTable
    from .flow import check_part
    from .worker import part_name, read_part

    tables, sources, masked, filled = [], [], [], []
    for unit in units:
        path = parts / part_name(unit)
        table, src, m, f = read_part(path)
        check_part(path, unit, len(src))
        tables.append(table)
        sources.extend(src)
        masked.append(m)
        filled.append(f)
    return PeakTable.concat(tables), sources, np.concatenate(masked), np.concatenate(filled)


def detect_on_cluster(args: argparse.Namespace, out: Path, cfg, geometry, masks, n_frames: int) -> int:
    """The cluster branch of ``gixdrt detect`` (called after its checks of options, outputs, headers and masks)."""
    from ..gixd.outputs import detect_outputs
    from ..io.assets import sha256
    from ..model import zoo
    from .flow import ClusterRun, local_threads, plan_run, print_rates, run_fingerprint
    from .worker import ENGINE_KEYS, make_settings

    unit_spec = args.unit or "file"
    files, units, _ = plan_run(args.inputs, unit_spec, sum_n=args.sum, expect_shape=geometry and geometry.frame_shape,
                               expect_note=geometry and geometry.frame_shape_note)
    if sum(u.n_frames for u in units) != n_frames:  # cannot happen: both count the same headers
        raise GixdrtError(f"planned {sum(u.n_frames for u in units)} frames in units, the inputs hold {n_frames}")
    run = ClusterRun("detect", out, [str(f.path) for f in files] + ([args.config] if args.config else [])
                     + list(args.mask))
    with_mask = masks is not None and masks.pixels is not None
    settings = make_settings(
        model=args.model, backend=args.backend, device=args.device, precision=args.precision,
        threads=local_threads(args.cluster, args.threads), score_threshold=args.score_threshold, nms_iou=args.nms_iou,
        max_detections=args.max_detections, config=args.config, input=args.input, batch=args.batch, sum_n=args.sum,
        mask=run.parts / "mask.npy" if with_mask else None,
        saturation=None if masks is None else masks.saturation, parts=run.parts)
    fingerprint = run_fingerprint(
        # threads change the speed, not the results: a run may resume on another cluster
        {k: settings[k] for k in (*ENGINE_KEYS, "sum") if k not in ("mask", "config", "threads")}, files, units,
        unit_spec, config_sha256=sha256(Path(args.config)) if args.config else None, mask_sha256=_mask_digest(masks))
    run.open(units, fingerprint, fresh=args.fresh,
             arrays={"mask.npy": np.ascontiguousarray(masks.pixels, np.uint8)} if with_mask else None)
    run.announce(unit_spec, f"model {zoo.describe(args.model)}", args.cluster)
    if masks is not None and not masks.empty:
        print(f"gixdrt detect: masked: {masks.describe()}", file=sys.stderr)
    code = run.run(settings, args.cluster, retries=args.retries, progress=not args.no_progress,
                   tally=lambda s: {"peaks": s["peaks"]}, gpu=str(args.device or "").startswith("cuda"))
    if code is not None:
        return code

    table, sources, masked, filled = merge_parts(units, run.parts)
    engine = run.engine
    thresholds = engine.get("thresholds") or {}
    metadata = {"config": cfg, "model_card": engine.get("card"), "model": args.model,
                "backend": engine.get("backend"), "device": engine.get("device"), "input": args.input,
                **thresholds, "sum": args.sum, "inputs": [str(x) for x in args.inputs],
                "cluster_units": len(units), "cluster_unit": unit_spec}
    screener = flags = None
    if args.hits is not None or args.keep_misses is not None:
        from ..gixd.screening import Screener, ScreeningConfig, screen

        screener = Screener(ScreeningConfig(min_peaks=1 if args.min_peaks is None else args.min_peaks,
                                            keep_misses=args.keep_misses or 0.0))
        flags = list(screen(table, n_frames, screener.config, sources=sources))
    table, notes = detect_outputs(args, out, table, n_frames, metadata, None, screener, flags)
    run.finish()
    with_peaks = len(np.unique(table.frame)) if len(table) else 0
    print(f"{len(table)} peak(s) in {n_frames} frame(s) ({with_peaks} with peaks), {run.rate_text()} → {out}")
    if engine.get("describe"):
        print(f"  engine: {engine['describe']}, thresholds score ≥ {thresholds.get('score_threshold')}, "
              f"NMS IoU {thresholds.get('nms_iou')}")
    if run.report is not None:
        print_rates(run.report, stream=sys.stdout)
    for note in notes:
        print(note)
    if len(masked) and masked.max() > 0:
        print(f"  masked: {100 * masked.mean():.2f} % of the polar image sampled masked pixels on average "
              f"(at most {100 * masked.max():.2f} % in one frame); {int(filled.sum())} polar pixel(s) "
              "with no valid sample filled along φ")
    return 0
