"""``gixdrt mask ... --cluster local:N|ADDRESS``: the powder spot masks of a run cut into units on a Dask cluster.

The client reads the frame shape from the first input's header, plans the units from the headers (``--work-unit``
``file``, ``files:K`` or ``frames:K``; the name ``--unit`` is the radial unit of the integration), combines the
detector masks once and hands the units to the workers, which mask their frames with the method(s) of ``--method``
(:mod:`gixdrt.scale.powder`). At the end the part files are merged in unit order into the output ``gixdrt mask``
writes without ``--cluster`` (``.npy``: bool[N, H, W]; ``.h5``: one ``spots_<method>`` dataset per method), written
atomically, and the parts folder and manifest are removed. Resume, ``--fresh``, ``--retries``, the report of failed
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
    if args.cluster is not None and getattr(args, "integrate", None):
        raise GixdrtError("--integrate: not available with --cluster (the client would read every frame); run it "
                          "without --cluster")


def _frame_shape(files) -> tuple[int, int]:
    """(H, W) of the first frame of the inputs, from its header (else the frame); GixdrtError when there is none."""
    from ..io.readers import reader_for

    for inp in files:
        with reader_for(inp.path, label=inp.label, dataset=inp.dataset) as reader:
            for k, stack in enumerate(reader.stacks):
                if stack.n > 0:
                    if stack.frame_shape is not None:
                        return tuple(int(n) for n in stack.frame_shape)
                    frames = reader.frames(k, 0, 1)
                    try:
                        return tuple(int(n) for n in next(frames).shape)
                    finally:
                        frames.close()
    raise GixdrtError(f"{files[0].label}: no frames")


def _detector_mask(specs, shape: tuple[int, int]) -> np.ndarray | None:
    """The --mask images OR-ed (nonzero = excluded) as bool[H, W], as ``gixdrt mask`` combines them."""
    from ..io import read_frame

    mask = None
    for spec in specs:
        m = np.asarray(read_frame(spec))
        if m.shape != shape:
            raise GixdrtError(f"--mask {spec}: shape {m.shape} differs from the frames' {shape}")
        mask = (m != 0) if mask is None else (mask | (m != 0))
    return mask


def _write_masks(out: Path, methods: list[str], units, parts: Path, shape: tuple[int, int], frames: list[str],
                 n_frames: int) -> dict[str, int]:
    """Merge the mask part files in unit order into ``out`` (written atomically) as ``gixdrt mask`` writes it;
    returns the spot pixels per method."""
    from ..io.atomic import atomic_path
    from .flow import check_part
    from .powder import read_mask_part
    from .worker import part_name

    spots = dict.fromkeys(methods, 0)
    with atomic_path(out) as tmp:
        h5 = None
        if out.suffix == ".npy":
            sinks = {methods[0]: np.lib.format.open_memmap(tmp, mode="w+", dtype=bool, shape=(n_frames, *shape))}
        else:
            import h5py

            h5 = h5py.File(tmp, "w")
            sinks = {}
            for name in methods:
                ds = h5.create_dataset(f"spots_{name}", shape=(n_frames, *shape), dtype=np.uint8, compression="gzip",
                                       chunks=(1, *shape))
                ds.attrs["meaning"] = "1 = spot pixel (exclude from integration), one image per input frame"
                sinks[name] = ds
            h5.attrs["frames"] = frames
        try:
            at = 0
            for unit in units:
                path = parts / part_name(unit)
                masks, sources = read_mask_part(path)
                check_part(path, unit, len(sources))
                for name in methods:
                    if name not in masks:
                        raise GixdrtError(f"{path}: holds no {name} masks; remove it and run again")
                    value = masks[name]
                    sinks[name][at:at + len(sources)] = value if h5 is None else value.astype(np.uint8)
                    spots[name] += int(value.sum())
                at += len(sources)
        finally:
            if h5 is not None:
                h5.close()
            else:
                sinks.pop(methods[0]).flush()  # the memory map is closed before the file is renamed
    return spots


def mask_on_cluster(args: argparse.Namespace) -> int:
    """The cluster branch of ``gixdrt mask`` (``args`` as its parser makes them, with --cluster given)."""
    from ..io.assets import sha256
    from ..io.atomic import check_output
    from ..io.sources import resolve_inputs
    from .flow import ClusterRun, local_threads, plan_run, print_rates, run_fingerprint
    from .powder import make_mask_settings

    files = resolve_inputs(args.frames)
    inputs = [str(f.path) for f in files] + list(args.mask) + ([args.poni] if args.poni else [])
    out = check_output(args.out, inputs=inputs, option="--out", suffixes=(".npy", ".h5", ".hdf5"))
    methods = ["unet", "classical"] if args.method == "both" else [args.method]
    if len(methods) > 1 and out.suffix == ".npy":
        raise GixdrtError(f"--out {out}: --method both needs an HDF5 output (.h5), one dataset per method")
    if "classical" in methods and not args.poni:
        raise GixdrtError("--poni: the classical method needs the detector geometry (a pyFAI PONI file)")
    shape = _frame_shape(files)
    unit_spec = args.work_unit or "file"
    files, units, _ = plan_run(args.frames, unit_spec, option=UNIT_OPTION, expect_shape=shape,
                               expect_note=f"the first frame's shape {shape} (all frames must have the same shape)")
    if not units:
        raise GixdrtError(f"{args.frames[0]}: no frames")
    detector_mask = _detector_mask(args.mask, shape)
    run = ClusterRun("mask", out, inputs, unit_option=UNIT_OPTION)
    settings = make_mask_settings(
        methods=methods, shape=shape, model=args.model, poni=args.poni,
        mask=run.parts / "mask.npy" if detector_mask is not None else None,
        threads=local_threads(args.cluster, args.threads), threshold=args.threshold, min_size=args.min_size,
        parts=run.parts)
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
    code = run.run(settings, args.cluster, retries=args.retries, progress=sys.stderr.isatty(),
                   tally=lambda s: {"spot_px": sum(s["spots"].values())})
    if code is not None:
        return code

    n = run.n_frames
    spots = _write_masks(out, methods, units, run.parts, shape, [str(s) for s in args.frames], n)
    run.finish()
    for name in methods:
        print(f"{name}: {spots[name]} spot pixels in {n} frame(s) ({spots[name] / (n * shape[0] * shape[1]) * 100:.3f} "
              "% of the pixels)")
    print(f"masks → {out}")
    print(f"  {n} frame(s) in {len(units)} unit(s), {run.rate_text()}")
    if run.report is not None:
        print_rates(run.report, stream=sys.stdout)
    return 0
