"""gixdrt.model.zoo: model names (built-in weights in the package, published, paths) and their errors."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from gixdrt.errors import CheckpointError
from gixdrt.model import GixdDetector, save_model, zoo


def test_builtin_models_are_found_by_name(tmp_path, monkeypatch):
    weights = tmp_path / "weights"
    monkeypatch.setattr(zoo, "WEIGHTS", weights)
    monkeypatch.setattr(zoo, "DEFAULT_WEIGHTS", weights / "default")
    assert zoo.builtin() == [] and not zoo.has_default_weights()
    torch.manual_seed(0)
    net = GixdDetector()
    save_model(net, weights / "tiny-v1", {"name": "tiny-v1"}, fp16=True)
    (weights / "not-a-model").mkdir()
    assert zoo.builtin() == ["tiny-v1"]
    loaded = zoo.load("tiny-v1")
    assert loaded.card["name"] == "tiny-v1"
    w = net.state_dict()["box_predictor.cls_score.weight"]
    torch.testing.assert_close(loaded.state_dict()["box_predictor.cls_score.weight"], w.half().float())
    with pytest.raises(CheckpointError, match="tiny-v1"):  # the error lists the names that exist
        zoo.load("no-such-model")
    save_model(net, weights / "default", {"name": "ours"})
    assert zoo.has_default_weights() and zoo.load("default").card["name"] == "ours"
    assert zoo.describe("default") == "default (ours)"
