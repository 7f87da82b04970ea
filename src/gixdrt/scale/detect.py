"""``gixdrt detect ... --cluster local:N|ADDRESS``: the detect command's run cut into units on a Dask cluster.

The client plans the units from the files' headers, hands them to the workers (:mod:`gixdrt.scale.runner`),
records each finished unit in the manifest, and at the end merges the part files in unit order into the one output
(the same table as a serial run; tracks, hits and the CXI file are computed from the merged table), written
atomically. Then the part folder and the manifest are removed: the output is the record of the run.

Next to the output ``OUT``: ``OUT.parts/`` (the units' part files and the run's mask) and ``OUT.manifest.json``.
A run that stops (a unit failed, Ctrl-C, a lost client) keeps both; the same command again resumes and processes
only the units not finished. Exit status: 0 done; 2 when units failed with bad input (a corrupt file: one line per
unit) or on bad options; 1 when a unit failed otherwise (e.g. its worker died more often than the scheduler allows).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GixdrtError

__all__ = ["detect_on_cluster", "merge_parts", "refuse_options"]


def refuse_options(args: argparse.Namespace) -> None:
    """The options of ``gixdrt detect`` that do not go with --cluster, and the cluster options without it."""
    if args.cluster is None:
        for option, value in (("--unit", args.unit), ("--retries", args.retries), ("--fresh", args.fresh or None)):
            if value is not None:
                raise GixdrtError(f"{option}: needs --cluster")
        return
    from .runner import check_cluster
    from .units import parse_unit

    check_cluster(args.cluster)
    parse_unit(args.unit or "file")
    if args.gixi_compat:
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


def _plan_digest(units) -> str:
    """sha256 of the units' frame ranges (which frames of which stack of which file each unit reads)."""
    h = hashlib.sha256()
    for u in units:
        h.update(repr((u.index, u.first_frame, u.n_frames,
                       [(str(inp.path), inp.dataset, k, a, b) for inp, k, a, b in u.pieces])).encode())
    return h.hexdigest()


def merge_parts(units, parts: Path):
    """The part files of ``units`` in unit order → (table, frame labels, masked float64[N], filled int64[N])."""
    from ..gixd.peaks import PeakTable
    from .worker import part_name, read_part

    tables, sources, masked, filled = [], [], [], []
    for unit in units:
        table, src, m, f = read_part(parts / part_name(unit))
        if len(src) != unit.n_frames:
            raise GixdrtError(f"{parts / part_name(unit)}: holds {len(src)} frame(s), unit {unit.index} has "
                              f"{unit.n_frames}; remove it and run again")
        tables.append(table)
        sources.extend(src)
        masked.append(m)
        filled.append(f)
    return PeakTable.concat(tables), sources, np.concatenate(masked), np.concatenate(filled)


def detect_on_cluster(args: argparse.Namespace, out: Path, cfg, geometry, masks, n_frames: int) -> int:
    """The cluster branch of ``gixdrt detect`` (called after its checks of options, outputs, headers and masks)."""
    from ..cli import _detect_outputs
    from ..io.assets import sha256
    from ..io.atomic import atomic_path, check_output
    from ..io.sources import resolve_inputs, stack_sizes
    from ..model import zoo
    from .manifest import Manifest, model_fingerprint
    from .runner import check_cluster, connect, run_units
    from .units import parse_unit, plan_units
    from .worker import ENGINE_KEYS, make_settings

    unit_spec = args.unit or "file"
    per_unit = parse_unit(unit_spec)  # plan_units' keyword arguments
    files = resolve_inputs(args.inputs)
    sizes = stack_sizes(files, expect_shape=geometry and geometry.frame_shape,
                        expect_note=geometry and geometry.frame_shape_note)
    units, leftover = plan_units(files, sizes, sum_n=args.sum, **per_unit)
    if sum(u.n_frames for u in units) != n_frames:  # cannot happen: both count the same headers
        raise GixdrtError(f"planned {sum(u.n_frames for u in units)} frames in units, the inputs hold {n_frames}")
    if leftover:
        warnings.warn(f"{leftover} frame(s) left over at the end: the frames do not divide into groups of "
                      f"{args.sum}; the incomplete last group is dropped", stacklevel=2)
    parts = out.with_name(out.name + ".parts")
    manifest_path = out.with_name(out.name + ".manifest.json")
    inputs = [str(f.path) for f in files] + ([args.config] if args.config else []) + list(args.mask)
    check_output(manifest_path, inputs=inputs, option="--out (its manifest)")
    check_output(parts, inputs=inputs, option="--out (its parts folder)", directory=True)

    mask_path = parts / "mask.npy"
    threads = args.threads
    n_local = check_cluster(args.cluster)
    if threads is None and args.cluster.startswith("local"):  # N workers share this machine's cores
        threads = max(1, (os.cpu_count() or 1) // (n_local or os.cpu_count() or 1))
    settings = make_settings(
        model=args.model, backend=args.backend, device=args.device, precision=args.precision, threads=threads,
        score_threshold=args.score_threshold, nms_iou=args.nms_iou, max_detections=args.max_detections,
        config=args.config, input=args.input, batch=args.batch, sum_n=args.sum,
        mask=mask_path if (masks is not None and masks.pixels is not None) else None,
        saturation=None if masks is None else masks.saturation, parts=parts)
    fingerprint = {
        # threads change the speed, not the results: a run may resume on another cluster
        "settings": {k: settings[k] for k in (*ENGINE_KEYS, "sum") if k not in ("mask", "config", "threads")},
        "model": model_fingerprint(settings["model"]),
        "config_sha256": sha256(Path(args.config)) if args.config else None,
        "mask_sha256": _mask_digest(masks),
        "inputs": [str(f.path.resolve()) for f in files],
        "unit": unit_spec, "n_units": len(units), "n_frames": n_frames, "plan": _plan_digest(units),
    }
    manifest = Manifest.open(manifest_path, fingerprint, out, fresh=args.fresh)
    if args.fresh or not manifest_path.exists():
        shutil.rmtree(parts, ignore_errors=True)  # part files of another run, never mixed into this one
    parts.mkdir(parents=True, exist_ok=True)
    if settings["mask"] is not None:
        with atomic_path(mask_path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, np.ascontiguousarray(masks.pixels, np.uint8))
    manifest.save()
    finished = manifest.finished(parts)
    todo = [u for u in units if u.index not in finished]
    resumed = sum(u.n_frames for u in units if u.index in finished)
    print(f"gixdrt detect: {n_frames} frame(s) in {len(units)} unit(s) ({unit_spec}), model "
          f"{zoo.describe(args.model)}, cluster {args.cluster}"
          + (f"; resuming {manifest_path}: {len(finished)} unit(s), {resumed} frame(s) done before" if finished
             else ""), file=sys.stderr)
    if masks is not None and not masks.empty:
        print(f"gixdrt detect: masked: {masks.describe()}", file=sys.stderr)

    report = None
    if todo:
        bar = None
        if n_frames > 1 and not args.no_progress:
            from tqdm import tqdm

            bar = tqdm(total=n_frames, initial=resumed, unit="frame", file=sys.stderr, dynamic_ncols=True)
        found = [0]

        def on_done(summary: dict[str, Any]) -> None:
            found[0] += summary["peaks"]
            if bar is not None:
                bar.update(summary["frames"])
                bar.set_postfix(peaks=found[0], refresh=False)

        client, close = connect(args.cluster, gpu=str(args.device or "").startswith("cuda"))
        try:
            report = run_units(client, todo, settings, manifest=manifest, on_done=on_done,
                               retries=2 if args.retries is None else args.retries)
        except BaseException:  # Ctrl-C, SIGTERM, a lost scheduler: what is finished stays for the next run
            if bar is not None:
                bar.close()
            if manifest.done:
                print(f"gixdrt detect: {len(manifest.done)} of {len(units)} unit(s) finished are kept in {parts} "
                      f"({manifest_path}); the same command resumes", file=sys.stderr)
            raise
        finally:
            if bar is not None:
                bar.close()
            close()
        if report.failures:
            for failure in report.failures:
                print(f"gixdrt detect: unit {failure.unit.index} ({failure.unit.describe()}) failed: "
                      f"{failure.message}", file=sys.stderr)
            frames_done = sum(s["frames"] for s in manifest.done.values())
            print(f"gixdrt detect: {len(report.failures)} of {len(units)} unit(s) failed; {len(manifest.done)} "
                  f"unit(s), {frames_done} of {n_frames} frame(s) finished and kept in {parts} ({manifest_path}); "
                  f"no output written: fix the inputs and run the same command again to process only the missing "
                  f"units", file=sys.stderr)
            _print_rates(report)
            return 2 if all(f.user_error for f in report.failures) else 1

    table, sources, masked, filled = merge_parts(units, parts)
    engine = manifest.engine or {}
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
    table, notes = _detect_outputs(args, out, table, n_frames, metadata, None, screener, flags)
    shutil.rmtree(parts, ignore_errors=True)
    manifest.remove()
    seconds = report.seconds if report is not None else 0.0
    done_now = sum(s["frames"] for s in report.done.values()) if report is not None else 0
    with_peaks = len(np.unique(table.frame)) if len(table) else 0
    print(f"{len(table)} peak(s) in {n_frames} frame(s) ({with_peaks} with peaks), {seconds:.2f} s "
          f"({done_now / seconds if seconds > 0 else float('inf'):.2f} frames/s"
          + (f"; {resumed} frame(s) done before" if resumed else "") + f") → {out}")
    if engine.get("describe"):
        print(f"  engine: {engine['describe']}, thresholds score ≥ {thresholds.get('score_threshold')}, "
              f"NMS IoU {thresholds.get('nms_iou')}")
    if report is not None:
        _print_rates(report, stream=sys.stdout)
    for note in notes:
        print(note)
    if len(masked) and masked.max() > 0:
        print(f"  masked: {100 * masked.mean():.2f} % of the polar image sampled masked pixels on average "
              f"(at most {100 * masked.max():.2f} % in one frame); {int(filled.sum())} polar pixel(s) "
              "with no valid sample filled along φ")
    return 0


def _print_rates(report, stream=None) -> None:
    """One line for the run and one per worker: units, frames, frames/s (to ``stream``, default stderr)."""
    stream = sys.stderr if stream is None else stream
    workers = report.per_worker()
    frames = sum(w["frames"] for w in workers.values())
    rate = frames / report.seconds if report.seconds > 0 else float("inf")
    print(f"  cluster: {len(report.done)} unit(s), {frames} frame(s) in {report.seconds:.2f} s on {len(workers)} "
          f"worker(s): {rate:.2f} frames/s in total", file=stream)
    for name, w in sorted(workers.items()):
        print(f"    {name}: {w['units']} unit(s), {w['frames']} frame(s), {w['rate']:.2f} frames/s while busy "
              f"({w['busy']:.2f} s)", file=stream)
