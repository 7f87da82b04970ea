"""Evaluation of a detector on simulated images, following the paper's protocol.

>>> from gixdrt.train.evaluate import evaluate, compare, main_evaluate
>>> res = evaluate("published", n=100, seed=12345)        # EvalResult; res.print_table()
>>> compare(["published", "runs/tiny/final"], n=300, seed=1)  # one simulated set, side-by-side table

Protocol (reference §6): predictions with score > 0.05 after NMS at IoU 0.1; per image the cost of pairing
target t with prediction p is |x̄_t − x̄_p| (box centres along x, pixels), "impossible" where
IoU(t, p) ≤ 0.3; an optimal one-to-one assignment (Hungarian) is taken and an assigned pair counts as a
match when its cost is < 1 px. Detected = matched targets, missed = unmatched targets, false positive =
unmatched prediction, |ΔQ| = |x̄_p − x̄_t| over matched pairs.

The assignment is SciPy's exact solver (``scipy.optimize.linear_sum_assignment``); :func:`match_image`
solves each connected component of the "possible pair" graph on its own, which gives the same assignment as
the whole matrix with a large impossible cost (it first maximises the number of possible pairs, then
minimises their total cost).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..kernels.reference.boxes import iou_matrix as box_iou

__all__ = [
    "PAPER",
    "EvalResult",
    "box_iou",
    "common_dq",
    "compare",
    "evaluate",
    "format_comparison",
    "main_evaluate",
    "match_image",
]

#: the paper's numbers (10,000 simulated images; section II B), in the units of :class:`EvalResult`
PAPER: dict[str, float] = {
    "detected_pct": 99.22,
    "missed_pct": 0.78,
    "fp_per_target_pct": 0.25,
    "dq_p95_px": 0.366,
    "images_with_miss_pct": 8.5,
    "images_with_fp_pct": 4.0,
}

IOU_MIN = 0.3
MAX_COST_PX = 1.0
SCORE_MIN = 0.05
NMS_IOU = 0.1


# --------------------------------------------------------------------------------------------------------------
# matching


def _components(possible: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components (row indices, column indices) of the bipartite graph of ``possible`` [K, M]
    that have at least one edge."""
    k, m = possible.shape
    parent = np.arange(k + m)

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for t, q in zip(*np.nonzero(possible)):
        ra, rb = find(int(t)), find(k + int(q))
        if ra != rb:
            parent[ra] = rb
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for t in np.nonzero(possible.any(axis=1))[0]:
        groups.setdefault(find(int(t)), ([], []))[0].append(int(t))
    for q in np.nonzero(possible.any(axis=0))[0]:
        groups.setdefault(find(k + int(q)), ([], []))[1].append(int(q))
    return [(np.array(r, np.int64), np.array(c, np.int64)) for r, c in groups.values()]


def match_image(
    targets: Any,
    preds: Any,
    pred_scores: Any = None,
    *,
    iou_min: float = IOU_MIN,
    max_cost_px: float = MAX_COST_PX,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Match one image's predictions to its targets (reference §6).

    targets float[K, 4], preds float[M, 4] (x0, y0, x1, y1); pred_scores float[M] or None.
    cost(t, p) = |x̄_t − x̄_p|, impossible where IoU(t, p) ≤ iou_min; optimal one-to-one assignment; an
    assigned pair matches when cost < max_cost_px. Among assignments of equal cost the higher-scoring
    prediction wins (a 1e-9 px-per-score tie-break, so duplicate predictions leave the weaker one a false
    positive).

    Returns (pairs int64[P, 2] of (target index, prediction index) sorted by target, missed target indices
    int64[·], false-positive prediction indices int64[·]).
    """
    t = np.asarray(targets, np.float64).reshape(-1, 4)
    p = np.asarray(preds, np.float64).reshape(-1, 4)
    k, m = len(t), len(p)
    pairs = np.zeros((0, 2), np.int64)
    if k and m:
        xt = 0.5 * (t[:, 0] + t[:, 2])
        xp = 0.5 * (p[:, 0] + p[:, 2])
        cost = np.abs(xt[:, None] - xp[None, :])
        if pred_scores is not None:
            s = np.asarray(pred_scores, np.float64).reshape(-1)
            if len(s) != m:
                raise ValueError(f"pred_scores has {len(s)} entries for {m} predictions")
            cost = cost - 1e-9 * s[None, :]
        from scipy.optimize import linear_sum_assignment

        possible = box_iou(t, p) > iou_min
        found = []
        for rows, cols in _components(possible):
            sub = cost[np.ix_(rows, cols)]
            ok = possible[np.ix_(rows, cols)]
            finite = sub[ok]
            big = 10.0 * (np.abs(finite).sum() + 1.0) * max(len(rows), len(cols))
            r, c = linear_sum_assignment(np.where(ok, sub, big))
            keep = ok[r, c]
            r, c = rows[r[keep]], cols[c[keep]]
            good = np.abs(xt[r] - xp[c]) < max_cost_px
            found.append(np.stack([r[good], c[good]], axis=1))
        if found:
            pairs = np.concatenate(found).astype(np.int64)
            pairs = pairs[np.argsort(pairs[:, 0], kind="stable")]
    missed = np.setdiff1d(np.arange(k, dtype=np.int64), pairs[:, 0])
    fps = np.setdiff1d(np.arange(m, dtype=np.int64), pairs[:, 1])
    return pairs, missed, fps


def _centre_x(boxes: np.ndarray) -> np.ndarray:
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    return 0.5 * (b[:, 0] + b[:, 2])


# --------------------------------------------------------------------------------------------------------------
# results


@dataclasses.dataclass
class EvalResult:
    """Numbers of one evaluation (percentages in %, distances in px). ``per_image`` holds the counts per
    image, ``dq_px`` the |ΔQ| of every matched pair, ``pr`` the precision–recall sweep."""

    model: str
    n_images: int
    seed: int
    size: tuple[int, int]
    n_targets: int
    n_predictions: int
    n_matched: int
    detected_pct: float
    missed_pct: float
    fp_per_target_pct: float
    fp_per_prediction_pct: float
    dq_median_px: float
    dq_p95_px: float
    images_with_miss_pct: float
    images_with_fp_pct: float
    mean_misses_per_image: float
    mean_fp_per_image: float
    pr: dict[str, list[float]]
    dq_px: np.ndarray
    per_image: dict[str, list[int]]
    settings: dict[str, Any]
    seconds: float = 0.0
    #: for every entry of ``dq_px``, the matched target's index in the whole set (targets numbered image by
    #: image), so that models can be compared on the same targets (:func:`common_dq`)
    dq_target: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_missed(self) -> int:
        return self.n_targets - self.n_matched

    @property
    def n_fp(self) -> int:
        return self.n_predictions - self.n_matched

    def summary(self) -> dict[str, float]:
        """The table's numbers (keys of :data:`PAPER` plus the others)."""
        keys = (
            "detected_pct", "missed_pct", "fp_per_target_pct", "fp_per_prediction_pct", "dq_median_px",
            "dq_p95_px", "images_with_miss_pct", "images_with_fp_pct", "mean_misses_per_image",
            "mean_fp_per_image",
        )
        return {k: getattr(self, k) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["size"] = list(self.size)
        d["dq_px"] = [float(x) for x in self.dq_px]
        d["dq_target"] = [int(x) for x in self.dq_target]
        d["n_missed"] = self.n_missed
        d["n_fp"] = self.n_fp
        d["paper"] = dict(PAPER)
        return _jsonable(d)

    def table(self) -> str:
        return format_comparison({self.model: self})

    def print_table(self) -> None:
        print(self.table())

    def save(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``metrics.json``, ``pr_curve.png`` and ``dq_hist.png`` into out_dir (created)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"json": out / "metrics.json", "pr": out / "pr_curve.png", "dq": out / "dq_hist.png"}
        paths["json"].write_text(json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n")
        _plot_pr({self.model: self}, paths["pr"])
        _plot_dq({self.model: self}, paths["dq"])
        return paths


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        f = float(x)
        return f if math.isfinite(f) else None
    return x


def _pct(a: float, b: float) -> float:
    return 100.0 * a / b if b else float("nan")


def _aggregate(
    targets: Sequence[np.ndarray], preds: Sequence[np.ndarray], scores: Sequence[np.ndarray], thr: float
) -> tuple[int, int, int, list[np.ndarray], list[tuple[int, int, int]], list[np.ndarray]]:
    """Match every image with the predictions of score > thr → totals, |ΔQ| per image, per-image counts and
    the set-wide indices of the matched targets (aligned with |ΔQ|)."""
    n_t = n_p = n_m = 0
    dq, counts, matched = [], [], []
    for tb, pb, sc in zip(targets, preds, scores):
        keep = sc > thr
        pb, sc = pb[keep], sc[keep]
        pairs, missed, fps = match_image(tb, pb, sc)
        n_t += len(tb)
        n_p += len(pb)
        n_m += len(pairs)
        dq.append(np.abs(_centre_x(pb)[pairs[:, 1]] - _centre_x(tb)[pairs[:, 0]]))
        matched.append(n_t - len(tb) + pairs[:, 0])
        counts.append((len(tb), len(missed), len(fps)))
    return n_t, n_p, n_m, dq, counts, matched


def score_results(
    model: str,
    targets: Sequence[np.ndarray],
    preds: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    *,
    seed: int = -1,
    size: tuple[int, int] = (0, 0),
    score_threshold: float = SCORE_MIN,
    n_thresholds: int = 50,
    settings: dict[str, Any] | None = None,
) -> EvalResult:
    """Metrics of stored predictions (score > score_threshold kept) against the targets, per image."""
    preds = [np.asarray(p, np.float32).reshape(-1, 4) for p in preds]
    scores = [np.asarray(s, np.float32).reshape(-1) for s in scores]
    targets = [np.asarray(t, np.float32).reshape(-1, 4) for t in targets]
    n_img = len(targets)
    n_t, n_p, n_m, dq_list, counts, matched = _aggregate(targets, preds, scores, score_threshold)
    dq = np.concatenate(dq_list) if dq_list else np.zeros(0)
    dq_target = np.concatenate(matched).astype(np.int64) if matched else np.zeros(0, np.int64)
    c = np.array(counts, np.int64).reshape(-1, 3)
    misses, fps = c[:, 1], c[:, 2]

    # precision–recall sweep over the kept predictions' scores
    kept = np.concatenate([s[s > score_threshold] for s in scores]) if scores else np.zeros(0)
    if len(kept):
        qs = np.unique(np.quantile(kept, np.linspace(0, 1, n_thresholds + 1)[:-1]))
        thresholds = np.unique(np.concatenate([[score_threshold], np.nextafter(qs, -np.inf)]))
        thresholds = thresholds[thresholds >= score_threshold]
    else:
        thresholds = np.array([score_threshold])
    prec, rec, f1 = [], [], []
    for thr in thresholds:
        t_, p_, m_, _, _, _ = _aggregate(targets, preds, scores, float(thr))
        pr_ = m_ / p_ if p_ else 1.0
        rc_ = m_ / t_ if t_ else float("nan")
        prec.append(pr_)
        rec.append(rc_)
        f1.append(2 * pr_ * rc_ / (pr_ + rc_) if pr_ + rc_ > 0 else 0.0)
    pr = {"threshold": [float(x) for x in thresholds], "precision": prec, "recall": rec, "f1": f1}

    return EvalResult(
        model=model,
        n_images=n_img,
        seed=int(seed),
        size=(int(size[0]), int(size[1])),
        n_targets=int(n_t),
        n_predictions=int(n_p),
        n_matched=int(n_m),
        detected_pct=_pct(n_m, n_t),
        missed_pct=_pct(n_t - n_m, n_t),
        fp_per_target_pct=_pct(n_p - n_m, n_t),
        fp_per_prediction_pct=_pct(n_p - n_m, n_p),
        dq_median_px=float(np.median(dq)) if len(dq) else float("nan"),
        dq_p95_px=float(np.quantile(dq, 0.95)) if len(dq) else float("nan"),
        images_with_miss_pct=_pct(int((misses > 0).sum()), n_img),
        images_with_fp_pct=_pct(int((fps > 0).sum()), n_img),
        mean_misses_per_image=float(misses.mean()) if n_img else float("nan"),
        mean_fp_per_image=float(fps.mean()) if n_img else float("nan"),
        pr=pr,
        dq_px=dq.astype(np.float32),
        per_image={"targets": c[:, 0].tolist(), "missed": misses.tolist(), "false_positives": fps.tolist()},
        settings=dict(settings or {}),
        dq_target=dq_target,
    )


def common_dq(results: dict[str, EvalResult]) -> dict[str, Any]:
    """|ΔQ| of several models on the same targets: those that every model matched.

    The all-pairs |ΔQ| of :class:`EvalResult` is taken over each model's own matches, so a model that finds
    more of the faint, hard-to-place peaks is penalised for it; over the common targets the comparison is
    paired. Returns {"n_targets": N, "models": {name: {"dq_median_px", "dq_p95_px"}}} (NaN when N = 0).
    """
    if not results:
        return {"n_targets": 0, "models": {}}
    first = next(iter(results.values()))
    for r in results.values():
        if r.n_targets != first.n_targets or len(r.dq_target) != len(r.dq_px):
            raise ValueError("common_dq needs results of the same simulated set, with matched-target indices")
    common = None
    for r in results.values():
        common = r.dq_target if common is None else np.intersect1d(common, r.dq_target)
    out: dict[str, Any] = {"n_targets": len(common), "models": {}}
    for name, r in results.items():
        sel = r.dq_px[np.isin(r.dq_target, common)]
        out["models"][name] = {
            "dq_median_px": float(np.median(sel)) if len(sel) else float("nan"),
            "dq_p95_px": float(np.quantile(sel, 0.95)) if len(sel) else float("nan"),
        }
    return out


# --------------------------------------------------------------------------------------------------------------
# table and figures

_ROWS = (
    ("detected_pct", "detected", "{:.2f} %"),
    ("missed_pct", "missed", "{:.2f} %"),
    ("fp_per_target_pct", "false positives / target", "{:.2f} %"),
    ("fp_per_prediction_pct", "false positives / prediction", "{:.2f} %"),
    ("dq_median_px", "|ΔQ| median", "{:.3f} px"),
    ("dq_p95_px", "|ΔQ| 95th percentile", "{:.3f} px"),
    ("images_with_miss_pct", "images with ≥ 1 miss", "{:.1f} %"),
    ("images_with_fp_pct", "images with ≥ 1 false positive", "{:.1f} %"),
    ("mean_misses_per_image", "misses / image", "{:.3f}"),
    ("mean_fp_per_image", "false positives / image", "{:.3f}"),
)


def format_comparison(results: dict[str, EvalResult], *, paper: bool = True) -> str:
    """The paper's table, one column per model (+ the paper's numbers)."""
    cols = list(results)
    header = ["metric", *cols] + (["paper"] if paper else [])
    rows = []
    for key, label, fmt in _ROWS:
        row = [label]
        for name in cols:
            val = getattr(results[name], key)
            row.append("—" if val is None or (isinstance(val, float) and math.isnan(val)) else fmt.format(val))
        if paper:
            row.append(fmt.format(PAPER[key]) if key in PAPER else "")
        rows.append(row)
    first = next(iter(results.values()), None)
    common = None
    if len(results) > 1:
        with contextlib.suppress(ValueError):  # results of different sets: no paired rows
            common = common_dq(results)
    if common is not None:
        for key, label in (("dq_median_px", "|ΔQ| median, common targets*"), ("dq_p95_px", "|ΔQ| 95th pct, common targets*")):
            val = [common["models"][name][key] for name in cols]
            rows.append([label, *("—" if math.isnan(v) else f"{v:.3f} px" for v in val)] + ([""] if paper else []))
    if first is not None:
        row = ["targets / predictions"] + [f"{r.n_targets} / {r.n_predictions}" for r in results.values()]
        rows.append(row + (["10,000 images"] if paper else []))
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))), line]
    for r in rows:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    if first is not None:
        mode = first.settings.get("sim_mode", "ours")
        sim = "" if mode == "ours" else f" ({mode} simulator)"
        out.append(f"({first.n_images} simulated {first.size[0]}×{first.size[1]} images{sim}, seed {first.seed}; "
                   f"score > {first.settings.get('score_threshold', SCORE_MIN)}, "
                   f"NMS {first.settings.get('nms_iou', NMS_IOU)})")
    if common is not None:
        out.append(f"(* over the {common['n_targets']} targets that every model matched: a paired comparison of "
                   "localisation)")
    return "\n".join(out)


def _figure(figsize: tuple[float, float] = (6.0, 4.5)):
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, dpi=100)


def _plot_pr(results: dict[str, EvalResult], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    for name, r in results.items():
        ax.plot(r.pr["recall"], r.pr["precision"], ".-", ms=3, label=name)
        ax.plot([r.detected_pct / 100], [r.n_matched / r.n_predictions if r.n_predictions else 1.0], "o", ms=6,
                color=ax.lines[-1].get_color())
    pr_paper = 0.9922 / (0.9922 + 0.0025)
    ax.plot([0.9922], [pr_paper], "k*", ms=9, label="paper (score > 0.05)")
    ax.set_xlabel("recall (detected fraction)")
    ax.set_ylabel("precision")
    ax.set_title("precision–recall, score threshold swept from 0.05")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _plot_dq(results: dict[str, EvalResult], path: Path) -> None:
    fig = _figure()
    ax = fig.add_subplot()
    ax2 = ax.twinx()
    hi = max([1.0] + [float(r.dq_px.max()) for r in results.values() if len(r.dq_px)])
    bins = np.linspace(0, hi, 51)
    for name, r in results.items():
        if not len(r.dq_px):
            continue
        h = ax.hist(r.dq_px, bins=bins, histtype="step", label=f"{name}: p95 {r.dq_p95_px:.3f} px")
        color = h[2][0].get_edgecolor()
        xs = np.sort(r.dq_px)
        ax2.plot(xs, np.arange(1, len(xs) + 1) / len(xs), color=color, lw=1, ls="--")
        ax.axvline(r.dq_p95_px, color=color, lw=0.8, ls=":")
    ax.axvline(PAPER["dq_p95_px"], color="k", lw=0.8, ls=":", label=f"paper p95 {PAPER['dq_p95_px']} px")
    ax2.axhline(0.95, color="grey", lw=0.5)
    ax.set_xlabel("|ΔQ| = |x̄_pred − x̄_target| (px), matched pairs")
    ax.set_ylabel("pairs")
    ax2.set_ylabel("cumulative fraction (dashed)")
    ax2.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path)


# --------------------------------------------------------------------------------------------------------------
# running models


def _slug(spec: str) -> str:
    text = os.fspath(spec)
    if os.sep in text or "/" in text or Path(text).suffix:
        p = Path(text)
        text = p.stem if p.suffix else p.name
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text) or "model"


def _predict(detector: Any, images: np.ndarray, batch: int, progress: bool, desc: str):
    preds, scores = [], []
    starts = range(0, len(images), max(1, int(batch)))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(images), desc=desc, unit="img")
    for s in starts:
        for b, sc in detector.boxes(images[s : s + batch]):
            preds.append(np.asarray(b, np.float32).reshape(-1, 4))
            scores.append(np.asarray(sc, np.float32).reshape(-1))
        if bar is not None:
            bar.update(min(batch, len(images) - s))
    if bar is not None:
        bar.close()
    return preds, scores


def _thresholds_dict(thresholds: Any) -> dict | None:
    return thresholds.to_dict() if hasattr(thresholds, "to_dict") else thresholds


def _make_detector(model: Any, backend: str, score_threshold: float, nms_iou: float):
    if hasattr(model, "boxes") and not isinstance(model, (str, os.PathLike)):
        return model, False
    from ..gixd.detector import PeakDetector

    return PeakDetector(model, backend=backend, score_threshold=score_threshold, nms_iou=nms_iou), True


def evaluate(
    model: Any = "published",
    n: int = 100,
    seed: int = 12345,
    *,
    size: Sequence[int] = (512, 512),
    batch: int = 8,
    score_threshold: float = SCORE_MIN,
    nms_iou: float = NMS_IOU,
    backend: str = "auto",
    progress: bool = True,
    data: Any = None,
    out_dir: str | os.PathLike | None = None,
    name: str | None = None,
    mode: str = "ours",
) -> EvalResult:
    """Evaluate a model on ``n`` simulated images of ``seed`` (reference §6).

    model: a name/path for :func:`gixdrt.model.load`, a ``GixdDetector`` or a
        :class:`gixdrt.gixd.PeakDetector` (anything with ``.boxes(images)``; its own thresholds are used, and
        predictions with score ≤ score_threshold are dropped here).
    data: a :class:`gixdrt.sim.SimBatch` to use instead of simulating (n, seed and size are then taken from it).
    out_dir: where to save ``metrics.json`` and the figures (nothing saved when None).
    mode: the simulator when ``data`` is None (:data:`gixdrt.sim.SIM_MODES`: ours, shifted, paper).
    """
    t0 = time.perf_counter()
    if data is None:
        data = _simulate_set(n, seed, size, mode, None, progress)
    detector, owned = _make_detector(model, backend, score_threshold, nms_iou)
    if name is None:
        name = model if isinstance(model, (str, os.PathLike)) else str(getattr(detector, "model_spec", "model"))
        name = os.fspath(name) if isinstance(name, os.PathLike) else str(name)
    try:
        preds, scores = _predict(detector, data.images, batch, progress, desc=f"evaluate {name}")
    finally:
        if owned:
            detector.close()
    settings = {
        "score_threshold": float(score_threshold),
        "nms_iou": float(nms_iou),
        "iou_min": IOU_MIN,
        "max_cost_px": MAX_COST_PX,
        "batch": int(batch),
        "backend": getattr(detector, "backend", None),
        "device": str(getattr(detector, "device", "")) or None,
        "thresholds": _thresholds_dict(getattr(detector, "thresholds", None)),
        "sim_mode": _sim_mode(data),
        "sim_overrides": _sim_overrides(data),
    }
    res = score_results(name, data.boxes, preds, scores, seed=data.seed, size=data.size,
                        score_threshold=score_threshold, settings=settings)
    res.seconds = time.perf_counter() - t0
    if out_dir is not None:
        res.save(out_dir)
    return res


def compare(
    models: Sequence[Any],
    n: int = 100,
    seed: int = 12345,
    *,
    size: Sequence[int] = (512, 512),
    batch: int = 8,
    score_threshold: float = SCORE_MIN,
    nms_iou: float = NMS_IOU,
    backend: str = "auto",
    progress: bool = True,
    out_dir: str | os.PathLike | None = None,
    data: Any = None,
    print_table: bool = True,
    mode: str = "ours",
) -> dict[str, EvalResult]:
    """Evaluate several models on the same simulated set (simulated once) → {name: EvalResult}; prints the
    side-by-side table with the paper's column. out_dir: one sub-directory per model plus
    ``comparison.json``, ``comparison.txt`` and the joint figures. mode: the simulator when ``data`` is None."""
    if data is None:
        data = _simulate_set(n, seed, size, mode, None, progress)
    results: dict[str, EvalResult] = {}
    for m in models:
        name = os.fspath(m) if isinstance(m, (str, os.PathLike)) else str(getattr(m, "model_spec", f"model{len(results)}"))
        if name in results:
            name = f"{name}#{len(results)}"
        results[name] = evaluate(m, data=data, batch=batch, score_threshold=score_threshold, nms_iou=nms_iou,
                                 backend=backend, progress=progress, name=name)
    table = format_comparison(results)
    if print_table:
        print(table)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for name, r in results.items():
            slug = _slug(name)
            while slug in used:
                slug += "_"
            used.add(slug)
            r.save(out / slug)
        summary = {"paper": PAPER, "models": {k: r.summary() for k, r in results.items()},
                   "common_targets": common_dq(results),
                   "n_images": len(data), "seed": data.seed, "size": list(data.size), "sim_mode": _sim_mode(data),
                   "sim_overrides": _sim_overrides(data)}
        (out / "comparison.json").write_text(json.dumps(_jsonable(summary), indent=1) + "\n")
        (out / "comparison.txt").write_text(table + "\n")
        _plot_pr(results, out / "pr_curve.png")
        _plot_dq(results, out / "dq_hist.png")
    return results


def _simulate_set(n: int, seed: int, size: Sequence[int], mode: str, sim: Any, progress: bool):
    from ..sim import simulate

    return simulate(int(n), int(seed), size=tuple(size), config=sim_config(sim, mode), progress=progress)


def _sim_mode(data: Any) -> str:
    """The simulator mode of ``data`` (``ours``, ``shifted`` or ``paper``)."""
    from ..sim import config_mode

    return config_mode(getattr(data, "config", None))


def _sim_overrides(data: Any) -> dict[str, Any]:
    """The simulator settings of ``data`` that differ from the defaults of its simulator ({} for the default
    simulator; a paper-mode set is compared with :class:`gixdrt.sim.PaperSimConfig`, a SimConfig with SimConfig())."""
    from ..sim import PaperSimConfig, SimConfig

    cfg = getattr(data, "config", None)
    if cfg is None:
        return {}
    default = (PaperSimConfig() if isinstance(cfg, PaperSimConfig) else SimConfig()).to_dict()
    return {k: v for k, v in cfg.to_dict().items() if default.get(k) != v}


def sim_config(sim: Any, mode: str = "ours"):
    """The simulator configuration of ``mode`` (:data:`gixdrt.sim.SIM_MODES`) with overrides from None, a
    SimConfig / PaperSimConfig (taken as is), a dict or a YAML file of that mode's fields; errors name the
    file and the unknown or invalid setting."""
    from ..errors import ConfigError
    from ..sim import PaperSimConfig, SimConfig, mode_config

    if isinstance(sim, (SimConfig, PaperSimConfig)):
        return sim
    if sim is None or isinstance(sim, dict):
        return mode_config(mode, sim)
    import yaml

    mode_config(mode)  # an unknown mode is named before the file is read
    path = Path(sim)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read simulator settings: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise ConfigError("simulator settings must be a YAML mapping of simulator fields", path=path)
    data = data.get("sim", data)  # a training config's `sim:` section works too
    try:
        return mode_config(mode, data)
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc), path=path) from None


def main_evaluate(
    models: Sequence[str],
    n: int = 100,
    seed: int = 12345,
    out_dir: str | os.PathLike | None = "runs/evaluate",
    *,
    size: Sequence[int] = (512, 512),
    backend: str = "auto",
    batch: int = 8,
    score_threshold: float = SCORE_MIN,
    nms_iou: float = NMS_IOU,
    progress: bool = True,
    sim: Any = None,
    mode: str = "ours",
) -> dict[str, EvalResult]:
    """CLI entry: evaluate one or more models (names or paths) on one simulated set, print the table and save
    the numbers and figures. One model: ``metrics.json``, ``pr_curve.png``, ``dq_hist.png`` in out_dir;
    several: a sub-directory each plus ``comparison.json`` / ``comparison.txt`` and joint figures.
    sim: simulator settings (a :class:`gixdrt.sim.SimConfig`, a dict of overrides or a YAML file of them).
    mode: the simulator (:data:`gixdrt.sim.SIM_MODES`); ``sim`` overrides fields of that mode's configuration."""
    models = list(models) or ["default"]
    data = _simulate_set(n, seed, size, mode, sim, progress)
    if len(models) == 1:
        res = evaluate(models[0], data=data, batch=batch, score_threshold=score_threshold,
                       nms_iou=nms_iou, backend=backend, progress=progress, out_dir=out_dir)
        res.print_table()
        if out_dir is not None:
            print(f"saved metrics.json, pr_curve.png, dq_hist.png in {out_dir}")
        return {res.model: res}
    results = compare(models, batch=batch, score_threshold=score_threshold, nms_iou=nms_iou,
                      backend=backend, progress=progress, out_dir=out_dir, data=data)
    if out_dir is not None:
        print(f"saved comparison.json and per-model results in {out_dir}")
    return results
