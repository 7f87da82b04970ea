"""The gixdrt command: preprocess, demo, doctor, and its error messages."""
from __future__ import annotations

import numpy as np
import pytest

from gixdrt.cli import main


@pytest.fixture()
def small_setup(tmp_path, small_config):
    """The small config (conftest) and a frame that fits it."""
    frame = np.random.default_rng(3).random((60, 80)).astype(np.float32) * 100
    frame_path = tmp_path / "frame.npy"
    np.save(frame_path, frame)
    return small_config, frame_path, frame


@pytest.mark.parametrize("stage", ["polar", "contrast"])
def test_preprocess_npy_matches_library(small_setup, tmp_path, stage, capsys):
    from gixdrt.geometry import load_config
    from gixdrt.gixd.preprocess import preprocess

    cfg_path, frame_path, frame = small_setup
    out = tmp_path / f"{stage}.npy"
    assert main(["preprocess", str(frame_path), "--config", str(cfg_path), "--stage", stage, "--out", str(out)]) == 0
    got = np.load(out)
    want = preprocess(frame, load_config(cfg_path), stage, impl="reference")
    np.testing.assert_array_equal(got, want)
    assert str(out) in capsys.readouterr().out


def test_preprocess_tif_and_png(small_setup, tmp_path):
    import tifffile

    cfg_path, frame_path, _ = small_setup
    tif, png = tmp_path / "p.tif", tmp_path / "p.png"
    assert main(["preprocess", str(frame_path), "--config", str(cfg_path), "--stage", "polar", "--out", str(tif)]) == 0
    assert main(["preprocess", str(frame_path), "--config", str(cfg_path), "--out", str(png)]) == 0
    assert tifffile.imread(tif).dtype == np.float32 and tifffile.imread(tif).shape == (32, 64)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_preprocess_sum_of_stack(small_setup, tmp_path):
    from gixdrt.geometry import load_config
    from gixdrt.gixd.preprocess import preprocess

    cfg_path, _, frame = small_setup
    stack = np.stack([frame, 2 * frame, 3 * frame])
    stack_path = tmp_path / "stack.npy"
    np.save(stack_path, stack)
    out = tmp_path / "s.npy"
    args = ["preprocess", str(stack_path), "--config", str(cfg_path), "--stage", "polar", "--out", str(out)]
    assert main(args + ["--sum", "2", "--index", "1"]) == 0
    want = preprocess(stack[1:3], load_config(cfg_path), "polar", impl="reference")
    np.testing.assert_array_equal(np.load(out), want)
    assert main(args + ["--sum", "3", "--index", "1"]) == 2  # runs past the end of the stack


@pytest.mark.parametrize(
    "case, expect",
    [
        ("wrong_shape", "does not match the detector size in the config, q_space.size_y × q_space.size_x"),
        ("bad_config", "q_space.distance: must be > 0"),
        ("missing_frame", "file not found"),
        ("not_image", "not a readable image"),
        ("bad_suffix", "unsupported output format"),
    ],
)
def test_preprocess_errors_name_file_and_problem(small_setup, tmp_path, capsys, case, expect):
    cfg_path, frame_path, _ = small_setup
    out = tmp_path / "o.npy"
    if case == "wrong_shape":
        frame_path = tmp_path / "small.npy"
        np.save(frame_path, np.zeros((10, 10), np.float32))
    elif case == "bad_config":
        text = cfg_path.read_text().replace("distance: 100", "distance: -1")
        cfg_path = tmp_path / "bad.yaml"
        cfg_path.write_text(text)
    elif case == "missing_frame":
        frame_path = tmp_path / "nope.tif"
    elif case == "not_image":
        frame_path = tmp_path / "text.tif"
        frame_path.write_text("hello, not a TIFF")
    elif case == "bad_suffix":
        out = tmp_path / "o.jpg"
    code = main(["preprocess", str(frame_path), "--config", str(cfg_path), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert expect in err
    named = {"bad_config": cfg_path, "bad_suffix": out}.get(case, frame_path)
    assert str(named) in err
    assert not out.exists()


@pytest.mark.published
def test_demo_writes_figures(tmp_path, capsys, published_assets):
    outdir = tmp_path / "demo"
    assert main(["demo", "--out-dir", str(outdir)]) == 0
    text = capsys.readouterr().out
    for name in ("raw.png", "polar.png", "contrast.png"):
        path = outdir / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
        assert str(path.resolve()) in text
    processed = np.load(outdir / "contrast.npy")
    assert abs(processed.mean(dtype=np.float64) - 0.478479) <= 1e-5
    assert "0.47847" in text and "Å⁻¹" in text


def test_doctor_lists_components(capsys):
    assert main(["doctor"]) == 0
    text = capsys.readouterr().out
    for name in ("numpy", "numba", "cuda gpu", "cupy", "onnxruntime", "tensorrt", "gixdrt._ext", "kernel polar_remap"):
        assert name in text
    assert "cuda=" in text  # the compiled module's build info


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "preprocess" in capsys.readouterr().out


def test_simulate_writes_npz_deterministically(tmp_path, capsys):
    from gixdrt.sim import load_npz

    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert main(["simulate", "--n", "3", "--seed", "7", "--out", str(a), "--no-progress"]) == 0
    assert main(["simulate", "--n", "2", "--seed", "7", "--start", "1", "--out", str(b), "--no-progress"]) == 0
    first, second = load_npz(a), load_npz(b)
    assert first.images.shape == (3, 512, 512) and first.images.dtype == np.float32
    np.testing.assert_array_equal(first.images[1:], second.images)  # image i of a seed is always the same
    assert "images/s" in capsys.readouterr().out


def test_simulate_rejects_bad_size(tmp_path, capsys):
    assert main(["simulate", "--n", "1", "--size", "512by512", "--out", str(tmp_path / "x.npz")]) == 2
    assert "--size" in capsys.readouterr().err


@pytest.mark.slow
def test_train_tiny_config_writes_a_loadable_model(tmp_path, capsys):
    from pathlib import Path

    from gixdrt.model import load_model

    config = Path(__file__).resolve().parents[1] / "configs" / "train-tiny.yaml"
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--steps", "2", "--num-workers", "0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "trained 2 steps" in out
    model = load_model(run / "model")
    assert model.card["provenance"]
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--no-progress"]) == 2  # no overwrite
    assert "run" in capsys.readouterr().err


def test_evaluate_cli_writes_metrics(tmp_path, capsys):
    import json

    import torch

    from gixdrt.model import GixdDetector, save_model

    torch.manual_seed(0)
    model = tmp_path / "random-model"
    save_model(GixdDetector(), model)
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", str(model), "--n", "2", "--seed", "1", "--backend", "torch",
                 "--out-dir", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    text = json.dumps(metrics)
    assert "detected" in text and (out / "pr_curve.png").is_file()
    assert str(out.resolve()) in capsys.readouterr().out
