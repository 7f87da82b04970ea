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

__all__ = ["STRENGTH_BINS", "choose_setting", "classical_method", "evaluate_methods", "frame_spots",
           "main_evaluate_powder", "pixel_counts", "spot_recall", "summarize", "threshold_sweep", "unet_method"]

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
                     config: Any = None, start: int = 0, progress: bool = False) -> dict[str, Any]:
    """Run every method on frames start … start + n − 1 of (config, seed, size) → a JSON-able report."""
    from ..sim.powder import PowderSimConfig, PowderSimulator

    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    cfg = config or PowderSimConfig()
    sim = PowderSimulator(cfg, seed=seed, size=hw)
    per: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    spots_by: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for i in range(start, start + n):
        frame = sim.frame(i, aux=True)
        spots = frame_spots(frame)
        valid = frame.detector_mask == 0
        for name, method in methods.items():
            t0 = time.perf_counter()
            pred = np.asarray(method(frame), bool)
            dt = time.perf_counter() - t0
            counts = pixel_counts(pred, frame.spots, valid)
            per[name].append({"index": i, "seconds": dt, "truth_pixels": int(frame.spots.sum()), **counts})
            for s, found in zip(spots, spot_recall(pred, frame, spots)):
                spots_by[name].append({**s, "found": found, "frame": i})
        if progress:
            print(f"frame {i}: {len(spots)} spots, " + ", ".join(
                f"{m} tp {per[m][-1]['tp']} fp {per[m][-1]['fp']} fn {per[m][-1]['fn']}" for m in methods), flush=True)
    report = {
        "seed": seed, "size": list(hw), "frames": n, "start": start,
        "config": "shifted" if cfg == PowderSimConfig.shifted() else "default" if cfg == PowderSimConfig() else "custom",
        "methods": {m: summarize(per[m], spots_by[m]) for m in methods},
        "per_frame": per,
    }
    names = list(methods)
    if "unet" in names and "classical" in names:
        u, c = report["methods"]["unet"], report["methods"]["classical"]
        report["fp_ratio_unet_over_classical"] = _ratio(u["fp_pixels_per_frame"], c["fp_pixels_per_frame"])
    return report


def main_evaluate_powder(model: str = "default", *, n: int = 24, seed: int = 777, size: int = 1024,
                         shifted: bool = False, out: str | os.PathLike | None = None, threshold: float | None = None,
                         min_size: int | None = None, progress: bool = False) -> dict[str, Any]:
    """Both methods on one set; the report is written to ``out`` (JSON, atomically) when given."""
    from ..io.atomic import atomic_path
    from ..sim.powder import PowderSimConfig

    cfg = PowderSimConfig.shifted() if shifted else PowderSimConfig()
    methods = {"unet": unet_method(model, threshold=threshold, min_size=min_size), "classical": classical_method()}
    report = evaluate_methods(methods, n=n, seed=seed, size=size, config=cfg, progress=progress)
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
