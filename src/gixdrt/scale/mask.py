"""``gixdrt mask ... --cluster local:N|ADDRESS``: the powder spot masks of a run cut into units on a Dask cluster.

The client reads the frame shape from the first input's header, plans the units from the headers (``--work-unit``
``file``, ``files:K`` or ``frames:K``; the name ``--unit`` is the radial unit of the integration), combines the
detector masks once and hands the units to the workers, which mask their frames with the method(s) of ``--method``
(:mod:`gixdrt.scale.powder`). At the end the part files are merged in unit order into the output ``gixdrt mask``
writes without ``--cluster`` (:class:`gixdrt.powder.job.MaskFile`: ``.npy`` bool[N, H, W]; ``.h5`` dataset ``masks``
and one ``masks_<method>`` per method with ``--method both``, the frame labels and the settings), written atomically, and the parts folder and manifest are removed. Resume, ``--fresh``, ``--retries``, the report of failed
units and the exit status are those of ``gixdrt detect --cluster`` (:mod:`gixdrt.scale.flow`).
"""
from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from ..errors import GixdrtError

__all__ = ["mask_on_cluster", "refuse_options"]

UNIT_OPTION = "--work-unit"


def refuse_options(args: argparse.Namespace) -> None:
    """The cluster options of ``gixdrt mask`` without --cluster, a bad --cluster or --work-unit, and the options
    that do not go with --cluster. Raises GixdrtError naming the option."""
    from .flow import check_cluster_options

    check_cluster_options(args.cluster, args.work_unit, args.retries, args.fresh, unit_option=UNIT_OPTION)
    if args.cluster is not None and getattr(args, "overlays", None):
        raise GixdrtError("--overlays: not available with --cluster; run it without --cluster on the frames to look at")
    if args.cluster is not None and getattr(args, "integrate", None):
        raise GixdrtError("--integrate: not available with --cluster (the client would read every frame); run it "
                          "without --cluster")


def _write_masks(out: Path, methods: list[str], units, parts: Path, shape: tuple[int, int], n_frames: int,
                 attrs: dict) -> dict[str, int]:
    """Merge the mask part files in unit order into ``out`` (:class:`gixdrt.powder.job.MaskFile`, as ``gixdrt
    mask`` writes it); returns the spot pixels per method."""
    from ..powder.job import MaskFile
    from .flow import check_part
    from .powder import read_mask_part
    from .worker import part_name

    labels: list[str] = []
    with MaskFile(out, methods, n_frames, shape, attrs=attrs) as mf:
        for unit in units:
            path = parts / part_name(unit)
            masks, sources = read_mask_part(path)
            check_part(path, unit, len(sources))
            missing = [m for m in methods if m not in masks]
            if missing:
                raise GixdrtError(f"{path}: holds no {missing[0]} masks; remove it and run again")
            mf.write_block(len(labels), masks)
            labels.extend(sources)
        mf.set_labels(labels)
    return mf.spot_pixels


def mask_on_cluster(args: argparse.Namespace) -> int:
    """The cluster branch of ``gixdrt mask`` (``args`` as its parser makes them, with --cluster given)."""
    from ..io.assets import sha256
    from ..io.atomic import check_output
    from ..io.sources import first_frame_shape, resolve_inputs
    from ..powder.geometry import PowderGeometry
    from ..powder.job import check_options, combine_masks, output_attrs
    from .flow import ClusterRun, local_threads, plan_run, print_rates, run_fingerprint
    from .powder import make_mask_settings

    files = resolve_inputs(args.frames)
    inputs = [str(f.path) for f in files] + list(args.mask) + ([args.poni] if args.poni else [])
    out = check_output(args.out, inputs=inputs, option="--out", suffixes=(".npy", ".h5", ".hdf5"))
    methods = ["unet", "classical"] if args.method == "both" else [args.method]
    if len(methods) > 1 and out.suffix == ".npy":
        raise GixdrtError(f"--out {out}: --method both needs an HDF5 output (.h5), one dataset per method")
    check_options(methods, args.model, args.poni)
    shape = first_frame_shape(files)
    unit_spec = args.work_unit or "file"
    files, units, _ = plan_run(args.frames, unit_spec, option=UNIT_OPTION, expect_shape=shape,
                               expect_note=f"the first frame's shape {shape} (all frames must have the same shape)")
    if not units:
        raise GixdrtError(f"{args.frames[0]}: no frames")
    detector_mask = combine_masks(args.mask, shape)
    run = ClusterRun("mask", out, inputs, unit_option=UNIT_OPTION)
    settings = make_mask_settings(
        methods=methods, shape=shape, model=args.model, poni=args.poni,
        mask=run.parts / "mask.npy" if detector_mask is not None else None,
        threads=local_threads(args.cluster, args.threads), threshold=args.threshold, min_size=args.min_size,
        runtime=args.runtime, precision=args.precision, parts=run.parts)
    mask_digest = None
    if detector_mask is not None:
        mask_digest = hashlib.sha256(repr(shape).encode() + np.packbits(detector_mask).tobytes()).hexdigest()
    results = {"methods": methods, "shape": settings["shape"]}
    if "unet" in methods:  # threads change the speed, not the results
        results.update({k: settings[k] for k in ("model", "threshold", "min_size")})
    fingerprint = run_fingerprint(results, files, units, unit_spec,
                                  poni_sha256=sha256(Path(args.poni)) if args.poni else None, mask_sha256=mask_digest)
    run.open(units, fingerprint, fresh=args.fresh,
             arrays={"mask.npy": detector_mask.astype(np.uint8)} if detector_mask is not None else None)
    run.announce(unit_spec, f"method {args.method}" + (f", model {args.model}" if "unet" in methods else ""),
                 args.cluster)
    code = run.run(settings, args.cluster, retries=args.retries, progress=sys.stderr.isatty() and not args.no_progress,
                   tally=lambda s: {"spot_px": sum(s["spots"].values())})
    if code is not None:
        return code

    n = run.n_frames
    attrs = output_attrs(settings=run.engine.get("settings", {}), sources=args.frames, poni=args.poni,
                         geometry=PowderGeometry.from_poni(args.poni, shape=shape) if args.poni else None,
                         detector_masks=args.mask)
    spots = _write_masks(out, methods, units, run.parts, shape, n, attrs)
    run.finish()
    for name in methods:
        print(f"{name}: {spots[name]} spot pixels in {n} frame(s) ({spots[name] / (n * shape[0] * shape[1]) * 100:.3f} "
              "% of the pixels)")
    print(f"masks → {out}")
    print(f"  {n} frame(s) in {len(units)} unit(s), {run.rate_text()}")
    if run.report is not None:
        print_rates(run.report, stream=sys.stdout)
    return 0
