"""Simulator modes: which simulator makes a set (``ours``, ``shifted``, ``paper``) and mixtures of them.

- ``ours``: :class:`gixdrt.sim.SimConfig` (gixdrt's simulator; its images end with the real-data contrast chain);
- ``shifted``: :meth:`SimConfig.shifted` (distributions moved away from ours, for generalisation checks);
- ``paper``: :class:`gixdrt.sim.PaperSimConfig` (the authors' training simulator, written from the published
  facts; 512 × 512 only).

A mixture ``{"ours": 0.5, "paper": 0.3, "shifted": 0.2}`` picks the mode of image ``index`` of ``seed`` from its
own random stream (:func:`mixture_mode`), independent of the image's stream, so a set is the same whichever
worker makes which image.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from .config import SimConfig
from .paper import PaperSimConfig

__all__ = ["SIM_MODES", "check_mixture", "config_mode", "mixture_mode", "mode_config"]

SIM_MODES = ("ours", "shifted", "paper")

#: spawn-key tag of the mixture's stream: image ``i`` draws its mode from SeedSequence(seed, spawn_key=(i, TAG))
_MIXTURE_TAG = 0x6D6978  # "mix"


def _check_mode(mode: str) -> str:
    if mode not in SIM_MODES:
        raise ValueError(f"unknown simulator mode {mode!r} (choose from {', '.join(SIM_MODES)})")
    return mode


def mode_config(mode: str = "ours", overrides: Mapping[str, Any] | None = None) -> SimConfig | PaperSimConfig:
    """The configuration of ``mode`` with ``overrides`` (fields of that mode's config) applied."""
    _check_mode(mode)
    over = dict(overrides or {})
    if mode == "paper":
        return PaperSimConfig.from_dict(over)
    base = SimConfig.shifted().to_dict() if mode == "shifted" else {}
    return SimConfig.from_dict({**base, **over})


def config_mode(config: Any) -> str:
    """The mode a configuration belongs to: ``paper`` for a PaperSimConfig, ``shifted`` for exactly
    ``SimConfig.shifted()``, else ``ours``."""
    if isinstance(config, PaperSimConfig):
        return "paper"
    if isinstance(config, SimConfig) and config == SimConfig.shifted():
        return "shifted"
    return "ours"


def check_mixture(mixture: Mapping[str, Any], what: str = "mixture") -> dict[str, float]:
    """Validate {mode: weight} (known modes, finite weights ≥ 0, positive sum) → weights normalised to sum 1,
    in :data:`SIM_MODES` order."""
    if not isinstance(mixture, Mapping) or not mixture:
        raise ValueError(f"{what}: expected a non-empty mapping of simulator mode to weight, got {mixture!r}")
    for mode, wt in mixture.items():
        if mode not in SIM_MODES:
            raise ValueError(f"{what}: unknown simulator mode {mode!r} (choose from {', '.join(SIM_MODES)})")
        if isinstance(wt, bool) or not isinstance(wt, (int, float)) or not np.isfinite(wt) or wt < 0:
            raise ValueError(f"{what}: weight of {mode!r} must be a finite number ≥ 0, got {wt!r}")
    total = float(sum(mixture.values()))
    if total <= 0:
        raise ValueError(f"{what}: the weights sum to 0")
    return {m: float(mixture[m]) / total for m in SIM_MODES if m in mixture}


def mixture_mode(weights: Mapping[str, float], seed: int, index: int) -> str:
    """The mode of image ``index`` of ``seed`` under normalised ``weights`` (from :func:`check_mixture`):
    one uniform draw from the image's mixture stream against the cumulative weights."""
    if index < 0:
        raise ValueError(f"image index must be ≥ 0, got {index}")
    u = np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(int(index), _MIXTURE_TAG))).random()
    acc = 0.0
    modes = [m for m, wt in weights.items() if wt > 0]
    for m in modes:
        acc += weights[m]
        if u < acc:
            return m
    return modes[-1]
