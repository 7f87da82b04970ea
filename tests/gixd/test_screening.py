"""Per-frame screening (gixdrt.gixd.screening): flags on a hand-built table, frame-by-frame == batch, hits.lst,
the seeded hits-only selection, and the configuration's checks."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from gixdrt.errors import ConfigError
from gixdrt.gixd.peaks import PeakTable
from gixdrt.gixd.screening import (
    FrameFlags,
    Screener,
    ScreeningConfig,
    event_line,
    keep_draw,
    screen,
    write_hits_list,
)

A = [100, 0, 110, 50]
A_FAR = [104, 0, 114, 50]  # IoU with A = 6/14 = 0.43: links
A_SHIFTED = [107, 0, 117, 50]  # IoU with A = 3/17 = 0.18: does not
B, C, D = [300, 10, 305, 80], [600, 0, 640, 100], [800, 200, 810, 300]
SRC = "run.h5::/entry/data/data"


def frame(f: int, boxes: list, scores: list) -> PeakTable:
    return PeakTable.from_boxes(np.array(boxes, float).reshape(-1, 4), scores, frame=f, source=f"{SRC}[{f}]",
                                image_shape=(512, 1024), q_max=3.0)


@pytest.fixture
def table() -> PeakTable:
    """Six frames; the expected numbers below are worked out by hand from the boxes."""
    return PeakTable.concat([
        frame(0, [A, B], [0.9, 0.7]),  # 2 peaks, both new (first frame), best 0.9
        frame(1, [A_FAR, C], [0.65, 0.85]),  # A_FAR links to A; C new → 1 new; best 0.85
        # frame 2: no peaks
        frame(3, [A], [0.75]),  # previous frame empty → new
        frame(4, [A_SHIFTED, A, D], [0.95, 0.6, 0.62]),  # A links to A, A_SHIFTED and D are new → 2 new
        frame(5, [B, C, D, A], [0.61, 0.62, 0.63, 0.64]),  # D links, A links (IoU 1 with frame 4's A) → 2 new
    ])


N_PEAKS = [2, 2, 0, 1, 3, 4]
N_NEW = [2, 1, 0, 1, 2, 2]
MAX_SCORE = [0.9, 0.85, math.nan, 0.75, 0.95, 0.64]


@pytest.mark.parametrize("cfg, hits, n_new", [
    (ScreeningConfig(), [1, 1, 0, 1, 1, 1], N_NEW),
    (ScreeningConfig(min_peaks=0), [1, 1, 1, 1, 1, 1], N_NEW),
    (ScreeningConfig(min_peaks=2, max_peaks=3), [1, 1, 0, 0, 1, 0], N_NEW),
    (ScreeningConfig(min_new_peaks=2), [1, 0, 0, 0, 1, 1], N_NEW),
    (ScreeningConfig(min_score=0.8), [1, 1, 0, 0, 1, 0], N_NEW),
    (ScreeningConfig(min_peaks=2, min_new_peaks=2, min_score=0.9), [1, 0, 0, 0, 1, 0], N_NEW),
    # at IoU 0.5 A_FAR (0.43) no longer links: frame 1 has 2 new peaks
    (ScreeningConfig(new_peak_iou=0.5, min_new_peaks=2), [1, 1, 0, 0, 1, 1], [2, 2, 0, 1, 2, 2]),
])
def test_flags_on_a_hand_built_table(table, cfg, hits, n_new):
    flags = screen(table, 6, cfg)
    assert flags.frame.tolist() == list(range(6))
    assert flags.n_peaks.tolist() == N_PEAKS
    assert flags.n_new.tolist() == n_new
    np.testing.assert_array_equal(flags.max_score, MAX_SCORE)
    assert flags.hit.astype(int).tolist() == hits
    assert flags.keep.tolist() == flags.hit.tolist()  # keep_misses 0: only hits kept
    assert flags.source.tolist() == [f"{SRC}[{f}]" for f in (0, 1)] + [""] + [f"{SRC}[{f}]" for f in (3, 4, 5)]
    c = flags.counts()
    assert (c["n_frames"], c["n_hits"], c["n_misses"], c["n_kept_misses"]) == (6, sum(hits), 6 - sum(hits), 0)
    assert math.isnan(c["miss_weight"])


def test_frame_by_frame_equals_batch(table):
    cfg = ScreeningConfig(min_peaks=2, keep_misses=0.5, seed=3)
    batch = screen(table, 8, cfg, sources=[f"s{f}" for f in range(8)])
    screener = Screener(cfg)
    live = [screener.add(f, table.select(table.frame == f), f"s{f}") for f in range(8)]

    def plain(flag):  # NaN (no peaks) compared as None
        return [None if isinstance(v, float) and math.isnan(v) else v for v in dataclasses.astuple(flag)]

    assert [plain(f) for f in live] == [plain(f) for f in batch]
    assert sum(f.kept_miss for f in live) > 0 and any(not f.keep for f in live)  # the draw matters here
    assert FrameFlags.from_flags(live).counts() == batch.counts()
    assert screener.counts == {k: batch.counts()[k] for k in ("n_frames", "n_hits", "n_misses", "n_kept_misses")}


def test_a_skipped_frame_makes_every_peak_new(table):
    screener = Screener()
    screener.add(0, table.select(table.frame == 0))
    flag = screener.add(2, frame(2, [A, B], [0.9, 0.8]))  # frame 1 never seen
    assert (flag.n_peaks, flag.n_new) == (2, 2)
    with pytest.raises(ValueError, match="increasing order"):
        screener.add(2, frame(2, [], []))
    with pytest.raises(ValueError, match="holds frames"):
        screener.add(5, frame(4, [A], [0.9]))


def test_keep_misses_is_seeded_and_unbiased():
    n = 5000
    cfg = ScreeningConfig(min_peaks=1, keep_misses=0.1, seed=7)
    flags = screen(PeakTable.empty(), n, cfg)  # no peaks: every frame a miss
    kept = flags.kept_miss
    assert not flags.hit.any() and np.array_equal(kept, flags.keep)
    # binomial(5000, 0.1): 500 ± 21 (1σ); 5σ bounds
    assert abs(int(kept.sum()) - 500) < 5 * math.sqrt(n * 0.1 * 0.9)
    assert np.array_equal(screen(PeakTable.empty(), n, cfg).keep, kept)  # same seed → same frames
    other = screen(PeakTable.empty(), n, ScreeningConfig(keep_misses=0.1, seed=8)).keep
    assert not np.array_equal(other, kept)
    # the draw is a function of (seed, frame) only: the kept frames of a prefix are the prefix of the kept frames
    assert np.array_equal(screen(PeakTable.empty(), 500, cfg).keep, kept[:500])
    u = keep_draw(7, range(n))
    assert np.array_equal(kept, u < 0.1) and 0 <= u.min() and u.max() < 1
    assert keep_draw(7, 123)[0] == u[123]
    # both halves of the range are used evenly (a crude check that the draw is not degenerate)
    assert abs(float(u.mean()) - 0.5) < 0.02 and abs(float((u < 0.5).mean()) - 0.5) < 0.04
    c = flags.counts()
    assert c["n_kept_misses"] == int(kept.sum()) and c["miss_weight"] == n / int(kept.sum())
    assert screen(PeakTable.empty(), 50, ScreeningConfig(keep_misses=1.0)).keep.all()


def test_hits_list(tmp_path, table):
    flags = screen(table, 6, ScreeningConfig(min_peaks=2))
    path = write_hits_list(tmp_path / "hits.lst", flags)
    assert path.read_text() == "run.h5 //0\nrun.h5 //1\nrun.h5 //4\nrun.h5 //5\n"
    assert [p.name for p in tmp_path.iterdir()] == ["hits.lst"]
    path = write_hits_list(tmp_path / "none.lst", screen(table, 6, ScreeningConfig(min_peaks=5)))
    assert path.read_text() == ""


@pytest.mark.parametrize("source, frame_index, line", [
    ("stack.npy[3]", 9, "stack.npy //3"),
    ("scan.h5::/entry/data/data[12]", 0, "scan.h5 //12"),
    ("a.tif", 4, "a.tif"),
    ("scan.h5::/entry/data/data[12:15]", 4, "scan.h5::/entry/data/data[12:15]"),
    ("a.tif+b.tif", 2, "a.tif+b.tif"),
    ("", 7, "//7"),
])
def test_event_lines(source, frame_index, line):
    assert event_line(source, frame_index) == line


def test_frames_dataset_round_trip(tmp_path, table):
    from gixdrt.io import read_peaks, write_peaks

    flags = screen(table, 6, ScreeningConfig(keep_misses=0.5))
    path = write_peaks(tmp_path / "p.h5", table, n_frames=6, datasets={"frames": flags.to_records()})
    _, meta = read_peaks(path)
    got = meta["frames"]
    assert got["source"].tolist() == flags.source.tolist()
    for name in ("frame", "n_peaks", "n_new", "hit", "keep"):
        assert got[name].astype(np.int64).tolist() == getattr(flags, name).astype(np.int64).tolist(), name
    np.testing.assert_array_equal(got["max_score"], flags.max_score)


@pytest.mark.parametrize("kwargs, key", [
    ({"min_peaks": -1}, "screening.min_peaks"),
    ({"min_peaks": 1.5}, "screening.min_peaks"),
    ({"min_peaks": 3, "max_peaks": 2}, "screening.max_peaks"),
    ({"min_new_peaks": -2}, "screening.min_new_peaks"),
    ({"min_score": float("nan")}, "screening.min_score"),
    ({"new_peak_iou": 0.0}, "screening.new_peak_iou"),
    ({"keep_misses": 1.5}, "screening.keep_misses"),
    ({"seed": -1}, "screening.seed"),
])
def test_config_checks(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        ScreeningConfig(**kwargs)


def test_config_dict_round_trip():
    cfg = ScreeningConfig(min_peaks=3, max_peaks=10, min_new_peaks=1, min_score=0.9, keep_misses=0.25, seed=4)
    assert ScreeningConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["keep_misses"] == 0.25
    assert ScreeningConfig.from_dict(None) == ScreeningConfig()
    with pytest.raises(ConfigError, match="screening: unknown key.*min_peak"):
        ScreeningConfig.from_dict({"min_peak": 2})
