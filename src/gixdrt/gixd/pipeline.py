"""Frames → peak tables: one :class:`Pipeline` per config, in batches, on any backend.

>>> pipe = Pipeline(load_config("beamline.yaml"), PeakDetector("default"))
>>> table = pipe.detect(frame)                    # one raw frame [H, W] (or [N, H, W] summed) → PeakTable
>>> table = pipe.run(iter_frames(["scan.h5::/entry/data/data"]))   # a stream of Frame objects

``input="raw"`` takes raw detector frames (the config's geometry and contrast chain are applied), ``"polar"``
takes polar images (the contrast chain is applied) and ``"processed"`` the detector's input directly; neither
of the last two needs a geometry, and the physical columns are filled only when a config is given.

Everything from the raw frame to the peaks is one plan (:mod:`gixdrt.gixd.plan`): on a GPU backend each raw
frame is uploaded once and the remap, the contrast chain, the detector and the box sums of the intensities run
on the device; only the peaks come back (and each polar image with ``keep_polar``).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DataWarning, FrameError
from ..geometry import Config
from .detector import check_processed
from .peaks import PeakTable
from .plan import INPUTS, RawInput

__all__ = ["INPUTS", "FrameResult", "Pipeline"]


_PIXEL_DTYPES = ("float32", "float64", "uint8", "uint16", "int16", "uint32", "int32")


@dataclass(frozen=True)
class FrameResult:
    """One frame's outcome: its index and source, its peaks, and its uncorrected polar image (None for
    ``input="processed"`` and with ``keep_polar=False``)."""

    frame: int
    source: str
    table: PeakTable
    polar: np.ndarray | None
    masked: float = 0.0  # raw input: fraction of the polar pixels on the detector that left out a masked pixel
    filled: int = 0  # raw input: polar pixels with no valid sample, filled along φ


def _common_stack(items: list[np.ndarray]) -> np.ndarray:
    """[H, W] or [G, H, W] frames → one [N, G, H, W] array of a common pixel dtype (a view of a single frame,
    no copy)."""
    arrays = [a if a.ndim == 3 else a[None] for a in (np.asarray(x) for x in items)]
    if len(arrays) == 1 and arrays[0].dtype.name in _PIXEL_DTYPES:
        return arrays[0][None]
    dtype = np.result_type(*{a.dtype for a in arrays})
    if dtype.name not in _PIXEL_DTYPES:
        dtype = np.dtype(np.float64)  # e.g. uint32 with int32 → int64: float64 holds both exactly
    return np.stack(arrays).astype(dtype, copy=False)


@dataclass
class Pipeline:
    """Frames → peak tables for one config.

    config: the geometry/contrast config (required for ``input="raw"``). detector: a
    :class:`~gixdrt.gixd.detector.PeakDetector`. batch: frames per detector call. keep_polar: return each frame's
    polar image (:attr:`FrameResult.polar`; a copy back from the device on a GPU backend). masks: the bad pixels of
    raw frames (:class:`gixdrt.io.masks.Masks`; default: the config's ``mask`` section; ``gixdrt detect`` adds the
    inputs' own NeXus/Eiger masks and ``--mask``); non-finite pixels and flag values are masked in any case.
    """

    config: Config | None
    detector: Any
    input: str = "raw"
    batch: int = 1
    keep_polar: bool = True
    masks: Any = None
    _pmap: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"unknown input kind {self.input!r}; expected one of {INPUTS}")
        if self.input == "raw" and self.config is None:
            raise ValueError("raw frames need a config with the experiment geometry (--config)")
        if isinstance(self.batch, bool) or not isinstance(self.batch, (int, np.integer)) or self.batch < 1:
            raise ValueError(f"batch must be an integer ≥ 1, got {self.batch!r}")
        if self.config is not None and self.input == "raw":
            from ..geometry import polar_map

            self._pmap = polar_map(self.config.geometry)
            if self.masks is None:
                from ..io.masks import run_masks

                self.masks = run_masks((), self.config.geometry.frame_shape, config_mask=self.config.mask)

    @property
    def q_max(self) -> float | None:
        return None if self.config is None else self.config.geometry.q_max

    @property
    def contrast(self) -> Any:
        return None if self.config is None else self.config.contrast

    def detect(self, data: np.ndarray, *, frame: int = 0, source: str = "") -> PeakTable:
        """One frame (or a group of frames to sum) → its :class:`PeakTable`."""
        return self._detect_batch([(frame, source, data)])[0].table

    def _detect_batch(self, items: list[tuple[int, str, Any]]) -> list[FrameResult]:
        det = self.detector
        if self.input == "raw":
            for _, source, data in items:
                self.config.geometry.check_frame_shape(tuple(np.shape(data)), source or None)
            stack = _common_stack([data for _, _, data in items])
            raw = RawInput(self._pmap, stack.dtype.name, stack.shape[1], self.masks.pixels, self.masks.saturation)
            found = det.run(stack, input="raw", raw=raw, contrast=self.contrast, polar=self.keep_polar)
            shape = tuple(self._pmap.shape)
        else:
            images = []
            for _, source, data in items:
                img = np.asarray(data, np.float32)
                if self.input == "polar" and img.ndim == 3:  # a group of polar images to sum
                    img = img.sum(axis=0, dtype=np.float32)
                if img.ndim != 2:
                    raise FrameError(f"a {self.input} image must be 2-D, got shape {img.shape}", path=source or None)
                if self.input == "processed":
                    try:
                        check_processed(img, source or "processed image")
                    except ValueError as exc:
                        raise FrameError(str(exc)) from None
                images.append(img)
            shapes = {im.shape for im in images}
            if len(shapes) != 1:
                raise FrameError(f"images of different shapes in one batch: {sorted(shapes)}")
            found = det.run(np.stack(images), input=self.input, contrast=self.contrast)
            shape = images[0].shape
        out = []
        for k, ((frame, source, _), res) in enumerate(zip(items, found)):
            if res.constant:
                # a constant frame carries no information; its only "edge" is the detector footprint
                warnings.warn(f"{source or 'frame'}: constant frame, no peaks can be found", DataWarning, stacklevel=3)
            polar = res.polar if self.input == "raw" else (images[k] if self.input == "polar" else None)
            table = PeakTable.from_boxes(res.boxes, res.scores, frame=frame, source=source, image_shape=shape,
                                         q_max=self.q_max, intensity=res.intensity)
            out.append(FrameResult(frame, source, table, polar if self.keep_polar else None, res.masked, res.filled))
        return out

    def iter_results(self, frames: Iterable[Any]) -> Iterator[FrameResult]:
        """Stream of frames (objects with ``index``, ``source``, ``data``) → one :class:`FrameResult` per
        frame, in order. Frames are grouped into batches of ``batch``; one batch is held at a time."""
        pending: list[tuple[int, str, np.ndarray]] = []
        for fr in frames:
            pending.append((fr.index, fr.source, fr.data))
            if len(pending) == self.batch:
                yield from self._detect_batch(pending)
                pending = []
        if pending:
            yield from self._detect_batch(pending)

    def iter_tables(self, frames: Iterable[Any]) -> Iterator[PeakTable]:
        """Like :meth:`iter_results`, tables only."""
        for result in self.iter_results(frames):
            yield result.table

    def run(self, frames: Iterable[Any], progress: Callable[[FrameResult], None] | None = None) -> PeakTable:
        """All frames → one PeakTable; ``progress(result)`` is called after each frame."""
        tables = []
        for result in self.iter_results(frames):
            tables.append(result.table)
            if progress is not None:
                progress(result)
        return PeakTable.concat(tables)
