"""save_npz / load_npz / simulate_to_file."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.sim import SimConfig, load_npz, save_npz, simulate, simulate_to_file


def _equal_batches(a, b):
    assert np.array_equal(a.images, b.images)
    assert np.array_equal(a.indices, b.indices)
    assert a.seed == b.seed and a.config == b.config and a.info == b.info
    assert len(a.boxes) == len(b.boxes)
    for x, y, p, q in zip(a.boxes, b.boxes, a.peaks, b.peaks):
        assert np.array_equal(x, y)
        for k in p:
            assert p[k].dtype == q[k].dtype and np.array_equal(p[k], q[k], equal_nan=True)


def test_save_load_round_trip(tmp_path):
    cfg = SimConfig(n_peaks=(0, 6))
    batch = simulate(4, seed=8, config=cfg, size=(64, 128))
    path = save_npz(tmp_path / "set.npz", batch)
    _equal_batches(batch, load_npz(path))
    assert [p.name for p in tmp_path.iterdir()] == ["set.npz"]  # no temporary left behind


def test_simulate_to_file_matches_simulate(tmp_path, capsys):
    ref = simulate(3, seed=4, start=2)
    out = simulate_to_file(3, 4, tmp_path / "s.npz", start=2, progress=True)
    _equal_batches(ref, load_npz(out))
    assert "simulate" in capsys.readouterr().err  # the tqdm bar


def test_empty_set(tmp_path):
    out = simulate_to_file(0, 1, tmp_path / "e.npz", progress=False)
    b = load_npz(out)
    assert b.images.shape == (0, 512, 512) and b.boxes == []


@pytest.mark.slow
def test_workers_give_the_same_file(tmp_path):
    ref = simulate(5, seed=3, size=(64, 64))
    out = simulate_to_file(5, 3, tmp_path / "w.npz", size=(64, 64), progress=False, workers=2)
    _equal_batches(ref, load_npz(out))


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, images=np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="not a gixdrt simulated set"):
        load_npz(p)
