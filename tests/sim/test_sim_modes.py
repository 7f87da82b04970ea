"""Simulator modes (gixdrt.sim.modes): mode configurations, the mixture draw, the CLI's --mode."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from gixdrt.cli import SIM_MODES as CLI_MODES
from gixdrt.cli import main
from gixdrt.sim import (
    SIM_MODES,
    PaperSimConfig,
    SimConfig,
    check_mixture,
    config_mode,
    load_npz,
    mixture_mode,
    mode_config,
)

ROOT = Path(__file__).resolve().parents[2]


def test_mode_configs():
    assert mode_config("ours") == SimConfig()
    assert mode_config("paper") == PaperSimConfig()
    assert mode_config("paper", {"p_blur": 0.0}).p_blur == 0.0
    assert mode_config("shifted", {"p_ring": 0.1}).p_ring == 0.1
    assert mode_config("shifted", {"p_ring": 0.1}).n_peaks == (5, 60)
    assert [config_mode(mode_config(m)) for m in SIM_MODES] == list(SIM_MODES)
    with pytest.raises(ValueError, match="unknown simulator mode 'nope'"):
        mode_config("nope")
    assert CLI_MODES == SIM_MODES


def test_shifted_matches_the_shipped_yaml():
    data = yaml.safe_load((ROOT / "configs" / "sim-shifted.yaml").read_text(encoding="utf-8"))
    assert SimConfig.shifted() == SimConfig.from_dict(data)


def test_check_mixture_normalises_and_names_problems():
    assert check_mixture({"paper": 3, "ours": 1}) == {"ours": 0.25, "paper": 0.75}
    for bad, msg in (({"ours": 1, "foo": 1}, "unknown simulator mode 'foo'"), ({"ours": -1}, "finite number ≥ 0"),
                     ({"ours": float("nan")}, "finite number ≥ 0"), ({"ours": 0}, "sum to 0"), ({}, "non-empty"),
                     ({"ours": True}, "finite number")):
        with pytest.raises(ValueError, match=msg):
            check_mixture(bad)


def test_mixture_draw_is_deterministic_and_follows_the_weights():
    w = check_mixture({"ours": 0.5, "paper": 0.3, "shifted": 0.2})
    n = 6000
    modes = [mixture_mode(w, 11, i) for i in range(n)]
    assert modes == [mixture_mode(w, 11, i) for i in range(n)]
    assert modes != [mixture_mode(w, 12, i) for i in range(n)]
    for m, p in w.items():
        frac = modes.count(m) / n
        assert abs(frac - p) < 4.5 * (p * (1 - p) / n) ** 0.5, (m, frac)
    assert {mixture_mode({"ours": 0.0, "paper": 1.0}, 1, i) for i in range(50)} == {"paper"}
    with pytest.raises(ValueError):
        mixture_mode(w, 0, -1)


def test_cli_simulate_paper_writes_a_set(tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert main(["simulate", "--n", "2", "--seed", "4", "--mode", "paper", "--out", str(out), "--no-progress"]) == 0
    assert "paper-mode" in capsys.readouterr().out
    b = load_npz(out)
    assert isinstance(b.config, PaperSimConfig) and b.images.shape == (2, 512, 512)
    assert b.images.min() == 0.0 and b.images.max() == 1.0


def test_cli_simulate_paper_overrides_from_yaml(tmp_path):
    cfg = tmp_path / "p.yaml"
    cfg.write_text("n_peaks: [2, 4]\n", encoding="utf-8")
    out = tmp_path / "p.npz"
    assert main(["simulate", "--n", "1", "--mode", "paper", "--sim-config", str(cfg), "--out", str(out),
                 "--no-progress"]) == 0
    assert load_npz(out).config.n_peaks == (2, 4)


@pytest.mark.parametrize("argv, expect", [
    (["--mode", "bogus"], "--mode: invalid choice: 'bogus'"),
    (["--mode", "paper", "--size", "512x1024"], "512x512 images only"),
])
def test_cli_simulate_bad_mode_is_one_line(tmp_path, capsys, argv, expect):
    out = tmp_path / "x.npz"
    assert main(["simulate", "--n", "1", "--out", str(out), "--no-progress", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expect in err[0] and err[0].startswith("gixdrt simulate: error:")
    assert not out.exists()


def test_cli_evaluate_unknown_mode_is_one_line(tmp_path, capsys):
    assert main(["evaluate", "--n", "1", "--mode", "nope", "--out-dir", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--mode: invalid choice" in err[0]


def test_cli_evaluate_paper_other_size_is_one_line(tmp_path, capsys):
    out = tmp_path / "e"
    assert main(["evaluate", "--n", "1", "--mode", "paper", "--size", "512x1024", "--out-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("gixdrt evaluate: error:") and "512x512 images only" in err[0]
    assert not out.exists()
