"""The ``gixdrt`` command. Thin over library functions: everything here is callable from Python."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from . import __version__
from .errors import GixdrtError

# Statistics of the published chain on the real frame (shared/reference §4), printed by the demo.
REFERENCE_PROCESSED_MEAN = 0.478479
REFERENCE_POLAR = {"min": -70.2231, "max": 1048.21, "mean": 19.2641}


def _load_frames(path: str, index: int, n_sum: int, geometry) -> np.ndarray:
    from .io import read_frame

    data = read_frame(path)
    if data.ndim == 3:
        if not 0 <= index < data.shape[0]:
            raise GixdrtError(f"{path}: --index {index} is outside the stack of {data.shape[0]} frames")
        if index + n_sum > data.shape[0]:
            raise GixdrtError(f"{path}: --sum {n_sum} from --index {index} needs {index + n_sum} frames, the stack has {data.shape[0]}")
        data = data[index : index + n_sum]
    elif n_sum != 1 or index != 0:
        raise GixdrtError(f"{path}: holds a single frame; --sum and --index need a stack")
    geometry.check_frame_shape(data.shape, path)
    return data


def cmd_preprocess(args: argparse.Namespace) -> int:
    from .geometry import load_config
    from .io import write_image
    from .preprocess import Preprocessor

    out = Path(args.out)
    if out.suffix.lower() not in (".npy", ".tif", ".tiff", ".png"):
        raise GixdrtError(f"{out}: unsupported output format {out.suffix or '(none)'}; use .npy, .tif or .png")
    cfg = load_config(args.config)
    frames = _load_frames(args.frame, args.index, args.sum, cfg.geometry)
    pre = Preprocessor(cfg, backend=args.backend)
    t0 = time.perf_counter()
    image = pre(frames, args.stage)
    dt = time.perf_counter() - t0
    write_image(out, image)
    print(
        f"{args.stage} image {image.shape[0]}×{image.shape[1]} (rows φ 0–90°, columns |Q| 0–{cfg.geometry.q_max:.4f} Å⁻¹): "
        f"min {image.min():.6g}, max {image.max():.6g}, mean {image.mean(dtype=np.float64):.6g} "
        f"({dt * 1e3:.1f} ms) → {out}"
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .geometry import load_config, polar_map
    from .io import fetch_published, read_frame
    from .kernels import contrast, polar_remap
    from .plotting import plot_polar, plot_raw

    outdir = Path(args.out_dir)
    assets = fetch_published()
    cfg = load_config(assets.config)
    g = cfg.geometry
    frame = read_frame(assets.frame)
    g.check_frame_shape(frame.shape, assets.frame)
    t0 = time.perf_counter()
    pmap = polar_map(g)
    t1 = time.perf_counter()
    polar = polar_remap(frame, pmap, backend=args.backend)
    t2 = time.perf_counter()
    c = cfg.contrast
    processed = contrast(polar, coef=c.coef, clip_limit=c.limit, log=c.log, backend=args.backend)
    t3 = time.perf_counter()
    paths = [
        plot_raw(frame, outdir / "raw.png", title=f"raw frame {assets.frame.name}"),
        plot_polar(polar, g, outdir / "polar.png", "polar image", "log10(counts − min + 1)", log=True),
        plot_polar(processed, g, outdir / "contrast.png", "contrast-enhanced (detector input)", "intensity"),
    ]
    np.save(outdir / "contrast.npy", processed)
    paths.append(outdir / "contrast.npy")
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
          f"contrast {1e3 * (t3 - t2):.1f} ms (first call includes JIT compilation)")
    print("  wrote:")
    for p in paths:
        print(f"    {p.resolve()}")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .doctor import print_report

    print_report()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gixdrt", description="Real-time Bragg peak detection in GIXD detector frames."
    )
    parser.add_argument("--version", action="version", version=f"gixdrt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    backends = ["reference", "cpu", "cuda"]

    p = sub.add_parser("preprocess", help="raw frame → polar or contrast-enhanced image")
    p.add_argument("frame", help="raw frame: .tif, .npy, .edf/.cbf (fabio), or FILE.h5::/dataset")
    p.add_argument("--config", required=True, help="geometry config (published gixi YAML)")
    p.add_argument("--stage", choices=["polar", "contrast"], default="contrast", help="where to stop (default contrast)")
    p.add_argument("--out", required=True, help="output image: .npy, .tif (float32) or .png (16-bit, scaled)")
    p.add_argument("--sum", type=int, default=1, metavar="N", help="sum N consecutive frames of a stack (default 1)")
    p.add_argument("--index", type=int, default=0, help="first frame of a stack (default 0)")
    p.add_argument("--backend", choices=backends, default=None, help="kernel backend (default: cpu for host data)")
    p.set_defaults(func=cmd_preprocess)

    p = sub.add_parser("demo", help="fetch the published real frame and preprocess it, writing PNGs")
    p.add_argument("--out-dir", default="gixdrt-demo", help="where to write the figures (default ./gixdrt-demo)")
    p.add_argument("--backend", choices=backends, default=None, help="kernel backend (default: cpu)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("doctor", help="print versions and which backends are available")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if getattr(args, "sum", 1) < 1:
        parser.error("--sum must be ≥ 1")
    try:
        return args.func(args)
    except GixdrtError as exc:
        print(f"gixdrt {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"gixdrt {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
