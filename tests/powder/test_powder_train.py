"""Powder U-Net training: batches are a function of (seed, step), a stopped and resumed run equals an uninterrupted
one exactly, the final model is saved with its card, and bad configs fail early."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gixdrt.powder.model import load_card, load_unet  # noqa: E402
from gixdrt.powder.train import PowderTrainConfig, TrainingFrames, train_powder  # noqa: E402

TINY = dict(steps=4, batch_size=2, crop=64, frame_sizes=(128, 160), window=3, new_frame_every=1, warmup=2,
            checkpoint_every=1, keep_checkpoints=1, threads=1, seed=3)


def test_batches_depend_only_on_seed_and_step():
    cfg = PowderTrainConfig(**TINY)
    a = TrainingFrames(cfg).batch(5)
    data = TrainingFrames(cfg)
    data.batch(2)  # another history of the cache
    b = data.batch(5)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (2, 1, 64, 64) and a[1].dtype == np.int64 and set(np.unique(a[1])) <= {0, 1}
    assert not np.array_equal(a[0], TrainingFrames(cfg).batch(6)[0])


def test_resume_repeats_an_uninterrupted_run(tmp_path):
    cfg = PowderTrainConfig(**TINY)
    full = train_powder(cfg, tmp_path / "full")
    part = train_powder(cfg, tmp_path / "part", stop_after=2)
    assert part.steps == 2 and part.model_dir is None
    resumed = train_powder(None, tmp_path / "part", resume=True)
    assert resumed.steps == 4
    a, b = load_unet(full.model_dir), load_unet(resumed.model_dir)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
    def losses(run):  # step, loss, lr (not the seconds)
        return [line.rsplit(",", 1)[0] for line in (tmp_path / run / "losses.csv").read_text().splitlines()]

    assert losses("part") == losses("full") and len(losses("full")) == 5
    card = load_card(full.model_dir)
    assert card["training"]["steps"] == 4 and card["mask"]["threshold"] == 0.5
    with pytest.raises(FileExistsError):
        train_powder(cfg, tmp_path / "full")


def test_config_errors():
    with pytest.raises(ValueError, match="crop"):
        PowderTrainConfig(crop=102)
    with pytest.raises(ValueError, match="unknown powder simulator parameter"):
        PowderTrainConfig(sim={"nope": 1})
    with pytest.raises(ValueError, match="unknown powder training parameter"):
        PowderTrainConfig.from_dict({"stepz": 3})
