"""``gixdrt bench`` and :mod:`gixdrt.bench`: the report, the JSON result, the isolated worker, errors.

A randomly initialised model saved in gixdrt's format and small processed images (32 × 64), so each
measurement takes a second or two and no assets are needed.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("torch")

from gixdrt.bench import STAGES, make_batch, run_isolated
from gixdrt.cli import main


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(model directory, .npy stack of three processed 32×64 images)."""
    import torch

    from gixdrt.model import GixdDetector, save_model

    d = tmp_path_factory.mktemp("bench")
    torch.manual_seed(0)
    save_model(GixdDetector(), d / "random-model")
    images = d / "processed.npy"
    np.save(images, np.random.default_rng(0).random((3, 32, 64)).astype(np.float32))
    return d / "random-model", images


def test_make_batch_cycles_images():
    imgs = np.arange(3 * 2 * 4, dtype=np.float32).reshape(3, 2, 4)
    b = make_batch(imgs, 5)
    assert b.shape == (5, 2, 4) and b.flags.c_contiguous
    np.testing.assert_array_equal(b[[0, 3]], imgs[[0, 0]])
    np.testing.assert_array_equal(b[4], imgs[1])
    assert make_batch(imgs[0], 2).shape == (2, 2, 4)


def test_bench_prints_latency_stages_memory(setup, tmp_path, capsys):
    model, images = setup
    out = tmp_path / "r.json"
    assert main(["bench", str(images), "--input", "processed", "--model", str(model), "--backend", "torch",
                 "--batch", "2", "--runs", "2", "--warmup", "0", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "torch on cpu" in text and "batch 2 of 32×64" in text
    assert "median" in text and "p99" in text and "frames/s" in text
    assert all(stage in text for stage in STAGES)
    assert "peak RSS" in text
    res = json.loads(out.read_text())
    assert res["batch"] == 2 and res["image_shape"] == [32, 64] and res["backend"] == "torch"
    assert res["latency"]["runs"] == 2 and res["latency"]["median_ms"] > 0
    assert res["frames_per_s"] == pytest.approx(2e3 / res["latency"]["median_ms"])
    assert list(res["stages"]) == list(STAGES)
    assert len(res["detections"]) == 2
    assert res["memory"]["peak_rss_run_bytes"] > 0


def test_bench_onnxruntime_reports_the_export(setup, tmp_path, capsys, monkeypatch):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("GIXDRT_CACHE", str(tmp_path / "cache"))
    model, images = setup
    args = ["bench", str(images), "--input", "processed", "--model", str(model), "--backend", "onnxruntime",
            "--runs", "1", "--warmup", "0"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "onnxruntime on cpu, fp32, batch 1" in first and "exported the graphs" in first
    assert main(args) == 0  # graphs cached now
    assert "exported the graphs" not in capsys.readouterr().out


@pytest.mark.parametrize(
    "extra, expect",
    [
        (["--input", "raw"], "--config"),
        (["--runs", "0"], "--runs: 0 is outside [1, "),
        (["--backend", "tensorrt"], "not available here"),
        (["--backend", "torch", "--precision", "fp16"], "precision fp16"),
    ],
)
def test_bench_errors(setup, capsys, extra, expect):
    model, images = setup
    args = ["bench", str(images), "--input", "processed", "--model", str(model), "--runs", "1", *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("gixdrt bench: error:") and expect in err, err


def test_bench_config_without_frames(capsys, small_config):
    assert main(["bench", "--config", str(small_config)]) == 2
    assert "go with FRAMES" in capsys.readouterr().err


def test_run_isolated_measures_in_a_fresh_process(setup):
    model, images = setup
    res = run_isolated(np.load(images)[:1], model=str(model), backend="torch", batch=2, runs=1, warmup=0)
    assert "error" not in res, res
    assert res["batch"] == 2 and res["latency"]["runs"] == 1 and res["memory"]["rss_before_bytes"] > 0
    bad = run_isolated(images, model="/nonexistent", backend="torch", runs=1, warmup=0)
    assert "no such model" in bad["error"]
