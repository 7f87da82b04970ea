"""Raw detector frame → polar image → contrast-enhanced image, the input of the detector.

>>> cfg = load_config("test_config.yaml")
>>> pre = Preprocessor(cfg)
>>> polar = pre.polar(frame)          # float32[n_phi, n_q], detector counts
>>> processed = pre.contrast(polar)   # float32[n_phi, n_q] in [0, 1]

The geometry map is built once per geometry (cached in :func:`gixdrt.geometry.polar_map`) and reused
for every frame. Kernels come from :mod:`gixdrt.kernels` (``impl=None`` picks by where the frame lives).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import kernels
from ..geometry import Config, PolarMap, polar_map
from ..kernels.batched import minmax

STAGES = ("polar", "contrast")


@dataclass
class Preprocessor:
    """Preprocessing for one config. ``impl``: the kernels' implementation: None (by data location), "reference",
    "cpu" or "cuda"."""

    config: Config
    impl: str | None = None

    @property
    def map(self) -> PolarMap:
        return polar_map(self.config.geometry)

    def polar(self, frames: Any, *, out: Any = None, stream: Any = None) -> Any:
        """frames: [H, W] or [N, H, W] raw counts (N summed) → float32[n_phi, n_q] polar image."""
        return kernels.polar_remap(frames, self.map, out=out, impl=self.impl, stream=stream)

    def contrast(self, polar: Any, *, out: Any = None, stream: Any = None) -> Any:
        """float32[n_phi, n_q] polar image → float32[n_phi, n_q] in [0, 1] (the published chain).

        With ``contrast.disable`` set in the config the image is only min–max normalised.
        """
        c = self.config.contrast
        if c.disable:
            return minmax(polar, out)
        return kernels.contrast(
            polar, coef=c.coef, clip_limit=c.limit, log=c.log, out=out, impl=self.impl, stream=stream
        )

    def __call__(self, frames: Any, stage: str = "contrast") -> Any:
        """Run the pipeline up to ``stage`` ("polar" or "contrast")."""
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        polar = self.polar(frames)
        return polar if stage == "polar" else self.contrast(polar)


def preprocess(frames: Any, config: Config, stage: str = "contrast", impl: str | None = None) -> Any:
    """One-shot helper: ``Preprocessor(config, impl)(frames, stage)``."""
    return Preprocessor(config, impl)(frames, stage)
