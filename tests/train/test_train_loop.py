"""Training loop: configs, overfitting a fixed batch, exact resume, the final model (gixdrt.train.loop)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gixdrt.errors import CheckpointError
from gixdrt.model import load_model, read_card
from gixdrt.train import TrainConfig, export_checkpoint, main_train, train
from gixdrt.train.loop import _collate, _SimImages, _StepBatches

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "train-tiny.yaml"
PAPER = ROOT / "configs" / "train-paper.yaml"
# a narrow detector for the overfitting run (same code paths, fewer channels)
NARROW = {"stem_channels": 16, "widths": [16, 32, 64, 64], "fpn_channels": 32}


def _losses(run: Path) -> list[dict[str, float]]:
    with (run / "losses.csv").open() as f:
        return [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]


def test_configs_load_and_roundtrip(tmp_path):
    paper = TrainConfig.from_yaml(PAPER)
    assert (paper.steps, paper.batch_size, paper.image_size) == (3000, 16, (512, 512))
    assert (paper.lr, paper.weight_decay, paper.lr_step, paper.lr_gamma) == (2e-3, 0.01, 500, 0.5)
    t = paper.target_config()
    assert (t.rpn_pos_iou, t.rpn_neg_iou, t.rpn_batch, t.roi_pos_iou, t.roi_neg_iou, t.roi_batch) == (0.34, 0.15, 256, 0.3, 0.01, 128)
    w = paper.weights()
    assert (w.rpn_obj, w.rpn_box, w.roi_score, w.roi_box) == (1, 10, 1, 10)
    tiny = TrainConfig.from_yaml(TINY)
    assert TrainConfig.from_yaml(tiny.to_yaml(tmp_path / "c.yaml")) == tiny
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({"stepz": 3})
    with pytest.raises(ValueError, match="multiple"):
        TrainConfig(image_size=(100, 256))
    with pytest.raises(ValueError, match="unknown targets"):
        TrainConfig(targets={"rpn_pos": 0.3})


GIXD_CONFIGS = sorted(p for p in (ROOT / "configs").glob("train-*.yaml") if not p.name.startswith("train-powder"))
POWDER_CONFIGS = sorted((ROOT / "configs").glob("train-powder*.yaml"))


@pytest.mark.parametrize("path", POWDER_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_powder_training_config_is_valid(path):
    import yaml

    from gixdrt.powder.train import PowderTrainConfig

    cfg = PowderTrainConfig.from_dict(yaml.safe_load(path.read_text()))
    assert cfg.steps > 0 and cfg.batch_size > 0


@pytest.mark.parametrize("path", GIXD_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_training_config_is_valid(path):
    from gixdrt.sim import SimConfig

    cfg = TrainConfig.from_yaml(path)
    sim = SimConfig.from_dict(cfg.sim)  # the simulator overrides are known, valid settings
    assert cfg.steps > 0 and cfg.batch_size > 0
    if cfg.init_weights:
        init = Path(cfg.init_weights)
        if init.parts[0] == "runs":  # a checkpoint of an earlier run (not shipped): made by a config of this repo
            assert (ROOT / "configs" / f"{init.parts[1]}.yaml").is_file(), f"{path.name}: no config makes {init}"
        else:  # shipped weights
            assert (ROOT / init).exists(), f"{path.name}: init_weights {init} is not in the repo"
    if path.name == "train-paper.yaml":
        assert sim.p_x_edge > 0 and sim.p_on_halo > 0


def test_data_independent_of_workers():
    ds = _SimImages(5, (64, 128), {})
    a = list(DataLoader(ds, batch_sampler=_StepBatches(1, 3, 2, 0), collate_fn=_collate, num_workers=0))
    b = list(
        DataLoader(ds, batch_sampler=_StepBatches(1, 3, 2, 0), collate_fn=_collate, num_workers=1, multiprocessing_context="spawn")
    )
    assert len(a) == len(b) == 2
    for (ia, ba), (ib, bb) in zip(a, b):
        assert torch.equal(ia, ib) and all(torch.equal(x, y) for x, y in zip(ba, bb))
    assert not torch.equal(a[0][0], a[1][0])  # fresh images every step
    assert list(_StepBatches(0, 3, 2, 3)) == [[0, 1], [2, 0], [1, 2]]  # a fixed pool cycles


@pytest.mark.slow
def test_overfit_fixed_batch_loss_falls(tmp_path):
    cfg = TrainConfig.from_yaml(TINY).replace(
        steps=30, batch_size=2, pool_size=2, image_size=[64, 256], lr=1e-3, checkpoint_every=0,
        rpn_pre_nms_top_n=100, rpn_post_nms_top_n=100, detector=NARROW, seed=1,
    )
    res = train(cfg, tmp_path / "run", progress=False)
    rows = _losses(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 31))
    total = np.array([r["total"] for r in rows])
    assert np.isfinite(total).all()
    first, last = total[:5].mean(), total[-5:].mean()
    assert last < 0.6 * first, (first, last, total.round(2))
    assert res.model_path is not None and res.steps == 30


@pytest.mark.slow
def test_resume_matches_uninterrupted_and_final_model_loads(tmp_path):
    cfg = TrainConfig.from_yaml(TINY).replace(image_size=[64, 256], steps=4, checkpoint_every=2, num_workers=0, rpn_pre_nms_top_n=100, rpn_post_nms_top_n=100)
    full = train(cfg, tmp_path / "a", progress=False)
    part = train(cfg, tmp_path / "b", progress=False, stop_at=2)
    assert part.steps == 2 and part.model_path is None
    with pytest.raises(FileExistsError):
        train(cfg, tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="differs"):
        train(cfg.replace(lr=1e-2), tmp_path / "b", resume=True, progress=False)
    resumed = train(None, tmp_path / "b", resume=True, progress=False)  # config from the run directory
    assert resumed.steps == 4

    ca = torch.load(max((tmp_path / "a" / "checkpoints").glob("*.pt")), weights_only=False)
    cb = torch.load(max((tmp_path / "b" / "checkpoints").glob("*.pt")), weights_only=False)
    assert ca["step"] == cb["step"] == 4
    for k, v in ca["model"].items():
        assert torch.equal(v, cb["model"][k]), k
    assert ca["scheduler"] == cb["scheduler"]
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    for ra, rb in zip(la, lb):
        assert all(ra[k] == rb[k] for k in ("rpn_obj", "rpn_box", "roi_score", "roi_box", "lr"))

    # final model: loads strictly, runs inference, card has the provenance
    model = load_model(full.model_path)
    card = read_card(full.model_path)
    prov = card["provenance"]
    assert prov["source"] == "trained" and prov["steps"] == 4 and prov["seed"] == cfg.seed
    assert prov["torch_version"] == torch.__version__ and "hardware" in prov and prov["wall_time_s"] > 0
    assert prov["config"]["image_size"] == [64, 256]
    assert not model.training
    images = torch.rand(1, 1, 64, 256)
    with torch.no_grad():
        dets = model(images, score_threshold=-1.0)
    assert dets[0]["boxes"].shape[1] == 4 and len(dets[0]["boxes"]) > 0
    for k, v in model.state_dict().items():
        assert torch.equal(v, ca["model"][k]), k
    assert (tmp_path / "a" / "config.yaml").is_file()

    # any checkpoint → a model directory: the step-2 weights, with the step and extra entries on the card
    ck2 = tmp_path / "b" / "checkpoints" / "step_0000002.pt"
    out = export_checkpoint(ck2, tmp_path / "m2", fp16=False, extra={"heldout": {"detected_pct": 1.0}})
    m2 = load_model(out)
    state2 = torch.load(ck2, weights_only=False)["model"]
    for k, v in m2.state_dict().items():
        assert torch.equal(v, state2[k]), k
    prov2 = read_card(out)["provenance"]
    assert prov2["steps"] == 2 and prov2["checkpoint"] == "step_0000002.pt" and prov2["heldout"] == {"detected_pct": 1.0}
    assert set(prov2["final_losses"]) >= {"rpn_obj", "total"}
    # a run can start from a checkpoint's or a model directory's weights (fine-tuning); 0 steps keep them
    for init in (ck2, out.parent):
        ft = train(cfg.replace(steps=0, init_weights=str(init)), tmp_path / f"ft-{init.name}", progress=False)
        for k, v in load_model(ft.model_path).state_dict().items():
            assert torch.equal(v, state2[k]), k
    with pytest.raises(CheckpointError, match="init_weights"):
        train(cfg.replace(init_weights=str(tmp_path / "missing.pt")), tmp_path / "ft-missing", progress=False)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"junk\.pt.*not a gixdrt training checkpoint"):
        export_checkpoint(tmp_path / "junk.pt", tmp_path / "m3")


def test_main_train_overrides_and_fp16_save(tmp_path):
    res = main_train(
        TINY, tmp_path / "run", progress=False,
        overrides={"steps": 1, "image_size": [64, 128], "save_fp16": True, "amp": "bf16", "checkpoint_every": 0, "detector": NARROW},
    )
    card = read_card(res.model_path)
    assert card["storage_dtype"] == "float16" and card["provenance"]["amp"] == "bf16"
    load_model(res.model_path)
