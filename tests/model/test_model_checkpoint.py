"""Checkpoints: strict loading of published-format state dicts, our safetensors + JSON card format.

Most tests write a published-format file (``torch.save`` of a plain state dict, as the authors did) from a
randomly initialised model, so they need no download; the ``published`` ones use the real files.
fp16 storage tolerance: relative 2**-11 (half precision rounding) on every weight, buffers exact.
"""
from __future__ import annotations

import json

import pytest
import torch

import gixdrt
from gixdrt.errors import CheckpointError, GixdrtError
from gixdrt.model import GixdDetector, convert_published, load_model, load_published, read_card, save_model


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(0)
    return GixdDetector().state_dict()


@pytest.fixture()
def published_like(tmp_path, state):
    path = tmp_path / "model.h5"
    torch.save(state, path)
    return path


def _raises(path, match: str):
    with pytest.raises(CheckpointError, match=match) as info:
        load_published(path)
    assert str(path) in str(info.value) and info.value.path == str(path)
    assert isinstance(info.value, GixdrtError) and isinstance(info.value, ValueError)
    return info.value


# --- published format ----------------------------------------------------------------------------------
def test_load_published_format(published_like, state):
    model = load_published(published_like)
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_missing_empty_corrupt_and_truncated_files(tmp_path, published_like):
    _raises(tmp_path / "nope.h5", "file not found")
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    _raises(empty, "empty file")
    text = tmp_path / "text.h5"
    text.write_text("this is not a checkpoint\n")
    _raises(text, "not a readable PyTorch checkpoint")
    noise = tmp_path / "noise.h5"
    noise.write_bytes(torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy().tobytes())
    _raises(noise, "not a readable PyTorch checkpoint")
    data = published_like.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    _raises(truncated, "not a readable PyTorch checkpoint")
    _raises(tmp_path, "not a regular file")


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "list.h5"
    torch.save([torch.zeros(3)], path)
    _raises(path, "expected a state dict")


def test_missing_unexpected_and_wrong_shape_keys(tmp_path, state):
    missing = dict(state)
    del missing["box_head.fc6.weight"]
    torch.save(missing, tmp_path / "missing.h5")
    _raises(tmp_path / "missing.h5", "missing key 'box_head.fc6.weight'")

    renamed = {("rpn_head.cls.weight" if k == "rpn_head.cls_logits.weight" else k): v for k, v in state.items()}
    torch.save(renamed, tmp_path / "renamed.h5")
    _raises(tmp_path / "renamed.h5", "missing key 'rpn_head.cls_logits.weight'")

    extra = dict(state)
    extra["backbone.fpn.extra_blocks.weight"] = torch.zeros(1)
    torch.save(extra, tmp_path / "extra.h5")
    _raises(tmp_path / "extra.h5", "unexpected key 'backbone.fpn.extra_blocks.weight'")

    shape = dict(state)
    shape["box_head.fc6.weight"] = torch.zeros(16, 16384)
    torch.save(shape, tmp_path / "shape.h5")
    err = _raises(tmp_path / "shape.h5", "'box_head.fc6.weight' has shape")
    assert "(16, 16384)" in str(err) and "(32, 16384)" in str(err)

    nan = dict(state)
    nan["box_predictor.cls_score.bias"] = torch.tensor([float("nan")])
    torch.save(nan, tmp_path / "nan.h5")
    _raises(tmp_path / "nan.h5", "NaN")


# --- our format ---------------------------------------------------------------------------------------
def test_safetensors_round_trip_fp32_exact_and_card(tmp_path, published_like):
    model = load_published(published_like)
    model.score_threshold = 0.8
    card_path = save_model(model, tmp_path / "m", {"provenance": {"note": "unit test"}, "name": "demo"})
    assert card_path == tmp_path / "m" / "model.json"
    assert (tmp_path / "m" / "model.safetensors").is_file()
    back = load_model(tmp_path / "m")
    for key, value in model.state_dict().items():
        assert back.state_dict()[key].dtype == value.dtype and torch.equal(back.state_dict()[key], value), key
    assert back.score_threshold == 0.8 and back.nms_iou == 0.1 and back.max_detections == 250

    card = read_card(tmp_path / "m")
    assert card == back.card
    assert card["format"] == "gixdrt-model" and card["gixdrt_version"] == gixdrt.__version__
    assert card["storage_dtype"] == "float32" and card["num_parameters"] == 5_918_959
    assert card["architecture"]["widths"] == [64, 128, 256, 256] and card["architecture"]["roi_aligned"] is False
    assert card["thresholds"] == {"score_threshold": 0.8, "nms_iou": 0.1, "max_detections": 250}
    assert card["preprocessing"]["contrast"] == {"coef": 5000.0, "limit": 2000.0, "log": True, "disable": False}
    assert card["input"]["normalization"] == {"mean": pytest.approx(0.3), "std": pytest.approx(0.3)}
    assert card["provenance"] == {"note": "unit test"} and card["name"] == "demo"
    assert len(card["weights"]["sha256"]) == 64

    # a .safetensors path names the file and its card beside it
    save_model(model, tmp_path / "flat" / "x.safetensors")
    assert (tmp_path / "flat" / "x.json").is_file()
    assert torch.equal(load_model(tmp_path / "flat" / "x.safetensors").box_head.fc6.weight, model.box_head.fc6.weight)


def test_safetensors_fp16_storage(tmp_path, published_like):
    model = load_published(published_like)
    save_model(model, tmp_path / "half", fp16=True)
    fp32_size = (save_model(model, tmp_path / "full").parent / "model.safetensors").stat().st_size
    assert (tmp_path / "half" / "model.safetensors").stat().st_size < 0.6 * fp32_size
    back = load_model(tmp_path / "half")
    assert read_card(tmp_path / "half")["storage_dtype"] == "float16"
    params = {n for n, _ in model.named_parameters()}
    for key, value in model.state_dict().items():
        got = back.state_dict()[key]
        assert got.dtype == value.dtype, key
        if key in params:
            torch.testing.assert_close(got, value, rtol=2**-11, atol=1e-7)
        else:
            assert torch.equal(got, value), key  # buffers stay fp32


def test_our_format_errors(tmp_path, published_like):
    model = load_published(published_like)
    with pytest.raises(ValueError, match="architecture"):
        save_model(model, tmp_path / "bad", {"architecture": {}})
    with pytest.raises(CheckpointError, match="model card model.json not found"):
        load_model(tmp_path / "nothing")

    save_model(model, tmp_path / "m")
    weights, card = tmp_path / "m" / "model.safetensors", tmp_path / "m" / "model.json"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="sha256") as info:
        load_model(tmp_path / "m")
    assert str(weights) in str(info.value)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path / "m", verify=False)

    card.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON") as info:
        load_model(tmp_path / "m")
    assert str(card) in str(info.value)
    card.write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a gixdrt model card"):
        load_model(tmp_path / "m")


def test_our_format_strict_keys(tmp_path, published_like):
    from safetensors.torch import save_file

    model = load_published(published_like)
    save_model(model, tmp_path / "m")
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "rpn_head.bbox_pred.bias"}
    save_file(state, str(tmp_path / "m" / "model.safetensors"))
    with pytest.raises(CheckpointError, match="missing key 'rpn_head.bbox_pred.bias'"):
        load_model(tmp_path / "m", verify=False)
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    card["architecture"]["representation_size"] = 64
    (tmp_path / "m" / "model.json").write_text(json.dumps(card))
    save_model(model, tmp_path / "n")
    (tmp_path / "n" / "model.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="has shape"):
        load_model(tmp_path / "n", verify=False)


# --- the real published files ----------------------------------------------------------------------------
@pytest.mark.published
@pytest.mark.parametrize("name", ["save_only_largest_2", "segments_detector_6"])
def test_published_checkpoints_load_strictly(published_assets, name):
    model = load_published(published_assets.checkpoints[name])
    assert model.num_parameters() == 5_918_959
    assert float(model.transform_img.img_mean) == pytest.approx(0.3)
    assert model.roi_align.scales.tolist() == [[0.125, 0.25], [0.0625, 0.25], [0.03125, 0.25]]


@pytest.mark.published
def test_convert_published(tmp_path, published_assets):
    src = published_assets.default_checkpoint
    card_path = convert_published(src, tmp_path / "published")
    card = read_card(card_path)
    assert card["provenance"]["file"] == "save_only_largest_2.h5"
    assert card["provenance"]["sha256"] == "1afa1133113ebd442fe29956b5a3f9c565e7bba0f11e128d47f52ad8045fe056"
    assert card["name"] == "save_only_largest_2"
    ours, theirs = load_model(tmp_path / "published"), load_published(src)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
