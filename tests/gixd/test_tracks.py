"""Peaks linked across frames (gixdrt.gixd.tracks): the paper's rule on synthetic series, the incremental linker
against the batch one, the real frame, and the track column in the peak-table files."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.gixd.peaks import COLUMNS, PeakTable
from gixdrt.gixd.tracks import TrackLinker, box_iou, drop_short_tracks, link_tracks, track_summary

H, W, Q_MAX = 512, 1024, 3.8


def series(boxes_per_frame: dict[int, list[list[float]]], source: str = "scan.h5") -> PeakTable:
    """A table from {frame: [box, ...]}; scores decrease with the position in the list (rows keep that order)."""
    tables = []
    for frame, boxes in sorted(boxes_per_frame.items()):
        scores = np.linspace(0.99, 0.9, len(boxes)) if len(boxes) > 1 else [0.95] * len(boxes)
        tables.append(PeakTable.from_boxes(np.array(boxes, float).reshape(-1, 4), scores, frame=frame,
                                           source=f"{source}[{frame}]", image_shape=(H, W), q_max=Q_MAX))
    return PeakTable.concat(tables)


def iou_1d(a: tuple[float, float], b: tuple[float, float]) -> float:
    """IoU of two intervals (boxes with the same y extent)."""
    inter = max(0.0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def test_box_iou_values():
    a = np.array([[0, 0, 10, 10], [0, 0, 0, 5], [np.nan, 0, 1, 1]])
    b = np.array([[5, 0, 15, 10], [0, 0, 10, 10]])
    got = box_iou(a, b)
    np.testing.assert_allclose(got[0], [50 / 150, 1.0])
    assert got[1].tolist() == [0.0, 0.0] and got[2].tolist() == [0.0, 0.0]  # zero area, NaN: link to nothing


def test_peak_appearing_at_10_and_vanishing_at_30():
    """A ring present in frames 10…29 of 40 → one track of 20 frames; a ring present throughout → one of 40."""
    frames = {f: [[200, 100, 206, 400]] + ([[500, 50, 505, 300]] if 10 <= f < 30 else []) for f in range(40)}
    table = link_tracks(series(frames))
    assert table.linked and table.names == (*COLUMNS, "track")
    assert set(table.track[table.x0 == 200]) == {0} and set(table.track[table.x0 == 500]) == {1}
    s = track_summary(table)
    assert s.track.tolist() == [0, 1]
    assert s.first.tolist() == [0, 10] and s.last.tolist() == [39, 29]
    assert s.duration.tolist() == [40, 20] and s.n_peaks.tolist() == [40, 20]
    np.testing.assert_allclose(s.q, [203 * Q_MAX / (W - 1), 502.5 * Q_MAX / (W - 1)])
    np.testing.assert_allclose(s.phi, [250 * 90 / (H - 1), 175 * 90 / (H - 1)])
    assert s.to_records()["duration"].tolist() == [40, 20]


@pytest.mark.parametrize("step, width", [(2.0, 6.0), (3.0, 8.0), (4.0, 6.0), (0.3, 3.0)])
def test_drifting_peak(step, width):
    """A peak moving ``step`` px per frame along |Q|: one track when IoU(step) ≥ 0.3, else a track per frame."""
    n = 12
    frames = {f: [[100 + f * step, 40, 100 + f * step + width, 300]] for f in range(n)}
    table = link_tracks(series(frames))
    expect_linked = iou_1d((0, width), (step, step + width)) >= 0.3
    if expect_linked:
        assert table.track.tolist() == [0] * n
    else:
        assert table.track.tolist() == list(range(n))


def test_crossing_peaks_keep_their_ids():
    """Two peaks crossing along |Q| with different φ extents (IoU between them < 0.3): two tracks, ids kept."""
    frames = {f: [[100 + 2 * f, 0, 110 + 2 * f, 40], [140 - 2 * f, 20, 150 - 2 * f, 100]] for f in range(21)}
    table = link_tracks(series(frames))
    a = table.select(table.peak == 0)  # first box of each frame (the higher score)
    b = table.select(table.peak == 1)
    assert set(a.track) == {0} and set(b.track) == {1}
    # the crossing really happens: at frame 10 both boxes span x 120…130
    assert a.x0[10] == b.x0[10] == 120


def test_crossing_identical_boxes_follow_largest_iou():
    """Where the boxes coincide the larger IoU decides: the rule is greedy by IoU, not by identity."""
    # A at x 0…10 moving +4, B at 8…18 moving −4: frame 1 has A at 4…14 and B at 4…14 (the same box twice).
    frames = {0: [[0, 0, 10, 50], [8, 0, 18, 50]], 1: [[4, 0, 14, 50], [4, 0, 14, 50]]}
    table = link_tracks(series(frames))
    # frame 0 → 1: A₀·X = 6/14, B₀·X = 6/14 for both boxes X: ties → lower track id to the earlier peak
    assert table.track.tolist() == [0, 1, 0, 1]
    frames = {0: [[0, 0, 10, 50], [30, 0, 40, 50]], 1: [[2, 0, 12, 50], [1, 0, 11, 50]]}
    table = link_tracks(series(frames))
    # track 0 (x 0…10) overlaps the second box of frame 1 more (9/11 > 8/12): it takes it, the first box is new
    assert table.track.tolist() == [0, 1, 2, 0]


def test_greedy_one_to_one():
    """One previous peak, two candidates: the larger IoU links, the other starts a track; and vice versa."""
    frames = {0: [[0, 0, 10, 10]], 1: [[5, 0, 15, 10], [2, 0, 12, 10]]}  # IoU 1/3 and 8/12
    assert link_tracks(series(frames)).track.tolist() == [0, 1, 0]
    frames = {0: [[5, 0, 15, 10], [2, 0, 12, 10]], 1: [[0, 0, 10, 10]]}
    assert link_tracks(series(frames)).track.tolist() == [0, 1, 1]
    # below the threshold nothing links; a higher threshold splits what 0.3 links
    frames = {0: [[0, 0, 10, 10]], 1: [[6, 0, 16, 10]]}  # IoU 4/16 = 0.25
    assert link_tracks(series(frames)).track.tolist() == [0, 1]
    assert link_tracks(series(frames), iou=0.2).track.tolist() == [0, 0]


def test_gap_frame_splits_a_track():
    frames = {f: [[300, 10, 305, 200]] for f in range(10) if f != 5}
    table = link_tracks(series(frames))
    assert table.track.tolist() == [0] * 5 + [1] * 4
    s = track_summary(table)
    assert s.first.tolist() == [0, 6] and s.last.tolist() == [4, 9] and s.duration.tolist() == [5, 4]
    # a frame present with other peaks only is a gap for this one too
    frames[5] = [[700, 10, 705, 200]]
    assert link_tracks(series(frames)).track.tolist() == [0] * 5 + [1] + [2] * 4
    # max_gap bridges it; the track's duration then counts the gap, its peak count does not
    del frames[5]
    table = link_tracks(series(frames), max_gap=1)
    assert table.track.tolist() == [0] * 9
    s = track_summary(table)
    assert s.duration.tolist() == [10] and s.n_peaks.tolist() == [9]
    assert link_tracks(series({0: [[0, 0, 5, 5]], 3: [[0, 0, 5, 5]]}), max_gap=1).track.tolist() == [0, 1]
    assert link_tracks(series({0: [[0, 0, 5, 5]], 3: [[0, 0, 5, 5]]}), max_gap=2).track.tolist() == [0, 0]


def test_min_length_drops_short_tracks():
    """Durations 20, 3 and 1 with min_length 4: the short ones get −1, the long one keeps its id, rows stay."""
    frames = {f: [[100, 0, 105, 100]] for f in range(20)}
    for f in range(5, 8):
        frames[f] = frames[f] + [[400, 0, 405, 100]]
    frames[12] = frames[12] + [[800, 0, 805, 100]]
    full = link_tracks(series(frames))
    assert sorted(set(full.track)) == [0, 1, 2]
    table = link_tracks(series(frames), min_length=4)
    assert len(table) == len(full) == 24
    assert set(table.track[table.x0 == 100]) == {0}
    assert set(table.track[table.x0 != 100]) == {-1}
    s = track_summary(table)
    assert s.track.tolist() == [0] and s.duration.tolist() == [20]
    assert link_tracks(series(frames), min_length=3).track[table.x0 == 400].tolist() == [1, 1, 1]
    assert np.array_equal(drop_short_tracks(full, 4).track, table.track)
    with pytest.raises(ValueError, match="min_length"):
        link_tracks(series(frames), min_length=0)


def random_series(seed: int, n_frames: int = 30, missing: tuple[int, ...] = ()) -> PeakTable:
    """Peaks that appear, drift, jitter and vanish at random (some overlapping), over n_frames frames."""
    rng = np.random.default_rng(seed)
    live: list[list[float]] = []
    frames = {}
    for f in range(n_frames):
        live = [b for b in live if rng.random() > 0.1]
        for _ in range(rng.poisson(1.0)):
            x, y = rng.uniform(0, 900), rng.uniform(0, 400)
            live.append([x, y, x + rng.uniform(3, 12), y + rng.uniform(20, 100)])
        moved = []
        for b in live:
            dx, dy = rng.normal(0, 1.5), rng.normal(0, 3)
            moved.append([b[0] + dx, b[1] + dy, b[2] + dx, b[3] + dy])
        live = moved
        if f not in missing:
            frames[f] = [b for b in live if rng.random() > 0.05]
    return series(frames)


@pytest.mark.parametrize("seed, max_gap, missing", [(0, 0, ()), (1, 0, (4, 5, 17)), (2, 2, (3, 9, 10, 11))])
def test_incremental_equals_batch(seed, max_gap, missing):
    table = random_series(seed, missing=missing)
    assert len(table) > 50
    # the batch sees the rows shuffled across frames (the order inside each frame kept)
    perm = np.random.default_rng(seed).permutation(len(table))
    order = perm.copy()
    for f in np.unique(table.frame):  # each frame's slots in the shuffled order get its rows in peak order
        order[table.frame[perm] == f] = np.flatnonzero(table.frame == f)
    shuffled = table.select(order)
    assert not np.array_equal(shuffled.frame, table.frame)
    batch = link_tracks(shuffled, max_gap=max_gap)
    linker = TrackLinker(max_gap=max_gap)
    got = {}
    for f in range(30):
        rows = table.select(table.frame == f)
        ids = linker.add(f, rows.boxes)  # frames without peaks (or never seen) added as empty
        assert linker.new.tolist() == [i >= linker.n_tracks - int(linker.new.sum()) for i in ids]
        got.update({(f, int(p)): int(i) for p, i in zip(rows.peak, ids)})
    want = {(int(f), int(p)): int(t) for f, p, t in zip(batch.frame, batch.peak, batch.track)}
    assert got == want
    assert linker.n_tracks == len(np.unique(batch.track))
    # the ids: 0-based, in order of first appearance (by frame, then peak order)
    firsts = sorted(track_summary(batch).track, key=lambda t: min(k for k, v in want.items() if v == t))
    assert firsts == list(range(linker.n_tracks))


def test_linker_refuses_frames_out_of_order():
    linker = TrackLinker()
    linker.add(3, [[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="increasing order"):
        linker.add(3, [])
    with pytest.raises(ValueError, match="iou"):
        TrackLinker(iou=0.0)
    with pytest.raises(ValueError, match="max_gap"):
        TrackLinker(max_gap=-1)
    assert linker.add(4, np.zeros((0, 4))).tolist() == []


def test_linker_memory_is_bounded():
    """Tracks that can no longer continue are forgotten: an endless series keeps only the open ones."""
    linker = TrackLinker()
    for f in range(200):
        linker.add(f, [[f * 50.0, 0, f * 50.0 + 5, 10]])  # a new, non-overlapping peak every frame
    assert linker.n_tracks == 200 and len(linker._ids) == 1


def test_peak_table_with_track_column():
    t = link_tracks(series({0: [[0, 0, 5, 5]], 1: [[0, 0, 5, 5], [50, 0, 55, 5]]}))
    assert t.select(t.frame == 1).track.tolist() == [0, 1]
    assert PeakTable.concat([t, t]).track.tolist() == [0, 0, 1] * 2
    assert PeakTable.concat([PeakTable.empty(), t]).linked
    assert PeakTable.empty(linked=True).names[-1] == "track" and not PeakTable.empty().linked
    with pytest.raises(ValueError, match="track column"):
        PeakTable.concat([t, t.with_tracks(None)])
    with pytest.raises(ValueError, match="linked"):
        track_summary(t.with_tracks(None))


@pytest.mark.parametrize("suffix", [".csv", ".h5"])
def test_track_column_round_trip(tmp_path, suffix):
    from gixdrt.io import read_peaks, write_peaks

    table = link_tracks(random_series(3), min_length=3)
    assert (table.track == -1).any() and (table.track > 0).any()
    summary = track_summary(table)
    path = write_peaks(tmp_path / f"p{suffix}", table, n_frames=30, datasets={"tracks": summary.to_records()})
    got, meta = read_peaks(path)
    assert got.linked and got.track.dtype == np.int64 and np.array_equal(got.track, table.track)
    for name in COLUMNS:
        a, b = getattr(got, name), getattr(table, name)
        assert list(a) == list(b) if name == "source" else np.array_equal(a, b, equal_nan=True), name
    if suffix == ".csv":
        assert path.read_text().splitlines()[0] == ",".join(COLUMNS) + ",track"
    else:
        import h5py

        with h5py.File(path) as f:
            assert f["peaks"].dtype.names[-1] == "track" and f["peaks"].attrs["columns"].endswith(",track")
        records = summary.to_records()
        assert meta["tracks"].dtype.names == records.dtype.names == summary.NAMES
        for name in summary.NAMES:
            assert np.array_equal(meta["tracks"][name], records[name], equal_nan=True), name
    # an unlinked table stays without the column
    path = write_peaks(tmp_path / f"u{suffix}", table.with_tracks(None), n_frames=30)
    assert not read_peaks(path)[0].linked


@pytest.mark.published
def test_real_frame_repeated_forms_one_track_per_peak(published_model, real_image, published_config):
    """The real frame's peaks, in 3 frames drifting by 0.5 px per frame along |Q|: each peak is one track over all
    three frames (its neighbours, some a few pixels away, never take it)."""
    from gixdrt.gixd.detector import PeakDetector

    boxes, scores = PeakDetector(published_model, backend="torch").boxes(real_image)[0]
    assert len(boxes) >= 10
    q_max = published_config.geometry.q_max
    tables = [PeakTable.from_boxes(boxes + [0.5 * f, 0, 0.5 * f, 0], scores, frame=f, source=f"real[{f}]",
                                   image_shape=real_image.shape[-2:], q_max=q_max) for f in range(3)]
    table = link_tracks(PeakTable.concat(tables))
    assert len(np.unique(table.track)) == len(boxes)
    for f in range(3):
        assert table.track[table.frame == f].tolist() == list(range(len(boxes)))  # rows in score order each frame
    s = track_summary(table)
    assert s.first.tolist() == [0] * len(boxes) and s.last.tolist() == [2] * len(boxes)
    np.testing.assert_allclose(np.sort(s.q), np.sort(tables[1].q))  # mean over the drift = the middle frame
