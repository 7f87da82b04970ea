"""Image i of seed s is the same whoever makes it, in whatever order; seeds and indices differ."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.sim import SimDataset, Simulator, image_rng, simulate


def _same(a, b) -> bool:
    if not (np.array_equal(a.image, b.image) and np.array_equal(a.boxes, b.boxes) and a.info == b.info):
        return False
    return all(np.array_equal(a.peaks[k], b.peaks[k], equal_nan=True) for k in a.peaks)


def test_same_seed_same_images():
    a = simulate(3, seed=5)
    b = simulate(3, seed=5)
    assert np.array_equal(a.images, b.images)
    for s, t in zip(a, b):
        assert _same(s, t)


def test_worker_split_and_order_do_not_matter():
    ref = [Simulator(seed=9).sample(i) for i in range(6)]
    # two "workers" taking every other index, a third instance going backwards
    w0 = list(Simulator(seed=9).stream(start=0, step=2, stop=6))
    w1 = list(Simulator(seed=9).stream(start=1, step=2, stop=6))
    backwards = Simulator(seed=9)
    rev = {i: backwards.sample(i) for i in reversed(range(6))}
    assert [s.index for s in w0] == [0, 2, 4] and [s.index for s in w1] == [1, 3, 5]
    for i in range(6):
        assert _same(ref[i], (w0 if i % 2 == 0 else w1)[i // 2])
        assert _same(ref[i], rev[i])


def test_counter_and_batch_and_dataset_agree():
    sim = Simulator(seed=2)
    seq = [sim.sample() for _ in range(3)]
    assert [s.index for s in seq] == [0, 1, 2]
    batch = Simulator(seed=2).batch([2, 0])
    assert _same(batch[0], seq[2]) and _same(batch[1], seq[0])
    ds = SimDataset(3, seed=2)
    assert len(ds) == 3 and _same(ds[1], seq[1]) and _same(ds[-1], seq[2])
    with pytest.raises(IndexError):
        ds[3]
    shifted = simulate(2, seed=2, start=1)
    assert list(shifted.indices) == [1, 2] and np.array_equal(shifted.images[0], seq[1].image)


def test_iteration_is_endless_stream_from_counter():
    it = iter(Simulator(seed=4))
    assert [next(it).index for _ in range(2)] == [0, 1]


def test_different_seeds_and_indices_differ():
    a = Simulator(seed=0).sample(0)
    b = Simulator(seed=1).sample(0)
    c = Simulator(seed=0).sample(1)
    assert not np.array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    assert not np.array_equal(b.image, c.image)


def test_image_rng_is_seedsequence_child():
    child = np.random.SeedSequence(123).spawn(5)[4]
    assert image_rng(123, 4).random() == np.random.default_rng(child).random()
    with pytest.raises(ValueError):
        image_rng(1, -1)


def test_same_result_without_numba(tmp_path):
    """The kernels also run as plain Python (slow) and give the same image and labels."""
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent(
        """
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name == "numba" or name.startswith("numba."):
                    raise ImportError("blocked")
        sys.meta_path.insert(0, _Block())
        import numpy as np
        from gixdrt.sim import Simulator
        s = Simulator(seed=3, size=(48, 64)).sample(1)
        assert "numba" not in sys.modules
        np.save(sys.argv[1], s.image)
        np.save(sys.argv[2], s.boxes)
        """
    )
    img_p, box_p = tmp_path / "i.npy", tmp_path / "b.npy"
    subprocess.run([sys.executable, "-c", code, str(img_p), str(box_p)], check=True, timeout=300)
    ref = Simulator(seed=3, size=(48, 64)).sample(1)
    np.testing.assert_allclose(np.load(box_p), ref.boxes, atol=1e-4)
    assert np.mean(np.abs(np.load(img_p) - ref.image) > 1e-3) < 0.01


def test_simulator_and_dataset_pickle_for_worker_processes():
    import pickle

    sim = Simulator({"n_peaks": [2, 4]}, seed=6, size=(64, 64))
    ds = SimDataset(4, seed=6, size=(64, 64), config={"n_peaks": [2, 4]})
    assert _same(pickle.loads(pickle.dumps(sim)).sample(3), sim.sample(3))
    assert _same(pickle.loads(pickle.dumps(ds))[3], sim.sample(3))
