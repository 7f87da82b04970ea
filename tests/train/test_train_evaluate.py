"""gixdrt.train.evaluate: the assignment solver, per-image matching (reference §6) and the evaluation run."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

scipy_optimize = pytest.importorskip("scipy.optimize")
linear_sum_assignment = scipy_optimize.linear_sum_assignment

from gixdrt.train.evaluate import (
    PAPER,
    box_iou,
    common_dq,
    compare,
    evaluate,
    format_comparison,
    main_evaluate,
    match_image,
    score_results,
)


def _box(xc: float, w: float = 4.0, y0: float = 0.0, y1: float = 20.0) -> list[float]:
    return [xc - w / 2, y0, xc + w / 2, y1]


def test_box_iou():
    iou = box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 1 / 3, 0.0]])


# ---------------------------------------------------------------------------------------------------- matching


def test_exact_matches():
    t = np.array([_box(10), _box(30), _box(50.5, 6)])
    pairs, missed, fps = match_image(t, t[::-1].copy(), [0.9, 0.8, 0.7])
    assert pairs.tolist() == [[0, 2], [1, 1], [2, 0]]
    assert len(missed) == 0 and len(fps) == 0


def test_shift_just_over_one_pixel_is_miss_and_fp():
    t = np.array([_box(10.0)])
    pairs, missed, fps = match_image(t, [_box(11.01)], [0.9])
    assert box_iou(t, [_box(11.01)])[0, 0] > 0.3  # possible, but too far
    assert len(pairs) == 0 and missed.tolist() == [0] and fps.tolist() == [0]
    pairs, missed, fps = match_image(t, [_box(10.99)], [0.9])
    assert pairs.tolist() == [[0, 0]] and len(missed) == 0 and len(fps) == 0


def test_iou_just_under_threshold_is_impossible():
    t = np.array([[0.0, 0.0, 10.0, 10.0]])
    under = np.array([[0.0, 0.0, 10.0, 2.9]])  # same centre (cost 0), IoU 0.29
    over = np.array([[0.0, 0.0, 10.0, 3.1]])  # IoU 0.31
    assert box_iou(t, under)[0, 0] < 0.3 < box_iou(t, over)[0, 0]
    pairs, missed, fps = match_image(t, under, [0.9])
    assert len(pairs) == 0 and missed.tolist() == [0] and fps.tolist() == [0]
    pairs, _, _ = match_image(t, over, [0.9])
    assert pairs.tolist() == [[0, 0]]
    # exactly 0.3 is impossible too (IoU ≤ 0.3)
    pairs, _, _ = match_image(t, [[0.0, 0.0, 10.0, 3.0]], None)
    assert len(pairs) == 0


def test_duplicate_predictions_one_match_one_fp():
    t = np.array([_box(20.0)])
    p = np.array([_box(20.2), _box(20.2)])
    pairs, missed, fps = match_image(t, p, [0.5, 0.9])
    assert pairs.tolist() == [[0, 1]]  # the higher-scoring duplicate is the match
    assert len(missed) == 0 and fps.tolist() == [0]
    pairs, missed, fps = match_image(t, p)  # without scores: still one match, one FP
    assert len(pairs) == 1 and len(fps) == 1 and len(missed) == 0


def test_optimal_assignment_beats_greedy():
    # costs: t0-p0 0.6, t1-p0 0.4, t1-p1 0.5, t0-p1 1.5 (all IoU > 0.3). Greedy cheapest-first (or
    # score-first with p0 stronger) takes t1-p0 and is left with t0-p1 (1.5 px: no match); the optimal
    # assignment t0-p0 + t1-p1 matches both.
    t = np.array([_box(0.0 + 10), _box(1.0 + 10)])
    p = np.array([_box(0.6 + 10), _box(1.5 + 10)])
    assert np.all(box_iou(t, p) > 0.3)
    pairs, missed, fps = match_image(t, p, [0.9, 0.8])
    assert pairs.tolist() == [[0, 0], [1, 1]]
    assert len(missed) == 0 and len(fps) == 0


def test_empty_sides():
    t = np.array([_box(5), _box(15)])
    pairs, missed, fps = match_image(t, np.zeros((0, 4)), np.zeros(0))
    assert pairs.shape == (0, 2) and missed.tolist() == [0, 1] and len(fps) == 0
    pairs, missed, fps = match_image(np.zeros((0, 4)), t, [0.3, 0.4])
    assert pairs.shape == (0, 2) and len(missed) == 0 and fps.tolist() == [0, 1]


def test_components_equal_whole_matrix_assignment():
    """Solving per connected component = the whole matrix with a large impossible cost."""
    rng = np.random.default_rng(1)
    for _ in range(60):
        k, m = (int(v) for v in rng.integers(1, 9, 2))
        xt = rng.uniform(0, 30, k)
        xp = np.concatenate([xt[: m // 2] + rng.normal(0, 0.7, min(k, m // 2)), rng.uniform(0, 30, m - min(k, m // 2))])
        t = np.array([_box(x, rng.uniform(2, 6)) for x in xt])
        p = np.array([_box(x, rng.uniform(2, 6)) for x in xp])
        pairs, missed, fps = match_image(t, p)
        cost = np.abs(xt[:, None] - xp[None, :])
        ok = box_iou(t, p) > 0.3
        big = 1e6
        r, c = linear_sum_assignment(np.where(ok, cost, big))  # SciPy's, on the whole matrix
        ref = ok[r, c] & (cost[r, c] < 1.0)  # continuous random costs: the optimum is unique
        assert sorted(map(tuple, pairs.tolist())) == sorted(zip(r[ref].tolist(), c[ref].tolist()))
        assert len(pairs) + len(missed) == k and len(pairs) + len(fps) == m


# ---------------------------------------------------------------------------------------------------- metrics


def test_score_results_numbers():
    targets = [np.array([_box(10), _box(30), _box(60)]), np.array([_box(20)])]
    preds = [
        np.array([_box(10.1), _box(30.3), _box(45), _box(60.2)]),  # 3 matches, 1 FP
        np.array([_box(21.5), _box(20.0)]),  # second matches, first too far → FP
    ]
    scores = [np.array([0.9, 0.8, 0.7, 0.05]), np.array([0.6, 0.04])]  # 0.05 and 0.04 dropped (> 0.05 kept)
    r = score_results("m", targets, preds, scores, seed=0, size=(64, 64))
    # image 0: 2 matched (10, 30), 60 missed (its pred scored 0.05), 45 FP; image 1: 20 missed, 21.5 FP
    assert (r.n_targets, r.n_predictions, r.n_matched) == (4, 4, 2)
    assert r.detected_pct == pytest.approx(50.0) and r.missed_pct == pytest.approx(50.0)
    assert r.fp_per_target_pct == pytest.approx(50.0) and r.fp_per_prediction_pct == pytest.approx(50.0)
    np.testing.assert_allclose(np.sort(r.dq_px), [0.1, 0.3], atol=1e-5)
    assert r.images_with_miss_pct == 100.0 and r.images_with_fp_pct == 100.0
    assert r.mean_misses_per_image == 1.0 and r.mean_fp_per_image == 1.0
    assert r.per_image["missed"] == [1, 1]
    # PR sweep: recall non-increasing as the threshold rises, the first point is the reported one
    rec = np.array(r.pr["recall"])
    assert r.pr["threshold"][0] == pytest.approx(0.05)
    assert rec[0] == pytest.approx(0.5) and np.all(np.diff(rec) <= 1e-12)
    text = format_comparison({"m": r})
    assert "99.22 %" in text and "50.00 %" in text


def test_common_dq_is_paired_over_targets_every_model_found():
    targets = [np.array([_box(10), _box(30), _box(60)]), np.array([_box(20)])]
    ones = [np.ones(2), np.ones(1)]
    # model a finds targets 0, 1 (image 0) and 3 (image 1), with errors 0.1, 0.2, 0.9
    a = score_results("a", targets, [np.array([_box(10.1), _box(30.2)]), np.array([_box(20.9)])], ones)
    # model b finds targets 1, 2 and 3 with errors 0.4, 0.05, 0.3: it finds target 2, a's misses ...
    b = score_results("b", targets, [np.array([_box(30.4), _box(60.05)]), np.array([_box(20.3)])], ones)
    np.testing.assert_array_equal(a.dq_target, [0, 1, 3])
    np.testing.assert_array_equal(b.dq_target, [1, 2, 3])
    c = common_dq({"a": a, "b": b})
    assert c["n_targets"] == 2  # targets 1 and 3
    assert c["models"]["a"]["dq_median_px"] == pytest.approx(0.55, abs=1e-5)  # (0.2 + 0.9) / 2
    assert c["models"]["b"]["dq_median_px"] == pytest.approx(0.35, abs=1e-5)  # (0.4 + 0.3) / 2
    assert c["models"]["a"]["dq_p95_px"] == pytest.approx(0.2 + 0.95 * 0.7, abs=1e-5)
    text = format_comparison({"a": a, "b": b})
    assert "common targets" in text and "0.550 px" in text and "over the 2 targets" in text
    assert "common targets" not in format_comparison({"a": a})
    with pytest.raises(ValueError, match="same simulated set"):
        common_dq({"a": a, "x": score_results("x", targets[:1], [np.zeros((0, 4))], [np.zeros(0)])})


# ---------------------------------------------------------------------------------------------------- runs


class _Oracle:
    """A fake detector: returns the simulated boxes (optionally jittered / with a spurious box)."""

    def __init__(self, data, shift: float = 0.0, extra: bool = False):
        self.table = {data.images[i].tobytes(): data.boxes[i] for i in range(len(data))}
        self.shift, self.extra = shift, extra
        self.model_spec = "oracle"

    def boxes(self, images):
        out = []
        for im in images:
            b = self.table[im.tobytes()].copy()
            b[:, [0, 2]] += self.shift
            if self.extra:
                b = np.concatenate([b, np.array([[0.0, 0.0, 3.0, 3.0]], np.float32)])
            out.append((b, np.linspace(0.99, 0.5, len(b)).astype(np.float32)))
        return out


@pytest.fixture(scope="module")
def small_set():
    from gixdrt.sim import simulate

    return simulate(3, seed=5, size=(128, 256))


def test_evaluate_oracle(small_set, tmp_path):
    res = evaluate(_Oracle(small_set), data=small_set, progress=False, out_dir=tmp_path / "o", batch=2)
    assert res.n_images == 3 and res.n_targets == sum(len(b) for b in small_set.boxes) > 0
    assert res.detected_pct == 100.0 and res.missed_pct == 0.0 and res.fp_per_target_pct == 0.0
    assert res.dq_p95_px == pytest.approx(0.0, abs=1e-5)
    for name in ("metrics.json", "pr_curve.png", "dq_hist.png"):
        assert (tmp_path / "o" / name).stat().st_size > 0
    d = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert d["detected_pct"] == 100.0 and d["paper"] == PAPER and len(d["pr"]["recall"]) == len(d["pr"]["threshold"])


def test_compare_same_set(small_set, tmp_path, capsys):
    models = [_Oracle(small_set), _Oracle(small_set, shift=0.5, extra=True)]
    res = compare(models, data=small_set, progress=False, out_dir=tmp_path)
    a, b = res.values()
    assert a.n_targets == b.n_targets
    assert b.detected_pct == 100.0 and b.n_fp == 3  # one spurious box per image
    assert b.fp_per_target_pct == pytest.approx(300.0 / b.n_targets)
    assert b.dq_median_px == pytest.approx(0.5, abs=1e-4)
    assert b.images_with_fp_pct == 100.0 and b.mean_fp_per_image == 1.0
    out = capsys.readouterr().out
    assert "paper" in out and "0.366 px" in out
    summary = json.loads((tmp_path / "comparison.json").read_text())
    assert len(summary["models"]) == 2 and (tmp_path / "pr_curve.png").is_file()
    common = summary["common_targets"]  # both find every target: the common set is all of them
    assert common["n_targets"] == a.n_targets
    assert common["models"][b.model]["dq_median_px"] == pytest.approx(0.5, abs=1e-4)


def test_main_evaluate_random_weights(tmp_path, capsys):
    import torch

    from gixdrt.model import GixdDetector, save_model

    torch.manual_seed(0)
    save_model(GixdDetector(), tmp_path / "rand")
    out = tmp_path / "eval"
    res = main_evaluate([str(tmp_path / "rand")], n=2, seed=3, out_dir=out, size=(128, 128), backend="torch",
                        batch=2, progress=False)
    (r,) = res.values()
    assert r.n_images == 2
    assert r.detected_pct + r.missed_pct == pytest.approx(100.0)
    assert r.n_matched + r.n_fp == r.n_predictions
    for name in ("metrics.json", "pr_curve.png", "dq_hist.png"):
        assert (out / name).is_file()
    d = json.loads((out / "metrics.json").read_text())
    assert d["n_targets"] == r.n_targets and d["settings"]["score_threshold"] == 0.05
    assert "detected" in capsys.readouterr().out


def test_sim_config_from_yaml_dict_and_errors(tmp_path):
    from gixdrt.errors import ConfigError
    from gixdrt.sim import SimConfig
    from gixdrt.train.evaluate import _sim_overrides, sim_config

    root = Path(__file__).resolve().parents[2]
    shifted = sim_config(root / "configs" / "sim-shifted.yaml")
    assert shifted.n_peaks == (5, 60) and shifted.p_wedge == 1.0 and shifted.contrast_coef == SimConfig().contrast_coef
    assert sim_config({"p_ring": 0.9}).p_ring == 0.9 and sim_config(None) == SimConfig()
    bad = tmp_path / "bad.yaml"
    bad.write_text("n_peakz: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*n_peakz"):
        sim_config(bad)
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*mapping"):
        sim_config(bad)
    from gixdrt.sim import simulate

    data = simulate(1, 0, size=(64, 64), config=shifted)
    over = _sim_overrides(data)
    assert over["n_peaks"] == [5, 60] and "contrast_coef" not in over
    assert _sim_overrides(simulate(1, 0, size=(64, 64))) == {}


def test_faint_label_config_changes_labels_not_images():
    from gixdrt.sim import simulate
    from gixdrt.train.evaluate import sim_config

    root = Path(__file__).resolve().parents[2]
    faint = sim_config(root / "configs" / "sim-faint.yaml")
    assert faint.min_snr == 5.0
    a = simulate(6, 31, size=(128, 256))
    b = simulate(6, 31, size=(128, 256), config=faint)
    np.testing.assert_array_equal(a.images, b.images)  # the same images ...
    assert sum(map(len, b.boxes)) > sum(map(len, a.boxes))  # ... with every default label and fainter ones
    for ba, bb, pb in zip(a.boxes, b.boxes, b.peaks):
        assert {tuple(r) for r in ba} <= {tuple(r) for r in bb}
        extra = ~np.isin(np.arange(len(bb)), [i for i, r in enumerate(bb) if tuple(r) in {tuple(x) for x in ba}])
        assert np.all(pb["snr"][extra] < 10.0) and np.all(pb["snr"] >= 5.0)


def test_paper_mode_set_is_evaluated_as_network_input(tmp_path):
    from gixdrt.sim import PaperSimConfig, SimConfig, simulate
    from gixdrt.train.evaluate import _sim_overrides, sim_config

    assert sim_config(None, "paper") == PaperSimConfig() and sim_config(None, "shifted") == SimConfig.shifted()
    y = tmp_path / "p.yaml"
    y.write_text("p_blur: 0.0\n")
    assert sim_config(y, "paper") == PaperSimConfig(p_blur=0.0)
    data = simulate(2, 7, config=PaperSimConfig(n_peaks=(2, 20)))
    assert _sim_overrides(data) == {"n_peaks": [2, 20]}

    class _Inputs(_Oracle):  # the oracle, recording what the evaluation hands the detector
        seen: list = []

        def boxes(self, images):
            self.seen.append(np.array(images))
            return super().boxes(images)

    det = _Inputs(data)
    res = compare([det], data=data, progress=False, out_dir=tmp_path / "c", print_table=False)
    (r,) = res.values()
    assert np.array_equal(np.concatenate(det.seen), data.images)  # as simulated: no contrast chain in between
    assert r.detected_pct == 100.0 and r.settings["sim_mode"] == "paper"
    summary = json.loads((tmp_path / "c" / "comparison.json").read_text())
    assert summary["sim_mode"] == "paper" and summary["sim_overrides"] == {"n_peaks": [2, 20]}
