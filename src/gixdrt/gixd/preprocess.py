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

import numpy as np

from .. import kernels
from ..geometry import Config, PolarMap, polar_map
from ..kernels.batched import minmax

STAGES = ("polar", "contrast")


@dataclass
class Preprocessor:
    """Preprocessing for one config. ``impl``: the kernels' implementation: None (by data location), "reference",
    "cpu" or "cuda". masks: the bad pixels (:class:`gixdrt.io.masks.Masks`; default: the config's ``mask``
    section); non-finite pixels and the dtype's flag value are masked in any case."""

    config: Config
    impl: str | None = None
    masks: Any = None

    def __post_init__(self) -> None:
        if self.masks is None:
            from ..io.masks import run_masks

            self.masks = run_masks((), self.config.geometry.frame_shape, config_mask=self.config.mask)
        self._mask_device = None

    @property
    def map(self) -> PolarMap:
        return polar_map(self.config.geometry)

    def _mask_for(self, frames: Any) -> Any:
        """The mask where the frames are: the host array, or a copy on the GPU made once."""
        if self.masks.pixels is None or isinstance(frames, np.ndarray):
            return self.masks.pixels
        if self._mask_device is None:
            from numba import cuda

            self._mask_device = cuda.to_device(self.masks.pixels)
        return self._mask_device

    def polar(self, frames: Any, *, out: Any = None, masked: Any = None, stream: Any = None) -> Any:
        """frames: [H, W] or [N, H, W] raw counts (N summed) → float32[n_phi, n_q] polar image. Masked detector
        pixels take no part; polar pixels left without a valid sample are filled along φ (:func:`kernels.fill_holes`).
        masked: optional uint8[n_phi, n_q] buffer for the codes (0 valid, 1 partly masked, 2 filled)."""
        if masked is None:
            masked = _codes_like(frames, self.map.shape)
        polar = kernels.polar_remap(frames, self.map, mask=self._mask_for(frames), saturation=self.masks.saturation,
                                    out=out, masked=masked, impl=self.impl, stream=stream)
        return kernels.fill_holes(polar, masked, impl=self.impl, stream=stream)

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


def _codes_like(frames: Any, shape: tuple[int, int]) -> Any:
    if isinstance(frames, np.ndarray):
        return np.empty(shape, np.uint8)
    from numba import cuda

    return cuda.device_array(shape, np.uint8)


def preprocess(frames: Any, config: Config, stage: str = "contrast", impl: str | None = None) -> Any:
    """One-shot helper: ``Preprocessor(config, impl)(frames, stage)``."""
    return Preprocessor(config, impl)(frames, stage)


def published_image() -> tuple[np.ndarray, str]:
    """The published real frame, preprocessed with its config → (float32[512, 1024] contrast image, label)."""
    from ..geometry import load_config
    from ..io import fetch_published, read_frame

    assets = fetch_published(quiet=True)
    cfg = load_config(assets.config)
    frame = read_frame(assets.frame)
    cfg.geometry.check_frame_shape(frame.shape, assets.frame)
    pre = Preprocessor(cfg)
    image = np.ascontiguousarray(pre.contrast(pre.polar(frame)), np.float32)
    return image, f"published real frame {assets.frame.name}"
