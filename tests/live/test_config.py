"""LiveConfig: round trips through YAML and JSON, unknown keys, migration, validation, and the engine it builds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from gixdrt.errors import ConfigError
from gixdrt.live.config import CURRENT_VERSION, LiveConfig, migrate
from gixdrt.live.engine import LiveEngine
from gixdrt.live.events import FrameEvent, SeriesEnd, SeriesStart


@pytest.fixture()
def cfg(small_config) -> LiveConfig:
    return LiveConfig(geometry=str(small_config), mode="monitor", queue_frames=16, queue_bytes=1 << 20, max_batch=4,
                      latency_budget=0.05, idle_timeout=3.0, threads=2, score_threshold=0.3,
                      screening={"min_peaks": 3, "classes": ["ring", "spot"]})


def test_yaml_and_json_round_trips(cfg, tmp_path):
    text = cfg.to_yaml()
    assert yaml.safe_load(text)["mode"] == "monitor" and next(iter(yaml.safe_load(text))) == "version"
    assert LiveConfig.from_yaml(text) == cfg
    assert LiveConfig.from_json(cfg.to_json()) == cfg
    assert json.loads(cfg.to_json())["screening"] == {"min_peaks": 3, "classes": ["ring", "spot"]}
    cfg.to_yaml(tmp_path / "live.yaml")
    cfg.to_json(tmp_path / "live.json")
    assert LiveConfig.load(tmp_path / "live.yaml") == cfg == LiveConfig.load(tmp_path / "live.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live.json", "live.yaml"]  # no temporary file left
    inline = LiveConfig(geometry=yaml.safe_load(open(cfg.geometry)), input="raw")
    back = LiveConfig.from_yaml(inline.to_yaml())
    assert back == inline and back.load_geometry().geometry.frame_shape == (60, 80)
    assert LiveConfig.from_dict({"geometry": cfg.geometry}).to_dict() == {**LiveConfig(geometry=cfg.geometry).to_dict()}


def test_defaults_and_missing_version(small_config):
    d = LiveConfig.from_dict({"geometry": str(small_config)})
    assert (d.version, d.mode, d.queue_frames, d.max_batch, d.latency_budget, d.screening) == (
        CURRENT_VERSION, "lossless", 64, 8, None, {})


def test_unknown_key_is_one_line_naming_it(cfg, tmp_path):
    with pytest.raises(ConfigError) as info:
        LiveConfig.from_dict({**cfg.to_dict(), "queue_sise": 10})
    msg = str(info.value)
    assert msg.startswith("queue_sise: unknown key") and "queue_frames" in msg and "\n" not in msg
    path = tmp_path / "bad.yaml"
    path.write_text(cfg.to_yaml() + "mdoe: monitor\n")
    with pytest.raises(ConfigError, match=rf"^{path}: mdoe: unknown key"):
        LiveConfig.from_yaml(path)


def test_migration_from_version_0(small_config):
    v0 = {"version": 0, "config": str(small_config), "delivery": "monitor", "queue_size": 12, "batch": 2,
          "latency_budget": 0.1}
    assert migrate(v0) == {"version": 1, "geometry": str(small_config), "mode": "monitor", "queue_frames": 12,
                           "max_batch": 2, "latency_budget": 0.1}
    got = LiveConfig.from_yaml(yaml.safe_dump(v0))
    assert (got.version, got.mode, got.queue_frames, got.max_batch, got.geometry) == (1, "monitor", 12, 2,
                                                                                      str(small_config))
    assert LiveConfig.from_yaml(got.to_yaml()) == got
    with pytest.raises(ConfigError, match="version: 7 is newer"):
        LiveConfig.from_dict({"version": 7})
    with pytest.raises(ConfigError, match="version: must be an integer"):
        LiveConfig.from_dict({"version": "1"})
    with pytest.raises(ConfigError, match="version: must be ≥ 0"):
        LiveConfig.from_dict({"version": -1})


@pytest.mark.parametrize("key, value, words", [
    ("mode", "fast", "must be one of lossless, monitor"),
    ("input", "cooked", "must be one of raw, polar, processed"),
    ("backend", "magic", "must be one of auto"),
    ("precision", "fp8", "must be one of fp32, fp16"),
    ("queue_frames", 0, r"must be in \[1, 1000000\], got 0"),
    ("queue_frames", 2.5, "must be an integer"),
    ("queue_frames", True, "must be an integer"),
    ("queue_bytes", 0, "must be ≥ 1"),
    ("max_batch", 5000, r"must be in \[1, 4096\]"),
    ("threads", 0, r"must be in \[1, 1024\]"),
    ("latency_budget", -0.1, r"must be in \(0, 86400\] seconds"),
    ("latency_budget", float("nan"), "must be in"),
    ("latency_budget", "fast", "must be a number of seconds"),
    ("idle_timeout", 0, "must be in"),
    ("metrics_interval", None, "must be a number of seconds, got None"),
    ("score_threshold", 1.5, r"must be a number in \[-1, 1\]"),
    ("nms_iou", -0.1, r"must be a number in \[0, 1\]"),
    ("max_detections", 0, r"must be in \[1, 100000\]"),
    ("model", "", "must be a non-empty string"),
    ("channel", 3, "must be a non-empty string or null"),
    ("warmup", "yes", "must be true or false"),
    ("screening", [1], "must be a mapping"),
    ("geometry", 5, "must be a path or a mapping"),
])
def test_every_field_is_validated(cfg, key, value, words):
    with pytest.raises(ConfigError, match=rf"^{key}: {words}"):
        LiveConfig.from_dict({**cfg.to_dict(), key: value})


def test_raw_input_needs_a_geometry():
    with pytest.raises(ConfigError, match="geometry: raw frames need a geometry config"):
        LiveConfig()
    assert LiveConfig(input="processed").geometry is None


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="nothing.yaml: file not found"):
        LiveConfig.from_yaml(tmp_path / "nothing.yaml")
    (tmp_path / "bad.yaml").write_text("mode: [\n")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        LiveConfig.from_yaml(tmp_path / "bad.yaml")
    (tmp_path / "list.json").write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="list.json: expected a mapping of settings, got list"):
        LiveConfig.load(tmp_path / "list.json")


def test_engine_from_config(small_config, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from gixdrt.model import GixdDetector, save_model

    monkeypatch.setenv("GIXDRT_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    save_model(GixdDetector(), tmp_path / "model")
    cfg = LiveConfig(geometry=str(small_config), model=str(tmp_path / "model"), backend="torch", threads=1,
                     mode="monitor", queue_frames=5, max_batch=2, latency_budget=30.0, idle_timeout=60.0,
                     score_threshold=-1.0, max_detections=4)
    ends = []
    eng = LiveEngine.from_config(cfg, on_series_end=ends.append)
    assert (eng.mode, eng.queue_frames, eng.max_batch, eng.latency_budget, eng.tracker.idle_timeout) == (
        "monitor", 5, 2, 30.0, 60.0)
    rng = np.random.default_rng(2)
    eng.feed(SeriesStart(3, "run-3", number_of_images=2))
    for i in range(2):
        eng.feed(FrameEvent(3, "run-3", i, {"data": rng.poisson(20.0, (60, 80)).astype(np.uint16)}))
    eng.feed(SeriesEnd(3, "run-3"))
    eng.close()
    results = list(eng.results(timeout=10.0))
    assert [len(r.table) for r in results] == [4, 4] and all(r.latency < 30.0 for r in results)
    assert [(d["received"], d["processed"], d["missed"], d["late"]) for d in ends] == [(2, 2, 0, 0)]
