"""Work units without Dask: the planner (frame offsets, ranges, --sum groups across files) and the plain per-unit
function, whose part files merged in unit order give the serial run's table."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.errors import GixdrtError
from gixdrt.io.sources import iter_frames, resolve_inputs, stack_sizes
from gixdrt.scale import make_settings, parse_unit, plan_units, process_unit
from gixdrt.scale.detect import merge_parts


def _files(n):
    from pathlib import Path

    from gixdrt.io.sources import InputFile

    return [InputFile(Path(f"f{i}.npy"), f"f{i}.npy", "npy", None) for i in range(n)]


def test_plan_units_cover_every_frame_once_in_order():
    files = _files(3)
    units, left = plan_units(files, [[5], [2], [4]], frames_per_unit=2)
    assert left == 0
    # per file: 5 → 2+2+1, 2 → 2, 4 → 2+2; offsets run on across files
    assert [(u.first_frame, u.n_frames) for u in units] == [(0, 2), (2, 2), (4, 1), (5, 2), (7, 2), (9, 2)]
    assert [u.index for u in units] == list(range(6))
    assert units[2].pieces == ((files[0], 0, 4, 5),)
    assert units[3].pieces == ((files[1], 0, 0, 2),)
    whole, _ = plan_units(files, [[5], [2], [4]])
    assert [(u.first_frame, u.n_frames) for u in whole] == [(0, 5), (5, 2), (7, 4)]
    pairs, _ = plan_units(files, [[5], [2], [4]], files_per_unit=2)
    assert [(u.first_frame, u.n_frames) for u in pairs] == [(0, 7), (7, 4)]
    assert pairs[0].pieces == ((files[0], 0, 0, 5), (files[1], 0, 0, 2))


def test_plan_units_sum_groups_cross_files_like_the_serial_run():
    files = _files(3)
    # 3 + 2 + 4 = 9 raw frames in groups of 2: groups start at raw 0, 2 (file 0), 4 (file 1), 6, 8 (file 2: 8 is
    # the lone last frame, left over)
    units, left = plan_units(files, [[3], [2], [4]], sum_n=2)
    assert left == 1
    assert [(u.first_frame, u.n_frames) for u in units] == [(0, 2), (2, 1), (3, 1)]
    assert units[0].pieces == ((files[0], 0, 0, 3), (files[1], 0, 0, 1))  # the group [2, 3] crosses into file 1
    assert units[1].pieces == ((files[1], 0, 1, 2), (files[2], 0, 0, 1))
    assert units[2].pieces == ((files[2], 0, 1, 3),)


def test_parse_unit():
    assert parse_unit("file") == {"files_per_unit": 1, "frames_per_unit": None}
    assert parse_unit("frames:25") == {"files_per_unit": 1, "frames_per_unit": 25}
    assert parse_unit("files:40") == {"files_per_unit": 40, "frames_per_unit": None}
    for bad in ("frames:0", "frames", "lines:3", "frames:-1", "files:0", "file:2"):
        with pytest.raises(GixdrtError, match="--unit"):
            parse_unit(bad)


@pytest.mark.parametrize("unit", [{"frames_per_unit": 1}, {"files_per_unit": 2}])
@pytest.mark.parametrize("sum_n", [1, 5])
def test_units_read_the_frames_iter_frames_reads(inputs, sum_n, unit):
    from gixdrt.io.sources import iter_pieces

    files = resolve_inputs(inputs)  # 3 + 7 + 1 + 1 frames: groups of 5 cross the first file's end, 2 left over
    units, left = plan_units(files, stack_sizes(files), sum_n=sum_n, **unit)
    assert left == (2 if sum_n == 5 else 0)
    got = [fr for u in units for fr in iter_pieces(u.pieces, sum_n=sum_n, first_index=u.first_frame)]
    with pytest.warns(UserWarning, match="left over") if sum_n == 5 else _nothing():
        want = list(iter_frames(inputs, sum_n=sum_n))
    assert len(want) == 12 // sum_n
    assert [(f.index, f.source) for f in got] == [(f.index, f.source) for f in want]
    assert all(np.array_equal(a.data, b.data) for a, b in zip(got, want))


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_process_unit_is_plain_python(tmp_path, inputs, small_config, model_dir, serial):
    """The per-unit function called in a loop, as an MPI rank or a Slurm array task would: the merged parts equal
    the serial run's table (without tracks: linking is done on the merged table)."""
    files = resolve_inputs(inputs)
    units, _ = plan_units(files, stack_sizes(files), frames_per_unit=3)
    settings = make_settings(model=model_dir, config=small_config, score_threshold=-1.0, max_detections=3,
                             parts=tmp_path / "parts")
    summaries = [process_unit(u, settings) for u in reversed(units)]  # any order
    assert sorted(s["unit"] for s in summaries) == [u.index for u in units]
    assert sum(s["frames"] for s in summaries) == 12
    table, sources, masked, filled = merge_parts(units, tmp_path / "parts")
    ref = serial[0]
    assert len(table) == len(ref) and sum(s["peaks"] for s in summaries) == len(ref)
    assert list(table.source) == list(ref.source)
    for name in ("frame", "peak", "q", "phi", "score", "x0", "y1", "intensity"):
        assert np.array_equal(getattr(table, name), getattr(ref, name)), name
    assert sources == [f.source for f in iter_frames(inputs)]
    assert len(masked) == len(filled) == 12
