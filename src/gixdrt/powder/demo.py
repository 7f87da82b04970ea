"""``gixdrt demo --powder``: the powder pipeline end to end on one generated frame: the U-Net and the classical spot
masks, the masked azimuthal integration, the peak-area errors against the spot-free truth, one PNG.

>>> from gixdrt.powder.demo import powder_demo
>>> summary = powder_demo("gixdrt-demo/powder.png", size=1024)
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["plot_mask_overlay", "plot_powder_demo", "powder_demo"]

#: the demo's frame: one with textured rings and spots on them (any seed and index work)
DEMO_SEED, DEMO_INDEX = 11, 6


def _block(a: np.ndarray, f: int, how: str) -> np.ndarray:
    """``a`` reduced by f × f blocks (mean or max), cropped to whole blocks; a display helper."""
    if f <= 1:
        return a
    h, w = (a.shape[0] // f) * f, (a.shape[1] // f) * f
    b = a[:h, :w].reshape(h // f, f, w // f, f)
    return b.max(axis=(1, 3)) if how == "max" else b.mean(axis=(1, 3))


#: overlay colours of the masks by method
COLOURS = {"truth": (0.1, 0.9, 0.1), "unet": (1.0, 0.1, 0.1), "classical": (0.2, 0.5, 1.0)}


def plot_mask_overlay(path: str | Path, image: np.ndarray, masks: dict[str, np.ndarray],
                      detector_mask: np.ndarray | None = None, title: str = "") -> Path:
    """One PNG of a frame (log scale, grey, detector-masked pixels dark) with each spot mask (method → bool[H, W])
    over it in its colour; large frames are shown by blocks (the mask's block maximum, so no spot vanishes). Written
    atomically."""
    from matplotlib.patches import Patch

    from ..plotting import _figure, _save

    plt = _figure()
    img = np.asarray(image, np.float64)
    valid = np.isfinite(img) if detector_mask is None else (np.asarray(detector_mask) == 0) & np.isfinite(img)
    base = np.percentile(img[valid], 1) if valid.any() else 0.0
    shown = np.log10(np.clip(np.where(valid, img, base) - base, 0, None) + 1.0)
    f = max(1, int(np.ceil(max(img.shape) / 1200)))
    small = _block(shown, f, "mean")
    lo, hi = np.percentile(small, [2, 99.8])
    fig, ax = plt.subplots(figsize=(9, 9 * img.shape[0] / max(img.shape[1], 1) + 0.6))
    extent = (0, img.shape[1], img.shape[0], 0)
    ax.imshow(small, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), extent=extent, interpolation="nearest")
    handles = []
    for name, m in masks.items():
        block = _block(np.asarray(m, np.float64), f, "max")
        rgba = np.zeros((*block.shape, 4))
        rgba[..., :3] = COLOURS.get(name, (1.0, 1.0, 0.0))
        rgba[..., 3] = block * 0.8
        ax.imshow(rgba, extent=extent, interpolation="nearest")
        handles.append(Patch(color=COLOURS.get(name, (1.0, 1.0, 0.0)), label=f"{name}: {int(np.count_nonzero(m))} px"))
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize=8, framealpha=0.8)
    ax.set_xlabel("detector column (px)")
    ax.set_ylabel("detector row (px)")
    ax.set_title(title or f"spot masks over the frame (log scale){'' if f == 1 else f', {f}×{f} blocks'}", fontsize=9)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def plot_powder_demo(path: str | Path, frame: Any, masks: dict[str, np.ndarray], radial: np.ndarray,
                     patterns: dict[str, np.ndarray], zoom: tuple[float, float] | None, title: str) -> Path:
    """One PNG: the frame (log scale), the masks over it, the 1D patterns (``patterns``: label → float[npt] over
    ``radial`` in 2θ degrees) and a zoom on ``zoom`` = (lo, hi) degrees. Written atomically."""
    from ..plotting import _figure, _save

    plt = _figure()
    from matplotlib.patches import Patch

    img = np.asarray(frame.image, np.float64)
    valid = frame.detector_mask == 0
    base = np.percentile(img[valid], 1) if valid.any() else 0.0
    shown = np.log10(np.clip(np.where(valid, img, base) - base, 0, None) + 1.0)
    f = max(1, int(np.ceil(max(img.shape) / 720)))
    small = _block(shown, f, "mean")
    lo, hi = np.percentile(small, [2, 99.8])
    fig = plt.figure(figsize=(15, 10))
    gs = fig.add_gridspec(2, 3, height_ratios=[1.0, 0.8])
    ax0, ax1, ax2 = fig.add_subplot(gs[0, 0]), fig.add_subplot(gs[0, 1]), fig.add_subplot(gs[0, 2])
    ax3 = fig.add_subplot(gs[1, :])
    extent = (0, img.shape[1], img.shape[0], 0)
    ax0.imshow(small, cmap="magma", vmin=lo, vmax=max(hi, lo + 1e-6), extent=extent, interpolation="nearest")
    ax0.set_title(f"frame {img.shape[0]}×{img.shape[1]}, log10(ADU − p1 + 1)")
    ax1.imshow(small, cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), extent=extent, interpolation="nearest")
    colours = COLOURS
    handles = []
    for name, m in masks.items():
        rgba = np.zeros((*_block(m, f, "max").shape, 4))
        rgba[..., :3] = colours.get(name, (1.0, 1.0, 0.0))
        rgba[..., 3] = _block(np.asarray(m, np.float64), f, "max") * 0.75
        ax1.imshow(rgba, extent=extent, interpolation="nearest")
        handles.append(Patch(color=colours.get(name, (1.0, 1.0, 0.0)), label=f"{name}: {int(m.sum())} px"))
    ax1.legend(handles=handles, loc="lower right", fontsize=8, framealpha=0.8)
    ax1.set_title("spot masks (blocks with any masked pixel)")
    for ax in (ax0, ax1):
        ax.set_xlabel("column (px)")
        ax.set_ylabel("row (px)")
    styles = {"truth (spot-free)": dict(color="k", lw=2.6, alpha=0.55), "no spot mask": dict(color="tab:orange", lw=1.0),
              "U-Net mask": dict(color="tab:red", lw=1.0), "classical mask": dict(color="tab:blue", lw=1.0, ls="--")}
    for label, y in patterns.items():
        for ax in (ax2, ax3):
            ax.plot(radial, y, label=label, **styles.get(label, {}))
    ax3.set_yscale("log")
    ax3.set_xlabel("2θ (degrees)")
    ax3.set_ylabel("mean intensity (ADU)")
    ax3.legend(fontsize=9)
    ax3.set_title("azimuthally integrated patterns (pyFAI, detector mask excluded in all)")
    if zoom is not None:
        pad = 0.3 * (zoom[1] - zoom[0])
        sel = (radial >= zoom[0] - pad) & (radial <= zoom[1] + pad)
        ax2.set_xlim(zoom[0] - pad, zoom[1] + pad)
        ys = np.concatenate([y[sel] for y in patterns.values()])
        if ys.size:
            ax2.set_ylim(ys.min() - 0.05 * np.ptp(ys), ys.max() + 0.05 * np.ptp(ys))
        ax3.axvspan(zoom[0], zoom[1], color="0.85", zorder=0)
        ax2.set_title(f"zoom: ring at {0.5 * (zoom[0] + zoom[1]):.3f}° with a spot")
    else:
        ax2.set_title("patterns")
    ax2.set_xlabel("2θ (degrees)")
    fig.suptitle(title)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def powder_demo(png: str | Path, *, size: int = 2880, seed: int = DEMO_SEED, index: int = DEMO_INDEX,
                model: str = "default", npt: int | None = None) -> dict[str, Any]:
    """Generate frame ``index`` of ``seed`` (``size`` × ``size``), mask it with the U-Net (``model``) and the
    classical search, integrate it (truth, no spot mask, each mask), write the PNG ``png`` and return a summary:
    timings (s), spots and pixels found per method, and the peak-area errors (:mod:`.evaluate`)."""
    from ..sim.powder import PowderSimulator
    from .evaluate import (
        classical_method,
        frame_spots,
        intensity_errors,
        pixel_counts,
        spot_recall,
        summarize_intensity_errors,
        truth_image,
        unet_method,
    )
    from .integrate import METHOD, integrate

    t0 = time.perf_counter()
    frame = PowderSimulator(seed=seed, size=(size, size)).frame(index, aux=True)
    out: dict[str, Any] = {"seed": seed, "index": index, "size": size, "seconds": {"generate": time.perf_counter() - t0},
                           "phases": frame.info["phases"], "truth_pixels": int(frame.spots.sum())}
    masks: dict[str, np.ndarray] = {}
    for name, method in (("unet", unet_method(model)), ("classical", classical_method())):
        t = time.perf_counter()
        masks[name] = np.asarray(method(frame), bool)
        out["seconds"][name] = time.perf_counter() - t
    spots = frame_spots(frame)
    valid = frame.detector_mask == 0
    out["spots"] = len(spots)
    out["methods"] = {}
    for name, m in masks.items():
        c = pixel_counts(m, frame.spots, valid)
        out["methods"][name] = {"pixels": int(m.sum()), "spots_found": int(sum(spot_recall(m, frame, spots))),
                                "tp": c["tp"], "fp": c["fp"], "fn": c["fn"]}
    h, w = frame.image.shape
    npt = int(np.ceil(np.hypot(h, w))) if npt is None else int(npt)
    t = time.perf_counter()
    records = intensity_errors(frame, masks, npt=npt)
    out["seconds"]["intensities"] = time.perf_counter() - t
    out["intensity_error"] = summarize_intensity_errors(records, list(masks))
    t = time.perf_counter()
    truth = integrate(truth_image(frame), frame.geometry, detector_mask=frame.detector_mask, npt=npt)
    out["seconds"]["integrate_one"] = time.perf_counter() - t
    stack = np.stack([masks["unet"], masks["classical"]])
    p = integrate(np.broadcast_to(frame.image, stack.shape), frame.geometry, spots=stack,
                  detector_mask=frame.detector_mask, npt=npt)
    out["method"] = list(METHOD)
    patterns = {"truth (spot-free)": truth.unmasked, "no spot mask": p.unmasked[0], "U-Net mask": p.masked[0],
                "classical mask": p.masked[1]}
    with_spots = [r for r in records if r["spot_pixels"] > 0]
    zoom = None
    if with_spots:
        worst = max(with_spots, key=lambda r: r["error"]["unmasked"])
        zoom = tuple(worst["tth_deg"])
        out["zoom"] = {"tth_deg": list(zoom), "error": worst["error"]}
    title = (f"gixdrt demo --powder: generated frame {index} of seed {seed} ({', '.join(frame.info['phases'])}), "
             f"{len(spots)} true spots")
    out["png"] = str(plot_powder_demo(png, frame, {"truth": frame.spots, **masks}, truth.radial, patterns, zoom,
                                      title))
    return out
