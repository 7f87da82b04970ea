"""SimConfig: frozen, validated, JSON round trip."""
from __future__ import annotations

import dataclasses
import json

import pytest

from gixdrt.sim import SimConfig, Simulator


def test_round_trip_through_json():
    cfg = SimConfig(n_peaks=(2, 7), p_ring=0.1, sigma_x=(0.8, 2.0), min_snr=4.0)
    d = json.loads(json.dumps(cfg.to_dict()))
    assert isinstance(d["n_peaks"], list)
    back = SimConfig.from_dict(d)
    assert back == cfg and isinstance(back.n_peaks, tuple)
    assert SimConfig.from_dict({}) == SimConfig() == SimConfig.from_dict(None)


def test_frozen_and_replace():
    cfg = SimConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.p_ring = 0.5  # type: ignore[misc]
    assert cfg.replace(p_ring=0.5).p_ring == 0.5


@pytest.mark.parametrize(
    "bad",
    [
        {"no_such_field": 1},
        {"p_ring": 1.5},
        {"sigma_x": (3.0, 1.0)},
        {"sigma_x": (0.0, 1.0)},
        {"n_peaks": (1.5, 3)},
        {"modulation_depth": (0.2, 1.0)},
        {"min_rows": 0},
        {"amplitude": (1.0,)},
    ],
)
def test_invalid_values_raise(bad):
    with pytest.raises(ValueError):
        SimConfig.from_dict(bad)


def test_simulator_takes_dict_and_config_matters():
    a = Simulator({"n_peaks": [3, 3]}, seed=1).sample(0)
    assert a.info["n_peaks_drawn"] == 3
    b = Simulator(SimConfig(n_peaks=(5, 5)), seed=1).sample(0)
    assert b.info["n_peaks_drawn"] == 5
    with pytest.raises(TypeError):
        Simulator(42)  # type: ignore[arg-type]
