"""Evaluation of spot masks on generated powder frames: the U-Net and the classical baseline side by side.

Per method and frame, over the *valid* pixels (detector-mask value 0; the ground truth never marks others):

- pixels: true positives, false positives, false negatives → recall (the paper's true positive rate), precision,
  specificity, false-positive pixels per frame;
- spots: the ground-truth mask's connected components (8-connectivity) are the spots; a spot is *found* when at
  least ``found_fraction`` (50 %) of its pixels are masked. Each spot gets its strength, the peak over its pixels of
  the spot's expected photons over the powder-only noise ``S / √(B + σ_read²)`` (weak < 10, medium 10–100, strong
  ≥ 100, saturating spots among the strong), and its place: *on a ring* when the powder's radial profile at the
  spot's peak is ≥ 1.5× the ring-free background there, *on a bright ring* when ≥ 3×. The profile is the median of
  the expected powder photons per 2-px ring of 2θ; the background is its running minimum over ±25 rings.

With ``intensities=True`` also the error that matters after masking: per ring, the peak area of the azimuthally
integrated pattern (:mod:`.integrate`) against the spot-free truth, with each method's mask, with the true mask and
with no spot mask (:func:`intensity_errors`).

>>> from gixdrt.powder.evaluate import evaluate_methods, classical_method, unet_method
>>> report = evaluate_methods({"unet": unet_method("default"), "classical": classical_method()}, n=24, seed=777)
"""
from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["STRENGTH_BINS", "choose_setting", "classical_method", "evaluate_methods", "frame_spots", "intensity_errors",
           "main_evaluate_powder", "peak_area", "pixel_counts", "ring_windows", "spot_recall", "summarize",
           "summarize_intensity_errors", "threshold_sweep", "truth_image", "unet_method"]

STRENGTH_BINS = (("weak", 0.0, 10.0), ("medium", 10.0, 100.0), ("strong", 100.0, float("inf")))
ON_RING, BRIGHT_RING = 1.5, 3.0

Method = Callable[[Any], np.ndarray]  # PowderFrame → bool[H, W]


def pixel_counts(pred: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> dict[str, int]:
    """tp, fp, fn, tn over the valid pixels (all when ``valid`` is None)."""
    pred = np.asarray(pred, bool)
    truth = np.asarray(truth, bool)
    v = np.ones(pred.shape, bool) if valid is None else np.asarray(valid, bool)
    tp = int(np.count_nonzero(pred & truth & v))
    fp = int(np.count_nonzero(pred & ~truth & v))
    fn = int(np.count_nonzero(~pred & truth & v))
    return {"tp": tp, "fp": fp, "fn": fn, "tn": int(np.count_nonzero(v)) - tp - fp - fn}


def _labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    from scipy import ndimage

    lab, n = ndimage.label(mask, structure=np.ones((3, 3), int))
    return lab, int(n)


def frame_spots(frame: Any) -> list[dict[str, Any]]:
    """The spots of a generated frame (made with ``aux=True``): per truth component its label, pixel count, peak
    strength (σ of the powder-only noise), whether a pixel saturated and its ring contrast."""
    from ..powder.classical import RingIndex

    if frame.spot_photons is None or frame.powder is None:
        raise ValueError("frame_spots needs a frame generated with aux=True")
    lab, n = _labels(frame.spots)
    if n == 0:
        return []
    info = frame.info
    read_ph2 = (float(info["read_noise"]) / float(info["gain"])) ** 2
    snr = frame.spot_photons / np.sqrt(frame.powder + np.float32(read_ph2))
    # radial profile of the expected powder photons and its ring-free background
    index = RingIndex.from_geometry(frame.geometry, frame.detector_mask)
    prof = np.zeros(index.n_rings)
    flat_powder = frame.powder.ravel()
    for r in range(index.n_rings):
        px = index.pixels[index.ptr[r]:index.ptr[r + 1]]
        if px.size:
            prof[r] = np.median(flat_powder[px])
    back = np.array([prof[max(r - 25, 0):r + 26][prof[max(r - 25, 0):r + 26] > 0].min(initial=np.inf)
                     for r in range(index.n_rings)]) if index.n_rings else prof
    ring_of = np.full(frame.spots.size, -1, np.int64)
    for r in range(index.n_rings):
        ring_of[index.pixels[index.ptr[r]:index.ptr[r + 1]]] = r
    flat_lab = lab.ravel()
    order = np.argsort(flat_lab, kind="stable")
    bounds = np.searchsorted(flat_lab[order], np.arange(1, n + 2))
    flat_snr = snr.ravel()
    sat = frame.image.ravel() >= 65535.0
    spots = []
    for k in range(n):
        px = order[bounds[k]:bounds[k + 1]]
        peak = int(px[np.argmax(flat_snr[px])])
        r = ring_of[peak]
        contrast = float(prof[r] / back[r]) if r >= 0 and np.isfinite(back[r]) and back[r] > 0 else 1.0
        spots.append({"label": k + 1, "pixels": int(px.size), "strength": float(flat_snr[peak]),
                      "saturated": bool(sat[px].any()), "ring_contrast": contrast})
    return spots


def spot_recall(pred: np.ndarray, frame: Any, spots: list[dict[str, Any]], found_fraction: float = 0.5) -> list[bool]:
    """Per spot of :func:`frame_spots`: found (≥ found_fraction of its pixels masked)."""
    if not spots:
        return []
    lab, _ = _labels(frame.spots)
    n = len(spots)
    hit = np.bincount(lab.ravel(), weights=np.asarray(pred, bool).ravel().astype(np.float64), minlength=n + 1)
    size = np.bincount(lab.ravel(), minlength=n + 1)
    return [bool(hit[s["label"]] >= found_fraction * size[s["label"]]) for s in spots]


def _ratio(a: float, b: float) -> float | None:
    return float(a / b) if b else None


def summarize(per_frame: list[dict[str, Any]], spots: list[dict[str, Any]]) -> dict[str, Any]:
    """Totals over frames: pixel metrics and spot recall by strength and place."""
    tot = {k: sum(f[k] for f in per_frame) for k in ("tp", "fp", "fn", "tn")}
    out: dict[str, Any] = {
        "frames": len(per_frame),
        "pixel_recall": _ratio(tot["tp"], tot["tp"] + tot["fn"]),
        "pixel_precision": _ratio(tot["tp"], tot["tp"] + tot["fp"]),
        "specificity": _ratio(tot["tn"], tot["tn"] + tot["fp"]),
        "fp_pixels_per_frame": tot["fp"] / max(len(per_frame), 1),
        "fn_pixels_per_frame": tot["fn"] / max(len(per_frame), 1),
        "mean_frame_recall": float(np.mean([f["tp"] / (f["tp"] + f["fn"]) for f in per_frame if f["tp"] + f["fn"]]))
        if any(f["tp"] + f["fn"] for f in per_frame) else None,
        "seconds_per_frame": float(np.mean([f["seconds"] for f in per_frame])) if per_frame else None,
        **tot,
    }
    groups: dict[str, list[bool]] = {"all": []}
    for s in spots:
        found = s["found"]
        groups["all"].append(found)
        for name, lo, hi in STRENGTH_BINS:
            if lo <= s["strength"] < hi:
                groups.setdefault(name, []).append(found)
        place = "bright_ring" if s["ring_contrast"] >= BRIGHT_RING else "on_ring" if s["ring_contrast"] >= ON_RING \
            else "off_ring"
        groups.setdefault(place, []).append(found)
        if s["ring_contrast"] >= ON_RING:
            groups.setdefault("any_ring", []).append(found)
        if s["strength"] >= 100.0 and place == "bright_ring":
            groups.setdefault("strong_bright_ring", []).append(found)
    out["spot_recall"] = {k: {"n": len(v), "recall": _ratio(sum(v), len(v))} for k, v in sorted(groups.items())}
    return out


# ---- intensities of the integrated pattern ----------------------------------------------------------------------
#: peak window: ± WINDOW_FWHM × the ring's FWHM (at least MIN_HALF_BINS bins, cut midway to the next ring); EDGE_BINS
#: bins at each end of a window set its linear background; a ring counts when the truth's net peak is ≥ MIN_CONTRAST ×
#: the background under it
WINDOW_FWHM, MIN_HALF_BINS, EDGE_BINS, MIN_CONTRAST = 2.0, 3, 2, 0.2


def truth_image(frame: Any) -> np.ndarray:
    """The spot-free expectation of a generated frame (``aux=True``) in its units: float64[H, W] ADU =
    gain · (expected powder photons) + offset (no noise, no spots; the simulator draws the spots before the counting
    noise, so no noisy spot-free twin of a frame exists)."""
    if frame.powder is None:
        raise ValueError("the spot-free truth needs a frame generated with aux=True")
    return float(frame.info["gain"]) * frame.powder.astype(np.float64) + float(frame.info["offset"])


def ring_windows(radial: np.ndarray, ring_tth: np.ndarray, ring_fwhm: np.ndarray, *, window: float = WINDOW_FWHM,
                 min_half_bins: int = MIN_HALF_BINS, edge: int = EDGE_BINS) -> list[tuple[int, int, list[float]]]:
    """Peak windows on a pattern's bins: ``radial`` float64[npt] bin centres in 2θ degrees (uniform);
    ``ring_tth`` / ``ring_fwhm`` float[R] ring centres and FWHM in 2θ radians. Rings closer than the larger of their
    FWHM or ``min_half_bins`` bins are one peak (unresolved: centre the mean, FWHM the span plus the largest FWHM).
    Each peak covers ± ``window`` FWHM (at least ``min_half_bins`` bins), cut at the midpoints to its neighbours so
    that no two windows share a bin. Returns (first bin, last bin inclusive, ring centres in degrees) for the
    windows that lie inside the pattern with ``edge`` bins to spare and span at least 2·``edge`` + 1 bins, in
    increasing 2θ."""
    radial = np.asarray(radial, np.float64)
    if radial.size < 2:
        return []
    step = float(radial[1] - radial[0])
    c = np.degrees(np.asarray(ring_tth, np.float64))
    fw = np.degrees(np.asarray(ring_fwhm, np.float64))
    keep = np.isfinite(c) & np.isfinite(fw)
    order = np.argsort(c[keep])
    c, fw = c[keep][order], fw[keep][order]
    peaks: list[list[float]] = []  # [lo, hi, fwhm, centres...] of unresolved groups
    for ci, fi in zip(c, fw):
        if peaks and ci - peaks[-1][1] < max(fi, peaks[-1][2], min_half_bins * step):
            peaks[-1][1] = ci
            peaks[-1][2] = max(peaks[-1][2], fi)
            peaks[-1].append(ci)
        else:
            peaks.append([ci, ci, fi, ci])
    out = []
    for k, (a, b, f, *centres) in enumerate(peaks):
        half = max(window * f, min_half_bins * step)
        lo, hi = a - half, b + half
        if k > 0:
            lo = max(lo, 0.5 * (peaks[k - 1][1] + a))
        if k + 1 < len(peaks):
            hi = min(hi, 0.5 * (b + peaks[k + 1][0]))
        i0 = int(np.searchsorted(radial, lo, "left"))
        i1 = int(np.searchsorted(radial, hi, "left")) - 1  # a bin on a midpoint goes to the upper window
        if i0 - edge < 0 or i1 + edge >= radial.size or i1 - i0 + 1 < 2 * edge + 1:
            continue  # outside the pattern or too narrow for a background
        out.append((i0, i1, centres))
    return out


def peak_area(radial: np.ndarray, y: np.ndarray, i0: int, i1: int, *, edge: int = EDGE_BINS) -> tuple[float, float]:
    """(net area, net peak height) of ``y`` over bins ``i0 … i1`` (inclusive) above the straight line through the
    means of the ``edge`` first and the ``edge`` last bins of the window; area in (``y`` units × ``radial`` units),
    the sum of (y − background) × bin width."""
    x = np.asarray(radial[i0:i1 + 1], np.float64)
    v = np.asarray(y[i0:i1 + 1], np.float64)
    xa, ya = x[:edge].mean(), v[:edge].mean()
    xb, yb = x[-edge:].mean(), v[-edge:].mean()
    bg = ya + (yb - ya) * (x - xa) / (xb - xa)
    net = v - bg
    return float(net.sum() * (x[1] - x[0])), float(net.max())


def intensity_errors(frame: Any, masks: Mapping[str, np.ndarray], *, npt: int | None = None,
                     window: float = WINDOW_FWHM, min_contrast: float = MIN_CONTRAST) -> list[dict[str, Any]]:
    """Per ring (window) of a generated frame (``aux=True``), the relative error of the integrated peak area
    ``|A − A_truth| / A_truth`` with each of ``masks`` (name → bool[H, W], True = spot pixel excluded), with the
    frame's true spot mask (``truth_mask``) and with no spot mask (``unmasked``); every pattern excludes the detector
    mask. The truth is :func:`truth_image` integrated the same way. Rings: the simulator's (``info["ring_tth"]``,
    ``info["ring_fwhm"]``: centres and FWHM in 2θ radians, strain included) in 2θ degrees over ``npt`` bins
    (default ⌈√(H² + W²)⌉, about one bin per pixel), windows as :func:`ring_windows`, kept where the truth's net
    peak reaches ``min_contrast`` × the background under it. Each record: 2θ range and ring centres (degrees),
    truth area, truth spot pixels inside the window's 2θ range, ``error`` {name: relative error}."""
    from .integrate import integrate

    clash = sorted({"unmasked", "truth_mask"} & set(masks))
    if clash:
        raise ValueError(f"intensity_errors: a mask may not be named {', '.join(clash)} (reserved for the references)")
    if "ring_tth" not in frame.info:
        raise ValueError("intensity_errors needs a frame from gixdrt.sim.powder (info['ring_tth'])")
    h, w = frame.image.shape
    npt = int(np.ceil(np.hypot(h, w))) if npt is None else int(npt)
    geom, dmask = frame.geometry, frame.detector_mask
    truth = integrate(truth_image(frame), geom, detector_mask=dmask, npt=npt).unmasked
    names = ["truth_mask", *masks]
    stack = np.stack([frame.spots, *(np.asarray(m, bool) for m in masks.values())])
    p = integrate(np.broadcast_to(frame.image, stack.shape), geom, spots=stack, detector_mask=dmask, npt=npt)
    radial = p.radial
    windows = ring_windows(radial, frame.info["ring_tth"], frame.info["ring_fwhm"], window=window)
    spot_tth = np.degrees(geom.tth()[frame.spots]) if frame.spots.any() else np.zeros(0)
    records = []
    for i0, i1, centres in windows:
        seg = truth[i0:i1 + 1]
        if not (np.all(np.isfinite(seg)) and np.all(seg > 0)):
            continue  # a bin without pixels (beam stop, outside the detector)
        a_t, peak_t = peak_area(radial, truth, i0, i1)
        bg = seg[int(np.argmax(seg))] - peak_t
        if not (a_t > 0 and peak_t >= min_contrast * max(bg, 0.0)):
            continue
        half = 0.5 * (radial[1] - radial[0])
        lo, hi = radial[i0] - half, radial[i1] + half
        err = {"unmasked": abs(peak_area(radial, p.unmasked[0], i0, i1)[0] - a_t) / a_t}
        for k, name in enumerate(names):
            err[name] = abs(peak_area(radial, p.masked[k], i0, i1)[0] - a_t) / a_t
        records.append({"frame": int(frame.index), "tth_deg": [float(lo), float(hi)],
                        "rings_deg": [round(float(c), 5) for c in centres], "truth_area": a_t,
                        "spot_pixels": int(np.count_nonzero((spot_tth >= lo) & (spot_tth < hi))), "error": err})
    return records


def _stats(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0, "median": None, "p90": None}
    v = np.asarray(values)
    return {"n": int(v.size), "median": float(np.median(v)), "p90": float(np.percentile(v, 90))}


def summarize_intensity_errors(records: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Median and 90th percentile of the relative peak-area errors over rings and frames, for all rings and for
    the rings with at least one true spot pixel in their window: ``unmasked``, ``truth_mask`` and each of
    ``names``."""
    with_spots = [r for r in records if r["spot_pixels"] > 0]
    out: dict[str, Any] = {"rings": len(records), "rings_with_spots": len(with_spots)}
    for key in ("unmasked", "truth_mask", *names):
        out[key] = {"all": _stats([r["error"][key] for r in records]),
                    "with_spots": _stats([r["error"][key] for r in with_spots])}
    return out


def classical_method(**kwargs: Any) -> Method:
    """GSAS-II's pixel mask search (:func:`gixdrt.powder.classical.pixel_mask_search`), rings from the frame's
    geometry and detector mask."""
    from .classical import RingIndex, pixel_mask_search

    def run(frame):
        index = RingIndex.from_geometry(frame.geometry, frame.detector_mask)
        return pixel_mask_search(frame.image, index, **kwargs)

    return run


def unet_method(model: Any = "default", **kwargs: Any) -> Method:
    """The U-Net plan (:class:`gixdrt.powder.plan.PowderMasker`); one masker per detector mask."""
    from .plan import PowderMasker

    def run(frame):
        masker = PowderMasker(model, detector_mask=frame.detector_mask, geometry=frame.geometry, **kwargs)
        try:
            return masker(frame.image)
        finally:
            masker.close()

    return run


def evaluate_methods(methods: Mapping[str, Method], *, n: int = 24, seed: int = 777, size: int | tuple[int, int] = 1024,
                     config: Any = None, start: int = 0, progress: bool = False, intensities: bool = False
                     ) -> dict[str, Any]:
    """Run every method on frames start … start + n − 1 of (config, seed, size) → a JSON-able report.

    ``intensities``: also the integrated peak-area errors (:func:`intensity_errors`, needs pyFAI): the report gets
    ``intensities`` (settings, the summary of :func:`summarize_intensity_errors`, and every ring's record) and each
    method ``intensity_error`` {``masked``, ``unmasked``: {``all``, ``with_spots``: {n, median, p90}}}."""
    from ..sim.powder import PowderSimConfig, PowderSimulator

    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    cfg = config or PowderSimConfig()
    sim = PowderSimulator(cfg, seed=seed, size=hw)
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    spots_by: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    rings: list[dict[str, Any]] = []
    for i in range(start, start + n):
        frame = sim.frame(i, aux=True)
        spots = frame_spots(frame)
        valid = frame.detector_mask == 0
        preds = {}
        for name, method in methods.items():
            t0 = time.perf_counter()
            pred = preds[name] = np.asarray(method(frame), bool)
            dt = time.perf_counter() - t0
            counts = pixel_counts(pred, frame.spots, valid)
            per[name].append({"index": i, "seconds": dt, "truth_pixels": int(frame.spots.sum()), **counts})
            for s, found in zip(spots, spot_recall(pred, frame, spots)):
                spots_by[name].append({**s, "found": found, "frame": i})
        if intensities:
            rings.extend(intensity_errors(frame, preds))
        if progress:
            print(f"frame {i}: {len(spots)} spots, " + ", ".join(
                f"{m} tp {per[m][-1]['tp']} fp {per[m][-1]['fp']} fn {per[m][-1]['fn']}" for m in methods), flush=True)
    report = {
        "seed": seed, "size": list(hw), "frames": n, "start": start,
        "config": "shifted" if cfg == PowderSimConfig.shifted() else "default" if cfg == PowderSimConfig() else "custom",
        "methods": {m: summarize(per[m], spots_by[m]) for m in methods},
        "per_frame": per,
    }
    if intensities:
        summary = summarize_intensity_errors(rings, list(methods))
        report["intensities"] = {"unit": "2th_deg", "window_fwhm": WINDOW_FWHM, "edge_bins": EDGE_BINS,
                                 "min_contrast": MIN_CONTRAST, "summary": summary, "per_ring": rings}
        for m in methods:
            report["methods"][m]["intensity_error"] = {"masked": summary[m], "unmasked": summary["unmasked"]}
    names = list(methods)
    if "unet" in names and "classical" in names:
        u, c = report["methods"]["unet"], report["methods"]["classical"]
        report["fp_ratio_unet_over_classical"] = _ratio(u["fp_pixels_per_frame"], c["fp_pixels_per_frame"])
    return report


def main_evaluate_powder(model: str = "default", *, n: int = 24, seed: int = 777, size: int = 1024,
                         shifted: bool = False, out: str | os.PathLike | None = None, threshold: float | None = None,
                         min_size: int | None = None, progress: bool = False, intensities: bool = False
                         ) -> dict[str, Any]:
    """Both methods on one set; the report is written to ``out`` (JSON, atomically) when given."""
    from ..io.atomic import atomic_path
    from ..sim.powder import PowderSimConfig

    cfg = PowderSimConfig.shifted() if shifted else PowderSimConfig()
    methods = {"unet": unet_method(model, threshold=threshold, min_size=min_size), "classical": classical_method()}
    report = evaluate_methods(methods, n=n, seed=seed, size=size, config=cfg, progress=progress,
                              intensities=intensities)
    report["model"] = str(model)
    if out is not None:
        path = Path(out)
        with atomic_path(path) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    return report


def threshold_sweep(model: Any = "default", *, n: int = 12, seed: int = 4242, size: int = 1024,
                    thresholds: tuple[float, ...] = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
                    min_sizes: tuple[int, ...] = (0, 2, 3, 5), config: Any = None) -> dict[str, Any]:
    """Pixel recall and false positives per frame of the U-Net for every (threshold, min_size), and of the classical
    mask, on frames 0 … n − 1 of a validation seed (not an evaluation one): the network runs once per frame, the
    masks are made from its log-odds with the plan's own kernels."""
    from ..kernels.cpu.powder import remove_small_components
    from ..kernels.reference.powder import logit
    from ..sim.powder import PowderSimConfig, PowderSimulator
    from .plan import PowderMasker

    sim = PowderSimulator(config or PowderSimConfig(), seed=seed, size=(int(size), int(size)))
    classical = classical_method()
    acc = {(t, k): np.zeros(4, np.int64) for t in thresholds for k in min_sizes}
    acc_c = np.zeros(4, np.int64)
    for i in range(n):
        f = sim.frame(i)
        valid = f.detector_mask == 0
        masker = PowderMasker(model, detector_mask=f.detector_mask, geometry=f.geometry, threshold=0.5, min_size=0)
        lo = masker.run(f.image)["log_odds"]
        masker.close()
        c = pixel_counts(classical(f), f.spots, valid)
        acc_c += [c["tp"], c["fp"], c["fn"], c["tn"]]
        for t in thresholds:
            raw = (lo.astype(np.float64) > logit(t)) & valid
            for k in min_sizes:
                pred = raw if k <= 1 else remove_small_components(raw[None], out=np.zeros((1, *raw.shape), bool),
                                                                  min_size=k)[0]
                c = pixel_counts(pred, f.spots, valid)
                acc[(t, k)] += [c["tp"], c["fp"], c["fn"], c["tn"]]

    def row(a):
        tp, fp, fn, _ = (int(v) for v in a)
        return {"recall": tp / max(tp + fn, 1), "fp_per_frame": fp / n, "precision": tp / max(tp + fp, 1)}

    return {"seed": seed, "frames": n, "size": int(size), "classical": row(acc_c),
            "unet": [{"threshold": t, "min_size": k, **row(a)} for (t, k), a in acc.items()]}


def choose_setting(sweep: dict[str, Any], fp_fraction: float = 0.5) -> dict[str, Any]:
    """The (threshold, min_size) of highest recall whose false positives per frame stay ≤ ``fp_fraction`` × the
    classical mask's on the same frames (ties: fewer false positives)."""
    budget = fp_fraction * sweep["classical"]["fp_per_frame"]
    ok = [r for r in sweep["unet"] if r["fp_per_frame"] <= budget]
    pool = ok or sorted(sweep["unet"], key=lambda r: r["fp_per_frame"])[:1]
    return max(pool, key=lambda r: (r["recall"], -r["fp_per_frame"]))
