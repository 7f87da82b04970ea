"""The GIXD peak detector on a backend: :class:`PeakDetector` runs the detector's plan (:mod:`gixdrt.gixd.plan`)
with one runtime (:mod:`gixdrt.engine.backends`) and returns each image's peaks.

>>> det = PeakDetector("default")                        # auto: the best backend here, said in the log
>>> (boxes, scores), = det.boxes(contrast_image)          # a processed polar image float32[H, W] in [0, 1]
>>> found = det.run(frames, input="raw", raw=RawInput(pmap, "uint16"))   # raw frames: remap and contrast first

The model-side network is :class:`gixdrt.model.GixdDetector` (PyTorch, for training and export); this class is
the engine-side detector and needs no PyTorch on the CPU for a model whose graphs are shipped (``default``) or
cached.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..engine.backends import Runtime, choose
from ..engine.base import TensorMeta
from ..engine.executor import Executor
from ..engine.plan import GraphStage, Plan
from ..model.config import DENSE_OUTPUTS, HEAD_OUTPUTS
from .artifacts import ModelGraphs
from .plan import INPUTS, RawInput, detector_plan, padded_size

__all__ = ["FrameOutput", "PaddingNote", "PeakDetector", "check_processed"]


class PaddingNote(UserWarning):
    """Images whose size is not a multiple of the network's strides are padded (once per size)."""


def check_processed(image: np.ndarray, label: str = "processed image") -> None:
    """ValueError naming ``label`` unless every pixel of a processed (detector input) image is finite and in
    [0, 1], the range the contrast chain produces and the model was trained on."""
    finite = np.isfinite(image)
    if not finite.all():
        raise ValueError(f"{label}: {image.size - int(np.count_nonzero(finite))} non-finite pixel(s); a processed "
                         "image must hold values in [0, 1] (pass --input polar to run the contrast chain)")
    if image.size and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(f"{label}: values from {float(image.min()):.6g} to {float(image.max()):.6g}; a processed "
                         "image must hold values in [0, 1] (pass --input polar to run the contrast chain)")


@dataclass
class FrameOutput:
    """One image's detections: boxes float32[K, 4] (x0, y0, x1, y1 polar px) and scores float32[K] by decreasing
    score; intensity float64[K] (raw and polar input; None for processed images); constant: the raw frame was
    constant (no peaks can be found); polar: its polar image float32[H, W] when asked for. Raw input: masked, the
    fraction of the polar pixels on the detector that left out a masked detector pixel; filled, how many had no
    valid sample and were filled from their neighbours along φ."""

    boxes: np.ndarray
    scores: np.ndarray
    intensity: np.ndarray | None = None
    constant: bool = False
    polar: np.ndarray | None = None
    masked: float = 0.0
    filled: int = 0


class PeakDetector:
    """A detection model on one backend, device and precision.

    model: ``"default"`` (gixdrt's own, graphs shipped), ``"published"`` / ``"published:NAME"``, a path, or a
        :class:`gixdrt.model.GixdDetector` (see :meth:`gixdrt.gixd.artifacts.ModelGraphs.open`).
    backend: ``"auto"`` (the first available of TensorRT, torch-cuda, ONNX Runtime on a GPU, ONNX Runtime on the
        CPU, PyTorch; logged) or one of ``"tensorrt"``, ``"torch-cuda"``, ``"onnxruntime"``, ``"torch"``; a named
        backend that cannot run here raises :class:`gixdrt.engine.EngineUnavailableError` with the reason.
    device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``...; None lets the backend choose.
    precision: ``"fp32"``, ``"fp16"``, ``"bf16"`` or ``"int8"`` (graphs; box arithmetic stays fp32; int8: the
        dense graph quantised with Q/DQ, onnxruntime only, see :mod:`gixdrt.export.quantize`; bf16: the dense graph
        BN-folded, channels-last, under CPU autocast in bfloat16, the torch backend only, fast on CPUs with AMX or
        AVX512-BF16). threads: ONNX Runtime's CPU threads.
    cache: where exported graphs are kept (True: the user cache; a directory; False: a temporary one).
    calibration: the int8 graph's :class:`gixdrt.export.quantize.Calibration` (None: the default settings).
    score_threshold, nms_iou, max_detections: override the model card's (0.6, 0.1, 250 for the published model).
    ``last_timings``: seconds per stage (:data:`gixdrt.model.config.STAGES`, plus ``polar`` and ``contrast`` for
    raw input) of the last call; measured on the host, and on a GPU only with ``timed=True`` (it synchronises).
    """

    def __init__(self, model: Any = "default", *, backend: str = "auto", device: str | None = None,
                 precision: str = "fp32", threads: int | None = None, cache: Any = True,
                 score_threshold: float | None = None, nms_iou: float | None = None,
                 max_detections: int | None = None, calibration: Any = None):
        if precision == "int8" and backend == "auto":
            backend = "onnxruntime"  # the one runtime that runs the int8 graph
        if precision == "bf16" and backend == "auto":
            backend = "torch"  # the one runtime that runs bf16 on the CPU
        self.backend, self.device = choose(backend, device)
        self.runtime = Runtime(self.backend, self.device, precision, threads=threads)
        self.graphs = ModelGraphs.open(model, cache=cache)
        self.graphs.calibration = calibration
        self.thresholds = self.graphs.thresholds.replace(score_threshold=score_threshold, nms_iou=nms_iou,
                                                         max_detections=max_detections)
        self.precision = precision
        self.model_spec = model if isinstance(model, str) else self.graphs.name
        self.last_timings: dict[str, float] = {}
        self._executors: dict[tuple, Executor] = {}
        self._runners: dict[tuple, Any] = {}

    @property
    def config(self):
        return self.graphs.config

    @property
    def card(self) -> dict[str, Any] | None:
        return self.graphs.card

    @property
    def kernels(self):
        return self.runtime.kernels

    def describe(self) -> str:
        """One line: backend, device, precision."""
        return self.runtime.describe()

    def close(self) -> None:
        """Release the runtime sessions and buffers (a later call opens them again)."""
        for ex in self._executors.values():
            ex.close()
        for runner in self._runners.values():
            runner.deactivate()
        self._executors.clear()
        self._runners.clear()

    def __enter__(self) -> PeakDetector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plans ------------------------------------------------------------------------------------------
    def plan(self, *, batch: int, height: int, width: int, input: str = "processed", raw: RawInput | None = None,
             contrast: Any = None) -> Plan:
        """The plan this detector runs for such a batch (RoIAlign inside the head graph where the runtime can)."""
        plan = detector_plan(self.config, self.thresholds, batch=batch, height=height, width=width,
                             roi_scale=self.graphs.scale(), input=input, raw=raw, contrast=contrast)
        if self.runtime.fuses("head_pooled", self.graphs):
            plan = plan.fused("roi_align")
        return plan

    def executor(self, *, batch: int, height: int, width: int, input: str = "processed", raw: RawInput | None = None,
                 contrast: Any = None) -> Executor:
        """The executor for such a batch: built on first use (plan, runners, buffers), then reused."""
        c = None if contrast is None else (contrast.coef, contrast.limit, contrast.log, contrast.disable)
        r = None if raw is None else raw.key
        key = (input, batch, height, width, r, c)
        ex = self._executors.get(key)
        if ex is None:
            hp, wp = padded_size(self.config, height, width)
            if (hp, wp) != (height, width):
                warnings.warn(f"images of {height}×{width} are padded with zeros to {hp}×{wp} for the network (H a "
                              f"multiple of {self.config.height_multiple}, W of {self.config.width_multiple}); peaks "
                              "are reported in the image's own pixels", PaddingNote, stacklevel=3)
            plan = self.plan(batch=batch, height=height, width=width, input=input, raw=raw, contrast=contrast)
            ex = Executor(plan, {g: self._runner(plan, g) for g in plan.graphs}, self.runtime.kernels)
            self._executors[key] = ex
        return ex

    def _runner(self, plan: Plan, graph: str):
        stage = next(s for s in plan.stages if isinstance(s, GraphStage) and s.graph == graph)
        inputs = {t: TensorMeta(np.dtype(plan.buffers[b].dtype), plan.buffers[b].shape) for t, b in stage.inputs.items()}
        artifact = plan.artifacts[graph]
        key = (artifact, tuple((t, m.shape) for t, m in inputs.items()))
        runner = self._runners.get(key)
        if runner is None:
            outputs = DENSE_OUTPUTS if graph == "dense" else HEAD_OUTPUTS
            runner = self._runners[key] = self.runtime.runner(self.graphs, graph, artifact, inputs, outputs)
        return runner

    # --- running ----------------------------------------------------------------------------------------
    def run(self, data: Any, *, input: str = "processed", raw: RawInput | None = None, contrast: Any = None,
            polar: bool = False, timed: bool | None = None) -> list[FrameOutput]:
        """Detect peaks in a batch → one :class:`FrameOutput` per image.

        data: ``processed``: float32[N, H, W] or [H, W] detector inputs in [0, 1]; ``polar``: float32[N, H, W]
        polar images (the contrast chain runs first, with ``contrast``); ``raw``: [N, G, H_det, W_det] raw frames
        (G summed per image; [N, H_det, W_det] means G = 1) with ``raw`` describing them. NumPy arrays or, for a
        device backend, tensors already on the device. polar: also return each polar image (raw input).
        timed: fill :attr:`last_timings` (default: on the host, where it costs nothing).
        """
        if input not in INPUTS:
            raise ValueError(f"unknown input kind {input!r}; expected one of {INPUTS}")
        x = data if hasattr(data, "shape") else np.asarray(data)
        if input == "raw":
            if raw is None:
                raise ValueError("raw frames need raw=RawInput(pmap, dtype, group)")
            if x.ndim == 3:
                x = x.reshape(x.shape[0], 1, *x.shape[1:])
            if x.ndim != 4 or tuple(x.shape[2:]) != raw.frame_shape:
                raise ValueError(f"expected raw frames [N, G, {raw.frame_shape[0]}, {raw.frame_shape[1]}], got "
                                 f"shape {tuple(x.shape)}")
            raw = RawInput(raw.pmap, np.dtype(str(x.dtype).removeprefix("torch.")).name, int(x.shape[1]), raw.mask,
                           raw.saturation)
            n, (h, w) = int(x.shape[0]), tuple(int(s) for s in raw.pmap.shape)
            feeds = {"frames": x}
        else:
            if isinstance(x, np.ndarray):
                x = np.ascontiguousarray(x, np.float32)
            if x.ndim == 2:
                x = x[None]
            if x.ndim != 3:
                raise ValueError(f"expected images [N, H, W] or [H, W], got shape {tuple(x.shape)}")
            if input == "processed" and isinstance(x, np.ndarray):
                check_processed(x, "processed images")
            n, h, w = (int(s) for s in x.shape)
            feeds = {"images": x.reshape(n, 1, h, w)} if input == "processed" else {"polar": x}
        if n == 0:
            return []
        ex = self.executor(batch=n, height=h, width=w, input=input, raw=raw, contrast=contrast)
        kernels = self.runtime.kernels
        if timed is None:
            timed = not kernels.on_device
        out = ex.run(feeds, timed=timed)
        self.last_timings = dict(ex.timings) if timed else {}
        if polar and "polar" in ex.buffers:
            out = {**out, "polar": ex.buffers["polar"]}
        names = [k for k in ("boxes", "scores", "count", "intensity", "constant", "masked_counts", "polar") if k in out]
        host = dict(zip(names, kernels.to_host([out[k] for k in names])))
        results = []
        for i in range(n):
            c = int(host["count"][i])
            results.append(FrameOutput(
                boxes=host["boxes"][i, :c].copy(),
                scores=host["scores"][i, :c].copy(),
                intensity=host["intensity"][i, :c].copy() if "intensity" in host else None,
                constant=bool(host["constant"][i]) if "constant" in host else False,
                polar=host["polar"][i].copy() if "polar" in host else None,
                **self._masked(host["masked_counts"][i], raw) if "masked_counts" in host else {},
            ))
        return results

    @staticmethod
    def _masked(counts: np.ndarray, raw: RawInput) -> dict[str, Any]:
        on_detector = raw.inside_count
        partial, holes = int(counts[0]), int(counts[1])
        return {"masked": (partial + holes) / on_detector if on_detector else 0.0, "filled": holes}

    def boxes(self, images: Any) -> list[tuple[np.ndarray, np.ndarray]]:
        """images: float32[N, H, W] or [H, W] processed polar images in [0, 1] → per image (boxes float32[K, 4]
        (x0, y0, x1, y1) polar px, scores float32[K]), by decreasing score."""
        return [(r.boxes, r.scores) for r in self.run(images, input="processed")]
