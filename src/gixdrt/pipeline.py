"""Raw frames → peaks: preprocessing (geometry map, remap, contrast) then the detector, in batches.

>>> pipe = Pipeline(load_config("beamline.yaml"), Detector("published"))
>>> table = pipe.detect(frame)                    # one raw frame [H, W] (or [N, H, W] summed) → PeakTable
>>> table = pipe.run(iter_frames(["scan.h5::/entry/data/data"]))   # a stream of Frame objects

``input="polar"`` takes polar images (the contrast chain is applied) and ``input="processed"`` takes the
detector's input directly; neither needs a geometry, and the physical columns are filled only when a
config is given.

With a ``torch-cuda`` detector, raw frames stay on the GPU end to end: each is uploaded once, the polar remap
and the contrast chain run as CUDA kernels, the contrast image is written straight into the detector's input
buffer and the intensities are summed on the device (:meth:`gixdrt.engine.torch_cuda.TorchCudaStages.from_raw`);
only the peaks come back, plus each polar image when ``keep_polar`` (the default; :attr:`FrameResult.polar`).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .engine import Detector
from .errors import DataWarning, FrameError
from .geometry import Config, ContrastConfig
from .peaks import PeakTable
from .preprocess import Preprocessor

INPUTS = ("raw", "polar", "processed")


_BLOCK = 1 << 16  # values per block of the constancy checks: a frame that varies is recognised in its first block


def _all_equal(blocks) -> bool:
    """True when every value of every block equals the first one; stops at the first block that differs."""
    first = None
    for b in blocks:
        if not b.size:
            continue
        lo, hi = b.min(), b.max()
        if first is None:
            first = lo
        if lo != hi or lo != first:
            return False
    return first is not None


def _constant_frames(data: Any) -> bool:
    """True when every raw frame of ``data`` ([H, W] or [N, H, W], NumPy or CuPy) is constant."""
    d = data if hasattr(data, "reshape") and hasattr(data, "min") else np.asarray(data)
    d = d.reshape(d.shape[0] if d.ndim == 3 else 1, -1)
    return all(_all_equal(row[i : i + _BLOCK] for i in range(0, row.size, _BLOCK)) for row in d)


def _constant_inside(polar: np.ndarray, inside: np.ndarray) -> bool:
    """True when the polar image is constant over the pixels that sample the detector."""
    rows = max(1, _BLOCK // max(polar.shape[1], 1))
    return _all_equal(polar[i : i + rows][inside[i : i + rows]] for i in range(0, polar.shape[0], rows))


@dataclass(frozen=True)
class FrameResult:
    """One frame's outcome: its index and source, its peaks, and its uncorrected polar image (None for
    ``input="processed"``, and on the GPU path of a Pipeline with ``keep_polar=False``)."""

    frame: int
    source: str
    table: PeakTable
    polar: np.ndarray | None


@dataclass
class Pipeline:
    """Preprocessing + detection for one config.

    config: the geometry/contrast config (required for ``input="raw"``). detector: a :class:`Detector`.
    kernel_backend: backend of the preprocessing kernels (None: by data location). batch: frames per
    detector call. keep_polar: on the GPU path (a ``torch-cuda`` detector, raw input, kernel_backend None or
    "cuda"), copy each frame's polar image back for :attr:`FrameResult.polar`; False copies no image at all
    (``FrameResult.polar`` is then None). The host path computes the polar image on the host and always
    returns it.
    """

    config: Config | None
    detector: Detector
    input: str = "raw"
    kernel_backend: str | None = None
    batch: int = 1
    keep_polar: bool = True
    _pre: Preprocessor | None = field(default=None, init=False, repr=False)
    _device_pre: Preprocessor | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.input not in INPUTS:
            raise ValueError(f"unknown input kind {self.input!r}; expected one of {INPUTS}")
        if self.input == "raw" and self.config is None:
            raise ValueError("raw frames need a config with the experiment geometry (--config)")
        if self.batch < 1:
            raise ValueError(f"batch must be ≥ 1, got {self.batch}")
        if self.config is not None:
            self._pre = Preprocessor(self.config, backend=self.kernel_backend)

    @property
    def q_max(self) -> float | None:
        return None if self.config is None else self.config.geometry.q_max

    def _contrast(self, polar: np.ndarray) -> np.ndarray:
        if self._pre is not None:
            return self._pre.contrast(polar)
        from . import kernels

        c = ContrastConfig()
        return kernels.contrast(polar, coef=c.coef, clip_limit=c.limit, log=c.log, backend=self.kernel_backend)

    def prepare(self, data: np.ndarray, source: str = "") -> tuple[np.ndarray | None, np.ndarray]:
        """One frame's data → (uncorrected polar image or None, processed image float32[H, W])."""
        if self.input == "processed":
            img = np.asarray(data, np.float32)
            if img.ndim != 2:
                raise FrameError(f"a processed image must be 2-D, got shape {img.shape}", path=source or None)
            return None, img
        if self.input == "polar":
            polar = np.asarray(data, np.float32)
            if polar.ndim == 3:  # a group of polar images to sum
                polar = polar.sum(axis=0, dtype=np.float32)
            if polar.ndim != 2:
                raise FrameError(f"a polar image must be 2-D, got shape {polar.shape}", path=source or None)
            return polar, self._contrast(polar)
        assert self._pre is not None
        self.config.geometry.check_frame_shape(np.shape(data), source or None)
        polar = self._pre.polar(data)
        # Test the raw frame(s), not only the polar image: pixels only partly on the detector mix a
        # constant value with the zero border, so the polar image of a constant frame is not constant.
        if _constant_frames(data) or _constant_inside(polar, self._pre.map.inside):
            # A constant frame carries no information; its only "edge" is the detector footprint.
            warnings.warn(f"{source or 'frame'}: constant frame, no peaks can be found", DataWarning, stacklevel=2)
            return polar, np.zeros_like(polar)
        return polar, self._pre.contrast(polar)

    def detect(self, data: np.ndarray, *, frame: int = 0, source: str = "") -> PeakTable:
        """One frame (or a group of frames to sum) → its :class:`PeakTable`."""
        return self._detect_batch([(frame, source, data)])[0].table

    def _device_stages(self) -> Any:
        """The detector's torch-cuda stages when raw frames can stay on the GPU end to end, else None."""
        if self.input != "raw" or getattr(self.detector, "backend", None) != "torch-cuda":
            return None
        if self.kernel_backend not in (None, "cuda"):  # host kernels were asked for: the host path
            return None
        stages = getattr(self.detector, "_stages", None)
        return stages if hasattr(stages, "from_raw") else None

    def _detect_batch_device(self, stages: Any, items: list[tuple[int, str, Any]]) -> list[FrameResult]:
        """Raw frames → results with every image on the device (see the module docstring)."""
        assert self._pre is not None
        for _, source, data in items:
            self.config.geometry.check_frame_shape(tuple(np.shape(data)), source or None)
        if self._device_pre is None:
            self._device_pre = stages.preprocessor(self.config)
        found = stages.from_raw([data for _, _, data in items], self._device_pre, polar=self.keep_polar)
        self.detector.last_timings = dict(stages.timings)
        shape = self._pre.map.shape
        out = []
        for (frame, source, _), res in zip(items, found):
            if res["constant"]:
                warnings.warn(f"{source or 'frame'}: constant frame, no peaks can be found", DataWarning, stacklevel=3)
            polar = res["polar"].cpu().numpy() if self.keep_polar else None
            table = PeakTable.from_boxes(
                res["boxes"].numpy(), res["scores"].numpy(), frame=frame, source=source, image_shape=shape,
                q_max=self.q_max, intensity=res["intensity"],
            )  # fmt: skip
            out.append(FrameResult(frame, source, table, polar))
        return out

    def _detect_batch(self, items: list[tuple[int, str, np.ndarray]]) -> list[FrameResult]:
        stages = self._device_stages()
        if stages is not None:
            return self._detect_batch_device(stages, items)
        polars, images = [], []
        for _, source, data in items:
            polar, img = self.prepare(data, source)
            polars.append(polar)
            images.append(img)
        shapes = {im.shape for im in images}
        if len(shapes) != 1:
            raise FrameError(f"images of different shapes in one batch: {sorted(shapes)}")
        results = self.detector.boxes(np.stack(images))
        out = []
        for (frame, source, _), polar, (boxes, scores) in zip(items, polars, results):
            table = PeakTable.from_boxes(
                boxes, scores, frame=frame, source=source, image_shape=images[0].shape, q_max=self.q_max, polar=polar
            )
            out.append(FrameResult(frame, source, table, polar))
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
