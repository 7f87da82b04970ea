"""Evaluation metrics on hand-built masks, spot bookkeeping on a generated frame, and a side-by-side report."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("scipy")

from gixdrt.powder.evaluate import (  # noqa: E402
    classical_method,
    evaluate_methods,
    frame_spots,
    pixel_counts,
    spot_recall,
    summarize,
)


def _hand_case():
    truth = np.zeros((10, 12), bool)
    truth[1:3, 1:3] = True  # spot A: 4 px
    truth[6:8, 6:10] = True  # spot B: 8 px
    pred = np.zeros_like(truth)
    pred[1:3, 1:3] = True  # A fully
    pred[6:8, 6:8] = True  # B half: found (≥ 50 %)
    pred[0, 11] = pred[9, 0] = True  # two false positives
    valid = np.ones_like(truth)
    valid[9, 0] = False  # one of them on a detector-masked pixel: not counted
    return truth, pred, valid


def test_pixel_counts_and_summary_by_hand():
    truth, pred, valid = _hand_case()
    c = pixel_counts(pred, truth, valid)
    assert c == {"tp": 8, "fp": 1, "fn": 4, "tn": 119 - 13}
    spots = [{"strength": 5.0, "ring_contrast": 1.0, "found": True},
             {"strength": 500.0, "ring_contrast": 4.0, "found": False},
             {"strength": 200.0, "ring_contrast": 3.5, "found": True},
             {"strength": 50.0, "ring_contrast": 2.0, "found": True}]
    s = summarize([{**c, "seconds": 0.5}, {"tp": 0, "fp": 3, "fn": 0, "tn": 10, "seconds": 1.5}], spots)
    assert s["pixel_recall"] == pytest.approx(8 / 12) and s["pixel_precision"] == pytest.approx(8 / 12)
    assert s["fp_pixels_per_frame"] == 2.0 and s["seconds_per_frame"] == 1.0 and s["mean_frame_recall"] == 8 / 12
    r = s["spot_recall"]
    assert r["all"] == {"n": 4, "recall": 0.75}
    assert r["strong_bright_ring"] == {"n": 2, "recall": 0.5}
    assert r["weak"]["n"] == 1 and r["medium"]["n"] == 1 and r["strong"]["n"] == 2
    assert r["off_ring"]["n"] == 1 and r["on_ring"]["n"] == 1 and r["bright_ring"]["n"] == 2 and r["any_ring"]["n"] == 3


def test_spot_recall_counts_half_a_spot_as_found():
    truth, pred, _ = _hand_case()
    frame = SimpleNamespace(spots=truth)
    spots = [{"label": 1}, {"label": 2}]
    assert spot_recall(pred, frame, spots) == [True, True]
    pred[6, 6] = False  # B: 3 of 8
    assert spot_recall(pred, frame, spots) == [True, False]


def test_frame_spots_on_a_generated_frame():
    from gixdrt.sim.powder import PowderSimulator

    sim = PowderSimulator(seed=5, size=(256, 256))
    frame = next(f for f in (sim.frame(i, aux=True) for i in range(10)) if f.spots.sum() > 20)
    spots = frame_spots(frame)
    assert sum(s["pixels"] for s in spots) == int(frame.spots.sum())
    assert all(s["strength"] > 2.0 for s in spots)  # the ground truth: the spot adds > 2σ of the powder noise
    assert all(s["ring_contrast"] >= 1.0 for s in spots)
    assert spot_recall(frame.spots, frame, spots) == [True] * len(spots)


def test_side_by_side_report():
    perfect = lambda f: f.spots  # noqa: E731
    report = evaluate_methods({"truth": perfect, "classical": classical_method()}, n=2, seed=1, size=192)
    t = report["methods"]["truth"]
    assert t["pixel_recall"] == 1.0 and t["fp"] == 0 and t["spot_recall"]["all"]["recall"] == 1.0
    c = report["methods"]["classical"]
    assert c["tp"] + c["fn"] == t["tp"] and c["fp"] > 0
    assert report["config"] == "default" and len(report["per_frame"]["classical"]) == 2
