"""Training data from a mixture of simulator modes (TrainConfig.mixture, gixdrt.train.loop._SimImages)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gixdrt.sim import PaperSimConfig, SimConfig, Simulator, check_mixture, mixture_mode
from gixdrt.train import TrainConfig
from gixdrt.train.loop import _SimImages

ROOT = Path(__file__).resolve().parents[2]


def test_absent_mixture_leaves_configs_unchanged(tmp_path):
    tiny = TrainConfig.from_yaml(ROOT / "configs" / "train-tiny.yaml")
    d = tiny.to_dict()
    assert "mixture" not in d  # the dict that checkpoints and model cards store, and resume compares
    assert TrainConfig.from_dict(d).to_dict() == d
    assert "mixture" not in tiny.to_yaml(tmp_path / "c.yaml").read_text()
    mixed = tiny.replace(mixture={"ours": 1, "shifted": 1})  # tiny is 128×256: no paper mode
    assert mixed.to_dict()["mixture"] == {"ours": 1, "shifted": 1}
    assert TrainConfig.from_yaml(mixed.to_yaml(tmp_path / "m.yaml")) == mixed


@pytest.mark.parametrize("mixture, msg", [
    ({"ours": 1, "powder": 1}, "mixture: unknown simulator mode 'powder'"),
    ({"paper": -0.5}, "mixture: weight of 'paper'"),
    ({"paper": 0}, "mixture: the weights sum to 0"),
])
def test_bad_mixture_is_one_line(mixture, msg):
    with pytest.raises(ValueError, match=msg) as exc:
        TrainConfig(mixture=mixture)
    assert "\n" not in str(exc.value)


def test_paper_in_mixture_needs_512x512():
    with pytest.raises(ValueError, match="512x512"):
        TrainConfig(image_size=(512, 1024), mixture={"paper": 1})
    TrainConfig(image_size=(512, 1024), mixture={"ours": 1, "shifted": 1, "paper": 0})


def test_mixture_images_come_from_the_drawn_mode():
    mixture = {"ours": 0.5, "paper": 0.3, "shifted": 0.2}
    ds = _SimImages(seed=21, size=(512, 512), sim={"n_peaks": (1, 3)}, mixture=mixture)
    w = check_mixture(mixture)
    modes = [ds.mode(i) for i in range(40)]
    assert modes == [mixture_mode(w, 21, i) for i in range(40)]
    picks = {m: modes.index(m) for m in ("ours", "paper")}  # first image of each (both occur in 40 draws)
    ref = {"ours": Simulator(SimConfig(n_peaks=(1, 3)), 21), "paper": Simulator(PaperSimConfig(), 21)}
    for m, i in picks.items():
        image, boxes = ds[i]
        s = ref[m].sample(i)
        assert torch.equal(image[0], torch.from_numpy(s.image)) and np.array_equal(boxes.numpy(), s.boxes)


def test_no_mixture_is_the_old_stream():
    ds = _SimImages(seed=3, size=(64, 64), sim={"n_peaks": (1, 2)})
    image, boxes = ds[5]
    s = Simulator(SimConfig(n_peaks=(1, 2)), 3, size=(64, 64)).sample(5)
    assert torch.equal(image[0], torch.from_numpy(s.image)) and np.array_equal(boxes.numpy(), s.boxes)
